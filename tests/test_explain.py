"""`chunkless explain`: a picture of one document's relevance, and the per-token arrays behind it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from retriever.cli import main
from tests.support import DEMO

QUERY = "How does a steam engine turn heat into mechanical work?"
DOC = "corpus/steam_engine.pdf"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("explain")
    corpus = root / "corpus"
    corpus.mkdir()
    shutil.copy(DEMO / "steam_engine.pdf", corpus)
    assert main(["ingest", str(corpus), "--store", str(root / "store"), "--quiet", "--id-from", str(root)]) == 0
    return root / "store"


def test_explain_writes_a_png(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "plot.png"
    assert main(["explain", QUERY, DOC, "--store", str(store), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_explain_json_has_one_value_per_token(
    store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # spans over the threshold is a property of the threshold method; sentence scores (BM25 blend,
    # length penalty) are on another scale
    monkeypatch.setenv("CHUNKLESS_SPAN_METHOD", "threshold")
    assert main(["stats", "--store", str(store), "--json"]) == 0
    n_tokens = json.loads(capsys.readouterr().out)["tokens"]
    assert main(["explain", QUERY, DOC, "--store", str(store), "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert len(body["raw"]) == len(body["smoothed"]) == len(body["starts"]) == n_tokens
    assert max(body["smoothed"]) <= max(body["raw"]) + 1e-6  # smoothing averages: never above the raw peak
    for s in body["spans"]:  # every span reaches over the threshold on the smoothed signal
        assert s["score"] > body["threshold"]


def test_explain_unknown_document_is_an_error(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", QUERY, "nope.txt", "--store", str(store)]) == 2
    assert "nope.txt" in capsys.readouterr().err
