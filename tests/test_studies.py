"""Studies over several models: each model's params, its outputs apart from every other model's, tags that are safe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from telly.config import ConfigError, parse_params
from telly.forkserver import _without_model_option
from telly.studies import OUTPUT_PATHS, all_models, model_params, output_paths
from telly.tracking import start_run


@pytest.fixture
def study_file(tmp_path, raw_params):
    """params.yaml with two study models beside the default one."""

    def write(raw=raw_params) -> Path:
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    raw_params["study"]["models"] = {"minilm": "some/folder", "bert_b": "org/bert-b"}
    return write


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def test_no_output_of_one_model_can_overwrite_another_models(study_file):
    models = all_models(study_file())
    assert [tag for tag, _ in models] == ["embedded", "minilm", "bert_b"]
    paths = {tag: output_paths(p) for tag, p in models}
    assert set(paths["minilm"]) == {k for k in OUTPUT_PATHS if k in paths["embedded"]}  # every output is relocated
    for tag, mine in paths.items():
        for other, theirs in paths.items():
            if tag != other:
                clashes = [(k, q) for k, p in mine.items() for q in theirs.values() if _overlap(p, q)]
                assert not clashes, f"{tag} and {other} share {clashes}"
    assert all(p.parts[:3] == ("studies", "models", "minilm") for p in paths["minilm"].values())


def test_a_study_model_gets_its_encoder_the_settings_and_its_own_experiments(study_file):
    params = model_params(study_file(), "minilm")
    assert params.model.name_or_path == "some/folder" and params.finetune_model == "some/folder"
    assert params.model_tag == "minilm" and params.study_model == "minilm"
    assert params.finetune.task_names == ["code_search", "clone_detection"]  # study.settings laid over
    assert params.report.learning_curves is None
    assert params.tracking.experiment_prefix == "telly-minilm"
    assert params.tasks.out_dir == Path("data/tasks")  # the task sets are shared inputs
    root = model_params(study_file(), "embedded")  # the default tag is the root pipeline's own params
    assert root.study_model is None and root.model_tag == "embedded" and root.report.out_dir == Path("reports")


@pytest.mark.parametrize("tag", ["../up", "a/b", "Mini", "mini-lm", "1st", "", "x" * 33])
def test_a_tag_unsafe_in_a_path_or_a_stage_name_is_refused(study_file, raw_params, tag):
    raw_params["study"]["models"] = {tag: "some/folder"}
    with pytest.raises(ConfigError, match=r"study\.models.*not allowed"):
        parse_params(raw_params)


def test_study_settings_errors_name_the_key(raw_params):
    raw = yaml.safe_load(yaml.safe_dump(raw_params))
    raw["study"]["settings"]["finetune"]["results_dir"] = "elsewhere"
    with pytest.raises(ConfigError, match=r"study\.settings\.finetune\.results_dir: an output path"):
        parse_params(raw)
    raw = yaml.safe_load(yaml.safe_dump(raw_params))
    del raw["study"]["settings"]["finetune"]["seeds"]
    with pytest.raises(ConfigError, match=r"missing finetune\.seeds"):
        parse_params(raw)
    raw = yaml.safe_load(yaml.safe_dump(raw_params))
    raw["study"]["models"]["embedded"] = "x"
    with pytest.raises(ConfigError, match="the root pipeline's model"):
        parse_params(raw)


def test_unknown_tag_and_absolute_outputs_are_clear_errors(study_file, raw_params):
    with pytest.raises(ConfigError, match=r"no model 'roberta' \(known: embedded, minilm, bert_b\)"):
        model_params(study_file(), "roberta")
    raw_params["probe"]["out_dir"] = "/abs/probe"
    with pytest.raises(ConfigError, match=r"probe\.out_dir = '/abs/probe' is absolute"):
        model_params(study_file(raw_params), "minilm")


def test_runs_of_a_study_model_carry_its_tag(study_file, tracking_env):
    params = model_params(study_file(), "minilm")
    with start_run(params, "prepare") as run:
        pass
    got = mlflow.get_run(run.info.run_id)
    assert got.data.tags["telly.model"] == "minilm"
    assert mlflow.get_experiment(got.info.experiment_id).name == "telly-minilm-prepare"


def test_the_command_line_takes_the_model_before_the_command(study_file):
    path = study_file()
    ok = subprocess.run(
        [sys.executable, "-m", "telly", "--model", "bert_b", "variants", "--params", str(path)],
        capture_output=True,
        text=True,
    )
    # the hub id cannot be reached offline: the error names the study model's encoder, not the default one
    assert "org/bert-b" in ok.stdout + ok.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "telly", "--model", "nope", "variants", "--params", str(path)],
        capture_output=True,
        text=True,
    )
    said = " ".join(bad.stderr.split())  # rich wraps long lines
    assert bad.returncode == 2 and "no model 'nope'" in said and "Traceback" not in said
    # the launcher finds the command word behind the option (a stage goes to the fork server)
    assert _without_model_option(["--model", "minilm", "finetune", "--task", "x"]) == ["finetune", "--task", "x"]
    assert _without_model_option(["-m", "finetune", "probe"]) == ["probe"]
    assert _without_model_option(["--model=minilm", "report", "paper-regime"]) == ["report", "paper-regime"]


def test_the_study_pipeline_writes_only_under_the_study_folder():
    """studies/dvc.yaml: every output of a model's stage lies under study.dir/<tag>/ (the tags never meet)."""
    repo = Path(__file__).resolve().parents[1]
    stages = yaml.safe_load((repo / "studies/dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in body.get("outs", []) + body.get("metrics", [])]
        if name == "report-models":
            assert outs == ["${report.out_dir}/models"]
            continue
        tag = "${key}" if "foreach" in stage else "${item.model}"
        assert outs and all(o.startswith(f"${{study.dir}}/{tag}/") for o in outs), (name, outs)
        assert body["cmd"].startswith(f"telly --model {tag} "), name
        assert body["wdir"] == ".."


def test_the_report_across_models_refuses_a_single_model(study_file):
    proc = subprocess.run(
        [sys.executable, "-m", "telly", "--model", "minilm", "report", "models", "--params", str(study_file())],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "without --model" in " ".join(proc.stderr.split())  # rich wraps lines
