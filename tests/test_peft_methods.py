"""Parameter-efficient methods (LoRA, (IA)3, BitFit) alone and on top of Telly-K, on a 2-layer RoBERTa."""

from __future__ import annotations

import json

import pytest
import torch

from finetune_fixture import make_setup
from telly import variants
from telly.config import parse_params, read_params_file
from telly.errors import TellyError
from telly.finetuning.data import Tokens, collate, lm_labels, make_example
from telly.finetuning.heads import TaskModel
from telly.finetuning.train import make_batch, override, train_variant
from telly.models import peft_methods
from telly.models.freezing import freeze_bottom, freeze_except_biases
from telly.models.loading import load_encoder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import yaml

    from conftest import REPO

    root = tmp_path_factory.mktemp("peft")
    params, raw = make_setup(root, yaml.safe_load((REPO / "params.yaml").read_text()))
    params = override(params, peft=params.finetune.peft.model_copy(update={"results_dir": root / "results-peft"}))
    return root, params


@pytest.fixture
def encoder(setup):
    return load_encoder(setup[1].finetune_model, device="cpu")


def _unixcoder_config():
    """UniXcoder-base's shape, built in code (nothing downloaded)."""
    from transformers import RobertaConfig

    return RobertaConfig(
        vocab_size=51416,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=1026,
        type_vocab_size=10,
    )


# ------------------------------------------------------------------- names


def test_method_names_parse_label_and_sort():
    v = variants.parse("telly-3+lora-r8")
    assert (v.k, v.method, v.rank, v.method_name) == (3, "lora", 8, "lora-r8")
    assert variants.parse("lora-all-r16").method == "lora-all"
    assert variants.parse("ia3").rank is None and not variants.parse("ia3").is_base
    assert variants.k_of("bitfit") is None and variants.k_of("telly-2+bitfit") == 2
    assert variants.label("telly-3+lora-r8") == "Telly-3 + LoRA r=8"
    assert variants.label("ia3") == "(IA)3" and variants.label("bitfit") == "BitFit"
    assert variants.family("telly-3+lora-r8") == "telly+lora" and variants.family("telly-1") == "telly"
    names = ["telly-1+lora-r8", "bitfit", "lora-r16", "telly-2", "base", "lora-r8", "ia3", "telly-0"]
    assert sorted(names, key=variants.sort_key) == [
        "base",
        "telly-0",
        "telly-2",
        "lora-r8",
        "lora-r16",
        "ia3",
        "bitfit",
        "telly-1+lora-r8",
    ]
    assert set(variants.PEFT_FAMILIES) == set(peft_methods.METHODS)  # one list of families, two halves


@pytest.mark.parametrize(
    "bad", ["lora", "lora-r0", "lora-all-r", "telly-3+", "telly-3+base", "ia3+telly-3", "bitfit-r2"]
)
def test_bad_method_names_are_clear_errors(bad):
    with pytest.raises(TellyError, match="lora-r<r>"):
        variants.parse(bad)


def test_combined_depth_is_checked_against_the_model():
    with pytest.raises(TellyError, match="0 <= K <= 1"):
        variants.parse("telly-2+lora-r4", num_layers=2)


def test_params_keep_methods_in_their_own_matrix(raw_params):
    raw = json.loads(json.dumps(raw_params))
    raw["finetune"]["variants"] = ["base", "lora-r8"]
    with pytest.raises(Exception, match="finetune.peft.variants"):
        parse_params(raw)
    raw["finetune"]["variants"] = ["base"]
    raw["finetune"]["peft"]["variants"] = ["telly-1"]
    with pytest.raises(Exception, match="belong in finetune.variants"):
        parse_params(raw)
    raw["finetune"]["peft"]["variants"] = ["lora-r8", "telly-1+lora-r8", "ia3", "bitfit", "lora-all-r4"]
    assert parse_params(raw).finetune.peft.variants[1] == "telly-1+lora-r8"


def test_dvc_matrix_of_methods_tracks_what_finetune_run_does():
    import yaml

    from conftest import REPO

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    run, peft = stages["finetune-run"], stages["finetune-peft"]
    assert peft["cmd"] == run["cmd"] and set(run["deps"]) == set(peft["deps"])
    assert set(peft["params"]) - set(run["params"]) == {
        "finetune.peft.learning_rate_scale",
        "finetune.peft.lora_alpha",
        "finetune.peft.lora_dropout",
        "finetune.peft.results_dir",
    }
    assert peft["matrix"] == {
        "task": "${finetune.peft.tasks}",
        "variant": "${finetune.peft.variants}",
        "seed": "${finetune.deep_seeds}",  # the first seed
    }
    for profile in ("params.yaml", "tests/fixtures/params-tiny.yaml", "profiles/paper-unixcoder.yaml"):
        raw = read_params_file(REPO / profile)
        layers = raw["pretrain"]["layers"] if profile != "profiles/paper-unixcoder.yaml" else 12
        for name in raw["finetune"]["peft"]["variants"]:
            variants.parse(name, layers)  # every default method fits its profile's model


# ------------------------------------------------------------------ counts


def test_unixcoder_lora_r8_on_query_value_is_the_closed_form():
    """12 layers x 2 matrices (query, value) x r x (768 in + 768 out)."""
    count = peft_methods.describe(_unixcoder_config(), "lora-r8")
    assert count.trainable == 12 * 2 * 8 * (768 + 768) == 294_912
    assert count.paper == count.trainable and count.total == 125_929_728  # total = Base (the paper's 125.93M)
    assert peft_methods.describe(_unixcoder_config(), "telly-6+lora-r8").trainable == 6 * 2 * 8 * (768 + 768)


def test_unixcoder_bitfit_and_ia3_counts():
    cfg = _unixcoder_config()
    per_layer_biases = 3 * 768 + 768 + 768 + 3072 + 768 + 768  # q, k, v, attn out, LN, intermediate, out, LN
    assert peft_methods.describe(cfg, "bitfit").trainable == 12 * per_layer_biases + 768  # + embeddings LayerNorm
    # (IA)3: key and value outputs (768 each), attention-output and FFN-output inputs (768, 3072)
    assert peft_methods.describe(cfg, "ia3").trainable == 12 * (768 + 768 + 768 + 3072)


# ------------------------------------------------------- what trains, a step

EXPECTED = {  # variant -> (what may train, layers of the 2-layer model it may be in)
    "lora-r4": (("lora_A", "lora_B"), (".query.", ".value."), (0, 1)),
    "lora-all-r4": (("lora_A", "lora_B"), (".query.", ".key.", ".value.", ".dense."), (0, 1)),
    "ia3": (("ia3_l",), (".key.", ".value.", ".output.dense."), (0, 1)),
    "bitfit": (("bias",), ("",), (0, 1)),
    "telly-1+lora-r4": (("lora_A", "lora_B"), (".query.", ".value."), (1,)),
    "telly-1+bitfit": (("bias",), ("",), (1,)),
}


@pytest.mark.parametrize("variant", list(EXPECTED))
def test_each_method_trains_exactly_its_parameters(encoder, variant):
    v = variants.parse(variant)
    freeze_bottom(encoder.model, v.k)
    adapted, count = peft_methods.apply(encoder.model, v)
    kinds, modules, layers = EXPECTED[variant]
    trainable = {n for n, p in encoder.model.named_parameters() if p.requires_grad}
    assert trainable and count.trainable == sum(p.numel() for p in encoder.model.parameters() if p.requires_grad)
    for name in trainable:
        assert any(k in name for k in kinds) and any(m in name for m in modules), name
        in_layer = name.startswith("encoder.layer.")
        assert (in_layer and int(name.split(".")[2]) in layers) or (
            variant == "bitfit" and name == "embeddings.LayerNorm.bias"
        ), name
    assert not any("pooler" in n or "word_embeddings" in n for n in trainable)  # the tied LM head stays frozen
    if variant == "bitfit":  # every bias of the layers, no weight
        assert trainable == {
            n for n, _ in encoder.model.named_parameters() if n.endswith("bias") and not n.startswith("pooler")
        }

    # one optimiser step on a clone-detection batch: what trains moves, nothing else does
    tok = Tokens.of(encoder.tokenizer)
    rows = [{"code1": "def f(a):\n    return a", "code2": "def g(b):\n    return b", "label": 1}] * 2
    examples = [make_example("clone_detection", r, encoder.tokenizer, tok, 24, 12) for r in rows]
    model = TaskModel(encoder.model, "clone_detection").train()
    before = {n: p.detach().clone() for n, p in encoder.model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model(make_batch("clone_detection", examples, [0, 1], tok.pad, {})).backward()
    opt.step()
    moved = {n for n, p in encoder.model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and moved <= trainable
    if "lora" in variant:  # B starts at zero, so after one step only B has a gradient
        assert all("lora_B" in n for n in moved)


def test_generation_trains_through_a_method_with_the_tied_head_frozen(encoder):
    """The LM head is the frozen embedding matrix: the loss must still fall, through the adapters."""
    freeze_bottom(encoder.model, None)
    peft_methods.apply(encoder.model, "lora-r4", peft_methods.LoraSettings(dropout=0.0))
    assert not encoder.model.embeddings.word_embeddings.weight.requires_grad
    tok = Tokens.of(encoder.tokenizer)
    row = {"source": "def add(a, b):", "target": "return a + b"}
    examples = [make_example("line_completion", row, encoder.tokenizer, tok, 24, 12)] * 2
    seq = collate([ex["seq"] for ex in examples], tok.pad)
    batch = {"seq": seq, "labels": lm_labels(examples, seq["ids"].shape[1])}
    model = TaskModel(encoder.model, "line_completion").train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    losses = []
    for _ in range(8):
        loss = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1 and losses == sorted(losses, reverse=True), losses


def test_bitfit_rule_rejects_a_depth_out_of_range(encoder):
    with pytest.raises(TellyError, match="0..1"):
        freeze_except_biases(encoder.model, 2)


# ----------------------------------------------------------------- the runs


def _no_dropout(params, root):
    """The tiny model without dropout: cached and uncached runs then compute the same function."""
    from shutil import copytree

    folder = root / "model-no-dropout"
    if not folder.exists():
        copytree(params.finetune_model, folder)
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        (folder / "config.json").write_text(json.dumps(cfg))
    peft = params.finetune.peft.model_copy(update={"lora_dropout": 0.0})
    return override(
        params, "code_search", model=str(folder), peft=peft, epochs=2, train_size=8, valid_size=4, test_size=4
    )


def test_combined_variant_cached_and_uncached_runs_agree(setup, tmp_path):
    root, params = setup
    params = _no_dropout(params, root)
    runs = {}
    for cached in (True, False):
        p = override(params, cache_frozen=cached, checkpoint_dir=tmp_path / f"state-{cached}")
        runs[cached] = train_variant(
            p,
            "code_search",
            "telly-1+lora-r4",
            output_dir=tmp_path / f"m-{cached}",
            results_path=tmp_path / f"{cached}.json",
        )
    assert runs[True].settings["cache_frozen"] and not runs[False].settings["cache_frozen"]
    assert runs[True].cost["cache_seconds"] > 0 and runs[False].cost["cache_seconds"] == 0
    losses = {c: [e["train_loss"] for e in r.epochs] for c, r in runs.items()}
    assert losses[True] == pytest.approx(losses[False], rel=1e-4, abs=1e-5)
    assert runs[True].test == pytest.approx(runs[False].test, rel=1e-4, abs=1e-5)
    assert runs[True].cost["trainable_params"] == runs[False].cost["trainable_params"] == 2 * 4 * (32 + 32)


def test_method_run_saves_loadable_adapters_and_its_own_results(setup):
    root, params = setup
    params = override(params, "code_search", epochs=1, train_size=8, valid_size=4)
    result = train_variant(params, "code_search", "lora-r4")
    saved = json.loads((root / "results-peft" / "code_search" / "lora-r4" / "seed7.json").read_text())
    assert saved["cost"]["trainable_params"] == 2 * 2 * 4 * (32 + 32) == result.cost["trainable_params"]
    assert saved["settings"]["method"] == "lora-r4" and saved["cost"]["total_params"] > 100 * 256
    assert not (root / "results" / "code_search" / "lora-r4").exists()  # not in the RQ3 tables' folder
    import mlflow

    (tracked,) = mlflow.search_runs(  # the session's store (conftest): the latest run of this variant
        search_all_experiments=True,
        filter_string="tags.`telly.variant` = 'lora-r4'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    assert tracked.data.tags["telly.family"] == "lora" and tracked.data.params["method"] == "lora-r4"
    assert tracked.data.params["trainable_params"] == str(result.cost["trainable_params"])

    folder = root / "finetuned" / "code_search" / "lora-r4" / "seed7"
    merged = load_encoder(str(folder), device="cpu")  # the folder is a plain encoder (adapters merged)
    start = load_encoder(params.finetune_model, device="cpu")
    adapted = peft_methods.load_adapter(start.model, folder / peft_methods.ADAPTER_DIR)
    ids = merged.tokenizer(["def add(a, b):\n    return a + b"], return_tensors="pt")
    with torch.no_grad():
        expected = merged.model(**ids).last_hidden_state
        got = adapted(**ids).last_hidden_state
        plain = load_encoder(params.finetune_model, device="cpu").model(**ids).last_hidden_state
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(plain, expected, atol=1e-5)  # the adapters did change the encoder


def test_interrupted_method_run_resumes_to_the_same_result(setup, tmp_path):
    """The resume state holds the adapters and their optimiser state like any weights."""
    _, params = setup
    params = override(params, "code_search", epochs=2, train_size=8, valid_size=4, test_size=4)
    variant = "telly-1+lora-r4"
    whole = train_variant(params, "code_search", variant, output_dir=tmp_path / "w", results_path=tmp_path / "w.json")

    class Stop(Exception):
        pass

    def stop_after_first(epoch, record):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        train_variant(params, "code_search", variant, on_epoch=stop_after_first, output_dir=tmp_path / "r")
    seen = []
    resumed = train_variant(
        params, "code_search", variant, output_dir=tmp_path / "r", results_path=tmp_path / "r.json",
        on_epoch=lambda e, r: seen.append(e),
    )  # fmt: skip
    assert seen == [2]
    assert resumed.test == whole.test
    assert [r["train_loss"] for r in resumed.epochs] == [r["train_loss"] for r in whole.epochs]
