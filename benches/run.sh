#!/usr/bin/env bash
# One benchmark run: the engine (benches/score_bench) and the Hugging Face baseline
# (benches/hf_baseline.py) on the same token ids, then a comparison table (benches/compare.py).
#
#   benches/run.sh                       # headline: q200 x 16 items x 2 labels, plus a 1024-token prefill
#   BENCH_ARGS="--items 1,4,16,64 --labels 2 --query-tokens 200" HF_SCENARIOS=q200_i16_l2 benches/run.sh
#
# Env: BENCH_ARGS (score_bench flags), HF_SCENARIOS (comma list of scenario names for HF; empty:
# all), HF_METHODS (a,b), HF_ITERS_A, HF_ITERS_B, PY (python with torch+transformers), OUT (dir).
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_ARGS=${BENCH_ARGS:-"--items 16 --labels 2 --query-tokens 200 --prefill 1024 --iters 5"}
HF_SCENARIOS=${HF_SCENARIOS-q200_i16_l2}
HF_METHODS=${HF_METHODS:-a,b}
HF_ITERS_A=${HF_ITERS_A:-1}
HF_ITERS_B=${HF_ITERS_B:-2}
PY=${PY:-/tmp/hfvenv/bin/python}
OUT=${OUT:-target/bench/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"

echo "== build (release)"
cargo bench --bench score_bench --no-run
# shellcheck disable=SC2086
cargo bench -q --bench score_bench -- $BENCH_ARGS --dump-inputs "$OUT/inputs.json"

echo "== engine: score_bench $BENCH_ARGS"
# shellcheck disable=SC2086
cargo bench -q --bench score_bench -- $BENCH_ARGS --json "$OUT/ours.json" | tee "$OUT/ours.txt"

echo "== Hugging Face transformers f32 baseline ($HF_METHODS on ${HF_SCENARIOS:-all})"
"$PY" benches/hf_baseline.py --inputs "$OUT/inputs.json" --json "$OUT/hf.json" \
    --scenarios "$HF_SCENARIOS" --methods "$HF_METHODS" \
    --iters-a "$HF_ITERS_A" --iters-b "$HF_ITERS_B" | tee "$OUT/hf.txt"

echo "== comparison"
python3 benches/compare.py "$OUT/ours.json" "$OUT/hf.json" | tee "$OUT/compare.md"
echo "results in $OUT"
