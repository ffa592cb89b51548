"""What masked-token accuracy do local token statistics alone reach on the pretrain stage's
held-out masks? A yardstick for the embedded model's figure (docs/models.md, "Quality").

The held-out set is rebuilt exactly as ``telly pretrain`` builds it (same valid functions, same
pieces, same fixed 80/10/10 masks); the n-gram tables are counted on the training pieces.
Predictors, each falling back to the next when its context was never seen:

- the most frequent training token;
- the most frequent token after the left neighbour (a bigram);
- the most frequent token between the left and right neighbours;
- the same with two tokens on each side.

Neighbours are read from the masked input, as the model sees it. Needs the stage's output
(``models/pretrained``, for its tokenizer) and the corpus.

    python benchmarks/pretrain_baselines.py
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path

import yaml
from transformers import AutoTokenizer

from telly.config import parse_params
from telly.models.pretrain import held_out
from telly.models.pretrain_data import Special, code_pieces, read_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", default=None, help="folder with the tokenizer (default: pretrain.out_dir)")
    args = ap.parse_args()
    cfg = parse_params(yaml.safe_load(Path(args.params).read_text())).pretrain
    tokenizer = AutoTokenizer.from_pretrained(args.model or cfg.out_dir)

    unigram: Counter = Counter()
    left: dict = defaultdict(Counter)
    around: dict = defaultdict(Counter)
    around2: dict = defaultdict(Counter)
    sp = Special.of(tokenizer)
    train = [str(r[cfg.field]) for r in read_rows(cfg.train, cfg.field)]
    for p in (sp.frame("encoder-only", x) for x in code_pieces(tokenizer, train, cfg.max_length - 4)):
        for i in range(1, len(p) - 1):
            unigram[p[i]] += 1
            left[p[i - 1]][p[i]] += 1
            around[p[i - 1], p[i + 1]][p[i]] += 1
            if 2 <= i < len(p) - 2:
                around2[p[i - 2], p[i - 1], p[i + 1], p[i + 2]][p[i]] += 1
    top = unigram.most_common(1)[0][0]

    def best(table, key, fallback):
        return table[key].most_common(1)[0][0] if key in table else fallback

    hits: Counter = Counter()
    total = 0
    language = parse_params(yaml.safe_load(Path(args.params).read_text())).prepare.language
    for batch in held_out(cfg, tokenizer, read_rows(cfg.valid, cfg.field), language).mlm:
        for row, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
            for i, target in enumerate(labels):
                if target == -100:
                    continue
                total += 1
                right = row[i + 1] if i + 1 < len(row) else None
                p_unigram = top
                p_left = best(left, row[i - 1], p_unigram)
                p_around = best(around, (row[i - 1], right), p_left)
                key2 = (row[i - 2], row[i - 1], right, row[i + 2]) if 2 <= i < len(row) - 2 else None
                p_around2 = best(around2, key2, p_around)
                for name, guess in (
                    ("most frequent token", p_unigram),
                    ("left neighbour", p_left),
                    ("left + right neighbours", p_around),
                    ("two tokens each side", p_around2),
                    ("the input token itself", row[i]),
                ):
                    hits[name] += guess == target
    print(f"| predictor | masked-token accuracy |  ({total:,} held-out masked tokens)")
    print("|---|---|")
    for name, n in hits.items():
        print(f"| {name} | {100 * n / total:.1f} % |")


if __name__ == "__main__":
    main()
