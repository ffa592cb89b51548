"""Near-miss mutants: one small behaviour change, the hard negatives of clone detection.

A mutant shares nearly every token with the function it comes from, yet does something
else, so token overlap cannot tell it from a clone. Such "deviants" are the hard negatives
of DISCO (Ding et al., ACL 2022: injected bugs) and CONCORD (Ding et al., ISSTA 2023:
clone-aware contrastive learning with clones and deviants). The operators are the classic
first-order mutation operators of mutation testing (one change per mutant):

- ``compare``: ``<`` <-> ``<=``, ``>`` <-> ``>=``, ``==`` <-> ``!=``, ``in`` <-> ``not in``, ``is`` <-> ``is not``;
- ``arithmetic``: ``+`` <-> ``-``, ``*`` <-> ``//`` (and ``/`` -> ``*``, ``%`` -> ``//``), in expressions and ``x += e``;
- ``boolean``: ``and`` <-> ``or``;
- ``constant``: an integer ``n`` -> ``n + 1``, ``True`` <-> ``False``;
- ``negate``: an ``if``/``while``/ternary test becomes ``not`` test, the branches stay;
- ``remove``: one simple statement (assignment, call, ``return``) of a block of several is deleted;
- ``swap_args``: two different positional arguments of a call change places;
- ``jump``: ``break`` <-> ``continue``.

Annotations, decorators and messages (what :func:`telly.data.rewrites.messages` rewords)
are never mutated: a change there is no change of behaviour. tests/test_mutants.py runs
mutants of HumanEval's canonical solutions against their unit tests; most must fail.
"""

from __future__ import annotations

import ast
import random
from collections.abc import Callable

from telly.data import rewrites

OPERATORS = ("compare", "arithmetic", "boolean", "constant", "negate", "remove", "swap_args", "jump")
COMPARE_SWAP = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
BOOLEAN_SWAP = {ast.And: ast.Or, ast.Or: ast.And}
COMMUTATIVE_CALLS = frozenset({"max", "min"})  # swapping their two arguments changes nothing
ARITHMETIC_SWAP = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.FloorDiv,
    ast.FloorDiv: ast.Mult,
    ast.Div: ast.Mult,
    ast.Mod: ast.FloorDiv,
}


def _inert(fn: ast.AST) -> set[int]:
    """Ids of nodes whose change is no change of behaviour: annotations, decorators, messages."""
    roots: list[ast.AST] = []
    for node in ast.walk(fn):
        if isinstance(node, ast.arg) and node.annotation is not None:
            roots.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            roots.extend(node.decorator_list)
            if node.returns is not None:
                roots.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            roots.append(node.annotation)
        elif isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            roots.extend(node.exc.args + [k.value for k in node.exc.keywords])
        elif isinstance(node, ast.Assert) and node.msg is not None:
            roots.append(node.msg)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if name in rewrites.MESSAGE_CALLS:
                roots.extend(node.args)
    return {id(n) for root in roots for n in ast.walk(root)}


Site = Callable[[], None]


def _sites(fn: ast.AST) -> dict[str, list[Site]]:
    """Every place each operator could change, as a closure that makes the change."""
    inert = _inert(fn)
    sites: dict[str, list[Site]] = {k: [] for k in OPERATORS}

    def swap_op(node: ast.AST, attr: str, table: dict) -> Site:
        return lambda: setattr(node, attr, table[type(getattr(node, attr))]())

    for node in ast.walk(fn):
        if id(node) in inert:
            continue
        if isinstance(node, ast.Compare):
            for k, op in enumerate(node.ops):
                if type(op) in COMPARE_SWAP:
                    sites["compare"].append(
                        lambda node=node, k=k: node.ops.__setitem__(k, COMPARE_SWAP[type(node.ops[k])]())
                    )
        elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in ARITHMETIC_SWAP:
            sites["arithmetic"].append(swap_op(node, "op", ARITHMETIC_SWAP))
        elif isinstance(node, ast.BoolOp):
            sites["boolean"].append(swap_op(node, "op", BOOLEAN_SWAP))
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            sites["constant"].append(lambda node=node: setattr(node, "value", not node.value))
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            sites["constant"].append(lambda node=node: setattr(node, "value", node.value + 1))
        elif isinstance(node, (ast.If, ast.While, ast.IfExp)):
            sites["negate"].append(lambda node=node: setattr(node, "test", ast.UnaryOp(ast.Not(), node.test)))
        elif isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in COMMUTATIVE_CALLS):
            positional = [k for k, a in enumerate(node.args) if not isinstance(a, ast.Starred)]
            pairs = [
                (i, j) for i, j in zip(positional, positional[1:]) if ast.dump(node.args[i]) != ast.dump(node.args[j])
            ]
            for i, j in pairs:
                sites["swap_args"].append(lambda node=node, i=i, j=j: _swap(node.args, i, j))
    for _, _, block in rewrites._blocks(fn):
        for k, stmt in enumerate(block):
            if isinstance(stmt, (ast.Break, ast.Continue)):
                jump = ast.Continue() if isinstance(stmt, ast.Break) else ast.Break()
                sites["jump"].append(lambda block=block, k=k, jump=jump: block.__setitem__(k, jump))
        if len(block) >= 2:
            for stmt in block:
                if (
                    isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.Return))
                    and id(stmt) not in inert
                ):
                    sites["remove"].append(lambda block=block, stmt=stmt: block.remove(stmt))
    return sites


def _swap(args: list, i: int, j: int) -> None:
    args[i], args[j] = args[j], args[i]


def mutate(code: str, rng: random.Random) -> tuple[str, str] | None:
    """A first-order mutant of ``code`` (normalised, no docstring) and its operator; None if none applies.

    The operator is drawn first (each equally likely among those with a site), then its
    site, so that frequent constructs (constants) do not crowd out the others.
    """
    tree = ast.parse(code)
    rewrites.strip_docstrings(tree)
    reference = ast.dump(tree)
    functions = rewrites._outer_functions(tree)
    sites: dict[str, list[Site]] = {}
    for fn in functions:
        for name, found in _sites(fn).items():
            sites.setdefault(name, []).extend(found)
    operators = sorted(name for name, found in sites.items() if found)
    if not operators:
        return None
    operator = rng.choice(operators)
    rng.choice(sites[operator])()
    ast.fix_missing_locations(tree)
    if ast.dump(tree) == reference:
        return None
    try:
        compile(tree, "<mutant>", "exec")
    except SyntaxError:  # e.g. ``continue`` where only ``break`` was legal
        return None
    return ast.unparse(tree) + "\n", operator
