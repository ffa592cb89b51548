"""The probing properties of RQ1 (the paper's four and one more): one entry per property, read by every stage that touches a probe.

Each :class:`ProbingProperty` holds what the stages need to know about a property: the fields of its
rows (``data/probing/<property>/*.jsonl``), where its real data comes from, how the tasks stage builds
and summarises it, how the probe stage turns rows into features, labels and a control task, which
objective (head output, loss, metrics, majority baseline) trains the probe, and how the report shows
its metric. A fifth property is one more entry here plus the functions it names
(docs/architecture.md, "How to add a property").

As in :mod:`telly.tasks`, behaviour is *named*, not imported: ``builder``, ``balance`` and ``overlap``
are functions of ``telly.data.datasets``; ``features`` of ``telly.probing.stage``; ``control`` of
``telly.probing.controls``; ``objective`` a class of ``telly.probing.objectives``. So this module imports
nothing heavy: the config and the tasks stage read it without torch.

The paper's properties (section 1):

- lexical: the type of every token (keyword, name, number, string, operator), a tagging probe per token;
- syntactic: does an AST-only sequence belong to this code, a contrastive probe over pairs;
- structural: the cyclomatic-complexity class of a function, a tagging probe per function;
- semantic: clone classes (POJ-104), a contrastive probe ranked by MAP@R: functions written independently
  that behave alike when run (Type 4, ``tasks.semantic.source: behaviour``).

Beside them, ``semantic_rewrites`` ("rewrites (Type 1-3)"): the same probe on classes of a corpus function and
its rewrites. It is not one of the paper's properties (``paper``), so no claim compares it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal


@dataclass(frozen=True)
class ProbingProperty:
    name: str
    fields: tuple[str, ...]  # required fields of a row of data/probing/<property>/*.jsonl
    source_format: str  # the public format of its real data (tasks.<property>.source.format): loaders.FORMATS
    # functions: real data are functions the set is built from, as from the corpus; rows: rows of the set
    real_data: Literal["functions", "rows"]
    builder: str  # function of telly.data.datasets: one split of the set from corpus functions
    balance: str  # function of telly.data.datasets: the label balance of a split the tasks stage reports
    # tokens: labels are the types of row["tokens"]; classes: row["label"] is a class 0..n_classes-1;
    # clone_classes: row["label"] is any value, rows sharing it are clones
    labels: Literal["tokens", "classes", "clone_classes"]
    features: str  # function of telly.probing.stage: the splits of hidden states and labels
    control: str  # function of telly.probing.controls: the control task's splits on the same inputs
    objective: str  # class of telly.probing.objectives: head output, loss, metrics, majority baseline
    n_classes: int = 0  # tagging objectives: classes of the head (the lexical pad label included)
    pad_label: int | None = None  # tagging over tokens: the label no row holds
    overlap: str = ""  # function of telly.data.datasets: the token-overlap baseline of a split, if any
    fraction: bool = False  # the metric is in [0, 1] as the paper reports it: figures show it x100
    source_fields: dict[str, str] = field(default_factory=dict)  # as DownstreamTask.source_fields
    # other sources than the corpus (tasks.<property>.source): name -> function of telly.data.datasets that
    # builds one split from it, called as ``builder`` is
    source_builders: dict[str, str] = field(default_factory=dict)
    paper: bool = True  # one of the paper's four properties, which its claims compare


PROPERTIES: dict[str, ProbingProperty] = {
    p.name: p
    for p in (
        ProbingProperty(
            name="lexical",
            fields=("id", "code", "tokens"),
            source_format="codesearchnet",
            real_data="functions",
            builder="lexical",
            balance="token_type_shares",
            labels="tokens",
            features="token_features",
            control="token_type_control",
            objective="TaggingTask",
            n_classes=6,
            pad_label=0,
        ),
        ProbingProperty(
            name="syntactic",
            fields=("id", "code", "ast_only", "label"),
            source_format="codesearchnet",
            real_data="functions",
            builder="syntactic",
            balance="label_shares",
            labels="classes",
            n_classes=2,
            features="pair_features",
            control="deranged_control",
            objective="PairTask",
            fraction=True,
        ),
        ProbingProperty(
            name="structural",
            fields=("id", "code", "label"),
            source_format="codesearchnet",
            real_data="functions",
            builder="structural",
            balance="complexity_shares",
            labels="classes",
            n_classes=6,
            features="pooled_features",
            control="shuffled_control",
            objective="TaggingTask",
        ),
        ProbingProperty(
            name="semantic",
            fields=("id", "code", "label"),
            source_format="poj104",
            real_data="rows",
            builder="semantic",
            source_builders={"behaviour": "semantic_behaviour"},
            balance="class_sizes",
            overlap="class_overlap",
            labels="clone_classes",
            features="pooled_features",
            control="shuffled_control",
            objective="CloneRetrievalTask",
        ),
    )
}
PROPERTIES["semantic_rewrites"] = replace(PROPERTIES["semantic"], name="semantic_rewrites", paper=False)
PROPERTY_NAMES: tuple[str, ...] = tuple(PROPERTIES)


def get(name: str) -> ProbingProperty:
    """The registry entry of ``name``; an unknown name is a clear error listing the properties."""
    from telly.errors import TellyError

    if name not in PROPERTIES:
        raise TellyError(f"unknown probing property {name!r}; the properties are {', '.join(PROPERTY_NAMES)}")
    return PROPERTIES[name]
