#!/usr/bin/env bash
# Run the service on the embedded default: one process, in-process queue and stores, the default
# model, 127.0.0.1:8000. Fetches the plugin and the model first if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin scorer
target/release/scorer fetch
# The embedded default: ignore broker/store URLs that may be set for other purposes.
unset AMQP_URL REDIS_URL DATABASE_URL
exec target/release/scorer serve "$@"
