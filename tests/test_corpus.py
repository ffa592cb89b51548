import hashlib
import json
import os
import subprocess
import sys

import pytest
import yaml

from corpus_fixture import make_corpus, make_wheel, write_lock
from telly.config import parse_params
from telly.data.corpus import Counts, assign_splits, deduplicate, prepare
from telly.data.extract import extract_functions, first_sentence
from telly.data.fetch import read_lock
from telly.errors import TellyError

SOURCE = b'''
class Cache(Base):
    limit = 10

    def get(self, key, default=None):
        """Return the value for key, or default.

        Longer description.
        """
        # look it up
        return self._data.get(key, default)  # trailing

    @property
    def size(self):
        "Number of items in the cache."
        def helper():
            """Nested functions are not extracted."""
        return len(self._data)


def parse(text,
          strict=True):
    """Parse text into tokens. Second sentence."""
    return text.split()
'''


def test_extract_functions_fields():
    functions, had_error = extract_functions(SOURCE)
    assert not had_error
    assert [f.qualified_name for f in functions] == ["Cache.get", "Cache.size", "parse"]
    get, size, parse_fn = functions
    assert get.docstring.startswith("Return the value for key")
    assert get.docstring_tokens == ["Return", "the", "value", "for", "key", ",", "or", "default", "."]
    # comments and the docstring are not code tokens; a string literal is one token
    assert "#" not in " ".join(get.code_tokens) and '"""Return' not in " ".join(get.code_tokens)
    assert get.code_tokens[:4] == ["def", "get", "(", "self"]
    assert get.class_name == "Cache" and get.class_members == ["limit", "get", "size"]
    assert get.code.startswith('def get(self, key, default=None):\n    """Return')
    assert size.docstring == "Number of items in the cache."
    assert parse_fn.signature == "def parse(text, strict=True):"
    assert parse_fn.class_name is None and parse_fn.start_line == 21
    assert first_sentence(parse_fn.docstring) == "Parse text into tokens."


def test_docstring_only_function_has_no_body():
    functions, _ = extract_functions(b'def f():\n    """Only a docstring here."""\n')
    assert functions[0].has_body is False


def _params(tmp_path, raw_params, **prepare):
    raw_params["data"] = {
        "lockfile": str(tmp_path / "corpus.lock"),
        "raw_dir": str(tmp_path / "raw"),
        "corpus_dir": str(tmp_path / "corpus"),
    }
    raw_params["prepare"].update(prepare)
    return parse_params(raw_params)


def test_prepare_splits_by_project_and_is_deterministic(tmp_path, raw_params, tracking_env):
    wheels = make_corpus(tmp_path / "raw")
    write_lock(tmp_path / "corpus.lock", wheels)
    params = _params(tmp_path, raw_params, valid_fraction=0.15, test_fraction=0.15)
    metrics = prepare(params)
    out = tmp_path / "corpus" / "python"
    projects = {
        s: {json.loads(line)["repo"] for line in (out / f"{s}.jsonl").read_text().splitlines()}
        for s in ("train", "valid", "test")
    }
    assert all(projects.values())
    assert not (projects["train"] & projects["valid"]) and not (projects["train"] & projects["test"])
    assert not (projects["valid"] & projects["test"])
    assert sum(metrics["functions"].values()) > 100
    row = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    for field in (
        "repo",
        "path",
        "func_name",
        "original_string",
        "language",
        "code",
        "code_tokens",
        "docstring",
        "docstring_tokens",
        "url",
        "partition",
        "signature",
        "class_name",
        "id",
    ):
        assert field in row
    assert len(row["docstring_tokens"]) >= params.prepare.min_docstring_tokens
    digests = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in out.glob("*.jsonl")}
    prepare(params)
    assert digests == {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in out.glob("*.jsonl")}


def test_bad_inputs_are_skipped_and_counted(tmp_path, raw_params, tracking_env):
    raw = tmp_path / "raw"
    wheels = make_corpus(raw)
    # a non-UTF-8 file, a file that does not parse, and an empty project
    wheels.append(
        make_wheel(
            raw,
            "oddkit",
            {
                "oddkit/latin1.py": 'def f():\n    """Caf\xe9 is a word here."""\n    return 1\n'.encode("latin-1"),
                "oddkit/broken.py": b'def g(:\n    """Broken function signature here."""\n    return 2\n',
            },
        )
    )
    wheels.append(make_wheel(raw, "emptykit", {"emptykit/__init__.py": b"x = 1\n"}))
    write_lock(tmp_path / "corpus.lock", wheels)
    metrics = prepare(_params(tmp_path, raw_params, valid_fraction=0.15, test_fraction=0.15))
    counts = metrics["counts"]
    assert counts["files_not_utf8"] == 1
    assert counts["files_syntax_error"] == 1
    assert counts["projects_empty"] >= 1


def test_a_wheel_that_no_longer_matches_its_hash_stops_prepare_with_exit_2(tmp_path, raw_params, tracking_env):
    wheels = make_corpus(tmp_path / "raw")
    write_lock(tmp_path / "corpus.lock", wheels)
    tampered = wheels[0]
    tampered.write_bytes(tampered.read_bytes() + b"\0")
    params = _params(tmp_path, raw_params, valid_fraction=0.15, test_fraction=0.15)
    with pytest.raises(TellyError, match=rf"{tampered.name}: sha256 .* does not match") as err:
        prepare(params)
    assert "dvc checkout data.dvc" in str(err.value) and "telly data fetch" in str(err.value)
    assert not (tmp_path / "corpus" / "python" / "train.jsonl").exists(), "no smaller corpus is written"

    raw_params_file = tmp_path / "params.yaml"
    raw_params_file.write_text(yaml.safe_dump(raw_params))
    cli = subprocess.run(
        [sys.executable, "-m", "telly", "prepare", "--params", str(raw_params_file)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "500"},  # rich wraps long paths at 80 columns otherwise
    )
    assert cli.returncode == 2, cli.stderr[-2000:]
    assert tampered.name in cli.stderr and "dvc checkout data.dvc" in cli.stderr


def test_no_wheels_is_a_clear_error(tmp_path, raw_params):
    (tmp_path / "raw").mkdir()
    write_lock(tmp_path / "corpus.lock", make_corpus(tmp_path / "elsewhere", {"a": ["textwrap.py"]}))
    with pytest.raises(TellyError, match="no wheels found"):
        prepare(_params(tmp_path, raw_params))


def test_deduplicate_keeps_projects_own_copy():
    base = {"func_name": "f", "start_line": 1}
    rows = [
        dict(
            base, repo="pip", path="pip/_vendor/requests/x.py", code_tokens=["def", "f", "(", ")", ":", "return", "1"]
        ),
        dict(base, repo="requests", path="requests/x.py", code_tokens=["def", "f", "(", ")", ":", "return", "1"]),
        dict(base, repo="other", path="o.py", code_tokens=["def", "f", "(", "x", ")", ":", "return", "x"]),
    ]
    counts = Counts()
    kept = deduplicate(rows, counts)
    assert {r["repo"] for r in kept} == {"requests", "other"}
    assert counts.dropped_exact_duplicate == 1


def test_assign_splits_keeps_big_projects_in_train(raw_params):
    cfg = parse_params(raw_params).prepare
    sizes = {"huge": 5000, **{f"p{i}": 300 for i in range(12)}}
    split = assign_splits(sizes, cfg)
    assert split["huge"] == "train"
    assert {"train", "valid", "test"} == set(split.values())


def test_lock_file_errors(tmp_path):
    lock = tmp_path / "lock"
    lock.write_text("django==5.0\n")
    with pytest.raises(TellyError, match=r"lock:1: expected 'name==version --hash"):
        read_lock(lock)


def test_fetch_without_network_says_what_to_do(tmp_path, raw_params, monkeypatch):
    import subprocess

    from telly.data import fetch as fetch_mod

    lock = tmp_path / "corpus.lock"
    lock.write_text("django==5.0.6 --hash=sha256:" + "0" * 64 + "\n")
    raw_params["data"]["lockfile"] = str(lock)
    raw_params["data"]["raw_dir"] = str(tmp_path / "raw")

    def no_network(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version that satisfies django==5.0.6\n")

    monkeypatch.setattr(fetch_mod.subprocess, "run", no_network)
    with pytest.raises(TellyError, match=r"(?s)no network.*dvc pull data.dvc"):
        fetch_mod.fetch(parse_params(raw_params))
