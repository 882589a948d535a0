#!/usr/bin/env python3
"""The transformers half of scripts/device-check.sh (docs/ACCELERATORS.md).

Subcommands, each writing JSON:
  make-model  a random-weight Qwen2-0.5B- or Qwen3-0.6B-shaped HF directory (or a tiny one with
              --small), bf16 safetensors, with the tokenizer.json of a committed tiny checkpoint
              (the check sends token ids; the engine only needs a tokenizer file to load);
  cases       goldens-style token-id /v1/score cases (label counts 1-16, softmax and probs,
              empty-ish and long queries, 1-16 items);
  inputs      the bench requests: a Q-token query, N items of K tokens, L labels, R variants;
  score       score cases with transformers, one forward per item (SGLang's reference method:
              logits[0, -1], log-softmax over the vocabulary, pick the labels; softmax over them
              or exp);
  bench       time the bench requests with transformers: (a) one forward per item, (b) one
              left-padded batch per request (logits_to_keep=1);
  summarize   compare engine and transformers scores, add FLOP figures, print ONE JSON summary.
Nothing here downloads anything: the device machine has no network.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOKENIZER = REPO / "tests/reference/goldens/tiny-qwen2-f32/tokenizer.json"

SHAPES = {
    # Qwen2.5-0.5B (tied embeddings).
    "qwen2": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                  tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6,
                  max_position_embeddings=32768),
    # Qwen3-0.6B (tied embeddings, q/k norms, head_dim 128).
    "qwen3": dict(model_type="qwen3", hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                  tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6,
                  max_position_embeddings=40960),
}
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=2048, max_position_embeddings=4096)


def dump(obj, path: str | None) -> None:
    text = json.dumps(obj)
    if path:
        Path(path).write_text(text)
    else:
        print(text)


def torch_device(name: str):
    import torch
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("DEVICE_CHECK: torch sees no CUDA device")
    return torch.device(name)


def make_model(a) -> None:
    import torch
    import transformers
    shape = dict(SHAPES[a.arch])
    if a.small:
        shape.update(SMALL)
        if a.arch == "qwen3":
            shape["head_dim"] = 16
    torch.manual_seed(a.seed)
    config = transformers.AutoConfig.for_model(**shape)
    config.initializer_range = a.init_std
    # Initialising 0.5B parameters is quicker on the GPU; the weights are the same either way
    # only up to the RNG stream, which is why the seed is recorded, not the values.
    device = a.device if a.device != "cuda" or torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config)
    model = model.to(torch.bfloat16)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    (out / "tokenizer.json").write_bytes(TOKENIZER.read_bytes())
    params = sum(p.numel() for p in model.parameters())
    dump({"dir": str(out), "arch": a.arch, "params": params, "init_device": device,
          "transformers": transformers.__version__, "torch": torch.__version__}, None)


def cases(a) -> None:
    rng = random.Random(a.seed)
    vocab = json.loads(Path(a.config).read_text())["vocab_size"]
    tok = lambda n: [rng.randrange(vocab) for _ in range(n)]  # noqa: E731
    out = []
    for q, n_items, n_labels, softmax, item_len in [
        (1, 1, 1, True, 1), (7, 2, 2, True, 3), (7, 2, 2, False, 3), (33, 3, 4, False, 5),
        (33, 4, 16, True, 9), (120, 16, 2, True, 20), (200, 8, 8, False, 12), (64, 1, 2, True, 300),
    ]:
        if a.small:
            q, item_len = min(q, 40), min(item_len, 24)
        out.append(dict(name=f"q{q}_i{n_items}_l{n_labels}_{'softmax' if softmax else 'probs'}",
                        query=tok(q), items=[tok(item_len) for _ in range(n_items)],
                        labels=rng.sample(range(vocab), n_labels), apply_softmax=softmax))
    dump({"cases": out}, a.out)


def inputs(a) -> None:
    rng = random.Random(a.seed)
    vocab = json.loads(Path(a.config).read_text())["vocab_size"]
    reqs = []
    for _ in range(a.variants):
        reqs.append(dict(query=[rng.randrange(vocab) for _ in range(a.query_tokens)],
                         items=[[rng.randrange(vocab) for _ in range(a.item_tokens)] for _ in range(a.items)],
                         labels=rng.sample(range(vocab), a.labels), apply_softmax=False))
    dump({"requests": reqs}, a.out)


def load(model_dir: str, dtype: str, device):
    import torch
    import transformers
    dt = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=dt)
    return model.to(device).eval()


def score_per_item(model, device, case) -> list[list[float]]:
    import torch
    rows = []
    with torch.inference_mode():
        for item in case["items"]:
            ids = torch.tensor([case["query"] + item], device=device)
            logits = model(ids, logits_to_keep=1).logits[0, -1].float()
            lp = torch.log_softmax(logits, dim=-1)[case["labels"]]
            rows.append((torch.softmax(lp, dim=-1) if case["apply_softmax"] else lp.exp()).tolist())
    return rows


def score_padded(model, device, case) -> list[list[float]]:
    import torch
    prompts = [case["query"] + item for item in case["items"]]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    with torch.inference_mode():
        logits = model(ids, attention_mask=mask, logits_to_keep=1).logits[:, -1].float()
        lp = torch.log_softmax(logits, dim=-1)[:, case["labels"]]
        out = torch.softmax(lp, dim=-1) if case["apply_softmax"] else lp.exp()
    return out.tolist()


def sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()


def score(a) -> None:
    device = torch_device(a.device)
    t = time.perf_counter()
    model = load(a.model, a.dtype, device)
    load_s = time.perf_counter() - t
    data = json.loads(Path(a.cases).read_text())["cases"]
    results = [{"name": c["name"], "scores": score_per_item(model, device, c)} for c in data]
    dump({"dtype": a.dtype, "load_s": load_s, "results": results}, a.out)


def hf_run(a) -> None:
    """Everything transformers does for one model in one process (importing torch is slow):
    the cases in f32 and bf16, then the bench in bf16."""
    device = torch_device(a.device)
    data = json.loads(Path(a.cases).read_text())["cases"]
    out = Path(a.out_prefix)
    for dtype in a.dtypes.split(","):
        t = time.perf_counter()
        model = load(a.model, dtype, device)
        load_s = time.perf_counter() - t
        results = [{"name": c["name"], "scores": score_per_item(model, device, c)} for c in data]
        dump({"dtype": dtype, "load_s": load_s, "results": results}, f"{out}_{dtype}.json")
        del model
    if a.inputs:
        a.model, a.dtype, a.out = a.model, "bf16", f"{out}_bench.json"
        bench(a)


def pct(ms: list[float], q: float) -> float:
    v = sorted(ms)
    return v[max(1, min(len(v), math.ceil(q * len(v)))) - 1]


def bench(a) -> None:
    device = torch_device(a.device)
    model = load(a.model, a.dtype, device)
    reqs = json.loads(Path(a.inputs).read_text())["requests"]
    out = {"dtype": a.dtype, "device": str(device)}
    for method, fn in (("per_item", score_per_item), ("padded_batch", score_padded)):
        if method not in a.methods.split(","):
            continue
        for r in reqs[: a.warmup]:
            fn(model, device, r)
        ms, budget_end = [], time.perf_counter() + a.max_seconds
        for i in range(a.iters):
            sync(device)
            t = time.perf_counter()
            fn(model, device, reqs[i % len(reqs)])
            sync(device)
            ms.append((time.perf_counter() - t) * 1e3)
            if time.perf_counter() > budget_end:
                break
        n_items = len(reqs[0]["items"])
        out[method] = {"n": len(ms), "p50_ms": statistics.median(ms), "p99_ms": pct(ms, 0.99),
                       "items_per_s": n_items * len(ms) / (sum(ms) / 1e3)}
    dump(out, a.out)


def flop_per_request(config: dict, req: dict) -> float:
    """Useful FLOPs: the query once and each item after it (shared prefix), attention over the
    causal context, and the full-vocabulary LM head at each scored position."""
    h, f, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    hd = config.get("head_dim") or h // heads
    per_token = 2 * layers * (h * heads * hd + 2 * h * kv * hd + heads * hd * h + 3 * h * f)
    q = len(req["query"])
    total = 0.0
    ctx_sum = q * (q + 1) / 2
    for item in req["items"]:
        n = len(item)
        ctx_sum += sum(q + j + 1 for j in range(n))
    tokens = q + sum(len(i) for i in req["items"])
    total += per_token * tokens
    total += 4 * layers * heads * hd * ctx_sum  # QK^T and PV
    total += 2 * h * config["vocab_size"] * len(req["items"])
    return total


def max_diff(a_rows, b_rows) -> float:
    return max((abs(x - y) for ra, rb in zip(a_rows, b_rows) for x, y in zip(ra, rb)), default=float("nan"))


def compare(engine_json, hf_json) -> dict:
    e = {r["name"]: r["scores"] for r in engine_json["results"]}
    h = {r["name"]: r["scores"] for r in hf_json["results"]}
    per = {n: max_diff(e[n], h[n]) for n in h if n in e}
    return {"cases": len(per), "max_abs_diff": max(per.values(), default=float("nan")), "per_case": per}


def why_failed(part: Path) -> str:
    """The engine's or Python's error line from the step's .err file, if there is one."""
    errs = [part.with_suffix(".err"), part.with_name(part.name.rsplit("_", 1)[0] + ".err")]
    for err in errs:
        if err.is_file():
            lines = [l.strip() for l in err.read_text(errors="replace").splitlines()]
            lines = [l for l in lines if l and not l[0].isdigit() and not l.startswith("at ")]
            for i, l in enumerate(lines):
                if l.startswith(("Error", "DEVICE_CHECK", "RuntimeError", "torch.", "PJRT")) or "Error:" in l:
                    chunk = []
                    for m in lines[i:i + 8]:
                        if m.startswith("Stack backtrace"):
                            break
                        if m != "Caused by:":
                            chunk.append(m)
                    return " | ".join(chunk)[:400]
            if lines:
                return lines[-1][:300]
    return "no result (timed out or skipped past the deadline; see the log)"


def summarize(a) -> None:
    parts, paths = {}, {}
    for kv in a.part:
        name, _, path = kv.partition("=")
        p = Path(path)
        paths[name] = p
        parts[name] = json.loads(p.read_text()) if p.is_file() and p.stat().st_size else None
    out = {"platform": a.platform, "small": a.small, "wall_s": a.wall_s, "errors": []}
    for model in ("qwen2", "qwen3"):
        m = {}
        config_path = Path(a.models_dir) / model / "config.json"
        if parts.get(f"{model}_skip"):
            m["skipped"] = parts[f"{model}_skip"]
        for dtype, tol in (("f32", 1e-3), ("bf16", 1e-2)):
            eng, hf = parts.get(f"{model}_engine_{dtype}"), parts.get(f"{model}_hf_{dtype}")
            if eng and hf:
                c = compare(eng, hf)
                c["tolerance"] = tol
                c["pass"] = c["max_abs_diff"] <= tol
                m[f"scores_{dtype}"] = c
        eb, hb = parts.get(f"{model}_engine_bench"), parts.get(f"{model}_hf_bench")
        inputs = parts.get(f"{model}_inputs")
        if (eb or hb) and inputs and config_path.is_file():
            config = json.loads(config_path.read_text())
            req = inputs["requests"][0]
            gflop = flop_per_request(config, req) / 1e9
            n_items = len(req["items"])
            bench = {"request": f"q{len(req['query'])} x {n_items} items x {len(req['labels'])} labels "
                                f"(items of {len(req['items'][0])} tokens)", "useful_gflop_per_request": gflop}
            if eb:
                c1 = eb["concurrency1"]
                bench["engine"] = {"p50_ms": c1["p50_ms"], "p99_ms": c1["p99_ms"],
                                   "items_per_s": eb["concurrency1_items_per_s"],
                                   "tflops_at_p50": gflop / c1["p50_ms"]}
                if "saturation" in eb:
                    s = eb["saturation"]
                    bench["engine"]["saturation"] = {
                        "items_per_s": s["items_per_s"], "call_p50_ms": s["call_latency"]["p50_ms"],
                        "call_p99_ms": s["call_latency"]["p99_ms"], "batch": s["batch"],
                        "threads": s["threads"],
                        "tflops": s["items_per_s"] / n_items * gflop / 1e3}
            if hb:
                for method in ("per_item", "padded_batch"):
                    if method in hb:
                        r = hb[method]
                        bench[f"hf_{method}"] = dict(r, tflops_at_p50=gflop / r["p50_ms"])
            m["bench"] = bench
        out[model] = m
    if parts.get("probe"):
        p = parts["probe"]
        out["plugin"] = {k: p.get(k) for k in ("plugin", "api_version", "header_version", "platform",
                                                 "platform_version", "devices", "client_error",
                                                 "preloaded", "load_s", "client_s")}
    if parts.get("probe_options"):
        p = parts["probe_options"]
        out["plugin"]["with_gpu_options"] = {k: p.get(k) for k in ("client_options", "client_s",
                                                                   "client_error")}
    for name, v in parts.items():
        if v is None and not name.endswith("_skip"):
            out["errors"].append(f"{name}: {why_failed(paths[name])}")
    print(json.dumps(out, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("make-model")
    p.add_argument("--arch", choices=sorted(SHAPES), required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--small", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-std", type=float, default=0.02)
    p.add_argument("--device", default="cpu", help="where to initialise the weights (cuda: faster)")
    for name in ("cases", "inputs"):
        p = sub.add_parser(name)
        p.add_argument("--config", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--small", action="store_true")
        if name == "inputs":
            p.add_argument("--query-tokens", type=int, default=200)
            p.add_argument("--items", type=int, default=16)
            p.add_argument("--item-tokens", type=int, default=20)
            p.add_argument("--labels", type=int, default=2)
            p.add_argument("--variants", type=int, default=8)
    p = sub.add_parser("score")
    p.add_argument("--model", required=True)
    p.add_argument("--cases", required=True)
    p.add_argument("--dtype", choices=["f32", "bf16"], required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out")
    p = sub.add_parser("bench")
    p.add_argument("--model", required=True)
    p.add_argument("--inputs", required=True)
    p.add_argument("--dtype", choices=["f32", "bf16"], default="bf16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--max-seconds", type=float, default=30.0)
    p.add_argument("--methods", default="per_item,padded_batch")
    p.add_argument("--out")
    p = sub.add_parser("hf-run")
    p.add_argument("--model", required=True)
    p.add_argument("--cases", required=True)
    p.add_argument("--dtypes", default="f32,bf16")
    p.add_argument("--inputs")
    p.add_argument("--device", default="cuda")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--max-seconds", type=float, default=30.0)
    p.add_argument("--methods", default="per_item,padded_batch")
    p.add_argument("--out-prefix", required=True)
    p = sub.add_parser("summarize")
    p.add_argument("--part", action="append", default=[], help="name=path.json")
    p.add_argument("--models-dir", required=True)
    p.add_argument("--platform", required=True)
    p.add_argument("--small", action="store_true")
    p.add_argument("--wall-s", type=float, default=0.0)
    a = ap.parse_args()
    {"make-model": make_model, "cases": cases, "inputs": inputs, "score": score, "bench": bench, "hf-run": hf_run,
     "summarize": summarize}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
