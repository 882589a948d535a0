#!/usr/bin/env bash
# Launch-to-/ready time of `scorer serve` (embedded mode), the number docs/BENCHMARKS.md quotes
# for start-up. Runs the server RUNS times in a row on the same SCORER_HOME: the first run
# after `rm -rf $SCORER_HOME/weights` is a first start (the weight cache is built), the others
# are warm starts (the cache is mapped).
#
#   benches/start_time.sh                    # 3 runs, f32, the default model
#   FRESH=1 RUNS=2 DTYPE=bf16 benches/start_time.sh
#
# Env: BIN (the scorer binary, default target/release/scorer), RUNS, DTYPE, PORT, FRESH (1:
# delete the weight cache for this dtype first), EXTRA (more `scorer serve` flags).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/scorer}
RUNS=${RUNS:-3}
DTYPE=${DTYPE:-f32}
PORT=${PORT:-18$((RANDOM % 900 + 100))}
HOME_DIR=${SCORER_HOME:-$HOME/.cache/scorer}
if [ "${FRESH:-0}" = 1 ]; then
    rm -rf "$HOME_DIR/weights"
fi
unset AMQP_URL REDIS_URL DATABASE_URL
for run in $(seq 1 "$RUNS"); do
    log=$(mktemp)
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086
    "$BIN" serve --listen "127.0.0.1:$PORT" --dtype "$DTYPE" ${EXTRA:-} >"$log" 2>&1 &
    pid=$!
    until curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "scorer serve exited; log:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.05
    done
    t1=$(date +%s.%N)
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    loaded=$(grep -o 'source="[^"]*"\|source=[a-z ()]*elapsed' "$log" | head -1 || true)
    printf 'run %d (%s): launch to /ready %.2f s, peak RSS %.2f GiB, weights from %s\n' \
        "$run" "$DTYPE" "$(echo "$t1 - $t0" | bc)" "$(echo "$rss / 1048576" | bc -l)" "$loaded"
    rm -f "$log"
done
