#!/usr/bin/env bash
# Install mixcl_arch and what it needs, skipping what is already there.
# torch is never forced: if it is missing we install the offline-available build (override with TORCH_SPEC).
#   bash scripts/install.sh      (PYTHON=python3: the interpreter; TORCH_SPEC: the torch build to install)
set -euo pipefail
case "${1:-}" in -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;; esac
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "[install] torch/torchvision not found: installing ${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
  # shellcheck disable=SC2086
  "$PY" -m pip install -q ${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
fi
# installed (checked from outside the checkout, so the source folder itself does not count), and installed from
# this checkout (an editable install of another clone does not count)
where=$(cd / && "$PY" -c 'import mixcl_arch, os; print(os.path.dirname(os.path.dirname(mixcl_arch.__file__)))' \
        2>/dev/null || true)
# mixcl_arch_hook is the BasicSR import hook installed with the package (older installs lack it: reinstall)
if ! (cd / && "$PY" -c "import mixcl_arch, mixcl_arch_hook, pytest, pytorch_msssim, open_clip, lmdb, skimage, safetensors, \
     onnxruntime, onnxscript, matplotlib") \
     >/dev/null 2>&1 \
   || [ "$where" != "$PWD" ]; then
  echo "[install] pip install -e '.[test]'"
  "$PY" -m pip install -q -e '.[test]'
fi
