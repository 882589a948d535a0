"""What the peer baselines (hf_baseline.py, llamacpp_baseline.py) report alike, and the helpers of
the tables that compare them (compare.py, peers.py). Standard library only."""

import math
import statistics


def percentile(xs: list[float], q: float) -> float:
    """Nearest rank, as the Rust bench reports it."""
    v = sorted(xs)
    return v[max(1, min(len(v), math.ceil(q * len(v)))) - 1]


def summarize(latencies_s: list[float], items: int, prompt_tokens: int) -> dict:
    total = sum(latencies_s)
    ms = [x * 1e3 for x in latencies_s]
    return {
        "iters": len(ms),
        "latencies_ms": ms,
        "p50_ms": statistics.median(ms),
        "p90_ms": percentile(ms, 0.90),
        "p99_ms": percentile(ms, 0.99),
        "mean_ms": total * 1e3 / len(ms),
        "items_per_s": items * len(ms) / total,
        "prompt_tokens_per_s": prompt_tokens * len(ms) / total,
    }


def fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def max_diff(a, b):
    """Largest absolute difference between two score matrices (None when they do not match)."""
    if not a or not b or len(a) != len(b):
        return None
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))
