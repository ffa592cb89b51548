"""The ``pretrain`` stage: the small embedded code model, because no model hub is reachable.

The model is a small UniXcoder (Guo et al., ACL 2022): one RoBERTa encoder whose mode token and
attention mask make it an encoder, a decoder or an encoder-decoder, pre-trained in all three
modes on code, on the docstring with the code's flattened AST, and contrastively.

1. Train a byte-level BPE tokenizer on the corpus' training split: RoBERTa's special tokens,
   UniXcoder's mode tokens, the span sentinels ``<mask1>`` ... and a boundary pair per AST node
   type, all special tokens (:mod:`telly.models.tokenizer`).
2. Build the views of each function and the batches of each objective
   (:mod:`telly.models.pretrain_data`): masked-LM (``<encoder-only>``), unidirectional LM
   (``<decoder-only>``, causal), span denoising (``<encoder-decoder>``, prefix-LM) and the
   multi-modal contrastive objective, one objective per step drawn from ``objectives``; the LM
   steps read comment + flattened AST (a share ``ast_share``) or plain code. Every layout is the
   one the downstream tasks use (:mod:`telly.models.inputs`); the unidirectional and denoising
   losses use the tied output projection (hidden @ word embeddings) the fine-tuning heads use.
   ``objectives: {mlm: 1, ...: 0}`` with ``ast_share: 0`` is RoBERTa's masked-LM-only recipe.
3. Train the encoder (post-LayerNorm, as CodeBERT and UniXcoder; weights from ``init_std``,
   positions from sinusoids) with AdamW, linear warm-up and decay, for exactly ``max_steps``
   steps: the same params give the same model whatever the machine's load. There is no
   wall-clock limit unless ``time_budget_minutes`` sets one, as a guard: if training takes longer,
   the stage saves a checkpoint and fails with a message naming the setting and the steps reached,
   instead of handing a weaker model to every later stage.
4. Measure on held-out code (the valid split: other projects), for the trained model and for
   the same architecture untrained: masked-token accuracy with fixed masks at BERT's 15 %,
   next-token accuracy in the decoder-only mode, and zero-shot comment-to-code retrieval MRR
   (mean-pooled encoder-only representations, as the code search head pools them).
5. Save with ``save_pretrained`` (safetensors) + the tokenizer under ``models/pretrained``,
   so every later stage loads it with ``from_pretrained`` exactly like a hub model.

A checkpoint is written every few minutes (and on Ctrl-C, or when the guard fires) outside the
DVC output; a rerun with the same settings resumes from it.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from telly.config import Params
from telly.errors import NonFiniteError, TellyError
from telly.files import atomic_dir
from telly.jsonl import write_json
from telly.models import pretrain_data as data

log = logging.getLogger(__name__)

SEARCH_SCALE = 20.0  # UniXcoder's temperature for in-batch InfoNCE (the code search head's, too)


class TrainingTooSlow(TellyError):
    """The wall-clock guard fired before ``max_steps``."""


# ----------------------------------------------------------------------------- data


def uses_views(cfg: Any) -> bool:
    """Whether any objective reads the AST / comment views (the MLM-only recipe parses nothing)."""
    return cfg.ast_share > 0 or cfg.objectives.contrastive > 0 or cfg.objectives.crossgen > 0


def next_batch(cfg: Any, step: int, objective: str, batcher: data.Batcher, collator: Any, sp: data.Special) -> dict:
    """The batch of one training step: its inputs, framing and labels follow from (seed, step) and
    the batcher's position alone, so a resumed run continues with the very same batches."""
    if objective == "contrastive":
        return data.contrastive_batch(sp, batcher.next("pairs"))
    if objective == "crossgen":
        return data.crossgen_batch(sp, batcher.next("pairs"), cfg.max_length)
    examples = batcher.next(data.input_of_step(cfg.ast_share, cfg.seed, step, cfg.mlm_first_steps))
    if objective == "mlm":
        return data.mlm_batch(collator, sp, examples)
    if objective == "ulm":
        return data.ulm_batch(sp, examples)
    rng = np.random.default_rng([cfg.seed, step, 3])
    return data.denoise_batch(sp, examples, cfg.denoise_rate, cfg.denoise_span, cfg.max_length, rng)


def batch_tokens(batch: dict, pad_id: int) -> int:
    """Real (non-padding) tokens of a batch, of every view for a contrastive one."""
    if "input_ids" in batch:
        return int((batch["input_ids"] != pad_id).sum())
    return sum(batch_tokens(view, pad_id) for view in batch.values())


def to_device(batch: dict, dev: Any) -> dict:
    return {k: to_device(v, dev) if isinstance(v, dict) else v.to(dev, non_blocking=True) for k, v in batch.items()}


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
        sinusoidal_positions(
            model.roberta.embeddings.position_embeddings, tokenizer.pad_token_id, cfg.sinusoidal_positions
        )
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


# ------------------------------------------------------------------------ objectives


def encode(model: Any, batch: dict[str, Any]) -> Any:
    """Last hidden states; a 4-D boolean ``attention_mask`` is the UniLM mask of the mode."""
    return model.roberta(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


def mlm_loss(model: Any, batch: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Cross-entropy on the masked positions only; returns (loss, logits, labels) there."""
    import torch.nn.functional as F

    hidden = encode(model, batch)
    masked = batch["labels"] != -100
    logits = model.lm_head(hidden[masked])
    labels = batch["labels"][masked]
    return F.cross_entropy(logits.float(), labels), logits, labels


def lm_loss(model: Any, batch: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Next-token cross-entropy where labels are set, through the tied output projection
    (hidden @ word embeddings) that the fine-tuning heads of generation and completion use."""
    import torch.nn.functional as F

    hidden = encode(model, batch)
    active = batch["labels"] != -100
    logits = hidden[active] @ model.roberta.embeddings.word_embeddings.weight.T
    labels = batch["labels"][active]
    return F.cross_entropy(logits.float(), labels), logits, labels


def pooled(model: Any, batch: dict[str, Any]) -> Any:
    """Mean over the real tokens, L2-normalised: the code search head's representation."""
    import torch.nn.functional as F

    hidden = encode(model, batch)
    keep = batch["attention_mask"].to(hidden.dtype)[..., None]
    return F.normalize((hidden * keep).sum(1) / keep.sum(1), p=2, dim=-1)


def contrastive_loss(model: Any, batch: dict[str, Any]) -> Any:
    """In-batch InfoNCE of each function's code against its own comment and its own AST view."""
    import torch
    import torch.nn.functional as F

    code = pooled(model, batch["code"]).float()
    targets = torch.arange(len(code), device=code.device)
    losses = [
        F.cross_entropy(SEARCH_SCALE * code @ pooled(model, batch[v]).float().T, targets) for v in ("comment", "ast")
    ]
    return sum(losses) / len(losses)


def training_loss(model: Any, objective: str, batch: dict[str, Any]) -> Any:
    if objective == "mlm":
        return mlm_loss(model, batch)[0]
    if objective in ("ulm", "denoise", "crossgen"):
        return lm_loss(model, batch)[0]
    return contrastive_loss(model, batch)


# ----------------------------------------------------------------- held-out measurements


@dataclass
class HeldOut:
    """Fixed held-out inputs: every model and every evaluation sees exactly the same ones."""

    mlm: list[dict[str, Any]]  # encoder-only code pieces with fixed masks
    ulm: list[dict[str, Any]]  # the same pieces, decoder-only, labels on the code tokens and </s>
    comments: list[dict[str, Any]]  # retrieval queries ...
    codes: list[dict[str, Any]]  # ... and their code (row i of both belongs together)

    def quick(self) -> HeldOut:
        """A quarter of the LM batches, for the curve while training."""
        return HeldOut(self.mlm[: max(1, len(self.mlm) // 4)], self.ulm[: max(1, len(self.ulm) // 4)], [], [])


def held_out(cfg: Any, tokenizer: Any, valid_rows: list[dict], lang: str) -> HeldOut:
    """``eval_examples`` valid functions (a seeded sample), cut into pieces; masks at
    ``eval_mlm_probability`` (fixed by the seed); their documented, parsable functions for retrieval."""
    from transformers import DataCollatorForLanguageModeling

    rng = np.random.default_rng(cfg.seed)
    rows = [valid_rows[i] for i in sorted(rng.permutation(len(valid_rows))[: cfg.eval_examples])]
    sp = data.Special.of(tokenizer)
    pieces = data.code_pieces(tokenizer, [str(r[cfg.field]) for r in rows], cfg.max_length - 4)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg.eval_mlm_probability, seed=cfg.seed + 1)
    mlm = [data.mlm_batch(collator, sp, pieces[i : i + 64]) for i in range(0, len(pieces), 64)]
    ulm = []
    for i in range(0, len(pieces), 64):
        batch = data.ulm_batch(sp, pieces[i : i + 64])
        batch["labels"][:, :2] = -100  # <s> -> <decoder-only> -> </s>: fixed, not code
        ulm.append(batch)
    views = data.function_views(rows, cfg.field, lang)
    keep = [i for i, (c, q) in enumerate(zip(views.clean, views.comment)) if c is not None and q]
    budget = cfg.max_length - 4
    codes = [x[:budget] for x in data.token_ids(tokenizer, [views.clean[i] for i in keep])]
    comments = [x[:budget] for x in data.token_ids(tokenizer, [views.comment[i] for i in keep])]
    return HeldOut(
        mlm,
        ulm,
        [data.encoder_only_batch(sp, comments[i : i + 64]) for i in range(0, len(comments), 64)],
        [data.encoder_only_batch(sp, codes[i : i + 64]) for i in range(0, len(codes), 64)],
    )


def token_accuracy(model: Any, batches: list[dict[str, Any]], loss_fn: Any) -> tuple[float, float]:
    """(accuracy, mean loss) over every labelled token of fixed batches (call it under :func:`evaluating`)."""
    correct = total = 0
    loss_sum = 0.0
    device = next(model.parameters()).device
    for batch in batches:
        loss, logits, labels = loss_fn(model, to_device(batch, device))
        correct += int((logits.argmax(-1) == labels).sum())
        total += int(labels.numel())
        loss_sum += float(loss) * int(labels.numel())
    return correct / max(total, 1), loss_sum / max(total, 1)


def masked_accuracy(model: Any, batches: list[dict[str, Any]]) -> tuple[float, float]:
    """(accuracy, mean loss) over all masked tokens of fixed, pre-masked batches."""
    with evaluating(model):
        return token_accuracy(model, batches, mlm_loss)


def retrieval_mrr(model: Any, comments: list[dict[str, Any]], codes: list[dict[str, Any]]) -> float:
    """Mean reciprocal rank of each comment's own code among all the held-out codes (zero-shot)."""
    import torch

    if not comments:
        return float("nan")
    device = next(model.parameters()).device
    with evaluating(model):
        q = torch.cat([pooled(model, to_device(b, device)) for b in comments])
        c = torch.cat([pooled(model, to_device(b, device)) for b in codes])
    scores = q @ c.T
    rank = (scores > scores.diagonal()[:, None]).sum(1) + 1
    return float((1.0 / rank.float()).mean())


@contextlib.contextmanager
def evaluating(model: Any) -> Iterator[None]:
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def measure(model: Any, held: HeldOut) -> dict[str, float]:
    """The held-out figures of one model (retrieval only when ``held`` has queries)."""
    out = {}
    out["masked_token_accuracy"], out["valid_loss"] = masked_accuracy(model, held.mlm)
    with evaluating(model):
        out["next_token_accuracy"], out["next_token_loss"] = token_accuracy(model, held.ulm, lm_loss)
    if held.comments:
        out["retrieval_mrr"] = retrieval_mrr(model, held.comments, held.codes)
    return out


# ----------------------------------------------------------------------- checkpoints


def fingerprint(cfg: Any) -> str:
    """What must match for a checkpoint to be resumed (not the budget, cadence or paths)."""
    skip = {
        "time_budget_minutes",
        "checkpoint_every_minutes",
        "checkpoint_dir",
        "out_dir",
        "metrics",
        "eval_every",
        "log_every",
    }
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

    ``progress`` is steps done / ``max_steps``: the schedule depends on steps only, never on the
    clock, so a run is repeatable step for step on any machine.
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


# ------------------------------------------------------------------------- the loop


@dataclass
class Training:
    """Everything the loop needs, and what a checkpoint restores."""

    cfg: Any
    model: Any
    tokenizer: Any
    optimizer: Any
    collator: Any
    batcher: data.Batcher
    sp: data.Special
    state: dict[str, Any]
    fingerprint: str

    def checkpoint(self) -> None:
        import torch

        self.state["drawn"] = dict(self.batcher.drawn)
        save_checkpoint(
            Path(self.cfg.checkpoint_dir),
            self.model,
            self.tokenizer,
            {
                **self.state,
                "fingerprint": self.fingerprint,
                "optimizer": self.optimizer.state_dict(),
                "mask_rng": self.collator.generator.get_state(),
                "torch_rng": torch.get_rng_state(),
            },
        )


def train_step(t: Training, dev: Any, autocast: Any) -> tuple[str, float, int]:
    """One optimiser step of the step's objective; returns (objective, loss, real tokens)."""
    import torch

    cfg, step = t.cfg, t.state["step"]
    for group in t.optimizer.param_groups:
        group["lr"] = cfg.lr * learning_rate_factor(step, step / cfg.max_steps, cfg.warmup_steps, cfg.lr_cooldown)
    objective = data.objective_of_step(cfg.objectives.model_dump(), cfg.seed, step, cfg.mlm_first_steps)
    batch = to_device(next_batch(cfg, step, objective, t.batcher, t.collator, t.sp), dev)
    with autocast:
        loss = training_loss(t.model, objective, batch)
    value = float(loss.detach())
    if not math.isfinite(value):  # stop before the step: the last checkpoint stays the one to resume from
        raise NonFiniteError(
            f"pretrain: the {objective} loss is {value} at step {step + 1}; stopped, no model saved; "
            f"the last checkpoint in {cfg.checkpoint_dir} is kept. A lower pretrain.lr may help"
        )
    loss.backward()
    torch.nn.utils.clip_grad_norm_(t.model.parameters(), 1.0)
    t.optimizer.step()
    t.optimizer.zero_grad(set_to_none=True)
    return objective, value, batch_tokens(batch, t.sp.pad)


def too_slow(cfg: Any, state: dict[str, Any]) -> TrainingTooSlow:
    return TrainingTooSlow(
        f"pretrain: the wall-clock guard fired: {state['elapsed'] / 60:.1f} min of training passed "
        f"pretrain.time_budget_minutes = {cfg.time_budget_minutes:g} at step {state['step']} of "
        f"pretrain.max_steps = {cfg.max_steps}. No model was saved: a shorter run would hand every later "
        f"stage a weaker model. Run it on a less loaded machine or raise pretrain.time_budget_minutes; "
        f"the rerun resumes from the checkpoint in {cfg.checkpoint_dir}."
    )


def train(t: Training, dev: Any, held: HeldOut) -> None:
    """Exactly ``max_steps`` steps (from wherever a checkpoint left off), logging the curve."""
    import mlflow
    import torch
    from tqdm.auto import tqdm

    cfg, state = t.cfg, t.state
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.bf16)
    quick = held.quick()
    t.model.train()
    last_ckpt = session_start = time.perf_counter()
    elapsed0 = state["elapsed"]
    window: dict[str, list[float]] = {}
    window_tokens, window_start = 0, time.perf_counter()
    bar = tqdm(total=cfg.max_steps, initial=state["step"], desc="pretrain", unit="step")
    with stop_requested() as stop:
        while state["step"] < cfg.max_steps:
            if stop:
                bar.close()
                log.warning("interrupted at step %d; saving a checkpoint to resume from", state["step"])
                t.checkpoint()
                raise KeyboardInterrupt
            objective, loss, tokens = train_step(t, dev, autocast)
            state["step"] += 1
            state["tokens"] += tokens
            state["objective_steps"][objective] = state["objective_steps"].get(objective, 0) + 1
            state["elapsed"] = elapsed0 + time.perf_counter() - session_start
            window.setdefault(objective, []).append(loss)
            window_tokens += tokens
            bar.update(1)
            step = state["step"]
            evaluate = step % cfg.eval_every == 0
            if step % cfg.log_every == 0 or evaluate or step == cfg.max_steps:
                seconds = max(time.perf_counter() - window_start, 1e-9)
                point = {
                    "step": step,
                    "train_loss": float(np.mean([x for v in window.values() for x in v])),
                    "tokens_per_s": window_tokens / seconds,
                    "lr": t.optimizer.param_groups[0]["lr"],
                }
                point.update({f"train_loss_{k}": float(np.mean(v)) for k, v in sorted(window.items())})
                if evaluate:
                    quick_figures = measure(t.model, quick)
                    point["valid_accuracy"], point["valid_loss"] = (
                        quick_figures["masked_token_accuracy"],
                        quick_figures["valid_loss"],
                    )
                    point["valid_next_token_accuracy"] = quick_figures["next_token_accuracy"]
                state["curve"].append(point)
                mlflow.log_metrics({k: v for k, v in point.items() if k != "step"}, step=step)
                bar.set_postfix(loss=f"{point['train_loss']:.3f}", tok_s=f"{point['tokens_per_s']:.0f}")
                window, window_tokens, window_start = {}, 0, time.perf_counter()
            budget = cfg.time_budget_minutes
            if budget is not None and state["elapsed"] > budget * 60 and step < cfg.max_steps:
                bar.close()
                t.checkpoint()
                raise too_slow(cfg, state)
            if time.perf_counter() - last_ckpt >= cfg.checkpoint_every_minutes * 60:
                t.checkpoint()
                last_ckpt = time.perf_counter()
    bar.close()


# ------------------------------------------------------------------------- the stage


def prepare_training(cfg: Any, train_rows: list[dict], lang: str, dev: Any) -> Training:
    """A fresh model and tokenizer, or the checkpoint's; the optimiser and data positions with them."""
    import torch
    from transformers import DataCollatorForLanguageModeling

    from telly.models.tokenizer import pretraining_specials, train_tokenizer
    from telly.runtime import set_seed

    fp = fingerprint(cfg)
    resumed = load_checkpoint(Path(cfg.checkpoint_dir), fp)
    if resumed:
        model, tokenizer, state = resumed
    else:
        log.info("training a %d-token byte-level BPE tokenizer on %d functions", cfg.vocab_size, len(train_rows))
        tokenizer = train_tokenizer(
            [str(r[cfg.field]) for r in train_rows],
            vocab_size=cfg.vocab_size,
            min_frequency=cfg.min_frequency,
            max_length=cfg.max_length,
            extra_specials=pretraining_specials(lang),
        )
        set_seed(cfg.seed)
        model = build_model(cfg, tokenizer)
        state = {"step": 0, "elapsed": 0.0, "tokens": 0, "curve": [], "objective_steps": {}, "drawn": {}}
    corpus = data.build_corpus(tokenizer, train_rows, cfg.field, lang, cfg.max_length, uses_views(cfg))
    log.info(
        "training inputs: %d code pieces, %d comment + AST inputs, %d documented functions (contrastive)",
        len(corpus.pieces),
        len(corpus.ast_inputs),
        len(corpus.pairs),
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg.mlm_probability, seed=cfg.seed)
    collator.create_rng()
    model.to(dev)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=cfg.weight_decay
    )
    if resumed:
        optimizer.load_state_dict(state["optimizer"])
        collator.generator.set_state(state["mask_rng"])
        torch.set_rng_state(state["torch_rng"])
    batcher = data.Batcher(corpus, cfg.batch_size, cfg.seed, state.get("drawn"))
    return Training(cfg, model, tokenizer, optimizer, collator, batcher, data.Special.of(tokenizer), state, fp)


def save_model(cfg: Any, model: Any, tokenizer: Any) -> Path:
    out = Path(cfg.out_dir)
    # Later stages fine-tune from this config: give them RoBERTa's dropout, whatever pre-training used.
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = cfg.finetune_dropout
    model.config.initializer_range = 0.02  # and RoBERTa's init for any head they add
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def run(params: Params) -> dict[str, Any]:
    import mlflow
    import torch

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
    lang = params.prepare.language
    train_rows = data.read_rows(cfg.train, cfg.field)
    valid_rows = data.read_rows(cfg.valid, cfg.field)
    Path(cfg.checkpoint_dir).parent.mkdir(parents=True, exist_ok=True)
    dev = pick_device(params.model.device if params.model is not None else "auto")
    t = prepare_training(cfg, train_rows, lang, dev)
    held = held_out(cfg, t.tokenizer, valid_rows, lang)
    n_params = sum(p.numel() for p in t.model.parameters())
    log.info(
        "model: %d layers, hidden %d, %.2fM parameters; %d steps of %s; wall-clock guard: %s",
        cfg.layers,
        cfg.hidden_size,
        n_params / 1e6,
        cfg.max_steps,
        ", ".join(f"{k} {v:g}" for k, v in cfg.objectives.model_dump().items() if v),
        f"{cfg.time_budget_minutes:g} min" if cfg.time_budget_minutes is not None else "none",
    )

    with start_run(params, "pretrain", log_params={"pretrain": cfg.model_dump(mode="json")}):
        mlflow.log_metric("parameters", n_params)
        train(t, dev, held)
        state = t.state

        log.info(
            "held-out measurements: %d masked-LM batches, %d retrieval queries",
            len(held.mlm),
            sum(len(b["input_ids"]) for b in held.comments),
        )
        trained = measure(t.model, held)
        set_seed(cfg.seed)
        untrained = measure(build_model(cfg, t.tokenizer).to(dev), held)
        per_epoch = math.ceil(len(t.batcher.corpus.pieces) / cfg.batch_size)
        metrics = {
            **trained,
            **{f"random_init_{k}": v for k, v in untrained.items()},
            "steps": state["step"],
            "objective_weights": cfg.objectives.model_dump(),  # the recipe, for the report
            "ast_share": cfg.ast_share,
            "mlm_first_steps": cfg.mlm_first_steps,
            "objective_steps": {k: state["objective_steps"].get(k, 0) for k in data.OBJECTIVES},
            "epochs": t.batcher.drawn.get("code", 0) / per_epoch,  # of the plain code pieces
            "train_tokens": state["tokens"],
            "train_seconds": state["elapsed"],
            "tokens_per_second": state["tokens"] / max(state["elapsed"], 1e-9),
            "steps_per_second": state["step"] / max(state["elapsed"], 1e-9),
            "parameters": n_params,
            "vocab_size": len(t.tokenizer),
            "eval_masked_tokens": sum(int((b["labels"] != -100).sum()) for b in held.mlm),
            "eval_next_tokens": sum(int((b["labels"] != -100).sum()) for b in held.ulm),
            "eval_retrieval_queries": sum(len(b["input_ids"]) for b in held.comments),
            "stage_seconds": time.perf_counter() - started,
        }
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)})
        out = save_model(cfg, t.model, t.tokenizer)
        write_json(Path(cfg.metrics), metrics)
        write_json(Path(cfg.metrics).with_name("curve.json"), state["curve"])
        shutil.rmtree(cfg.checkpoint_dir, ignore_errors=True)  # finished: the next run starts afresh
    log.info(
        "held-out: masked-token accuracy %.1f%% (untrained %.1f%%), next-token accuracy %.1f%% (%.1f%%), "
        "retrieval MRR %.3f (%.3f); saved %s",
        100 * trained["masked_token_accuracy"],
        100 * untrained["masked_token_accuracy"],
        100 * trained["next_token_accuracy"],
        100 * untrained["next_token_accuracy"],
        trained.get("retrieval_mrr", float("nan")),
        untrained.get("retrieval_mrr", float("nan")),
        out,
    )
    return metrics
