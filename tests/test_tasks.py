"""The tasks stage on a small corpus of standard-library functions (module = project)."""

import json

import pytest

from python_functions import corpus_rows
from telly.config import ConfigError, parse_params
from telly.data import analysis, baselines, clones
from telly.data import datasets as tasks
from telly.errors import TellyError
from telly.jsonl import read_jsonl, write_jsonl

SPLIT_MODULES = {
    "train": ["difflib", "calendar", "tarfile", "textwrap"],
    "valid": ["ftplib", "fractions", "heapq"],
    "test": ["statistics", "zipfile", "pprint"],
}
CODEBASE_SIZE = 45  # the 20 test queries' codes + 25 distractors
MUTATION_OPERATORS = {"compare", "arithmetic", "boolean", "constant", "negate", "remove", "swap_args", "jump"}
FIELDS = {
    "lexical": ("id", "code", "tokens"),
    "syntactic": ("id", "code", "ast_only", "label"),
    "structural": ("id", "code", "complexity", "label"),
    "semantic": ("id", "code", "label"),
    "code_search": ("id", "query", "code"),
    "clone_detection": ("id", "code1", "code2", "label"),
    "code_summarization": ("id", "source", "target"),
    "code_generation": ("id", "source", "target"),
    "line_completion": ("id", "source", "target"),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    for split, modules in SPLIT_MODULES.items():
        write_jsonl(folder / "python" / f"{split}.jsonl", corpus_rows(modules))
    return folder


def _params(raw, corpus, out, sizes=(40, 16, 20)):
    raw["data"]["corpus_dir"] = str(corpus)
    t = raw["tasks"]
    t["out_dir"], t["probing_dir"] = str(out / "tasks"), str(out / "probing")
    for name in FIELDS:
        t[name] = {"sizes": dict(zip(("train", "valid", "test"), sizes)), "source": "corpus"}
    t["clones"]["semantic_variants"] = 2
    t["code_search"]["codebase_size"] = CODEBASE_SIZE
    return raw


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    import yaml

    from conftest import REPO

    out = tmp_path_factory.mktemp("out")
    raw = _params(yaml.safe_load((REPO / "params.yaml").read_text()), corpus, out)
    metrics = tasks.build(parse_params(raw))
    return out, metrics, raw


def _rows(out, name, split):
    group = "probing" if name in tasks.PROBING else "tasks"
    return read_jsonl(out / group / name / f"{split}.jsonl", required=FIELDS[name])


def test_every_set_and_split_is_written_in_the_contract_format(built):
    out, metrics, _ = built
    for name in FIELDS:
        for split, size in zip(tasks.SPLITS, (40, 16, 20)):
            rows = _rows(out, name, split)
            assert 0 < len(rows) <= size, (name, split, len(rows))
            group = "probing" if name in tasks.PROBING else "tasks"
            assert metrics[group][name][split]["rows"] == len(rows)
            if name not in tasks.PROBING:  # per-example results are joined by id
                assert len({r["id"] for r in rows}) == len(rows), (name, split)


def test_repeated_ids_get_a_suffix_and_unique_rows_are_kept():
    rows = [{"id": "a", "x": 1}, {"id": "a", "x": 2}, {"id": "b"}, {"id": "a#2"}, {"id": "a"}]
    ids = [r["id"] for r in tasks.unique_ids(rows)]
    assert len(set(ids)) == len(ids) and ids[0] == "a" and ids[2] == "b"
    assert [r.get("x") for r in tasks.unique_ids(rows)][:2] == [1, 2]
    assert tasks.unique_ids(rows[2:3]) == rows[2:3]


def test_lexical_spans_cover_tokens_of_the_code(built):
    for row in _rows(built[0], "lexical", "test"):
        assert '"""' not in row["code"]  # docstrings are removed
        assert row["tokens"] == [list(t) for t in analysis.lexical_tokens(row["code"])]
        assert all(row["code"][s:e].strip() and kind in analysis.TOKEN_TYPES for s, e, kind in row["tokens"])


def test_syntactic_pairs_are_balanced_and_true_pairs_are_true(built):
    for split in tasks.SPLITS:
        rows = _rows(built[0], "syntactic", split)
        labels = [r["label"] for r in rows]
        assert abs(labels.count(1) - labels.count(0)) <= 1
        assert labels[:4] == [1, 0, 1, 0]  # alternating: every prefix is balanced
        for r in rows:
            own = " ".join(analysis.ast_only(r["code"]))
            assert (r["ast_only"] == own) == (r["label"] == 1)


def test_structural_labels_and_stratification(built):
    rows = _rows(built[0], "structural", "train")
    for r in rows:
        assert r["complexity"] == analysis.cyclomatic_complexity(r["code"])
        assert r["label"] == analysis.complexity_class(r["complexity"])
    counts = [sum(r["label"] == c for r in rows) for c in range(6)]
    assert max(counts) <= -(-40 // 6)  # no class above its quota
    assert sum(built[1]["probing"]["structural"]["train"]["balance"].values()) == pytest.approx(1, abs=1e-3)


def test_semantic_classes_are_disjoint_across_splits_and_behave_alike(built):
    labels = {s: {r["label"] for r in _rows(built[0], "semantic", s)} for s in tasks.SPLITS}
    assert not (labels["train"] & labels["valid"]) and not (labels["train"] & labels["test"])
    rows = _rows(built[0], "semantic", "train")
    by_label: dict = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r["code"])
    assert all(len(set(members)) >= 2 for members in by_label.values())
    # mined classes are filled up with variants of their copies: every class is as big as a rewritten one
    assert sum(
        len(set(m)) == 1 + built[2]["tasks"]["clones"]["semantic_variants"] for m in by_label.values()
    ) >= 0.9 * len(by_label)


def test_clone_detection_is_balanced_and_negatives_come_from_the_kind_they_say(built):
    out, metrics, _ = built
    rows = _rows(out, "clone_detection", "train")
    labels = [r["label"] for r in rows]
    assert labels.count(1) == labels.count(0) and labels[:2] == [1, 0]
    kinds = set()
    for r in rows:
        if r["label"] == 0:
            a, b = r["id"].split("-", 1)
            kinds.add(r["kind"])
            if r["kind"] == "mutant":  # a near miss of the member's own function: <id>~<operator>
                assert b.split("~")[0] == a and b.split("~")[1] in MUTATION_OPERATORS, r["id"]
                continue
            assert a != b
            same = a.split("/")[0] == b.split("/")[0]
            assert same == (r["kind"] == "neighbour_same_project"), r["id"]
    assert kinds & {"neighbour_same_project", "neighbour_other_project"}  # hard negatives are there
    assert "mutant" in kinds
    balance = metrics["tasks"]["clone_detection"]["train"]["balance"]
    assert balance["0"] == balance["1"] == 0.5 and balance["hard_negatives"] > 0


def test_token_overlap_baseline_is_in_the_metrics(built):
    out, metrics, _ = built
    for split in tasks.SPLITS:
        auc = metrics["tasks"]["clone_detection"][split]["token_overlap"]["jaccard_roc_auc"]
        assert auc == pytest.approx(baselines.clone_detection_auc(_rows(out, "clone_detection", split)), abs=1e-4)
        map_r = metrics["probing"]["semantic"][split]["token_overlap"]["jaccard_map_at_r"]
        assert 0 < map_r <= 100


def test_token_overlap_measures_on_hand_computed_cases():
    a, b, c = "x = f(y)", "x = g(y)", "while True: break"
    assert baselines.pair_jaccard([a], [b])[0] == pytest.approx(5 / 7)  # {x = ( y )} of {x = f g ( y )}
    matrix, _ = baselines.token_sets([a, b, c])
    assert baselines.jaccard_matrix(matrix, matrix)[0, 1] == pytest.approx(5 / 7)
    assert baselines.jaccard_matrix(matrix, matrix)[0, 2] == 0
    pairs = [
        {"code1": a, "code2": b, "label": 1},
        {"code1": a, "code2": c, "label": 0},
        {"code1": b, "code2": c, "label": 1},
    ]
    assert baselines.clone_detection_auc(pairs) == pytest.approx(
        0.75
    )  # positives 5/7 and 0 vs negative 0: (1 + 0.5) / 2
    # MAP@R by Jaccard: a and b retrieve each other, c and d (label 1) share nothing with anything but each other
    rows = [
        {"code": a, "label": 0},
        {"code": b, "label": 0},
        {"code": "k + 1", "label": 1},
        {"code": "k - 1", "label": 1},
    ]
    assert baselines.semantic_map_at_r(rows) == pytest.approx(100.0)
    rows[3] = {"code": "x = h(y)", "label": 1}  # now d is nearer to a and b than to c
    assert baselines.semantic_map_at_r(rows) == pytest.approx(50.0)


def test_hard_negative_picker_finds_functions_sharing_more_tokens_than_random_ones():
    query = "def area(shape):\n    width = shape.width\n    height = shape.height\n    return width * height\n"
    near = (
        "def perimeter(shape):\n    width = shape.width\n    height = shape.height\n    return 2 * (width + height)\n"
    )
    far = [
        "def greet(name):\n    print('hello', name)\n",
        "def total(xs):\n    s = 0\n    for x in xs:\n        s += x\n    return s\n",
    ]
    candidates = [
        {"id": "geo/b", "repo": "geo", "code": near},
        {"id": "geo/a", "repo": "geo", "code": query},  # the query's own function: never its negative
        {"id": "util/c", "repo": "util", "code": far[0]},
        {"id": "util/d", "repo": "util", "code": far[1]},
        {"id": "shapes/e", "repo": "shapes", "code": near.replace("perimeter", "outline")},
    ]
    own = clones.CloneClass(["geo/a"], ["geo"], "area", [query], "rewritten")
    (same,) = clones.token_neighbours([(query, own)], candidates, same_project=True, k=1)
    assert same == [0]
    (other,) = clones.token_neighbours([(query, own)], candidates, k=3)
    assert [candidates[n]["repo"] for n in other] == ["shapes", "util", "util"]
    picked = baselines.pair_jaccard([query], [candidates[other[0]]["code"]])[0]
    assert picked > max(baselines.pair_jaccard([query] * 2, far))


def test_downstream_rows(built):
    out = built[0]
    for r in _rows(out, "code_summarization", "test"):
        assert r["target"] and '"""' not in r["source"]
    for r in _rows(out, "code_generation", "test"):
        assert " concode_field_sep def " in r["source"] and not r["target"].startswith("def ")
        assert r["target"].count("\n") < 12
    for r in _rows(out, "line_completion", "test"):
        assert r["target"] and r["target"] == r["target"].strip()
        assert r["source"].endswith("\n")


def test_code_search_codebase_holds_the_test_codes_and_distractors_from_the_test_split(built, corpus):
    out = built[0]
    queries = _rows(out, "code_search", "test")
    codebase = read_jsonl(out / "tasks" / "code_search" / "codebase.jsonl", required=("id", "code"))
    assert len(codebase) == CODEBASE_SIZE and len({r["id"] for r in codebase}) == CODEBASE_SIZE
    assert codebase[: len(queries)] == [{"id": q["id"], "code": q["code"]} for q in queries]
    test_ids = {r["id"] for r in read_jsonl(corpus / "python" / "test.jsonl")}
    assert {r["id"] for r in codebase} <= test_ids  # distractors from the test projects only: nothing seen in training
    assert all('"""' not in r["code"] for r in codebase)  # cleaned like the queries' codes


def test_codebase_size_is_for_corpus_code_search_only(raw_params, corpus, tmp_path):
    raw = _params(raw_params, corpus, tmp_path)
    raw["tasks"]["clone_detection"]["codebase_size"] = 10
    with pytest.raises(ConfigError, match=r"tasks\.clone_detection\.codebase_size"):
        parse_params(raw)


def test_deterministic(built, corpus, tmp_path):
    out, _, raw = built
    again = _params(json.loads(json.dumps(raw)), corpus, tmp_path)
    tasks.build(parse_params(again))
    for name in FIELDS:
        group = "probing" if name in tasks.PROBING else "tasks"
        for split in tasks.SPLITS:
            first = (out / group / name / f"{split}.jsonl").read_text()
            assert first == (tmp_path / group / name / f"{split}.jsonl").read_text(), (name, split)
    codebase = "tasks/code_search/codebase.jsonl"
    assert (out / codebase).read_text() == (tmp_path / codebase).read_text()


def test_stage_writes_metrics_logs_and_prints_the_table(corpus, raw_params, tmp_path, tracking_env, capsys):
    raw = _params(raw_params, corpus, tmp_path, sizes=(6, 4, 4))
    concode = tmp_path / "concode.json"
    concode.write_text('{"nl": "return one . concode_field_sep int x", "code": "int f ( ) { return 1 ; }"}\n')
    raw["tasks"]["code_generation"]["source"] = {
        "format": "concode",
        "train": str(concode),
        "valid": str(concode),
        "test": str(concode),
    }
    metrics = tasks.run(parse_params(raw))
    written = json.loads((tmp_path / "tasks" / "metrics.json").read_text())
    assert written == metrics and written["tasks"]["code_generation"]["test"]["rows"] == 1
    table = capsys.readouterr().out
    assert "code_generation" in table and "balance" in table and "lexical" in table

    import mlflow

    mlflow.set_tracking_uri(tracking_env)
    (run,) = mlflow.search_runs(experiment_names=["telly-tasks"], output_format="list")
    assert run.data.metrics["tasks.code_generation.test.rows"] == 1


def test_real_data_format_must_fit_the_set(raw_params, corpus, tmp_path):
    raw = _params(raw_params, corpus, tmp_path)
    raw["tasks"]["code_search"]["source"] = {"format": "poj104", "train": "a", "valid": "b", "test": "c"}
    del raw["tasks"]["code_search"]["codebase_size"]  # real data brings its own codebase
    with pytest.raises(ConfigError, match=r"tasks\.code_search.*'poj104' cannot feed this set"):
        parse_params(raw)


@pytest.mark.parametrize("kept", [0, 3])
def test_an_empty_or_tiny_split_stops_tasks_naming_the_split(raw_params, tmp_path, kept):
    folder = tmp_path / "corpus"
    for split, modules in SPLIT_MODULES.items():
        rows = corpus_rows(modules)
        write_jsonl(folder / "python" / f"{split}.jsonl", rows[:kept] if split == "train" else rows)
    raw = _params(raw_params, folder, tmp_path)
    with pytest.raises(TellyError, match=rf"train\.jsonl: the train split has {kept} function\(s\)"):
        tasks.build(parse_params(raw))
    assert not (tmp_path / "tasks").exists() and not (tmp_path / "probing").exists(), "no set is written"


def test_every_registry_entry_names_functions_its_owning_modules_have():
    """A task or property is one registry entry plus the functions it names: each name resolves."""
    from telly.data import loaders
    from telly.finetuning import baselines as B
    from telly.finetuning import examples as E
    from telly.finetuning import metrics as M
    from telly.probing import controls, objectives
    from telly.probing import stage as probe_stage
    from telly.probing.properties import PROPERTIES
    from telly.registry import named
    from telly.tasks import TASKS

    for name, task in TASKS.items():
        for field in ("builder", "balance", "length", *(["overlap"] if task.overlap else [])):
            assert callable(named(tasks, getattr(task, field), f"{name}.{field}")), (name, field)
        assert callable(loaders.FORMATS[task.source_format]), name
        assert E.statistic(name).metric == task.main_metric, name
        assert isinstance(named(B, task.baseline, f"{name}.baseline").method, str), name
        assert bool(task.example_row) == task.generates, name  # generation tasks save scored hypotheses
        if task.generates:
            row = E.generation_rows(name, ["a b"], ["a c"])[0]
            assert row["hyp"] == "a c" and E.statistic(name).row_statistics(row), name
        for function in task.text_metrics.values():
            assert callable(getattr(M, function)), (name, function)
    for name, prop in PROPERTIES.items():
        for field in ("builder", "balance", *(["overlap"] if prop.overlap else [])):
            assert callable(named(tasks, getattr(prop, field), f"{name}.{field}")), (name, field)
        assert callable(loaders.FORMATS[prop.source_format]), name
        assert callable(named(probe_stage, prop.features, f"{name}.features")), name
        assert callable(named(controls, prop.control, f"{name}.control")), name
        assert issubclass(named(objectives, prop.objective, f"{name}.objective"), objectives.ProbingTask), name
    assert list(tasks.SETS) == [*PROPERTIES, *TASKS]  # the tasks stage builds every set of both registries
    with pytest.raises(TellyError, match=r"code_search\.builder = 'nope': telly\.data\.datasets has no such"):
        named(tasks, "nope", "code_search.builder")


def test_max_code_tokens_draws_only_functions_whose_code_or_body_fits():
    """A downstream set with max_code_tokens draws only functions within it: code tasks bound the code without
    docstring, code generation its body (the target); the share of functions kept is reported."""

    def function(name: str, statements: int) -> str:
        body = "".join(f"    x{i} = {i} + {i}\n" for i in range(statements))
        return f'def {name}(a):\n    """Doc string."""\n{body}    return a\n'

    rows = [
        {"id": f"p/f{i}", "repo": "p", "code": function(f"f{i}", i), "docstring_tokens": ["doc"]} for i in range(1, 9)
    ]
    fns = tasks.Functions(rows, "python")
    lengths = {r["id"]: tasks.code_length(fns, r) for r in rows}
    bodies = {r["id"]: tasks.body_length(fns, r) for r in rows}
    assert all(bodies[k] < lengths[k] for k in lengths)  # the body leaves out the signature
    assert lengths["p/f1"] == len(analysis.lexical_tokens(analysis.clean_code(rows[0]["code"])))
    limit = sorted(lengths.values())[3]
    kept = fns.within(limit, tasks.code_length)
    assert {r["id"] for r in kept.rows} == {k for k, n in lengths.items() if n <= limit}
    assert 0 < len(kept.rows) < len(rows)
    by_body = fns.within(limit, tasks.body_length)
    assert len(by_body.rows) > len(kept.rows)  # bodies are shorter: more functions fit
