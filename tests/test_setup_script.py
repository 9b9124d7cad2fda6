"""scripts/setup.sh and the Dockerfile choose the torch build explicitly (CHUNKLESS_TORCH=cpu|cuda, cpu by default)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"


def test_an_unknown_torch_build_is_refused_before_anything_is_installed(tmp_path: Path) -> None:
    env = {**os.environ, "CHUNKLESS_TORCH": "rocm", "PYTHON": str(tmp_path / "no-python")}
    out = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh")], env=env, capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip() == "scripts/setup.sh: CHUNKLESS_TORCH=rocm is not cpu or cuda; set one of those"


def test_setup_and_the_dockerfile_install_the_same_torch_the_same_way() -> None:
    setup = (REPO / "scripts" / "setup.sh").read_text()
    docker = (REPO / "Dockerfile").read_text()
    assert 'case "${CHUNKLESS_TORCH:-cpu}"' in setup and "ARG CHUNKLESS_TORCH=cpu" in docker
    assert CPU_INDEX in setup and CPU_INDEX in docker
    [pinned] = re.findall(r"TORCH_VERSION=(\S+)", setup)
    assert re.findall(r"torch==(\S+)", docker) == [pinned, pinned]  # the cpu and the cuda line
