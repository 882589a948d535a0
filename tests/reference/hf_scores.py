#!/usr/bin/env python3
"""Write the Hugging Face goldens the Rust tests compare against.

For each GGUF model (loaded by transformers with dtype=float32, i.e. the same dequantized weights the
engine uses) this writes `goldens/<alias>.json` holding:

* `tokenization`: strings -> token ids (add_special_tokens=True, transformers' default) and the decoded text;
* `weights`: a few dequantized tensors of the HF state dict (slices and a position-weighted checksum),
  so the Rust loader is checked against transformers' own GGUF loader, Q/K un-permutation included;
* `score_cases`: /v1/score requests and the scores computed per BRIEF §1 (one forward per item,
  logits[0, -1], log-softmax over the full vocabulary, pick the labels; softmax mode = softmax over the
  picked log-probs / temperature, otherwise exp(log-prob)), with the prompt ids and raw label log-probs.

It also writes `goldens/quant_types.gguf` + `goldens/quant_types.json`: one small tensor per GGML type
the engine must read (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K) with the values the `gguf`
package's own dequantizer gives, an implementation independent of candle's.

Run: see README.md next to this file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GOLDENS = HERE / "goldens"

MODELS = {
    "qwen2.5-coder-0.5b-instruct-q4_k_m": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "smollm2-135m-instruct-q4_1": "smollm2-135m-instruct-q4_1.gguf",
    # Gemma 3 270M (base), published under Gemma's terms of use (see the top-level README).
    "gemma-3-270m-q4_k_m": "gemma-3-270m-q4_k_m.gguf",
}

TOKENIZATION_STRINGS = [
    "",
    " ",
    "Hello world",
    "Hello, world!",
    "I pledge allegiance",
    "I pledge allegiance to",
    "Tokyo is a city",
    " is a city",
    "The quick brown fox jumps over the lazy dog.",
    "   leading spaces",
    "trailing spaces   ",
    "multiple    spaces\tand\ttabs",
    "line one\nline two\n\nline four\r\nwindows",
    "\n\n\n",
    "12345678901234567890",
    "3.14159 and 2,718 and -42 and 1e-9",
    "Price: $1,234.56 (20% off)",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber",
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u6771\u4eac\u306f\u90fd\u5e02\u3067\u3059\u3002",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
    "\u0417\u0434\u0440\u0430\u0432\u0441\u0442\u0432\u0443\u0439, \u043c\u0438\u0440",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "emoji \U0001f600\U0001f680\U0001f44d\U0001f3fd and \u2764\ufe0f",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 family",
    "def add(a, b):\n    return a + b\n",
    "fn main() {\n\tprintln!(\"{}\", x.len());\n}",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "<|im_start|>user\nIs Tokyo a city?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>",
    "<|endoftext|>",
    "text<|endoftext|>more",
    "<|im_end|><|im_start|>",
    "<tool_call>{\"name\": \"f\"}</tool_call>",
    "I'm sure they've done it, we'll see, it's fine, you'd know",
    "UPPER lower MiXeD",
    "a\u00a0b\u2003c",
    "Yes",
    "No",
    " Yes",
    " No",
    "<jupyter_code>print(1)<empty_output>",
    "\u00bfQu\u00e9 tal? \u00a1Bien!",
]


# Strings that exercise a SentencePiece (tokenizer.ggml.model "llama") vocabulary: its control and
# user-defined tokens, byte fallback, runs of spaces (stored as real spaces in Gemma's GGUF), the
# literal "\u2581" and BOS written in the text. Only the Gemma file gets them (the Qwen/SmolLM2 files
# were written before; regenerating them leaves them as they are).
SENTENCEPIECE_STRINGS = [
    "<start_of_turn>user\nIs Tokyo a city?<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text after a written BOS",
    "<eos>",
    "text<eos>more<pad><unk><mask>",
    "<unused0><unused6241>",
    "<start_of_image>[multimodal]<end_of_image>",
    "<b>bold</b> <i>it</i> <s>strike</s> <table><tr><td>1</td></tr></table>",
    "<code>x</code><h1>T</h1>",
    " x",
    "  two leading",
    "a  b   c    d     e",
    "                                   thirty-five spaces",
    "tail  ",
    "\t\tindented\n\t\t\ttabs",
    "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\nmany newlines",
    "\u2581literal lower one eighth block\u2581\u2581",
    "\u0000nul \u0001\u0002\u007f control bytes",
    "private use \ue000\uf8ff and \U000f0000",
    "rare CJK ext. B \U00020000\U0002a6d6 and cuneiform \U00012000",
    "\u1f00\u1f01 \u0f00 \u2c00 \ua500",
    "Yes.",
    "No,",
    "yes no YES NO",
]


def set_threads() -> None:
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))


def single_id(tok, text: str) -> int:
    ids = tok(text, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise SystemExit(f"{text!r} is not one token: {ids}")
    return ids[0]


def label_sets(tok, yes: int, no: int) -> dict[str, list[int]]:
    words = [" the", " a", " to", " of", " and", " in", " is", " it", " that", " for",
             " on", " with", " as", " was", " at", " by"]
    many = []
    for w in words:
        i = single_id(tok, w)
        if i not in many and i not in (yes, no):
            many.append(i)
    if len(many) < 16:
        raise SystemExit(f"need 16 distinct single-token labels, got {len(many)}")
    return {
        "1": [yes],
        "2": [yes, no],
        "4": [yes, no] + many[:2],
        "8": [yes, no] + many[:6],
        "16": [yes, no] + many[:14],
        "many16": many[:16],
    }


CHATML = {"user": "<|im_start|>user\n", "end": "<|im_end|>\n", "assistant": "<|im_start|>assistant\n"}
GEMMA_TURNS = {"user": "<start_of_turn>user\n", "end": "<end_of_turn>\n", "assistant": "<start_of_turn>model\n"}


def long_facts(n: int) -> str:
    """A long, deterministic, natural-looking text (about 12 tokens a line)."""
    return "".join(f"Fact {i}: the number {i} is {'even' if i % 2 == 0 else 'odd'}.\n" for i in range(1, n + 1))


def case_set(tok, yes: int, no: int, chat: dict = CHATML, id_prefix: tuple[int, ...] = ()) -> list[dict]:
    """The /v1/score requests of every model's golden file.

    `chat` holds the model's own turn markers (ChatML for Qwen/SmolLM2, Gemma's turns for Gemma);
    `id_prefix` starts every token-id prompt (Gemma's BOS: a text prompt gets it from the tokenizer,
    an id prompt only if the client sends it, and Gemma is not meant to run without it).
    """
    labels = label_sets(tok, yes, no)
    chat_q = f"{chat['user']}Is this city in Japan? Answer Yes or No.{chat['end'].rstrip()}\n{chat['assistant']}"
    cases = [
        dict(name="pledge_empty_and_to", query="I pledge allegiance", items=["", " to"],
             label_token_ids=labels["4"], apply_softmax=False),
        dict(name="pledge_softmax", query="I pledge allegiance", items=["", " to"],
             label_token_ids=labels["4"], apply_softmax=True),
        dict(name="city_item_first", query=" is a city", items=["Tokyo", "Japan"],
             label_token_ids=labels["2"], item_first=True, apply_softmax=True),
        dict(name="city_item_first_probs", query=" is a city", items=["Tokyo", "Japan"],
             label_token_ids=labels["2"], item_first=True, apply_softmax=False),
        dict(name="yes_no_softmax", query="Is the following a fruit? Answer Yes or No. Item: ",
             items=["apple", "car", "banana"], label_token_ids=[yes, no], apply_softmax=True),
        dict(name="yes_no_probs", query="Is the following a fruit? Answer Yes or No. Item: ",
             items=["apple", "car"], label_token_ids=[yes, no], apply_softmax=False),
        dict(name="labels_1_softmax", query="The capital of France is", items=[" Paris"],
             label_token_ids=labels["1"], apply_softmax=True),
        dict(name="labels_1_probs", query="The capital of France is", items=[" Paris", " Rome"],
             label_token_ids=labels["1"], apply_softmax=False),
        dict(name="labels_8", query="Q: Is water wet?", items=[" A:", " Answer:"],
             label_token_ids=labels["8"], apply_softmax=True),
        dict(name="labels_16_softmax", query="Once upon a time", items=[" there", ","],
             label_token_ids=labels["16"], apply_softmax=True),
        dict(name="labels_16_probs", query="Once upon a time", items=[" there"],
             label_token_ids=labels["many16"], apply_softmax=False),
        dict(name="temperature_half", query="Is the sky blue? Answer:", items=[" Yes", " No"],
             label_token_ids=labels["4"], apply_softmax=True, temperature=0.5),
        dict(name="temperature_two", query="Is the sky blue? Answer:", items=[" Yes"],
             label_token_ids=labels["2"], apply_softmax=True, temperature=2.0),
        dict(name="unicode_cjk", query="\u6771\u4eac\u306f", items=["\u65e5\u672c\u306e\u9996\u90fd",
             "\u90fd\u5e02\u3067\u3059"], label_token_ids=labels["2"], apply_softmax=True),
        dict(name="unicode_accents", query="Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e is", items=[" d\u00e9licieux", " na\u00efve"],
             label_token_ids=labels["4"], apply_softmax=False),
        dict(name="emoji", query="I feel \U0001f600 today, is that good?", items=[" \U0001f44d", " \U0001f680\U0001f525"],
             label_token_ids=labels["2"], apply_softmax=True),
        dict(name="chat_template", query=chat_q, items=["Tokyo", "Paris"],
             label_token_ids=[yes, no], apply_softmax=True),
        dict(name="chat_template_item_first",
             query=f"{chat['end']}{chat['assistant']}", items=[f"{chat['user']}Is Osaka in Japan?",
                                                               f"{chat['user']}Is Lyon in Japan?"],
             label_token_ids=[yes, no], item_first=True, apply_softmax=False),
        dict(name="empty_item", query="Hello there", items=["", " friend"],
             label_token_ids=labels["2"], apply_softmax=True),
        dict(name="empty_query", query="", items=["Hello world", "Good"],
             label_token_ids=labels["2"], apply_softmax=False),
        dict(name="code", query="def add(a, b):\n    return", items=[" a + b\n", " a - b\n"],
             label_token_ids=labels["4"], apply_softmax=True),
        dict(name="whitespace_runs", query="line one\n\n   line", items=["  two\t\t", "\n\n\n"],
             label_token_ids=labels["4"], apply_softmax=False),
        dict(name="per_item_labels", query="Is Tokyo a city? Answer:", items=[" Yes", " No"],
             label_token_ids=[[yes, no], labels["4"][2:4]], apply_softmax=True),
    ]
    # Token-id inputs: ids are concatenated as lists, never re-tokenized.
    pre = list(id_prefix)
    q_ids = pre + tok("The weather today is", add_special_tokens=False).input_ids
    cases += [
        dict(name="token_ids_softmax", query=q_ids,
             items=[tok(" sunny", add_special_tokens=False).input_ids,
                    tok(" rainy and cold", add_special_tokens=False).input_ids],
             label_token_ids=labels["2"], apply_softmax=True),
        dict(name="token_ids_probs_item_first", query=q_ids[len(pre):],
             items=[pre + tok("Tomorrow", add_special_tokens=False).input_ids, pre + [yes, no, yes]],
             label_token_ids=labels["8"], apply_softmax=False, item_first=True),
        dict(name="token_ids_empty_item", query=q_ids, items=[[], [single_id(tok, " warm")]],
             label_token_ids=labels["4"], apply_softmax=True, temperature=1.5),
    ]
    return cases


def compute_case(tok, model, case: dict, forward_kwargs: dict | None = None) -> dict:
    import torch

    forward_kwargs = forward_kwargs or {}
    out = {
        "name": case["name"],
        "query": case["query"],
        "items": case["items"],
        "label_token_ids": case["label_token_ids"],
        "apply_softmax": case.get("apply_softmax", False),
        "item_first": case.get("item_first", False),
        "temperature": case.get("temperature", 1.0),
    }
    text = isinstance(case["query"], str)
    per_item_labels = isinstance(case["label_token_ids"][0], list)
    prompts, logprobs, scores = [], [], []
    for idx, item in enumerate(case["items"]):
        if text:
            s = item + case["query"] if out["item_first"] else case["query"] + item
            ids = tok(s).input_ids
        else:
            ids = list(item) + list(case["query"]) if out["item_first"] else list(case["query"]) + list(item)
        if not ids:
            raise SystemExit(f"case {case['name']}: empty prompt")
        labels = case["label_token_ids"][idx] if per_item_labels else case["label_token_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids], dtype=torch.long), **forward_kwargs).logits[0, -1].to(torch.float64)
        lp = torch.log_softmax(logits, dim=-1)[torch.tensor(labels)]
        if out["apply_softmax"]:
            sc = torch.softmax(lp / out["temperature"], dim=-1)
        else:
            sc = torch.exp(lp)
        prompts.append(ids)
        logprobs.append([float(x) for x in lp])
        scores.append([float(x) for x in sc])
    out["prompt_token_ids"] = prompts
    out["label_logprobs"] = logprobs
    out["scores"] = scores
    out["prompt_tokens"] = sum(len(p) for p in prompts)
    return out


# Gemma 3's per-layer norms: llama.cpp's `ffn_norm` is Gemma's PRE-feed-forward norm (on Llama it is
# `post_attention_layernorm`), and its `post_attention_norm` is Gemma's `post_attention_layernorm`.
GEMMA3_PARTS = {
    "attn_norm.weight": "input_layernorm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
}


def long_cases(tok, yes: int, no: int, bos: int) -> list[dict]:
    """Prompts longer than Gemma 3's 512-token sliding window (about 840 tokens), several items.

    After "Answer:" the natural next token is " Yes" / " No" (one token each with the space in a
    SentencePiece vocabulary), so those are scored beside the bare "Yes" / "No".
    """
    labels = [single_id(tok, " Yes"), single_id(tok, " No"), yes, no]
    q = long_facts(60) + "Question: is the number 7 odd? Answer Yes or No.\nAnswer:"
    q_ids = tok(q).input_ids
    if len(q_ids) <= 600 or q_ids[0] != bos:
        raise SystemExit(f"long query has {len(q_ids)} tokens (want > 600, starting with BOS)")
    return [
        dict(name="long_past_window_probs", query=q, items=["", " Yes", " No"],
             label_token_ids=labels, apply_softmax=False),
        dict(name="long_past_window_items", query=q,
             items=[" Yes", " No, it is even.", " The number 7 is odd, so the answer is"],
             label_token_ids=label_sets(tok, yes, no)["4"], apply_softmax=True),
        dict(name="long_token_ids", query=q_ids,
             items=[[], tok(" Yes", add_special_tokens=False).input_ids, [yes, no]],
             label_token_ids=labels, apply_softmax=False),
    ]


def window_effect(model, ids: list[int], forward_kwargs: dict) -> float:
    """How much the last-position log-probs move when the sliding window is lifted (0 = not applied)."""
    import torch

    def last(m):
        with torch.no_grad():
            return torch.log_softmax(m(torch.tensor([ids]), **forward_kwargs).logits[0, -1].double(), dim=-1)

    windowed = last(model)
    saved = model.config.sliding_window
    model.config.sliding_window = 1 << 20
    try:
        lifted = last(model)
    finally:
        model.config.sliding_window = saved
    return float((windowed - lifted).abs().max())


# Per-model differences. The Qwen/SmolLM2 entries are empty: their files keep the content they were
# committed with.
GEMMA_OPTIONS = dict(
    extra_strings=SENTENCEPIECE_STRINGS,
    chat=GEMMA_TURNS,
    bos_in_id_prompts=True,
    long_cases=True,
    # Eager: the plain masked softmax, where transformers applies the sliding window in the mask
    # (checked below: lifting the window moves the long prompts' log-probs). No KV cache in a single
    # forward, and only the last position's logits (the 262,144-wide head is large).
    load_kwargs={"attn_implementation": "eager"},
    forward_kwargs={"use_cache": False, "logits_to_keep": 1},
    weight_extras=("blk.0.post_attention_norm.weight", "blk.0.ffn_norm.weight", "blk.0.post_ffw_norm.weight",
                   "blk.5.attn_q.weight", "blk.5.attn_k.weight", "blk.17.attn_norm.weight"),
)
MODEL_OPTIONS = {"gemma-3-270m-q4_k_m": GEMMA_OPTIONS}


def gguf_to_hf_name(name: str, arch: str = "llama") -> str:
    fixed = {
        "token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
    }
    if name in fixed:
        return fixed[name]
    _, layer, rest = name.split(".", 2)
    if arch == "gemma3" and rest in GEMMA3_PARTS:
        return f"model.layers.{layer}.{GEMMA3_PARTS[rest]}"
    part = {
        "attn_norm.weight": "input_layernorm.weight",
        "ffn_norm.weight": "post_attention_layernorm.weight",
        "attn_q.weight": "self_attn.q_proj.weight",
        "attn_q.bias": "self_attn.q_proj.bias",
        "attn_k.weight": "self_attn.k_proj.weight",
        "attn_k.bias": "self_attn.k_proj.bias",
        "attn_v.weight": "self_attn.v_proj.weight",
        "attn_v.bias": "self_attn.v_proj.bias",
        "attn_output.weight": "self_attn.o_proj.weight",
        "ffn_gate.weight": "mlp.gate_proj.weight",
        "ffn_up.weight": "mlp.up_proj.weight",
        "ffn_down.weight": "mlp.down_proj.weight",
    }[rest]
    return f"model.layers.{layer}.{part}"


def checksum(t: np.ndarray) -> float:
    """Sum of w[i, j] * c(i, j) in float64 with a position-dependent weight, so row order matters."""
    t = t.astype(np.float64).reshape(t.shape[0], -1) if t.ndim > 1 else t.astype(np.float64)[None, :]
    rows = np.arange(t.shape[0], dtype=np.int64)[:, None]
    cols = np.arange(t.shape[1], dtype=np.int64)[None, :]
    weight = ((rows * 31 + cols * 17) % 97).astype(np.float64) / 97.0
    return float((t * weight).sum())


def weight_goldens(path: Path, model, extras: tuple[str, ...] = ()) -> list[dict]:
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = str(reader.fields["general.architecture"].contents())
    wanted = {}
    for t in reader.tensors:
        # One tensor per GGML type, plus the Q/K projections of layer 0 (the permuted ones on llama).
        if t.tensor_type.name not in {w["type"] for w in wanted.values()} or t.name.startswith("blk.0.attn_"):
            wanted[t.name] = {"type": t.tensor_type.name}
    for extra in ("output_norm.weight", "blk.1.attn_k.weight", "blk.1.attn_q.weight") + extras:
        if extra in [t.name for t in reader.tensors]:
            wanted.setdefault(extra, {"type": next(t.tensor_type.name for t in reader.tensors if t.name == extra)})
    state = model.state_dict()
    out = []
    for gname, info in sorted(wanted.items()):
        hname = gguf_to_hf_name(gname, arch)
        if hname not in state:
            continue
        w = state[hname].detach().float().numpy()
        entry = {"gguf_name": gname, "hf_name": hname, "ggml_type": info["type"], "shape": list(w.shape),
                 "checksum": checksum(w)}
        if arch == "gemma3" and "norm.weight" in gname:
            # llama.cpp stores Gemma's (1 + w) norm weights as 1 + w; transformers subtracts the 1 again.
            entry["hf_equals"] = "gguf - 1"
        if w.ndim == 2:
            entry["first_rows"] = [[float(x) for x in w[r, :16]] for r in range(min(3, w.shape[0]))]
            entry["last_row_tail"] = [float(x) for x in w[-1, -16:]]
        else:
            entry["head"] = [float(x) for x in w[:16]]
        out.append(entry)
    return out


def quant_type_goldens(qwen_path: Path) -> None:
    """A small GGUF with one tensor per GGML type and the values gguf-py dequantizes them to."""
    import gguf
    from gguf import GGMLQuantizationType as T

    rows, cols = 2, 512
    x = np.arange(rows * cols, dtype=np.float64)
    values = (np.sin(x * 0.37) * 1.7 + np.cos(x * 0.011) * 0.3).astype(np.float32).reshape(rows, cols)
    writer = gguf.GGUFWriter(str(GOLDENS / "quant_types.gguf"), arch="test")
    expected = {}
    for qtype in (T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q8_0):
        raw = gguf.quants.quantize(values, qtype)
        deq = gguf.quants.dequantize(raw, qtype).reshape(rows, cols)
        name = f"t_{qtype.name.lower()}"
        writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
        expected[name] = {"ggml_type": qtype.name, "shape": [rows, cols],
                          "values": [float(v) for v in deq.reshape(-1)]}
    # gguf-py cannot quantize K-quants: take real blocks from the Qwen file instead.
    reader = gguf.GGUFReader(str(qwen_path))
    for qtype in (T.Q4_K, T.Q6_K):
        src = next(t for t in reader.tensors if t.tensor_type == qtype)
        raw = np.array(src.data[:rows])  # rows of raw bytes, each one row of the tensor
        raw = np.ascontiguousarray(raw[:, : raw.shape[1] * cols // int(src.shape[0])])
        deq = gguf.quants.dequantize(raw, qtype).reshape(rows, cols)
        name = f"t_{qtype.name.lower()}"
        writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
        expected[name] = {"ggml_type": qtype.name, "shape": [rows, cols], "source": src.name,
                          "values": [float(v) for v in deq.reshape(-1)]}
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    (GOLDENS / "quant_types.json").write_text(json.dumps(expected, indent=None) + "\n")


TINY_CORPUS = TOKENIZATION_STRINGS + [
    "The weather today is sunny and warm. Is Tokyo a city? Yes. Is Paris in Japan? No.",
    "def score(query, items):\n    return [model(query + item) for item in items]\n",
]


def tiny_tokenizer(add_bos: bool):
    """A small byte-level BPE trained here, saved as tokenizer.json like any HF repo's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TINY_CORPUS * 4, trainer)
    if add_bos:
        bos = tok.token_to_id("<|im_start|>")
        tok.post_processor = processors.TemplateProcessing(
            single="<|im_start|> $A", pair="<|im_start|> $A $B", special_tokens=[("<|im_start|>", bos)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def tiny_hf_models() -> None:
    """Tiny random Qwen2/Llama checkpoints saved by transformers itself (F32, F16, BF16; sharded
    and single-file; tied and untied heads), with their tensors' checksums and last-position
    log-probs, so `load_hf_dir` and `Tokenizer::from_hf_dir` are checked against real HF output."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config
    from transformers import PreTrainedTokenizerFast

    specs = [
        ("tiny-llama-bf16-sharded", LlamaConfig, torch.bfloat16, False, True, "60KB"),
        ("tiny-qwen2-f16-tied", Qwen2Config, torch.float16, True, False, None),
        ("tiny-qwen2-f32", Qwen2Config, torch.float32, False, False, None),
    ]
    summary = {}
    for name, cls, dtype, tied, add_bos, shard in specs:
        torch.manual_seed(len(name))
        tok = tiny_tokenizer(add_bos)
        bos_id = tok.token_to_id("<|im_start|>")
        eos_id = tok.token_to_id("<|im_end|>")
        cfg = cls(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  rms_norm_eps=1e-5, rope_theta=5000.0, tie_word_embeddings=tied,
                  initializer_range=0.2, bos_token_id=bos_id, eos_token_id=eos_id)
        model = AutoModelForCausalLM.from_config(cfg).to(dtype).eval()
        with torch.no_grad():  # non-trivial norms and biases, so a loader that drops them fails
            for n, p in model.named_parameters():
                if n.endswith("norm.weight"):
                    p.copy_(1.0 + 0.3 * torch.randn_like(p))
                elif n.endswith(".bias"):
                    p.copy_(0.2 * torch.randn_like(p))
        out = GOLDENS / name
        shutil.rmtree(out, ignore_errors=True)
        kwargs = {"max_shard_size": shard} if shard else {}
        model.save_pretrained(str(out), **kwargs)
        PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                add_bos_token=add_bos).save_pretrained(str(out))
        for extra in ("generation_config.json", "chat_template.jinja"):
            (out / extra).unlink(missing_ok=True)
        # Reload exactly as a user would, in float32, and record what HF sees.
        hf_tok = AutoTokenizer.from_pretrained(str(out))
        hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
        state = hf.state_dict()
        prompts = [hf_tok("Is Tokyo a city? Yes").input_ids, [5, 77, 120, 3, 250, 9]]
        logprobs = []
        for ids in prompts:
            with torch.no_grad():
                logits = hf(torch.tensor([ids])).logits[0, -1].to(torch.float64)
            logprobs.append([float(x) for x in torch.log_softmax(logits, dim=-1)])
        summary[name] = {
            "dtype": str(dtype).removeprefix("torch."),
            "tie_word_embeddings": tied,
            "add_bos": add_bos,
            "files": sorted(p.name for p in out.iterdir()),
            "tensors": {k: {"shape": list(v.shape), "checksum": checksum(v.float().numpy()),
                            "head": [float(x) for x in v.float().reshape(-1)[:8]]}
                        for k, v in state.items()},
            "tokenization": [{"text": s, "ids": hf_tok(s).input_ids} for s in TOKENIZATION_STRINGS],
            "prompts": prompts,
            "last_logprobs": logprobs,
        }
    (GOLDENS / "tiny_hf_models.json").write_text(json.dumps(summary, indent=None) + "\n")


def versions() -> dict:
    import gguf  # noqa: F401
    import tokenizers
    import torch
    import transformers
    from importlib.metadata import version

    return {"transformers": transformers.__version__, "torch": torch.__version__,
            "tokenizers": tokenizers.__version__, "gguf": version("gguf"), "numpy": np.__version__,
            "python": sys.version.split()[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    home = Path(os.environ.get("SCORER_HOME", Path.home() / ".cache" / "scorer"))
    ap.add_argument("--models-dir", type=Path, default=home / "models")
    ap.add_argument("--only", choices=sorted(MODELS), action="append")
    ap.add_argument("--skip-scores", action="store_true", help="tokenization and weights only (fast)")
    ap.add_argument("--tiny-only", action="store_true", help="only the tiny HF checkpoints (seconds)")
    ap.add_argument("--tiny-archs", action="store_true",
                    help="only the tiny per-architecture checkpoints of tiny_archs.py (seconds)")
    ap.add_argument("--tiny-sentencepiece", action="store_true",
                    help="only the tiny SentencePiece GGUF vocabularies of tiny_sentencepiece.py (seconds)")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    set_threads()
    GOLDENS.mkdir(parents=True, exist_ok=True)
    import tiny_archs  # beside this file (python puts the script's folder on sys.path)
    import tiny_sentencepiece

    if args.tiny_only or args.tiny_archs or args.tiny_sentencepiece:
        if args.tiny_only:
            tiny_hf_models()
        if args.tiny_archs:
            tiny_archs.main()
        if args.tiny_sentencepiece:
            tiny_sentencepiece.main()
        return
    # `--only` regenerates the named models and nothing else (the tiny and quant-type files stay).
    if not args.only:
        tiny_hf_models()
        tiny_archs.main()
        tiny_sentencepiece.main()
        quant_type_goldens(args.models_dir / MODELS["qwen2.5-coder-0.5b-instruct-q4_k_m"])

    for alias, fname in MODELS.items():
        if args.only and alias not in args.only:
            continue
        t0 = time.time()
        opts = MODEL_OPTIONS.get(alias, {})
        fwd = opts.get("forward_kwargs", {})
        tok = AutoTokenizer.from_pretrained(str(args.models_dir), gguf_file=fname)
        model = AutoModelForCausalLM.from_pretrained(str(args.models_dir), gguf_file=fname, dtype=torch.float32,
                                                     **opts.get("load_kwargs", {}))
        model.eval()
        print(f"{alias}: loaded in {time.time() - t0:.1f}s", file=sys.stderr)
        yes, no = single_id(tok, "Yes"), single_id(tok, "No")
        strings = TOKENIZATION_STRINGS + opts.get("extra_strings", [])
        doc = {
            "alias": alias,
            "gguf_file": fname,
            "versions": versions(),
            "vocab_size": model.config.vocab_size,
            "tie_word_embeddings": bool(model.config.tie_word_embeddings),
            "yes_id": yes,
            "no_id": no,
            "tokenization": [
                {"text": s, "ids": tok(s).input_ids, "decoded": tok.decode(tok(s).input_ids)}
                for s in strings
            ],
            "weights": weight_goldens(args.models_dir / fname, model, opts.get("weight_extras", ())),
        }
        if opts:
            doc["space_yes_id"], doc["space_no_id"] = single_id(tok, " Yes"), single_id(tok, " No")
            doc["bos_token_id"] = tok.bos_token_id
            doc["add_bos_token"] = bool(tok.add_bos_token)
            doc["attn_implementation"] = model.config._attn_implementation
            doc["sliding_window"] = getattr(model.config, "sliding_window", None)
            doc["layer_types"] = getattr(model.config, "layer_types", None)
        if not args.skip_scores:
            t1 = time.time()
            bos = [tok.bos_token_id] if opts.get("bos_in_id_prompts") else []
            cases = case_set(tok, yes, no, opts.get("chat", CHATML), tuple(bos))
            if opts.get("long_cases"):
                cases += long_cases(tok, yes, no, tok.bos_token_id)
            doc["score_cases"] = [compute_case(tok, model, c, fwd) for c in cases]
            if opts.get("long_cases"):
                long_ids = doc["score_cases"][-3]["prompt_token_ids"][0]
                effect = window_effect(model, long_ids, fwd)
                doc["sliding_window_check"] = {"prompt_tokens": len(long_ids),
                                               "max_logprob_change_if_lifted": effect}
                if effect < 1e-3:
                    raise SystemExit(f"{alias}: the sliding window changes nothing at {len(long_ids)} tokens")
            print(f"{alias}: {len(doc['score_cases'])} cases in {time.time() - t1:.1f}s", file=sys.stderr)
        path = GOLDENS / f"{alias}.json"
        if args.skip_scores and path.exists():
            old = json.loads(path.read_text())
            if "score_cases" in old:
                doc["score_cases"] = old["score_cases"]
        path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {path}", file=sys.stderr)
        del model


if __name__ == "__main__":
    main()
