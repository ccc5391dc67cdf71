#!/usr/bin/env bash
# Set-up and the main job on its built-in default: quantize real sentence embeddings
# (../shared/data/wiki_minilm when present, else seeded Gaussian data), report distortion
# against the paper, real bytes, speed, and inner-product error. No arguments, no downloads.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import turboquant_rs" 2>/dev/null || python3 -m pip install -q -e .
python3 -m turboquant_rs.cli "$@"
