#!/usr/bin/env python3
"""Hugging Face transformers baseline for benches/score_bench (docs/BENCHMARKS.md).

Reads the exact token ids the Rust bench uses (`score_bench --dump-inputs inputs.json`) and scores
them with transformers in f32 on the same GGUF, two ways:
  (a) one forward per item, the reference method of SGLang's tests: model(prompt).logits[0, -1];
  (b) the best batched form: all items of a request in one left-padded batch, logits_to_keep=1.
Then log-softmax over the full vocabulary, pick the labels, softmax (apply_softmax) or exp.

Usage: /tmp/hfvenv/bin/python benches/hf_baseline.py --inputs inputs.json --json hf.json \
           [--scenarios q200_i16_l2,prefill1024] [--methods a,b] [--iters-a 1] [--iters-b 2]
Setup: python3 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install torch transformers gguf accelerate
(transformers' GGUF loader refuses to run without accelerate).
Not part of the serving path or of any test.
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

from baseline_common import summarize


def finish(torch, last_logits, labels: list[int], apply_softmax: bool) -> list[list[float]]:
    lp = torch.log_softmax(last_logits.to(torch.float64), dim=-1)[:, labels]
    sc = torch.softmax(lp, dim=-1) if apply_softmax else torch.exp(lp)
    return sc.tolist()


def per_item(torch, model, prompts, labels, apply_softmax):
    rows = []
    for ids in prompts:
        logits = model(input_ids=torch.tensor([ids], dtype=torch.long)).logits[:, -1]
        rows += finish(torch, logits, labels, apply_softmax)
    return rows


def batched(torch, model, prompts, labels, apply_softmax, pad_id: int):
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[r, width - len(p):] = 1
    # Positions count real tokens only, so a left-padded row sees the positions it would alone.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
    return finish(torch, out.logits[:, -1], labels, apply_softmax)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", required=True, type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--scenarios", default="", help="comma list of scenario names (default: all)")
    ap.add_argument("--methods", default="a,b")
    ap.add_argument("--iters-a", type=int, default=1)
    ap.add_argument("--iters-b", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (2: this machine's cores)")
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    doc = json.loads(args.inputs.read_text())
    model_path = Path(doc["model"])
    wanted = [s for s in args.scenarios.split(",") if s]
    scenarios = [s for s in doc["scenarios"] if not wanted or s["name"] in wanted]
    methods = [m for m in args.methods.split(",") if m]

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        str(model_path.parent), gguf_file=model_path.name, dtype=torch.float32
    ).eval()
    load_s = time.perf_counter() - t0
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    print(f"loaded {model_path.name} in {load_s:.1f} s", flush=True)

    results = []
    with torch.inference_mode():
        # One short untimed forward: thread pools and allocator warm-up.
        model(input_ids=torch.tensor([[1, 2, 3, 4]], dtype=torch.long))
        for sc in scenarios:
            prompts = [sc["query_ids"] + item for item in sc["item_ids"]]
            prompt_tokens = sum(len(p) for p in prompts)
            labels, softmax = sc["label_ids"], sc["apply_softmax"]
            entry = {"name": sc["name"], "items": len(prompts), "labels": len(labels),
                     "query_tokens": sc["query_tokens"], "prompt_tokens": prompt_tokens}
            for m in methods:
                iters = args.iters_a if m == "a" else args.iters_b
                lat, scores = [], None
                for _ in range(iters):
                    t = time.perf_counter()
                    if m == "a":
                        rows = per_item(torch, model, prompts, labels, softmax)
                    else:
                        rows = batched(torch, model, prompts, labels, softmax, pad_id)
                    lat.append(time.perf_counter() - t)
                    scores = scores or rows
                entry[m] = summarize(lat, len(prompts), prompt_tokens) | {"scores": scores}
                print(f"{sc['name']} ({m}): {entry[m]['items_per_s']:.3f} items/s, "
                      f"p50 {entry[m]['p50_ms']:.0f} ms over {iters}", flush=True)
            results.append(entry)

    out = {
        "bench": "hf_baseline",
        "unix_time": int(time.time()),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "model": str(model_path),
        "load_s": load_s,
        "scenarios": results,
    }
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
