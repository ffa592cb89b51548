"""Clone classes: the offline stand-in for POJ-104 and BigCloneBench (docs/datasets.md).

A class is one real corpus function and variants of it made by
:mod:`telly.data.rewrites`; every member is printed the same way (``ast.unparse``,
no docstring), so a model cannot tell the original from a variant by layout.
Real clones mined from the corpus (the same code up to identifier names, under two
ids: vendored copies, the same helper in two projects) form classes of their own.
"""

from __future__ import annotations

import ast
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from telly.data import analysis, baselines, rewrites


@dataclass
class CloneClass:
    ids: list[str]  # corpus ids the members come from (one for rewritten classes)
    repos: list[str]
    name: str  # function name
    members: list[str]
    kind: str  # "rewritten" or "mined"


def function_name(row: dict) -> str:
    return str(row.get("func_name") or "").rsplit(".", 1)[-1]


def rewritable(code: str, min_statements: int) -> str | None:
    """The normalised code if it parses with ``ast`` and its body has enough statements."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return None
    fn = tree.body[0] if tree.body else None
    if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    statements = sum(isinstance(n, ast.stmt) for n in ast.walk(fn)) - 1
    if statements - (ast.get_docstring(fn) is not None) < min_statements:
        return None
    return rewrites.normalise(code)


def rewritten_classes(
    rows: Iterable[dict],
    n_classes: int,
    variants: int,
    rng: random.Random,
    *,
    min_statements: int,
    min_rewrites: int,
    max_rewrites: int,
    desc: str = "clone classes",
) -> tuple[list[CloneClass], int]:
    """Up to ``n_classes`` classes of 1 + ``variants`` members; also returns how many rows were skipped."""
    classes: list[CloneClass] = []
    skipped = 0
    with tqdm(total=n_classes, desc=desc, leave=False) as bar:
        for row in rows:
            if len(classes) >= n_classes:
                break
            original = rewritable(row["code"], min_statements)
            if original is None:
                skipped += 1
                continue
            members = [original]
            for _ in range(variants * 3):  # a few tries: a variant must differ from all members
                code = rewrites.make_variant(original, rng, min_rewrites=min_rewrites, max_rewrites=max_rewrites).code
                if code not in members:
                    members.append(code)
                if len(members) > variants:
                    break
            if len(members) <= variants:
                skipped += 1
                continue
            classes.append(CloneClass([row["id"]], [row["repo"]], function_name(row), members, "rewritten"))
            bar.update()
    return classes, skipped


def rewrite_mined(
    clone_class: CloneClass, variants: int, rng: random.Random, *, min_rewrites: int, max_rewrites: int
) -> CloneClass:
    """A mined class as big as a rewritten one: its first copy as it is, the other copies rewritten,
    then more variants of the copies in turn until it has ``1 + variants`` members."""
    copies = clone_class.members
    members = [copies[0]]
    for n in range(1, (1 + variants) * 3):  # a few tries: a variant must differ from all members
        if len(members) > variants:
            break
        code = rewrites.make_variant(
            copies[n % len(copies)], rng, min_rewrites=min_rewrites, max_rewrites=max_rewrites
        ).code
        if code not in members:
            members.append(code)
    return CloneClass(clone_class.ids, clone_class.repos, clone_class.name, members, clone_class.kind)


def type2_key(code: str) -> tuple[str, ...] | None:
    """The code's tokens with every NAME replaced: equal keys = clones up to renaming."""
    try:
        cleaned = analysis.clean_code(code)
        return tuple("NAME" if kind == "NAME" else cleaned[s:e] for s, e, kind in analysis.lexical_tokens(cleaned))
    except analysis.UnparsableCode:
        return None


def mined_classes(rows: Iterable[dict], *, min_tokens: int = 30) -> list[CloneClass]:
    """Groups of corpus functions that are the same code up to identifier names, under different ids."""
    groups: dict[tuple[str, ...], list[dict]] = defaultdict(list)
    for row in rows:
        key = type2_key(row["code"])
        if key is not None and len(key) >= min_tokens:
            groups[key].append(row)
    classes = []
    for group in groups.values():
        members, seen = [], set()
        for row in group:
            code = rewritable(row["code"], 1)
            if code is not None and code not in seen:
                seen.add(code)
                members.append((row, code))
        if len(members) >= 2:
            classes.append(
                CloneClass(
                    [r["id"] for r, _ in members],
                    [r["repo"] for r, _ in members],
                    function_name(members[0][0]),
                    [c for _, c in members],
                    "mined",
                )
            )
    classes.sort(key=lambda c: c.ids[0])
    return classes


# The hard negative of a member is drawn from the functions that share the most tokens
# with it: one of the few nearest, so that the pick still varies.
NEIGHBOURS = 5


def token_neighbours(
    queries: list[tuple[str, CloneClass]],
    candidates: list[dict],
    *,
    same_project: bool = False,
    k: int = NEIGHBOURS,
    chunk: int = 512,
) -> list[list[int]]:
    """For each query (code, its class), the ``k`` candidates nearest to the code by token Jaccard.

    ``candidates`` are functions (``id``, ``repo``, ``code``); the query's own class
    (its ids) is never a candidate. With ``same_project`` only candidates from a project
    of the class count (a project's functions share its vocabulary: attributes, helpers,
    messages), else only candidates from other projects. Nearest first; ties go to
    the earlier candidate, so the result is deterministic.
    """
    if not queries or not candidates:
        return [[] for _ in queries]
    codes, vocabulary = baselines.token_sets([c["code"] for c in candidates])
    repos = np.array([c["repo"] for c in candidates])
    ids = {c["id"]: n for n, c in enumerate(candidates)}
    out: list[list[int]] = []
    for start in tqdm(range(0, len(queries), chunk), desc="hard negatives", leave=False):
        part = queries[start : start + chunk]
        scores = baselines.jaccard_matrix(baselines.token_sets([code for code, _ in part], vocabulary)[0], codes)
        for row, (_, clone_class) in zip(scores, part):
            shared = np.isin(repos, clone_class.repos)
            row[~shared if same_project else shared] = -1.0
            row[[ids[i] for i in clone_class.ids if i in ids]] = -1.0
            order = np.argsort(-row, kind="stable")[:k]
            out.append([int(n) for n in order if row[n] >= 0])
    return out
