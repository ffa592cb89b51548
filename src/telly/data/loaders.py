"""Loaders for the paper's real datasets, in their public formats, to this project's rows.

Where a copy of the real data is at hand, ``params.yaml`` points a task at it
(``tasks.<set>.source``) instead of the built-in corpus. Each loader reads the
exact public layout and yields rows with an ``id``; a file with the wrong schema fails
naming the file, the line and the missing field. :data:`FORMATS` holds one loader per
format; each set of the registries names its format (``source_format``) and the tasks
stage keeps the set's fields of the rows (docs/architecture.md).

- CodeSearchNet jsonl (and UniXcoder/GraphCodeBERT's cleaned copy + ``codebase.jsonl``)
- BigCloneBench (CodeXGLUE): ``data.jsonl`` ``{"func", "idx"}`` + ``train/valid/test.txt`` ``idx1<TAB>idx2<TAB>label``
- POJ-104 (CodeXGLUE): jsonl ``{"code", "index", "label"}``
- CONCODE (CodeXGLUE): json lines ``{"nl", "code"}``
- CodeXGLUE line-level completion: token files, one ``<s> ... </s>`` per line with ``<EOL>``,
  ``<STR_LIT>``, ``<NUM_LIT>``; or the line-level test file ``{"input", "gt"}``
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from telly.errors import TellyError
from telly.jsonl import SchemaError, iter_jsonl


def _tokens(row: dict, path: Path, lineno: int, *names: str) -> list[str]:
    for name in names:
        if name in row:
            value = row[name]
            if not isinstance(value, list):
                raise SchemaError(f"{path}:{lineno}: field {name!r} must be a list of tokens")
            return [str(t) for t in value]
    raise SchemaError(f"{path}:{lineno}: missing field(s) {' or '.join(map(repr, names))}")


def _numbered(path: str | Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """Rows with their line numbers (``iter_jsonl`` checks the file and ``required``)."""
    path = Path(path)
    rows = iter_jsonl(path, required=required)
    first = next(rows, None)
    if first is None:
        return
    with path.open(encoding="utf-8") as fh:
        numbers = (n for n, line in enumerate(fh, start=1) if line.strip())
        yield next(numbers), first
        for row in rows:
            yield next(numbers), row


def _missing(path: Path) -> None:
    raise TellyError(f"{path}: file not found")


# ----------------------------------------------------------------- CodeSearchNet


def codesearchnet(path: str | Path) -> Iterator[dict]:
    """Rows with ``id`` (the url), ``code`` and ``query`` (tokens joined by spaces, as CodeXGLUE)."""
    path = Path(path)
    for lineno, row in _numbered(path, ("url", "docstring_tokens")):
        code = _tokens(row, path, lineno, "code_tokens", "function_tokens")
        doc = _tokens(row, path, lineno, "docstring_tokens")
        yield {"id": row["url"], "query": " ".join(doc), "code": " ".join(code)}


def codesearchnet_codebase(path: str | Path) -> Iterator[dict]:
    """UniXcoder's ``codebase.jsonl``: the candidates each test query's code is ranked among."""
    path = Path(path)
    for lineno, row in _numbered(path, ("url",)):
        yield {"id": row["url"], "code": " ".join(_tokens(row, path, lineno, "code_tokens", "function_tokens"))}


def codesearchnet_functions(path: str | Path) -> Iterator[dict]:
    """CodeSearchNet rows as corpus rows (the probing sets are computed from ``code``)."""
    for row in iter_jsonl(path, required=("url", "code", "docstring_tokens")):
        yield {
            "id": row["url"],
            "repo": row.get("repo", ""),
            "func_name": row.get("func_name", ""),
            "code": row["code"],
            "docstring_tokens": row["docstring_tokens"],
            "signature": row.get("signature"),
            "class_name": row.get("class_name"),
            "class_members": row.get("class_members", []),
        }


# ---------------------------------------------------------------- BigCloneBench


def bigclonebench(data: str | Path, pairs: str | Path) -> Iterator[dict]:
    """``{"id", "code1", "code2", "label"}`` for each line ``idx1<TAB>idx2<TAB>label`` of ``pairs``."""
    functions = {str(row["idx"]): row["func"] for row in iter_jsonl(data, required=("func", "idx"))}
    pairs = Path(pairs)
    if not pairs.exists():
        _missing(pairs)
    with pairs.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 3 or parts[2] not in ("0", "1"):
                raise SchemaError(
                    f"{pairs}:{lineno}: expected 'idx1<TAB>idx2<TAB>label' with label 0 or 1, got {line.strip()!r}"
                )
            for idx in parts[:2]:
                if idx not in functions:
                    raise SchemaError(f"{pairs}:{lineno}: function idx {idx!r} is not in {data}")
            yield {
                "id": f"{parts[0]}-{parts[1]}",
                "code1": functions[parts[0]],
                "code2": functions[parts[1]],
                "label": int(parts[2]),
            }


# --------------------------------------------------------------------- POJ-104


def poj104(path: str | Path) -> Iterator[dict]:
    """``{"id", "code", "label"}``: the label is the problem number (an int)."""
    for row in iter_jsonl(path, required=("code", "index", "label")):
        label = row["label"]
        yield {"id": str(row["index"]), "code": row["code"], "label": int(label) if str(label).isdigit() else label}


# --------------------------------------------------------------------- CONCODE


def concode(path: str | Path) -> Iterator[dict]:
    """``{"id", "source": nl (with its concode_field_sep context), "target": code}``."""
    path = Path(path)
    for lineno, row in _numbered(path, ("nl", "code")):
        yield {"id": f"{path.stem}:{lineno}", "source": row["nl"], "target": row["code"]}


# ------------------------------------------------------ CodeXGLUE line completion


def codexglue_lines(path: str | Path, seed: int = 0) -> Iterator[dict]:
    """Line-level completion rows from a token file (a random line per file) or the ``{"input", "gt"}`` file.

    Token file: the left context is every token up to and including a random ``<EOL>``
    (so it starts with ``<s>``); the target is the next non-empty line, tokens joined by spaces.
    """
    path = Path(path)
    if path.suffix == ".json" or path.suffix == ".jsonl":
        for lineno, row in _numbered(path, ("input", "gt")):
            yield {"id": f"{path.stem}:{lineno}", "source": row["input"], "target": row["gt"]}
        return
    if not path.exists():
        _missing(path)
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            tokens = line.split()
            if not tokens:
                continue
            if tokens[0] != "<s>" or tokens[-1] != "</s>":
                raise SchemaError(f"{path}:{lineno}: a CodeXGLUE token line starts with '<s>' and ends with '</s>'")
            body = tokens[1:-1]
            ends = [i for i, t in enumerate(body) if t == "<EOL>"]
            # candidate cut points: after an <EOL> that a non-empty line follows
            cuts = [e for n, e in enumerate(ends) if (ends[n + 1] if n + 1 < len(ends) else len(body)) > e + 1]
            if not cuts:
                continue
            rng = random.Random(f"{seed}:{path.name}:{lineno}")
            cut = rng.choice(cuts)
            nxt = next((e for e in ends if e > cut), len(body))
            yield {
                "id": f"{path.stem}:{lineno}",
                "source": " ".join(["<s>", *body[: cut + 1]]),
                "target": " ".join(body[cut + 1 : nxt]),
            }


# --------------------------------------------------------------------- registry

# format -> the rows of one split of a real dataset: (tasks.<set>.source, split, seed) -> rows with an "id"
FORMATS: dict[str, Callable[[Any, str, int], Iterator[dict]]] = {
    "codesearchnet": lambda real, split, seed: codesearchnet(getattr(real, split)),
    "bigclonebench": lambda real, split, seed: bigclonebench(real.data, getattr(real, split)),
    "poj104": lambda real, split, seed: poj104(getattr(real, split)),
    "concode": lambda real, split, seed: concode(getattr(real, split)),
    "codexglue_line": lambda real, split, seed: codexglue_lines(getattr(real, split), seed),
}
