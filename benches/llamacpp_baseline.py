#!/usr/bin/env python3
"""llama.cpp baseline for benches/score_bench (docs/BENCHMARKS.md), beside hf_baseline.py.

Reads the exact token ids the Rust bench uses (`score_bench --dump-inputs inputs.json`) and scores
them with llama-cpp-python (native kernels on the same GGUF, its own quantized matmuls), two ways:
  (a) one evaluation per item: reset, evaluate query + item, read the last row of logits;
  (b) the query evaluated once; per item the KV cache is truncated back to the query and only
      the item's tokens are evaluated after it (the best llama.cpp can do for a shared query).
Then log-softmax over the full vocabulary, pick the labels, softmax (apply_softmax) or exp.

Install (builds llama.cpp from source, about 10 minutes on 2 cores):
    python3 -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install llama-cpp-python==0.3.36 numpy
Usage: /tmp/llvenv/bin/python benches/llamacpp_baseline.py --inputs inputs.json --json llama.json \
           [--scenarios q200_i16_l2] [--methods a,b] [--iters 2] [--threads 2]
Not part of the serving path or of any test.
"""

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

from baseline_common import summarize


def finish(np, logits, labels: list[int], apply_softmax: bool) -> list[float]:
    row = np.asarray(logits, dtype=np.float64)
    m = row.max()
    lse = m + math.log(np.exp(row - m).sum())
    lp = [float(row[t] - lse) for t in labels]
    if apply_softmax:
        mm = max(lp)
        e = [math.exp(x - mm) for x in lp]
        s = sum(e)
        return [x / s for x in e]
    return [math.exp(x) for x in lp]


def last_row(np, llm):
    n_vocab = llm.n_vocab()
    # With logits_all=False only the last evaluated position's row is kept.
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,)).copy()


def per_item(np, llm, query, items, labels, softmax):
    rows = []
    for item in items:
        llm.reset()
        llm.eval(query + item)
        rows.append(finish(np, last_row(np, llm), labels, softmax))
    return rows


def shared_query(np, llm, query, items, labels, softmax):
    rows = []
    llm.reset()
    llm.eval(query)
    for item in items:
        # Drop everything after the query from the KV cache, then evaluate the item after it.
        llm._ctx.kv_cache_seq_rm(-1, len(query), -1)
        llm.n_tokens = len(query)
        llm.eval(item)
        rows.append(finish(np, last_row(np, llm), labels, softmax))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", required=True, type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--scenarios", default="")
    ap.add_argument("--methods", default="a,b")
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import llama_cpp
    import numpy as np

    doc = json.loads(args.inputs.read_text())
    wanted = [s for s in args.scenarios.split(",") if s]
    scenarios = [s for s in doc["scenarios"] if not wanted or s["name"] in wanted]
    longest = max(len(s["query_ids"]) + max(len(i) for i in s["item_ids"]) for s in scenarios)
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=doc["model"], n_ctx=max(512, longest + 8), n_batch=max(512, longest + 8),
        n_threads=args.threads, n_threads_batch=args.threads, logits_all=False, verbose=False,
    )
    load_s = time.perf_counter() - t0
    print(f"loaded {Path(doc['model']).name} in {load_s:.1f} s", flush=True)
    results = []
    llm.eval([1, 2, 3, 4])  # warm-up
    for sc in scenarios:
        query, items = sc["query_ids"], sc["item_ids"]
        labels, softmax = sc["label_ids"], sc["apply_softmax"]
        prompt_tokens = sum(len(query) + len(i) for i in items)
        entry = {"name": sc["name"], "items": len(items), "labels": len(labels),
                 "query_tokens": sc["query_tokens"], "prompt_tokens": prompt_tokens}
        for m in [m for m in args.methods.split(",") if m]:
            run = per_item if m == "a" else shared_query
            lat, scores = [], None
            for _ in range(args.iters):
                t = time.perf_counter()
                rows = run(np, llm, query, items, labels, softmax)
                lat.append(time.perf_counter() - t)
                scores = scores or rows
            entry[m] = summarize(lat, len(items), prompt_tokens) | {"scores": scores}
            print(f"{sc['name']} ({m}): {entry[m]['items_per_s']:.3f} items/s, "
                  f"p50 {entry[m]['p50_ms']:.0f} ms over {args.iters}", flush=True)
        results.append(entry)
    out = {
        "bench": "llamacpp_baseline",
        "unix_time": int(time.time()),
        "llama_cpp_python": llama_cpp.__version__,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "model": doc["model"],
        "load_s": load_s,
        "scenarios": results,
    }
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
