"""Probe machinery on synthetic hidden states: one layer carries the property, the others are noise."""

import numpy as np
import pytest
import torch

from telly.probing import controls
from telly.probing.objectives import CloneRetrievalTask, PairTask, Split, TaggingTask
from telly.probing.probes import build_probe
from telly.probing.properties import PROPERTIES
from telly.probing.suite import run_suite
from telly.probing.train import TrainSettings

STATES, HIDDEN, CLASSES = 4, 16, 3
FAST = TrainSettings(epochs=8, batch_size=64, lr=1e-2, weight_decay=0.0)


def classes_at(layer, n, seed, *, signal=True, n_classes=CLASSES, scale=1.5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    x = rng.standard_normal((n, STATES, HIDDEN)).astype(np.float16)
    if signal:
        centers = np.random.default_rng(99).standard_normal((n_classes, HIDDEN)) * scale
        x[:, layer] += centers[y].astype(np.float16)
    return Split(x, y)


def test_layerwise_heads_are_independent():
    probe = build_probe("layer-wise", STATES, HIDDEN, 5)
    x = torch.randn(3, STATES, HIDDEN)
    y = x.clone()
    y[:, 1] += 10.0  # change hidden state 1 only
    changed = (probe(x) - probe(y)).abs().sum(dim=(0, 2))
    assert changed[1] > 0 and torch.all(changed[[0, 2, 3]] == 0)


def test_classification_probe_finds_the_layer_and_control_is_not_selective():
    splits = [classes_at(2, n, s) for n, s in ((600, 0), (200, 1), (200, 2))]
    task = TaggingTask("structural", *splits, n_classes=CLASSES)
    control = TaggingTask(
        "structural", *[controls.shuffled_labels(s, 7 + i) for i, s in enumerate(splits)], n_classes=CLASSES
    )
    r = run_suite("structural", task, control, FAST, seeds=[0, 1, 2])
    acc = r["layer-wise"]["acc"]["mean"]
    assert r["peak"]["layer"] == 2 and acc[2] > 90
    assert max(acc[l] for l in (0, 1, 3)) < 50  # noise layers stay near chance (33%)
    assert r["weighted_peak_layer"] == 2 and r["weighted-layer-wise"]["layer_weights"]["mean"][2] > 0.4
    assert r["weighted-layer-wise"]["acc"]["mean"][0] > 90
    sel = r["layer-wise"]["selectivity_acc"]["mean"]
    assert sel[2] > 40 and all(abs(sel[l]) < 10 for l in (0, 1, 3))
    assert len(r["layer-wise"]["per_seed_acc"]) == 3 and r["layer-wise"]["acc"]["std"][2] >= 0
    assert r["baseline"]["acc"] < 50


def test_random_labels_give_no_selectivity_anywhere():
    splits = [classes_at(2, n, s, signal=False) for n, s in ((600, 0), (200, 1), (200, 2))]
    task = TaggingTask("structural", *splits, n_classes=CLASSES)
    control = TaggingTask(
        "structural", *[controls.shuffled_labels(s, 7 + i) for i, s in enumerate(splits)], n_classes=CLASSES
    )
    r = run_suite("structural", task, control, FAST, seeds=[0, 1, 2], probe_types=["layer-wise"])
    assert all(abs(s) < 10 for s in r["layer-wise"]["selectivity_acc"]["mean"])


def test_semantic_probe_finds_the_clone_layer():
    splits = [classes_at(1, n, s, n_classes=20, scale=1.0) for n, s in ((600, 0), (200, 1), (200, 2))]
    task = CloneRetrievalTask("semantic", *splits)
    control = CloneRetrievalTask("semantic", *[controls.shuffled_labels(s, 7) for s in splits])
    r = run_suite("semantic", task, control, FAST, seeds=[0])
    m = r["layer-wise"]["map"]["mean"]
    assert r["peak"]["layer"] == 1 and m[1] > 3 * max(m[0], m[2], m[3])
    assert r["weighted_peak_layer"] == 1
    assert r["peak"]["selectivity"] > 20 and r["baseline"]["map"] < 10


def pairs(n, seed, layer=3):
    rng = np.random.default_rng(seed)
    code = rng.standard_normal((n, STATES, HIDDEN)).astype(np.float32)
    ast = rng.standard_normal((n, STATES, HIDDEN)).astype(np.float32)
    partner = np.arange(n)
    half = n // 2
    partner[half:] = np.roll(np.arange(half), 1)[: n - half]  # false pairs: another function's AST-only
    ast[:, layer] = 0.8 * code[partner, layer] + 0.6 * ast[:, layer]
    y = (np.arange(n) < half).astype(int)
    return Split(code, y, ast)


def test_syntactic_probe_finds_the_layer_and_derangement_is_a_real_control():
    splits = [pairs(n, s) for n, s in ((600, 0), (200, 1), (200, 2))]
    task = PairTask("syntactic", *splits)
    control = PairTask("syntactic", *[controls.deranged_pairs(s, 7 + i) for i, s in enumerate(splits)])
    r = run_suite("syntactic", task, control, FAST, seeds=[0])
    acc, mrr = r["layer-wise"]["acc"]["mean"], r["layer-wise"]["mrr"]["mean"]
    assert r["peak"]["layer"] == 3 and acc[3] > 0.9 and mrr[3] > 0.8
    assert max(acc[:3]) < 0.65
    assert r["peak"]["selectivity"] > 0.3
    assert r["baseline"]["acc"] == pytest.approx(0.5)


def test_deranged_pairs_move_every_true_pair_and_keep_false_pairs():
    split = pairs(20, 0)
    control = controls.deranged_pairs(split, 3)
    true = split.y == 1
    moved = [not np.array_equal(control.x2[i], split.x2[i]) for i in np.flatnonzero(true)]
    assert all(moved)
    np.testing.assert_array_equal(control.x2[~true], split.x2[~true])
    assert sorted(map(bytes, control.x2[true])) == sorted(map(bytes, split.x2[true]))  # same AST-only, reassigned


def test_control_labels_are_per_token_string_and_follow_the_label_distribution():
    types = [["def", "x", "x", "(", "def"] * 200, ["x", "unseen", "def"]]
    train_labels = np.array([1, 2, 2, 5, 1] * 200)
    labels = controls.labels_per_type(types, train_labels, seed=0)
    lookup = dict(zip(types[0], labels[0]))
    assert all(lookup[t] == l for t, l in zip(types[0], labels[0]))  # one label per string
    assert labels[1][0] == lookup["x"] and labels[1][2] == lookup["def"]  # same across splits
    assert set(np.concatenate(labels)) <= {1, 2, 5}
    again = controls.labels_per_type(types, train_labels, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(labels, again))


def test_majority_baseline():
    train = Split(np.zeros((5, 2, 2)), np.array([1, 1, 1, 2, 3]))
    test = Split(np.zeros((4, 2, 2)), np.array([1, 2, 1, 1]))
    lexical = TaggingTask.of(PROPERTIES["lexical"], [train, train, test])
    assert lexical.majority(0)["acc"] == pytest.approx(75.0)
    s = TaggingTask.of(PROPERTIES["structural"], [train, train, test]).majority(0)
    assert s["acc"] == pytest.approx(75.0) and s["macro_f1"] == pytest.approx(100 * (2 * 0.75 / 1.75) / 6)
    pairs = Split(np.zeros((4, 2, 2)), np.array([1, 0, 1, 1]), np.zeros((4, 2, 2)))
    syntactic = PairTask.of(PROPERTIES["syntactic"], [pairs, pairs, pairs]).majority(0)
    assert syntactic == {"acc": 0.75, "mrr": pytest.approx((1 + 1 / 2 + 1 / 3) / 3)}


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="line up"):
        Split(np.zeros((3, 2, 4)), np.zeros(2))
    with pytest.raises(ValueError, match=r"\[N, L\+1, H\]"):
        Split(np.zeros((3, 4)), np.zeros(3))
    with pytest.raises(ValueError, match="probe type"):
        build_probe("every-layer", 2, 4, 2)


def test_peak_layer_breaks_ties_on_the_next_metric():
    from telly.probing.suite import peak_layer

    # syntactic accuracy flat at 0.5 (every pair on one side of the threshold): MRR decides
    assert peak_layer({"acc": [0.5, 0.5, 0.5, 0.5], "mrr": [0.05, 0.07, 0.10, 0.09]}) == 2
    # a clear winner on the first metric wins whatever the others say
    assert peak_layer({"acc": [0.6, 0.9, 0.7], "mrr": [0.9, 0.1, 0.5]}) == 1


def test_a_nan_hidden_state_stops_the_probe_instead_of_scoring_it():
    from telly.errors import NonFiniteError
    from telly.probing.train import train_probe

    train, valid, test = [classes_at(2, n, s) for n, s in ((200, 0), (50, 1), (50, 2))]
    train.x[5, 1, 3] = np.nan  # a broken representation
    task = TaggingTask("structural", train, valid, test, n_classes=CLASSES)
    with pytest.raises(NonFiniteError, match="probe layer-wise on structural: loss is nan at epoch 1"):
        train_probe(task, "layer-wise", FAST, seed=0)


def test_features_scaled_once_match_batches_scaled_one_by_one():
    # float16 features, as the representation cache stores them
    train = Split(np.random.default_rng(0).standard_normal((50, 3, 8)).astype(np.float16), np.zeros(50, dtype=int))
    task = TaggingTask("structural", train, train, train, n_classes=CLASSES)
    idx = np.array([7, 3, 41, 3])
    assert torch.equal(task.scaled(train.x)[idx], task.scaler(train.x[idx]))
    assert task.scaled(train.x) is task.scaled(train.x)  # one copy per array
    other = Split(train.x.copy(), train.y)
    assert task.scaled(other.x) is not task.scaled(train.x)
    assert torch.equal(task.scaled(train.x, idx), task.scaler(train.x[idx]))


def test_features_above_the_memory_limit_are_scaled_per_batch_to_the_same_numbers(monkeypatch):
    from telly.probing import objectives

    train = Split(np.random.default_rng(1).standard_normal((50, 3, 8)).astype(np.float16), np.zeros(50, dtype=int))
    task = TaggingTask("structural", train, train, train, n_classes=CLASSES)
    idx = np.array([7, 3, 41, 3])
    monkeypatch.setattr(objectives, "SCALE_ONCE_MAX_BYTES", train.x.size * 4 - 1)
    assert torch.equal(task.scaled(train.x, idx), task.scaler(train.x[idx]))
    assert not task._scaled  # nothing kept: one float16 copy in memory
