"""The ``tasks`` stage (``telly tasks``): it builds the datasets, four probing sets and five downstream sets
(paper sections 1 and 4); what each set *is* lives in its registry (``telly.probing.properties``,
``telly.tasks``), which names the functions of this module that build and summarise it.

From the corpus (or, per set, a copy of the paper's real data) it writes

- ``<probing_dir>/<property>/{train,valid,test}.jsonl`` for lexical, syntactic,
  structural and semantic probing;
- ``<out_dir>/<task>/{train,valid,test}.jsonl`` for code search, clone detection,
  code summarization, code generation and line completion;
- ``<out_dir>/metrics.json``: rows, label balance and the token-overlap baseline per set and split.

Row formats are in docs/architecture.md, constructions in docs/datasets.md. Every
split of a set is drawn from the same corpus split (splits are by project), in an
order fixed by ``seed``; rows are shuffled, so the first N rows of a file are
a fair sample (later stages read prefixes). Functions that do not parse are skipped
and counted.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import os
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rapidfuzz import fuzz
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from telly.config import BehaviourParams, CloneParams, ConfigError, Params, RealData, TaskSet, TasksParams
from telly.data import analysis, baselines, behaviour, clones, loaders, mutants, rewrites
from telly.errors import TellyError
from telly.jsonl import iter_jsonl, write_json, write_jsonl
from telly.probing.properties import PROPERTIES, ProbingProperty
from telly.registry import named
from telly.tasks import TASKS, DownstreamTask

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
PROBING = tuple(PROPERTIES)  # the sets of telly.probing.properties, then those of telly.tasks
DOWNSTREAM = tuple(TASKS)
CORPUS_FIELDS = ("id", "repo", "code", "docstring_tokens", "func_name", "signature", "class_name", "class_members")


class Functions:
    """A corpus split, shuffled per set, with the analysis of each function cached."""

    def __init__(self, rows: list[dict], language: str):
        self.rows = rows
        self.language = language
        self._clean: dict[str, str | None] = {}
        self.unparsable: set[str] = set()

    @functools.cached_property
    def mined(self) -> list[clones.CloneClass]:
        """Real clones of this split (same code up to renaming), found once."""
        return clones.mined_classes(self.rows)

    def shuffled(self, seed: str) -> list[dict]:
        rows = list(self.rows)
        random.Random(seed).shuffle(rows)
        return rows

    def clean(self, row: dict) -> str | None:
        """Code without docstring and comments; None (and counted) if it does not parse."""
        key = row["id"]
        if key not in self._clean:
            try:
                self._clean[key] = analysis.clean_code(row["code"], self.language)
            except analysis.UnparsableCode:
                self._clean[key] = None
                self.unparsable.add(key)
        return self._clean[key]

    def within(self, limit: int, length: Callable[[Functions, dict], int | None]) -> Functions:
        """The functions whose ``length`` (lexical tokens, :func:`code_length` or :func:`body_length`) is at
        most ``limit``: the inputs of a task stay whole at its model lengths (docs/datasets.md)."""
        kept = Functions(
            [row for row in self.rows if (n := length(self, row)) is not None and n <= limit], self.language
        )
        kept._clean, kept.unparsable = self._clean, self.unparsable  # one analysis cache, one unparsable count
        return kept


def code_length(fns: Functions, row: dict) -> int | None:
    """Lexical tokens of the function without docstring and comments (what the code tasks read)."""
    code = fns.clean(row)
    return None if code is None else len(analysis.lexical_tokens(code, fns.language))


def body_length(fns: Functions, row: dict) -> int | None:
    """Lexical tokens of the function's body (code generation's target)."""
    if fns.clean(row) is None:
        return None
    return len(analysis.lexical_tokens(analysis.body(row["code"], fns.language), fns.language))


def _take(rows: Iterable[dict], size: int | None) -> list[dict]:
    return list(itertools.islice(rows, size))


def unique_ids(rows: list[dict]) -> list[dict]:
    """Rows with the id of an earlier row get ``#2``, ``#3``, ... appended: per-example results are joined by id
    (two clone pairs can start from the same function)."""
    seen: collections.Counter = collections.Counter()
    out = []
    for row in rows:
        seen[row["id"]] += 1
        out.append(row if seen[row["id"]] == 1 else {**row, "id": f"{row['id']}#{seen[row['id']]}"})
    if len({r["id"] for r in out}) != len(out):  # a suffixed id met a real one: suffix again
        return unique_ids(out)
    return out


# One split of a set from the corpus functions of that split: (functions, rows wanted or None for all, the
# stage's settings, split name, the rows of the set's earlier splits in SPLITS order).
Earlier = Sequence[list[dict]]
Builder = Callable[[Functions, "int | None", TasksParams, str, Earlier], list[dict]]


def _interleave(positives: list[dict], negatives: list[dict]) -> list[dict]:
    """Alternate labels so that every prefix of the file stays balanced."""
    out = []
    for pos, neg in itertools.zip_longest(positives, negatives):
        out.extend(r for r in (pos, neg) if r is not None)
    return out


# --------------------------------------------------------------- probing sets


def lexical(fns: Functions, size: int | None, p: TasksParams, split: str, earlier: Earlier) -> list[dict]:
    def rows() -> Iterator[dict]:
        for row in fns.shuffled(f"{p.seed}:lexical:{split}"):
            code = fns.clean(row)
            if code is not None:
                spans = analysis.lexical_tokens(code, fns.language)
                yield {"id": row["id"], "code": code, "tokens": [list(s) for s in spans]}

    return _take(rows(), size)


def syntactic(fns: Functions, size: int | None, p: TasksParams, split: str, earlier: Earlier) -> list[dict]:
    """Half true pairs (code, its own SBT-AO), half false (code, another function's), alternating."""
    pool = []
    for row in fns.shuffled(f"{p.seed}:syntactic:{split}"):
        code = fns.clean(row)
        if code is not None:
            pool.append((row["id"], code, " ".join(analysis.ast_only(code, fns.language))))
        if size is not None and len(pool) >= size:
            break
    rng = random.Random(f"{p.seed}:syntactic-pairs:{split}")
    by_length = sorted(range(len(pool)), key=lambda i: (len(pool[i][2]), pool[i][0]))
    rank = {i: r for r, i in enumerate(by_length)}
    half = len(pool) // 2
    positives = [{"id": i, "code": c, "ast_only": sbt, "label": 1} for i, c, sbt in pool[:half]]
    negatives = []
    for k in range(half, len(pool)):
        fid, code, sbt = pool[k]
        if p.syntactic_negatives == "similar_length":  # a neighbour in SBT length: length alone does not tell
            r = rank[k]
            near = [by_length[j] for j in range(max(0, r - 5), min(len(pool), r + 6)) if by_length[j] != k]
        else:
            near = [j for j in range(len(pool)) if j != k]
        near = [j for j in near if pool[j][2] != sbt]
        if near:
            negatives.append({"id": fid, "code": code, "ast_only": pool[rng.choice(near)][2], "label": 0})
    return _interleave(positives, negatives)


def structural(fns: Functions, size: int | None, p: TasksParams, split: str, earlier: Earlier) -> list[dict]:
    """Complexity class per function; ``balanced`` takes an equal share per class where there are enough."""
    quota = None if size is None or p.structural_sampling == "natural" else -(-size // 6)
    taken: Counter[int] = Counter()
    out = []
    for row in fns.shuffled(f"{p.seed}:structural:{split}"):
        if size is not None and len(out) >= size:
            break
        code = fns.clean(row)
        if code is None:
            continue
        cc = analysis.cyclomatic_complexity(code, fns.language)
        label = analysis.complexity_class(cc)
        if quota is not None and taken[label] >= quota:
            continue
        taken[label] += 1
        out.append({"id": row["id"], "code": code, "complexity": cc, "label": label})
    random.Random(f"{p.seed}:structural-order:{split}").shuffle(out)
    return out


def _mined(fns: Functions, n_classes: int | None, p: TasksParams, key: str) -> list[clones.CloneClass]:
    """Mined real clone classes, at most ``mined_share`` of the classes (a random pick of them)."""
    if p.clones.mined_share == 0:
        return []
    found = list(fns.mined)
    random.Random(f"{p.seed}:mined:{key}").shuffle(found)
    cap = len(found) if n_classes is None else int(n_classes * p.clones.mined_share)
    return found[:cap]


def semantic(fns: Functions, size: int | None, p: TasksParams, split: str, earlier: Earlier) -> list[dict]:
    """Clone classes (a function and its rewritten variants, or mined real clones); the labels of a split
    follow those of the earlier splits, so no class spans two splits."""
    label_offset = sum(len({r["label"] for r in rows}) for rows in earlier)
    members = 1 + p.clones.semantic_variants
    n_classes = None if size is None else max(2, size // members)
    mined_rng = random.Random(f"{p.seed}:semantic-mined:{split}")
    found = [
        clones.rewrite_mined(
            c,
            p.clones.semantic_variants,
            mined_rng,
            min_rewrites=p.clones.min_rewrites,
            max_rewrites=p.clones.max_rewrites,
        )
        for c in _mined(fns, n_classes, p, f"semantic:{split}")
    ]
    rest = None if n_classes is None else max(0, n_classes - len(found))
    rewritten, _ = clones.rewritten_classes(
        fns.shuffled(f"{p.seed}:semantic:{split}"),
        len(fns.rows) if rest is None else rest,
        p.clones.semantic_variants,
        random.Random(f"{p.seed}:semantic-variants:{split}"),
        min_statements=p.clones.min_statements,
        min_rewrites=p.clones.min_rewrites,
        max_rewrites=p.clones.max_rewrites,
        desc=f"semantic {split}",
    )
    out = [
        {"id": f"{c.ids[0]}#{j}", "code": code, "label": label_offset + n, "kind": c.kind}
        for n, c in enumerate(found + rewritten)
        for j, code in enumerate(c.members)
    ]
    random.Random(f"{p.seed}:semantic-order:{split}").shuffle(out)
    return out


@functools.lru_cache(maxsize=2)
def behaviour_classes(settings: BehaviourParams, seed: int) -> dict[str, list[behaviour.BehaviourClass]]:
    """The behaviour classes of the pinned wheels, split by class (``settings.split``), in a seeded order.
    Built once per settings: every split of the set reads the same run."""
    candidates = behaviour.wheel_candidates(settings.raw_dir, settings.lockfile)
    shared = behaviour.inputs(settings.inputs, seed)

    def run(c: behaviour.Candidate) -> behaviour.Behaviour:
        if c.id in settings.skip:
            return behaviour.Behaviour({}, "listed in tasks.behaviour.skip")
        return behaviour.run(c, shared, settings.steps, settings.backstop_seconds)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # one child each; outputs do not depend on it
        runs = dict(
            zip((c.id for c in candidates), tqdm(pool.map(run, candidates), total=len(candidates), leave=False))
        )
    for c in candidates:
        if runs[c.id].reason:
            log.info("behaviour: %s excluded: %s", c.id, runs[c.id].reason)
    reasons = Counter(r.reason.rsplit(": ", 1)[-1] for r in runs.values() if r.reason)
    log.info(
        "behaviour: %d candidates, %d excluded (%s)", len(runs), sum(reasons.values()), dict(reasons.most_common())
    )
    classes = behaviour.group(
        candidates,
        runs,
        min_members=settings.min_members,
        min_sources=settings.min_sources,
        max_members=settings.max_members,
    )
    random.Random(f"{seed}:behaviour-classes").shuffle(classes)
    n_valid, n_test = round(len(classes) * settings.split.valid), round(len(classes) * settings.split.test)
    n_train = len(classes) - n_valid - n_test
    return {
        "train": classes[:n_train],
        "valid": classes[n_train : n_train + n_valid],
        "test": classes[n_train + n_valid :],
    }


def semantic_behaviour(fns: Functions, size: int | None, p: TasksParams, split: str, earlier: Earlier) -> list[dict]:
    """Behaviour classes (independently written functions with equal outputs, :mod:`telly.data.behaviour`):
    the split's share of whole classes, up to ``size`` rows; labels follow those of the earlier splits."""
    label_offset = sum(len({r["label"] for r in rows}) for rows in earlier)
    out: list[dict] = []
    for n, c in enumerate(behaviour_classes(p.behaviour, p.seed)[split]):
        if size is not None and len(out) + len(c.members) > size:
            break
        out += [
            {
                "id": m.id,
                "code": behaviour.member_code(m),
                "label": label_offset + n,
                "kind": "behaviour",
                "source": m.source,
            }
            for m in c.members
        ]
    random.Random(f"{p.seed}:semantic-behaviour-order:{split}").shuffle(out)
    return out


# ------------------------------------------------------------ downstream sets


def code_search(fns: Functions, size: int | None, p: TasksParams, split: str, earlier: Earlier) -> list[dict]:
    def rows() -> Iterator[dict]:
        for row in fns.shuffled(f"{p.seed}:code_search:{split}"):
            code = fns.clean(row)
            if code is not None:
                yield {"id": row["id"], "query": " ".join(row["docstring_tokens"]), "code": code}

    return _take(rows(), size)


def code_search_codebase(fns: Functions, queries: list[dict], size: int, p: TasksParams) -> list[dict]:
    """The codes test queries are ranked against (CodeSearchNet's ``codebase.jsonl`` for the corpus):
    every query's own code, then other functions of the test split (their projects are in no other
    split) as distractors, in a seeded order, up to ``size`` codes in all."""
    taken = {row["id"] for row in queries}
    codebase = [{"id": row["id"], "code": row["code"]} for row in queries]
    for row in fns.shuffled(f"{p.seed}:code_search:codebase"):
        if len(codebase) >= size:
            break
        code = fns.clean(row) if row["id"] not in taken else None
        if code is not None:
            taken.add(row["id"])
            codebase.append({"id": row["id"], "code": code})
    if len(codebase) < size:
        log.warning("code_search codebase: %d codes (the test split has no more), asked for %d", len(codebase), size)
    return codebase


def code_summarization(fns: Functions, size: int | None, p: TasksParams, split: str, earlier: Earlier) -> list[dict]:
    def rows() -> Iterator[dict]:
        for row in fns.shuffled(f"{p.seed}:code_summarization:{split}"):
            code = fns.clean(row)
            if code is not None:
                yield {"id": row["id"], "source": code, "target": " ".join(row["docstring_tokens"])}

    return _take(rows(), size)


def concode_source(row: dict) -> str:
    """CONCODE's input in Python: the NL, then the signature and the enclosing class's members."""
    parts = [" ".join(row["docstring_tokens"]), row["signature"]]
    if row.get("class_name"):
        own = clones.function_name(row)
        members = [m for m in row.get("class_members") or [] if m != own]
        parts.append(" concode_elem_sep ".join([row["class_name"], *members]))
    return " concode_field_sep ".join(parts)


def code_generation(fns: Functions, size: int | None, p: TasksParams, split: str, earlier: Earlier) -> list[dict]:
    def rows() -> Iterator[dict]:
        for row in fns.shuffled(f"{p.seed}:code_generation:{split}"):
            if fns.clean(row) is None or not row.get("signature"):
                continue
            target = analysis.body(row["code"], fns.language)
            lines = target.count("\n") + 1
            if lines <= p.generation_max_body_lines and target.strip() not in ("pass", "...", ""):
                yield {"id": row["id"], "source": concode_source(row), "target": target}

    return _take(rows(), size)


def line_completion(fns: Functions, size: int | None, p: TasksParams, split: str, earlier: Earlier) -> list[dict]:
    """Left context = the function up to a random body line; target = that (non-empty) line."""

    def rows() -> Iterator[dict]:
        for row in fns.shuffled(f"{p.seed}:line_completion:{split}"):
            if fns.clean(row) is None:
                continue
            code = row["code"]
            lines = code.split("\n")
            start = analysis.body_start_line(code, fns.language)
            targets = [i for i in range(start, len(lines)) if lines[i].strip() and not lines[i].strip().startswith("#")]
            if not targets:
                continue
            i = random.Random(f"{p.seed}:{row['id']}").choice(targets)
            yield {"id": row["id"], "source": "\n".join(lines[:i]) + "\n", "target": lines[i].strip()}

    return _take(rows(), size)


def clone_detection(fns: Functions, size: int | None, p: TasksParams, split: str, earlier: Earlier) -> list[dict]:
    """Balanced pairs; positives inside a clone class, negatives across classes of other projects.

    A share ``mutant_negatives`` of the negatives pairs a member with a near-miss mutant of
    its class's function (:func:`mutants.mutate`: one behaviour change, then rewritten as
    often as a member is), so that the pair shares as many tokens as a clone pair does.
    Of the rest, a share ``hard_negatives`` pairs a member with one of its nearest
    neighbours by token overlap (:func:`clones.token_neighbours`), so shared tokens alone
    do not separate clones from non-clones: a share ``same_project_negatives`` of them
    from the member's own project, the rest from other projects. The remaining negatives
    pair it with a random class of another project. Members of mined classes are rewritten
    in pairs as often as the members of a rewritten class are.

    The steps draw from one generator in a fixed order: the classes (:func:`_clone_pool`), then per
    class its positive pair, the kind of its negative and the member it starts from
    (:meth:`_Pairs.positive`), then the nearest neighbours (no draw), then per class its negative
    (:meth:`_Pairs.negative`).
    """
    n_pos = None if size is None else -(-size // 2)
    pool = _clone_pool(fns, n_pos, p, split)
    if len(pool) < 2:
        return []
    pairs = _Pairs(pool, random.Random(f"{p.seed}:clone-pairs:{split}"), p.clones)
    positives = [pairs.positive(i) for i in range(len(pool))]
    candidates, neighbours = _hard_negatives(fns, pairs, p.clones.min_statements)
    negatives = [n for i in range(len(pool)) if (n := pairs.negative(i, candidates, neighbours.get(i, []))) is not None]
    n = min(len(positives), len(negatives))
    return _interleave(positives[:n], negatives[:n])


def _clone_pool(fns: Functions, n_pos: int | None, p: TasksParams, split: str) -> list[clones.CloneClass]:
    """The classes pairs are drawn from: mined real clones first, then rewritten classes, ``n_pos`` in all."""
    pool = _mined(fns, n_pos, p, f"clone:{split}")
    want = len(fns.rows) if n_pos is None else max(0, n_pos - len(pool))
    rewritten, _ = clones.rewritten_classes(
        fns.shuffled(f"{p.seed}:clone_detection:{split}"),
        want,
        p.clones.pair_variants,
        random.Random(f"{p.seed}:clone-variants:{split}"),
        min_statements=p.clones.min_statements,
        min_rewrites=p.clones.min_rewrites,
        max_rewrites=p.clones.max_rewrites,
        desc=f"clone pairs {split}",
    )
    return (pool + rewritten)[: len(pool) + want]


@dataclass
class _Pairs:
    """The pairs of one split's classes: what each class's negative starts from, and the shared generator."""

    pool: list[clones.CloneClass]
    rng: random.Random
    settings: CloneParams
    queries: list[str] = field(default_factory=list)  # per class: the member its negative pairs
    kinds: list[str] = field(default_factory=list)  # per class: the kind of its negative
    # per class with a mutant negative: whether the mutant is rewritten (it replaces a member: unless the original)
    mutant_rewritten: dict[int, bool] = field(default_factory=dict)

    def other_project(self, i: int, j: int) -> bool:
        return j != i and not set(self.pool[i].repos) & set(self.pool[j].repos)

    def distinct(self, i: int, code: str) -> bool:  # near-identical code is more likely a clone than not
        return fuzz.ratio(self.pool[i].members[0], code) < 90

    def variant(self, code: str) -> str:
        c = self.settings
        return rewrites.make_variant(code, self.rng, min_rewrites=c.min_rewrites, max_rewrites=c.max_rewrites).code

    def like_a_member(self, code: str) -> str:  # a partner is, as often as a class member, a rewritten variant
        return code if self.rng.random() < 1 / (1 + self.settings.pair_variants) else self.variant(code)

    def negative_kind(self) -> str:
        c = self.settings
        draw = self.rng.random()
        if draw < c.mutant_negatives:
            return "mutant"
        draw = (draw - c.mutant_negatives) / (1 - c.mutant_negatives)
        if draw < c.hard_negatives * c.same_project_negatives:
            return "neighbour_same_project"
        return "neighbour_other_project" if draw < c.hard_negatives else "random"

    def positive(self, i: int) -> dict:
        """Class ``i``'s positive pair; draws the kind of its negative and the member that starts it."""
        c = self.pool[i]
        a, b = self.rng.sample(c.members, 2)
        if c.kind == "mined":  # a mined class's copies are rewritten as often as an original is
            a, b = self.like_a_member(a), self.like_a_member(b)
        self.kinds.append(self.negative_kind())
        if self.kinds[-1] == "mutant" and c.kind == "rewritten":
            # the pair is drawn as a positive pair is, the mutant replacing the second member
            x, y = self.rng.sample(range(len(c.members)), 2)
            self.queries.append(c.members[x])
            self.mutant_rewritten[i] = y != 0
        else:
            mine = self.rng.choice(c.members)
            self.queries.append(self.like_a_member(mine) if c.kind == "mined" else mine)
        return {"id": f"{c.ids[0]}+", "code1": a, "code2": b, "label": 1, "kind": c.kind}

    def negative(self, i: int, candidates: list[dict], neighbours: list[int]) -> dict | None:
        """Class ``i``'s negative pair: a mutant, a neighbour, or a random class of another project."""
        kind = self.kinds[i]
        mutant = mutants.mutate(self.pool[i].members[0], self.rng) if kind == "mutant" else None
        if kind == "mutant" and mutant is None:
            kind = "random"  # nothing to mutate (no operator applies): a random class of another project
        near = [n for n in neighbours if self.distinct(i, candidates[n]["code"])]
        if mutant is not None:
            rewritten = self.mutant_rewritten.get(i)
            code = mutant[0]
            theirs = self.like_a_member(code) if rewritten is None else self.variant(code) if rewritten else code
            other_id = f"{self.pool[i].ids[0]}~{mutant[1]}"
        elif near:
            partner = candidates[self.rng.choice(near)]
            other_id, theirs = partner["id"], self.like_a_member(partner["code"])
        else:  # random, or no neighbour of that kind (a one-function project): a random class of another project
            j = self.random_other(i)
            if j is None:
                return None
            other_id, theirs, kind = self.pool[j].ids[0], self.rng.choice(self.pool[j].members), "random"
        return {
            "id": f"{self.pool[i].ids[0]}-{other_id}",
            "code1": self.queries[i],
            "code2": theirs,
            "label": 0,
            "kind": kind,
        }

    def random_other(self, i: int) -> int | None:
        """A class of another project whose code is not near-identical (five tries), or None."""
        others = [j for j in range(len(self.pool)) if self.other_project(i, j)]
        tries = (self.rng.choice(others) for _ in range(5 if others else 0))
        return next((j for j in tries if self.distinct(i, self.pool[j].members[0])), None)


def _hard_negatives(fns: Functions, pairs: _Pairs, min_statements: int) -> tuple[list[dict], dict[int, list[int]]]:
    """Every function of the split that could make a class (not only the pool), and per class asking for a
    neighbour its nearest ones among them by token overlap."""
    candidates = [
        {"id": row["id"], "repo": row["repo"], "code": code}
        for row in fns.rows
        if (code := clones.rewritable(row["code"], min_statements)) is not None
    ]
    neighbours: dict[int, list[int]] = {}
    for kind in ("neighbour_same_project", "neighbour_other_project"):
        asked = [i for i, k in enumerate(pairs.kinds) if k == kind]
        found = clones.token_neighbours(
            [(pairs.queries[i], pairs.pool[i]) for i in asked],
            candidates,
            same_project=kind == "neighbour_same_project",
        )
        neighbours.update(zip(asked, found))
    return candidates, neighbours


# ------------------------------------------------------------------ the sets

SETS: dict[str, tuple[str, ProbingProperty | DownstreamTask]] = {
    **{name: ("probing", prop) for name, prop in PROPERTIES.items()},
    **{name: ("tasks", task) for name, task in TASKS.items()},
}


def _named(entry: ProbingProperty | DownstreamTask, field_name: str) -> Callable:
    """The function of this module that ``entry.<field_name>`` names."""
    return named(sys.modules[__name__], getattr(entry, field_name), f"{entry.name}.{field_name}")


def _within_length(entry: ProbingProperty | DownstreamTask, task_set: TaskSet, fns: Functions) -> Functions:
    """The functions a downstream set draws from: those within its ``max_code_tokens``, if set."""
    if task_set.max_code_tokens is None:
        return fns
    if not isinstance(entry, DownstreamTask):
        raise ConfigError(f"params: tasks.{entry.name}.max_code_tokens applies to the downstream tasks only")
    return fns.within(task_set.max_code_tokens, _named(entry, "length"))


def _builder(entry: ProbingProperty | DownstreamTask, task_set: TaskSet) -> Builder:
    """The function that builds the set from its source: ``builder`` for the corpus, else the one
    ``source_builders`` names for that source."""
    if task_set.source == "corpus":
        return _named(entry, "builder")
    name = getattr(entry, "source_builders", {})[task_set.source]
    return named(sys.modules[__name__], name, f"{entry.name}.source_builders.{task_set.source}")


def _searches(entry: ProbingProperty | DownstreamTask) -> bool:
    """Code search: its test queries are ranked against a code base (codebase.jsonl)."""
    return isinstance(entry, DownstreamTask) and entry.head == "search"


# ------------------------------------------------------------------ real data


def real_rows(
    entry: ProbingProperty | DownstreamTask, real: RealData, split: str, size: int | None, seed: int
) -> tuple[list[dict], list[dict] | None]:
    """Rows of one split of a real dataset, read by its format's loader (and UniXcoder's code base for code
    search's test split). A row keeps the set's fields, each read from the format's field of the same name
    or from the one ``entry.source_fields`` names."""
    rows = _take(loaders.FORMATS[entry.source_format](real, split, seed), size)
    fields = [f for f in entry.fields if f != "id"]
    rows = [{"id": row["id"], **{f: row[entry.source_fields.get(f, f)] for f in fields}} for row in rows]
    searched = _searches(entry) and real.codebase and split == "test"
    return rows, list(loaders.codesearchnet_codebase(real.codebase)) if searched else None


# ---------------------------------------------------------------- balance and token overlap


def _shares(counts: Counter) -> dict[str, float]:
    total = sum(counts.values())
    return {k: round(v / total, 4) for k, v in sorted(counts.items())}


def token_type_shares(rows: list[dict]) -> dict[str, float]:
    return _shares(Counter(t[2] for r in rows for t in r["tokens"]))


def complexity_shares(rows: list[dict]) -> dict[str, float]:
    return _shares(Counter(analysis.COMPLEXITY_CLASSES[r["label"]] for r in rows))


def label_shares(rows: list[dict]) -> dict[str, float]:
    return _shares(Counter(str(r["label"]) for r in rows))


def pair_shares(rows: list[dict]) -> dict[str, float]:
    """Label shares and, for pairs built from the corpus, the share of hard negatives."""
    shares = label_shares(rows)
    negatives = [r for r in rows if r["label"] == 0]
    if negatives and "kind" in negatives[0]:
        shares["hard_negatives"] = round(sum(r["kind"] != "random" for r in negatives) / len(negatives), 4)
    return shares


def class_sizes(rows: list[dict]) -> dict:
    """Classes and their mean size; for rows that name their source project, the members per project and
    the size and projects of each class too."""
    labels = Counter(r["label"] for r in rows)
    out: dict = {"classes": len(labels), "members_per_class": round(len(rows) / len(labels), 2)}
    if "source" in rows[0]:
        out["members_per_source"] = dict(sorted(Counter(r["source"] for r in rows).items()))
        projects: dict = collections.defaultdict(set)
        for r in rows:
            projects[r["label"]].add(r["source"])
        out["class_sizes"] = {str(k): labels[k] for k in sorted(labels)}
        out["sources_per_class"] = {str(k): len(projects[k]) for k in sorted(labels)}
    return out


def target_length(rows: list[dict]) -> dict[str, float]:
    return {"mean_target_chars": round(sum(len(r.get("target", r.get("query", ""))) for r in rows) / len(rows), 1)}


def balance(entry: ProbingProperty | DownstreamTask, rows: list[dict]) -> dict[str, float]:
    """Label shares (token-type shares for lexical); what the table and metrics report."""
    return _named(entry, "balance")(rows) if rows else {}


def pair_overlap(rows: list[dict]) -> dict[str, float]:
    score = baselines.clone_detection_auc(rows)
    return {} if score is None else {"jaccard_roc_auc": round(score, 4)}


def class_overlap(rows: list[dict]) -> dict[str, float]:
    score = baselines.semantic_map_at_r(rows)
    if score is None:
        return {}
    return {
        "jaccard_map_at_r": round(score, 2),
        "bm25_map_at_r": round(baselines.semantic_map_at_r(rows, "bm25") or 0.0, 2),
    }


def token_overlap(entry: ProbingProperty | DownstreamTask, rows: list[dict]) -> dict[str, float]:
    """How much plain token overlap already solves a clone set (docs/datasets.md): the baseline to beat."""
    return _named(entry, "overlap")(rows) if entry.overlap else {}


# ---------------------------------------------------------------------- stage


def _corpus(params: Params) -> dict[str, Functions]:
    folder = Path(params.data.corpus_dir) / params.prepare.language
    return {
        split: Functions(list(iter_jsonl(folder / f"{split}.jsonl", required=CORPUS_FIELDS)), params.prepare.language)
        for split in SPLITS
    }


def _functions_from_real(real: RealData, language: str) -> dict[str, Functions]:
    return {s: Functions(list(loaders.codesearchnet_functions(getattr(real, s))), language) for s in SPLITS}


# Fewer functions than this in a split cannot fill a set's split (pairs, classes, a validation score):
# stop here rather than write empty or near-empty sets that fail stages later.
MIN_SPLIT_FUNCTIONS = 10


def check_splits(functions: dict[str, Functions], files: dict[str, Path | str]) -> None:
    """An empty or tiny split of the source is an error naming the split and its file."""
    for split, fns in functions.items():
        if len(fns.rows) < MIN_SPLIT_FUNCTIONS:
            raise TellyError(
                f"{files[split]}: the {split} split has {len(fns.rows)} function(s), fewer than "
                f"{MIN_SPLIT_FUNCTIONS}; rerun `telly prepare` with more wheels or other "
                "prepare.valid_fraction / test_fraction, or point the set at other data"
            )


def _functions(
    params: Params, entry: ProbingProperty | DownstreamTask, real: RealData | None, corpus: dict[str, Functions] | None
) -> tuple[dict[str, Functions] | None, dict[str, Functions] | None]:
    """The functions a set is built from (None: its real data are its rows), checked; and the corpus, read once."""
    if real is not None and entry.real_data == "rows":
        return None, corpus
    if real is None:
        corpus = corpus or _corpus(params)
        functions = corpus
        corpus_dir = Path(params.data.corpus_dir) / params.prepare.language
        files: dict[str, Path | str] = {split: corpus_dir / f"{split}.jsonl" for split in SPLITS}
    else:
        functions = _functions_from_real(real, params.prepare.language)
        files = {split: getattr(real, split) for split in SPLITS}
    check_splits(functions, files)
    return functions, corpus


def _write_set(
    entry: ProbingProperty | DownstreamTask,
    task_set: TaskSet,
    functions: dict[str, Functions] | None,
    folder: Path,
    p: TasksParams,
) -> dict:
    """Write the three splits of one set; return their rows, balance and token overlap."""
    real = task_set.source if isinstance(task_set.source, RealData) else None
    metrics: dict = {}
    earlier: list[list[dict]] = []
    for split in SPLITS:
        size = getattr(task_set.sizes, split)
        codebase = None
        if functions is None:
            rows, codebase = real_rows(entry, real, split, size, p.seed)
        else:
            fns = _within_length(entry, task_set, functions[split])
            rows = _builder(entry, task_set)(fns, size, p, split, earlier)
            if _searches(entry) and split == "test" and task_set.codebase_size is not None:
                codebase = code_search_codebase(fns, rows, task_set.codebase_size, p)
        earlier.append(rows)
        write_jsonl(folder / f"{split}.jsonl", unique_ids(rows))
        if codebase is not None:
            write_jsonl(folder / "codebase.jsonl", codebase)
        elif _searches(entry) and split == "test":  # no stale codebase from an earlier setting
            (folder / "codebase.jsonl").unlink(missing_ok=True)
        metrics[split] = {"rows": len(rows), "balance": balance(entry, rows)}
        if functions is not None and task_set.max_code_tokens is not None:
            kept = len(_within_length(entry, task_set, functions[split]).rows) / max(1, len(functions[split].rows))
            metrics[split]["length_filter"] = {
                "max_code_tokens": task_set.max_code_tokens,
                "functions_kept": round(kept, 4),
            }
        if overlap := token_overlap(entry, rows):
            metrics[split]["token_overlap"] = overlap
        log.info("%s/%s: %d rows", entry.name, split, len(rows))
    return metrics


def build(params: Params) -> dict:
    """Write every set; return the metrics."""
    p = params.tasks
    if p is None:
        raise ConfigError("params: the 'tasks' section is missing (see params.yaml in the repository)")
    corpus: dict[str, Functions] | None = None
    metrics: dict = {"probing": {}, "tasks": {}, "unparsable": {}}
    for name, (group, entry) in SETS.items():
        task_set: TaskSet = getattr(p, name)
        real = task_set.source if isinstance(task_set.source, RealData) else None
        functions, corpus = _functions(params, entry, real, corpus)
        folder = Path(p.probing_dir if group == "probing" else p.out_dir) / name
        metrics[group][name] = _write_set(entry, task_set, functions, folder, p)
        if functions is not None:
            metrics["unparsable"][name] = sum(len(f.unparsable) for f in functions.values())
    return metrics


def print_table(metrics: dict, console: Console | None = None) -> None:
    table = Table(title="tasks: rows per split, label balance and token-overlap baseline (test split)")
    for column in ("set", "kind", "train", "valid", "test", "balance (test)"):
        table.add_column(column, justify="right" if column in SPLITS else "left")
    for group in ("probing", "tasks"):
        for name, splits in metrics[group].items():
            shares = splits.get("test", {}).get("balance", {})
            text = ", ".join(
                f"{k} {v:.0%}" if isinstance(v, float) and v <= 1 else f"{k} {v}" for k, v in shares.items()
            )
            overlap = splits.get("test", {}).get("token_overlap", {})
            text = "; ".join([text, *(f"{k} {v}" for k, v in overlap.items())])
            table.add_row(name, group, *(str(splits[s]["rows"]) for s in SPLITS), text)
    (console or Console()).print(table)


def _numeric(d: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}".replace(">", "gt")
        if isinstance(v, dict):
            out.update(_numeric(v, f"{key}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def run(params: Params) -> dict:
    from telly.tracking import start_run

    if params.tasks is None:
        raise ConfigError("params: the 'tasks' section is missing (see params.yaml in the repository)")
    with start_run(params, "tasks", log_params=params.tasks.model_dump(mode="json")) as _:
        import mlflow

        metrics = build(params)
        write_json(Path(params.tasks.out_dir) / "metrics.json", metrics)
        mlflow.log_metrics(_numeric(metrics))
    print_table(metrics)
    return metrics
