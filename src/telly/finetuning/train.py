"""Fine-tune one variant (Base or Telly-K) on one task, and account for its cost.

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
import re
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from telly.config import FinetuneParams, Params
from telly.errors import TellyError
from telly.finetuning.caching import HiddenCache
from telly.finetuning.data import (
    SEQUENCE_FIELDS,
    Tokens,
    collate,
    index_loader,
    lm_labels,
    load_split,
    make_example,
)
from telly.finetuning.evaluate import evaluate
from telly.finetuning.heads import TaskModel
from telly.jsonl import write_json

log = logging.getLogger(__name__)

OnEpoch = Callable[[int, dict[str, Any]], None]


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


def parse_variant(variant: str, num_layers: int) -> int | None:
    """``base`` (or ``base-seed<S>``) -> None, ``telly-K`` -> K (0 <= K < L), anything else a clear error."""
    if re.fullmatch(r"base(-seed\d+)?", variant):
        return None
    match = re.fullmatch(r"telly-(\d+)", variant)
    if not match:
        raise TellyError(f"variant {variant!r}: expected 'base', 'base-seed<S>' or 'telly-<K>'")
    k = int(match.group(1))
    if k >= num_layers:
        raise TellyError(
            f"variant {variant!r}: K = {k} but the model has {num_layers} layers; Telly-K needs 0 <= K <= {num_layers - 1}"
        )
    return k


def variant_seed(variant: str, default: int) -> int:
    """``base-seed<S>`` is Base with only the seed changed (the RQ2 noise baseline)."""
    match = re.fullmatch(r"base-seed(\d+)", variant)
    return int(match.group(1)) if match else default


# ----------------------------------------------------------------- the run


def train_variant(
    params: Params,
    task: str,
    variant: str,
    *,
    lr: float | None = None,
    epochs: int | None = None,
    on_epoch: OnEpoch | None = None,
    output_dir: str | Path | None = None,
    results_path: str | Path | None = None,
    cache_frozen: bool | None = None,
) -> RunResult:
    """Fine-tune ``variant`` on ``task``; overrides (lr, epochs, caching, where to write) win over params."""
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs

    from telly.models import freeze_bottom, load_encoder
    from telly.runtime import device as pick_device
    from telly.runtime import set_seed
    from telly.tracking import resume_tags, start_run

    settings = _settings(params)
    cfg = getattr(settings.tasks, task, None) if task in type(settings.tasks).model_fields else None
    if cfg is None:
        raise TellyError(f"unknown task {task!r}; finetune.tasks has {', '.join(type(settings.tasks).model_fields)}")
    lr = cfg.learning_rate if lr is None else lr
    epochs = cfg.epochs if epochs is None else epochs
    cache_frozen = settings.cache_frozen if cache_frozen is None else cache_frozen
    output_dir = Path(output_dir) if output_dir else settings.output_dir / task / variant
    results_path = Path(results_path) if results_path else settings.results_dir / task / f"{variant}.json"
    state_dir = settings.checkpoint_dir / task / variant

    seed = variant_seed(variant, settings.seed)
    set_seed(seed)
    accelerator = Accelerator(  # one process: plain PyTorch on the chosen device
        cpu=pick_device(settings.device).type == "cpu",
        dataloader_config=DataLoaderConfiguration(split_batches=True),  # batch sizes are global
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],  # the pooler: trainable, unused
    )
    _check_batches(task, cfg.batch_size, settings.eval_batch_size, accelerator.num_processes)
    device, main = accelerator.device, accelerator.is_main_process
    encoder = load_encoder(settings.model, device=device, seed=seed)
    k = parse_variant(variant, encoder.num_layers)
    _check_lengths(task, cfg, encoder.max_length)
    counts = freeze_bottom(encoder.model, k)
    cached = bool(cache_frozen and k is not None)
    tok = Tokens.of(encoder.tokenizer)

    splits = {}
    for split, size in (("train", cfg.train_size), ("valid", cfg.valid_size), ("test", cfg.test_size)):
        rows = load_split(settings.tasks_dir, task, split, size, settings.seed, min_rows=2)  # same rows for every seed
        splits[split] = [
            make_example(task, r, encoder.tokenizer, tok, cfg.max_source_length, cfg.max_target_length)
            for r in tqdm(rows, desc=f"tokenize {split}", leave=False)
        ]
    train, valid, test = splits["train"], splits["valid"], splits["test"]
    if task == "code_search" and len(train) < 2:
        raise TellyError(f"{task}: in-batch negatives need at least 2 training pairs")

    model = TaskModel(encoder.model, task, k, settings.cache_dropout if cached else 0.0).to(device)
    run_settings = {
        "task": task,
        "variant": variant,
        "k": k,
        "lr": lr,
        "epochs": epochs,
        "cache_frozen": cached,
        "cache_dropout": settings.cache_dropout if cached else 0.0,
        "model": settings.model,
        "architecture": _architecture(encoder),
        "seed": seed,
        **cfg.model_dump(exclude={"learning_rate", "epochs"}),
        "weight_decay": settings.weight_decay,
        "warmup_fraction": settings.warmup_fraction,
        "max_grad_norm": settings.max_grad_norm,
        "n_train": len(train),
        "n_valid": len(valid),
        "n_test": len(test),
    }
    fingerprint = hashlib.sha256(json.dumps(run_settings, sort_keys=True, default=str).encode()).hexdigest()[:16]

    # Frozen-prefix caching: hidden state K of every training (and, for the encoder tasks, eval) sequence.
    # Every process builds the same caches (eval mode, no dropout) in memory: nothing to share or race on.
    t0 = time.perf_counter()
    train_caches: dict[str, HiddenCache] = {}
    valid_caches: dict[str, HiddenCache] = {}
    if cached:
        fields = SEQUENCE_FIELDS.get(task, ("seq",))
        for f in fields:
            train_caches[f] = HiddenCache.build(
                encoder.model, [ex[f] for ex in train], k, tok.pad, settings.eval_batch_size, f"cache train {f}"
            )
            if task in SEQUENCE_FIELDS:
                valid_caches[f] = HiddenCache.build(
                    encoder.model, [ex[f] for ex in valid], k, tok.pad, settings.eval_batch_size, f"cache valid {f}"
                )
    _sync(device)
    cache_seconds = time.perf_counter() - t0 if cached else 0.0
    cache_bytes = sum(c.nbytes for c in (*train_caches.values(), *valid_caches.values()))

    shuffle = torch.Generator()  # the training order, re-seeded every epoch
    train_loader = index_loader(
        len(train),
        cfg.batch_size,
        shuffle=shuffle,
        collate_fn=lambda idx: make_batch(task, [train[i] for i in idx], idx, tok.pad, train_caches),
    )
    valid_loader = index_loader(len(valid), settings.eval_batch_size)
    test_loader = index_loader(len(test), settings.eval_batch_size)
    steps_per_epoch = len(train_loader)
    optimizer = _optimizer(model, lr, settings.weight_decay)
    from transformers import get_linear_schedule_with_warmup

    total_steps = steps_per_epoch * epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_fraction * total_steps), total_steps)

    history: list[dict[str, Any]] = []
    best = {"score": float("-inf"), "epoch": 0}
    start_epoch = 1
    with accelerator.main_process_first():  # it discards a stale state before the others look
        resumed = _resume(state_dir, fingerprint, model, optimizer, scheduler, device)
    if resumed is not None:
        history, best, start_epoch = resumed["history"], resumed["best"], resumed["epoch"] + 1
        log.info("%s/%s: resuming after epoch %d from %s", task, variant, resumed["epoch"], state_dir)
    task_model = model  # unwrapped: evaluation and checkpoints; `model` trains (DDP when data-parallel)
    model, optimizer, train_loader, valid_loader, test_loader = accelerator.prepare(
        model, optimizer, train_loader, valid_loader, test_loader
    )

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if settings.bf16 and device.type == "cuda" else nullcontext()
    )
    eval_kwargs = {
        "beam_size": cfg.beam_size,
        "max_new_tokens": cfg.max_target_length,
        "gather": accelerator.gather_for_metrics,
    }
    system = _system_tags(device, accelerator.num_processes)
    tags = {"telly.task": task, "telly.variant": variant, "telly.cache_frozen": str(cached), **system}
    tags.update(resume_tags(f"{state_dir}:{fingerprint}", resumed=resumed is not None))  # killed predecessor: KILLED
    tracking = (
        start_run(params, "finetune", f"{task}/{variant}", nested=_mlflow_active(), tags=tags, log_params=run_settings)
        if main
        else nullcontext()
    )
    with tracking:
        mlflow = _mlflow(main)
        mlflow.log_params(
            {
                "trainable_params": counts.trainable,
                "paper_params": counts.paper,
                "total_params": counts.total,
                "resumed_from_epoch": start_epoch - 1,
            }
        )
        for record in history:  # a resumed run still shows the whole curve
            _log_epoch(mlflow, record)
        for epoch in range(start_epoch, epochs + 1):
            model.train()
            shuffle.manual_seed(seed + epoch)  # same order after a resume
            losses = []
            _sync(device)
            t0, cpu0 = time.perf_counter(), time.process_time()
            for batch in tqdm(train_loader, desc=f"{task}/{variant} epoch {epoch}", leave=False, disable=not main):
                with autocast:
                    loss = model(batch)
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(loss)  # DDP: gradients averaged across processes
                accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], settings.max_grad_norm)
                optimizer.step()
                scheduler.step()
                losses.append(accelerator.reduce(loss.detach(), "mean").item())
            _sync(device)
            train_seconds = time.perf_counter() - t0
            train_cpu_seconds = time.process_time() - cpu0  # robust to other jobs on a shared CPU
            t0 = time.perf_counter()
            with autocast:
                valid_metrics = evaluate(
                    task_model, valid, tok, encoder.tokenizer, batches=valid_loader, caches=valid_caches, **eval_kwargs
                )
            eval_seconds = time.perf_counter() - t0
            record = {
                "epoch": epoch,
                "train_loss": sum(losses) / len(losses),
                "train_seconds": train_seconds,
                "train_cpu_seconds": train_cpu_seconds,
                "eval_seconds": eval_seconds,
                "lr": scheduler.get_last_lr()[0],
                **{f"valid_{name}": value for name, value in valid_metrics.items()},
            }
            history.append(record)
            improved = valid_metrics["score"] > best["score"]
            if improved:
                best = {"score": valid_metrics["score"], "epoch": epoch, **valid_metrics}
            if main:  # one writer: every process holds the same weights
                if improved:
                    _save_weights(encoder.model, state_dir / "best.safetensors")
                _save_state(state_dir, fingerprint, epoch, task_model, optimizer, scheduler, history, best)
            _log_epoch(mlflow, record)
            log.info(
                "%s/%s epoch %d: loss %.4f, valid score %.4f, %.1f s",
                task,
                variant,
                epoch,
                record["train_loss"],
                valid_metrics["score"],
                train_seconds,
            )
            if on_epoch is not None:
                on_epoch(epoch, record)

        # The best-on-valid encoder: evaluate it on test once and publish it.
        accelerator.wait_for_everyone()  # the main process has written best.safetensors
        _load_weights(encoder.model, state_dir / "best.safetensors")
        with autocast:
            test_metrics = evaluate(
                task_model,
                test,
                tok,
                encoder.tokenizer,
                batches=test_loader,
                threshold=best.get("threshold"),
                **eval_kwargs,
            )
        test_metrics.pop("score")
        conv_epoch = convergence_epoch([r["valid_score"] for r in history], settings.convergence_tolerance)
        train_times = [r["train_seconds"] for r in history]
        cost = {
            "trainable_params": counts.trainable,
            "paper_params": counts.paper,
            "total_params": counts.total,
            "epoch_seconds": sum(train_times) / len(train_times),
            "epoch_cpu_seconds": sum(r["train_cpu_seconds"] for r in history) / len(history),
            "eval_seconds": sum(r["eval_seconds"] for r in history) / len(history),
            "cache_seconds": cache_seconds,
            "cache_bytes": cache_bytes,
            "epochs_run": len(history),
            "epochs_to_convergence": conv_epoch,
            "time_to_convergence": cache_seconds + sum(train_times[:conv_epoch]),
            "peak_memory_mb": _peak_memory_mb(device),
        }
        mlflow.log_metrics({f"test_{n}": v for n, v in test_metrics.items()})
        mlflow.log_metrics({n: float(v) for n, v in cost.items()})

    result = RunResult(
        task=task,
        variant=variant,
        k=k,
        test=test_metrics,
        best_epoch=best["epoch"],
        convergence_epoch=conv_epoch,
        epochs=history,
        cost=cost,
        settings=run_settings,
        checkpoint=str(output_dir),
        system=system,
    )
    if main:
        _publish(encoder, output_dir)
        write_json(results_path, result.to_json())
        shutil.rmtree(state_dir, ignore_errors=True)  # finished: nothing left to resume
    accelerator.wait_for_everyone()  # every process returns once the results exist
    return result


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

    if task in SEQUENCE_FIELDS:
        batch = {name: field_batch(name) for name in SEQUENCE_FIELDS[task]}
        if task == "clone_detection":
            batch["label"] = torch.tensor([ex["label"] for ex in examples])
        return batch
    seq = field_batch("seq")
    return {"seq": seq, "labels": lm_labels(examples, seq["ids"].shape[1])}


# --------------------------------------------------------------- internals


def _settings(params: Params) -> FinetuneParams:
    if params.finetune is None:
        raise TellyError("params: the finetune section is missing (see params.yaml and docs/finetuning.md)")
    return params.finetune


def _check_batches(task: str, batch_size: int, eval_batch_size: int, processes: int) -> None:
    """Batch sizes are global: N data-parallel processes each take an equal 1/N of every batch."""
    for key, size in ((f"tasks.{task}.batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if size % processes:
            raise TellyError(
                f"finetune.{key} = {size}: it is the global batch, split evenly over the {processes} processes; "
                f"use a multiple of {processes}"
            )


def _check_lengths(task: str, cfg: Any, model_max: int) -> None:
    need = (
        cfg.max_source_length + cfg.max_target_length
        if task not in SEQUENCE_FIELDS
        else max(cfg.max_source_length, cfg.max_target_length)
    )
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

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, path)


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device) for k, v in load_file(str(path)).items()})


def _save_state(state_dir: Path, fingerprint: str, epoch: int, model, optimizer, scheduler, history, best) -> None:
    state = {
        "fingerprint": fingerprint,
        "epoch": epoch,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "history": json.dumps(history),
        "best": json.dumps(best),
    }
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / "last.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, state_dir / "last.pt")


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


def _publish(encoder: Any, output_dir: Path) -> None:
    """The best encoder as a ``save_pretrained`` folder (loadable with ``load_encoder``), written atomically."""
    tmp = output_dir.with_name(output_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    encoder.model.save_pretrained(tmp)
    encoder.tokenizer.save_pretrained(tmp)
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(tmp, output_dir)


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
