#!/usr/bin/env python3
"""The issue-15 table: the engine against Hugging Face (a, b) and llama.cpp (a, b) on the same
token ids, in one run, with the engine's fraction of its limit. Standard library only.

limit(request) = (distinct tokens x dense GFLOP per token + scored positions x full-head GFLOP)
                 / the matmul ceiling measured in the same run (the larger of its start/end medians)
fraction of the limit = limit / the engine's p50 latency (1.0: the request ran at the ceiling).
Attention is not in the numerator (the issue's definition), so long prompts understate.

Usage: python3 benches/peers.py --ours a.json [b.json ...] [--hf hf.json] [--llama llama.json]
"""

import argparse
import json

from baseline_common import fmt, max_diff


def load(paths):
    out = {}
    for p in paths or []:
        for s in json.load(open(p))["scenarios"]:
            out[s["name"]] = s
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", nargs="+", required=True)
    ap.add_argument("--hf", nargs="*")
    ap.add_argument("--llama", nargs="*")
    args = ap.parse_args()
    docs = [json.load(open(p)) for p in args.ours]
    hf, ll = load(args.hf), load(args.llama)
    print("| scenario | needed tok | computed | engine items/s | p50 ms | HF (a) | HF (b) | llama.cpp (a) "
          "| llama.cpp (b) | × HF (a) | × llama (b) | ceiling GFLOP/s | limit ms | % of limit | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for d in docs:
        ceiling = d["ceiling_gflops"]
        for s in d["scenarios"]:
            head = 0.0 if s["apply_softmax"] else d["head_gflop_per_position"]
            limit_s = (s["needed_tokens"] * d["dense_gflop_per_token"] + s["items"] * head) / ceiling
            p50 = s["latency"]["p50_ms"]
            h, l = hf.get(s["name"], {}), ll.get(s["name"], {})
            ips = s["items_per_s"]

            def rate(entry, m):
                return entry[m]["items_per_s"] if m in entry else None

            ha, hb, la, lb = rate(h, "a"), rate(h, "b"), rate(l, "a"), rate(l, "b")
            ref = next((e[m]["scores"] for e, m in [(h, "a"), (l, "a"), (l, "b")] if m in e), None)
            print(f"| {s['name']} | {s['needed_tokens']} | {s['padded_tokens']:.0f} | {ips:.2f} | {p50:.0f} "
                  f"| {fmt(ha, '.3f')} | {fmt(hb, '.3f')} | {fmt(la, '.3f')} | {fmt(lb, '.3f')} "
                  f"| {fmt(ips / ha if ha else None, '.1f')} | {fmt(ips / lb if lb else None, '.2f')} "
                  f"| {ceiling:.0f} | {1000 * limit_s:.0f} | {100 * limit_s * 1000 / p50:.0f}% "
                  f"| {fmt(max_diff(s['scores'], ref), '.1e')} |")
    for name, entry in sorted(ll.items()):
        for m in ("a", "b"):
            if m in entry:
                print(f"llama.cpp {name} ({m}): p50 {entry[m]['p50_ms']:.0f} ms")
    for name, entry in sorted(hf.items()):
        for m in ("a", "b"):
            if m in entry:
                print(f"HF {name} ({m}): p50 {entry[m]['p50_ms']:.0f} ms")


if __name__ == "__main__":
    main()
