import json
import re

import pytest
import yaml

from telly.config import ConfigError, load_params, parse_params, read_params_file


def test_repository_params_are_valid():
    params = load_params("params.yaml")
    assert params.prepare.language == "python"
    assert 0 < params.prepare.valid_fraction < 0.5


def test_bad_value_names_key_value_and_what_is_allowed(raw_params):
    raw_params["prepare"]["language"] = "cobol"
    with pytest.raises(ConfigError) as err:
        parse_params(raw_params, "params.yaml")
    msg = str(err.value)
    assert "prepare.language" in msg and "'cobol'" in msg and "python" in msg


def test_missing_value_is_named(raw_params):
    del raw_params["prepare"]["max_code_lines"]
    with pytest.raises(ConfigError, match=r"prepare\.max_code_lines: missing"):
        parse_params(raw_params)


def test_sections_take_the_top_level_seed_unless_they_set_one(raw_params):
    raw_params["seed"] = 7
    raw_params["tune"]["seed"] = 3
    p = parse_params(raw_params)
    assert p.prepare.seed == p.pretrain.seed == p.tasks.seed == p.model.seed == 7
    assert p.tune.seed == 3 and p.finetune.seeds[0] == 123456  # its own, and the paper's downstream seed first


def test_unknown_key_is_rejected(raw_params):
    raw_params["prepare"]["max_code_line"] = 10
    with pytest.raises(ConfigError, match=r"prepare\.max_code_line: unknown key"):
        parse_params(raw_params)


def test_out_of_range_fraction(raw_params):
    raw_params["prepare"]["test_fraction"] = 0.7
    with pytest.raises(ConfigError, match=r"prepare\.test_fraction"):
        parse_params(raw_params)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "p.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    bad.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="mapping"):
        load_params(bad)


@pytest.mark.parametrize(
    "params_file", ["params.yaml", "tests/fixtures/params-tiny.yaml", "profiles/paper-unixcoder.yaml"]
)
def test_every_param_a_dvc_stage_tracks_is_written_out(params_file):
    """DVC reads params.yaml itself, not our defaults: a key a stage tracks must be in every params file."""
    from conftest import REPO

    params = read_params_file(REPO / params_file)
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    missing = []
    for name, stage in stages.items():
        for key in stage.get("params", []):
            if not isinstance(key, str) or "${" in key:  # templated keys resolve per stage item
                continue
            node = params
            for part in key.split("."):
                if not isinstance(node, dict) or part not in node:
                    missing.append(f"{name}: {key}")
                    break
                node = node[part]
    assert not missing, f"{params_file} lacks keys that dvc.yaml tracks: {missing}"


def test_deep_task_names_default_to_every_task_and_must_be_tasks(raw_params):
    from telly.config import parse_params

    raw_params["finetune"].pop("deep_task_names", None)
    ft = parse_params(raw_params).finetune
    assert ft.deep_task_names == ft.task_names
    raw_params["finetune"]["task_names"] = ["code_search"]
    raw_params["finetune"]["deep_task_names"] = ["code_search", "line_completion"]
    with pytest.raises(ConfigError, match=r"deep_task_names \['line_completion'\] are not in task_names"):
        parse_params(raw_params)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("finetune.tasks.code_search", "learning_rate", float("inf")),
        ("finetune", "max_grad_norm", float("nan")),
        ("pretrain", "lr", float("inf")),
        ("prepare", "valid_fraction", float("nan")),
        ("similarity", "ci_level", float("nan")),
    ],
)
def test_nan_and_infinity_are_rejected_in_every_section(raw_params, section, key, value):
    node = raw_params
    for part in section.split("."):
        node = node[part]
    node[key] = value
    with pytest.raises(ConfigError, match=re.escape(f"{section}.{key}: value {value!r} is not allowed")):
        parse_params(raw_params, "params.yaml")


def test_yaml_infinity_is_rejected(tmp_path, raw_params):
    text = re.sub(r"learning_rate: [0-9.e+-]+", "learning_rate: .inf", yaml.safe_dump(raw_params), count=1)
    assert "learning_rate: .inf" in text
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"learning_rate: value inf is not allowed"):
        load_params(path)


@pytest.fixture
def guarded(tmp_path, raw_params):
    """params.yaml in a folder of its own, read as the CLI reads it (conftest lifts the guard afterwards)."""
    from telly import cli

    path = tmp_path / "params.yaml"
    path.write_text("# the team's settings\n" + yaml.safe_dump(raw_params))
    cli._params(path)
    return path


def test_an_edit_of_params_during_a_stage_stops_its_outputs_naming_the_keys(guarded, tmp_path):
    from telly.files import atomic_dir
    from telly.jsonl import write_json

    write_json(tmp_path / "out" / "metrics.json", {"mrr": 0.5})  # unchanged: written
    text = guarded.read_text()
    guarded.write_text(text.replace("# the team's settings", "# the team's settings, reformatted\n"))
    write_json(tmp_path / "out" / "metrics.json", {"mrr": 0.6})  # a comment only: still the same params
    raw = yaml.safe_load(text)
    raw["finetune"]["tasks"]["code_search"]["learning_rate"] = 1e-4
    raw["pretrain"]["new_key"] = 1
    guarded.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        write_json(tmp_path / "out" / "metrics.json", {"mrr": 0.7})
    assert "finetune.tasks.code_search.learning_rate, pretrain.new_key; the outputs were not written" in str(err.value)
    assert str(guarded) in str(err.value)
    with pytest.raises(ConfigError, match="learning_rate"), atomic_dir(tmp_path / "out" / "model") as tmp:
        (tmp / "weights").write_text("x")
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == {"mrr": 0.6}
    assert not (tmp_path / "out" / "model").exists()
    guarded.unlink()
    with pytest.raises(ConfigError, match="removed while this stage ran"):
        write_json(tmp_path / "out" / "metrics.json", {"mrr": 0.7})
