#!/usr/bin/env bash
# The whole test suite, from a clean clone: services, artifacts, lints, every test.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"

step() { printf '\n==> %s\n' "$*"; }

step "services"
scripts/services.sh

step "format"
cargo fmt --all -- --check

step "build"
cargo build --workspace --all-targets

step "fetch the PJRT plugin and the models"
target/debug/scorer fetch

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "tests"
cargo test --workspace --no-fail-fast
