"""`telly finetune` data-parallel: two CPU processes (torchrun, gloo) against one process.

Each case really launches ``torchrun --standalone --nproc_per_node 2 -m telly finetune`` on a
2-layer RoBERTa and tiny task data made here, then checks that it finishes, that one process
wrote (one metrics json, one published model, one MLflow run, no leftovers) and that its
numbers are those of a single-process run of the same params.

Why the numbers must agree: ``batch_size`` is the global batch, so both runs take the same
batches in the same order; DDP averages the two half-batch gradients, and the losses are
built to be the whole batch's (code search gathers every process's codes as negatives, the
LM loss divides by the whole batch's target tokens). Only the floating-point summation order
differs. Dropout is off in the test model: with it on, each process would draw its own masks.
Measured on this machine: weights within 1.2e-6 of the one-process run (training moves them by
5.7e-3), losses within 1.6e-7 relative, identical valid and test metrics. The tolerances below
(1e-4 on weights, 1e-5 relative on losses and metrics) leave room for other CPUs' kernels and
still catch per-process negatives or per-process token means (each, turned on instead of the
whole-batch losses, fails this test).

Cases (15-30 s each on 2 cores):
- code search, Telly-1 with frozen-prefix caching, resumed by the two processes from the state
  a one-process run left after epoch 1 (batch_size is global, so a state resumes on any number
  of processes);
- code summarization, Base from scratch: the whole model under DDP, and beam-search outputs
  gathered from a last eval batch that accelerate pads (7 examples, global eval batch 4).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finetune_fixture import make_setup
from telly.config import parse_params
from telly.errors import TellyError
from telly.finetuning.train import _check_batches, train_variant
from telly.models.loading import load_encoder

EPOCHS = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from conftest import REPO

    root = tmp_path_factory.mktemp("ddp")
    _, raw = make_setup(root, yaml.safe_load((REPO / "params.yaml").read_text()))
    config = root / "model" / "config.json"
    config.write_text(
        json.dumps({**json.loads(config.read_text()), "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    )
    raw["finetune"]["eval_batch_size"] = 4  # global: 2 per process
    for task in raw["finetune"]["tasks"].values():  # 16 training rows in global batches of 4
        task.update(epochs=EPOCHS, valid_size=7, test_size=7)  # 7 = 4 + 3: the last eval batch is padded
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    return root, parse_params(raw), params_file


def launch_two_processes(root: Path, params_file: Path, task: str, variant: str, mlflow_uri: str) -> str:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "telly",
        "finetune",
        "--task",
        task,
        "--variant",
        variant,
        "--params",
        str(params_file),
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=180)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output


def max_weight_difference(folder_a: Path, folder_b: Path) -> float:
    """Over the encoder's weights but the pooler (no head uses it; its initial weights depend on a seed)."""
    a, b = (load_encoder(f, device="cpu").model.state_dict() for f in (folder_a, folder_b))
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if not k.startswith("pooler."))


@pytest.mark.parametrize(
    ("task", "variant", "resume"), [("code_search", "telly-1", True), ("code_summarization", "base", False)]
)
def test_two_processes_give_the_one_process_result_written_once(setup, tmp_path, task, variant, resume):
    root, params, params_file = setup
    ft = params.finetune
    reference = train_variant(params, task, variant, results_path=tmp_path / "one.json", output_dir=tmp_path / "one")

    first_epoch = []
    if resume:  # one process stops after epoch 1 and leaves its state; the two processes go on from it

        class Stop(Exception):
            pass

        def stop(epoch, record):
            first_epoch.append(record)
            raise Stop

        with pytest.raises(Stop):
            train_variant(params, task, variant, on_epoch=stop)
        assert (ft.checkpoint_dir / task / variant / "seed7" / "last.pt").exists()

    uri = f"sqlite:///{tmp_path / 'ddp-mlflow.db'}"
    launch_two_processes(root, params_file, task, variant, uri)

    # one writer: one metrics json, one published model, one MLflow run, nothing half-written left
    assert sorted(p.name for p in (ft.results_dir / task / variant).iterdir()) == ["seed7.examples.jsonl", "seed7.json"]
    assert sorted(p.name for p in (ft.output_dir / task / variant).iterdir()) == ["seed7"]
    assert not (ft.checkpoint_dir / task / variant / "seed7").exists()
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(f"{params.tracking.experiment_prefix}-finetune")
    runs = client.search_runs([experiment.experiment_id])
    assert [(r.info.run_name, r.info.status) for r in runs] == [(f"{task}/{variant}/seed7", "FINISHED")]
    assert runs[0].data.tags["telly.seed"] == "7"
    assert runs[0].data.params["resumed_from_epoch"] == ("1" if resume else "0")

    # the one-process numbers
    ddp = json.loads((ft.results_dir / task / variant / "seed7.json").read_text())
    assert ddp["system"]["system.processes"] == "2" and reference.system["system.processes"] == "1"
    assert ddp["settings"] == reference.settings and ddp["best_epoch"] == reference.best_epoch
    assert ddp["test"] == pytest.approx(reference.test, rel=1e-5, abs=1e-6)
    assert len(ddp["epochs"]) == EPOCHS
    for name in ("train_loss", "valid_score", "lr"):
        expected = [r[name] for r in reference.epochs]
        assert [r[name] for r in ddp["epochs"]] == pytest.approx(expected, rel=1e-5, abs=1e-6), name
    if resume:
        assert ddp["epochs"][0] == first_epoch[0]  # epoch 1 came from the saved state, not trained again
    assert max_weight_difference(ft.output_dir / task / variant / "seed7", tmp_path / "one") < 1e-4
    assert max_weight_difference(tmp_path / "one", ft.model) > 1e-3  # training moved the weights


def test_a_global_batch_must_split_evenly_over_the_processes():
    _check_batches("code_search", 4, 8, 2)
    with pytest.raises(TellyError, match=r"finetune.tasks.code_search.batch_size = 3: .* multiple of 2"):
        _check_batches("code_search", 3, 8, 2)
    with pytest.raises(TellyError, match=r"finetune.eval_batch_size = 6: .* multiple of 4"):
        _check_batches("code_search", 4, 6, 4)
