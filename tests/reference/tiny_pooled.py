#!/usr/bin/env python3
"""The golden of `return_pooled_hidden_states`: Hugging Face's final-norm hidden state at the scored
(last) position, for two of the tiny checkpoints `tiny_archs.py` wrote (Qwen3: plain RMSNorm; Gemma 3:
`1 + w` norm, embedding scale, soft-capped head).

For each checkpoint and each of the first two whole prompts of `goldens/tiny_archs.json` (and the first
item of its first multi-item group, query + item), `model(ids, output_hidden_states=True).hidden_states[-1]`
at the last position: transformers appends the final norm's output as the last hidden state. The script
checks that this is the head's input (the LM head applied to it gives the golden's `last_logprobs`) and
refuses to write the golden otherwise.

Output: `goldens/tiny_pooled.json` `{versions, models: {name: {dir, cases: [{name, ids, hidden}]}}}`.
Run: `python3 tests/reference/tiny_pooled.py` (seconds on CPU; after `tiny_archs.py`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOLDENS = HERE / "goldens"
MODELS = ["qwen3", "gemma3-sw"]


def main() -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    archs = json.loads((GOLDENS / "tiny_archs.json").read_text())
    doc = {"versions": {"transformers": transformers.__version__, "torch": torch.__version__}, "models": {}}
    for name in MODELS:
        entry = archs["models"][name]
        model = AutoModelForCausalLM.from_pretrained(
            str(GOLDENS / entry["dir"]), attn_implementation="eager", dtype=torch.float32
        ).eval()
        group = entry["multi_item"][0]
        cases = [
            {"name": c["name"], "ids": c["ids"], "logprobs": c["last_logprobs"]} for c in entry["cases"][:2]
        ] + [
            {
                "name": "multi_item_0_0",
                "ids": group["query_ids"] + group["items"][0],
                "logprobs": group["item_last_logprobs"][0],
            }
        ]
        out = []
        for c in cases:
            with torch.no_grad():
                res = model(torch.tensor([c["ids"]], dtype=torch.long), output_hidden_states=True)
                hidden = res.hidden_states[-1][0, -1]
                logits = model.lm_head(hidden[None, None, :])[0, -1].to(torch.float64)
                cap = getattr(model.config, "final_logit_softcapping", None)
                if cap:
                    logits = torch.tanh(logits / cap) * cap
                lp = torch.log_softmax(logits, dim=-1)
            diff = max(abs(float(a) - b) for a, b in zip(lp, c["logprobs"]))
            if diff > 1e-5:
                sys.exit(f"{name} {c['name']}: the last hidden state is not the head's input (diff {diff})")
            out.append({"name": c["name"], "ids": c["ids"], "hidden": [float(x) for x in hidden]})
        doc["models"][name] = {"dir": entry["dir"], "hidden_size": model.config.hidden_size, "cases": out}
    path = GOLDENS / "tiny_pooled.json"
    path.write_text(json.dumps(doc, indent=None) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
