"""Storage-cost experiment (bytes per token in the store against span quality): a runner for a source checkout.

    python scripts/storage_experiment.py ../shared/benchmarks/squad2-dev --out storage_report

The same as `chunkless storage-report` (the same flags, messages and exit codes); the experiment lives
in retriever.evaluation.storage.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a file from a clean clone
    sys.path.insert(0, str(REPO))

from retriever.cli import main as chunkless  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """`chunkless storage-report` with `argv` (default: this script's arguments); returns its exit status."""
    return chunkless(["storage-report", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
