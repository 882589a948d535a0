#!/usr/bin/env bash
# One-shot accelerator check (docs/ACCELERATORS.md): finds the PJRT plugin and its libraries,
# lists devices, scores goldens-style token-id cases on random-weight Qwen2-0.5B- and
# Qwen3-0.6B-shaped checkpoints against transformers on the same device (f32 and bf16), times
# the bench scenario (q200 x 16 items x 2 labels) at concurrency 1 and at saturation against
# transformers bf16 (one forward per item, and one padded batch), and prints ONE JSON summary.
#
# No network is used. Needs: python3 with torch + transformers (+ CUDA for the GPU run), and
# the engine's `device_check` binary (`cargo build --release --bench device_check`, copied to
# dist/device_check; or DEVICE_CHECK_BIN). Every step has a time limit; the whole run is sized
# for under 6 minutes on one H200.
#
#   scripts/device-check.sh                                   # NVIDIA GPU, CUDA 13 plugin
#   DEVICE_CHECK_PLATFORM=cpu DEVICE_CHECK_SMALL=1 scripts/device-check.sh   # here, CPU plugin
#
# Env: DEVICE_CHECK_PLATFORM (cuda|cpu), DEVICE_CHECK_SMALL (1: tiny shapes and few
# iterations), DEVICE_CHECK_PLUGIN (a path or name; default cuda13 / cpu), DEVICE_CHECK_BIN,
# PYTHON (default python3), OUT (where the parts and summary.json go; default a temp dir),
# DEVICE_CHECK_WORK (checkpoints; default $OUT/work).
set -uo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

PLATFORM=${DEVICE_CHECK_PLATFORM:-cuda}
SMALL=${DEVICE_CHECK_SMALL:-0}
PY=${PYTHON:-python3}
# Plugin discovery asks this interpreter first for its sys.path (then $VIRTUAL_ENV, python3).
export SCORER_PYTHON=${SCORER_PYTHON:-$(command -v "$PY")}
OUT=${OUT:-$(mktemp -d /tmp/device-check.XXXXXX)}
WORK=${DEVICE_CHECK_WORK:-$OUT/work}
HF=scripts/device_check_hf.py
mkdir -p "$OUT" "$WORK"
LOG="$OUT/device-check.log"
: > "$LOG"
log() { echo "[device-check +$(( $(date +%s) - started ))s] $*" | tee -a "$LOG" >&2; }

case "$PLATFORM" in
  cuda) PLUGIN=${DEVICE_CHECK_PLUGIN:-cuda13}; TORCH_DEVICE=cuda ;;
  cpu)  PLUGIN=${DEVICE_CHECK_PLUGIN:-cpu};    TORCH_DEVICE=cpu ;;
  *) echo "DEVICE_CHECK_PLATFORM must be cuda or cpu" >&2; exit 2 ;;
esac

if [ -n "${DEVICE_CHECK_BIN:-}" ]; then
  BIN=$DEVICE_CHECK_BIN
elif [ -x dist/device_check ]; then
  BIN=dist/device_check
else
  BIN=$(ls -t target/release/deps/device_check-* target/debug/deps/device_check-* 2>/dev/null \
        | grep -v '\.d$' | head -1)
fi
if [ -z "${BIN:-}" ] || [ ! -x "$BIN" ]; then
  echo "no device_check binary: cargo build --release --bench device_check, then copy" \
       "target/release/deps/device_check-* to dist/device_check (or set DEVICE_CHECK_BIN)" >&2
  exit 2
fi

if [ "$SMALL" = 1 ]; then
  SMALL_FLAG=--small; ITERS=5; WARMUP=1; SAT_REQ=16; SAT_BATCH=4; HF_ITERS=3; HF_SECONDS=20
  VARIANTS=4; LIMIT_ENGINE=300; LIMIT_HF=300
else
  SMALL_FLAG=; ITERS=40; WARMUP=3; SAT_REQ=1024; SAT_BATCH=16; HF_ITERS=20; HF_SECONDS=20
  VARIANTS=64; LIMIT_ENGINE=90; LIMIT_HF=100
fi

# The whole run stops starting steps at this many seconds, so it ends in under 6 minutes.
DEADLINE=${DEVICE_CHECK_DEADLINE:-330}
# limit WANTED: the seconds a step may take, capped by what is left before the deadline.
limit() {
  local left=$(( DEADLINE - ($(date +%s) - started) ))
  [ "$left" -lt "$1" ] && echo "$left" || echo "$1"
}

# step NAME LIMIT CMD...: runs CMD with stdout to $OUT/NAME.json, stderr to $OUT/NAME.err; an
# empty file afterwards means the step failed or was skipped (the summary lists it).
step() {
  local name=$1 want=$2 rc=0 secs; shift 2
  secs=$(limit "$want")
  if [ "$secs" -lt 10 ]; then
    log "$name SKIPPED: past the ${DEADLINE}s deadline"
    : > "$OUT/$name.json"
    return 1
  fi
  log "$name (limit ${secs}s)"
  timeout "$secs" "$@" > "$OUT/$name.json" 2>> "$OUT/$name.err" || rc=$?
  if [ "$rc" != 0 ]; then
    log "$name FAILED (rc $rc$([ "$rc" = 124 ] && echo ', timed out')): $(grep -v '^ *[0-9]*: \|^ *at ' "$OUT/$name.err" | tail -n 3 | tr '\n' ' ' | cut -c1-400)"
    : > "$OUT/$name.json"
    return 1
  fi
}

PARTS=()
step probe 60 "$BIN" probe --plugin "$PLUGIN"
PARTS+=(--part "probe=$OUT/probe.json")
if [ "$PLATFORM" = cuda ]; then
  # The typed GPU client options reach the plugin (the engine runs below use its defaults).
  step probe_options 60 "$BIN" probe --plugin "$PLUGIN" --gpu-memory-fraction 0.5 \
       --gpu-preallocate false --gpu-allocator bfc
  PARTS+=(--part "probe_options=$OUT/probe_options.json")
fi

for arch in qwen2 qwen3; do
  model="$WORK/$arch"
  if [ "$(limit 120)" -lt 20 ]; then log "$arch SKIPPED: past the deadline"; continue; fi
  if ! timeout "$(limit 120)" "$PY" $HF make-model --arch "$arch" $SMALL_FLAG --device "$TORCH_DEVICE" --out "$model" \
       >> "$LOG" 2>> "$OUT/$arch-make.err"; then
    log "$arch: making the checkpoint FAILED: $(tail -n 2 "$OUT/$arch-make.err")"
    continue
  fi
  "$PY" $HF cases --config "$model/config.json" $SMALL_FLAG --out "$OUT/${arch}_cases.json"
  "$PY" $HF inputs --config "$model/config.json" --query-tokens 200 --items 16 --item-tokens 20 \
        --labels 2 --variants "$VARIANTS" --out "$OUT/${arch}_inputs.json"
  PARTS+=(--part "${arch}_inputs=$OUT/${arch}_inputs.json")

  # The engine, one process per run (a GPU plugin holds device memory until it exits), before
  # transformers touches the device.
  skip=
  for dtype in f32 bf16; do
    step "${arch}_engine_$dtype" "$LIMIT_ENGINE" "$BIN" score --plugin "$PLUGIN" --model "$model" \
         --dtype "$dtype" --cases "$OUT/${arch}_cases.json"
    # The engine refusing the model at load (e.g. Qwen3 before it is supported) skips the
    # model with the engine's own message; any other failure is reported as a failure.
    refusal='unsupported model architecture|unsupported .*model_type|not supported|does not implement'
    if [ ! -s "$OUT/${arch}_engine_$dtype.json" ] && grep -Eqi "$refusal" "$OUT/${arch}_engine_$dtype.err" 2>/dev/null; then
      skip=$(grep -Ei -m1 "$refusal" "$OUT/${arch}_engine_$dtype.err" | sed 's/^ *//' | cut -c1-300)
      log "$arch: SKIPPED, the engine refuses the architecture: $skip"
      break
    fi
    PARTS+=(--part "${arch}_engine_$dtype=$OUT/${arch}_engine_$dtype.json")
  done
  if [ -n "$skip" ]; then
    printf '"%s"' "engine refused the architecture: ${skip//\"/\'}" > "$OUT/${arch}_skip.json"
    PARTS+=(--part "${arch}_skip=$OUT/${arch}_skip.json")
    continue
  fi
  step "${arch}_engine_bench" "$LIMIT_ENGINE" "$BIN" bench --plugin "$PLUGIN" --model "$model" \
       --dtype bf16 --inputs "$OUT/${arch}_inputs.json" --iters "$ITERS" --warmup "$WARMUP" \
       --sat-requests "$SAT_REQ" --sat-batch "$SAT_BATCH" --max-batch-tokens 2048
  PARTS+=(--part "${arch}_engine_bench=$OUT/${arch}_engine_bench.json")

  log "${arch}_hf (transformers f32 + bf16 scores, bf16 bench; limit $(limit "$LIMIT_HF")s)"
  if [ "$(limit "$LIMIT_HF")" -ge 10 ] && timeout "$(limit "$LIMIT_HF")" "$PY" $HF hf-run --model "$model" --cases "$OUT/${arch}_cases.json" \
       --inputs "$OUT/${arch}_inputs.json" --device "$TORCH_DEVICE" --iters "$HF_ITERS" \
       --max-seconds "$HF_SECONDS" --out-prefix "$OUT/${arch}_hf" >> "$LOG" 2>> "$OUT/${arch}_hf.err"; then
    :
  else
    log "${arch}_hf FAILED: $(tail -n 3 "$OUT/${arch}_hf.err" | tr '\n' ' ' | cut -c1-400)"
  fi
  for p in f32 bf16 bench; do PARTS+=(--part "${arch}_hf_$p=$OUT/${arch}_hf_$p.json"); done
  # Only the first (Qwen2) model is timed in full; the second is checked for scores.
  ITERS=$(( ITERS / 2 > 3 ? ITERS / 2 : 3 )); SAT_REQ=$(( SAT_REQ / 2 )); HF_ITERS=$(( HF_ITERS / 2 > 2 ? HF_ITERS / 2 : 2 ))
done

wall=$(( $(date +%s) - started ))
small_arg=; [ "$SMALL" = 1 ] && small_arg=--small
"$PY" $HF summarize "${PARTS[@]}" --models-dir "$WORK" --platform "$PLATFORM" $small_arg \
      --wall-s "$wall" | tee "$OUT/summary.json"
log "done in ${wall}s; parts and log in $OUT"
