"""Functions out of Python source files, with tree-sitter.

One job: turn a source file into records of its functions and methods, with
the fields a CodeSearchNet row needs (code, code tokens, docstring, docstring
tokens) and the context later tasks need (signature, enclosing class and its
members). Functions nested inside other functions are skipped, as in
CodeSearchNet. Filtering and splitting happen in :mod:`telly.data.corpus`.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from dataclasses import dataclass, field
from functools import lru_cache

import tree_sitter_python
from tree_sitter import Language, Node, Parser

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)
# a sentence ends at . ! or ? followed by white space (CodeSearchNet keeps the first one)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


@lru_cache(maxsize=1)
def python_parser() -> Parser:
    return Parser(Language(tree_sitter_python.language()))


@dataclass
class Function:
    name: str
    qualified_name: str
    code: str
    code_tokens: list[str]
    docstring: str
    docstring_tokens: list[str]
    signature: str
    start_line: int
    end_line: int
    class_name: str | None
    class_members: list[str] = field(default_factory=list)
    has_body: bool = True
    has_error: bool = False


def first_sentence(docstring: str) -> str:
    """The docstring's first sentence: its first paragraph, up to the first sentence end."""
    paragraph = docstring.strip().split("\n\n", 1)[0]
    paragraph = " ".join(paragraph.split())
    return _SENTENCE_END.split(paragraph, maxsplit=1)[0] if paragraph else ""


def tokenize_text(text: str) -> list[str]:
    return _WORD.findall(text)


def _text(node: Node, src: bytes) -> str:
    return src[node.start_byte : node.end_byte].decode("utf-8")


def _docstring_node(body: Node) -> Node | None:
    """The first statement of a block, when it is a bare string literal."""
    for child in body.named_children:
        if child.type == "comment":
            continue
        if child.type == "expression_statement" and child.named_child_count == 1:
            expr = child.named_children[0]
            if expr.type in ("string", "concatenated_string"):
                return child
        return None
    return None


def _string_value(node: Node, src: bytes) -> str:
    literal = _text(node, src)
    try:
        value = ast.literal_eval(literal)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = literal.strip("\"'rRuUbBfF")
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return inspect.cleandoc(str(value))


def _code_tokens(node: Node, src: bytes, skip: Node | None) -> list[str]:
    """Leaves of the syntax tree, without comments and the docstring; a string stays one token."""
    tokens: list[str] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if n.type == "comment" or (skip is not None and n.id == skip.id):
            continue
        if n.type == "string" or n.child_count == 0:
            text = _text(n, src)
            if text.strip():
                tokens.append(text)
            continue
        stack.extend(reversed(n.children))
    return tokens


def _class_members(class_body: Node, src: bytes) -> list[str]:
    """Method names and class-level attribute names of a class body, in order."""
    members: list[str] = []
    for stmt in class_body.named_children:
        target = stmt
        if target.type == "decorated_definition":
            target = target.child_by_field_name("definition") or target
        if target.type in ("function_definition", "class_definition"):
            name = target.child_by_field_name("name")
            if name is not None:
                members.append(_text(name, src))
        elif target.type == "expression_statement" and target.named_child_count:
            assign = target.named_children[0]
            if assign.type == "assignment":
                left = assign.child_by_field_name("left")
                if left is not None and left.type == "identifier":
                    members.append(_text(left, src))
    return list(dict.fromkeys(members))


def _function(node: Node, src: bytes, class_name: str | None, members: list[str]) -> Function:
    name = _text(node.child_by_field_name("name"), src)
    body = node.child_by_field_name("body")
    doc_node = _docstring_node(body) if body is not None else None
    docstring = _string_value(doc_node.named_children[0], src) if doc_node is not None else ""
    colon = next((c for c in node.children if c.type == ":"), None)
    sig_end = colon.end_byte if colon is not None else (body.start_byte if body is not None else node.end_byte)
    signature = " ".join(src[node.start_byte : sig_end].decode("utf-8").split())
    # the node starts at `def`; indent the first line like the rest before dedenting
    code = textwrap.dedent(" " * node.start_point[1] + _text(node, src))
    statements = [c for c in (body.named_children if body is not None else []) if c.type != "comment"]
    if doc_node is not None:
        statements = [c for c in statements if c.id != doc_node.id]
    return Function(
        name=name,
        qualified_name=f"{class_name}.{name}" if class_name else name,
        code=code,
        code_tokens=_code_tokens(node, src, doc_node),
        docstring=docstring,
        docstring_tokens=tokenize_text(first_sentence(docstring)),
        signature=signature,
        start_line=node.start_point[0] + 1,
        end_line=node.end_point[0] + 1,
        class_name=class_name,
        class_members=members,
        has_body=bool(statements),
        has_error=node.has_error,
    )


def extract_functions(source: bytes) -> tuple[list[Function], bool]:
    """All top-level functions and methods (of classes at any depth outside functions).

    Returns the functions and whether the file had syntax errors anywhere.
    """
    tree = python_parser().parse(source)
    found: list[Function] = []

    def visit(block: Node, class_name: str | None, members: list[str]) -> None:
        for stmt in block.named_children:
            node = stmt
            if node.type == "decorated_definition":
                node = node.child_by_field_name("definition") or node
            if node.type == "function_definition":
                found.append(_function(node, source, class_name, members))
            elif node.type == "class_definition":
                body = node.child_by_field_name("body")
                if body is not None:
                    cname = _text(node.child_by_field_name("name"), source)
                    qualified = f"{class_name}.{cname}" if class_name else cname
                    visit(body, qualified, _class_members(body, source))
            elif node.type in ("if_statement", "try_statement", "with_statement"):
                # definitions guarded by `if TYPE_CHECKING:` / `try: import` blocks
                for child in node.named_children:
                    if child.type == "block":
                        visit(child, class_name, members)
                    elif child.type in ("else_clause", "elif_clause", "except_clause", "finally_clause"):
                        for sub in child.named_children:
                            if sub.type == "block":
                                visit(sub, class_name, members)

    visit(tree.root_node, None, [])
    return found, tree.root_node.has_error
