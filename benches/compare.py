#!/usr/bin/env python3
"""Side-by-side table of score_bench (ours) and hf_baseline (HF) results: items/s, p50 latency,
ratios, the largest score difference, and the issue's targets. Standard library only.

Usage: python3 benches/compare.py ours.json hf.json
"""

import json
import sys

from baseline_common import fmt, max_diff


def main() -> None:
    ours = json.load(open(sys.argv[1]))
    hf = json.load(open(sys.argv[2])) if len(sys.argv) > 2 else {"scenarios": []}
    base = {s["name"]: s for s in hf["scenarios"]}

    print(f"matmul ceiling {ours['ceiling_gflops']:.1f} GFLOP/s (start {ours['ceiling_start']['gflops']:.1f}, "
          f"end {ours['ceiling_end']['gflops']:.1f}); machine load avg at the end: {ours['machine'].get('load_avg')}")
    print()
    print("| scenario | prompt tok | ours items/s | HF (a) items/s | HF (b) items/s | ours/(a) | ours/(b) "
          "| ours p50 ms | (a) p50 ms | (b) p50 ms | ours GFLOP/s | % ceiling | max abs diff vs (a) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in ours["scenarios"]:
        h = base.get(s["name"], {})
        a, b = h.get("a"), h.get("b")
        ia = a["items_per_s"] if a else None
        ib = b["items_per_s"] if b else None
        print(
            f"| {s['name']} | {s['prompt_tokens']} | {s['items_per_s']:.2f} | {fmt(ia, '.3f')} | {fmt(ib, '.3f')} "
            f"| {fmt(s['items_per_s'] / ia if ia else None, '.1f')}x | {fmt(s['items_per_s'] / ib if ib else None, '.1f')}x "
            f"| {s['latency']['p50_ms']:.0f} | {fmt(a['p50_ms'] if a else None, '.0f')} | {fmt(b['p50_ms'] if b else None, '.0f')} "
            f"| {s['gflops']:.1f} | {100 * s['ceiling_fraction']:.0f}% "
            f"| {fmt(max_diff(s['scores'], a['scores'] if a else (b['scores'] if b else None)), '.1e')} |"
        )

    print()
    print("Targets (issue 4):")
    by = {s["name"]: s for s in ours["scenarios"]}
    head = by.get("q200_i16_l2")
    if head and "q200_i16_l2" in base:
        h = base["q200_i16_l2"]
        if "a" in h:
            r = head["items_per_s"] / h["a"]["items_per_s"]
            print(f"  q200 x 16 items x 2 labels vs HF (a): {r:.1f}x (target >= 12x) {'MET' if r >= 12 else 'MISSED'}")
        if "b" in h:
            r = head["items_per_s"] / h["b"]["items_per_s"]
            print(f"  q200 x 16 items x 2 labels vs HF (b): {r:.1f}x (target >= 4x) {'MET' if r >= 4 else 'MISSED'}")
    pre = by.get("prefill1024")
    if pre:
        f = pre["ceiling_fraction"]
        print(f"  1024-token prefill: {pre['gflops']:.1f} GFLOP/s = {100 * f:.0f}% of the ceiling (target >= 60%) "
              f"{'MET' if f >= 0.6 else 'MISSED'}")
    st = ours.get("start")
    if st:
        print(f"  cold start to first score {st['cold_first_score_s']:.1f} s (target <= 30 s) "
              f"{'MET' if st['cold_first_score_s'] <= 30 else 'MISSED'}")
        print(f"  warm start to first score {st['warm_first_score_s']:.1f} s (target <= 5 s) "
              f"{'MET' if st['warm_first_score_s'] <= 5 else 'MISSED'}; {st['warm_compiles']} compiles")
    mem = ours["memory_end"]
    print(f"  peak RSS {mem['peak_rss_bytes'] / 2**30:.2f} GiB, RSS at the end {mem['rss_bytes'] / 2**30:.2f} GiB, "
          f"weights on the device {ours['weight_bytes'] / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
