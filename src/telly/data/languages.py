"""What the code analysis needs to know about a programming language: one small table each.

`analysis.py` walks tree-sitter trees generically; everything language-specific
(keywords, which nodes are literals, which nodes are decision points for McCabe)
lives here, so adding Ruby or C is one more entry in ``LANGUAGES``.
"""

from __future__ import annotations

import keyword
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache

from telly.errors import TellyError


@dataclass(frozen=True)
class LanguageSpec:
    name: str
    grammar: Callable[[], object]  # returns the tree-sitter language capsule
    keywords: frozenset[str]
    number_types: frozenset[str]  # literal nodes labelled NUMBER
    string_types: frozenset[str]  # literal nodes labelled STRING, taken whole (prefix and quotes too)
    comment_types: frozenset[str]
    function_types: frozenset[str]
    class_types: frozenset[str]
    # McCabe: nodes that each add one decision point to a function's complexity
    decisions: frozenset[str]
    # child types that count only under these parents (Python's loop/try ``else``)
    decisions_under: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # binary-operator node type and the operators in it that short-circuit (Java ``&&``, ``||``)
    boolean_binary: tuple[str, frozenset[str]] | None = None
    # nodes whose decision count needs a rule of its own (``match`` arms, ``switch`` labels)
    decision_rules: Mapping[str, Callable[[object], int]] = field(default_factory=dict)
    # decision nodes whose insides are not counted (radon does not look into ``assert``)
    opaque: frozenset[str] = frozenset()
    # a method alone is not a compilation unit in Java: wrap it to parse it
    wrap: tuple[str, str] = ("", "")
    docstring_in_body: bool = False  # Python docstrings are the first statement of the body


def _python_match_decisions(node) -> int:
    """One per ``case``, less one if some arm always matches (``case _:``, ``case x:``), as radon."""
    block = node.child_by_field_name("body")
    arms = [c for c in (block.named_children if block else []) if c.type == "case_clause"]

    def always_matches(arm) -> bool:
        patterns = [c for c in arm.named_children if c.type == "case_pattern"]
        inner = patterns[0].children if len(patterns) == 1 else []
        return len(inner) == 1 and inner[0].type in ("_", "identifier")

    return max(0, len(arms) - any(always_matches(a) for a in arms))


def _java_switch_label(node) -> int:
    return 0 if node.text.strip().startswith(b"default") else 1


def _python_grammar():
    import tree_sitter_python

    return tree_sitter_python.language()


def _java_grammar():
    import tree_sitter_java

    return tree_sitter_java.language()


JAVA_KEYWORDS = frozenset(
    [
        "abstract",
        "assert",
        "boolean",
        "break",
        "byte",
        "case",
        "catch",
        "char",
        "class",
        "const",
        "continue",
        "default",
        "do",
        "double",
        "else",
        "enum",
        "extends",
        "final",
        "finally",
        "float",
        "for",
        "goto",
        "if",
        "implements",
        "import",
        "instanceof",
        "int",
        "interface",
        "long",
        "native",
        "new",
        "package",
        "private",
        "protected",
        "public",
        "return",
        "short",
        "static",
        "strictfp",
        "super",
        "switch",
        "synchronized",
        "this",
        "throw",
        "throws",
        "transient",
        "try",
        "void",
        "volatile",
        "while",
        "var",
        "record",
        "yield",
        "sealed",
        "permits",
        "non-sealed",
        "true",
        "false",
        "null",
    ]
)

LANGUAGES: dict[str, LanguageSpec] = {
    "python": LanguageSpec(
        name="python",
        grammar=_python_grammar,
        # Python's own list (the paper used ``tokenize`` + ``keyword.kwlist``); soft keywords are NAMEs
        keywords=frozenset(keyword.kwlist),
        number_types=frozenset({"integer", "float"}),
        string_types=frozenset({"string"}),
        comment_types=frozenset({"comment"}),
        function_types=frozenset({"function_definition"}),
        class_types=frozenset({"class_definition"}),
        # radon's ComplexityVisitor, node for node
        decisions=frozenset(
            {
                "if_statement",
                "elif_clause",
                "conditional_expression",
                "for_statement",
                "while_statement",
                "except_clause",
                "except_group_clause",
                "boolean_operator",
                "for_in_clause",
                "assert_statement",
            }
        ),
        decisions_under={
            "else_clause": frozenset({"for_statement", "while_statement", "try_statement"}),
            # a comprehension's ``if``; the same node is a ``case`` guard, which radon does not count
            "if_clause": frozenset(
                {"list_comprehension", "set_comprehension", "dictionary_comprehension", "generator_expression"}
            ),
        },
        decision_rules={"match_statement": _python_match_decisions},
        opaque=frozenset({"assert_statement"}),
        docstring_in_body=True,
    ),
    "java": LanguageSpec(
        name="java",
        grammar=_java_grammar,
        keywords=JAVA_KEYWORDS,
        number_types=frozenset(
            {
                "decimal_integer_literal",
                "hex_integer_literal",
                "octal_integer_literal",
                "binary_integer_literal",
                "decimal_floating_point_literal",
                "hex_floating_point_literal",
            }
        ),
        string_types=frozenset({"string_literal", "character_literal", "text_block"}),
        comment_types=frozenset({"line_comment", "block_comment"}),
        function_types=frozenset({"method_declaration", "constructor_declaration"}),
        class_types=frozenset({"class_declaration", "interface_declaration", "enum_declaration", "record_declaration"}),
        decisions=frozenset(
            {
                "if_statement",
                "for_statement",
                "enhanced_for_statement",
                "while_statement",
                "do_statement",
                "catch_clause",
                "ternary_expression",
            }
        ),
        boolean_binary=("binary_expression", frozenset({"&&", "||"})),
        decision_rules={"switch_label": _java_switch_label},
        wrap=("class __TellyWrapper__ {\n", "\n}\n"),
    ),
}


def language(name: str) -> LanguageSpec:
    try:
        return LANGUAGES[name]
    except KeyError:
        raise TellyError(f"language {name!r} is not supported; known: {', '.join(sorted(LANGUAGES))}") from None


@cache
def parser(name: str):
    """One tree-sitter parser per language (parsers are not thread-safe; the stage is single-threaded)."""
    from tree_sitter import Language, Parser

    return Parser(Language(language(name).grammar()))
