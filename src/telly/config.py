"""One typed, validated configuration, read from ``params.yaml``.

Every stage calls :func:`load_params` first, so a bad or missing value fails
before any work starts, with the key, the value and what is allowed.

Each pipeline stage owns one section (``prepare``, ``pretrain``, ...). A section
is a strict pydantic model: unknown keys are errors (they are usually typos).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from telly import files
from telly.errors import TellyError
from telly.probing.properties import PROPERTIES, PROPERTY_NAMES
from telly.tasks import TASK_NAMES, TASKS

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(TellyError, ValueError):
    """A params file that cannot be used; the message names file, key and value."""


class Section(BaseModel):
    # NaN and infinity pass every bound (``gt=0`` lets ``.inf`` through): no float setting takes them
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- data


class DataParams(Section):
    """Where the raw corpus lives and how it is fetched."""

    lockfile: Path = Field(description="pip requirements file with --hash pins of the corpus wheels")
    raw_dir: Path = Field(description="folder the wheels are downloaded into (tracked by data.dvc)")
    corpus_dir: Path = Field(description="output folder of the prepare stage")


class PrepareParams(Section):
    """CodeSearchNet-style extraction and filtering of functions."""

    language: Literal["python"]
    min_docstring_tokens: int = Field(ge=1)
    max_code_lines: int = Field(ge=2)
    max_code_tokens: int = Field(ge=8)
    valid_fraction: float = Field(gt=0, lt=0.5)
    test_fraction: float = Field(gt=0, lt=0.5)
    seed: int

    @field_validator("test_fraction")
    @classmethod
    def _fractions_leave_training_data(cls, v: float, info: Any) -> float:
        valid = info.data.get("valid_fraction", 0)
        if valid + v >= 0.8:
            raise ValueError(f"valid_fraction + test_fraction = {valid + v} leaves too little training data (< 0.2)")
        return v


# ----------------------------------------------------------------------- tracking


class TrackingParams(Section):
    """MLflow store; MLFLOW_TRACKING_URI in the environment overrides ``uri``."""

    uri: str = Field(description="tracking URI; relative sqlite paths are resolved from the repo root")
    artifacts_dir: Path
    experiment_prefix: str


def _parsed_variants(names: list[str]) -> list[Any]:
    """Every name parsed by telly.variants (distinct); a bad one is a ValueError naming it, for pydantic."""
    from telly import variants

    try:
        variants.check_names(names)
        return [variants.parse(name) for name in names]
    except TellyError as err:
        raise ValueError(str(err)) from None


# ------------------------------------------------------------------ later stages
# Each stage below owns its section (strict, like the ones above).


# ------------------------------------------------------------------------- models

PoolingKind = Literal["mean", "first", "mean_unmasked"]


class ModelParams(Section):
    """The encoder every stage starts from (docs/models.md)."""

    name_or_path: str = Field(
        min_length=1,
        description="models/pretrained (the embedded model), any save_pretrained folder, a hub id, or random",
    )
    device: Literal["auto", "cpu", "cuda"]
    bf16: bool = Field(description="bf16 autocast on CUDA (ignored on CPU)")
    seed: int = Field(
        description="seeds random weights (`random`, weights missing from a checkpoint); default: the top-level seed"
    )


class PretrainObjectives(Section):
    """Share of training steps per objective (normalised; 0 leaves one out). UniXcoder's three
    modes plus its multi-modal contrastive objective; ``mlm: 1``, the rest 0, is RoBERTa's recipe."""

    mlm: float = Field(ge=0, description="masked-LM, <encoder-only>")
    ulm: float = Field(ge=0, description="unidirectional LM, <decoder-only>, causal mask")
    denoise: float = Field(ge=0, description="span denoising, <encoder-decoder>, prefix-LM mask")
    crossgen: float = Field(
        0.0, ge=0, description="cross-modal generation: the comment from the flattened AST, <encoder-decoder>"
    )
    contrastive: float = Field(ge=0, description="code close to its own comment and AST view, in-batch negatives")

    @field_validator("contrastive")
    @classmethod
    def _some_objective(cls, v: float, info: Any) -> float:
        if v + sum(info.data.get(k, 0) or 0 for k in ("mlm", "ulm", "denoise", "crossgen")) <= 0:
            raise ValueError("at least one objective needs a share above 0")
        return v


class PretrainParams(Section):
    """The embedded code model: byte-level BPE + a RoBERTa encoder pre-trained as UniXcoder is
    (or with masked-LM only), on the corpus train split."""

    train: Path
    valid: Path
    field: str = Field(min_length=1, description="jsonl field holding the code")
    out_dir: Path
    checkpoint_dir: Path = Field(description="resume point, outside the DVC output")
    metrics: Path
    vocab_size: int = Field(ge=300)
    min_frequency: int = Field(ge=1)
    max_length: int = Field(ge=8, description="tokens per input, special tokens included")
    layers: int = Field(ge=1)
    hidden_size: int = Field(ge=8)
    heads: int = Field(ge=1)
    ffn_size: int = Field(ge=8)
    dropout: float = Field(ge=0, lt=1, description="dropout while pre-training (under one epoch: 0 learns fastest)")
    finetune_dropout: float = Field(ge=0, lt=1, description="dropout written into the saved config for later stages")
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    warmup_steps: int = Field(ge=0)
    lr_cooldown: float = Field(
        gt=0, le=1, description="share of training over which the rate decays to 0 (1: linear decay)"
    )
    init_std: float = Field(gt=0, description="std of the initial weights (RoBERTa: 0.02)")
    sinusoidal_positions: float = Field(
        ge=0, description="position embeddings start as sinusoids of this amplitude (0: random, as RoBERTa)"
    )
    weight_decay: float = Field(ge=0)
    max_steps: int = Field(ge=1, description="training steps: the one thing that decides how long it trains")
    time_budget_minutes: float | None = Field(
        default=None,
        gt=0,
        description="an optional wall-clock guard: training that takes longer fails the stage (resumable) "
        "instead of saving; null = none (the default: load or a slower machine must not fail the pipeline)",
    )
    objectives: PretrainObjectives
    mlm_first_steps: int = Field(
        default=0,
        ge=0,
        description="the first steps are masked-LM on plain code alone (the MLM-only recipe's start), then the mixture",
    )
    ast_share: float = Field(
        ge=0, le=1, description="share of the LM steps whose input is comment + flattened AST (else plain code)"
    )
    denoise_rate: float = Field(gt=0, lt=1, description="share of an input's tokens hidden in denoising spans")
    denoise_span: float = Field(ge=1, description="mean length of a denoising span")
    mlm_probability: float = Field(gt=0, lt=1, description="share of tokens masked while training")
    eval_mlm_probability: float = Field(
        gt=0, lt=1, description="share masked in the held-out measurement (BERT's 15 %)"
    )
    eval_examples: int = Field(ge=1, description="held-out functions for masked-token accuracy")
    eval_every: int = Field(ge=1)
    log_every: int = Field(ge=1)
    checkpoint_every_minutes: float = Field(gt=0)
    threads: int = Field(
        ge=0, description="torch CPU threads; 0 = torch's default (all cores); 1 on a CPU shared with other jobs"
    )
    bf16: bool = Field(
        description="bf16 autocast while training (CPU with AVX512-BF16, or CUDA); evaluation stays fp32"
    )
    seed: int

    @field_validator("mlm_first_steps")
    @classmethod
    def _within_training(cls, v: int, info: Any) -> int:
        total = info.data.get("max_steps")
        if total is not None and v > total:
            raise ValueError(f"mlm_first_steps {v} is more than max_steps {total}")
        return v

    @field_validator("heads")
    @classmethod
    def _heads_divide_hidden(cls, v: int, info: Any) -> int:
        hidden = info.data.get("hidden_size")
        if hidden and hidden % v:
            raise ValueError(f"hidden_size {hidden} is not divisible by heads {v}")
        return v


class ExtractDataset(Section):
    """One input set whose layer-wise representations are extracted."""

    input: Path = Field(description="jsonl file")
    field: str = Field(default="code", min_length=1)
    id_field: str = Field(default="id", min_length=1)
    limit: int | None = Field(default=None, ge=1, description="first N rows (paper RSA: 5000)")
    max_length: int = Field(ge=8)
    kinds: list[PoolingKind] = Field(min_length=1)
    token_examples: int = Field(default=0, ge=0, description="rows whose token-level states are kept")
    mode: Literal["encoder-only", "encoder-decoder", "decoder-only"] = "encoder-only"


class ExtractParams(Section):
    """Which models' representations of which inputs the extract stage writes."""

    out_dir: Path
    models: list[str] = Field(min_length=1, description="model tags: pretrained, random, finetuned-<task>-<variant>")
    datasets: dict[str, ExtractDataset] = Field(min_length=1)
    batch_size: int = Field(ge=1)
    threads: int = Field(ge=0, description="torch CPU threads; 0 = torch's default")

    @field_validator("datasets")
    @classmethod
    def _names_not_taken(cls, v: dict[str, Any]) -> dict[str, Any]:
        taken = [n for n in v if n == "rsa" or n.startswith("probing-") or "/" in n]
        if taken:
            raise ValueError(f"dataset names {taken} are taken by the similarity/probe stages or not folder names")
        return v


# --------------------------------------------------------------------- similarity

TaskName = Literal[TASK_NAMES]  # the downstream tasks of the registry (telly.tasks)


class SimilarityParams(Section):
    """RQ2: how much each hidden state changes with fine-tuning (RSA as the paper, CKA, Procrustes)."""

    dataset: str = Field(min_length=1, description="representations dataset name: the first num_samples training codes")
    representations_dir: Path = Field(
        default=Path("data/representations"), description="<representations_dir>/<dataset>/<model tag>/ per model"
    )
    out_dir: Path = Field(default=Path("results/similarity"), description="tables, figure, suggested K")
    num_samples: int = Field(ge=8, description="first N codes of the corpus train split (paper: 5000)")
    max_length: int = Field(ge=8, description="every input padded/truncated to this many tokens (paper: 256)")
    batch_size: int = Field(ge=1)
    pooling: Literal["mean_unmasked", "mean"] = Field(
        description="mean_unmasked = the paper's mean over all positions incl. padding; mean = real tokens only"
    )
    tasks: list[TaskName] = Field(min_length=1)
    variant: str = Field(description="fine-tuned variant compared with the pre-trained model (paper: base)")
    seed_variant: str | None = Field(
        default=None,
        description="the noise baseline: `variant` of another seed, `<variant>-seed<S>` (S in finetune.seeds); "
        "null = not run",
    )
    block_rows: int = Field(ge=1, description="rows of the similarity matrix computed at once")
    rsa_bootstrap_rounds: int = Field(ge=0, description="half-samples for RSA intervals (0 = none)")
    bootstrap_rounds: int = Field(ge=0, description="half-samples for CKA and Procrustes intervals (0 = none)")
    ci_level: float = Field(gt=0.5, lt=1.0)
    seed: int
    suggest_metric: Literal["rsa_spearman", "rsa_pearson", "cka"]
    suggest_threshold: float = Field(
        gt=0, le=1, description="suggested K: deepest K with hidden states 0..K at or above this"
    )
    change_threshold: float = Field(gt=0, le=1, description="a hidden state 'changes much' below this similarity")

    @field_validator("tasks")
    @classmethod
    def _tasks_unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"tasks repeat: {v}")
        return v


# ----------------------------------------------------------------------- finetune


class FinetuneTaskParams(Section):
    """How one downstream task is trained and evaluated (sizes cap the task splits)."""

    train_size: int = Field(ge=2, description="training rows used (a seeded sample); 0 is not allowed")
    valid_size: int = Field(ge=2)
    test_size: int | None = Field(ge=2, description="test rows (a seeded sample); null = the whole test split")
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=2, description="search needs >= 2 for in-batch negatives")
    learning_rate: float = Field(gt=0)
    max_source_length: int = Field(ge=8, description="tokens of code / source / left context")
    max_target_length: int = Field(ge=4, description="tokens of query / target / next line")
    beam_size: int = Field(ge=1)
    group_by_length: bool = Field(
        default=False,
        description="training batches of similar lengths (transformers' LengthGroupedSampler: shuffled, then sorted "
        "within mega-batches of 50 batches), so a batch pads to its own longest row, not to a long outlier",
    )


# one required section per downstream task of the registry
FinetuneTasks = create_model(
    "FinetuneTasks", __base__=Section, **{name: (FinetuneTaskParams, ...) for name in TASK_NAMES}
)


class FinetunePeftParams(Section):
    """Beyond the paper: parameter-efficient methods against and with Telly-K (docs/finetuning.md)."""

    variants: list[str] = Field(
        default_factory=list,
        description="lora-r<r>, lora-all-r<r>, ia3, bitfit, telly-<K>+<method> names of the DVC matrix finetune-peft",
    )
    tasks: list[TaskName] = Field(default_factory=list, description="tasks of the DVC matrix finetune-peft")
    results_dir: Path = Field(
        default=Path("results/finetune-peft"), description="<results_dir>/<task>/<variant>.json per method run"
    )
    learning_rate_scale: float = Field(
        default=1.0, gt=0, description="a method's learning rate = the task's learning_rate x this"
    )
    lora_alpha: float = Field(default=16.0, gt=0, description="LoRA scaling alpha (the update is scaled by alpha / r)")
    lora_dropout: float = Field(default=0.1, ge=0, lt=1, description="dropout on the LoRA branch's input")

    @field_validator("variants")
    @classmethod
    def _methods_only(cls, v: list[str]) -> list[str]:
        if bad := [p.name for p in _parsed_variants(v) if p.method is None]:
            raise ValueError(f"{bad}: Base and Telly-K runs belong in finetune.variants")
        return v

    @field_validator("tasks")
    @classmethod
    def _tasks_unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"tasks repeat: {v}")
        return v


class FinetuneParams(Section):
    """RQ3: Base and Telly-K fine-tuning on the five downstream tasks (docs/finetuning.md)."""

    model: str | None = Field(
        default=None, min_length=1, description="encoder to fine-tune; null = model.name_or_path (the usual case)"
    )
    tasks_dir: Path
    output_dir: Path = Field(description="best-on-valid encoders: <output_dir>/<task>/<variant>/")
    results_dir: Path = Field(description="metrics json per run and the per-task tables")
    baselines_dir: Path = Field(
        default=Path("results/baselines"), description="<task>.json: each task's no-training baseline, same test rows"
    )
    checkpoint_dir: Path = Field(description="last-epoch state for resuming (not a DVC output)")
    task_names: list[TaskName] = Field(min_length=1, description="tasks of the DVC matrix")
    variants: list[str] = Field(
        min_length=1, description="base and telly-<K> names run with every seed of `seeds` (DVC matrix)"
    )
    deep_variants: list[str] = Field(
        default_factory=list, description="deeper telly-<K> names, run with `deep_seeds` only (DVC matrix)"
    )
    deep_task_names: list[TaskName] = Field(
        min_length=1,
        description="tasks the deep variants run on (DVC matrix): some or all of `task_names` (null: all)",
    )
    cache_frozen: bool = Field(
        description="frozen-prefix caching; false = the paper's regime (frozen layers run, dropout on)"
    )
    cache_dropout: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="dropout on the cached hidden state K while training: noise in place of the frozen layers' own dropout",
    )
    cache_dtype: Literal["float32", "float16", "bfloat16"] = Field(
        default="float32", description="storage type of the cached hidden state K (fp16/bf16 halve its size)"
    )
    cache_dir: Path | None = Field(
        default=None,
        description="where caches persist and are shared between runs (hidden/: frozen-prefix caches, "
        "tokens/: tokenized task files); null = in memory, rebuilt by every run",
    )
    cache_budget_gb: float = Field(
        default=1e9, gt=0, description="a frozen-prefix cache larger than this runs uncached instead (one warning)"
    )
    cache_on_device: bool = Field(default=False, description="copy the frozen-prefix cache to the GPU (when on CUDA)")
    data_seed: int = Field(
        description="samples the train/valid/test rows: every seed of every variant sees the same rows"
    )
    seeds: list[int] = Field(
        min_length=1, description="training seeds of `variants`; the first is the run probe, similarity and tuning read"
    )
    deep_seeds: list[int] = Field(min_length=1, description="training seeds of `deep_variants`: the first of `seeds`")
    device: Literal["auto", "cpu", "cuda"]
    bf16: bool = Field(description="bf16 autocast on CUDA; on a CPU with native bf16 (AVX512-BF16) while training only")
    weight_decay: float = Field(ge=0)
    warmup_fraction: float = Field(ge=0, lt=1)
    max_grad_norm: float = Field(gt=0)
    eval_batch_size: int = Field(ge=1)
    convergence_tolerance: float = Field(
        ge=0, lt=1, description="converged = first epoch with valid score >= best - tolerance x |best|"
    )
    task_defaults: FinetuneTaskParams | None = Field(
        default=None,
        description="the settings every task shares; params.yaml merges them into each finetune.tasks entry (YAML `<<:`)",
    )
    tasks: FinetuneTasks
    peft: FinetunePeftParams = Field(default_factory=FinetunePeftParams)

    @field_validator("variants", "deep_variants")
    @classmethod
    def _variant_names(cls, v: list[str]) -> list[str]:
        if methods := [p.name for p in _parsed_variants(v) if p.method is not None]:
            # their results go to finetune.peft.results_dir, beside (not inside) the RQ3 tables
            raise ValueError(f"{methods}: parameter-efficient variants belong in finetune.peft.variants")
        return v

    @field_validator("seeds", "deep_seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds repeat: {v}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _deep_tasks_default_to_every_task(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("deep_task_names") is None and "task_names" in data:
            data = {**data, "deep_task_names": data["task_names"]}
        return data

    @model_validator(mode="after")
    def _seed_policy(self) -> FinetuneParams:
        if self.deep_seeds != self.seeds[: len(self.deep_seeds)]:
            raise ValueError(
                f"deep_seeds {self.deep_seeds} must be the first seeds of `seeds` {self.seeds} "
                "(the deep variants' runs pair with the others' on the same seeds)"
            )
        both = set(self.variants) & set(self.deep_variants)
        if both:
            raise ValueError(f"variants and deep_variants share {sorted(both)}")
        extra = [t for t in self.deep_task_names if t not in self.task_names]
        if extra:
            raise ValueError(f"deep_task_names {extra} are not in task_names {self.task_names}")
        return self

    @property
    def first_seed(self) -> int:
        """The seed of the run that stands for a variant where one model is needed (probe, similarity, tuning)."""
        return self.seeds[0]

    def seeds_of(self, variant: str) -> list[int]:
        """The training seeds a variant runs with."""
        return self.deep_seeds if variant in self.deep_variants else self.seeds

    def runs_of(self, task: str) -> set[tuple[str, int]]:
        """The (variant, seed) runs the DVC matrix holds for ``task``: a run file of any other (left from an
        earlier matrix) is stale and never read into a table or the report."""
        deep = self.deep_variants if task in self.deep_task_names else []
        return {(v, s) for v in [*self.variants, *deep] for s in self.seeds_of(v)}


# -------------------------------------------------------------------------- probe

ProbingProperty = Literal[PROPERTY_NAMES]  # the properties of the registry (telly.probing.properties)
ModelStateName = Literal["random", "pretrained", "finetuned"]


class ProbedRun(Section):
    """A fine-tuning run by task and variant; the run of the first of ``finetune.seeds`` stands for it."""

    task: TaskName
    variant: str

    @field_validator("variant")
    @classmethod
    def _a_variant(cls, v: str) -> str:
        from telly import variants

        variants.parse(v)
        return v


class ProbeParams(Section):
    """RQ1: probes on cached hidden states of the probing sets (docs/probing.md)."""

    properties: list[ProbingProperty] = Field(min_length=1)
    states: list[ModelStateName] = Field(min_length=1, description="model states probed")
    finetuned: ProbedRun = Field(description="the fine-tuning run probed as 'finetuned' (paper: code search, Base)")
    probing_dir: Path = Field(description="probing sets written by the tasks stage")
    representations_dir: Path = Field(description="cache of extracted hidden states")
    out_dir: Path
    max_rows: dict[Literal["train", "valid", "test"], int] = Field(description="first rows per split (functions)")
    max_length: int = Field(ge=8, description="subword tokens per input at extraction")
    extract_batch_size: int = Field(ge=1)
    pooling: Literal["mean", "first"] = Field(description="function vector for sequence-level probes")
    probe_types: list[Literal["layer-wise", "weighted-layer-wise"]] = Field(min_length=1)
    head: Literal["linear", "mlp"] = Field(description="linear (default) or MLP (upper bound)")
    mlp_hidden: int = Field(ge=1)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=2)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    seeds: list[int] = Field(min_length=1)
    control_seed: int

    @field_validator("properties", "states", "seeds", "probe_types")
    @classmethod
    def _no_repeats(cls, v: list[Any]) -> list[Any]:
        if len(set(v)) != len(v):
            raise ValueError(f"values repeat: {v}")
        return v

    @field_validator("max_rows")
    @classmethod
    def _all_splits(cls, v: dict[str, int]) -> dict[str, int]:
        missing = {"train", "valid", "test"} - set(v)
        if missing or any(n < 2 for n in v.values()):
            raise ValueError(f"needs train, valid and test, each at least 2 (missing {sorted(missing)})")
        return v


# ---------------------------------------------------------------------------- tune

TuneObjective = Literal["valid_score", "time_to_convergence", "trainable_params", "epoch_seconds"]


class TuneParams(Section):
    """Optuna: freeze depth K and learning rate per task (docs/tuning.md)."""

    task_names: list[TaskName] = Field(min_length=1, description="one study per task (the DVC foreach list)")
    study_name: str = Field(
        pattern=r"\{task\}",
        description="study name template: {task}, and {inputs} = a fingerprint of model, task data and task settings",
    )
    storage: str | None = Field(description="database URL of the studies; null = sqlite file <results_dir>/<task>.db")
    results_dir: Path = Field(description="<task>.json (best parameters), <task>/ (plots, trials.csv)")
    work_dir: Path = Field(
        description="per-trial training state, removed when a trial ends (not a DVC output); "
        "a folder every worker can read (shared) so a retried trial resumes where a dead worker stopped"
    )
    heartbeat_seconds: int = Field(default=30, ge=1, description="a running trial writes a heartbeat this often")
    grace_seconds: int = Field(
        default=120, ge=2, description="a running trial without a heartbeat for this long is dead: failed and retried"
    )
    max_retries: int = Field(default=3, ge=0, description="times one trial is retried after its worker died")
    n_trials: int = Field(ge=1, description="finished (complete or pruned) trials a study should reach")
    timeout_minutes: float | None = Field(gt=0, description="wall-clock budget of one `telly tune` session")
    max_failed_trials: int = Field(ge=1, description="a session stops after this many failed trials of the study")
    objectives: list[TuneObjective] = Field(
        min_length=1, max_length=2, description="valid_score, optionally a cost to minimise (multi-objective)"
    )
    lr_min: float = Field(gt=0)
    lr_max: float = Field(gt=0, description="learning rate: log-uniform in [lr_min, lr_max]")
    epochs: list[int] = Field(min_length=1, description="epoch choices; one value = fixed, not searched")
    batch_sizes: list[int] | None = Field(description="batch size choices; null = finetune.tasks.<task>.batch_size")
    train_size: int | None = Field(ge=2, description="training rows per trial; null = finetune's")
    valid_size: int | None = Field(ge=2, description="validation rows per trial; null = finetune's")
    test_size: int = Field(ge=2, description="test rows per trial (the objective never reads test: keep it small)")
    pruner: Literal["median", "hyperband", "none"]
    warmup_epochs: int = Field(ge=0, description="median pruner: never prune before this many epochs")
    startup_trials: int = Field(ge=0, description="random trials before TPE (and the median pruner) start")
    enqueue_default: bool = Field(description="first trial = Base at finetune's learning rate (a reference point)")
    repeats: int = Field(
        ge=0,
        description="trials of that default setting with other training seeds (finetune.seeds, then first + i): "
        "the objective's own spread; 0 = none",
    )
    seed: int
    methods: list[str] = Field(
        default_factory=list,
        description="PEFT methods searched beside Telly-K as a categorical 'method' (lora-r8, bitfit, ...); [] = K only",
    )
    combine_methods: bool = Field(
        default=False, description="with methods: also search K under each method (telly-<K>+<method>)"
    )

    @field_validator("methods")
    @classmethod
    def _method_parts(cls, v: list[str]) -> list[str]:
        if bad := [p.name for p in _parsed_variants(v) if p.method is None or p.k is not None]:
            raise ValueError(f"{bad}: methods are method names alone (lora-r8, ia3, bitfit; K is searched)")
        return v

    @field_validator("objectives")
    @classmethod
    def _metric_first(cls, v: list[str]) -> list[str]:
        if v[0] != "valid_score" or len(set(v)) != len(v):
            raise ValueError(
                f"must start with valid_score and not repeat (e.g. [valid_score, time_to_convergence]), got {v}"
            )
        return v

    @field_validator("grace_seconds")
    @classmethod
    def _grace(cls, v: int, info: Any) -> int:
        if v <= info.data.get("heartbeat_seconds", 0):
            raise ValueError(
                f"grace_seconds = {v} must be above heartbeat_seconds = {info.data.get('heartbeat_seconds')}"
            )
        return v

    @field_validator("lr_max")
    @classmethod
    def _lr_range(cls, v: float, info: Any) -> float:
        if v <= info.data.get("lr_min", 0):
            raise ValueError(f"lr_max = {v} must be above lr_min = {info.data.get('lr_min')}")
        return v

    @field_validator("epochs", "batch_sizes")
    @classmethod
    def _choices(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(set(v)) != len(v) or min(v) < 1):
            raise ValueError(f"choices must be distinct and >= 1, got {v}")
        return v


# -------------------------------------------------------------------------- tasks


class SplitSizes(Section):
    """Rows per split; null = every row there is (real data) or every function that qualifies."""

    train: int | None = Field(ge=1)
    valid: int | None = Field(ge=1)
    test: int | None = Field(ge=1)


class RealData(Section):
    """A copy of the paper's dataset in its public format (telly.data.loaders)."""

    format: Literal["codesearchnet", "bigclonebench", "poj104", "concode", "codexglue_line"]
    train: Path
    valid: Path
    test: Path
    codebase: Path | None = Field(default=None, description="code search: UniXcoder's codebase.jsonl")
    data: Path | None = Field(default=None, description="BigCloneBench: data.jsonl with the functions")


class TaskSet(Section):
    """One probing or downstream set: its sizes and where it comes from."""

    sizes: SplitSizes
    # corpus: the prepare stage's functions; behaviour: classes of wheel functions grouped by running them
    # (tasks.behaviour; only for a set whose registry entry names a builder for it); or the real data
    source: Literal["corpus", "behaviour"] | RealData = "corpus"
    codebase_size: int | None = Field(
        default=None,
        ge=2,
        description="code search from the corpus: codes the test queries are ranked against (their own codes plus "
        "distractors from the test split's other functions), written to codebase.jsonl; null = among the test codes",
    )
    max_code_tokens: int | None = Field(
        default=None,
        ge=1,
        description="downstream sets from the corpus: draw only functions with at most this many lexical tokens "
        "(the task's `length`: the code without docstring, or code generation's body), so that inputs stay whole "
        "at the fine-tuning lengths; null = every function",
    )


class CloneParams(Section):
    """Clone classes: a corpus function plus rewritten variants (docs/datasets.md)."""

    semantic_variants: int = Field(ge=1, description="variants per class in the semantic probing set")
    pair_variants: int = Field(ge=1, description="variants per class the clone detection pairs draw from")
    min_rewrites: int = Field(ge=1)
    max_rewrites: int = Field(ge=1)
    min_statements: int = Field(ge=1, description="functions with fewer body statements make no class")
    hard_negatives: float = Field(
        ge=0, le=1, description="share of negatives that are nearest neighbours by token overlap"
    )
    same_project_negatives: float = Field(
        ge=0, le=1, description="share of the hard negatives taken from the same project (the rest: other projects)"
    )
    mined_share: float = Field(ge=0, le=1, description="at most this share of classes are mined real clones (0 = none)")
    mutant_negatives: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="share of clone-detection negatives that are near-miss mutants of the class's function",
    )


class ClassShares(Section):
    """Share of the behaviour classes each split gets (whole classes: none spans two splits)."""

    train: float = Field(ge=0, le=1)
    valid: float = Field(ge=0, le=1)
    test: float = Field(gt=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> ClassShares:
        if abs(self.train + self.valid + self.test - 1) > 1e-6:
            raise ValueError(f"train + valid + test must be 1, got {self.train + self.valid + self.test:g}")
        return self


class BehaviourParams(Section):
    """Behaviour classes: wheel functions with equal outputs on shared inputs (docs/datasets.md)."""

    lockfile: Path = Field(description="pip requirements file with --hash pins of the algorithm wheels")
    raw_dir: Path = Field(description="folder `telly data fetch` downloads them into (tracked by semantic.dvc)")
    inputs: int = Field(ge=2, description="inputs per signature kind every candidate runs on")
    steps: int = Field(ge=1000, description="Python calls and lines one call may run; past it, excluded on that kind")
    backstop_seconds: float = Field(gt=0, description="CPU and wall-clock limit of one child; past it the build fails")
    skip: tuple[str, ...] = Field(default=(), description="candidate ids left out unrun (known backstop offenders)")
    min_members: int = Field(ge=2, description="a class needs this many members")
    min_sources: int = Field(ge=1, description="... from this many projects")
    max_members: int = Field(ge=2, description="bigger classes keep this many, taken in turn from each project")
    split: ClassShares


TASK_SOURCES = {name: entry.source_format for name, entry in (*PROPERTIES.items(), *TASKS.items())}


TASK_SETS = tuple(TASK_SOURCES)
SETS_BY_NAME = {**PROPERTIES, **TASKS}  # the nine sets of the tasks stage


class _TasksParams(Section):
    """The tasks stage: four probing sets and five downstream sets (docs/datasets.md)."""

    seed: int
    out_dir: Path = Field(description="downstream sets: <out_dir>/<task>/{train,valid,test}.jsonl")
    probing_dir: Path = Field(description="probing sets: <probing_dir>/<property>/{train,valid,test}.jsonl")
    clones: CloneParams
    syntactic_negatives: Literal["similar_length", "random"]
    structural_sampling: Literal["balanced", "natural"]
    generation_max_body_lines: int = Field(ge=1)
    behaviour: BehaviourParams

    @field_validator(*TASK_SETS, check_fields=False)  # the fields of the sets come with TasksParams below
    @classmethod
    def _codebase_only_for_corpus_search(cls, value: TaskSet, info: Any) -> TaskSet:
        searches = info.field_name in TASKS and TASKS[info.field_name].head == "search"
        if value.codebase_size is not None and (not searches or value.source != "corpus"):
            raise ValueError(
                f"tasks.{info.field_name}.codebase_size: only for code search built from the corpus "
                "(real data brings its codebase.jsonl)"
            )
        return value

    @field_validator(*TASK_SOURCES, check_fields=False)
    @classmethod
    def _real_data_fits_the_set(cls, v: TaskSet, info: Any) -> TaskSet:
        want = TASK_SOURCES[info.field_name]
        builders = getattr(SETS_BY_NAME[info.field_name], "source_builders", {})
        if isinstance(v.source, str) and v.source != "corpus" and v.source not in builders:
            allowed = ", ".join(["corpus", *builders, want])
            raise ValueError(f"source {v.source!r} cannot feed this set; use one of {allowed}")
        if isinstance(v.source, RealData):
            if v.source.format != want:
                raise ValueError(f"source.format {v.source.format!r} cannot feed this set; use 'corpus' or {want!r}")
            if want == "bigclonebench" and v.source.data is None:
                raise ValueError("BigCloneBench needs source.data (data.jsonl)")
        return v


# the sets: one required field per property and per task of the registries
TasksParams = create_model("TasksParams", __base__=_TasksParams, **{name: (TaskSet, ...) for name in TASK_SETS})


# ------------------------------------------------------------------------- report


class PaperRegimeParams(Section):
    """Telly-K runs without frozen-prefix caching (frozen layers run every step), for the report's second table."""

    tasks: list[TaskName] = Field(min_length=1, description="tasks of the DVC matrix `finetune-paper-regime`")
    variants: list[str] = Field(
        min_length=1, description="telly-<K> names (Base has nothing frozen: its run is shared)"
    )
    results_dir: Path = Field(description="<results_dir>/<task>/<variant>.json, like finetune.results_dir")

    @field_validator("variants")
    @classmethod
    def _telly_only(cls, v: list[str]) -> list[str]:
        from telly import variants

        try:
            variants.check_names(v)
            bad = [name for name in v if variants.k_of(name) is None or variants.parse(name).method is not None]
        except TellyError:
            bad = v
        if bad:
            raise ValueError(
                f"must be distinct telly-<K> names (Base is the same run with or without caching), got {v}"
            )
        return v


class ReportParams(Section):
    """The study report: every RQ's tables and figures beside the paper's, and its claims checked (docs/report.md)."""

    out_dir: Path = Field(description="report.md, report.html, figures/, plots/, claims.json")
    paper_numbers: Path | None = Field(
        description="the paper's published numbers; null = the packaged paper_numbers.yaml"
    )
    similarity_metric: Literal["rsa_spearman", "rsa_pearson", "cka"] = Field(description="RQ2 curve the claims read")
    lower_layers_fraction: float = Field(
        gt=0, lt=1, description="'lower layers' = hidden states 0..floor(fraction x L)"
    )
    preserve_threshold: float = Field(
        gt=0, le=1, description="a lower hidden state is preserved at this similarity or above"
    )
    within_base_tolerance: float = Field(
        ge=0,
        lt=1,
        description="non-inferiority margin: Telly-K keeps Base quality when the interval of "
        "(K / Base - 1) stays above -this",
    )
    within_base_min_depth: float = Field(
        gt=0, le=1, description="claim holds when the first K = ceil(depth x L) - 1 layers can be frozen"
    )
    ci_level: float = Field(gt=0.5, lt=1.0, description="paired bootstrap intervals of the RQ3 claims (0.95)")
    bootstrap_resamples: int = Field(ge=100, description="resamples per interval (scipy.stats.bootstrap, BCa)")
    learning_curves: Path | None = Field(
        default=None,
        description="benchmarks/learning_curves.py's output (committed): the report shows the curve of each task "
        "whose Base does not beat its no-training baseline; null = none",
    )
    bootstrap_seed: int
    paper_regime: PaperRegimeParams
    track: bool = Field(description="log the report and the claim verdicts to MLflow (experiment <prefix>-report)")


# --------------------------------------------------------------------------- studies of several models

MODEL_TAG_PATTERN = r"[a-z][a-z0-9_]{0,31}"  # safe in a path, a DVC stage name (no "-": it joins matrix items), MLflow


def check_model_tag(tag: str, where: str) -> str:
    """A model tag names a folder and DVC stages: lower-case letters, digits and "_", a letter first."""
    if not re.fullmatch(MODEL_TAG_PATTERN, tag):
        raise ValueError(
            f"{where}: model tag {tag!r} is not allowed: use lower-case letters, digits and '_' "
            "(a letter first, at most 32): it names the study's folder and its DVC stages"
        )
    return tag


class StudyParams(Section):
    """The models of a study (docs/studies.md): the default one runs the root pipeline (`make repro`, outputs at
    the repository root); every other one runs the same stages from studies/dvc.yaml (`make study MODEL=<tag>`)
    with every output under ``<dir>/<tag>/`` (telly.studies)."""

    default: str = Field(description="the tag of model.name_or_path, the root pipeline's model")
    dir: Path = Field(description="<dir>/<tag>/: every output of another model's study")
    models: dict[str, str] = Field(
        description="tag -> the encoder: a save_pretrained folder (relative to the repository root) or a hub id"
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="params laid over params.yaml for every model of `models` (the study's matrix and scale); "
        "finetune.task_names, variants, seeds, deep_variants, deep_seeds, deep_task_names, probe.properties and "
        "similarity.tasks are required: studies/dvc.yaml's matrices read them",
    )

    @field_validator("default")
    @classmethod
    def _default_tag(cls, v: str) -> str:
        return check_model_tag(v, "study.default")

    @field_validator("models")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        for tag, name in v.items():
            check_model_tag(tag, f"study.models.{tag}")
            if not str(name).strip():
                raise ValueError(f"study.models.{tag}: empty model name or path")
        return v

    @model_validator(mode="after")
    def _default_is_the_root(self) -> StudyParams:
        if self.default in self.models:
            raise ValueError(
                f"study.models: {self.default!r} is study.default, the root pipeline's model (model.name_or_path); "
                "list only the other models"
            )
        for key in ("model", "study"):
            if key in self.settings:
                raise ValueError(f"study.settings.{key}: set by the study itself (study.models), not by settings")
        from telly.studies import OUTPUT_PATHS  # the one list of output keys (it imports this module)

        for key in OUTPUT_PATHS:
            section, *rest = key.split(".")
            node: Any = self.settings.get(section)
            for part in rest:
                node = node.get(part) if isinstance(node, dict) else None
            if node is not None:
                raise ValueError(
                    f"study.settings.{key}: an output path; every study model's outputs go under study.dir/<tag>/ "
                    "at the root pipeline's relative paths (studies/dvc.yaml names them)"
                )
        need = {"finetune": STUDY_MATRIX_KEYS, "probe": ("properties",), "similarity": ("tasks",)}
        if self.models:
            missing = [f"{s}.{k}" for s, keys in need.items() for k in keys if k not in self.settings.get(s, {})]
            if missing:
                raise ValueError(
                    f"study.settings: missing {', '.join(missing)} (studies/dvc.yaml's matrices read them)"
                )
        return self


STUDY_MATRIX_KEYS = ("task_names", "variants", "seeds", "deep_variants", "deep_seeds", "deep_task_names")


# Sections whose seed is the top-level ``seed`` unless they set their own: one seed for the pipeline.
INHERITED_SEEDS = ("prepare", "model", "pretrain", "tasks", "similarity", "tune")


class Params(Section):
    """The whole of params.yaml."""

    seed: int
    data: DataParams
    prepare: PrepareParams
    tracking: TrackingParams
    tasks: TasksParams | None = None
    model: ModelParams | None = None
    pretrain: PretrainParams | None = None
    extract: ExtractParams | None = None
    probe: ProbeParams | None = None
    finetune: FinetuneParams | None = None
    similarity: SimilarityParams | None = None
    tune: TuneParams | None = None
    report: ReportParams | None = None
    study: StudyParams | None = None
    study_model: str | None = Field(
        default=None, description="set by telly.studies only: the tag of the study model these params are for"
    )

    @model_validator(mode="before")
    @classmethod
    def _one_seed(cls, raw: Any) -> Any:
        """A section without a ``seed`` takes the top-level one (the finetune and probe seeds are their own)."""
        if not isinstance(raw, dict) or "seed" not in raw:
            return raw
        raw = dict(raw)
        for name in INHERITED_SEEDS:
            if isinstance(raw.get(name), dict) and raw[name].get("seed") is None:
                raw[name] = {**raw[name], "seed": raw["seed"]}
        return raw

    @property
    def model_tag(self) -> str:
        """The tag of the model these params study: a study model's, else study.default (``embedded``)."""
        if self.study_model is not None:
            return self.study_model
        return self.study.default if self.study is not None else "embedded"

    @property
    def finetune_model(self) -> str:
        """The encoder fine-tuning starts from: ``finetune.model`` when set, else ``model.name_or_path``."""
        if self.finetune is not None and self.finetune.model:
            return self.finetune.model
        if self.model is None:
            raise ConfigError("params: fine-tuning needs model.name_or_path (or finetune.model)")
        return self.model.name_or_path


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _lookup(raw: Any, loc: tuple[Any, ...]) -> Any:
    node = raw
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return "<missing>"
    return node


def format_validation_error(err: ValidationError, raw: Any, source: str) -> str:
    lines = [f"{source}: {err.error_count()} invalid setting(s):"]
    for e in err.errors():
        key = _dotted(e["loc"])
        if e["type"] == "missing":
            lines.append(f"  - {key}: missing (required)")
        elif e["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key (value {e['input']!r}); check the spelling")
        else:
            lines.append(f"  - {key}: value {_lookup(raw, e['loc'])!r} is not allowed: {e['msg']}")
    return "\n".join(lines)


def parse_params(raw: Any, source: str = "params") -> Params:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, raw, source)) from None


def load_params(path: str | Path = DEFAULT_PARAMS, *, guard_outputs: bool = False, model: str | None = None) -> Params:
    """Read and validate a params file; raise :class:`ConfigError` naming what is wrong.

    ``guard_outputs`` (a stage run by the CLI): every output this process writes afterwards first
    checks that the file still holds what was read now (:class:`ParamsGuard`). ``model``: the params of that
    model of the study (``telly --model <tag>``; :func:`telly.studies.model_params`)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: params file not found (run from the repository root or pass --params)")
    stat = path.stat()
    raw = read_params_file(path)
    if model is None:
        params = parse_params(raw, str(path))
    else:
        from telly.studies import model_params

        params = model_params(path, model)
    if guard_outputs:
        files.check_before_publish(ParamsGuard(path, raw, (stat.st_mtime_ns, stat.st_size)))
    return params


class ParamsGuard:
    """Fails when the params file no longer holds the values a stage read at its start.

    DVC records a stage's params in dvc.lock when the stage ends, from the file as it is then; an
    edit during the run would lock values the outputs were not computed with. Run before each
    output is put in place (telly.files), it stops the stage instead, naming the changed keys.
    An unchanged file (same modification time and size) is not read again."""

    def __init__(self, path: Path, raw: Any, stamp: tuple[int, int]):
        self.path, self.raw, self.stamp = path, raw, stamp

    def __call__(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            raise ConfigError(f"{self.path}: removed while this stage ran; its outputs were not written") from None
        if (stat.st_mtime_ns, stat.st_size) == self.stamp:
            return
        if changed := changed_keys(self.raw, read_params_file(self.path)):
            raise ConfigError(
                f"{self.path} changed while this stage ran: {', '.join(changed)}; the outputs were not written "
                "(DVC would record values they were not computed with). Run the stage again."
            )
        self.stamp = (stat.st_mtime_ns, stat.st_size)  # an edit of comments or layout only


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two parsed YAML documents (added and removed ones too)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [prefix or "<whole file>"]
    out = []
    for key in sorted(old.keys() | new.keys(), key=str):
        name = f"{prefix}.{key}" if prefix else str(key)
        if key not in old or key not in new:
            out.append(name)
        else:
            out += changed_keys(old[key], new[key], name)
    return out


PROFILE_BASE = "extends"  # a profile's key naming the params file it overlays (relative to the profile)


def read_params_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> Any:
    """A params file's settings. A profile (``extends: <params file>``) is that file with the profile's values laid
    over it (:func:`overlay`), so a profile holds only what it changes (profiles/, tests/fixtures/params-tiny.yaml)."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict) or PROFILE_BASE not in raw:
        return raw
    base = (path.parent / str(raw.pop(PROFILE_BASE))).resolve()
    if base in _seen or not base.is_file():
        why = "extends itself" if base in _seen else "does not exist"
        raise ConfigError(f"{path}: {PROFILE_BASE}: {base} {why}")
    return overlay(read_params_file(base, (*_seen, base)), raw)


def overlay(base: Any, changes: Any) -> Any:
    """``changes`` laid over ``base``: mappings merge key by key; any other value (lists too) replaces."""
    if not (isinstance(base, dict) and isinstance(changes, dict)):
        return changes
    return {**base, **{k: overlay(base[k], v) if k in base else v for k, v in changes.items()}}


def read_yaml(path: Path) -> Any:
    """A YAML file's content; bad YAML is a :class:`ConfigError` naming the file and the line."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
