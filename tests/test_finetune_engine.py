"""Heads, masks, caching and the training loop on a 2-layer RoBERTa and tiny datasets."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow import MlflowClient

from finetune_fixture import make_setup
from telly import tasks, variants
from telly.config import parse_params
from telly.errors import NonFiniteError, TellyError
from telly.finetuning.caching import HiddenCache, bottom, top
from telly.finetuning.data import Seq, Tokens, attention_mask, collate, load_split, make_example
from telly.finetuning.examples import main_metric, read_examples, statistics
from telly.finetuning.generation import beam_search
from telly.finetuning.heads import SEARCH_SCALE, TaskModel
from telly.finetuning.train import convergence_epoch, override, train_variant
from telly.models.loading import load_encoder

TASKS = ["code_search", "clone_detection", "code_summarization", "code_generation", "line_completion"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import yaml

    from conftest import REPO

    root = tmp_path_factory.mktemp("ft")
    params, raw = make_setup(root, yaml.safe_load((REPO / "params.yaml").read_text()))
    return root, params, raw


@pytest.fixture
def encoder(setup):
    return load_encoder(setup[1].finetune_model, device="cpu")


def test_unilm_mask_prefix_and_causal():
    m = attention_mask(torch.tensor([4]), torch.tensor([2]), 5)[0, 0]
    expected = torch.tensor(
        [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]], dtype=torch.bool
    )
    assert torch.equal(m, expected)  # bidirectional prefix, causal rest, padding never seen
    causal = attention_mask(torch.tensor([3]), torch.tensor([0]), 3)[0, 0]
    assert torch.equal(causal, torch.tril(torch.ones(3, 3, dtype=torch.bool)))


def test_seq2seq_target_cannot_see_the_future(encoder):
    tok = Tokens.of(encoder.tokenizer)
    ex = make_example(
        "code_summarization",
        {"source": "def add(a, b): return a + b", "target": "add numbers"},
        encoder.tokenizer,
        tok,
        24,
        12,
    )
    assert ex["seq"].ids[ex["seq"].prefix] == tok.target_start
    ids = list(ex["seq"].ids)
    changed = ids[:-2] + [ids[-2] + 1 if ids[-2] + 1 < len(encoder.tokenizer) else 5] + ids[-1:]
    batch = collate([ex["seq"], Seq(tuple(changed), ex["seq"].prefix)], tok.pad)
    out = encoder.model(input_ids=batch["ids"], attention_mask=batch["mask"]).last_hidden_state
    n = len(ids) - 2
    assert torch.allclose(out[0, :n], out[1, :n], atol=1e-6)  # earlier positions ignore a later token
    assert not torch.allclose(out[0, n], out[1, n])


def test_split_forward_equals_full_forward(encoder):
    tok = Tokens.of(encoder.tokenizer)
    seqs = [
        make_example("code_generation", {"source": s, "target": "return a"}, encoder.tokenizer, tok, 20, 8)["seq"]
        for s in ("add two numbers", "a much longer description of the code")
    ]
    batch = collate(seqs, tok.pad)
    full = encoder.model(input_ids=batch["ids"], attention_mask=batch["mask"]).last_hidden_state
    for k in range(encoder.num_layers):
        split = top(encoder.model, bottom(encoder.model, batch["ids"], batch["mask"], k), batch["mask"], k)
        for row, s in enumerate(seqs):
            assert torch.allclose(full[row, : len(s.ids)], split[row, : len(s.ids)], atol=1e-5)
    # the cache keeps each sequence unpadded; collated back it gives the same last hidden state
    cache = HiddenCache.build(encoder.model, seqs, 1, tok.pad, batch_size=1)
    model = TaskModel(encoder.model, "code_generation", 1).eval()
    cached = model.last_hidden(collate(seqs, tok.pad, [cache[0], cache[1]]))
    for row, s in enumerate(seqs):
        assert torch.allclose(full[row, : len(s.ids)], cached[row, : len(s.ids)], atol=1e-5)


def test_cache_dropout_perturbs_training_only(encoder):
    """cache_dropout puts noise on the cached hidden state while training; evaluation stays exact."""
    tok = Tokens.of(encoder.tokenizer)
    seqs = [
        make_example("code_generation", {"source": s, "target": "return a"}, encoder.tokenizer, tok, 20, 8)["seq"]
        for s in ("add two numbers", "a much longer description of the code")
    ]
    cache = HiddenCache.build(encoder.model, seqs, 1, tok.pad, batch_size=2)
    batch = collate(seqs, tok.pad, [cache[0], cache[1]])
    encoder.model.eval()  # the layers' own dropout off: any difference below comes from cache_dropout
    exact = TaskModel(encoder.model, "code_generation", 1).eval().last_hidden(batch)
    noisy = TaskModel(encoder.model, "code_generation", 1, cache_dropout=0.5)
    noisy.train()
    noisy.encoder.eval()
    assert not torch.allclose(noisy.last_hidden(batch), exact, atol=1e-4)
    assert torch.equal(noisy.eval().last_hidden(batch), exact)
    plain = TaskModel(encoder.model, "code_generation", 1)
    plain.train()
    plain.encoder.eval()
    assert torch.equal(plain.last_hidden(batch), exact)  # 0 = no noise, bit for bit


def test_search_and_clone_losses(encoder):
    tok = Tokens.of(encoder.tokenizer)
    model = TaskModel(encoder.model, "code_search").eval()
    q = collate([Seq((0, 5, 6, 2), 4), Seq((0, 7, 2), 3)], tok.pad)
    c = collate([Seq((0, 8, 2), 3), Seq((0, 9, 10, 11, 2), 5)], tok.pad)
    vq, vc = model.embed(q), model.embed(c)
    assert torch.allclose(vq.norm(dim=-1), torch.ones(2))
    s = SEARCH_SCALE * vq @ vc.T
    expected = -(torch.log_softmax(s, 1)[0, 0] + torch.log_softmax(s, 1)[1, 1]) / 2
    assert model({"query": q, "code": c}).item() == pytest.approx(expected.item(), rel=1e-5)
    clone = TaskModel(encoder.model, "clone_detection").eval()
    cos = (vq * vc).sum(-1)
    loss = clone({"code1": q, "code2": c, "label": torch.tensor([1, 0])})
    assert loss.item() == pytest.approx((((cos[0] - 1) ** 2 + cos[1] ** 2) / 2).item(), rel=1e-5)


def test_beam_of_one_is_greedy(encoder):
    tok = Tokens.of(encoder.tokenizer)
    model = TaskModel(encoder.model, "line_completion").eval()
    prompt = [0, 5, 6, 7]
    got = beam_search(model, [prompt], [0], beam_size=1, max_new_tokens=4, eos_id=tok.eos, pad_id=tok.pad)[0]
    ids = list(prompt)
    for _ in range(4):
        b = collate([Seq(tuple(ids), 0)], tok.pad)
        nxt = int(model.lm_logits(model.last_hidden(b)[0, -1]).argmax())
        if nxt == tok.eos:
            break
        ids.append(nxt)
    assert got == ids[len(prompt) :]


@pytest.mark.parametrize("task", TASKS)
def test_train_variant_writes_checkpoint_metrics_and_keeps_frozen_layers(setup, task, tracking_env):
    root, params, _ = setup
    result = train_variant(params, task, "telly-1")  # the first of finetune.seeds [7, 8]
    saved = json.loads((root / "results" / task / "telly-1" / "seed7.json").read_text())
    assert saved["test"] == result.test and saved["k"] == 1 and len(saved["epochs"]) == 2
    assert saved["settings"]["seed"] == 7
    # the per-example test scores beside it, on the test rows in order, giving back the main metric
    rows = read_examples(root / "results" / task / "telly-1" / "seed7.json")
    test_rows = load_split(params.finetune.tasks_dir, task, "test", getattr(params.finetune.tasks, task).test_size, 7)
    assert [r["id"] for r in rows] == [r["id"] for r in test_rows]
    main = tasks.get(task).main_metric
    assert main_metric(task, statistics(task, rows)) == pytest.approx(result.test[main], rel=1e-6, abs=1e-9)
    cost = saved["cost"]
    for key in (
        "trainable_params",
        "paper_params",
        "epoch_seconds",
        "epochs_to_convergence",
        "time_to_convergence",
        "peak_memory_mb",
        "cache_seconds",
    ):
        assert cost[key] >= 0
    assert cost["trainable_params"] < cost["total_params"] and cost["cache_seconds"] > 0
    tuned = load_encoder(root / "finetuned" / task / "telly-1" / "seed7", device="cpu")
    pre = load_encoder(params.finetune_model, device="cpu")
    sd_t, sd_p = tuned.model.state_dict(), pre.model.state_dict()
    frozen = [k for k in sd_p if k.startswith(("embeddings.", "encoder.layer.0."))]
    assert frozen and all(torch.equal(sd_t[k], sd_p[k]) for k in frozen)
    assert any(not torch.equal(sd_t[k], sd_p[k]) for k in sd_p if k.startswith("encoder.layer.1."))


def test_same_config_same_metrics(setup, tracking_env, tmp_path):
    _, params, _ = setup
    a = train_variant(params, "code_search", "base", results_path=tmp_path / "a.json", output_dir=tmp_path / "a")
    b = train_variant(params, "code_search", "base", results_path=tmp_path / "b.json", output_dir=tmp_path / "b")
    assert a.test == b.test
    assert [r["train_loss"] for r in a.epochs] == [r["train_loss"] for r in b.epochs]


def test_each_seed_is_a_run_of_its_own_on_the_same_rows(setup, tracking_env):
    root, params, _ = setup
    first = train_variant(params, "clone_detection", "base")
    second = train_variant(params, "clone_detection", "base", seed=8)
    folder = root / "results" / "clone_detection" / "base"
    assert sorted(p.name for p in folder.iterdir()) == [
        "seed7.examples.jsonl",
        "seed7.json",
        "seed8.examples.jsonl",
        "seed8.json",
    ]
    assert (first.settings["seed"], second.settings["seed"]) == (7, 8)
    assert [r["train_loss"] for r in first.epochs] != [r["train_loss"] for r in second.epochs]
    ids = [[r["id"] for r in read_examples(folder / f"seed{s}.json")] for s in (7, 8)]
    assert ids[0] == ids[1]  # the seed changes the training, not the rows
    assert (root / "finetuned" / "clone_detection" / "base" / "seed8" / "config.json").exists()


@pytest.mark.parametrize("variant", ["base", "telly-0"])
def test_interrupted_run_resumes_to_the_same_result(setup, tracking_env, tmp_path, variant):
    _, params, _ = setup
    params = override(params, "code_summarization", epochs=3)
    whole = train_variant(params, "code_summarization", variant, output_dir=tmp_path / "w")

    class Stop(Exception):
        pass

    def stop_after_first(epoch, record):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        train_variant(params, "code_summarization", variant, on_epoch=stop_after_first, output_dir=tmp_path / "r")
    # a process killed mid-run never ends its MLflow run: it stays RUNNING in the store
    client = MlflowClient(tracking_env)
    (interrupted,) = client.search_runs(
        [client.get_experiment_by_name("telly-finetune").experiment_id],
        filter_string=f"attributes.run_name LIKE 'code_summarization/{variant}/seed%' and attributes.status = 'FAILED'",
    )
    client.update_run(interrupted.info.run_id, status="RUNNING")
    seen = []
    resumed = train_variant(
        params, "code_summarization", variant, output_dir=tmp_path / "r", on_epoch=lambda e, r: seen.append(e)
    )
    assert seen == [2, 3]  # epoch 1 was not trained again
    assert client.get_run(interrupted.info.run_id).info.status == "KILLED", "the resumed run closes the killed one"
    assert resumed.test == whole.test
    assert [r["train_loss"] for r in resumed.epochs] == [r["train_loss"] for r in whole.epochs]


def test_cached_and_uncached_runs_both_train(setup, tracking_env, tmp_path):
    _, params, _ = setup
    cached = train_variant(
        params, "clone_detection", "telly-1", results_path=tmp_path / "c.json", output_dir=tmp_path / "c"
    )
    paper = train_variant(
        override(params, cache_frozen=False),
        "clone_detection",
        "telly-1",
        results_path=tmp_path / "p.json",
        output_dir=tmp_path / "p",
    )
    assert cached.settings["cache_frozen"] and not paper.settings["cache_frozen"]
    assert paper.cost["cache_seconds"] == 0 and cached.cost["cache_seconds"] > 0


def test_variants_and_convergence_rule():
    assert variants.k_of("base", 6) is None and variants.k_of("telly-5", 6) == 5
    with pytest.raises(TellyError, match="seeds are finetune.seeds"):  # a seed is a run, not a variant
        variants.k_of("base-seed2", 6)
    assert variants.split_seed("base-seed2") == ("base", 2) and variants.split_seed("telly-3") == ("telly-3", None)
    assert variants.split_seed("telly-3-seed1") == ("telly-3", 1) and variants.split_seed("x-seed1") == (
        "x-seed1",
        None,
    )
    assert str(variants.run_dir("m", "code_search", "base", 7)) == "m/code_search/base/seed7"
    with pytest.raises(TellyError, match="0 <= K <= 5"):
        variants.k_of("telly-6", 6)
    with pytest.raises(TellyError, match="expected 'base'"):
        variants.k_of("lora", 6)
    assert variants.all_for_depth(3) == ["base", "telly-0", "telly-1", "telly-2"]
    names = ["telly-2", "telly-10", "base"]
    assert sorted(names, key=variants.sort_key) == ["base", "telly-2", "telly-10"]
    assert [variants.label(v) for v in ("base", "telly-3")] == ["Base", "Telly-3"]
    with pytest.raises(TellyError, match="repeat"):
        variants.check_names(["base", "base"])
    assert convergence_epoch([0.5, 0.699, 0.7, 0.65], 0.01) == 2  # 0.699 >= 0.7 - 0.007
    assert convergence_epoch([0.5, 0.6, 0.7], 0.0) == 3


def test_bad_inputs_are_clear_errors(setup, tracking_env, tmp_path):
    root, params, raw = setup
    with pytest.raises(TellyError, match="K = 2 but the model has 2 layers"):
        train_variant(params, "code_search", "telly-2")
    empty = tmp_path / "tasks"
    for split in ("train", "valid", "test"):
        (empty / "code_search").mkdir(parents=True, exist_ok=True)
        (empty / "code_search" / f"{split}.jsonl").write_text(
            "" if split == "train" else '{"id":1,"query":"q","code":"c"}\n' * 3
        )
    bad = parse_params({**raw, "finetune": {**raw["finetune"], "tasks_dir": str(empty)}})
    with pytest.raises(TellyError, match=r"train.jsonl: 0 row\(s\); code_search needs at least 2"):
        train_variant(bad, "code_search", "base")
    with pytest.raises(TellyError, match="not found"):
        train_variant(
            parse_params({**raw, "finetune": {**raw["finetune"], "tasks_dir": str(tmp_path / "no")}}),
            "code_search",
            "base",
        )
    too_long = {**raw["finetune"]["tasks"]["code_generation"], "max_source_length": 60, "max_target_length": 30}
    long_params = parse_params(
        {**raw, "finetune": {**raw["finetune"], "tasks": {**raw["finetune"]["tasks"], "code_generation": too_long}}}
    )
    with pytest.raises(TellyError, match="at most 64 positions"):
        train_variant(long_params, "code_generation", "base")


def test_resume_state_of_another_architecture_is_a_clear_error(setup, tracking_env, tmp_path, monkeypatch):
    _, params, _ = setup

    def stop(epoch, record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_variant(params, "code_search", "telly-0", on_epoch=stop, output_dir=tmp_path / "x")
    state = params.finetune.checkpoint_dir / "code_search" / "telly-0" / "seed7" / "last.pt"
    saved = torch.load(state, weights_only=True)
    saved["model"] = {k + ".other": v for k, v in saved["model"].items()}  # same settings, foreign weights
    torch.save(saved, state)
    with pytest.raises(TellyError, match="does not fit this model"):
        train_variant(params, "code_search", "telly-0", output_dir=tmp_path / "x")
    import shutil

    shutil.rmtree(state.parent)


def test_bf16_autocast_trains_on_a_bf16_cpu_and_evaluates_in_fp32(monkeypatch):
    """finetune.bf16 on a CPU with native bf16: the training forward runs in bf16, evaluation stays fp32;
    without native bf16 (or with bf16 off) nothing is cast."""
    from telly.finetuning import train

    cpu = torch.device("cpu")
    x = torch.randn(2, 8)
    layer = torch.nn.Linear(8, 8)
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: True)
    with train.autocast(cpu, True, training=True):
        assert layer(x).dtype == torch.bfloat16
    for bf16, training in ((True, False), (False, True)):
        with train.autocast(cpu, bf16, training=training):
            assert layer(x).dtype == torch.float32
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: False)
    with train.autocast(cpu, True, training=True):
        assert layer(x).dtype == torch.float32


def test_a_non_finite_loss_stops_the_run_keeps_its_state_and_publishes_nothing(setup, tracking_env, tmp_path):
    _, params, _ = setup
    params = override(params, "code_search", epochs=2)

    def stop(epoch, record):
        raise KeyboardInterrupt

    out, results = tmp_path / "out", tmp_path / "result.json"
    with pytest.raises(KeyboardInterrupt):
        train_variant(params, "code_search", "base", on_epoch=stop, output_dir=out, results_path=results)
    state = params.finetune.checkpoint_dir / "code_search" / "base" / "seed7" / "last.pt"
    saved = torch.load(state, weights_only=True)
    saved["model"] = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in saved["model"].items()
    }
    torch.save(saved, state)  # a diverged run: the next step's loss is NaN
    with pytest.raises(NonFiniteError, match=r"code_search/base seed 7: training loss is nan at epoch 2, step 1"):
        train_variant(params, "code_search", "base", output_dir=out, results_path=results)
    assert state.exists(), "the state saved after epoch 1 is kept for a rerun"
    assert not results.exists() and not out.exists(), "nothing is published"
    state.unlink()


def test_length_grouped_batches_pad_less_and_keep_their_order_per_seed():
    """group_by_length: each batch holds rows of similar length (less padding than a plain shuffle), every row
    once per epoch, and the same generator seed gives the same order (resuming an epoch replays it)."""
    from telly.finetuning.data import index_loader

    lengths = [int(v) for v in torch.randint(8, 160, (512,), generator=torch.Generator().manual_seed(0))]

    def batches(grouped: bool, seed: int) -> list[list[int]]:
        loader = index_loader(
            512, 16, shuffle=torch.Generator().manual_seed(seed), lengths=lengths if grouped else None
        )
        return list(loader)

    def padding(bs: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    grouped, plain = batches(True, 3), batches(False, 3)
    assert sorted(i for b in grouped for i in b) == list(range(512))
    assert padding(grouped) < padding(plain) / 3
    assert grouped == batches(True, 3) and grouped != batches(True, 4)
