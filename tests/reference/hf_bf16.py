#!/usr/bin/env python3
"""Write `goldens/bf16_scores.json`: Hugging Face transformers in bfloat16 on the same GGUF weights.

For each model, transformers loads the GGUF file with `dtype=torch.bfloat16` and
`GgufConfig(dequantize=True)` (dense weights: the dequantized values rounded to bf16, as the engine's
`--dtype bf16` stores them; without it transformers keeps the GGUF blocks packed and its kernels compute
in float32, which is not a bf16 reference) and computes, exactly as `hf_scores.py`
does in float32 (`compute_case`: one forward per item, `logits[0, -1]`, log-softmax over the full
vocabulary in float64 from the model's bf16 logits), a subset of the score cases of
`goldens/<alias>.json`: `CASES`, four with `apply_softmax` and four without. The prompt ids are checked
against the float32 golden, so both files describe the same requests.

`engine/tests/bf16_compute.rs` holds the engine's `--dtype bf16` within 1e-2 of these scores.

Run (see README.md): python3 tests/reference/hf_bf16.py [--only ALIAS]... (~6 min on 2 busy cores for
the three models; --only keeps the other models' entries of an existing file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import hf_scores  # beside this file (python puts the script's folder on sys.path)

GOLDENS = hf_scores.GOLDENS
OUT = GOLDENS / "bf16_scores.json"

# Present in every model's golden file; four softmax, four not.
CASES = [
    "pledge_empty_and_to",
    "pledge_softmax",
    "city_item_first",
    "yes_no_probs",
    "labels_16_probs",
    "chat_template",
    "temperature_half",
    "unicode_accents",
]


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    ap = argparse.ArgumentParser()
    home = Path(os.environ.get("SCORER_HOME", Path.home() / ".cache" / "scorer"))
    ap.add_argument("--models-dir", type=Path, default=home / "models")
    ap.add_argument("--only", choices=sorted(hf_scores.MODELS), action="append")
    args = ap.parse_args()

    hf_scores.set_threads()
    doc = json.loads(OUT.read_text()) if OUT.exists() else {}
    doc["dtype"] = "bfloat16"
    doc["versions"] = hf_scores.versions()
    doc["cases"] = CASES
    models = doc.setdefault("models", {})
    for alias, fname in hf_scores.MODELS.items():
        if args.only and alias not in args.only:
            continue
        t0 = time.time()
        opts = hf_scores.MODEL_OPTIONS.get(alias, {})
        fwd = opts.get("forward_kwargs", {})
        tok = AutoTokenizer.from_pretrained(str(args.models_dir), gguf_file=fname)
        # Dense bf16 weights: transformers' packed GGUF kernels would compute in float32.
        dense = GgufConfig(gguf_file=str(args.models_dir / fname), dequantize=True)
        model = AutoModelForCausalLM.from_pretrained(str(args.models_dir), gguf_file=fname,
                                                     dtype=torch.bfloat16, quantization_config=dense,
                                                     **opts.get("load_kwargs", {}))
        weight_dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
        if weight_dtypes != ["bfloat16"]:
            raise SystemExit(f"{alias}: parameters in {weight_dtypes}, not bfloat16 only")
        model.eval()
        print(f"{alias}: loaded in {time.time() - t0:.1f}s", file=sys.stderr)
        f32 = json.loads((GOLDENS / f"{alias}.json").read_text())
        by_name = {c["name"]: c for c in f32["score_cases"]}
        out = []
        for name in CASES:
            case = compute_case_checked(tok, model, by_name[name], fwd)
            out.append(case)
        models[alias] = {
            "gguf_file": fname,
            "attn_implementation": model.config._attn_implementation,
            "weights": "dense bfloat16 (GgufConfig(dequantize=True))",
            "logits_dtype": "bfloat16",
            "score_cases": out,
        }
        print(f"{alias}: {len(out)} cases in {time.time() - t0:.1f}s", file=sys.stderr)
        del model
    OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)


def compute_case_checked(tok, model, golden: dict, fwd: dict) -> dict:
    request = {k: golden[k] for k in ("name", "query", "items", "label_token_ids", "apply_softmax",
                                      "item_first", "temperature")}
    got = hf_scores.compute_case(tok, model, request, fwd)
    if got["prompt_token_ids"] != golden["prompt_token_ids"]:
        raise SystemExit(f"{golden['name']}: prompt ids differ from the float32 golden")
    return got


if __name__ == "__main__":
    main()
