"""Each loader on a small file in the exact public format, and on a broken one."""

import json

import pytest

from telly.config import RealData
from telly.data import loaders as L
from telly.data.datasets import real_rows
from telly.errors import TellyError
from telly.jsonl import SchemaError
from telly.tasks import TASKS


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


CSN_ROW = {
    "repo": "a/b",
    "path": "x.py",
    "func_name": "add",
    "original_string": "def add(a, b):\n    return a + b",
    "language": "python",
    "code": 'def add(a, b):\n    """Add two numbers."""\n    return a + b',
    "code_tokens": ["def", "add", "(", "a", ",", "b", ")", ":", "return", "a", "+", "b"],
    "docstring": "Add two numbers.",
    "docstring_tokens": ["Add", "two", "numbers", "."],
    "sha": "abc",
    "url": "https://github.com/a/b/blob/abc/x.py#L1-L2",
    "partition": "test",
}


def test_codesearchnet_and_unixcoder_codebase(tmp_path):
    path = _jsonl(tmp_path / "test.jsonl", [CSN_ROW, {**CSN_ROW, "url": "u2"}])
    rows_search = rows = list(L.codesearchnet(path))
    assert rows[0] == {"id": CSN_ROW["url"], "query": "Add two numbers .", "code": "def add ( a , b ) : return a + b"}
    # summarization reads the same format: its source is the code, its target the docstring
    real = RealData(format="codesearchnet", train=path, valid=path, test=path)
    rows, codebase = real_rows(TASKS["code_summarization"], real, "test", None, 0)
    assert rows[1] == {"id": "u2", "source": "def add ( a , b ) : return a + b", "target": "Add two numbers ."}
    assert codebase is None and real_rows(TASKS["code_search"], real, "test", 1, 0)[0] == rows_search[:1]
    # UniXcoder's cleaned copy names the code tokens "function_tokens" in places
    cleaned = {"url": "u3", "function_tokens": ["def", "f"], "docstring_tokens": ["x"]}
    codebase = _jsonl(tmp_path / "codebase.jsonl", [{"url": "u3", "code_tokens": ["def", "f"]}, cleaned])
    assert [r["code"] for r in L.codesearchnet_codebase(codebase)] == ["def f", "def f"]
    assert list(L.codesearchnet_functions(path))[0]["code"] == CSN_ROW["code"]


def test_codesearchnet_wrong_schema_names_file_line_field(tmp_path):
    bad = dict(CSN_ROW)
    del bad["code_tokens"]
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(CSN_ROW) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(SchemaError, match=r"train\.jsonl:3: missing field\(s\) 'code_tokens' or 'function_tokens'"):
        list(L.codesearchnet(path))
    del bad["docstring_tokens"]
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(SchemaError, match=r"train\.jsonl:1: missing field\(s\) 'docstring_tokens'"):
        list(L.codesearchnet(path))
    with pytest.raises(TellyError, match="not found"):
        list(L.codesearchnet(tmp_path / "nope.jsonl"))


def test_bigclonebench(tmp_path):
    data = _jsonl(
        tmp_path / "data.jsonl",
        [{"func": "int f() { return 1; }", "idx": "10"}, {"func": "int g() { return 1; }", "idx": "11"}],
    )
    pairs = tmp_path / "train.txt"
    pairs.write_text("10\t11\t1\n11\t10\t0\n")
    rows = list(L.bigclonebench(data, pairs))
    assert rows == [
        {"id": "10-11", "code1": "int f() { return 1; }", "code2": "int g() { return 1; }", "label": 1},
        {"id": "11-10", "code1": "int g() { return 1; }", "code2": "int f() { return 1; }", "label": 0},
    ]
    pairs.write_text("10\t11\t1\n10\t12\t0\n")
    with pytest.raises(SchemaError, match=r"train\.txt:2: function idx '12' is not in"):
        list(L.bigclonebench(data, pairs))
    pairs.write_text("10 11\n")
    with pytest.raises(SchemaError, match=r"train\.txt:1: expected"):
        list(L.bigclonebench(data, pairs))
    _jsonl(data, [{"func": "x", "index": "10"}])
    with pytest.raises(SchemaError, match=r"data\.jsonl:1: missing field\(s\) 'idx'"):
        list(L.bigclonebench(data, pairs))


def test_poj104(tmp_path):
    path = _jsonl(tmp_path / "valid.jsonl", [{"code": "int main(){}", "index": "0", "label": "65"}])
    assert list(L.poj104(path)) == [{"id": "0", "code": "int main(){}", "label": 65}]
    _jsonl(path, [{"code": "int main(){}", "index": "0"}])
    with pytest.raises(SchemaError, match=r"valid\.jsonl:1: missing field\(s\) 'label'"):
        list(L.poj104(path))


def test_concode(tmp_path):
    nl = "returns the sum . concode_field_sep int total concode_elem_sep int count concode_field_sep void reset"
    path = _jsonl(tmp_path / "dev.json", [{"nl": nl, "code": "int function ( ) { return total ; }"}])
    assert list(L.concode(path)) == [{"id": "dev:1", "source": nl, "target": "int function ( ) { return total ; }"}]
    _jsonl(path, [{"nl": nl, "code": "x"}, {"code": "y"}])
    with pytest.raises(SchemaError, match=r"dev\.json:2: missing field\(s\) 'nl'"):
        list(L.concode(path))


def test_codexglue_line_completion(tmp_path):
    line = '<s> public class A { <EOL> int x = <NUM_LIT:1> ; <EOL> String s = "<STR_LIT>" ; <EOL> } </s>'
    path = tmp_path / "train.txt"
    path.write_text(line + "\n")
    (row,) = list(L.codexglue_lines(path, seed=1))
    assert row["source"].startswith("<s> public class A {") and row["source"].endswith("<EOL>")
    assert row["target"] in ("int x = <NUM_LIT:1> ;", 'String s = "<STR_LIT>" ;', "}")
    assert line.startswith(row["source"] + " " + row["target"])  # the target is the very next line
    assert list(L.codexglue_lines(path, seed=1)) == [row]  # deterministic per seed
    test = _jsonl(tmp_path / "test.json", [{"input": "<s> int x = <NUM_LIT:0> ; <EOL>", "gt": "return x ;"}])
    assert list(L.codexglue_lines(test)) == [
        {"id": "test:1", "source": "<s> int x = <NUM_LIT:0> ; <EOL>", "target": "return x ;"}
    ]
    path.write_text("public class A { }\n")
    with pytest.raises(SchemaError, match=r"train\.txt:1: a CodeXGLUE token line"):
        list(L.codexglue_lines(path))
