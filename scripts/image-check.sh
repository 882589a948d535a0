#!/usr/bin/env bash
# Builds the Dockerfile with podman and runs the image, without a Docker engine or a registry:
#   1. the base image is a Debian bookworm minbase root file system made by debootstrap and
#      imported as localhost/debian:bookworm-slim (the Dockerfile's RUNTIME_IMAGE);
#   2. the binary is a prebuilt one (SCORER_BIN, else target/release/scorer, else
#      target/debug/scorer) given to the Dockerfile's `context` binary stage: no Rust image can be
#      pulled here, and a release build inside a container would take far longer than this check;
#   3. the runtime stage is built as written (apt-get, the user, the binary, the fetch step, the
#      HEALTHCHECK), with SCORER_FETCH=none;
#   4. artifacts are fetched into a volume at start (`scorer fetch` in the image, seeded from
#      SCORER_HOME on this machine when it has them, so nothing is downloaded twice);
#   5. `scorer serve` runs in the container: /ready, the HEALTHCHECK (`podman healthcheck run`),
#      one POST /v1/score, the user it runs as, and a clean exit on SIGTERM (`podman stop`).
# Everything it starts is removed on exit. IMAGE_CHECK_FETCH=build fetches at build time instead
# (step 3 with the Dockerfile's default SCORER_FETCH; downloads the plugin and default model).
#
# On a VM whose cgroups are in hybrid mode and without CAP_SYS_RESOURCE (this development
# machine kind) crun refuses to start containers ("cgroups in hybrid mode not supported",
# "setrlimit RLIMIT_NPROC: Operation not permitted"), so this uses runc and explicit ulimits
# (IMAGE_CHECK_RUNTIME, IMAGE_CHECK_ULIMITS override them).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE_CHECK_IMAGE:-localhost/scorer:check}"
BASE="localhost/debian:bookworm-slim"
RUNTIME="${IMAGE_CHECK_RUNTIME:-runc}"
read -r -a ULIMITS <<<"${IMAGE_CHECK_ULIMITS:---ulimit nofile=1024:1024 --ulimit nproc=1000:1000}"
PORT="${IMAGE_CHECK_PORT:-18765}"
NAME="scorer-image-check-$$"
VOLUME="scorer-image-check-$$"
WORK="$(mktemp -d)"
MODEL="qwen2.5-coder-0.5b-instruct-q4_k_m"

say() { printf '==> %s\n' "$*"; }
podman_() { podman --runtime "$RUNTIME" "$@"; }

cleanup() {
  podman_ rm -f "$NAME" >/dev/null 2>&1 || true
  podman volume rm -f "$VOLUME" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

need=()
command -v podman >/dev/null || need+=(podman)
command -v "$RUNTIME" >/dev/null || need+=("$RUNTIME")
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
  say "installing ${need[*]} with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! podman image exists "$BASE"; then
  say "base image: debootstrap bookworm (minbase) -> $BASE"
  debootstrap --variant=minbase bookworm "$WORK/rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log"; exit 1; }
  tar -C "$WORK/rootfs" -c . | podman import - "$BASE" >/dev/null
  rm -rf "$WORK/rootfs"
fi

bin="${SCORER_BIN:-}"
if [ -z "$bin" ]; then
  for candidate in target/release/scorer target/debug/scorer; do
    [ -x "$candidate" ] && { bin="$candidate"; break; }
  done
fi
[ -n "$bin" ] && [ -x "$bin" ] || { echo "image-check: no scorer binary (cargo build --bin scorer, or SCORER_BIN=...)" >&2; exit 1; }
say "binary: $bin (prebuilt; the Dockerfile's binary-source stage is not run here)"
mkdir -p "$WORK/context"
cp "$bin" "$WORK/context/scorer"

fetch_arg=(--build-arg SCORER_FETCH=none)
[ "${IMAGE_CHECK_FETCH:-start}" = build ] && fetch_arg=()
say "podman build $IMAGE (runtime stage, --format docker keeps the HEALTHCHECK)"
podman_ build --format docker "${ULIMITS[@]}" -f Dockerfile \
  --build-arg RUNTIME_IMAGE="$BASE" --build-arg SCORER_BINARY=context "${fetch_arg[@]}" \
  -t "$IMAGE" "$WORK/context"

uid="$(podman_ run --rm "${ULIMITS[@]}" "$IMAGE" id -u)"
[ "$uid" = 10001 ] || { echo "image-check: the image runs as uid $uid, not the scorer user" >&2; exit 1; }
health="$(podman image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE")"
say "user: uid $uid; healthcheck: $health"
case "$health" in *"/ready"*) ;; *) echo "image-check: no /ready HEALTHCHECK in the image" >&2; exit 1 ;; esac

podman volume create "$VOLUME" >/dev/null
home="${SCORER_HOME:-$HOME/.cache/scorer}"
if [ "${IMAGE_CHECK_FETCH:-start}" != build ]; then
  seed=()
  if [ -d "$home/plugins" ]; then
    say "seeding the volume from $home (scorer fetch then only verifies)"
    seed=(-v "$home:/seed:ro")
    podman_ run --rm "${ULIMITS[@]}" --user 0 -v "$VOLUME:/var/lib/scorer" "${seed[@]}" "$IMAGE" \
      sh -c 'cp -a /seed/plugins /seed/models /var/lib/scorer/ 2>/dev/null || true; chown -R scorer:scorer /var/lib/scorer'
  fi
  say "scorer fetch into the volume (the fetch-at-start path)"
  podman_ run --rm "${ULIMITS[@]}" --network host -v "$VOLUME:/var/lib/scorer" "$IMAGE" \
    scorer fetch --model xla-cpu-pjrt --model "$MODEL"
fi

# As deploy/k8s runs it: a read-only root file system, /tmp and SCORER_HOME (or, with the
# artifacts inside the image, only its compile cache) writable.
say "scorer serve in the container on 127.0.0.1:$PORT (read-only root file system)"
home_arg=(-v "$VOLUME:/var/lib/scorer")
[ "${IMAGE_CHECK_FETCH:-start}" = build ] && home_arg=(--tmpfs /var/lib/scorer/executables:rw,mode=1777)
podman_ run -d --name "$NAME" "${ULIMITS[@]}" --network host --read-only --tmpfs /tmp \
  -e SCORER_LISTEN="127.0.0.1:$PORT" "${home_arg[@]}" "$IMAGE" >/dev/null
started=$(date +%s)
for ((i = 0; i < 300; i++)); do
  curl -fsS -o /dev/null "http://127.0.0.1:$PORT/ready" 2>/dev/null && break
  if [ "$(podman inspect --format '{{.State.Running}}' "$NAME")" != true ]; then
    podman logs "$NAME" | tail -30; echo "image-check: the container exited" >&2; exit 1
  fi
  sleep 1
done
curl -fsS "http://127.0.0.1:$PORT/ready"; echo
say "ready after $(( $(date +%s) - started )) s"
podman_ healthcheck run "$NAME" && say "HEALTHCHECK: healthy"
body='{"query":"Is Paris the capital of France? Answer:","items":[" Yes"," No"],"label_token_ids":[9454,2753],"apply_softmax":true}'
scores="$(curl -fsS -H 'content-type: application/json' -d "$body" "http://127.0.0.1:$PORT/v1/score")"
echo "$scores"
python3 -c 'import json,sys; r=json.loads(sys.argv[1]); s=r["scores"]; assert len(s)==2 and all(len(x)==2 and abs(sum(x)-1)<1e-6 for x in s), r' "$scores"
say "POST /v1/score: 2 rows of 2 softmax scores"

start=$(date +%s)
podman_ stop -t 30 "$NAME" >/dev/null
code="$(podman inspect --format '{{.State.ExitCode}}' "$NAME")"
say "SIGTERM: exit status $code after $(( $(date +%s) - start )) s"
[ "$code" = 0 ] || { podman logs "$NAME" | tail -20; exit 1; }
say "image check passed"
