"""Behaviour classes: functions grouped by running them, contained, on shared inputs (telly.data.behaviour)."""

from __future__ import annotations

import ast
import hashlib
import json
import zipfile

import pytest

from telly.config import ConfigError, parse_params
from telly.data import behaviour
from telly.data import datasets as D
from telly.errors import TellyError

BUBBLE = """
def bubble_sort(items):
    data = list(items)
    for i in range(len(data)):
        for j in range(len(data) - i - 1):
            if data[j] > data[j + 1]:
                data[j], data[j + 1] = data[j + 1], data[j]
    return data
"""
MERGE = """
def merge_sort(seq):
    if len(seq) <= 1:
        return seq
    mid = len(seq) // 2
    left, right = merge_sort(seq[:mid]), merge_sort(seq[mid:])
    out = []
    while left and right:
        out.append(left.pop(0) if left[0] <= right[0] else right.pop(0))
    return out + left + right
"""
INSERTION_IN_PLACE = """
def insertion_sort(arr):
    for k in range(1, len(arr)):
        key = arr[k]
        while k > 0 and arr[k - 1] > key:
            arr[k] = arr[k - 1]
            k -= 1
        arr[k] = key
"""
OFF_BY_ONE = """
def bubble_sort(items):
    data = list(items)
    for i in range(len(data)):
        for j in range(len(data) - i - 2):
            if data[j] > data[j + 1]:
                data[j], data[j + 1] = data[j + 1], data[j]
    return data
"""
GCD_LOOP = "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a\n"
GCD_RECURSIVE = "def greatest_common_divisor(x, y):\n    return x if y == 0 else greatest_common_divisor(y, x % y)\n"
GCD_MATH = "import math\n\ndef hcf(p, q):\n    return math.gcd(p, q)\n"

SHARED = behaviour.inputs(6, 42)


def _candidate(code: str, source: str) -> behaviour.Candidate:
    name = code.split("def ", 1)[1].split("(", 1)[0]
    prelude = [line for line in code.splitlines() if line.startswith("import")]
    body = code[code.index("def ") :]
    return behaviour.Candidate(f"{source}/m.py:{name}", source, name, body, prelude)


def _run(code: str, source: str = "a") -> behaviour.Behaviour:
    return behaviour.run(_candidate(code, source), SHARED, steps=20000, backstop=20)


def test_equivalent_sorts_share_a_class_and_an_off_by_one_does_not():
    candidates = [_candidate(BUBBLE, "a"), _candidate(MERGE, "b"), _candidate(INSERTION_IN_PLACE, "c")]
    near_miss = _candidate(OFF_BY_ONE, "d")
    runs = {c.id: behaviour.run(c, SHARED, 20000, 20) for c in [*candidates, near_miss]}
    sort_keys = [dict(zip(sorted(runs[c.id].outputs), runs[c.id].keys))["ints"] for c in candidates]
    assert len(set(sort_keys)) == 1, "the in-place sort's output is the list it sorted"
    near = dict(zip(sorted(runs[near_miss.id].outputs), runs[near_miss.id].keys))
    assert "ints" in near and near["ints"] != sort_keys[0]
    classes = behaviour.group([*candidates, near_miss], runs, min_members=3, min_sources=2, max_members=8)
    assert [sorted(m.id for m in c.members) for c in classes] == [sorted(c.id for c in candidates)]


def test_a_class_needs_enough_members_and_sources_and_copies_count_once():
    renamed_copy = GCD_LOOP.replace("gcd(a, b)", "g(m, n)").replace("a, b = b, a % b", "m, n = n, m % n")
    renamed_copy = renamed_copy.replace("while b", "while n").replace("return a", "return m")
    one_source = [_candidate(c, "x") for c in (GCD_LOOP, GCD_RECURSIVE, GCD_MATH)]
    runs = {c.id: behaviour.run(c, SHARED, 20000, 20) for c in one_source}
    assert len({tuple(r.keys) for r in runs.values()}) == 1
    assert behaviour.group(one_source, runs, min_members=3, min_sources=2, max_members=8) == []
    two = [_candidate(GCD_LOOP, "x"), _candidate(renamed_copy, "y"), _candidate(GCD_RECURSIVE, "y")]
    runs = {c.id: behaviour.run(c, SHARED, 20000, 20) for c in two}
    assert behaviour.group(two, runs, min_members=3, min_sources=2, max_members=8) == [], "the copy counts once"


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("def spin(xs):\n    while True:\n        pass\n", "ints: step budget (20000 steps on one input)"),
        (
            "def swallow(xs):\n    while True:\n        try:\n            pass\n        except BaseException:\n            pass\n",
            "step budget",
        ),
        ("def hog(xs):\n    return bytearray(10 * 2**30)\n", "allocates without bound"),
        ("def down(n):\n    return down(n)\n", "recursion without end"),
        ("def shell(xs):\n    import os\n    os.system('true')\n    return sorted(xs)\n", "calls os.system"),
        (
            "def dump(xs):\n    with open('out.txt', 'w') as f:\n        f.write(str(xs))\n    return sorted(xs)\n",
            "writes a file",
        ),
        ("def spawn(xs):\n    import subprocess\n    subprocess.run(['true'])\n    return xs\n", "starts a process"),
        ("def same(xs):\n    return 1\n", "the same output on every input"),
        ("def broken(xs):\n    return xs.missing\n", "raises AttributeError"),
    ],
)
def test_a_harmful_or_useless_function_is_stopped_and_excluded_with_its_reason(code, reason):
    result = _run(code)
    assert result.outputs == {}
    assert reason in result.reason


def _wheel(folder, project: str, modules: dict[str, str]) -> str:
    path = folder / f"{project.replace('-', '_')}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in sorted(modules.items()):
            zf.writestr(f"{project.replace('-', '_')}/{name}", text)
    return f"{project}==1.0 --hash=sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}\n"


REVERSE_A = "def reverse(s):\n    return s[::-1]\n"
REVERSE_B = "def reverse_string(text):\n    out = ''\n    for ch in text:\n        out = ch + out\n    return out\n"
REVERSE_C = "def rev(word):\n    return ''.join(reversed(word))\n"


@pytest.fixture
def wheels(tmp_path, raw_params):
    raw = tmp_path / "raw-semantic"
    raw.mkdir()
    lock = _wheel(raw, "algo-a", {"sorts.py": BUBBLE, "maths.py": GCD_LOOP + "\n" + REVERSE_A, "tests.py": MERGE})
    lock += _wheel(raw, "algo-b", {"sorts.py": MERGE + "\n" + OFF_BY_ONE, "maths.py": GCD_RECURSIVE + REVERSE_B})
    lock += _wheel(raw, "algo-c", {"sorts.py": INSERTION_IN_PLACE, "maths.py": GCD_MATH + "\n" + REVERSE_C})
    (tmp_path / "semantic.lock").write_text(lock)
    raw_params["tasks"]["behaviour"].update(lockfile=str(tmp_path / "semantic.lock"), raw_dir=str(raw), inputs=6)
    raw_params["tasks"]["semantic"]["source"] = "behaviour"
    return parse_params(raw_params)


def _build(params) -> list[list[dict]]:
    D.behaviour_classes.cache_clear()
    earlier: list[list[dict]] = []
    for split in D.SPLITS:
        earlier.append(D.semantic_behaviour(None, None, params.tasks, split, earlier))  # type: ignore[arg-type]
    return earlier


def test_the_set_from_wheels_is_split_by_class_and_byte_identical_across_builds(wheels):
    first, second = _build(wheels), _build(wheels)
    assert json.dumps(first) == json.dumps(second)
    rows = [r for split in first for r in split]
    by_label: dict = {}
    for r in rows:
        by_label.setdefault(r["label"], set()).add(r["id"].split(":")[-1])
    assert sorted(map(sorted, by_label.values())) == [
        ["bubble_sort", "insertion_sort", "merge_sort"],
        ["gcd", "greatest_common_divisor", "hcf"],
        ["rev", "reverse", "reverse_string"],
    ], "the test module and the off-by-one sort join no class"
    labels = [{r["label"] for r in split} for split in first]
    assert all(not (a & b) for i, a in enumerate(labels) for b in labels[i + 1 :]), "no class spans two splits"
    assert all(r["code"].startswith("def ") and '"""' not in r["code"] for r in rows)
    shares = D.class_sizes(rows)
    assert shares["members_per_source"] == {"algo-a": 3, "algo-b": 3, "algo-c": 3}
    overlap = D.class_overlap(rows)
    assert set(overlap) == {"jaccard_map_at_r", "bm25_map_at_r"}


def test_a_changed_wheel_is_refused(wheels):
    wheel = next(wheels.tasks.behaviour.raw_dir.glob("algo_a-*.whl"))
    with zipfile.ZipFile(wheel, "a") as zf:
        zf.writestr("algo_a/extra.py", "def more(x):\n    return x + 1\n")
    with pytest.raises(Exception, match="does not match the hash"):
        behaviour.wheel_candidates(wheels.tasks.behaviour.raw_dir, wheels.tasks.behaviour.lockfile)


def test_only_a_set_with_a_builder_for_it_takes_the_behaviour_source(raw_params):
    raw_params["tasks"]["code_generation"]["source"] = "behaviour"
    with pytest.raises(ConfigError, match=r"code_generation[\s\S]*cannot feed this set"):
        parse_params(raw_params)


def test_a_kind_past_the_step_budget_leaves_the_other_kinds_their_outputs():
    code = "def either(x):\n    if isinstance(x, list):\n        while True:\n            pass\n    return x[::-1]\n"
    result = _run(code)
    assert "ints" not in result.outputs
    assert "str" in result.outputs, "the str kind runs in a new child after the ints kind used up its budget"
    assert json.loads(result.outputs["str"]) == [args[0][::-1] for args in SHARED["str"]]


def test_a_run_past_the_backstop_fails_the_build_naming_the_function():
    # a loop in C: no Python lines run, so only the backstop stops it
    code = "import itertools\n\ndef forever(xs):\n    return sum(itertools.count())\n"
    with pytest.raises(TellyError, match=r"a/m.py:forever: ran past the 2 s backstop[\s\S]*tasks.behaviour.skip"):
        behaviour.run(_candidate(code, "a"), SHARED, steps=20000, backstop=2)


def test_the_prelude_keeps_each_statement_as_ast_gives_its_source():
    # \r\n, a lone \r, a form feed inside a line and multi-byte text: the split must be ast's, not str.splitlines
    source = 'import os\r\nX = "é\x0cö"\rdef f(a):\n    return a  # ü\n\nY = (1,\n     2)\n'
    module = ast.parse(source)
    expected = [ast.get_source_segment(source, s) for s in module.body]
    assert behaviour._prelude(module, source, frozenset()) == expected
    assert expected[1] == 'X = "é\x0cö"' and expected[3].endswith("2)")
