#!/usr/bin/env python3
"""Tiny SentencePiece GGUF vocabularies and how transformers tokenizes with them.

The only SentencePiece GGUF fetchable here is Gemma 3's, which transformers builds with Gemma's own
rules. Llama 2 / Mistral files (`LlamaTokenizer`: Metaspace, merges ordered by the scores) and
Phi-3 files (a prepended "\u2581" normalizer) take other paths, so this script makes small files of
those kinds: a SentencePiece BPE model with byte fallback is trained here on a small corpus, and
its pieces, scores and types are written to GGUF the way llama.cpp's `convert_hf_to_gguf.py`
writes them (`_create_vocab_sentencepiece`: UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5,
BYTE 6, else NORMAL 1). A file holds only tokenizer metadata and the few architecture keys
transformers needs to name a config: it has no tensors and cannot be run.

Output: `goldens/tiny-sp-<arch>.gguf`, `goldens/tiny-unigram-t5.gguf` (the same vocabulary under
`tokenizer.ggml.model = "t5"`, which the engine must refuse by name) and `goldens/tiny_sentencepiece.json`:
`{versions, files: {<file>: {architecture, add_bos, vocab_size, tokenization: [{text, ids, decoded}]}}}`
with `AutoTokenizer.from_pretrained(goldens, gguf_file=<file>)`'s ids (default special-token
handling) and `decode(ids)`. Run: `python3 tests/reference/tiny_sentencepiece.py` (seconds).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOLDENS = HERE / "goldens"

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Is Tokyo a city? Yes. Is Paris in Japan? No.",
    "I pledge allegiance to the flag.",
    "def add(a, b):\n    return a + b\n",
    "Once upon a time there was a tiny tokenizer that lived in a GGUF file.",
    "The weather today is sunny and warm, tomorrow rainy and cold.",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber",
    "Numbers: 3.14159 and 2,718 and -42.",
    "   indented   text with   runs of spaces",
]

# Specials the files carry: <unk>/<s>/</s> from SentencePiece, plus a user-defined and a control one.
USER_DEFINED = ["<tool>"]
EXTRA_CONTROL = ["[INST]", "[/INST]"]

STRINGS = [
    "",
    " ",
    "Hello world",
    "The quick brown fox",
    " leading space",
    "   three leading spaces",
    "trailing space ",
    "a  b   c",
    "line one\nline two\n\nline four",
    "tabs\tand\ttabs",
    "Is Tokyo a city? Yes",
    "caf\u00e9 cr\u00e8me",
    "\u4f60\u597d\u4e16\u754c",
    "emoji \U0001f600\U0001f680",
    "\u2581literal mark",
    "<s>written bos</s>",
    "text</s>more",
    "<unk>",
    "[INST] Is it? [/INST] Yes",
    "<tool>call</tool>",
    "Yes",
    " No",
    "\u0000nul",
]


def train() -> "spm.SentencePieceProcessor":  # noqa: F821
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 8), model_writer=model, vocab_size=420, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, user_defined_symbols=USER_DEFINED,
        control_symbols=EXTRA_CONTROL, add_dummy_prefix=True, split_digits=True,
        num_threads=1, minloglevel=2)
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def write_gguf(sp, path: Path, arch: str, model: str = "llama") -> None:
    import gguf

    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_unused(i):
            types.append(gguf.TokenType.UNUSED)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        elif sp.id_to_piece(i) in USER_DEFINED:
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model(model)
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    from transformers import AutoTokenizer

    sys.path.insert(0, str(HERE))
    from hf_scores import versions

    sp = train()
    files = {}
    for arch in ("llama", "phi3"):
        name = f"tiny-sp-{arch}.gguf"
        write_gguf(sp, GOLDENS / name, arch)
        tok = AutoTokenizer.from_pretrained(str(GOLDENS), gguf_file=name)
        files[name] = {
            "architecture": arch,
            "tokenizer_class": type(tok).__name__,
            "add_bos": bool(tok.add_bos_token),
            "vocab_size": len(tok),
            "tokenization": [{"text": s, "ids": tok(s).input_ids, "decoded": tok.decode(tok(s).input_ids)}
                             for s in STRINGS],
        }
        print(f"{name}: {type(tok).__name__}, {len(tok)} tokens", file=sys.stderr)
    # The same vocabulary declared as T5's Unigram, which the engine does not implement: it must
    # refuse the file by that name (transformers would build a Unigram model from it).
    write_gguf(sp, GOLDENS / "tiny-unigram-t5.gguf", "llama", model="t5")
    doc = {"versions": versions(), "files": files, "refused": {"tiny-unigram-t5.gguf": "t5"}}
    (GOLDENS / "tiny_sentencepiece.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {GOLDENS / 'tiny_sentencepiece.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
