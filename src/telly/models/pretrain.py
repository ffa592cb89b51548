"""The ``pretrain`` stage: the small embedded code model, because no model hub is reachable.

1. Train a byte-level BPE tokenizer on the corpus' training split (RoBERTa's special
   tokens plus UniXcoder's mode tokens).
2. Cut each training function into pieces that fit ``max_length`` and wrap them as the
   later stages will feed them: ``[<s>, <encoder-only>, </s>] + code + [</s>]``.
3. Train a RoBERTa encoder (post-LayerNorm, as CodeBERT and UniXcoder) with masked-language
   modelling: ``mlm_probability`` of the tokens (40 % by default: more predictions per step
   than BERT's 15 %, which a compute-bound run needs), 80/10/10, the ``transformers``
   collator. Weights start at ``init_std`` and the position embeddings as sinusoids, which
   shortens the plateau before the model learns to use its context. AdamW with linear
   warm-up and decay, for ``max_steps`` steps or until the wall-clock budget is spent,
   whichever comes first (the decay follows that limit). The LM head runs on the masked
   positions only, which saves most of the output-layer compute on a CPU.
4. Measure masked-token accuracy on held-out code (the valid split: other projects) with
   fixed masks at BERT's 15 % (``eval_mlm_probability``), for the trained model and for the
   same architecture randomly initialised.
5. Save with ``save_pretrained`` (safetensors) + the tokenizer under ``models/pretrained``,
   so every later stage loads it with ``from_pretrained`` exactly like a hub model.

A checkpoint is written every few minutes (and on Ctrl-C) outside the DVC output; a rerun
with the same settings resumes from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from telly.config import Params
from telly.errors import TellyError
from telly.jsonl import read_jsonl, write_json

log = logging.getLogger(__name__)

ENCODER_PREFIX = ("<s>", "<encoder-only>", "</s>")


# ----------------------------------------------------------------------------- data


def read_code(path: Path, field: str) -> list[str]:
    rows = read_jsonl(path, required=(field,))
    if not rows:
        raise TellyError(f"{path}: no rows; the pretrain stage needs the corpus (run `dvc repro prepare`)")
    return [str(r[field]) for r in rows]


def to_pieces(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    """Every function, cut into pieces of at most ``max_length`` tokens with the encoder prefix."""
    prefix = tokenizer.convert_tokens_to_ids(list(ENCODER_PREFIX))
    suffix = [tokenizer.sep_token_id]
    budget = max_length - len(prefix) - len(suffix)
    pieces = []
    for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]:
        for start in range(0, len(ids), budget):
            chunk = ids[start : start + budget]
            if len(chunk) >= 2:  # a one-token tail teaches nothing
                pieces.append(prefix + chunk + suffix)
    return pieces


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Shuffled batches of similar length (less padding), the same for the same seed and epoch."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    pool = batch_size * 50  # sort within pools of 50 batches: similar lengths, still random
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def held_out_batches(cfg: Any, tokenizer: Any, valid_texts: list[str]) -> list[dict[str, Any]]:
    """``eval_examples`` valid functions (a seeded sample), cut into pieces, with fixed masks at
    ``eval_mlm_probability``: the same masked tokens for every model and every evaluation."""
    from transformers import DataCollatorForLanguageModeling

    rng = np.random.default_rng(cfg.seed)
    texts = [valid_texts[i] for i in sorted(rng.permutation(len(valid_texts))[: cfg.eval_examples])]
    pieces = to_pieces(tokenizer, texts, cfg.max_length)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg.eval_mlm_probability, seed=cfg.seed + 1)
    return [collator([{"input_ids": p} for p in pieces[i : i + 64]]) for i in range(0, len(pieces), 64)]


# ---------------------------------------------------------------------------- model


def build_model(cfg: Any, tokenizer: Any) -> Any:
    from transformers import RobertaConfig, RobertaForMaskedLM

    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        intermediate_size=cfg.ffn_size,
        max_position_embeddings=cfg.max_length + tokenizer.pad_token_id + 1,  # RoBERTa's position offset
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        initializer_range=cfg.init_std,  # wider than RoBERTa's 0.02: a model this narrow learns faster
    )
    model = RobertaForMaskedLM(config)
    if cfg.sinusoidal_positions:
        sinusoidal_positions(model.roberta.embeddings.position_embeddings, tokenizer.pad_token_id,
                             cfg.sinusoidal_positions)
    return model


def sinusoidal_positions(embedding: Any, pad_id: int, amplitude: float) -> None:
    """Start the learned position embeddings as the Transformer's sinusoids (then train them):
    relative offsets are linear maps of them from step 0, so attention to neighbouring tokens,
    which most masked tokens need, is learned sooner. RoBERTa's positions start at pad id + 1."""
    import torch

    rows, dim = embedding.weight.shape
    position = (torch.arange(rows) - (pad_id + 1)).float()[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2).float() * (-math.log(10000.0) / dim))
    table = torch.zeros(rows, dim)
    table[:, 0::2], table[:, 1::2] = torch.sin(position * frequency), torch.cos(position * frequency)
    table[: pad_id + 1] = 0.0  # the padding row (and the unused one below it) stay zero
    with torch.no_grad():
        embedding.weight.copy_(amplitude * table)


def mlm_loss(model: Any, batch: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Cross-entropy on the masked positions only; returns (loss, logits, labels) there."""
    import torch.nn.functional as F

    hidden = model.roberta(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    masked = batch["labels"] != -100
    logits = model.lm_head(hidden[masked])
    labels = batch["labels"][masked]
    return F.cross_entropy(logits.float(), labels), logits, labels


def masked_accuracy(model: Any, batches: list[dict[str, Any]]) -> tuple[float, float]:
    """(accuracy, mean loss) over all masked tokens of fixed, pre-masked batches."""
    import torch

    was_training = model.training
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    device = next(model.parameters()).device
    with torch.inference_mode():
        for batch in batches:
            loss, logits, labels = mlm_loss(model, {k: v.to(device) for k, v in batch.items()})
            correct += int((logits.argmax(-1) == labels).sum())
            total += int(labels.numel())
            loss_sum += float(loss) * int(labels.numel())
    model.train(was_training)
    return correct / max(total, 1), loss_sum / max(total, 1)


# ----------------------------------------------------------------------- checkpoints


def fingerprint(cfg: Any) -> str:
    """What must match for a checkpoint to be resumed (not the budget, cadence or paths)."""
    skip = {"time_budget_minutes", "checkpoint_every_minutes", "checkpoint_dir", "out_dir", "metrics",
            "eval_every", "log_every"}
    keep = {k: str(v) for k, v in cfg.model_dump().items() if k not in skip}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def save_checkpoint(folder: Path, model: Any, tokenizer: Any, state: dict[str, Any]) -> None:
    import torch

    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save(state, tmp / "state.pt")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    log.info("checkpoint at step %d -> %s", state["step"], folder)


def load_checkpoint(folder: Path, fp: str) -> tuple[Any, Any, dict[str, Any]] | None:
    import torch
    from transformers import AutoTokenizer, RobertaForMaskedLM

    if not (folder / "state.pt").exists():
        return None
    state = torch.load(folder / "state.pt", weights_only=True)
    if state.get("fingerprint") != fp:
        log.info("%s: checkpoint is for other settings; starting afresh", folder)
        return None
    model = RobertaForMaskedLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    log.info("resuming from %s at step %d (%.0f s trained)", folder, state["step"], state["elapsed"])
    return model, tokenizer, state


def learning_rate_factor(step: int, progress: float, warmup_steps: int, cooldown: float = 1.0) -> float:
    """Linear warm-up over steps, a constant rate, then linear decay to 0 over the last
    ``cooldown`` share of training (warm-up, stable, decay; ``cooldown`` 1 is plain linear decay).

    ``progress`` is the larger of steps done / ``max_steps`` and time spent / budget, so the
    schedule always anneals to 0 by the end, whichever limit comes first: on a fast machine
    the steps decide (and the run is repeatable step for step), on a busy one the clock does.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return min(1.0, max(0.0, (1.0 - progress) / cooldown))


class _Flag:
    def __init__(self) -> None:
        self.raised = False

    def __bool__(self) -> bool:
        return self.raised


@contextlib.contextmanager
def stop_requested() -> Iterator[_Flag]:
    """Ctrl-C / SIGTERM set a flag; training stops between steps, so the checkpoint is exact."""
    flag = _Flag()

    def handler(signum: int, frame: Any) -> None:
        flag.raised = True

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ------------------------------------------------------------------------- the stage


def run(params: Params) -> dict[str, Any]:
    import torch
    from transformers import DataCollatorForLanguageModeling

    from telly.models.tokenizer import train_tokenizer
    from telly.runtime import device as pick_device
    from telly.runtime import set_seed
    from telly.tracking import start_run

    cfg = params.pretrain
    if cfg is None:
        raise TellyError("params: the `pretrain` section is missing (see params.yaml in the repository)")
    set_seed(cfg.seed)
    if cfg.threads:  # both cores on an idle machine; 1 where other jobs share the CPU
        torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    train_texts = read_code(cfg.train, cfg.field)
    valid_texts = read_code(cfg.valid, cfg.field)
    ckpt_dir = Path(cfg.checkpoint_dir)
    ckpt_dir.parent.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(cfg)

    resumed = load_checkpoint(ckpt_dir, fp)
    if resumed:
        model, tokenizer, state = resumed
    else:
        log.info("training a %d-token byte-level BPE tokenizer on %d functions", cfg.vocab_size, len(train_texts))
        tokenizer = train_tokenizer(train_texts, vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                    max_length=cfg.max_length)
        set_seed(cfg.seed)
        model = build_model(cfg, tokenizer)
        state = {"step": 0, "elapsed": 0.0, "tokens": 0, "curve": []}

    pieces = to_pieces(tokenizer, train_texts, cfg.max_length)
    lengths = np.array([len(p) for p in pieces])
    eval_batches = held_out_batches(cfg, tokenizer, valid_texts)
    log.info("%d training pieces (%d tokens), %d held-out pieces from %d valid functions",
             len(pieces), int(lengths.sum()), sum(len(b["input_ids"]) for b in eval_batches),
             min(cfg.eval_examples, len(valid_texts)))
    quick_eval = eval_batches[: max(1, len(eval_batches) // 4)]

    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg.mlm_probability, seed=cfg.seed)
    collator.create_rng()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6,
                                  weight_decay=cfg.weight_decay)
    if resumed:
        optimizer.load_state_dict(state["optimizer"])
        collator.generator.set_state(state["mask_rng"])
        torch.set_rng_state(state["torch_rng"])

    n_params = sum(p.numel() for p in model.parameters())
    dev = pick_device(params.model.device if params.model is not None else "auto")
    model.to(dev)
    # bf16 autocast: ~1.6x faster steps on CPUs with AVX512-BF16 (and on CUDA); weights stay fp32
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.bf16)
    per_epoch = math.ceil(len(pieces) / cfg.batch_size)
    budget_s = cfg.time_budget_minutes * 60
    log.info("model: %d layers, hidden %d, %.2fM parameters; %d steps (%.2f epochs), budget %.1f min",
             cfg.layers, cfg.hidden_size, n_params / 1e6, cfg.max_steps, cfg.max_steps / per_epoch,
             cfg.time_budget_minutes)

    def checkpoint() -> None:
        save_checkpoint(ckpt_dir, model, tokenizer, {
            **state, "fingerprint": fp, "optimizer": optimizer.state_dict(),
            "mask_rng": collator.generator.get_state(), "torch_rng": torch.get_rng_state(),
        })

    import mlflow
    from tqdm.auto import tqdm

    with start_run(params, "pretrain", log_params={"pretrain": cfg.model_dump(mode="json")}):

        mlflow.log_metric("parameters", n_params)
        model.train()
        last_ckpt = time.perf_counter()
        session_start, session_elapsed0 = time.perf_counter(), state["elapsed"]
        batches_by_epoch: dict[int, list[np.ndarray]] = {}
        window_loss, window_tokens, window_start = [], 0, time.perf_counter()
        budget_reached = False
        bar = tqdm(total=cfg.max_steps, initial=state["step"], desc="pretrain", unit="step")
        with stop_requested() as stop:
            while True:
                if stop:
                    bar.close()
                    log.warning("interrupted at step %d; saving a checkpoint to resume from", state["step"])
                    checkpoint()
                    raise KeyboardInterrupt
                progress = max(state["step"] / cfg.max_steps, state["elapsed"] / budget_s)
                if progress >= 1:
                    budget_reached = state["step"] < cfg.max_steps
                    if budget_reached:
                        log.info("wall-clock budget of %.1f min spent at step %d of %d",
                                 cfg.time_budget_minutes, state["step"], cfg.max_steps)
                    break
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * learning_rate_factor(state["step"], progress, cfg.warmup_steps,
                                                                cfg.lr_cooldown)
                epoch, index = divmod(state["step"], per_epoch)
                if epoch not in batches_by_epoch:
                    batches_by_epoch = {epoch: epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch)}
                batch = collator([{"input_ids": pieces[i]} for i in batches_by_epoch[epoch][index]])
                batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
                with autocast:
                    loss, _, _ = mlm_loss(model, batch)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

                state["step"] += 1
                real_tokens = int(batch["attention_mask"].sum())
                state["tokens"] += real_tokens
                state["elapsed"] = session_elapsed0 + time.perf_counter() - session_start
                window_loss.append(float(loss.detach()))
                window_tokens += real_tokens
                bar.update(1)
                step = state["step"]
                evaluate = step % cfg.eval_every == 0
                if step % cfg.log_every == 0 or evaluate or step == cfg.max_steps:
                    rate = window_tokens / max(time.perf_counter() - window_start, 1e-9)
                    point = {"step": step, "train_loss": float(np.mean(window_loss)), "tokens_per_s": rate,
                             "lr": optimizer.param_groups[0]["lr"]}
                    if evaluate:
                        point["valid_accuracy"], point["valid_loss"] = masked_accuracy(model, quick_eval)
                    state["curve"].append(point)
                    mlflow.log_metrics({k: v for k, v in point.items() if k != "step"}, step=step)
                    bar.set_postfix(loss=f"{point['train_loss']:.3f}", tok_s=f"{rate:.0f}")
                    window_loss, window_tokens, window_start = [], 0, time.perf_counter()
                if time.perf_counter() - last_ckpt >= cfg.checkpoint_every_minutes * 60:
                    checkpoint()
                    last_ckpt = time.perf_counter()
        bar.close()

        log.info("evaluating masked-token accuracy on %d held-out batches", len(eval_batches))
        accuracy, valid_loss = masked_accuracy(model, eval_batches)
        set_seed(cfg.seed)
        random_accuracy, random_loss = masked_accuracy(build_model(cfg, tokenizer).to(dev), eval_batches)
        metrics = {
            "masked_token_accuracy": accuracy,
            "valid_loss": valid_loss,
            "random_init_masked_token_accuracy": random_accuracy,
            "random_init_valid_loss": random_loss,
            "steps": state["step"],
            "epochs": state["step"] / per_epoch,
            "train_tokens": state["tokens"],
            "train_seconds": state["elapsed"],
            "tokens_per_second": state["tokens"] / max(state["elapsed"], 1e-9),
            "budget_reached": budget_reached,
            "parameters": n_params,
            "vocab_size": len(tokenizer),
            "eval_masked_tokens": sum(int((b["labels"] != -100).sum()) for b in eval_batches),
            "stage_seconds": time.perf_counter() - started,
        }
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})

        out = Path(cfg.out_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
        tmp.chmod(0o755)  # mkdtemp makes it private; the model folder is shared
        # Later stages fine-tune from this config: give them RoBERTa's dropout, whatever pre-training used.
        model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = cfg.finetune_dropout
        model.config.initializer_range = 0.02  # and RoBERTa's init for any head they add
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        write_json(Path(cfg.metrics), metrics)
        write_json(Path(cfg.metrics).with_name("curve.json"), state["curve"])
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # finished: the next run starts afresh
    log.info("masked-token accuracy on held-out code: %.1f%% (random init %.1f%%); saved %s",
             100 * accuracy, 100 * random_accuracy, out)
    return metrics
