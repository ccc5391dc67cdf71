#!/usr/bin/env bash
# Fuzzes every decoder of untrusted bytes (quantized batches, quantizer files, index files
# in memory and mapped, rANS streams, unpackers) for a bounded time, on stable Rust.
#   bash scripts/fuzz.sh [SECONDS_PER_DECODER] [SEED]      (defaults: 30, a random seed)
# A failure prints the decoder, the case number, FUZZ_SEED and the failing input (hex);
# rerun with that seed to reproduce. `cargo test` runs a short fixed-seed pass of the same.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-30}"
seed="${2:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"
echo "fuzzing each decoder for ${secs}s, FUZZ_SEED=${seed}"
FUZZ_SECONDS="$secs" FUZZ_SEED="$seed" nice -n 10 \
    cargo test -p turboquant --release --test fuzz_decoders -- --test-threads=2 --nocapture
