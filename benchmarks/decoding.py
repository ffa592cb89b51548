"""Beam-search decoding at the paper's lengths: re-encode every step (the previous code,
``beam_search_reference``) vs incremental decoding with a key/value cache (``beam_search``).

A randomly initialised 12-layer, 768-wide RoBERTa with UniXcoder's vocabulary (51,416) and
positions (1,026) decodes random prompts of each generation task's paper lengths
(profiles/paper-unixcoder.yaml: source and target lengths, beam size). The end token is one the
model never produces, so every beam runs every step (the worst case, as a model that never
stops early). Both decoders must return the same tokens.

On a CPU the re-encoding decoder is too slow for whole targets, so each runs ``--steps``
tokens and the full target length is extrapolated: a re-encoding step costs ~ live beams x
(prompt + tokens so far) tokens of encoder work, so its total over T steps is the measured
per-token cost times sum_t beams_t * (P + t); the incremental decoder's total is its prompt
pass + T times its measured cost per step (each step runs one token per beam; attention over
the growing cache is a few per cent of a step at these lengths, so this slightly underestimates).
Times are CPU seconds of the process (``time.process_time``, all threads), not wall time.

    python benchmarks/decoding.py                       # three tasks, 1 example each (~3-5 min on 2 cores)
    python benchmarks/decoding.py --tasks code_generation --steps 6 --examples 2
"""

from __future__ import annotations

import argparse
import time

import torch

from telly.finetuning.generation import beam_search, beam_search_reference
from telly.finetuning.heads import TaskModel

# registry: the paper's generation settings (profiles/paper-unixcoder.yaml finetune.tasks.*)
PAPER = {  # task: (max_source_length, max_target_length, beam_size, decoder_only)
    "code_summarization": (256, 128, 10, False),
    "code_generation": (350, 150, 3, False),
    "line_completion": (936, 64, 5, True),
}
VOCAB, PAD, POSITIONS = 51416, 1, 1026


def paper_model() -> TaskModel:
    from transformers import RobertaConfig, RobertaModel

    config = RobertaConfig(
        vocab_size=VOCAB,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=POSITIONS,
        pad_token_id=PAD,
        type_vocab_size=10,
    )
    torch.manual_seed(0)
    return TaskModel(RobertaModel(config).eval(), "code_summarization")


def timed(fn, *args, **kwargs) -> tuple[float, list]:
    """CPU seconds of this process (all its threads): steadier than wall time on a shared machine."""
    start = time.process_time()
    out = fn(*args, **kwargs)
    return time.process_time() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(PAPER), choices=list(PAPER))
    ap.add_argument("--steps", type=int, default=4, help="tokens decoded by both decoders (>= 2)")
    ap.add_argument("--examples", type=int, default=1, help="prompts per task (one batch)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = paper_model()
    gen = torch.Generator().manual_seed(1)
    print("| task | prompt | beam | steps run | re-encode CPU s/step | incremental CPU s/step (prompt pass) "
          "| speed-up at steps run | full target T | re-encode est. CPU s | incremental est. CPU s | est. speed-up |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for task in args.tasks:
        source, target, beam, decoder_only = PAPER[task]
        prompts, prefixes = [], []
        for _ in range(args.examples):
            body = torch.randint(5, VOCAB, (source - 1,), generator=gen).tolist()
            prompt = [0, *body] if decoder_only else [0, *body[:-1], 2, 4]  # source + </s>, then the target start
            prompts.append(prompt)
            prefixes.append(0 if decoder_only else len(prompt) - 1)
        kw = dict(beam_size=beam, eos_id=-1, pad_id=PAD, batch_size=args.examples)
        prompt_len = len(prompts[0])
        t_old, old = timed(beam_search_reference, model, prompts, prefixes, max_new_tokens=args.steps, **kw)
        t_one, _ = timed(beam_search, model, prompts, prefixes, max_new_tokens=1, **kw)  # ~ the prompt pass
        t_new, new = timed(beam_search, model, prompts, prefixes, max_new_tokens=args.steps, **kw)
        assert old == new, f"{task}: the decoders disagree"
        # re-encoding: step t runs rows_t x (P + t) tokens (rows_0 = 1 empty hypothesis, then `beam` beams)
        work = [(1 if t == 0 else beam) * (prompt_len + t) for t in range(max(args.steps, target))]
        per_token = t_old / sum(work[: args.steps])
        old_full = per_token * sum(work[:target])
        new_step = max(t_new - t_one, 0.0) / (args.steps - 1)
        new_full = t_one + (target - 1) * new_step
        print(
            f"| {task} | {prompt_len} | {beam} | {args.steps} | {t_old / args.steps:.2f} | {new_step:.3f} ({t_one:.2f}) "
            f"| {t_old / t_new:.1f}x | {target} | {old_full:,.0f} | {new_full:,.1f} | {old_full / new_full:.0f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
