"""The per-task table: ratios to Base as the paper's section 3.3, and the CLI around it."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from telly.cli import app
from telly.errors import TellyError
from telly.finetuning.table import clock, load_runs, task_table, write_table
from telly.jsonl import write_json


def run(variant, paper, trainable, epoch_s, conv_epochs, mrr):
    return {
        "task": "code_search",
        "variant": variant,
        "cost": {
            "paper_params": paper,
            "trainable_params": trainable,
            "epoch_seconds": epoch_s,
            "epochs_to_convergence": conv_epochs,
            "time_to_convergence": epoch_s * conv_epochs,
            "cache_seconds": 0.0,
            "peak_memory_mb": 100.0,
        },
        "test": {"mrr": mrr, "r_at_1": 0.5, "r_at_5": 0.8, "r_at_10": 0.9},
    }


def test_ratios_to_base():
    df = task_table("code_search", [run("base", 100, 101, 10.0, 4, 0.5), run("telly-2", 40, 41, 4.0, 2, 0.55)])
    t = df.set_index("variant").loc["telly-2"]
    assert t["params_reduction_pct"] == pytest.approx(60.0)
    assert t["epoch_reduction_pct"] == pytest.approx(60.0)
    assert t["convergence_reduction_pct"] == pytest.approx(80.0)  # 8 s vs 40 s
    assert t["mrr_vs_base_pct"] == pytest.approx(10.0)
    with pytest.raises(TellyError, match="no Base run"):
        task_table("code_search", [run("telly-2", 40, 41, 4.0, 2, 0.55)])


def test_seeds_are_averaged_with_their_spread_and_ratios_use_the_means(tmp_path):
    runs = [
        run("base", 100, 101, 10.0, 4, 0.5),
        run("base", 100, 101, 12.0, 4, 0.7),
        run("telly-2", 40, 41, 4.0, 2, 0.66),
    ]
    df = task_table("code_search", runs).set_index("variant")
    base, t = df.loc["base"], df.loc["telly-2"]
    assert (base["seeds"], t["seeds"]) == (2, 1)
    assert base["mrr"] == pytest.approx(0.6) and base["mrr_std"] == pytest.approx(0.1414, abs=1e-4)
    assert t["mrr_std"] == 0.0 and t["mrr_vs_base_pct"] == pytest.approx(10.0)
    assert t["epoch_reduction_pct"] == pytest.approx(100 * (1 - 4.0 / 11.0))
    for i, r in enumerate(runs):  # the seeds' layout: <variant>/seed<S>.json
        write_json(tmp_path / "code_search" / r["variant"] / f"seed{i}.json", r)
    write_json(tmp_path / "code_search" / "base.json", run("base", 1, 1, 1.0, 1, 0.0))  # stale, from before seeds
    assert len(load_runs(tmp_path / "code_search")) == 3  # the seed runs only: the two layouts never mix
    write_table("code_search", tmp_path / "code_search", tmp_path / "tables")
    md = (tmp_path / "tables" / "code_search.md").read_text()
    assert "| 2 | 0.6 ± 0.14 |" in md and "| 1 | 0.66 |" in md  # Base: 2 seeds, mean ± std; Telly-2: one seed


def test_clock():
    assert (clock(12.34), clock(125), clock(3723)) == ("12.3s", "2m05s", "1h02m03s")


def test_cli_writes_the_table(tmp_path, raw_params, monkeypatch):
    import yaml

    from finetune_fixture import make_setup

    _, raw = make_setup(tmp_path, raw_params)
    raw["finetune"].update(variants=["base", "telly-2", "telly-10"], deep_variants=[], seeds=[7])
    results = tmp_path / "results"
    for variant, k in (("telly-10", 0.4), ("base", 0.5), ("telly-2", 0.45)):
        r = run(variant, 100 - 10 * (variant != "base"), 1, 5.0, 2, k) | {"settings": {"seed": 7}}
        write_json(results / "code_search" / variant / "seed7.json", r)
    stale = run("telly-3", 50, 1, 5.0, 2, 0.1) | {"settings": {"seed": 7}}  # not in the matrix any more
    write_json(results / "code_search" / "telly-3" / "seed7.json", stale)
    write_json(
        results / "code_search" / "base" / "seed8.json", run("base", 100, 1, 5.0, 2, 0.0) | {"settings": {"seed": 8}}
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    out = CliRunner().invoke(app, ["finetune", "--task", "code_search", "--table", "-p", str(tmp_path / "params.yaml")])
    assert out.exit_code == 0, out.output
    md = (results / "tables" / "code_search.md").read_text()
    # the runs of the configured matrix only: a stale variant or seed left in the folder is not read
    assert [line.split("|")[1].strip() for line in md.splitlines()[4:]] == ["Base", "Telly-2", "Telly-10"]
    assert "| 0.5 |" in md
    assert (results / "tables" / "code_search.csv").exists()
    with pytest.raises(TellyError, match="no run results"):
        write_table("clone_detection", results / "clone_detection", results / "tables")
