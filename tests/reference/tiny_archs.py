#!/usr/bin/env python3
"""Tiny random checkpoints, one per architecture (or RoPE variant) the engine implements, and the
Hugging Face log-probabilities the Rust tests compare against.

No fetchable checkpoint exists here for Qwen3, Llama 3.x, Mistral or Phi-3, so each family gets a tiny
random model built by transformers itself (`from_config` -> re-initialised weights -> `save_pretrained`,
f32 safetensors), reloaded from disk exactly as a user would (`from_pretrained(dir)`), and run with
`attn_implementation="eager"` (the plain masked-softmax path, where transformers applies the sliding
window in the mask it builds).

Every feature a checkpoint exists to test is checked here to make a difference at the prompt lengths
used: the sliding window (rerun with it disabled), the RoPE scaling (rerun with default RoPE), Gemma's
soft-capping and `query_pre_attn_scalar`. A feature that changed nothing would make its golden
unable to catch a missing implementation, so the script refuses to write it.

Output: `goldens/tiny-<name>/` (config.json + model.safetensors) and `goldens/tiny_archs.json`
(format: see README.md). Run: `python3 tests/reference/tiny_archs.py` (seconds on CPU).
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOLDENS = HERE / "goldens"

VOCAB = 256
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
              bos_token_id=1, eos_token_id=2, pad_token_id=0)
WINDOW = 8


def specs() -> list[dict]:
    """One entry per checkpoint: name, config class, its kwargs, and what to check matters."""
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen3Config

    def llama(rope: dict, **kw) -> dict:
        return dict(COMMON, head_dim=16, max_position_embeddings=256, tie_word_embeddings=False,
                    rope_parameters=rope, **kw)

    return [
        dict(name="qwen3", cls=Qwen3Config, rope_check=False,
             cfg=dict(COMMON, head_dim=32, max_position_embeddings=256, tie_word_embeddings=True,
                      rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
             notes="Qwen3ForCausalLM: QK-norm (q_norm/k_norm over head_dim), explicit head_dim 32 "
                   "(!= hidden/heads = 16, so q_proj is 64->128), no biases, tied head, "
                   "use_sliding_window false (no window)."),
        dict(name="llama3-rope", cls=LlamaConfig, rope_check=True, legacy_rope=True,
             cfg=llama({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 64}) | {"tie_word_embeddings": True},
             notes="LlamaForCausalLM with rope_scaling llama3 (factor 8, low 1, high 4, original max 64, "
                   "theta 500000: of head_dim 16's 8 frequencies, 1 is kept, 1 is smoothed, 6 are divided "
                   "by 8), tied head as Llama 3.2. config.json was REWRITTEN after save_pretrained into "
                   "the legacy form (rope_theta + rope_scaling, no rope_parameters), as Hub checkpoints "
                   "write it; the goldens come from reloading that file."),
        dict(name="llama-linear", cls=LlamaConfig, rope_check=True,
             cfg=llama({"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}),
             notes="LlamaForCausalLM, rope_parameters linear factor 4 (positions divided by 4)."),
        dict(name="llama-dynamic", cls=LlamaConfig, rope_check=False,
             cfg=llama({"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0}),
             notes="LlamaForCausalLM, rope_parameters dynamic factor 4, max_position_embeddings 256. "
                   "Every prompt is shorter than 256, where transformers' dynamic NTK RoPE equals the "
                   "default RoPE (it rescales only past max_position_embeddings), so these goldens check "
                   "that dynamic is accepted and computed as default below the limit."),
        dict(name="llama-yarn", cls=LlamaConfig, rope_check=True,
             cfg=llama({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                        "original_max_position_embeddings": 64}),
             notes="LlamaForCausalLM, rope_parameters yarn factor 4, original_max_position_embeddings 64, "
                   "max_position_embeddings 256 (beta_fast 32, beta_slow 1, attention_factor "
                   "0.1*ln(4)+1 and truncate true by transformers' defaults)."),
        dict(name="mistral-sw", cls=MistralConfig, rope_check=False, window=True,
             cfg=dict(COMMON, head_dim=16, max_position_embeddings=256, tie_word_embeddings=False,
                      sliding_window=WINDOW, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
             notes=f"MistralForCausalLM, sliding_window {WINDOW} on every layer: the token at position p "
                   f"attends to positions > p - {WINDOW}."),
        dict(name="phi3", cls=Phi3Config, rope_check=False,
             cfg=dict(COMMON, max_position_embeddings=256, original_max_position_embeddings=256,
                      tie_word_embeddings=False, sliding_window=None,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
             notes="Phi3ForCausalLM: fused self_attn.qkv_proj (rows q | k | v) and mlp.gate_up_proj "
                   "(rows gate | up), no biases, sliding_window null, no rope scaling."),
        dict(name="gemma3-sw", cls=Gemma3TextConfig, rope_check=False, window=True, gemma=True,
             cfg=dict(COMMON, head_dim=16, max_position_embeddings=256, tie_word_embeddings=True,
                      sliding_window=WINDOW,
                      layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                      rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                       "full_attention": {"rope_type": "default", "rope_theta": 1e6}},
                      query_pre_attn_scalar=24, final_logit_softcapping=30.0,
                      attn_logit_softcapping=None, hidden_activation="gelu_pytorch_tanh"),
             notes=f"Gemma3ForCausalLM (gemma3_text): layers 0,1 sliding (window {WINDOW}, rope theta "
                   "10000), layer 2 full (theta 1e6); embeddings scaled by sqrt(64)=8; RMSNorm (1+w)*x on "
                   "input/post-attention/pre-feedforward/post-feedforward/q_norm/k_norm/final norms "
                   "(weights stored around 0); attention scale 24**-0.5; gelu_pytorch_tanh; final logit "
                   "soft-capping 30 (final norm weights around 1, a scale of 2, so logits reach the cap's curved range); "
                   "tied head."),
    ]


def reinit(model, gemma: bool) -> None:
    """Weights large enough that logits are far from flat; norms near their identity value."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                base = 0.0 if gemma else 1.0
                if gemma and name == "model.norm.weight":
                    base = 1.0
                p.copy_(base + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))


def prompts(seed: int) -> tuple[list[dict], list[dict]]:
    """Whole prompts (one longer than 3x the window) and multi-item groups (query > window)."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return [int(x) for x in torch.randint(3, VOCAB, (n,), generator=g)]

    cases = [
        {"name": "short_5", "ids": [1] + ids(4)},
        {"name": "window_plus_one_9", "ids": [1] + ids(8)},
        {"name": "medium_17", "ids": ids(17)},
        {"name": "long_40", "ids": [1] + ids(39)},
        {"name": "long_70", "ids": ids(70)},
    ]
    multi = [
        {"query_ids": [1] + ids(19), "items": [ids(1), ids(4), ids(12), ids(7)]},
        {"query_ids": ids(23), "items": [ids(2), ids(9), ids(11)]},
    ]
    return cases, multi


def last_logprobs(model, ids: list[int]) -> list[float]:
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids], dtype=torch.long)).logits[0, -1].to(torch.float64)
    return [float(x) for x in torch.log_softmax(logits, dim=-1)]


def max_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b))


def variant(spec: dict, state: dict, **cfg_changes):
    """The same weights under a config with one feature changed (for the 'does it matter' checks)."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = spec["cls"](**(copy.deepcopy(spec["cfg"]) | cfg_changes))
    m = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32).eval()
    m.load_state_dict(state)
    return m


def legacy_rope_config(path: Path) -> None:
    """Rewrite a saved config.json from `rope_parameters` to Hub-style `rope_theta` + `rope_scaling`."""
    cfg = json.loads(path.read_text())
    rope = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = rope.pop("rope_theta")
    cfg["rope_scaling"] = rope
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def build(spec: dict, seed: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = spec["cls"](**copy.deepcopy(spec["cfg"]))
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32).eval()
    reinit(model, spec.get("gemma", False))
    out = GOLDENS / f"tiny-{spec['name']}"
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(str(out), safe_serialization=True)
    (out / "generation_config.json").unlink(missing_ok=True)
    if spec.get("legacy_rope"):
        legacy_rope_config(out / "config.json")

    hf = AutoModelForCausalLM.from_pretrained(str(out), attn_implementation="eager", dtype=torch.float32).eval()
    saved = json.loads((out / "config.json").read_text())
    cases, multi = prompts(seed)
    for c in cases:
        c["last_logprobs"] = last_logprobs(hf, c["ids"])
    for group in multi:
        group["item_last_logprobs"] = [last_logprobs(hf, group["query_ids"] + it) for it in group["items"]]

    # The reloaded model is the one the goldens come from; it must equal the one built in memory
    # (catches a legacy config.json that transformers would read differently).
    long_ids = cases[3]["ids"]
    if max_diff(last_logprobs(model, long_ids), cases[3]["last_logprobs"]) > 1e-6:
        raise SystemExit(f"{spec['name']}: reloaded checkpoint differs from the one saved")
    # Eager and SDPA must agree: the eager path is not a special case of transformers.
    sdpa = AutoModelForCausalLM.from_pretrained(str(out), attn_implementation="sdpa", dtype=torch.float32).eval()
    if max_diff(last_logprobs(sdpa, long_ids), cases[3]["last_logprobs"]) > 1e-4:
        raise SystemExit(f"{spec['name']}: eager and sdpa attention disagree")

    state = hf.state_dict()
    checks = {}
    if spec.get("window"):
        # Gemma keeps its layer types (they also pick the RoPE theta): a window longer than any prompt.
        changes = {"sliding_window": 4096 if spec.get("gemma") else None}
        checks["window_disabled"] = max_diff(last_logprobs(variant(spec, state, **changes), long_ids),
                                             cases[3]["last_logprobs"])
        # Below the window the result must not change: the window is the only difference.
        checks["window_disabled_short"] = max_diff(last_logprobs(variant(spec, state, **changes),
                                                                 cases[0]["ids"]), cases[0]["last_logprobs"])
        if checks["window_disabled_short"] > 1e-5:
            raise SystemExit(f"{spec['name']}: disabling the window changed a prompt shorter than it")
    if spec["rope_check"]:
        theta = spec["cfg"]["rope_parameters"]["rope_theta"]
        checks["rope_default"] = max_diff(
            last_logprobs(variant(spec, state, rope_parameters={"rope_type": "default", "rope_theta": theta}),
                          long_ids), cases[3]["last_logprobs"])
    if spec["name"] == "llama-dynamic":
        # The notes' claim: below max_position_embeddings, dynamic RoPE is the default RoPE.
        theta = spec["cfg"]["rope_parameters"]["rope_theta"]
        same = max_diff(last_logprobs(variant(spec, state, rope_parameters={"rope_type": "default",
                                                                              "rope_theta": theta}),
                                      cases[4]["ids"]), cases[4]["last_logprobs"])
        if same > 1e-6:
            raise SystemExit(f"llama-dynamic: differs from default RoPE below the limit by {same:.2e}")
    if spec.get("gemma"):
        checks["no_softcap"] = max_diff(last_logprobs(variant(spec, state, final_logit_softcapping=None),
                                                      long_ids), cases[3]["last_logprobs"])
        checks["scalar_head_dim"] = max_diff(last_logprobs(variant(spec, state, query_pre_attn_scalar=16),
                                                           long_ids), cases[3]["last_logprobs"])
    for what, d in checks.items():
        if not what.endswith("_short") and d < 1e-2:
            raise SystemExit(f"{spec['name']}: {what} changes the 40-token log-probs by only {d:.2e}")

    flat = [x for c in cases for x in c["last_logprobs"]]
    print(f"tiny-{spec['name']}: checks {({k: round(v, 4) for k, v in checks.items()})}, "
          f"log-prob spread {min(flat):.1f}..{max(flat):.1f}", file=sys.stderr)
    return {
        "dir": out.name,
        "model_type": saved["model_type"],
        "architectures": saved.get("architectures"),
        "sliding_window": saved.get("sliding_window"),
        "layer_types": saved.get("layer_types"),
        "config_form": "legacy rope_theta + rope_scaling" if spec.get("legacy_rope") else "rope_parameters",
        "notes": spec["notes"],
        "feature_checks": {k: v for k, v in checks.items()},
        "cases": cases,
        "multi_item": multi,
    }


def main() -> None:
    import torch

    sys.path.insert(0, str(HERE))
    from hf_scores import versions

    torch.set_num_threads(2)
    models = {}
    for i, spec in enumerate(specs()):
        models[spec["name"]] = build(spec, 1000 + i)
    doc = {"versions": versions(),
           "attn_implementation": "eager",
           "tolerance": 1e-4,
           "models": models}
    (GOLDENS / "tiny_archs.json").write_text(json.dumps(doc, indent=None) + "\n")
    print(f"wrote {GOLDENS / 'tiny_archs.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
