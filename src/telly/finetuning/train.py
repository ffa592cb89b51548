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
import os
import platform
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from telly import tasks, variants
from telly.config import FinetuneParams, FinetuneTaskParams, Params
from telly.errors import TellyError
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


def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' ``get_linear_schedule_with_warmup``, factor for factor (tested against it): importing
    ``transformers.optimization`` pulls in its trainer and peft, ~1.8 s of every stage's start."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(_linear_factor, warmup=warmup, total=total))


# ----------------------------------------------------------------- the run


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
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs

    from telly.models import peft_methods
    from telly.models.freezing import freeze_bottom
    from telly.models.loading import load_encoder
    from telly.runtime import device as pick_device
    from telly.runtime import set_seed

    settings = _settings(params)
    cfg = _task_settings(settings, task)
    spec = tasks.get(task)
    seed = settings.first_seed if seed is None else seed
    set_seed(seed)
    accelerator = Accelerator(  # one process: plain PyTorch on the chosen device
        cpu=pick_device(settings.device).type == "cpu",
        dataloader_config=DataLoaderConfiguration(split_batches=True),  # batch sizes are global
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],  # the pooler: trainable, unused
    )
    _check_batches(task, cfg.batch_size, settings.eval_batch_size, accelerator.num_processes)
    device = accelerator.device
    encoder = load_encoder(params.finetune_model, device=device, seed=seed)
    parsed = variants.parse(variant, encoder.num_layers)
    k = parsed.k
    _check_lengths(task, cfg, encoder.max_length)
    counts = freeze_bottom(encoder.model, k)
    adapted, method_settings, learning_rate = None, {}, cfg.learning_rate
    if parsed.method is not None:  # after Telly-K: the method goes on layers K..L-1 only, the prefix stays cacheable
        lora = peft_methods.LoraSettings(alpha=settings.peft.lora_alpha, dropout=settings.peft.lora_dropout)
        adapted, counts = peft_methods.apply(encoder.model, parsed, lora)
        learning_rate = cfg.learning_rate * settings.peft.learning_rate_scale
        method_settings = {"method": parsed.method_name, "learning_rate_scale": settings.peft.learning_rate_scale}
        if parsed.rank is not None:
            method_settings |= {"lora_alpha": lora.alpha, "lora_dropout": lora.dropout}
    cached = bool(settings.cache_frozen and k is not None)
    tok = Tokens.of(encoder.tokenizer)

    splits = {}
    codebase: Codebase | None = None
    for split, size in (("train", cfg.train_size), ("valid", cfg.valid_size), ("test", cfg.test_size)):
        splits[split] = load_examples(  # same rows for every seed; tokenized once under cache_dir/tokens
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
    train, valid, test_examples = splits["train"], splits["valid"], splits["test"]
    test_rows = load_split(settings.tasks_dir, task, "test", cfg.test_size, settings.data_seed, min_rows=2)
    test_ids = [r["id"] for r in test_rows]  # the per-example scores' keys (the same rows as test_examples)
    if spec.head == "search" and codebase_path(settings.tasks_dir, task).exists():
        # the paper's protocol: test queries ranked against the codebase (valid: among its own codes)
        path = codebase_path(settings.tasks_dir, task)
        codebase = load_codebase(path, test_rows, encoder.tokenizer, tok, cfg.max_source_length)
    # Frozen-prefix caching (caching.py): hidden state K of every training (and, for the encoder tasks,
    # valid) sequence, reused from finetune.cache_dir when built before; None over the budget -> uncached.
    caches = frozen_caches(encoder.model, k, train, valid, task, tok.pad, settings) if cached else None
    cached = caches is not None

    cache_dropout = settings.cache_dropout if cached else 0.0
    task_model = TaskModel(encoder.model, task, k, cache_dropout).to(device)
    log_settings = {
        "task": task,
        "variant": variant,
        "k": k,
        "lr": learning_rate,
        "epochs": cfg.epochs,
        "cache_frozen": cached,
        "cache_dropout": cache_dropout,
        "model": params.finetune_model,
        "architecture": _architecture(encoder),
        "seed": seed,
        **cfg.model_dump(exclude={"learning_rate", "epochs"}),
        "weight_decay": settings.weight_decay,
        "warmup_fraction": settings.warmup_fraction,
        "max_grad_norm": settings.max_grad_norm,
        "n_train": len(train),
        "n_valid": len(valid),
        "n_test": len(test_examples),
        **method_settings,
    }
    if codebase is not None:
        log_settings["n_codebase"] = len(codebase.codes)
    fingerprint = hashlib.sha256(json.dumps(log_settings, sort_keys=True, default=str).encode()).hexdigest()[:16]

    train_caches, valid_caches = (caches.get("train"), caches.get("valid")) if caches else ({}, {})
    cache_seconds, cache_bytes = (caches.seconds, caches.nbytes) if caches else (0.0, 0)

    shuffle = torch.Generator()  # the training order, re-seeded every epoch
    train_loader = index_loader(
        len(train),
        cfg.batch_size,
        shuffle=shuffle,
        collate_fn=lambda idx: make_batch(task, [train[i] for i in idx], idx, tok.pad, train_caches),
    )
    valid_loader = index_loader(len(valid), settings.eval_batch_size)
    test_loader = index_loader(len(test_examples), settings.eval_batch_size)
    optimizer = _optimizer(task_model, learning_rate, settings.weight_decay)
    total_steps = len(train_loader) * cfg.epochs
    scheduler = linear_schedule(optimizer, int(settings.warmup_fraction * total_steps), total_steps)

    # one folder per seed: <root>/<task>/<variant>/seed<S>[.json]
    output_dir = Path(output_dir) if output_dir else variants.run_dir(settings.output_dir, task, variant, seed)
    results_dir = settings.results_dir if parsed.method is None else settings.peft.results_dir
    results_path = (
        Path(results_path) if results_path else variants.run_dir(results_dir, task, variant, seed).with_suffix(".json")
    )
    state_dir = variants.run_dir(settings.checkpoint_dir, task, variant, seed)
    with accelerator.main_process_first():  # it discards a stale state before the others look
        resumed = _resume(state_dir, fingerprint, task_model, optimizer, scheduler, device)
    model, optimizer, train_loader, valid_loader, test_loader = accelerator.prepare(
        task_model, optimizer, train_loader, valid_loader, test_loader
    )
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
        train=train,
        valid=valid,
        test=test_examples,
        valid_caches=valid_caches,
        codebase=codebase,
        shuffle=shuffle,
        loaders={"train": train_loader, "valid": valid_loader, "test": test_loader},
        optimizer=optimizer,
        scheduler=scheduler,
        cache_seconds=cache_seconds,
        cache_bytes=cache_bytes,
        output_dir=output_dir,
        results_path=results_path,
        state_dir=state_dir,
        test_ids=test_ids,
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
    for batch in tqdm(run.loaders["train"], desc=desc, leave=False, disable=not run.main):
        with run.autocast(training=True):
            loss = run.model(batch)
        run.optimizer.zero_grad(set_to_none=True)
        run.accelerator.backward(loss)  # DDP: gradients averaged across processes
        run.accelerator.clip_grad_norm_(trainable, run.settings.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        losses.append(run.accelerator.reduce(loss.detach(), "mean").item())
    _sync(run.device)
    # CPU seconds are robust to other jobs on a shared CPU
    return losses, time.perf_counter() - t0, time.process_time() - cpu0


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
