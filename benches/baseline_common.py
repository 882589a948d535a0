"""What the peer baselines (hf_baseline.py, llamacpp_baseline.py) report alike."""

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
