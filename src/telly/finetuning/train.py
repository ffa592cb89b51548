"""Fine-tune one variant (Base, Telly-K, a PEFT method or both) on one task, and account for its cost.

The loop, in the paper's terms: AdamW with a linear schedule, ``epochs`` passes
over the training set, the validation metric after each epoch, the best-on-valid
encoder kept and evaluated once on test. Per run we record what RQ3 compares:
trainable parameters (both conventions), wall time per epoch, epochs and time to
convergence, and peak memory.

Convergence rule (the paper's is unknown): a run has converged at the first
epoch whose validation score is within ``convergence_tolerance`` (relative) of
the best validation score of the run. Time to convergence = cache build time
(Telly-K with caching) + the training time of epochs 1..that epoch.

After every epoch the full training state is saved under ``checkpoint_dir``; a
rerun with the same settings resumes from it and ends with the same result.
``on_epoch(epoch, record)`` runs after that save (Optuna reports and prunes there).

Data-parallel: the same loop runs under ``accelerate launch`` or ``torchrun``, one
process per device. Accelerate wraps the model in DDP (gradients averaged across
processes) and shards the loaders; ``batch_size`` stays the *global* batch (each of
N processes takes batch_size / N of it), so the steps, the schedule and the result
are those of one process. Evaluation gathers every process's outputs, so each
process computes the metrics of the whole split; only the main process writes
checkpoints, the metrics json and the MLflow run. ``on_epoch`` runs on every
process, with the same record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from telly import tasks, variants
from telly.config import FinetuneParams, FinetuneTaskParams, Params
from telly.errors import NonFiniteError, TellyError
from telly.files import atomic_dir, atomic_path
from telly.finetuning.caching import HiddenCache, frozen_caches
from telly.finetuning.data import (
    Tokens,
    collate,
    index_loader,
    lm_labels,
    load_examples,
    load_split,
)
from telly.finetuning.evaluate import Codebase, codebase_path, evaluate, load_codebase
from telly.finetuning.examples import write_examples
from telly.finetuning.heads import TaskModel
from telly.jsonl import write_json
from telly.runtime import cpu_has_bf16
from telly.tracking import resume_tags, start_run

log = logging.getLogger(__name__)

OnEpoch = Callable[[int, dict[str, Any]], None]


def autocast(device: torch.device, bf16: bool, training: bool) -> Any:
    """bf16 autocast where ``finetune.bf16`` asks for it: on CUDA always; on a CPU with native bf16
    (AVX512-BF16) while training only, so CPU evaluation and decoding stay fp32 (docs/benchmarks.md)."""
    if not bf16:
        return nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if training and device.type == "cpu" and cpu_has_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


@dataclass
class RunResult:
    """Everything one run reports; ``to_json()`` is the run's metrics file."""

    task: str
    variant: str
    k: int | None
    test: dict[str, float]
    best_epoch: int
    convergence_epoch: int
    epochs: list[dict[str, Any]]
    cost: dict[str, Any]
    settings: dict[str, Any]
    checkpoint: str
    system: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _linear_factor(step: int, *, warmup: int, total: int) -> float:
    if step < warmup:
        return float(step) / float(max(1, warmup))
    return max(0.0, float(total - step) / float(max(1, total - warmup)))


def train_variant(
    params: Params,
    task: str,
    variant: str,
    *,
    on_epoch: OnEpoch | None = None,
    output_dir: str | Path | None = None,
    results_path: str | Path | None = None,
    seed: int | None = None,
) -> RunResult:
    """Fine-tune ``variant`` on ``task`` with the settings of ``params`` (change them with :func:`override`);
    ``output_dir`` and ``results_path`` move where the model and the metrics file go; ``seed`` is the training
    seed (default: the first of ``finetune.seeds``), each seed a run of its own on the same rows."""
    run = setup(params, task, variant, output_dir, results_path, seed)
    tracking = (
        start_run(
            params,
            "finetune",
            f"{task}/{variant}/seed{run.seed}",
            nested=_mlflow_active(),
            tags=run.tags,
            log_params=run.log,
        )
        if run.main
        else nullcontext()
    )
    with tracking:
        mlflow = _mlflow(run.main)
        mlflow.log_params(
            {
                "trainable_params": run.counts.trainable,
                "paper_params": run.counts.paper,
                "total_params": run.counts.total,
                "resumed_from_epoch": run.start_epoch - 1,
            }
        )
        fit(run, mlflow, on_epoch)
        result = test(run)
        mlflow.log_metrics({f"test_{n}": v for n, v in result.test.items()})
        mlflow.log_metrics({n: float(v) for n, v in result.cost.items()})
    publish(run, result)
    return result


def override(params: Params, task: str | None = None, **changes: Any) -> Params:
    """``params`` with fine-tuning settings changed: keys of ``finetune.tasks.<task>`` (learning_rate, epochs,
    sizes, ...) or of ``finetune`` (cache_frozen, checkpoint_dir, ...). The one way callers (tuning, the
    paper-regime runs, tests) change what a run does."""
    finetune = _settings(params)
    task_keys = {k: v for k, v in changes.items() if k in FinetuneTaskParams.model_fields}
    other = {k: v for k, v in changes.items() if k not in task_keys}
    unknown = [k for k in other if k not in FinetuneParams.model_fields]
    if unknown or (task_keys and task is None):
        raise TellyError(f"override: {unknown or list(task_keys)} are not finetune settings (or name no task)")
    if task_keys:
        cfg = _task_settings(finetune, task)
        tasks = finetune.tasks.model_copy(update={task: cfg.model_copy(update=task_keys)})
        other["tasks"] = tasks
    return params.model_copy(update={"finetune": finetune.model_copy(update=other)})


# ------------------------------------------------------------------- setup


@dataclass
class Run:
    """Everything one run needs, built by :func:`setup`: the model, its data, the optimiser and the state."""

    task: str
    variant: str
    k: int | None
    seed: int
    settings: FinetuneParams
    cfg: FinetuneTaskParams
    accelerator: Any
    encoder: Any
    tok: Tokens
    counts: Any
    model: torch.nn.Module  # what trains: DDP-wrapped when data-parallel
    task_model: TaskModel  # unwrapped: evaluation and checkpoints
    train: list[dict]
    valid: list[dict]
    test: list[dict]
    valid_caches: dict[str, HiddenCache]
    codebase: Codebase | None  # code search's test: the codebase every query is ranked against
    shuffle: torch.Generator
    loaders: dict[str, Any]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    cache_seconds: float
    cache_bytes: int
    output_dir: Path
    results_path: Path
    state_dir: Path
    test_ids: list[str]  # row ids of ``test``, for the per-example scores
    fingerprint: str
    log: dict[str, Any]  # the settings of the run, logged and saved
    tags: dict[str, str]
    system: dict[str, str]
    adapted: Any = None  # the peft.PeftModel around the encoder (LoRA, (IA)3): saves the adapters
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"score": float("-inf"), "epoch": 0})
    start_epoch: int = 1
    test_examples: list[dict[str, Any]] = field(default_factory=list)  # per-example test scores, in test order

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def autocast(self, training: bool = False) -> Any:
        return autocast(self.device, self.settings.bf16, training)

    def evaluate(self, split: str, **kwargs: Any) -> dict[str, float]:
        examples = {"valid": self.valid, "test": self.test}[split]
        with self.autocast():
            return evaluate(
                self.task_model,
                examples,
                self.tok,
                self.encoder.tokenizer,
                batches=self.loaders[split],
                beam_size=self.cfg.beam_size,
                max_new_tokens=self.cfg.max_target_length,
                gather=self.accelerator.gather_for_metrics,
                **kwargs,
            )


def setup(
    params: Params,
    task: str,
    variant: str,
    output_dir: str | Path | None,
    results_path: str | Path | None,
    seed: int | None = None,
) -> Run:
    """Seed, load and freeze the encoder, tokenize the splits, cache the frozen prefix, build the
    optimiser and schedule, and pick up a saved state of the same settings."""
    from telly.runtime import set_seed

    settings = _settings(params)
    cfg = _task_settings(settings, task)
    seed = settings.first_seed if seed is None else seed
    set_seed(seed)
    accelerator = _accelerator(settings, task, cfg)
    device = accelerator.device
    encoder, parsed, counts, adapted, method = _encoder(params, settings, cfg, task, variant, device, seed)
    k = parsed.k
    tok = Tokens.of(encoder.tokenizer)
    data = _splits(settings, cfg, task, encoder, tok)
    # Frozen-prefix caching (caching.py): hidden state K of every training (and, for the encoder tasks,
    # valid) sequence, reused from finetune.cache_dir when built before; None over the budget -> uncached.
    cached = bool(settings.cache_frozen and k is not None)
    caches = frozen_caches(encoder.model, k, data.train, data.valid, task, tok.pad, settings) if cached else None
    cached = caches is not None
    cache_dropout = settings.cache_dropout if cached else 0.0
    task_model = TaskModel(encoder.model, task, k, cache_dropout).to(device)
    log_settings = _log_settings(params, settings, cfg, task, variant, k, seed, encoder, data, method)
    log_settings |= {"cache_frozen": cached, "cache_dropout": cache_dropout}
    fingerprint = hashlib.sha256(json.dumps(log_settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    train_caches, valid_caches = (caches.get("train"), caches.get("valid")) if caches else ({}, {})
    shuffle = torch.Generator()  # the training order, re-seeded every epoch
    loaders, optimizer, scheduler = _optimisation(
        settings, cfg, task, task_model, data, tok, train_caches, shuffle, method
    )
    output_dir, results_path, state_dir = _paths(settings, task, variant, seed, parsed, output_dir, results_path)
    with accelerator.main_process_first():  # it discards a stale state before the others look
        resumed = _resume(state_dir, fingerprint, task_model, optimizer, scheduler, device)
    model, optimizer, *prepared = accelerator.prepare(task_model, optimizer, *loaders.values())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    system = _system_tags(device, accelerator.num_processes)
    run = Run(
        task=task,
        variant=variant,
        k=k,
        seed=seed,
        settings=settings,
        cfg=cfg,
        accelerator=accelerator,
        encoder=encoder,
        tok=tok,
        counts=counts,
        model=model,
        task_model=task_model,
        train=data.train,
        valid=data.valid,
        test=data.test,
        valid_caches=valid_caches,
        codebase=data.codebase,
        shuffle=shuffle,
        loaders=dict(zip(loaders, prepared)),
        optimizer=optimizer,
        scheduler=scheduler,
        cache_seconds=caches.seconds if caches else 0.0,
        cache_bytes=caches.nbytes if caches else 0,
        output_dir=output_dir,
        results_path=results_path,
        state_dir=state_dir,
        test_ids=data.test_ids,
        fingerprint=fingerprint,
        log=log_settings,
        tags={
            "telly.task": task,
            "telly.variant": variant,
            "telly.seed": str(seed),
            "telly.family": variants.family(variant),
            "telly.cache_frozen": str(cached),
            **system,
            # a killed predecessor of this run (same state folder and settings) is marked KILLED
            **resume_tags(f"{state_dir}:{fingerprint}", resumed=resumed is not None),
        },
        system=system,
        adapted=adapted,
    )
    if resumed is not None:
        run.history, run.best, run.start_epoch = resumed["history"], resumed["best"], resumed["epoch"] + 1
        log.info("%s/%s: resuming after epoch %d from %s", task, variant, resumed["epoch"], state_dir)
    return run


def _accelerator(settings: FinetuneParams, task: str, cfg: FinetuneTaskParams) -> Any:
    """One process: plain PyTorch on the chosen device; several (torchrun, accelerate launch): DDP."""
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs

    from telly.runtime import device as pick_device

    accelerator = Accelerator(
        cpu=pick_device(settings.device).type == "cpu",
        dataloader_config=DataLoaderConfiguration(split_batches=True),  # batch sizes are global
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],  # the pooler: trainable, unused
    )
    _check_batches(task, cfg.batch_size, settings.eval_batch_size, accelerator.num_processes)
    return accelerator


@dataclass
class _Method:
    """What a PEFT method changes in a run: its learning rate and the settings it logs."""

    learning_rate: float
    settings: dict[str, Any]


def _encoder(
    params: Params,
    settings: FinetuneParams,
    cfg: FinetuneTaskParams,
    task: str,
    variant: str,
    device: torch.device,
    seed: int,
) -> tuple[Any, variants.Variant, Any, Any, _Method]:
    """The encoder with Telly-K frozen and, for a method variant, its adapters on layers K..L-1 (the prefix stays
    cacheable)."""
    from telly.models import peft_methods
    from telly.models.freezing import freeze_bottom
    from telly.models.loading import load_encoder

    encoder = load_encoder(params.finetune_model, device=device, seed=seed)
    parsed = variants.parse(variant, encoder.num_layers)
    _check_lengths(task, cfg, encoder.max_length)
    counts = freeze_bottom(encoder.model, parsed.k)
    adapted, method = None, _Method(cfg.learning_rate, {})
    if parsed.method is not None:
        lora = peft_methods.LoraSettings(alpha=settings.peft.lora_alpha, dropout=settings.peft.lora_dropout)
        adapted, counts = peft_methods.apply(encoder.model, parsed, lora)
        scale = settings.peft.learning_rate_scale
        method = _Method(cfg.learning_rate * scale, {"method": parsed.method_name, "learning_rate_scale": scale})
        if parsed.rank is not None:
            method.settings |= {"lora_alpha": lora.alpha, "lora_dropout": lora.dropout}
    return encoder, parsed, counts, adapted, method


@dataclass
class _Splits:
    train: list[dict]
    valid: list[dict]
    test: list[dict]
    test_ids: list[str]  # the per-example scores' keys (the same rows as ``test``)
    codebase: Codebase | None


def _splits(settings: FinetuneParams, cfg: FinetuneTaskParams, task: str, encoder: Any, tok: Tokens) -> _Splits:
    """The task's rows, the same for every seed (``finetune.data_seed``), tokenized once under cache_dir/tokens."""
    examples = {
        split: load_examples(
            settings.tasks_dir,
            task,
            split,
            size,
            settings.data_seed,
            encoder.tokenizer,
            tok,
            cfg.max_source_length,
            cfg.max_target_length,
            cache_dir=settings.cache_dir,
            min_rows=2,
        )
        for split, size in (("train", cfg.train_size), ("valid", cfg.valid_size), ("test", cfg.test_size))
    }
    test_rows = load_split(settings.tasks_dir, task, "test", cfg.test_size, settings.data_seed, min_rows=2)
    codebase = None
    if tasks.get(task).head == "search" and codebase_path(settings.tasks_dir, task).exists():
        # the paper's protocol: test queries ranked against the codebase (valid: among its own codes)
        path = codebase_path(settings.tasks_dir, task)
        codebase = load_codebase(path, test_rows, encoder.tokenizer, tok, cfg.max_source_length)
    return _Splits(examples["train"], examples["valid"], examples["test"], [r["id"] for r in test_rows], codebase)


def _log_settings(
    params: Params,
    settings: FinetuneParams,
    cfg: FinetuneTaskParams,
    task: str,
    variant: str,
    k: int | None,
    seed: int,
    encoder: Any,
    data: _Splits,
    method: _Method,
) -> dict[str, Any]:
    """The settings a run logs and is fingerprinted by (a saved state of other settings is not resumed)."""
    logged = {
        "task": task,
        "variant": variant,
        "k": k,
        "lr": method.learning_rate,
        "epochs": cfg.epochs,
        "cache_frozen": None,  # filled in once the cache is built (or refused over its budget)
        "cache_dropout": None,
        "model": params.finetune_model,
        "architecture": _architecture(encoder),
        "seed": seed,
        **cfg.model_dump(exclude={"learning_rate", "epochs"}),
        "weight_decay": settings.weight_decay,
        "warmup_fraction": settings.warmup_fraction,
        "max_grad_norm": settings.max_grad_norm,
        "n_train": len(data.train),
        "n_valid": len(data.valid),
        "n_test": len(data.test),
        **method.settings,
    }
    if data.codebase is not None:
        logged["n_codebase"] = len(data.codebase.codes)
    return logged


def _optimisation(
    settings: FinetuneParams,
    cfg: FinetuneTaskParams,
    task: str,
    task_model: torch.nn.Module,
    data: _Splits,
    tok: Tokens,
    train_caches: dict[str, HiddenCache],
    shuffle: torch.Generator,
    method: _Method,
) -> tuple[dict[str, Any], torch.optim.Optimizer, Any]:
    """The train / valid / test loaders, the optimiser and the linear schedule (warm-up, then decay to 0)."""
    from transformers import get_linear_schedule_with_warmup

    train = data.train
    loaders = {
        "train": index_loader(
            len(train),
            cfg.batch_size,
            shuffle=shuffle,
            collate_fn=lambda idx: make_batch(task, [train[i] for i in idx], idx, tok.pad, train_caches),
            lengths=[example_length(task, ex) for ex in train] if cfg.group_by_length else None,
        ),
        "valid": index_loader(len(data.valid), settings.eval_batch_size),
        "test": index_loader(len(data.test), settings.eval_batch_size),
    }
    optimizer = _optimizer(task_model, method.learning_rate, settings.weight_decay)
    total_steps = len(loaders["train"]) * cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_fraction * total_steps), total_steps)
    return loaders, optimizer, scheduler


def _paths(
    settings: FinetuneParams,
    task: str,
    variant: str,
    seed: int,
    parsed: variants.Variant,
    output_dir: str | Path | None,
    results_path: str | Path | None,
) -> tuple[Path, Path, Path]:
    """The run's model folder, results file and resumable state: one per seed, <root>/<task>/<variant>/seed<S>."""
    output_dir = Path(output_dir) if output_dir else variants.run_dir(settings.output_dir, task, variant, seed)
    results_dir = settings.results_dir if parsed.method is None else settings.peft.results_dir
    if not results_path:
        results_path = variants.run_dir(results_dir, task, variant, seed).with_suffix(".json")
    return output_dir, Path(results_path), variants.run_dir(settings.checkpoint_dir, task, variant, seed)


# --------------------------------------------------------------------- fit


def fit(run: Run, mlflow: Any, on_epoch: OnEpoch | None) -> None:
    """The epochs: train, score on valid, keep the best encoder and save the state to resume from."""
    for record in run.history:  # a resumed run still shows the whole curve
        _log_epoch(mlflow, record)
    for epoch in range(run.start_epoch, run.cfg.epochs + 1):
        losses, train_seconds, train_cpu_seconds = train_epoch(run, epoch)
        t0 = time.perf_counter()
        valid_metrics = run.evaluate("valid", caches=run.valid_caches)
        record = {
            "epoch": epoch,
            "train_loss": sum(losses) / len(losses),
            "train_seconds": train_seconds,
            "train_cpu_seconds": train_cpu_seconds,
            "eval_seconds": time.perf_counter() - t0,
            "lr": run.scheduler.get_last_lr()[0],
            **{f"valid_{name}": value for name, value in valid_metrics.items()},
        }
        run.history.append(record)
        improved = valid_metrics["score"] > run.best["score"]
        if improved:
            run.best = {"score": valid_metrics["score"], "epoch": epoch, **valid_metrics}
        if run.main:  # one writer: every process holds the same weights
            if improved:
                _save_weights(run.encoder.model, run.state_dir / "best.safetensors")
            _save_state(run, epoch)
        _log_epoch(mlflow, record)
        log.info(
            "%s/%s epoch %d: loss %.4f, valid score %.4f, %.1f s",
            run.task,
            run.variant,
            epoch,
            record["train_loss"],
            valid_metrics["score"],
            train_seconds,
        )
        if on_epoch is not None:
            on_epoch(epoch, record)


def train_epoch(run: Run, epoch: int) -> tuple[list[float], float, float]:
    """One pass over the training set: the losses, wall seconds and CPU seconds it took."""
    run.model.train()
    run.shuffle.manual_seed(run.seed + epoch)  # same order after a resume
    losses = []
    trainable = [p for p in run.model.parameters() if p.requires_grad]
    _sync(run.device)
    t0, cpu0 = time.perf_counter(), time.process_time()
    desc = f"{run.task}/{run.variant} epoch {epoch}"
    for step, batch in enumerate(tqdm(run.loaders["train"], desc=desc, leave=False, disable=not run.main), 1):
        with run.autocast(training=True):
            loss = run.model(batch)
        losses.append(run.accelerator.reduce(loss.detach(), "mean").item())  # every process sees the same value
        if not math.isfinite(losses[-1]):
            _stop_non_finite(run, epoch, step, losses[-1])
        run.optimizer.zero_grad(set_to_none=True)
        run.accelerator.backward(loss)  # DDP: gradients averaged across processes
        run.accelerator.clip_grad_norm_(trainable, run.settings.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
    _sync(run.device)
    # CPU seconds are robust to other jobs on a shared CPU
    return losses, time.perf_counter() - t0, time.process_time() - cpu0


def _stop_non_finite(run: Run, epoch: int, step: int, loss: float) -> None:
    """A NaN or infinite loss: stop before the step, keep the state saved after the last epoch."""
    kept = (
        f"the state saved after epoch {epoch - 1} is kept in {run.state_dir} (a rerun resumes from it)"
        if (run.state_dir / "last.pt").exists()
        else "no epoch was saved"
    )
    raise NonFiniteError(
        f"{run.task}/{run.variant} seed {run.seed}: training loss is {loss} at epoch {epoch}, step {step}; "
        f"stopped, nothing published; {kept}. A lower learning_rate or max_grad_norm may help"
    )


# -------------------------------------------------------------------- test


def test(run: Run) -> RunResult:
    """The best-on-valid encoder evaluated once on test, and the run's cost (RQ3's columns)."""
    run.accelerator.wait_for_everyone()  # the main process has written best.safetensors
    _load_weights(run.encoder.model, run.state_dir / "best.safetensors")
    test_metrics = run.evaluate(
        "test",
        threshold=run.best.get("threshold"),
        codebase=run.codebase,
        codebase_batch_size=run.settings.eval_batch_size,
    )
    test_metrics.pop("score")
    run.test_examples = test_metrics.examples
    history = run.history
    conv_epoch = convergence_epoch([r["valid_score"] for r in history], run.settings.convergence_tolerance)
    train_times = [r["train_seconds"] for r in history]
    cost = {
        "trainable_params": run.counts.trainable,
        "paper_params": run.counts.paper,
        "total_params": run.counts.total,
        "epoch_seconds": sum(train_times) / len(train_times),
        "epoch_cpu_seconds": sum(r["train_cpu_seconds"] for r in history) / len(history),
        "eval_seconds": sum(r["eval_seconds"] for r in history) / len(history),
        "cache_seconds": run.cache_seconds,
        "cache_bytes": run.cache_bytes,
        "epochs_run": len(history),
        "epochs_to_convergence": conv_epoch,
        "time_to_convergence": run.cache_seconds + sum(train_times[:conv_epoch]),
        "peak_memory_mb": _peak_memory_mb(run.device),
    }
    return RunResult(
        task=run.task,
        variant=run.variant,
        k=run.k,
        test=test_metrics,
        best_epoch=run.best["epoch"],
        convergence_epoch=conv_epoch,
        epochs=history,
        cost=cost,
        settings=run.log,
        checkpoint=str(run.output_dir),
        system=run.system,
    )


# ----------------------------------------------------------------- publish


def publish(run: Run, result: RunResult) -> None:
    """The best encoder as a ``save_pretrained`` folder and the metrics file; the resume state goes.

    With a peft method, the adapters alone go to ``<output_dir>/adapter`` (peft's ``save_pretrained``,
    loadable onto the starting encoder with ``peft_methods.load_adapter``) and the folder itself holds
    the encoder with them merged in, so every stage that loads an encoder folder reads it unchanged."""
    from telly.models import peft_methods

    if run.main:
        with atomic_dir(run.output_dir) as tmp:
            model = run.encoder.model
            if run.adapted is not None:
                peft_methods.save_adapter(run.adapted, Path(tmp) / peft_methods.ADAPTER_DIR)
                model = peft_methods.merged(run.adapted)  # the run is over: fold the adapters in
            model.save_pretrained(tmp)
            run.encoder.tokenizer.save_pretrained(tmp)
        write_json(run.results_path, result.to_json())
        write_examples(run.results_path, run.test_ids, run.test_examples)
        shutil.rmtree(run.state_dir, ignore_errors=True)  # finished: nothing left to resume
    run.accelerator.wait_for_everyone()  # every process returns once the results exist


def convergence_epoch(valid_scores: list[float], tolerance: float) -> int:
    """First epoch (1-based) whose score is within ``tolerance`` (relative) of the run's best."""
    best = max(valid_scores)
    bar = best - tolerance * abs(best)
    return next(i for i, s in enumerate(valid_scores, start=1) if s >= bar)


# ------------------------------------------------------------------ batches


def example_length(task: str, example: dict) -> int:
    """Tokens of one training example, all its sequences together: what its batch pads to."""
    return sum(len(example[name].ids) for name in tasks.get(task).sequence_fields)


def make_batch(task: str, examples: list[dict], idx: list[int], pad_id: int, caches: dict[str, HiddenCache]) -> dict:
    """Collate examples (and their cached hidden states, when cached) into the head's inputs."""

    def field_batch(name: str) -> dict[str, torch.Tensor]:
        hidden = [caches[name][i] for i in idx] if name in caches else None
        return collate([ex[name] for ex in examples], pad_id, hidden)

    spec = tasks.get(task)
    if not spec.generates:
        batch = {name: field_batch(name) for name in spec.sequence_fields}
        if "label" in spec.fields:
            batch["label"] = torch.tensor([ex["label"] for ex in examples])
        return batch
    seq = field_batch("seq")
    return {"seq": seq, "labels": lm_labels(examples, seq["ids"].shape[1])}


# --------------------------------------------------------------- internals


def _settings(params: Params) -> FinetuneParams:
    if params.finetune is None:
        raise TellyError("params: the finetune section is missing (see params.yaml and docs/finetuning.md)")
    return params.finetune


def _task_settings(settings: FinetuneParams, task: str) -> FinetuneTaskParams:
    tasks.get(task)  # an unknown name is an error listing the tasks
    return getattr(settings.tasks, task)


def _check_batches(task: str, batch_size: int, eval_batch_size: int, processes: int) -> None:
    """Batch sizes are global: N data-parallel processes each take an equal 1/N of every batch."""
    for key, size in ((f"tasks.{task}.batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if size % processes:
            raise TellyError(
                f"finetune.{key} = {size}: it is the global batch, split evenly over the {processes} processes; "
                f"use a multiple of {processes}"
            )


def _check_lengths(task: str, cfg: Any, model_max: int) -> None:
    need = tasks.get(task).max_tokens(cfg.max_source_length, cfg.max_target_length)
    if need > model_max:
        raise TellyError(
            f"finetune.tasks.{task}: max_source_length + max_target_length = {need} tokens, "
            f"but the model embeds at most {model_max} positions"
        )


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, no decay on biases and LayerNorm weights (UniXcoder's groups)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if "bias" in name or "LayerNorm.weight" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, eps=1e-8)


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device) for k, v in load_file(str(path)).items()})


def _save_state(run: Run, epoch: int) -> None:
    """Everything needed to go on after ``epoch``: weights, optimiser, schedule, RNG, the curve so far."""
    state = {
        "fingerprint": run.fingerprint,
        "epoch": epoch,
        "model": {k: v.detach().cpu() for k, v in run.task_model.state_dict().items()},
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "history": json.dumps(run.history),
        "best": json.dumps(run.best),
    }
    with atomic_path(run.state_dir / "last.pt") as tmp:
        torch.save(state, tmp)


def _resume(state_dir: Path, fingerprint: str, model, optimizer, scheduler, device) -> dict | None:
    path = state_dir / "last.pt"
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file
        raise TellyError(f"{path}: cannot read the saved training state ({err}); delete it to start over") from None
    if state.get("fingerprint") != fingerprint:
        log.warning("%s: saved state is from other settings; starting over", path)
        shutil.rmtree(state_dir, ignore_errors=True)
        return None
    try:
        model.load_state_dict({k: v.to(device) for k, v in state["model"].items()})
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise TellyError(
            f"{path}: the saved state does not fit this model (another architecture?): {str(err).splitlines()[0]}; "
            "delete it to start over"
        ) from None
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return {"epoch": state["epoch"], "history": json.loads(state["history"]), "best": json.loads(state["best"])}


def _architecture(encoder: Any) -> str:
    cfg = encoder.model.config
    return f"{type(encoder.model).__name__}-L{encoder.num_layers}-H{encoder.hidden_size}-V{cfg.vocab_size}"


def _log_epoch(mlflow: Any, record: dict[str, Any]) -> None:
    mlflow.log_metrics({k: float(v) for k, v in record.items() if k != "epoch"}, step=record["epoch"])


def _mlflow_active() -> bool:
    import mlflow

    return mlflow.active_run() is not None


class _NoTracking:
    """MLflow's logging calls, doing nothing: the processes other than the main one."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def _mlflow(main: bool) -> Any:
    """MLflow on the main process (one run per launch), a silent stand-in on the others."""
    if not main:
        return _NoTracking()
    import mlflow

    return mlflow


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated by torch in this run. CPU: the process's peak resident set (ru_maxrss)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _system_tags(device: torch.device, processes: int) -> dict[str, str]:
    tags = {
        "system.device": device.type,
        "system.processes": str(processes),  # data-parallel processes; times and memory are the main one's
        "system.torch": torch.__version__,
        "system.threads": str(torch.get_num_threads()),
        "system.cpu": platform.processor() or platform.machine(),
        "system.cpu_count": str(os.cpu_count()),
    }
    if device.type == "cuda":
        tags["system.gpu"] = torch.cuda.get_device_name(device)
    return tags
