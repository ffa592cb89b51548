"""Tokenize once: pairs/s of a fine-tuning run's data step, row by row (before) and from the
on-disk tokenized form (after: the first run builds it, later runs read the sampled rows).

A byte-level BPE (telly's tokenizer code, vocabulary 8,000) is trained on the split's first
2,000 texts: there is no pre-trained model to borrow one from. Lengths are the paper profile's
clone-detection ones (512 / 32).

    python benchmarks/tokenize_once.py [--tasks-file /work/main/data/tasks/clone_detection/train.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks-file", default="data/tasks/clone_detection/train.jsonl")
    parser.add_argument("--sample", type=int, default=1024, help="rows a later run samples")
    args = parser.parse_args()

    from telly.finetuning.data import Tokens, load_examples
    from telly.jsonl import read_jsonl
    from telly.models.tokenizer import train_tokenizer

    source = Path(args.tasks_file)
    task, split = source.parent.name, source.stem
    rows = read_jsonl(source)
    fields = ("code1", "code2") if task == "clone_detection" else ("source", "target")
    texts = [r[f] for r in rows[:1000] for f in fields]
    tokenizer = train_tokenizer(texts, vocab_size=8000, max_length=512)
    tok = Tokens.of(tokenizer)
    work = Path(tempfile.mkdtemp())
    tasks_dir = work / "tasks"
    (tasks_dir / task).mkdir(parents=True)
    shutil.copy(source, tasks_dir / task / f"{split}.jsonl")
    lengths = (512, 32)

    def timed(**kw):
        t0 = time.perf_counter()
        out = load_examples(tasks_dir, task, split, kw.pop("limit", 0), 123456, tokenizer, tok, *lengths, **kw)
        return len(out), time.perf_counter() - t0, out

    n, before, direct = timed()
    _, build, built = timed(cache_dir=work / "cache")
    _, reuse, reused = timed(cache_dir=work / "cache")
    m, sample, _ = timed(cache_dir=work / "cache", limit=args.sample)
    assert direct == built == reused
    meta = json.loads(next((work / "cache" / "tokens").iterdir()).joinpath("meta.json").read_text())
    result = {
        "file": str(source),
        "rows": n,
        "distinct_texts": meta["texts"],
        "row_by_row_pairs_per_s": n / before,
        "first_run_build_pairs_per_s": n / build,
        "later_run_all_rows_pairs_per_s": n / reuse,
        f"later_run_sample_{m}_seconds": sample,
        "load": os.getloadavg(),
    }
    print(json.dumps(result, indent=1))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
