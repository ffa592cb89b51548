"""The report's PEFT section: Pareto fronts, budget answers and their intervals, on synthetic runs."""

from __future__ import annotations

import pytest

from report_fixture import run_json, write_all
from telly.config import parse_params
from telly.jsonl import write_json
from telly.reporting import peft
from telly.reporting.stage import run


def _point(variant, quality, params, seconds, low=None, high=None):
    return peft.Point(
        variant, quality, low, high, 1 if low is None else 3, {"trainable_params": params, "epoch_seconds": seconds}
    )


def test_pareto_front_keeps_only_undominated_points():
    points = [
        _point("base", 0.50, 1000, 10),
        _point("telly-1", 0.49, 600, 6),
        _point("telly-3", 0.40, 200, 4),
        _point("lora-r8", 0.45, 50, 9),
        _point("bitfit", 0.30, 80, 8),  # dearer and worse than LoRA on parameters
    ]
    assert [p.variant for p in peft.pareto_front(points, "trainable_params")] == ["lora-r8", "telly-1", "base"]
    assert [p.variant for p in peft.pareto_front(points, "epoch_seconds")] == ["telly-3", "telly-1", "base"]


def test_comparisons_are_inconclusive_unless_intervals_separate():
    lora = _point("lora-r8", 0.45, 50, 9, 0.44, 0.46)
    assert peft.compare(lora, _point("telly-3", 0.40, 200, 4, 0.39, 0.41)) == "LoRA r=8"
    assert peft.compare(lora, _point("telly-3", 0.45, 200, 4, 0.43, 0.47)).startswith("inconclusive (95%")
    single = peft.compare(_point("lora-r8", 0.45, 50, 9), _point("telly-3", 0.40, 200, 4))
    assert single == "inconclusive (single seed; higher point estimate: LoRA r=8)"


def test_budget_answers_compare_each_method_with_what_fits_its_budget():
    points = [
        _point("base", 0.50, 1000, 10),
        _point("telly-3", 0.40, 200, 4),
        _point("lora-r8", 0.45, 50, 9),
        _point("telly-3+lora-r8", 0.41, 25, 3),
    ]
    by_params = {r[0]: r for r in peft.budget_answers(points, "trainable_params")}
    assert by_params["LoRA r=8"][2] == "–" and by_params["LoRA r=8"][3].startswith("only the method fits")
    by_time = {r[0]: r for r in peft.budget_answers(points, "epoch_seconds")}
    assert by_time["LoRA r=8"][2] == "Telly-3 (4.00)"  # Base (10 s) does not fit 9 s
    assert (
        "Telly-3 + LoRA r=8" in by_time
        and "cheapest Base/Telly-K, Telly-3, costs 4.00" in by_time["Telly-3 + LoRA r=8"][3]
    )


def _write_peft(root, task, variant, quality, params, seconds, seed=123456, name=None):
    r = run_json(task, "base", quality=quality, epoch_s=seconds, cached=False, params=params)
    r.update(variant=variant, k=None)
    r["cost"]["trainable_params"] = params
    r["settings"]["seed"] = seed
    write_json(root / "results/finetune-peft" / task / f"{name or variant}.json", r)


def test_report_has_the_section_figures_and_seed_intervals(raw_params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw_params["report"]["track"] = False
    raw_params["finetune"]["peft"]["tasks"] = ["code_search", "clone_detection"]
    params = parse_params(raw_params)
    write_all(tmp_path, holding=True)
    _write_peft(tmp_path, "code_search", "lora-r8", 0.47, 50, 9.0)
    for seed, q in ((1, 0.46), (2, 0.47), (3, 0.48)):  # three seeds of BitFit on clone detection
        _write_peft(tmp_path, "clone_detection", "bitfit", q, 80, 5.0, seed=seed, name=f"bitfit/seed{seed}")
    md = run(params).read_text()
    assert "## Beyond the paper: Telly-K against LoRA, BitFit and (IA)3" in md
    assert (tmp_path / "reports/figures/peft-code_search.png").stat().st_size > 1000
    assert (tmp_path / "reports/figures/peft-clone_detection.png").exists()
    assert "| LoRA r=8 | 0.470 (1 seed) | 50 | 9.00 |" in md
    assert "0.470 [0.445, 0.495] (3 seeds)" in md  # BitFit: t-interval over its three seeds
    assert "inconclusive (single seed" in md  # Base and Telly-K have one seed each
    html = (tmp_path / "reports/report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 + 2  # the RQ figures and the two PEFT figures, embedded


def test_section_says_what_to_run_without_method_runs(raw_params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = parse_params(raw_params)
    md = peft.section(params, tmp_path / "figures")
    assert "No method runs yet (`dvc repro finetune-peft`)" in md and not (tmp_path / "figures").exists()


@pytest.mark.parametrize("bad", ["{", "[1, 2]"])
def test_unreadable_or_foreign_json_is_handled(tmp_path, bad):
    (tmp_path / "code_search").mkdir()
    (tmp_path / "code_search" / "x.json").write_text(bad)
    if bad == "{":
        with pytest.raises(Exception, match="x.json: not valid JSON"):
            peft.read_points([tmp_path], "code_search")
    else:
        assert peft.read_points([tmp_path], "code_search") == []


def test_methods_are_compared_paired_over_test_rows_when_runs_have_them(raw_params, tmp_path, monkeypatch):
    from report_fixture import write_run

    monkeypatch.chdir(tmp_path)
    raw_params["report"]["track"] = False
    raw_params["finetune"]["peft"]["tasks"] = ["code_search"]
    params = parse_params(raw_params)
    write_all(tmp_path, holding=True)  # Base 0.50 (two seeds), Telly-0 0.50, Telly-1 0.498, Telly-3 0.40
    folder = tmp_path / "results/finetune-peft/code_search"
    for variant, quality, trainable, seconds in (("lora-r8", 0.55, 50, 9.0), ("bitfit", 0.36, 90, 3.0)):
        r = run_json("code_search", "base", quality=quality, epoch_s=seconds, cached=False, params=trainable)
        r.update(variant=variant, k=None)
        r["cost"]["trainable_params"] = trainable
        write_run(folder, r, quality)
    points = {p.variant: p for p in peft.read_points([tmp_path / "results/finetune", folder.parent], "code_search")}
    assert points["lora-r8"].rows and len(points["base"].rows) == 2  # per seed, on the same rows
    # LoRA is 10% above Telly-1 (0.55 vs 0.498) on every row: the interval excludes 0
    assert peft.compare(points["lora-r8"], points["telly-1"]).startswith("LoRA r=8 (LoRA r=8 vs Telly-1 +10.4%")
    assert peft.compare(points["bitfit"], points["telly-3"]).startswith("Telly-3 (BitFit vs Telly-3 -10.0%")
    md = run(params).read_text()
    assert "paired 95% two-level bootstrap interval (seeds, then test rows" in md
    assert "Base beats its no-training baseline on this task (RQ3)" in md  # the fixture's baselines sit at 0.3


def test_comparison_is_inconclusive_when_the_paired_interval_holds_zero():
    import numpy as np

    rng = np.random.default_rng(0)
    noise = rng.normal(0.5, 0.3, 200).clip(0, 1)
    a = _point("lora-r8", 0.5, 50, 9)
    b = _point("telly-3", 0.5, 200, 4)
    a.task = b.task = "code_search"
    a.rows, b.rows = [noise[None, :]], [rng.permutation(noise)[None, :]]
    assert peft.compare(a, b).startswith("inconclusive (LoRA r=8 vs Telly-3")
