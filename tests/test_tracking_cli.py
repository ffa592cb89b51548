import subprocess
import sys

import mlflow
import yaml

from telly.config import parse_params
from telly.tracking import start_run


def test_runs_are_tagged_with_stage_and_commit(raw_params, tracking_env):
    params = parse_params(raw_params)
    with start_run(params, "prepare", log_params={"prepare": {"seed": 1}}) as run:
        mlflow.log_metric("x", 1.0)
        with start_run(params, "prepare", "child", nested=True) as child:
            pass
    got = mlflow.get_run(run.info.run_id)
    assert got.data.tags["telly.stage"] == "prepare"
    assert (
        len(got.data.tags["mlflow.source.git.commit"]) in (40, 7)
        or got.data.tags["mlflow.source.git.commit"] == "unknown"
    )
    assert got.data.params["prepare.seed"] == "1"
    assert mlflow.get_run(child.info.run_id).data.tags["mlflow.parentRunId"] == run.info.run_id
    assert mlflow.get_experiment(got.info.experiment_id).name == "telly-prepare"


def test_cli_reports_bad_params_without_traceback(tmp_path, raw_params):
    raw_params["prepare"]["max_code_lines"] = "many"
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(raw_params))
    proc = subprocess.run(
        [sys.executable, "-m", "telly", "prepare", "--params", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "prepare.max_code_lines" in proc.stderr and "'many'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_help_lists_stages():
    proc = subprocess.run([sys.executable, "-m", "telly", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "prepare" in proc.stdout and "data" in proc.stdout


def test_default_store_is_embedded_with_artifacts_under_mlruns(tmp_path, raw_params, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    params = parse_params(raw_params)
    with start_run(params, "prepare") as run:
        pass
    assert (tmp_path / "mlruns" / "mlflow.db").exists()
    assert run.info.artifact_uri.startswith((tmp_path / "mlruns" / "artifacts").as_uri())


def test_variants_command_prints_base_and_every_k_of_the_model(tmp_path, raw_params):
    import yaml
    from typer.testing import CliRunner

    from model_fixture import make_tiny_roberta
    from telly.cli import app

    raw_params["model"]["name_or_path"] = str(make_tiny_roberta(tmp_path / "m", layers=3))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw_params))
    out = CliRunner().invoke(app, ["variants", "--params", str(tmp_path / "p.yaml")])
    assert out.exit_code == 0, out.output
    assert "variants: [base, telly-0, telly-1, telly-2]" in out.output
