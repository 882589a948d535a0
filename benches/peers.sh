#!/usr/bin/env bash
# Issue 15's comparison in ONE run: the engine (score_bench), Hugging Face transformers (a: one
# forward per item, b: padded batch) and llama.cpp (a: one evaluation per item, b: the query
# evaluated once, each item after it) on the same token ids, the matmul ceiling measured beside
# them, then benches/peers.py's table.
#
#   benches/peers.sh            # grid q50/q200 x 16 x 2, prefill 34 and 1,024; q1000 x 64; 16k prompt
#
# Env: BENCH (a score_bench binary; default: built with cargo in the dev profile, whose
# dependencies and engine are compiled at opt-level 3), PY_HF (python with torch, transformers,
# gguf, accelerate), PY_LLAMA (python with llama-cpp-python 0.3.36), OUT (results dir), SKIP_16K=1,
# ROW_BLOCKS=1 (the engine's grid and q1000 also with --attention row-blocks, after the default).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/bench/peers-$(date -u +%Y%m%dT%H%M%SZ)}
PY_HF=${PY_HF:-/tmp/hfvenv/bin/python}
PY_LLAMA=${PY_LLAMA:-/tmp/llvenv/bin/python}
mkdir -p "$OUT"
if [ -z "${BENCH:-}" ]; then
    BENCH=$(cargo build --bench score_bench --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "score_bench" and m.get("executable"):
        print(m["executable"])' | tail -1)
fi
export RUST_LOG=${RUST_LOG:-warn}
GRID=(--items 16 --labels 2 --query-tokens 50,200 --prefill 34,1024)
BIG=(--items 64 --labels 2 --query-tokens 1000)
LONG=(--only-prefill --prefill 16384)

"$BENCH" "${GRID[@]}" --dump-inputs "$OUT/in_grid.json"
"$BENCH" "${BIG[@]}" --dump-inputs "$OUT/in_big.json"
"$BENCH" "${LONG[@]}" --dump-inputs "$OUT/in_long.json"

echo "== engine"
"$BENCH" "${GRID[@]}" --iters 5 --no-start --json "$OUT/ours_grid.json" | tee "$OUT/ours_grid.txt"
"$BENCH" "${BIG[@]}" --iters 3 --no-start --json "$OUT/ours_big.json" | tee "$OUT/ours_big.txt"
if [ "${ROW_BLOCKS:-0}" = 1 ]; then
    "$BENCH" "${GRID[@]}" --iters 5 --no-start --attention row-blocks --json "$OUT/ours_grid_rb.json" \
        | tee "$OUT/ours_grid_rb.txt"
    "$BENCH" "${BIG[@]}" --iters 3 --no-start --attention row-blocks --json "$OUT/ours_big_rb.json" \
        | tee "$OUT/ours_big_rb.txt"
fi
if [ "${SKIP_16K:-0}" != 1 ]; then
    "$BENCH" "${LONG[@]}" --iters 1 --warmup 1 --ceiling-runs 3 --no-start --json "$OUT/ours_long.json" \
        | tee "$OUT/ours_long.txt"
fi

echo "== llama.cpp"
"$PY_LLAMA" benches/llamacpp_baseline.py --inputs "$OUT/in_grid.json" --json "$OUT/llama_grid.json" \
    --methods a,b --iters 3 | tee "$OUT/llama_grid.txt"
"$PY_LLAMA" benches/llamacpp_baseline.py --inputs "$OUT/in_big.json" --json "$OUT/llama_big.json" \
    --methods b --iters 1 | tee "$OUT/llama_big.txt"
if [ "${SKIP_16K:-0}" != 1 ]; then
    "$PY_LLAMA" benches/llamacpp_baseline.py --inputs "$OUT/in_long.json" --json "$OUT/llama_long.json" \
        --methods a --iters 1 | tee "$OUT/llama_long.txt"
fi

echo "== Hugging Face"
"$PY_HF" benches/hf_baseline.py --inputs "$OUT/in_grid.json" --json "$OUT/hf_grid.json" \
    --scenarios q50_i16_l2,q200_i16_l2,prefill34 --methods a,b --iters-a 1 --iters-b 2 | tee "$OUT/hf_grid.txt"

LLAMA=("$OUT/llama_grid.json" "$OUT/llama_big.json")
OURS=("$OUT/ours_grid.json" "$OUT/ours_big.json")
if [ "${SKIP_16K:-0}" != 1 ]; then
    LLAMA+=("$OUT/llama_long.json")
    OURS+=("$OUT/ours_long.json")
fi
python3 benches/peers.py --ours "${OURS[@]}" --hf "$OUT/hf_grid.json" --llama "${LLAMA[@]}" | tee "$OUT/table.md"
echo "results in $OUT"
