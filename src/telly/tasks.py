"""The five downstream tasks of RQ3: one entry per task, read by every stage.

Each :class:`DownstreamTask` holds what the stages need to know about a task: the fields of its
rows (``data/tasks/<task>/*.jsonl``), how a row becomes token sequences (``layout``), the head
and loss that train it, the metrics the paper reports (the first is the headline metric that
RQ3's claims compare), how a checkpoint is selected on valid, and the public dataset format of
its real data, and the functions that build, score and beat it. The tasks stage
(``telly.data.datasets``), fine-tuning (data, heads, evaluation, tables), tuning, the config and the
report all read this table; a sixth task is one more entry here plus the functions it names
(docs/architecture.md, "How to add a task").

Behaviour is *named*, not imported: each name is a function (or object) of the module that owns that
step, which looks it up on the task (``builder`` in ``telly.data.datasets``, ``statistic`` and
``example_row`` in ``telly.finetuning.examples``, ``baseline`` in ``telly.finetuning.baselines``, the
``text_metrics`` in ``telly.finetuning.metrics``; the real-data loader comes from ``source_format``
through ``telly.data.loaders.FORMATS``). So this module imports nothing, and a stage depends only on the
modules it runs.

The paper's settings per task (UniXcoder's downstream scripts):

- code search: CodeSearchNet-Python; bi-encoder, in-batch InfoNCE; MRR;
- clone detection: BigCloneBench; the same embedding, cosine against the 0/1 label; F1;
- code summarization: CodeSearchNet; encoder-decoder mode; smoothed sentence BLEU-4;
- code generation: CONCODE; encoder-decoder mode; corpus BLEU (on Python code tokens here) + exact match;
- line completion: CodeXGLUE line-level; decoder-only mode; exact match + edit similarity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Head = Literal["search", "clone", "lm"]
Layout = Literal["encoder-only", "encoder-decoder", "decoder-only"]


@dataclass(frozen=True)
class DownstreamTask:
    name: str
    head: Head  # search: InfoNCE over in-batch codes; clone: MSE of cosine vs label; lm: next-token CE
    layout: Layout  # UniXcoder's mode (docs/finetuning.md): how a row becomes token sequences
    fields: tuple[str, ...]  # required fields of a row of data/tasks/<task>/*.jsonl
    metrics: tuple[str, ...]  # reported on test; metrics[0] is the paper's headline metric (RQ3 claims)
    selection: tuple[str, ...]  # valid metrics summed into the checkpoint selection score
    source_format: str  # the public format of its real data (tasks.<task>.source.format): loaders.FORMATS
    builder: str  # function of telly.data.datasets: one split of the set from corpus functions
    balance: str  # function of telly.data.datasets: the label balance of a split the tasks stage reports
    statistic: str  # Statistic of telly.finetuning.examples: the main metric from per-example rows
    baseline: str  # function of telly.finetuning.baselines: the no-training baseline
    # encoder-only tasks: the row fields tokenized as sequences, each with the length setting it uses
    sequences: dict[str, Literal["source", "target"]] = field(default_factory=dict)
    # generation tasks: metric name -> the function of telly.finetuning.metrics that computes it from
    # (references, hypotheses); named, not imported, so the tasks stage does not depend on metric code
    text_metrics: dict[str, str] = field(default_factory=dict)
    # generation tasks: function of telly.finetuning.examples scoring one (reference, hypothesis) pair
    example_row: str = ""
    overlap: str = ""  # function of telly.data.datasets: the token-overlap baseline of a split, if any
    # row field -> the field of the source format's rows it is read from, where the names differ
    source_fields: dict[str, str] = field(default_factory=dict)
    real_data: Literal["rows"] = "rows"  # real data in source_format are rows of the set (not functions)
    # function of telly.data.datasets: the lexical length tasks.<task>.max_code_tokens bounds (code or body)
    length: str = "code_length"

    @property
    def main_metric(self) -> str:
        return self.metrics[0]

    @property
    def text_fields(self) -> tuple[str, ...]:
        """The row fields that are text to tokenize (all but the label)."""
        return tuple(f for f in self.fields if f != "label")

    @property
    def generates(self) -> bool:
        """Evaluated by decoding text (beam search), not by embeddings."""
        return self.head == "lm"

    @property
    def sequence_fields(self) -> tuple[str, ...]:
        """The token sequences of one example: the encoder tasks' fields, or the one ``seq`` of a generation task."""
        return tuple(self.sequences) if self.sequences else ("seq",)

    def score(self, metrics: dict[str, float]) -> float:
        """The selection score on valid (higher is better)."""
        return sum(metrics[name] for name in self.selection)

    def max_tokens(self, max_source: int, max_target: int) -> int:
        """The longest input a run builds: both lengths add up where the target follows the source."""
        return max(max_source, max_target) if self.sequences else max_source + max_target


TASKS: dict[str, DownstreamTask] = {
    t.name: t
    for t in (
        DownstreamTask(
            name="code_search",
            head="search",
            layout="encoder-only",
            fields=("query", "code"),
            sequences={"query": "target", "code": "source"},
            metrics=("mrr", "r_at_1", "r_at_5", "r_at_10"),
            selection=("mrr",),
            source_format="codesearchnet",
            builder="code_search",
            balance="target_length",
            statistic="MRR",
            baseline="code_search",
        ),
        DownstreamTask(
            name="clone_detection",
            head="clone",
            layout="encoder-only",
            fields=("code1", "code2", "label"),
            sequences={"code1": "source", "code2": "source"},
            metrics=("f1", "precision", "recall"),
            selection=("f1",),
            source_format="bigclonebench",
            builder="clone_detection",
            balance="pair_shares",
            statistic="F1",
            baseline="clone_detection",
            overlap="pair_overlap",
        ),
        DownstreamTask(
            name="code_summarization",
            head="lm",
            layout="encoder-decoder",
            fields=("source", "target"),
            metrics=("bleu", "meteor", "rouge_l", "cider"),
            selection=("bleu",),
            source_format="codesearchnet",
            source_fields={"source": "code", "target": "query"},
            builder="code_summarization",
            balance="target_length",
            statistic="SENTENCE_BLEU",
            baseline="code_summarization",
            example_row="summary_row",
            text_metrics={"bleu": "smoothed_bleu4", "meteor": "meteor", "rouge_l": "rouge_l", "cider": "cider"},
        ),
        DownstreamTask(
            name="code_generation",
            head="lm",
            layout="encoder-decoder",
            fields=("source", "target"),
            # BLEU on Python code tokens (CodeXGLUE's py150 tokenization) stays the headline: the paper's metric,
            # and split into code tokens even unrelated code shares n-grams, so the nearest-code baseline is off
            # its floor; chrF (character n-grams) beside it. CodeBLEU's package pins an older tree-sitter.
            metrics=("bleu", "chrf", "em"),
            selection=("bleu", "em"),  # UniXcoder's best-score
            source_format="concode",
            builder="code_generation",
            length="body_length",  # the target is what must stay whole
            balance="target_length",
            statistic="CORPUS_BLEU",
            baseline="code_generation",
            example_row="code_row",
            text_metrics={"bleu": "corpus_bleu_code", "chrf": "chrf", "em": "exact_match"},
        ),
        DownstreamTask(
            name="line_completion",
            head="lm",
            layout="decoder-only",
            fields=("source", "target"),
            # edit similarity first: the headline the verdicts read. EM is 0 for every run of the embedded model
            # (docs/finetuning.md, "Choosing the scale"), a degenerate metric that could carry no verdict.
            metrics=("edit_sim", "em"),
            selection=("em", "edit_sim"),  # the paper's dev EM; edit similarity breaks its ties at zero
            source_format="codexglue_line",
            builder="line_completion",
            balance="target_length",
            statistic="EDIT_SIMILARITY",
            baseline="line_completion",
            example_row="line_row",
            text_metrics={"em": "exact_match", "edit_sim": "edit_similarity"},
        ),
    )
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def get(name: str) -> DownstreamTask:
    """The registry entry of ``name``; an unknown name is a clear error listing the tasks."""
    from telly.errors import TellyError

    if name not in TASKS:
        raise TellyError(f"unknown task {name!r}; the downstream tasks are {', '.join(TASK_NAMES)}")
    return TASKS[name]
