"""Code properties of one function, read off its tree-sitter tree.

These are the labels of the four probing tasks (paper section 1) and the pieces
the downstream tasks cut functions into:

- lexical: the type of every source token (KEYWORD, NAME, NUMBER, STRING,
  OPERATOR), with character spans so labels can be put on the subwords of any
  fast tokenizer (:func:`align_labels`);
- syntactic: SBT-AO, the structure-based traversal of the AST with terminal
  values removed (Hu et al. 2018; LeClair et al. 2019);
- structural: McCabe's cyclomatic complexity, counted like ``radon``, and its
  six classes 1, 2, 3, 4, 5, more than 5;
- helpers: code without docstring and comments, signature, body.

Everything language-specific comes from :mod:`telly.data.languages`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from telly.data.languages import LanguageSpec, language, parser
from telly.errors import TellyError

TOKEN_TYPES = ("KEYWORD", "NAME", "NUMBER", "STRING", "OPERATOR")
COMPLEXITY_CLASSES = ("1", "2", "3", "4", "5", ">5")
_SKIPPED_LEAVES = frozenset({"line_continuation"})


class UnparsableCode(TellyError):
    """Code that tree-sitter cannot parse without errors (the stages skip and count it)."""


@dataclass
class Snippet:
    """A function's code and its tree; the tree may hold a wrapper around the code (Java)."""

    code: str
    spec: LanguageSpec
    tree: object
    prefix_bytes: int
    code_bytes: int

    @cached_property
    def _char_of_byte(self) -> list[int] | None:
        if len(self.code) == self.code_bytes:
            return None  # ASCII: byte offsets are character offsets
        table: list[int] = []
        for i, ch in enumerate(self.code):
            table.extend([i] * len(ch.encode("utf-8")))
        table.append(len(self.code))
        return table

    def char(self, byte: int) -> int:
        """Character offset in ``code`` of a byte offset in the parsed text."""
        b = min(max(byte - self.prefix_bytes, 0), self.code_bytes)
        return b if self._char_of_byte is None else self._char_of_byte[b]

    def inside(self, node) -> bool:
        return node.start_byte >= self.prefix_bytes and node.end_byte <= self.prefix_bytes + self.code_bytes

    def span(self, node) -> tuple[int, int]:
        return self.char(node.start_byte), self.char(node.end_byte)

    @cached_property
    def function(self):
        """The first function (or method) node of the snippet."""
        stack = [self.tree.root_node]
        while stack:
            node = stack.pop()
            if node.type in self.spec.function_types and self.inside(node):
                return node
            stack.extend(reversed(node.children))
        raise UnparsableCode("no function definition in the code")


def parse(code: str, lang: str = "python") -> Snippet:
    """Parse one function's code; raise :class:`UnparsableCode` if the tree has errors."""
    spec = language(lang)
    head, tail = spec.wrap
    data = (head + code + tail).encode("utf-8")
    tree = parser(lang).parse(data)
    if tree.root_node.has_error:
        raise UnparsableCode("tree-sitter reports a syntax error")
    return Snippet(code, spec, tree, len(head.encode("utf-8")), len(code.encode("utf-8")))


def _leaves(snippet: Snippet, node):
    """Source tokens in order: leaves, with literals of ``string_types`` taken whole."""
    spec = snippet.spec
    stack = [node]
    while stack:
        n = stack.pop()
        if n.type in spec.comment_types:
            continue
        if n.child_count == 0 or n.type in spec.string_types:
            if snippet.inside(n) and n.end_byte > n.start_byte and n.type not in _SKIPPED_LEAVES:
                yield n
            continue
        stack.extend(reversed(n.children))


def token_type(node, spec: LanguageSpec) -> str:
    if node.type in spec.string_types:
        return "STRING"
    if node.type in spec.number_types:
        return "NUMBER"
    text = node.text.decode("utf-8", "replace")
    if text in spec.keywords:
        return "KEYWORD"
    if text.isidentifier():
        return "NAME"
    return "OPERATOR"


def lexical_tokens(code: str, lang: str = "python") -> list[tuple[int, int, str]]:
    """``[(start_char, end_char, TYPE), ...]`` for every token of the code except comments."""
    snippet = parse(code, lang)
    return [(*snippet.span(n), token_type(n, snippet.spec)) for n in _leaves(snippet, snippet.tree.root_node)]


def align_labels(offsets: Sequence[Sequence[int]], spans: Sequence[Sequence]) -> list[str | None]:
    """Label per subword: the last subword that overlaps a token gets the token's label.

    ``offsets`` are a fast tokenizer's ``offset_mapping`` (special tokens are ``(0, 0)``);
    ``spans`` are ``(start, end, label)`` sorted by start, as :func:`lexical_tokens` returns.
    Other subwords get ``None``; tokens cut off by truncation get no label. If one subword
    ends two tokens (BPE merges ``()``), the later token's label wins.
    """
    last = [-1] * len(spans)  # index of the last subword overlapping each token
    j = 0
    for i, (a, b) in enumerate(offsets):
        if b <= a:
            continue
        while j < len(spans) and spans[j][1] <= a:
            j += 1
        k = j
        while k < len(spans) and spans[k][0] < b:
            last[k] = i
            k += 1
    labels: list[str | None] = [None] * len(offsets)
    for k, i in enumerate(last):
        if i >= 0:
            labels[i] = spans[k][2]
    return labels


def ast_only(code: str, lang: str = "python") -> list[str]:
    """SBT-AO: ``( type children ) type`` over named nodes, terminal values dropped, no comments."""
    snippet = parse(code, lang)
    spec = snippet.spec
    out: list[str] = []

    def visit(node) -> None:
        out.extend(("(", node.type))
        if node.type not in spec.string_types:
            for child in node.named_children:
                if child.type not in spec.comment_types:
                    visit(child)
        out.extend((")", node.type))

    visit(_function_root(snippet))
    return out


def _function_root(snippet: Snippet):
    """The function node, with its decorators when it has any."""
    root = snippet.function
    if root.parent is not None and root.parent.type == "decorated_definition":
        root = root.parent
    return root


def ast_node_types(lang: str = "python") -> list[str]:
    """Every named node type of the language's grammar, sorted: the vocabulary of flattened ASTs."""
    grammar = parser(lang).language
    return sorted(
        {
            grammar.node_kind_for_id(i)
            for i in range(grammar.node_kind_count)
            if grammar.node_kind_is_named(i) and grammar.node_kind_is_visible(i)
        }
    )


def ast_boundaries(node_type: str) -> tuple[str, str]:
    """UniXcoder's pair of tokens that open and close a non-terminal of this type."""
    return f"<{node_type}::left>", f"<{node_type}::right>"


def is_ast_boundary(token: str) -> bool:
    return token.startswith("<") and (token.endswith("::left>") or token.endswith("::right>"))


def flattened_ast(code: str, lang: str = "python") -> list[str]:
    """UniXcoder's one-to-one flattened AST of the function (Guo et al. 2022, Algorithm 1).

    A named non-terminal becomes its boundary pair around its children's sequence
    (:func:`ast_boundaries`); a leaf is its code token, strings whole (as :func:`lexical_tokens`),
    comments dropped. The leaves, read in order, are the function's code tokens, so the mapping
    from code to sequence is one-to-one. Same traversal as :func:`ast_only`, terminal values kept.
    """
    snippet = parse(code, lang)
    spec = snippet.spec
    out: list[str] = []

    def visit(node) -> None:
        if node.type in spec.comment_types or node.type in _SKIPPED_LEAVES:
            return
        if node.child_count == 0 or node.type in spec.string_types:
            if node.end_byte > node.start_byte:
                start, end = snippet.span(node)
                out.append(code[start:end])
            return
        left, right = ast_boundaries(node.type) if node.is_named else ("", "")
        if left:
            out.append(left)
        for child in node.children:
            visit(child)
        if right:
            out.append(right)

    visit(_function_root(snippet))
    return out


def cyclomatic_complexity(code: str, lang: str = "python") -> int:
    """McCabe complexity of the code's first function: 1 + its decision points.

    Counted as ``radon`` counts Python: nested functions and classes are not part of the
    function (lambdas are); loop and ``try`` ``else`` blocks, each ``except``, each extra
    operand of ``and``/``or``, comprehension ``for``/``if`` and ``assert`` add one.
    """
    snippet = parse(code, lang)
    spec = snippet.spec
    fn = snippet.function
    body = fn.child_by_field_name("body")
    nested = spec.function_types | spec.class_types | {"decorated_definition"}
    complexity = 1
    stack = list(body.children) if body is not None else []
    while stack:
        node = stack.pop()
        if node.type in nested:
            continue
        if node.type in spec.decisions:
            complexity += 1
            if node.type in spec.opaque:
                continue
        elif node.type in spec.decision_rules:
            complexity += spec.decision_rules[node.type](node)
        elif node.type in spec.decisions_under and node.parent is not None:
            complexity += node.parent.type in spec.decisions_under[node.type]
        elif spec.boolean_binary and node.type == spec.boolean_binary[0]:
            op = node.child_by_field_name("operator")
            complexity += op is not None and op.type in spec.boolean_binary[1]
        stack.extend(node.children)
    return complexity


def complexity_class(complexity: int) -> int:
    """Label 0..5 for classes 1, 2, 3, 4, 5 and more than 5 (the paper's ``5 if cc > 5 else cc - 1``)."""
    if complexity < 1:
        raise ValueError(f"cyclomatic complexity is at least 1, got {complexity}")
    return min(complexity, 6) - 1


def _docstring(snippet: Snippet):
    """The docstring node (Python: a string alone as the body's first statement), or None."""
    if not snippet.spec.docstring_in_body:
        return None
    body = snippet.function.child_by_field_name("body")
    statements = [c for c in (body.named_children if body else []) if c.type not in snippet.spec.comment_types]
    if statements and statements[0].type == "expression_statement":
        inner = statements[0].named_children
        if len(inner) == 1 and inner[0].type in snippet.spec.string_types:
            return statements[0], len(statements) == 1
    return None


def _comments(snippet: Snippet):
    stack = [snippet.tree.root_node]
    while stack:
        node = stack.pop()
        if node.type in snippet.spec.comment_types:
            if snippet.inside(node):
                yield node
            continue
        stack.extend(node.children)


def clean_code(code: str, lang: str = "python", *, docstring: bool = True, comments: bool = True) -> str:
    """The code with its docstring and/or comments removed, and the lines they leave empty.

    A body that held only a docstring gets ``pass`` so the result still parses.
    """
    snippet = parse(code, lang)
    cuts: list[tuple[int, int, str]] = []
    found = _docstring(snippet) if docstring else None
    if found:
        node, alone = found
        cuts.append((*snippet.span(node), "pass" if alone else ""))
    if comments:
        cuts.extend((*snippet.span(n), "") for n in _comments(snippet))
    if not cuts:
        return code
    chars = list(code)
    touched: set[int] = set()
    line_of = _line_index(code)
    for start, end, replacement in sorted(cuts):
        for i in range(start, end):
            if chars[i] != "\n":
                chars[i] = " "
        chars[start : start + len(replacement)] = list(replacement)
        touched.update(range(line_of(start), line_of(max(end - 1, start)) + 1))
    lines = "".join(chars).split("\n")
    kept = [line.rstrip() if i in touched else line for i, line in enumerate(lines) if i not in touched or line.strip()]
    cleaned = "\n".join(kept)
    parse(cleaned, lang)  # the cut must leave valid code
    return cleaned


def _line_index(code: str):
    starts = [0] + [i + 1 for i, ch in enumerate(code) if ch == "\n"]

    def line_of(char: int) -> int:
        import bisect

        return bisect.bisect_right(starts, char) - 1

    return line_of


def signature(code: str, lang: str = "python") -> str:
    """The declaration up to the body: ``def name(args) -> T:`` / ``public int f(int a)``."""
    snippet = parse(code, lang)
    fn = snippet.function
    body = fn.child_by_field_name("body")
    start, end = snippet.span(fn)
    if body is not None:  # the last piece before the body that is not a comment (``:`` in Python)
        head = [c for c in fn.children if c.end_byte <= body.start_byte and c.type not in snippet.spec.comment_types]
        end = snippet.char(head[-1].end_byte)
    return " ".join(code[start:end].split())


def body(code: str, lang: str = "python") -> str:
    """The function's body without docstring and comments, dedented (the code generation target)."""
    cleaned = clean_code(code, lang)
    snippet = parse(cleaned, lang)
    block = snippet.function.child_by_field_name("body")
    start, end = snippet.span(block)
    line_start = cleaned.rfind("\n", 0, start) + 1
    if cleaned[line_start:start].strip():  # body on the ``def`` line
        return cleaned[start:end].strip()
    return textwrap.dedent(cleaned[line_start:end]).strip("\n")


def body_start_line(code: str, lang: str = "python") -> int:
    """0-based line of the first body statement after the docstring (line completion targets start here)."""
    snippet = parse(code, lang)
    block = snippet.function.child_by_field_name("body")
    statements = [c for c in block.named_children if c.type not in snippet.spec.comment_types]
    found = _docstring(snippet)
    if found and not found[1]:
        statements = statements[1:]
    first = statements[0] if statements else block
    return code.count("\n", 0, snippet.char(first.start_byte))
