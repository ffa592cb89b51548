"""Real Python functions for tests: the installed standard library, or the corpus when built.

``corpus_rows`` makes rows in the corpus format of docs/architecture.md from stdlib
modules (one module = one "project"), so task tests run on real code without the
prepare stage.
"""

from __future__ import annotations

import ast
import inspect
import sysconfig
import textwrap
from pathlib import Path

STDLIB = Path(sysconfig.get_paths()["stdlib"])
CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus" / "python"


def stdlib_functions(modules: list[str] | None = None, limit: int | None = None):
    """``(module, node, code, source_lines_start)`` for functions and methods of stdlib modules."""
    files = [STDLIB / f"{m}.py" for m in modules] if modules else sorted(STDLIB.glob("*.py"))
    for path in files:
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        lines = source.splitlines(keepends=True)
        classes = {id(n): c for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for n in c.body}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            start = (node.decorator_list[0].lineno if node.decorator_list else node.lineno) - 1
            code = textwrap.dedent("".join(lines[start : node.end_lineno]))
            try:
                ast.parse(code)
            except SyntaxError:
                continue  # dedent fails on bodies with less-indented string lines
            yield path.stem, node, code, classes.get(id(node)), start + 1
            limit = None if limit is None else limit - 1
            if limit == 0:
                return


def corpus_rows(modules: list[str], limit: int | None = None) -> list[dict]:
    """Documented functions of the modules as corpus rows (module = project)."""
    rows = []
    for module, node, code, cls, start in stdlib_functions(modules):
        doc = ast.get_docstring(node)
        if not doc or node.name.startswith("test"):
            continue
        doc = inspect.cleandoc(doc)
        first = doc.split("\n\n")[0].split(". ")[0].split()
        if len(first) < 3:
            continue
        signature = ast.get_source_segment(code, ast.parse(code).body[0]).split(":\n")[0] + ":"
        members = [
            b.name if isinstance(b, (ast.FunctionDef, ast.AsyncFunctionDef)) else t.id
            for b in (cls.body if cls else [])
            for t in ([b] if isinstance(b, (ast.FunctionDef, ast.AsyncFunctionDef)) else getattr(b, "targets", []))
            if isinstance(b, (ast.FunctionDef, ast.AsyncFunctionDef)) or isinstance(t, ast.Name)
        ]
        rows.append(
            {
                "repo": module,
                "path": f"{module}.py",
                "func_name": f"{cls.name}.{node.name}" if cls else node.name,
                "original_string": code,
                "language": "python",
                "code": code,
                "code_tokens": code.split(),
                "docstring": doc,
                "docstring_tokens": first,
                "url": f"pypi://{module}/0/{module}.py#L{start}",
                "partition": "train",
                "project_version": "0",
                "license": "PSF-2.0",
                "start_line": start,
                "end_line": node.end_lineno,
                "class_name": cls.name if cls else None,
                "class_members": members,
                "signature": signature,
                "id": f"{module}/{module}.py:{start}",
            }
        )
        if limit and len(rows) >= limit:
            break
    return rows


def corpus_or_stdlib_codes(n: int) -> list[str]:
    """Codes of up to n corpus functions when the corpus exists, else of stdlib functions."""
    test_split = CORPUS / "test.jsonl"
    if test_split.exists():
        from telly.jsonl import iter_jsonl

        codes = []
        for row in iter_jsonl(test_split, required=("code",)):
            codes.append(row["code"])
            if len(codes) >= n:
                break
        if len(codes) >= min(n, 200):
            return codes
    return [code for _, _, code, _, _ in stdlib_functions(limit=n)]
