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

from tqdm import tqdm

from telly.data import analysis, rewrites


@dataclass
class CloneClass:
    ids: list[str]  # corpus ids the members come from (one for rewritten classes)
    repos: list[str]
    name: str  # function name, for hard negatives
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
