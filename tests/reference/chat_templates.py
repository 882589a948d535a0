#!/usr/bin/env python3
"""Write the chat-template and rerank-prompt goldens the Rust tests compare against.

`goldens/chat_templates.json`, per fetched GGUF model (tokenizer loaded by transformers with
`AutoTokenizer.from_pretrained(models_dir, gguf_file=...)`, i.e. from the same file the engine reads):

* `chat_template`: the GGUF's `tokenizer.chat_template` as transformers sees it (null when the file
  has none: Gemma 3 270M is a base model);
* `special_tokens`: `tokenizer.special_tokens_map` (what a template sees as `bos_token`, `eos_token`, ...);
* `conversations`: per conversation, `apply_chat_template(messages, tokenize=False,
  add_generation_prompt=False/True)` and the ids `apply_chat_template(..., tokenize=True)` gives
  (the rendered text tokenized with `add_special_tokens=False`);
* `score_prompts`: the `/v1/score` `query_messages` rule (docs/RERANK.md): the chat rendered with
  `add_generation_prompt=True`, then the item text appended, tokenized with `add_special_tokens=False`.
  The script checks that this equals transformers' `continue_final_message=True` rendering of the same
  chat with the item as the start of an assistant turn, and refuses to write the golden otherwise.

`goldens/rerank_qwen3.json`: the Qwen3-Reranker model card's prompt (`format_instruction`, `prefix`,
`suffix`, verbatim from the card) tokenized as the card tokenizes it (prefix ids + `tokenizer(pair)` ids +
suffix ids) with the Qwen2.5 GGUF tokenizer, which has Qwen3's base vocabulary; plus the label ids
(`convert_tokens_to_ids("yes"/"no")`) and whether `<think>` is one token in that vocabulary.

Run: `python3 tests/reference/chat_templates.py` (~1 min; see README.md next to this file).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOLDENS = HERE / "goldens"

MODELS = {
    "qwen2.5-coder-0.5b-instruct-q4_k_m": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "smollm2-135m-instruct-q4_1": "smollm2-135m-instruct-q4_1.gguf",
    "gemma-3-270m-q4_k_m": "gemma-3-270m-q4_k_m.gguf",
}

CONVERSATIONS = [
    {
        "name": "system_user",
        "messages": [
            {"role": "system", "content": "You are a terse classifier."},
            {"role": "user", "content": "Is Rust a programming language? Answer Yes or No."},
        ],
    },
    {
        "name": "user_only",
        "messages": [{"role": "user", "content": "Is Banana a programming language?"}],
    },
    {
        "name": "multi_turn",
        "messages": [
            {"role": "system", "content": "Answer with one word."},
            {"role": "user", "content": "Is Tokyo a city?"},
            {"role": "assistant", "content": "Yes"},
            {"role": "user", "content": "Is Banana a city?"},
        ],
    },
    {
        "name": "unicode",
        "messages": [
            {"role": "user", "content": "\u6771\u4eac\u306f\u90fd\u5e02\u3067\u3059\u304b\uff1f caf\u00e9 \U0001f600"},
            {"role": "assistant", "content": "\u306f\u3044\u3002\nline two\n\n  indented"},
            {"role": "user", "content": "\u0417\u0434\u0440\u0430\u0432\u0441\u0442\u0432\u0443\u0439, \u043c\u0438\u0440 \u2764\ufe0f"},
        ],
    },
    {
        "name": "jinja_like_text",
        "messages": [
            {"role": "user", "content": "Literal {{ braces }} and {% tags %} and 'quotes' \"double\"\ttab  "},
        ],
    },
]

# (conversation name, item) pairs for the `/v1/score` query_messages rule.
SCORE_PROMPTS = [
    ("user_only", " Yes"),
    ("user_only", "No"),
    ("system_user", "Yes, it is"),
    ("multi_turn", " No"),
    ("unicode", "\u306f\u3044"),
]

# The Qwen3-Reranker model card (Qwen/Qwen3-Reranker-0.6B README, "Transformers Usage"), verbatim.
QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def format_instruction(instruction, query, doc):
    if instruction is None:
        instruction = QWEN3_DEFAULT_INSTRUCTION
    return "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}".format(
        instruction=instruction, query=query, doc=doc
    )


RERANK_CASES = [
    {"query": "What is the capital of China?", "document": "The capital of China is Beijing.", "instruction": None},
    {
        "query": "Explain gravity",
        "document": "Gravity is a force that attracts two bodies towards each other. It gives weight to physical "
        "objects and is responsible for the movement of planets around the sun.",
        "instruction": None,
    },
    {
        "query": "frying pan",
        "document": "ice cream bowl",
        "instruction": "Rank the document based on its material and shape",
    },
    {"query": "\u6771\u4eac\u306e\u4eba\u53e3", "document": "\u6771\u4eac\u306e\u4eba\u53e3\u306f\u7d041400\u4e07\u4eba\u3067\u3059\u3002 \U0001f600", "instruction": None},
    {"query": "trailing space ", "document": "  leading and trailing  \n", "instruction": "multi\nline"},
    {"query": "", "document": "", "instruction": None},
]


def models_dir() -> Path:
    home = os.environ.get("SCORER_HOME")
    return Path(home) / "models" if home else Path.home() / ".cache" / "scorer" / "models"


def chat_goldens(tok) -> dict:
    out = {
        "chat_template": tok.chat_template,
        "special_tokens": dict(tok.special_tokens_map),
        "conversations": [],
        "score_prompts": [],
    }
    if tok.chat_template is None:
        return out
    by_name = {}
    for conv in CONVERSATIONS:
        rendered = {}
        for gen in (False, True):
            text = tok.apply_chat_template(conv["messages"], tokenize=False, add_generation_prompt=gen)
            ids = tok.apply_chat_template(conv["messages"], tokenize=True, add_generation_prompt=gen, return_dict=False)
            if ids != tok(text, add_special_tokens=False)["input_ids"]:
                sys.exit(f"{conv['name']}: apply_chat_template ids != tokenizer(rendered, add_special_tokens=False)")
            key = "generation" if gen else "plain"
            rendered[key] = {"text": text, "ids": ids}
        by_name[conv["name"]] = (conv["messages"], rendered["generation"]["text"])
        out["conversations"].append({"name": conv["name"], "messages": conv["messages"], **rendered})
    for name, item in SCORE_PROMPTS:
        messages, gen_text = by_name[name]
        prompt = gen_text + item
        continued = tok.apply_chat_template(
            messages + [{"role": "assistant", "content": item}], tokenize=False, continue_final_message=True
        )
        if continued != prompt:
            sys.exit(f"{name} + {item!r}: continue_final_message gives {continued!r}, the rule gives {prompt!r}")
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        out["score_prompts"].append({"conversation": name, "item": item, "prompt": prompt, "ids": ids})
    return out


def rerank_goldens(tok) -> dict:
    prefix_ids = tok.encode(QWEN3_PREFIX, add_special_tokens=False)
    suffix_ids = tok.encode(QWEN3_SUFFIX, add_special_tokens=False)
    cases = []
    for c in RERANK_CASES:
        pair = format_instruction(c["instruction"], c["query"], c["document"])
        # The card: tokenizer(pairs, padding=False, truncation='longest_first', ...) then prefix + ids + suffix.
        body = tok([pair], padding=False, truncation="longest_first", return_attention_mask=False, max_length=8192)
        ids = prefix_ids + body["input_ids"][0] + suffix_ids
        cases.append({**c, "formatted": QWEN3_PREFIX + pair + QWEN3_SUFFIX, "ids": ids})
    think = tok.encode("<think>", add_special_tokens=False)
    return {
        "tokenizer": "qwen2.5-coder-0.5b-instruct-q4_k_m",
        "prefix": QWEN3_PREFIX,
        "suffix": QWEN3_SUFFIX,
        "default_instruction": QWEN3_DEFAULT_INSTRUCTION,
        "yes_id": tok.convert_tokens_to_ids("yes"),
        "no_id": tok.convert_tokens_to_ids("no"),
        "think_ids": think,
        "think_is_single_token": len(think) == 1,
        "cases": cases,
    }


def main() -> None:
    import tokenizers
    import transformers
    from transformers import AutoTokenizer

    d = models_dir()
    chat = {"versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__}, "models": {}}
    rerank = None
    for alias, file in MODELS.items():
        tok = AutoTokenizer.from_pretrained(str(d), gguf_file=file)
        chat["models"][alias] = chat_goldens(tok)
        if alias.startswith("qwen2.5"):
            rerank = rerank_goldens(tok)
            rerank["versions"] = chat["versions"]
        print(f"{alias}: template={'yes' if tok.chat_template else 'none'}", file=sys.stderr)
    GOLDENS.mkdir(exist_ok=True)
    (GOLDENS / "chat_templates.json").write_text(json.dumps(chat, indent=1, ensure_ascii=False) + "\n")
    (GOLDENS / "rerank_qwen3.json").write_text(json.dumps(rerank, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
