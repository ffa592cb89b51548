"""Behaviour classes: independently written functions that compute the same thing, grouped by running them.

The semantic probe's POJ-104 stand-in made of Type-4 clones (docs/datasets.md). Candidates are the
top-level functions of pinned, hash-checked wheels of algorithm collections (``tasks.behaviour.lockfile``,
read in place from ``tasks.behaviour.raw_dir``). Each candidate runs in a contained child
(:mod:`telly.sandbox`, :mod:`telly.data.behaviour_child`) on the shared, seeded inputs of every signature
kind that fits its parameters (:data:`KINDS`). Functions with equal outputs on every input of a kind form one
class; a class needs ``min_members`` members from
``min_sources`` projects. Whatever raises, hangs, recurses without end, allocates without bound, starts a
process or writes a file is excluded with its reason.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import logging
import random
import re
import signal
import string
import sys
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from telly.data import clones, extract, rewrites, wheels
from telly.errors import TellyError
from telly.sandbox import run_captured

log = logging.getLogger(__name__)

CHILD = (Path(__file__).with_name("behaviour_child.py")).read_text(encoding="utf-8")
MEMORY_BYTES = 1 << 30  # an allocation past this fails with MemoryError in the child


# ------------------------------------------------------------------ inputs


def _ints(rng: random.Random) -> list:
    return [[rng.randint(-50, 50) for _ in range(rng.randint(2, 10))]]


def _int(rng: random.Random) -> list:
    return [rng.randint(1, 24)]


def _word(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase[:6]) for _ in range(length))


def _str(rng: random.Random) -> list:
    word = _word(rng, rng.randint(2, 7))
    return [word + word[::-1][rng.randint(0, 1) :] if rng.random() < 0.4 else word]  # palindromes too


def _matrix(rng: random.Random, n: int | None = None) -> list:
    n = n or rng.randint(2, 3)
    return [[[rng.randint(-9, 9) for _ in range(n)] for _ in range(n)]]


def _sorted_ints_int(rng: random.Random) -> list:
    values = sorted(rng.sample(range(-50, 51), rng.randint(2, 10)))
    return [values, rng.choice(values) if rng.random() < 0.6 else rng.randint(-50, 50)]


def _int_int(rng: random.Random) -> list:
    return [rng.randint(1, 60), rng.randint(1, 60)]


def _str_str(rng: random.Random) -> list:
    word = _word(rng, rng.randint(2, 7))
    other = "".join(rng.sample(word, len(word))) if rng.random() < 0.5 else _word(rng, len(word))
    return [word, other]  # anagrams half the time; the same length always, so length alone does not tell


def _matrix_matrix(rng: random.Random) -> list:
    n = rng.randint(2, 3)
    return _matrix(rng, n) + _matrix(rng, n)


def _sorted_ints_sorted_ints(rng: random.Random) -> list:
    return [sorted(rng.sample(range(-50, 51), rng.randint(1, 8))) for _ in range(2)]


def _str_int(rng: random.Random) -> list:
    return [_word(rng, rng.randint(2, 9)), rng.randint(1, 5)]


def _strs(rng: random.Random) -> list:
    stem = _word(rng, rng.randint(0, 3))  # a shared prefix, often
    return [[stem + _word(rng, rng.randint(0, 4)) for _ in range(rng.randint(2, 5))]]


def _int_int_int(rng: random.Random) -> list:
    return [rng.randint(1, 40), rng.randint(1, 40), rng.randint(2, 40)]


def _ints_bounds(rng: random.Random) -> list:
    values = _ints(rng)[0]
    return [values, 0, len(values) - 1]  # a list with its first and last index, as recursive sorts take it


def _text(rng: random.Random) -> list:
    """Identifiers and phrases in mixed case and separators, as case converters take them."""
    words = [_word(rng, rng.randint(2, 5)) for _ in range(rng.randint(2, 3))]
    words = [rng.choice([w, w.title(), w.upper()]) for w in words]
    return [rng.choice(["_", " ", "-", ""]).join(words)]


def _repeats(rng: random.Random) -> list:
    return [[rng.randint(0, 5) for _ in range(rng.randint(3, 12))]]  # duplicates, as counting and de-duplicating take


def _ints_int(rng: random.Random) -> list:
    return [_ints(rng)[0], rng.randint(1, 4)]


def _int_ints(rng: random.Random) -> list:
    return [rng.randint(1, 4), _ints(rng)[0]]


def _lists(rng: random.Random) -> list:
    return [[_repeats(rng)[0][: rng.randint(0, 4)] for _ in range(rng.randint(2, 5))]]


def _ints_ints(rng: random.Random) -> list:
    return [_repeats(rng)[0], _repeats(rng)[0]]


@dataclass(frozen=True)
class Kind:
    arity: int
    make: Callable[[random.Random], list]  # the arguments of one call


# Every kind a function's arity fits is tried, in this order; it joins one class (group).
KINDS: dict[str, Kind] = {
    "ints": Kind(1, _ints),
    "str": Kind(1, _str),
    "int": Kind(1, _int),
    "matrix": Kind(1, _matrix),
    "sorted_ints,int": Kind(2, _sorted_ints_int),
    "int,int": Kind(2, _int_int),
    "str,str": Kind(2, _str_str),
    "matrix,matrix": Kind(2, _matrix_matrix),
    "sorted_ints,sorted_ints": Kind(2, _sorted_ints_sorted_ints),
    "str,int": Kind(2, _str_int),
    "strs": Kind(1, _strs),
    "int,int,int": Kind(3, _int_int_int),
    "ints,first,last": Kind(3, _ints_bounds),
    "text": Kind(1, _text),
    "repeats": Kind(1, _repeats),
    "ints,int": Kind(2, _ints_int),
    "int,ints": Kind(2, _int_ints),
    "lists": Kind(1, _lists),
    "ints,ints": Kind(2, _ints_ints),
}


def inputs(n: int, seed: int) -> dict[str, list[list]]:
    """``n`` argument lists per kind, the same for every candidate (each kind drawn from its own seed)."""
    return {name: [k.make(random.Random(f"{seed}:{name}:{i}")) for i in range(n)] for name, k in KINDS.items()}


# ------------------------------------------------------------------ candidates


@dataclass
class Candidate:
    id: str  # <project>/<path in the wheel>:<function>
    source: str  # the project (wheel) it comes from
    name: str
    code: str  # as written, docstring and comments included
    prelude: list[str] = field(default_factory=list)  # the module's imports and other functions
    wheel: str = ""  # the wheel its own package's imports load from (put on the child's sys.path)
    package: str = ""  # the package of its module, for relative imports


def arities(code: str) -> tuple[int, int] | None:
    """(required, most) positional arguments of a plain function; None for methods and keyword-only ones."""
    try:
        fn = ast.parse(code).body[0]
    except (SyntaxError, ValueError, IndexError):
        return None
    if not isinstance(fn, ast.FunctionDef):
        return None
    args = fn.args
    positional = [*args.posonlyargs, *args.args]
    if positional and positional[0].arg in ("self", "cls"):
        return None
    if any(d is None for d in args.kw_defaults):
        return None
    return len(positional) - len(args.defaults), len(positional)


def _kept_import(statement: ast.stmt, own: frozenset[str]) -> bool:
    """An import of the standard library or of the wheel's own packages (``own``)."""
    allowed = sys.stdlib_module_names | own
    if isinstance(statement, ast.Import):
        return all(a.name.split(".")[0] in allowed for a in statement.names)
    if not isinstance(statement, ast.ImportFrom):
        return False
    return bool(statement.level) or (statement.module or "").split(".")[0] in allowed


def _prelude(module: ast.Module, source: str, own: frozenset[str]) -> list[str]:
    """The module's imports of the standard library and of its own wheel, functions and assignments: what a
    function may call. Other imports are left out, so that behaviour does not depend on what else is installed."""
    keep = [s for s in module.body if isinstance(s, (ast.FunctionDef, ast.Assign)) or _kept_import(s, own)]
    lines = io.StringIO(source, newline="").readlines()  # split once: get_source_segment splits per call
    return [_segment(lines, s) for s in keep]


def _segment(lines: list[str], node: ast.stmt) -> str:
    """``ast.get_source_segment(source, node)`` on the source's lines (\n, \r, \r\n, as ast splits them)."""
    if node.end_lineno is None or node.end_col_offset is None:
        return ""
    first, last = node.lineno - 1, node.end_lineno - 1
    start, end = node.col_offset, node.end_col_offset
    if first == last:
        return lines[first].encode()[start:end].decode()
    head, tail = lines[first].encode()[start:].decode(), lines[last].encode()[:end].decode()
    return "".join([head, *lines[first + 1 : last], tail])


def module_candidates(
    source_text: str, source: str, path: str, wheel: str = "", own: frozenset[str] = frozenset()
) -> list[Candidate]:
    """The plain top-level functions of one module (no tests, no methods, nothing that does not parse)."""
    try:
        module = ast.parse(source_text)
    except (SyntaxError, ValueError):
        return []
    prelude = _prelude(module, source_text, own)
    package = ".".join(path.split("/")[:-1])
    found, _ = extract.extract_functions(source_text.encode("utf-8"))
    out = []
    for fn in found:
        if fn.class_name or fn.has_error or not fn.has_body or fn.name.startswith("test") or arities(fn.code) is None:
            continue
        out.append(Candidate(f"{source}/{path}:{fn.name}", source, fn.name, fn.code, prelude, wheel, package))
    return out


def project_name(name: str) -> str:
    """PyPI's normal form of a project name (a wheel's file name writes - as _)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_candidates(raw_dir: Path, lockfile: Path) -> list[Candidate]:
    """Candidates of every pinned wheel in ``raw_dir``, checked against its hash, in name and file order."""
    pins = {project_name(pin.name): pin for pin in wheels.read_lock(lockfile)}
    found = sorted(raw_dir.glob("*.whl"))
    if not found:
        raise TellyError(f"{raw_dir}: no wheels; run `telly data fetch` (it fetches {lockfile} too) first")
    out: list[Candidate] = []
    for wheel in found:
        pin = pins.get(project_name(wheel.name.split("-")[0]))
        if pin is None:
            log.warning("%s: not listed in %s; skipped", wheel, lockfile)
            continue
        if wheels.sha256_of(wheel) != pin.sha256:
            raise TellyError(f"{wheel}: sha256 does not match the hash pinned in {lockfile}; fetch it again")
        with zipfile.ZipFile(wheel) as zf:
            modules = sorted(n for n in zf.namelist() if n.endswith(".py") and "test" not in n.lower())
            own = frozenset(n.split("/")[0].removesuffix(".py") for n in modules)
            for path in modules:
                text = zf.read(path).decode("utf-8", "replace")
                out.extend(module_candidates(text, pin.name, path, str(wheel.resolve()), own))
    return out


# ------------------------------------------------------------------ running


@dataclass(frozen=True)
class Behaviour:
    outputs: dict[str, str]  # per kind it handles: canonical JSON of its outputs on every input; {} if excluded
    reason: str = ""  # why it is excluded

    @property
    def keys(self) -> list[str]:
        """One key per kind it handles: equal keys, equal behaviour on that kind."""
        return [hashlib.sha256(f"{kind}\n{out}".encode()).hexdigest() for kind, out in sorted(self.outputs.items())]


def _failure(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exits with status {returncode} and no result"


def _child(candidate: Candidate, kinds: list, steps: int, backstop: float) -> dict:
    """One contained child's result on ``kinds``; a run past the backstop fails the build (it may not decide)."""
    payload = {
        "prelude": [s for s in candidate.prelude if s.strip() != candidate.code.strip()],
        "code": candidate.code,
        "name": candidate.name,
        "wheel": candidate.wheel,
        "package": candidate.package,
        "kinds": kinds,
        "steps": steps,
    }
    outcome = run_captured(
        CHILD,
        backstop,
        stdin=json.dumps(payload),
        cpu_seconds=max(1, int(backstop)),
        memory_bytes=MEMORY_BYTES,
        file_bytes=0,
    )
    if outcome.returncode is None or outcome.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        raise TellyError(
            f"{candidate.id}: ran past the {backstop:g} s backstop (tasks.behaviour.backstop_seconds) without using up "
            f"its step budget, so its outcome would depend on the machine; add it to tasks.behaviour.skip"
        )
    try:
        return json.loads(outcome.stdout.splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"excluded": _failure(outcome.returncode)}


def run(candidate: Candidate, shared: dict[str, list[list]], steps: int, backstop: float) -> Behaviour:
    """The candidate's behaviour on the shared inputs of the kinds its parameters fit, or why it has none.

    A kind that uses up the step budget ends its child; the kinds after it run in a new one."""
    required, most = arities(candidate.code) or (0, -1)
    kinds = [[name, shared[name]] for name, k in KINDS.items() if required <= k.arity <= most]
    if not kinds:
        return Behaviour({}, "takes no argument list of any kind")
    handled: dict[str, list] = {}
    reasons: list[str] = []
    while kinds:
        result = _child(candidate, kinds, steps, backstop)
        if "excluded" in result:
            return Behaviour({}, result["excluded"])
        handled.update(result["outputs"])
        reasons += result["reasons"]
        kinds = kinds[result["done"] :]
    if not handled:
        return Behaviour({}, "; ".join(reasons))
    return Behaviour({kind: json.dumps(out, sort_keys=True) for kind, out in handled.items()})


# ------------------------------------------------------------------ classes


@dataclass
class BehaviourClass:
    kind: str
    name: str  # the most common function name among its members
    members: list[Candidate]

    @property
    def sources(self) -> list[str]:
        return sorted({m.source for m in self.members})


def _spread(members: list[Candidate], most: int) -> list[Candidate]:
    """Up to ``most`` members, taken in turn from each source (sources in name order)."""
    by_source: dict[str, list[Candidate]] = defaultdict(list)
    for m in members:
        by_source[m.source].append(m)
    queues = [by_source[s] for s in sorted(by_source)]
    out: list[Candidate] = []
    while len(out) < most and any(queues):
        for queue in queues:
            if queue and len(out) < most:
                out.append(queue.pop(0))
    return sorted(out, key=lambda m: m.id)


def group(
    candidates: Iterable[Candidate],
    behaviours: dict[str, Behaviour],
    *,
    min_members: int,
    min_sources: int,
    max_members: int,
) -> list[BehaviourClass]:
    """Classes of candidates with equal behaviour on a kind, each big and varied enough, in the order of their keys.

    A function that handles several kinds (a slice reverses lists and strings) joins one class: the biggest
    it could join (ties: the first key). Copies (the same code up to names) count once."""
    groups: dict[str, list[Candidate]] = defaultdict(list)
    kinds: dict[str, str] = {}
    seen: set[tuple[str, ...]] = set()
    for c in sorted(candidates, key=lambda c: c.id):
        copy_key = clones.type2_key(c.code) or (c.code,)
        if not behaviours[c.id].outputs or copy_key in seen:
            continue
        seen.add(copy_key)
        for kind, key in zip(sorted(behaviours[c.id].outputs), behaviours[c.id].keys):
            groups[key].append(c)
            kinds[key] = kind
    claimed: set[str] = set()
    chosen: dict[str, list[Candidate]] = {}
    for key in sorted(groups, key=lambda k: (-len(groups[k]), k)):
        members = [m for m in groups[key] if m.id not in claimed]
        if len(members) >= min_members and len({m.source for m in members}) >= min_sources:
            chosen[key] = members
            claimed.update(m.id for m in members)
    out = []
    for key in sorted(chosen):
        names = sorted(m.name for m in chosen[key])
        out.append(BehaviourClass(kinds[key], max(names, key=names.count), _spread(chosen[key], max_members)))
    return out


def member_code(candidate: Candidate) -> str:
    """The code as the set shows it: printed by ``ast`` without docstring, as the rewritten set's members."""
    return rewrites.normalise(candidate.code)
