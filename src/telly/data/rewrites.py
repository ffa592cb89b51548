"""Semantics-preserving rewrites of Python functions: the variants of a clone class.

POJ-104 and BigCloneBench cannot be had offline, so a clone class is a real
function plus variants made here (docs/datasets.md). Each variant redoes what another
author would have chosen differently anyway (``ALWAYS``, where it applies: names,
annotations, messages) and combines several other rewrites, so that token overlap
alone does not give it away:

- ``rename``: consistent renaming of every parameter and local variable;
- ``rename_function``: the function itself gets a fresh name, its recursive calls follow
  (:func:`rename_functions`; the variant reports ``{old: new}``);
- ``annotations``: type annotations dropped;
- ``messages``: error, warning, log and ``assert`` messages reworded, placeholders kept;
- ``for_to_while`` / ``while_to_for``: loop form;
- ``swap_if``: ``if c: A else: B`` -> ``if not c: B else: A`` (also ``A if c else B``);
- ``comp_to_loop`` / ``loop_to_comp``: comprehension <-> accumulating loop;
- ``reorder``: swap two adjacent independent assignments;
- ``dead_code``: unused assignments, never-taken branches, loops over nothing;
- ``extract``: a returned value or an ``if`` test first stored in a fresh variable;
- ``literals`` / ``layout``: other spellings of numbers and strings, indentation,
  blank lines, spacing (checked: the AST must not change).

Rewrites work on Python's ``ast`` and write code back with ``ast.unparse``;
docstrings are dropped (a shared docstring would give the class away). Every
rewrite keeps behaviour; tests/test_rewrites.py runs HumanEval's unit tests on
rewritten canonical solutions.
"""

from __future__ import annotations

import ast
import builtins
import copy
import io
import keyword
import random
import re
import tokenize
from collections.abc import Callable
from dataclasses import dataclass, field

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef
NAME_POOL = [
    "value",
    "item",
    "result",
    "acc",
    "data",
    "elem",
    "tmp",
    "res",
    "out",
    "buf",
    "cur",
    "idx",
    "key",
    "val",
    "node",
    "entry",
    "obj",
    "part",
    "total",
    "count",
    "flag",
    "token",
    "chunk",
    "seq",
    "arg",
    "current",
    "temp",
    "piece",
    "element",
    "number",
    "text",
    "size",
    "pos",
    "first",
    "last",
    "step",
    "record",
    "target",
    "source",
    "output",
    "values",
    "items",
    "parts",
    "state",
    "info",
    "candidate",
    "left",
    "right",
    "head",
    "tail",
    "cache",
    "store",
]
VERB_POOL = [
    "get",
    "set",
    "make",
    "build",
    "compute",
    "find",
    "check",
    "handle",
    "process",
    "update",
    "load",
    "parse",
    "read",
    "write",
    "run",
    "apply",
    "collect",
    "create",
    "convert",
    "prepare",
    "render",
    "resolve",
    "select",
    "fetch",
    "extract",
    "format",
    "merge",
    "split",
    "filter",
    "scan",
    "count",
    "evaluate",
    "transform",
    "normalize",
    "validate",
    "gather",
    "emit",
    "produce",
    "derive",
]
PURE_BUILTINS = frozenset({"len", "abs", "int", "float", "str", "bool", "round", "isinstance", "ord", "chr"})
DYNAMIC_SCOPE = frozenset({"locals", "vars", "eval", "exec", "globals", "dir"})


class Namer:
    """Fresh identifiers that collide with nothing in the module or the builtins."""

    def __init__(self, tree: ast.AST, rng: random.Random):
        self.rng = rng
        self.used = set(dir(builtins)) | set(keyword.kwlist)
        for node in ast.walk(tree):
            for attr in ("id", "arg", "name", "attr", "asname", "rest"):
                value = getattr(node, attr, None)
                if isinstance(value, str):
                    self.used.update(value.split("."))

    def fresh(self) -> str:
        return self._claim(self.rng.choice(NAME_POOL))

    def fresh_function(self, old: str) -> str:
        """A verb_noun name, private where ``old`` was (a leading underscore is part of the meaning)."""
        prefix = "_" * (len(old) - len(old.lstrip("_")))
        return self._claim(f"{prefix}{self.rng.choice(VERB_POOL)}_{self.rng.choice(NAME_POOL)}")

    def _claim(self, base: str) -> str:
        """``base``, or ``base2``, ``base3``, ... if taken; reserved from now on."""
        name, n = base, 1
        while name in self.used:
            n += 1
            name = f"{base}{n}"
        self.used.add(name)
        return name


# ------------------------------------------------------------------ scope facts


def _outer_functions(tree: ast.Module) -> list[FunctionNode]:
    """Top-level functions and methods of top-level classes (what a corpus row or HumanEval holds)."""
    out = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.append(node)
        elif isinstance(node, ast.ClassDef):
            out.extend(n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return out


def _names_outside(fn: ast.AST, inner: ast.AST) -> set[str]:
    inside = {id(n) for n in ast.walk(inner)}
    return {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and id(n) not in inside}


_SCOPES = (
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.Lambda,
    ast.ClassDef,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
)


def _own_scope_names(fn: FunctionNode, ctx: type | None = None) -> set[str]:
    """Names used in the function's own scope, not inside nested functions, classes or comprehensions."""
    out, stack = set(), list(ast.iter_child_nodes(fn))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Name) and (ctx is None or isinstance(node.ctx, ctx)):
            out.add(node.id)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if ctx is None or ctx is ast.Store:
                out.add(node.name)
            stack.extend(node.decorator_list)  # decorators and defaults run in the outer scope
            if not isinstance(node, ast.ClassDef):
                stack.extend(d for d in node.args.defaults + node.args.kw_defaults if d)
            continue
        if isinstance(node, _SCOPES):
            if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
                stack.append(node.generators[0].iter)  # the first iterable is evaluated outside
            continue
        stack.extend(ast.iter_child_nodes(node))
    return out


def _names(node: ast.AST, ctx: type | None = None) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and (ctx is None or isinstance(n.ctx, ctx))}


def _has(node: ast.AST, *types: type) -> bool:
    return any(isinstance(n, types) for n in ast.walk(node))


def _blocks(fn: FunctionNode):
    """Every statement list inside the function (bodies, else branches, handlers), not nested classes."""
    stack: list[ast.AST] = [fn]
    while stack:
        node = stack.pop()
        for attr in ("body", "orelse", "finalbody", "handlers", "cases"):
            block = getattr(node, attr, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                yield node, attr, block
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.ClassDef, ast.Lambda)):
                stack.append(child)


def _control_flow(body: list[ast.stmt], kinds: tuple[type, ...]) -> bool:
    """Does a ``break``/``continue`` of this loop level occur in the body (not in nested loops)?"""
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, kinds):
            return True
        if isinstance(
            node, (ast.For, ast.AsyncFor, ast.While, ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
        ):
            continue
        stack.extend(ast.iter_child_nodes(node))
    return False


# -------------------------------------------------------------------- rewrites
# Each takes one function, a Namer and the rng, changes the function in place and
# returns how many places it changed (0: not applicable here).


def rename(fn: FunctionNode, namer: Namer, rng: random.Random) -> int:
    if _names(fn) & DYNAMIC_SCOPE:
        return 0  # locals()/eval() would see the new names
    declared = {n for s in ast.walk(fn) if isinstance(s, (ast.Global, ast.Nonlocal)) for n in s.names}
    class_level = {
        n.id
        for c in ast.walk(fn)
        if isinstance(c, ast.ClassDef)
        for s in c.body
        for n in ast.walk(s)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
    }
    # a nested function or lambda called with ``name=...`` keeps that parameter's name; the
    # function's own parameters are renamed (its callers are not part of the clone)
    inner_params = {
        a.arg
        for n in ast.walk(fn)
        if n is not fn and isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for a in ast.walk(n.args)
        if isinstance(a, ast.arg)
    }
    keywords = {k.arg for k in ast.walk(fn) if isinstance(k, ast.keyword) and k.arg} & inner_params
    imported = {
        (a.asname or a.name).split(".")[0]
        for s in ast.walk(fn)
        if isinstance(s, (ast.Import, ast.ImportFrom))
        for a in s.names
    }
    bound = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif (
            isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and node is not fn
            or isinstance(node, ast.ExceptHandler)
            and node.name
            or isinstance(node, (ast.MatchAs, ast.MatchStar))
            and node.name
        ):
            bound.add(node.name)
    # a name bound only in an inner scope (comprehension, nested def) but read in the function's
    # own scope is a global there: renaming it would change what that reference means
    own = _own_scope_names(fn)
    own_bound = (
        {a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs}
        | {a.arg for a in (fn.args.vararg, fn.args.kwarg) if a}
        | _own_scope_names(fn, ast.Store)
    )
    inner_only = {n for n in bound - own_bound if n in own}
    excluded = declared | class_level | keywords | imported | inner_only | {"self", "cls", "__class__", "_"}
    candidates = sorted(bound - excluded)
    mapping = {old: namer.fresh() for old in candidates}  # all of them: one kept name is a shared token
    if not mapping:
        return 0
    for node in ast.walk(fn):
        for attr in ("id", "arg"):
            if (
                isinstance(getattr(node, attr, None), str)
                and getattr(node, attr) in mapping
                and not isinstance(node, ast.keyword)
            ):
                setattr(node, attr, mapping[getattr(node, attr)])
        named = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.ExceptHandler, ast.MatchAs, ast.MatchStar)
        if isinstance(node, named) and node is not fn and node.name in mapping:
            node.name = mapping[node.name]
    return len(mapping)


def _bound_anywhere(tree: ast.AST) -> set[str]:
    """Names something other than a top-level ``def`` binds: arguments, assignments, imports, globals, inner defs."""
    top = {id(n) for n in getattr(tree, "body", []) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            out.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            out.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and id(node) not in top:
            out.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            out.update(node.names)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            out.add(node.name)
    return out


def rename_functions(tree: ast.Module, namer: Namer, rng: random.Random) -> dict[str, str]:
    """Give every top-level function a fresh verb_noun name; returns ``{old: new}``.

    Recursive calls follow: module-level references to the name, and ``self.name``/``cls.name``
    inside a function whose first parameter is ``self``/``cls`` (a method calling itself).
    Dunder names keep their meaning and are left alone, as are names something else binds
    too, names a decorator mentions (``@name.setter``) and modules that reach names dynamically.
    """
    if _names(tree) & DYNAMIC_SCOPE:
        return {}
    taken = _bound_anywhere(tree)
    mapping: dict[str, str] = {}
    for fn in tree.body:
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or fn.name in mapping:
            continue
        old = fn.name
        if (
            (old.startswith("__") and old.endswith("__"))
            or old in taken
            or any(old in _names(d) for d in fn.decorator_list)
        ):
            continue
        mapping[old] = namer.fresh_function(old)
    if not mapping:
        return {}
    for fn in tree.body:
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        params = fn.args.posonlyargs + fn.args.args
        receiver = params[0].arg if params and params[0].arg in ("self", "cls") else None
        if fn.name in mapping:
            fn.name = mapping[fn.name]
        for node in ast.walk(fn):
            if isinstance(node, ast.Name) and node.id in mapping:
                node.id = mapping[node.id]
            elif (
                receiver
                and isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == receiver
                and node.attr in mapping
            ):
                node.attr = mapping[node.attr]
    return mapping


def _range_args(loop: ast.For) -> tuple[ast.expr, ast.expr] | None:
    it = loop.iter
    if (
        isinstance(it, ast.Call)
        and isinstance(it.func, ast.Name)
        and it.func.id == "range"
        and 1 <= len(it.args) <= 2
        and not it.keywords
        and not any(isinstance(a, ast.Starred) for a in it.args)
    ):
        return (ast.Constant(0), it.args[0]) if len(it.args) == 1 else (it.args[0], it.args[1])
    return None


def for_to_while(fn: FunctionNode, namer: Namer, rng: random.Random) -> int:
    changed = 0
    builtins_free = not ({"iter", "next", "range", "StopIteration"} & _names(fn, ast.Store))
    for _parent, _attr, block in list(_blocks(fn)):
        for i, stmt in enumerate(block):
            if not isinstance(stmt, ast.For) or stmt.orelse or not builtins_free or rng.random() < 0.3:
                continue
            bounds = _range_args(stmt)
            var = stmt.target.id if isinstance(stmt.target, ast.Name) else None
            counting = (
                bounds is not None
                and var is not None
                and not _control_flow(stmt.body, (ast.Continue,))
                and var not in _names(ast.Module(body=stmt.body, type_ignores=[]), ast.Store)
                and var not in _names_outside(fn, stmt)
                and not any(isinstance(n, (ast.Lambda, ast.FunctionDef)) for s in stmt.body for n in ast.walk(s))
            )
            if counting:
                start, stop = bounds
                stop_name = namer.fresh()
                new = [
                    ast.Assign([ast.Name(var, ast.Store())], start),
                    ast.Assign([ast.Name(stop_name, ast.Store())], stop),
                    ast.While(
                        ast.Compare(ast.Name(var, ast.Load()), [ast.Lt()], [ast.Name(stop_name, ast.Load())]),
                        stmt.body + [ast.AugAssign(ast.Name(var, ast.Store()), ast.Add(), ast.Constant(1))],
                        [],
                    ),
                ]
            else:
                it_name = namer.fresh()
                fetch = ast.Try(
                    body=[
                        ast.Assign(
                            [stmt.target], ast.Call(ast.Name("next", ast.Load()), [ast.Name(it_name, ast.Load())], [])
                        )
                    ],
                    handlers=[ast.ExceptHandler(ast.Name("StopIteration", ast.Load()), None, [ast.Break()])],
                    orelse=[],
                    finalbody=[],
                )
                new = [
                    ast.Assign(
                        [ast.Name(it_name, ast.Store())], ast.Call(ast.Name("iter", ast.Load()), [stmt.iter], [])
                    ),
                    ast.While(ast.Constant(True), [fetch, *stmt.body], []),
                ]
            block[i : i + 1] = new
            return 1  # one loop per call: indexes of the block shifted
    return changed


def while_to_for(fn: FunctionNode, namer: Namer, rng: random.Random) -> int:
    if {"iter", "int"} & (_names(fn, ast.Store) | {a.arg for a in ast.walk(fn) if isinstance(a, ast.arg)}):
        return 0
    for _, _, block in _blocks(fn):
        for i, node in enumerate(block):
            if isinstance(node, ast.While) and not node.orelse:
                # iter(int, 1) never ends: int() is 0, never 1
                forever = ast.Call(ast.Name("iter", ast.Load()), [ast.Name("int", ast.Load()), ast.Constant(1)], [])
                body = node.body
                if not (isinstance(node.test, ast.Constant) and node.test.value is True):
                    body = [ast.If(_negate(node.test), [ast.Break()], []), *body]
                block[i] = ast.For(ast.Name(namer.fresh(), ast.Store()), forever, body, [])
                return 1
    return 0


_INVERSE = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}


def _negate(test: ast.expr) -> ast.expr:
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return test.operand
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in _INVERSE:
        return ast.Compare(test.left, [_INVERSE[type(test.ops[0])]()], test.comparators)
    return ast.UnaryOp(ast.Not(), test)


def swap_if(fn: FunctionNode, namer: Namer, rng: random.Random) -> int:
    sites = [n for n in ast.walk(fn) if (isinstance(n, ast.If) and n.orelse) or isinstance(n, ast.IfExp)]
    chosen = [n for n in sites if rng.random() < 0.7] or sites[:1]
    for node in chosen:
        node.test, node.body, node.orelse = _negate(node.test), node.orelse, node.body
    return len(chosen)


def _accumulate(kind: ast.expr, acc: str, comp: ast.expr) -> ast.stmt:
    if isinstance(comp, ast.ListComp):
        call = ast.Call(ast.Attribute(ast.Name(acc, ast.Load()), "append", ast.Load()), [comp.elt], [])
        return ast.Expr(call)
    if isinstance(comp, ast.SetComp):
        return ast.Expr(ast.Call(ast.Attribute(ast.Name(acc, ast.Load()), "add", ast.Load()), [comp.elt], []))
    return ast.Assign([ast.Subscript(ast.Name(acc, ast.Load()), comp.key, ast.Store())], comp.value)


def comp_to_loop(fn: FunctionNode, namer: Namer, rng: random.Random) -> int:
    for _, _, block in list(_blocks(fn)):
        for i, stmt in enumerate(block):
            if (
                isinstance(stmt, ast.Assign)
                and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)
                or isinstance(stmt, ast.Return)
            ):
                comp = stmt.value
            else:
                continue
            if not isinstance(comp, (ast.ListComp, ast.SetComp, ast.DictComp)):
                continue
            if _has(comp, ast.Yield, ast.YieldFrom, ast.Await, ast.NamedExpr) or any(
                g.is_async for g in comp.generators
            ):
                continue
            targets = set().union(*(_names(g.target) for g in comp.generators))
            if targets & _names_outside(fn, comp):
                continue  # the loop would leak its variables into names the function uses
            acc = namer.fresh()
            empty = {ast.ListComp: ast.List([], ast.Load()), ast.DictComp: ast.Dict([], [])}.get(type(comp))
            if empty is None:
                if "set" in _names(fn, ast.Store):
                    continue
                empty = ast.Call(ast.Name("set", ast.Load()), [], [])
            inner: ast.stmt = _accumulate(stmt, acc, comp)
            for gen in reversed(comp.generators):
                for cond in reversed(gen.ifs):
                    inner = ast.If(cond, [inner], [])
                inner = ast.For(gen.target, gen.iter, [inner], [])
            result = ast.Name(acc, ast.Load())
            last = ast.Return(result) if isinstance(stmt, ast.Return) else ast.Assign(stmt.targets, result)
            block[i : i + 1] = [ast.Assign([ast.Name(acc, ast.Store())], empty), inner, last]
            return 1
    return 0


def loop_to_comp(fn: FunctionNode, namer: Namer, rng: random.Random) -> int:
    for _, _, block in list(_blocks(fn)):
        for i in range(len(block) - 1):
            init, loop = block[i], block[i + 1]
            if not (
                isinstance(init, ast.Assign)
                and len(init.targets) == 1
                and isinstance(init.targets[0], ast.Name)
                and isinstance(init.value, ast.List)
                and not init.value.elts
                and isinstance(loop, ast.For)
                and not loop.orelse
                and len(loop.body) == 1
            ):
                continue
            acc = init.targets[0].id
            stmt, conds = loop.body[0], []
            if isinstance(stmt, ast.If) and not stmt.orelse and len(stmt.body) == 1:
                conds, stmt = [stmt.test], stmt.body[0]
            if not (
                isinstance(stmt, ast.Expr)
                and isinstance(stmt.value, ast.Call)
                and isinstance(stmt.value.func, ast.Attribute)
                and stmt.value.func.attr == "append"
                and isinstance(stmt.value.func.value, ast.Name)
                and stmt.value.func.value.id == acc
                and len(stmt.value.args) == 1
                and not stmt.value.keywords
            ):
                continue
            elt = stmt.value.args[0]
            parts = [loop.iter, elt, *conds]
            if any(acc in _names(p) for p in parts) or any(
                _has(p, ast.Yield, ast.YieldFrom, ast.Await, ast.NamedExpr) for p in parts
            ):
                continue
            if _names(loop.target) & _names_outside(fn, loop):
                continue
            comp = ast.ListComp(elt, [ast.comprehension(loop.target, loop.iter, conds, 0)])
            block[i : i + 2] = [ast.Assign(init.targets, comp)]
            return 1
    return 0


def _pure(expr: ast.expr, shadowed: set[str]) -> bool:
    for node in ast.walk(expr):
        if isinstance(node, (ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr)):
            return False
        if isinstance(node, ast.Call):  # noqa: SIM102 (the branches read as the rule states them)
            if not (isinstance(node.func, ast.Name) and node.func.id in PURE_BUILTINS and node.func.id not in shadowed):
                return False
    return True


def _simple_assignment(stmt: ast.stmt, shadowed: set[str]) -> tuple[set[str], set[str]] | None:
    """(written, read) names of ``x = e``, ``x += e``, ``x: T = e`` with a pure ``e``; else None."""
    if isinstance(stmt, ast.Assign) and all(isinstance(t, (ast.Name, ast.Tuple)) for t in stmt.targets):
        targets = stmt.targets
    elif isinstance(stmt, (ast.AugAssign, ast.AnnAssign)) and isinstance(stmt.target, ast.Name) and stmt.value:
        targets = [stmt.target]
    else:
        return None
    if not all(
        isinstance(t, ast.Name) or (isinstance(t, ast.Tuple) and all(isinstance(e, ast.Name) for e in t.elts))
        for t in targets
    ):
        return None
    if not _pure(stmt.value, shadowed):
        return None
    written = set().union(*(_names(t) for t in targets))
    read = _names(stmt.value) | (written if isinstance(stmt, ast.AugAssign) else set())
    return written, read


def reorder(fn: FunctionNode, namer: Namer, rng: random.Random) -> int:
    shadowed = _names(fn, ast.Store) | {a.arg for a in ast.walk(fn) if isinstance(a, ast.arg)}
    pairs = []
    for _, _, block in _blocks(fn):
        for i in range(len(block) - 1):
            a, b = _simple_assignment(block[i], shadowed), _simple_assignment(block[i + 1], shadowed)
            if a and b and not (a[0] & (b[0] | b[1])) and not (b[0] & a[1]):
                pairs.append((block, i))
    if not pairs:
        return 0
    block, i = rng.choice(pairs)
    block[i], block[i + 1] = block[i + 1], block[i]
    return 1


def _dead_statement(namer: Namer, rng: random.Random) -> ast.stmt:
    name = namer.fresh()
    constant = ast.Constant(rng.choice([0, 1, -1, "", None, True, 0.0]))
    kind = rng.randrange(3)
    if kind == 0:  # an assignment nobody reads
        return ast.Assign([ast.Name(name, ast.Store())], constant)
    if kind == 1:  # a branch never taken
        return ast.If(ast.Constant(False), [ast.Assign([ast.Name(name, ast.Store())], constant)], [])
    return ast.For(ast.Name(name, ast.Store()), ast.Tuple([], ast.Load()), [ast.Pass()], [])  # a loop over nothing


def dead_code(fn: FunctionNode, namer: Namer, rng: random.Random) -> int:
    blocks = [block for _, _, block in _blocks(fn)]
    if not blocks:
        return 0
    count = rng.randint(1, 3)
    for _ in range(count):
        block = rng.choice(blocks)
        block.insert(rng.randrange(len(block) + 1), _dead_statement(namer, rng))
    return count


def extract(fn: FunctionNode, namer: Namer, rng: random.Random) -> int:
    """``return e`` -> ``t = e; return t`` and ``if c:`` -> ``t = c; if t:``: same value, computed once, same place."""
    sites = []
    for _, _, block in _blocks(fn):
        for _i, stmt in enumerate(block):
            value = stmt.value if isinstance(stmt, ast.Return) else stmt.test if isinstance(stmt, ast.If) else None
            if (
                value is not None
                and not isinstance(value, (ast.Name, ast.Constant))
                and not _has(value, ast.Yield, ast.YieldFrom, ast.Await)
            ):
                sites.append((block, stmt))
    if not sites:
        return 0
    chosen = [site for site in sites if rng.random() < 0.5] or [rng.choice(sites)]
    for block, stmt in chosen:
        name = namer.fresh()
        attr = "value" if isinstance(stmt, ast.Return) else "test"
        assign = ast.Assign([ast.Name(name, ast.Store())], getattr(stmt, attr))
        setattr(stmt, attr, ast.Name(name, ast.Load()))
        block.insert(next(i for i, s in enumerate(block) if s is stmt), assign)
    return len(chosen)


SAFE_DECORATORS = frozenset(
    {"property", "staticmethod", "classmethod", "setter", "getter", "deleter", "cache", "lru_cache", "wraps"}
)


def _decorator_names(fn: FunctionNode) -> set[str]:
    out = set()
    for d in fn.decorator_list:
        d = d.func if isinstance(d, ast.Call) else d
        out.add(d.attr if isinstance(d, ast.Attribute) else d.id if isinstance(d, ast.Name) else "?")
    return out


def annotations(fn: FunctionNode, namer: Namer, rng: random.Random) -> int:
    """Drop type annotations: parameters, return, ``x: T = e`` -> ``x = e``.

    Annotations do not run, but a decorator may read them (``singledispatch``, validators),
    so a function with any other decorator than the plain ones keeps them.
    """
    if _decorator_names(fn) - SAFE_DECORATORS:
        return 0
    changed = 0
    for node in ast.walk(fn):
        if isinstance(node, ast.arg) and node.annotation is not None:
            node.annotation, changed = None, changed + 1
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:  # noqa: SIM102 (the branches read as the rule states them)
            if node is fn or not (_decorator_names(node) - SAFE_DECORATORS):
                node.returns, changed = None, changed + 1
    for _, _, block in _blocks(fn):
        for i, stmt in enumerate(block):
            # ``x: T`` alone makes x local: it stays; only annotated assignments become plain ones
            if (
                isinstance(stmt, ast.AnnAssign)
                and stmt.value is not None
                and (stmt.simple or not isinstance(stmt.target, ast.Name))
            ):
                block[i] = ast.Assign([stmt.target], stmt.value)
                changed += 1
    return changed


MESSAGE_CALLS = frozenset({"warn", "debug", "info", "warning", "error", "exception", "critical", "fatal"})
MESSAGES = (
    "invalid input",
    "unexpected value",
    "bad argument",
    "unsupported case",
    "cannot proceed",
    "operation failed",
    "wrong value",
    "not allowed",
    "invalid state",
    "check failed",
    "unexpected input",
    "cannot handle this",
    "value rejected",
    "unsupported value",
    "invalid argument",
    "something went wrong",
)
# what a format operation reads in a message: kept verbatim and in order
PLACEHOLDER = re.compile(r"%%|%(\([^)]*\))?[-#0 +]*(\*|\d+)?(\.(\*|\d+))?[diouxXeEfFgGcrsa]|\{\{|\}\}|\{[^{}]*\}")


def _reword(text: str, phrase: str) -> str:
    """The phrase, then the message's placeholders in their order: a format operation sees the same fields."""
    fields = [m.group() for m in PLACEHOLDER.finditer(text)]
    return " ".join([phrase, *fields])


def _message_nodes(fn: FunctionNode) -> list[ast.expr]:
    """Messages: the arguments of a raised exception, of ``warn``/logging calls, and ``assert``'s message."""
    out: list[ast.expr] = []
    for node in ast.walk(fn):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            out.extend(node.exc.args)
        elif isinstance(node, ast.Assert) and node.msg is not None:
            out.append(node.msg)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if name in MESSAGE_CALLS:
                out.append(node.args[0])
    strings = []
    for message in out:
        if isinstance(message, ast.BinOp) and isinstance(message.op, ast.Mod):
            message = message.left  # "... %s" % x
        elif (
            isinstance(message, ast.Call) and isinstance(message.func, ast.Attribute) and message.func.attr == "format"
        ):
            message = message.func.value  # "... {}".format(x)
        if (
            isinstance(message, ast.Constant)
            and isinstance(message.value, str)
            and len(re.findall(r"[A-Za-z]{2,}", message.value)) >= 2
            or isinstance(message, ast.JoinedStr)
        ):
            strings.append(message)
    return strings


def messages(fn: FunctionNode, namer: Namer, rng: random.Random) -> int:
    """Reword error, warning and log messages: another author's phrase, the same placeholders.

    The words of a message are its author's, not the function's behaviour; what a
    format operation reads (``%s``, ``{name}``, an f-string's values) stays, in order.
    """
    changed = 0
    for node in _message_nodes(fn):
        phrase = rng.choice(MESSAGES)
        if isinstance(node, ast.Constant):
            new = _reword(node.value, phrase)
            if new != node.value:
                node.value, changed = new, changed + 1
        else:  # f-string: the phrase, then each value, the literal parts between them become spaces
            values = [v for v in node.values if isinstance(v, ast.FormattedValue)]
            if not any(isinstance(v, ast.Constant) and re.search("[A-Za-z]{2,}", str(v.value)) for v in node.values):
                continue
            parts: list[ast.expr] = [ast.Constant(phrase)]
            for v in values:
                parts.extend([ast.Constant(" "), v])
            node.values = parts
            changed += 1
    return changed


AST_REWRITES: dict[str, Callable[[FunctionNode, Namer, random.Random], int]] = {
    "rename": rename,
    "for_to_while": for_to_while,
    "while_to_for": while_to_for,
    "swap_if": swap_if,
    "comp_to_loop": comp_to_loop,
    "loop_to_comp": loop_to_comp,
    "reorder": reorder,
    "dead_code": dead_code,
    "extract": extract,
    "annotations": annotations,
    "messages": messages,
}


# done in every variant where they apply: what another author would write differently anyway
ALWAYS = ("rename", "annotations", "messages")


# --------------------------------------------------------- text-level rewrites
# These change spelling only; the AST must stay the same, which is checked.


def _respell_number(text: str, rng: random.Random) -> str:
    if re.fullmatch(r"[1-9][0-9]*", text):
        value = int(text)
        options = [hex(value)] if value >= 10 else []
        if value >= 1000:
            options.append(f"{value:_}")
        return rng.choice(options) if options else text
    if re.fullmatch(r"[0-9]*\.[0-9]+", text):
        return text.lstrip("0") + "0" if text.startswith("0.") else text + "0"
    return text


def _respell_string(text: str) -> str:
    prefix = re.match(r"[A-Za-z]*", text).group()
    body = text[len(prefix) :]
    if body[:3] in ('"""', "'''") or "\\" in body or "{" in body or len(body) < 2:
        return text
    quote, other = body[0], "'" if body[0] == '"' else '"'
    inner = body[1:-1]
    if other in inner or quote in inner:
        return text
    return prefix + other + inner + other


def literals(code: str, rng: random.Random) -> str:
    lines = code.splitlines(keepends=True)
    edits = []
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        if tok.start[0] != tok.end[0] or rng.random() < 0.4:
            continue
        if tok.type == tokenize.NUMBER:
            edits.append((tok.start, tok.end, _respell_number(tok.string, rng)))
        elif tok.type == tokenize.STRING:
            edits.append((tok.start, tok.end, _respell_string(tok.string)))
    for (row, col), (_, end), new in reversed(edits):
        line = lines[row - 1]
        lines[row - 1] = line[:col] + new + line[end:]
    return "".join(lines)


def layout(code: str, rng: random.Random) -> str:
    width = rng.choice([2, 3, 8, "\t"])
    out = []
    for line in code.splitlines():
        stripped = line.lstrip(" ")
        depth = (len(line) - len(stripped)) // 4
        indent = "\t" * depth if width == "\t" else " " * (depth * width)
        if rng.random() < 0.5:  # spacing after commas
            stripped = re.sub(r",(?=\s*\S)(?![^\"']*[\"'][^\"']*$)\s", ",", stripped)
        out.append(indent + stripped)
        if rng.random() < 0.1:
            out.append("")
    return "\n".join(out) + "\n"


TEXT_REWRITES: dict[str, Callable[[str, random.Random], str]] = {"literals": literals, "layout": layout}


# ---------------------------------------------------------------- variants


@dataclass
class Variant:
    code: str
    applied: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)  # top-level functions: old name -> new name


def strip_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]


def normalise(code: str) -> str:
    """The code as rewrites print it (no docstrings, ``ast.unparse`` layout): the class's original member."""
    tree = ast.parse(code)
    strip_docstrings(tree)
    return ast.unparse(tree) + "\n"


def make_variant(code: str, rng: random.Random, *, min_rewrites: int = 3, max_rewrites: int = 5) -> Variant:
    """One clone of ``code``: the author's choices always redone (names, annotations, messages, where
    there are any), plus ``min``..``max`` other rewrites."""
    tree = ast.parse(code)
    strip_docstrings(tree)
    namer = Namer(tree, rng)
    functions = _outer_functions(tree)
    want = rng.randint(min_rewrites, max_rewrites)
    applied: list[str] = []
    others = [n for n in AST_REWRITES if n not in ALWAYS] + list(TEXT_REWRITES)
    rng.shuffle(others)
    done = 0
    for name in [*ALWAYS, *others]:
        if done >= want:
            break
        if name in TEXT_REWRITES:
            applied.append(name)  # always applicable; done after unparsing
            done += 1
            continue
        snapshot = copy.deepcopy(tree)
        try:
            changed = sum(AST_REWRITES[name](fn, namer, rng) for fn in functions)
            if changed:
                ast.fix_missing_locations(tree)
                compile(tree, "<variant>", "exec")
                applied.append(name)
                done += name not in ALWAYS
        except Exception:  # noqa: BLE001 - a rewrite that cannot handle this code is skipped, the code kept
            tree = snapshot
            functions = _outer_functions(tree)
    renamed = rename_functions(tree, namer, rng)  # on top of the others: a clone's name is its author's choice
    if renamed:
        applied.append("rename_function")
    text = ast.unparse(tree) + "\n"
    reference = ast.dump(ast.parse(text))
    for name in TEXT_REWRITES:
        if name in applied:
            respelled = TEXT_REWRITES[name](text, rng)
            try:
                same = ast.dump(ast.parse(respelled)) == reference
            except SyntaxError:
                same = False
            if same and respelled != text:
                text = respelled
            else:
                applied.remove(name)
    return Variant(text, applied, renamed)
