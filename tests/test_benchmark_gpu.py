"""benchmarks/gpu.py, the prepared GPU measurement, run in its CPU smoke mode: every row written, every figure finite."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_gpu_benchmark():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def finite_numbers(value) -> list[float]:
    """Every number in a JSON value (bools excepted)."""
    if isinstance(value, dict):
        return [x for v in value.values() for x in finite_numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in finite_numbers(v)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    return []


def test_smoke_writes_every_row_with_finite_figures(tmp_path):
    gpu = load_gpu_benchmark()
    gpu.main(["--smoke", "--out", str(tmp_path), "--peak-tflops", "0.05"])
    result = json.loads((tmp_path / "gpu-smoke.json").read_text())
    table = (tmp_path / "gpu-smoke.md").read_text()

    expected = [("base", "base")] + [(f"telly-{k}", r) for k in gpu.SMOKE.ks for r in ("cached", "paper")]
    rows = result["training"]
    assert [(r["variant"], r["regime"]) for r in rows] == expected
    for r in rows:
        for key in ("examples_per_s", "step_s", "peak_gb", "flops_per_s", "mfu", "speedup"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (r["variant"], key, r[key])
        assert f"| {r['variant']} | {r['regime']} | {r['batch']} |" in table
    cached = [r for r in rows if r["regime"] == "cached"]
    assert all(r["cache_s_per_example"] > 0 for r in cached)
    assert rows[0]["speedup"] == 1.0

    for name in ("incremental", "reference"):
        assert result["decoding"][name]["tokens_per_s"] > 0 and result["decoding"][name]["seconds"] > 0
    assert result["ranking"]["queries"] == gpu.SMOKE.queries and result["ranking"]["seconds"] > 0
    assert 0 < result["ranking"]["mrr"] <= 1
    # the goals the smoke shapes have rows for: Base's MFU and decoding (no Telly-6 / Telly-11 at 2 layers)
    assert [g["goal"] for g in result["goals"]] == ["base MFU", "decoding speed-up"]
    for goal in result["goals"]:
        assert f"| {goal['goal']} | {goal['at_least']} |" in table

    numbers = finite_numbers(result)
    assert numbers and all(math.isfinite(x) for x in numbers)
    assert "nan" not in table.lower() and "inf" not in table.lower()
