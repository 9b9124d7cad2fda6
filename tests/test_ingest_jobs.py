"""Production ingest jobs: SIGKILL and resume, idempotent re-runs, replacement, failure isolation, progress.

The crash test runs the real `chunkless ingest` in a subprocess on a corpus of many small files,
kills it with SIGKILL once a given number of documents are visible (it watches the `--quiet`
log lines, no sleeps), runs it again, and compares the store with an uninterrupted run.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pymupdf
import pytest

import indexer.pipeline as pipeline
from indexer.embedders import DelegatingEmbedder, HFTokenEmbedder
from indexer.loaders import file_hash
from indexer.store import EdgeBackend, Match, Where, open_store
from schemas.models import EmbeddedDocument, LoadedDocument
from schemas.settings import Settings
from tests.conftest import REPO

WORDS = [
    "river",
    "mountain",
    "engine",
    "copper",
    "glacier",
    "volcano",
    "harbour",
    "orchard",
    "violin",
    "comet",
    "lantern",
    "meadow",
    "granite",
    "falcon",
    "bakery",
    "compass",
    "parliament",
    "tundra",
    "reactor",
    "monsoon",
    "cathedral",
    "pepper",
    "turbine",
]


def make_corpus(root: Path, n: int, words: int = 120) -> Path:
    """n small text files with distinct, deterministic content."""
    corpus = root / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rng = np.random.default_rng(i)
        sentences = []
        for _ in range(words // 12):
            sentences.append(" ".join(rng.choice(WORDS, 12)).capitalize() + ".")
        (corpus / f"doc{i:03d}.txt").write_text(f"Document {i}. " + " ".join(sentences))
    return corpus


class CountingEmbedder(DelegatingEmbedder):
    """Wraps a real embedder, counting documents it embeds and failing on demand."""

    def __init__(self, inner: HFTokenEmbedder, fail_on: str | None = None) -> None:
        super().__init__(inner)
        self.fail_on = fail_on
        self.docs = 0

    def embed_documents(self, docs: Sequence[LoadedDocument]) -> list[EmbeddedDocument]:
        if self.fail_on and any(d.doc_id.endswith(self.fail_on) for d in docs):
            raise RuntimeError(f"model rejected {self.fail_on}")
        self.docs += len(docs)
        return self.inner.embed_documents(docs)

    def embed_query(self, query: str) -> np.ndarray:
        return self.inner.embed_query(query)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.embed_texts(texts)


def snapshot(settings: Settings) -> dict[str, Any]:
    """Everything a run leaves: headers, segment ids, and each document's stored token matrix."""
    store = open_store(settings.store)
    try:
        heads = store.headers()
        segs = store.backend.scroll(Where(must=[Match("kind", "segment")]), with_vectors=[])
        fetched = store.fetch_segments({d: h.version for d, h in heads.items()})
        return {
            "headers": {d: (h.version, h.n_tokens, h.n_segments) for d, h in heads.items()},
            "segment_ids": sorted(r.id for r in segs),
            "vectors": {d: np.concatenate([s.stored for s in ss]) for d, ss in fetched.items()},
        }
    finally:
        store.close()


def assert_complete(settings: Settings) -> int:
    """Every visible document has all its segments and tokens; returns how many are visible."""
    store = open_store(settings.store)
    try:
        heads = store.headers()
        fetched = store.fetch_segments({d: h.version for d, h in heads.items()})
        for d, h in heads.items():
            assert len(fetched[d]) == h.n_segments, f"{d}: half-written document visible"
            assert sum(len(s.stored) for s in fetched[d]) == h.n_tokens
        return len(heads)
    finally:
        store.close()


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["headers"] == b["headers"]
    assert a["segment_ids"] == b["segment_ids"]  # same points, no duplicates, no orphans
    for d, v in a["vectors"].items():
        # thread counts differ between the subprocess and this one: equal up to float reassociation
        np.testing.assert_allclose(v, b["vectors"][d], atol=1e-4)


def run_and_kill(corpus: Path, store: Path, after_stored: int) -> int:
    """Run `chunkless ingest --quiet` in a subprocess; SIGKILL it once `after_stored` documents are stored."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUNKLESS_")}
    # one small document per forward pass: the job runs long enough to be killed part-way
    env |= {"CHUNKLESS_BATCH_TOKENS": "256", "CHUNKLESS_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "retriever.cli", "ingest", str(corpus), "--store", str(store), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    stored = 0
    for line in proc.stderr:
        if "indexer.pipeline: stored " in line:
            stored += 1
            if stored == after_stored:
                proc.send_signal(signal.SIGKILL)
                break
    proc.stderr.read()
    return proc.wait()


def test_sigkill_then_rerun_equals_one_clean_run(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    corpus = make_corpus(tmp_path, 12)
    crashed = Settings(store_path=tmp_path / "crashed", device="cpu")
    assert run_and_kill(corpus, crashed.store.store_path, after_stored=2) == -signal.SIGKILL
    first = assert_complete(crashed)
    assert 2 <= first < 12  # killed part-way, and nothing half-written is visible

    # the second run resumes (skipping what is stored) and is killed again further on
    assert run_and_kill(corpus, crashed.store.store_path, after_stored=3) == -signal.SIGKILL
    second = assert_complete(crashed)
    assert first + 3 <= second < 12

    report = pipeline.ingest([corpus], crashed, embedder=minilm)
    assert report.failures == [] and report.skipped_unchanged == second and report.documents == 12 - second

    clean = Settings(store_path=tmp_path / "clean", device="cpu")
    assert pipeline.ingest([corpus], clean, embedder=minilm).documents == 12
    assert_same(snapshot(crashed), snapshot(clean))


class Killed(BaseException):
    """Stands in for SIGKILL at an exact point inside a write."""


def test_kill_between_segments_and_header_leaves_only_orphans(
    tmp_path: Path, minilm: HFTokenEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = make_corpus(tmp_path, 3)
    s = Settings(store_path=tmp_path / "store", device="cpu")
    pipeline.ingest([corpus], s, embedder=minilm)
    (corpus / "doc001.txt").write_text("Replaced text about comets and harbours. " * 20)
    real_upsert = EdgeBackend.upsert

    def upsert(self: EdgeBackend, points: list[Any]) -> None:
        if points[0].payload["kind"] == "doc":  # the new segments are written; die before the header
            raise Killed
        real_upsert(self, points)

    monkeypatch.setattr(EdgeBackend, "upsert", upsert)
    with pytest.raises(Killed):
        pipeline.ingest([corpus], s, embedder=minilm)
    monkeypatch.setattr(EdgeBackend, "upsert", real_upsert)

    store = open_store(s.store)
    old_version = store.headers()["corpus/doc001.txt"].version
    assert old_version != file_hash(corpus / "doc001.txt")  # searchers still see the old version whole
    assert store.backend.count(Where(must=[Match("kind", "segment")])) == 4  # 3 live + 1 orphan
    store.close()
    assert assert_complete(s) == 3

    report = pipeline.ingest([corpus], s, embedder=minilm)
    assert report.documents == 1 and report.replaced == 1
    store = open_store(s.store)
    assert store.headers()["corpus/doc001.txt"].version == file_hash(corpus / "doc001.txt")
    assert store.backend.count(Where(must=[Match("kind", "segment")])) == 3
    store.close()


def test_unchanged_corpus_does_no_embedding_work(
    tmp_path: Path, minilm: HFTokenEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = make_corpus(tmp_path, 5)
    s = Settings(store_path=tmp_path / "store", device="cpu")
    counting = CountingEmbedder(minilm)
    assert pipeline.ingest([corpus], s, embedder=counting).documents == 5
    assert counting.docs == 5

    again = pipeline.ingest([corpus], s, embedder=counting)
    assert counting.docs == 5 and again.documents == 0 and again.skipped_unchanged == 5

    # without an embedder passed in, an unchanged corpus does not even load the model
    def no_model(settings: Settings) -> None:
        raise AssertionError("the model was loaded for an unchanged corpus")

    monkeypatch.setattr(pipeline, "load_embedder", no_model)
    assert pipeline.ingest([corpus], s).skipped_unchanged == 5


def test_changed_file_replaces_its_old_points(
    tmp_path: Path, minilm: HFTokenEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    corpus = make_corpus(tmp_path, 3)
    s = Settings(store_path=tmp_path / "store", device="cpu")
    pipeline.ingest([corpus], s, embedder=minilm)
    old = open_store(s.store)
    old_version = old.headers()["corpus/doc002.txt"].version
    old.close()

    new_text = "The lighthouse keeper logged every passing ship in a leather book."
    (corpus / "doc002.txt").write_text(new_text)
    with caplog.at_level(logging.INFO, logger="indexer.pipeline"):
        report = pipeline.ingest([corpus], s, embedder=minilm)
    assert (report.documents, report.replaced, report.skipped_unchanged) == (1, 1, 2)
    # --quiet's plain log line: the document, files done, tokens/s and ETA
    assert any("stored corpus/doc002.txt" in m and "[3/3 files" in m and "ETA" in m for m in caplog.messages)

    store = open_store(s.store)
    head = store.headers()["corpus/doc002.txt"]
    assert head.version == file_hash(corpus / "doc002.txt") != old_version
    assert store.fetch_segments({"corpus/doc002.txt": old_version}) == {}  # old points gone
    segs = store.fetch_segments({"corpus/doc002.txt": head.version})["corpus/doc002.txt"]
    assert "".join(x.text for x in segs) == new_text
    assert store.stats()["segments"] == 3
    hit = store.recall(minilm.embed_query("lighthouse keeper logging ships"), k=1)[0]
    assert hit.doc_id == "corpus/doc002.txt"
    store.close()


def test_bad_files_are_reported_and_skipped(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    corpus = make_corpus(tmp_path, 2)
    (corpus / "corrupt.pdf").write_bytes(b"%PDF-1.7\n garbage")
    (corpus / "empty.md").write_text("   \n")
    (corpus / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    blank = pymupdf.open()
    blank.new_page()
    blank.save(corpus / "scanned.pdf")
    (corpus / "rejected.txt").write_text("The model will refuse this one.")
    s = Settings(store_path=tmp_path / "store", device="cpu")
    seen: list[str] = []
    report = pipeline.ingest(
        [corpus, tmp_path / "missing"],
        s,
        embedder=CountingEmbedder(minilm, fail_on="rejected.txt"),
        on_failure=lambda f: seen.append(Path(f.path).name),
    )
    reasons = {Path(f.path).name: f.reason for f in report.failures}
    assert (
        set(reasons) == set(seen) == {"corrupt.pdf", "empty.md", "latin1.txt", "scanned.pdf", "rejected.txt", "missing"}
    )
    assert "corrupt" in reasons["corrupt.pdf"] and "empty" in reasons["empty.md"]
    assert "not valid UTF-8" in reasons["latin1.txt"] and "no extractable text" in reasons["scanned.pdf"]
    assert "cannot embed" in reasons["rejected.txt"] and "does not exist" in reasons["missing"]
    assert report.documents == 2 and report.tokens > 0  # the good files went through
    store = open_store(s.store)
    assert set(store.headers()) == {"corpus/doc000.txt", "corpus/doc001.txt"}
    store.close()


def test_report_json_has_what_the_issue_asks(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    corpus = make_corpus(tmp_path, 2)
    (corpus / "bad.txt").write_bytes(b"\xff\xfe")
    report = pipeline.ingest([corpus], Settings(store_path=tmp_path / "s", device="cpu"), embedder=minilm)
    d = report.to_json_dict()
    assert d["documents"] == 2 and d["tokens"] > 0 and d["bytes_stored"] > 0
    assert d["seconds"] > 0 and d["tokens_per_second"] > 0
    assert [Path(f["path"]).name for f in d["failures"]] == ["bad.txt"] and d["failures"][0]["reason"]


def test_progress_bar_shows_files_tokens_per_second_and_eta(capsys: pytest.CaptureFixture[str]) -> None:
    bar = pipeline.Progress(4, bar=True)
    bar.advance("stored", "a.txt", 1000)
    bar.advance("unchanged", "b.txt")
    bar.close()
    err = capsys.readouterr().err
    assert "2/4" in err and "tok/s" in err and "<" in err  # tqdm writes the ETA as elapsed<remaining
