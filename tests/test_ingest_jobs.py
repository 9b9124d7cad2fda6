"""Production ingest jobs: SIGKILL and resume, idempotent re-runs, replacement, failure isolation, progress.

The crash test runs the real `chunkless ingest` in a subprocess on a corpus of many small files,
kills it with SIGKILL once a given number of documents are visible (it watches the `--quiet`
log lines, no sleeps), runs it again, and compares the store with an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
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
import torch

import indexer.admit
import indexer.ingest
import indexer.long_documents as long_documents
from indexer.admit import file_hash
from indexer.embedders import DelegatingEmbedder, HFTokenEmbedder
from indexer.ingest import ingest
from indexer.progress import Progress
from indexer.store import EdgeBackend, Match, Where, open_store
from indexer.store.sentence_sums import SUMS_KEY, read_sums
from retriever.cli import main
from retriever.search import Retriever
from retriever.serve.embedder import SerialEmbedder
from schemas.errors import InputError
from schemas.models import EmbeddedDocument, LoadedDocument
from schemas.settings import Settings
from tests.support import REPO, tokenize_long

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


def doc_id(path: Path) -> str:
    """The default doc_id: the file's resolved absolute POSIX path."""
    return path.resolve().as_posix()


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


class WholeDocuments(DelegatingEmbedder):
    """The real model, declared unable to embed part by part: every document reaches `embed_documents` whole."""

    def __init__(self, inner: HFTokenEmbedder) -> None:
        super().__init__(inner)
        self.capabilities = dataclasses.replace(inner.capabilities, part_wise=False)


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


def assert_same(a: dict[str, Any], b: dict[str, Any], float16_rounding: bool = False) -> None:
    """Two snapshots hold the same documents, points and vectors.

    Vectors are equal up to float reassociation (thread counts, or the order of a sum, differ between
    the runs). Stored as float16 (`float16_rounding`), a value that close to a rounding boundary may
    round to the neighbouring float16 in one run: one step of float16 at that magnitude (1.2e-4 near
    0.13, 4.9e-4 near 1), more than any fixed small atol, is what such runs can differ by.
    """
    assert a["headers"] == b["headers"]
    assert a["segment_ids"] == b["segment_ids"]  # same points, no duplicates, no orphans
    for d, v in a["vectors"].items():
        w = b["vectors"][d]
        if not float16_rounding:
            np.testing.assert_allclose(v, w, atol=1e-4)
            continue
        x, y = np.asarray(v, dtype=np.float32), np.asarray(w, dtype=np.float32)
        step = np.spacing(np.maximum(np.abs(x), np.abs(y)).astype(np.float16)).astype(np.float32)
        worst = float(np.max(np.abs(x - y) - step))
        assert worst <= 0.0, f"{d}: stored vectors differ by more than one float16 step (by {worst:.2e} more)"


def run_and_kill(corpus: Path, store: Path, after_stored: int) -> int:
    """Run `chunkless ingest --quiet` in a subprocess; SIGKILL it once `after_stored` documents are stored."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUNKLESS_")}
    # one small document per forward pass: the job runs long enough to be killed part-way
    env |= {"CHUNKLESS_BATCH_TOKENS": "256", "CHUNKLESS_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"}
    env["CHUNKLESS_STORAGE_DTYPE"] = "float32"  # compared with a clean run row by row, exactly
    cmd = [sys.executable, "-m", "retriever.cli", "ingest", str(corpus), "--store", str(store), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    stored = 0
    for line in proc.stderr:
        if "indexer.ingest: stored " in line:
            stored += 1
            if stored == after_stored:
                proc.send_signal(signal.SIGKILL)
                break
    proc.stderr.read()
    return proc.wait()


def test_sigkill_then_rerun_equals_one_clean_run(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    corpus = make_corpus(tmp_path, 12)
    crashed = Settings(store_path=tmp_path / "crashed", device="cpu", storage_dtype="float32")
    assert run_and_kill(corpus, crashed.store.store_path, after_stored=2) == -signal.SIGKILL
    first = assert_complete(crashed)
    assert 2 <= first < 12  # killed part-way, and nothing half-written is visible

    # the second run resumes (skipping what is stored) and is killed again further on
    assert run_and_kill(corpus, crashed.store.store_path, after_stored=3) == -signal.SIGKILL
    second = assert_complete(crashed)
    assert first + 3 <= second < 12

    report = ingest([corpus], crashed, embedder=minilm)
    assert report.failures == [] and report.skipped_unchanged == second and report.documents == 12 - second

    clean = Settings(store_path=tmp_path / "clean", device="cpu", storage_dtype="float32")
    assert ingest([corpus], clean, embedder=minilm).documents == 12
    assert_same(snapshot(crashed), snapshot(clean))


class Killed(BaseException):
    """Stands in for SIGKILL at an exact point inside a write."""


def test_kill_between_segments_and_header_leaves_only_orphans(
    tmp_path: Path, minilm: HFTokenEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = make_corpus(tmp_path, 3)
    s = Settings(store_path=tmp_path / "store", device="cpu")
    ingest([corpus], s, embedder=minilm)
    (corpus / "doc001.txt").write_text("Replaced text about comets and harbours. " * 20)
    real_upsert = EdgeBackend.upsert

    def upsert(self: EdgeBackend, points: list[Any]) -> None:
        if points[0].payload["kind"] == "doc":  # the new segments are written; die before the header
            raise Killed
        real_upsert(self, points)

    monkeypatch.setattr(EdgeBackend, "upsert", upsert)
    with pytest.raises(Killed):
        ingest([corpus], s, embedder=minilm)
    monkeypatch.setattr(EdgeBackend, "upsert", real_upsert)

    store = open_store(s.store)
    old_version = store.headers()[doc_id(corpus / "doc001.txt")].version
    assert old_version != file_hash(corpus / "doc001.txt")  # searchers still see the old version whole
    assert store.backend.count(Where(must=[Match("kind", "segment")])) == 4  # 3 live + 1 orphan
    store.close()
    assert assert_complete(s) == 3

    report = ingest([corpus], s, embedder=minilm)
    assert report.documents == 1 and report.replaced == 1
    store = open_store(s.store)
    assert store.headers()[doc_id(corpus / "doc001.txt")].version == file_hash(corpus / "doc001.txt")
    assert store.backend.count(Where(must=[Match("kind", "segment")])) == 3
    store.close()


def test_unchanged_corpus_does_no_embedding_work(
    tmp_path: Path, minilm: HFTokenEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = make_corpus(tmp_path, 5)
    s = Settings(store_path=tmp_path / "store", device="cpu")
    counting = CountingEmbedder(minilm)
    assert ingest([corpus], s, embedder=counting).documents == 5
    assert counting.docs == 5

    again = ingest([corpus], s, embedder=counting)
    assert counting.docs == 5 and again.documents == 0 and again.skipped_unchanged == 5

    # without an embedder passed in, an unchanged corpus does not even load the model
    def no_model(settings: Settings) -> None:
        raise AssertionError("the model was loaded for an unchanged corpus")

    monkeypatch.setattr(indexer.ingest, "load_embedder", no_model)
    assert ingest([corpus], s).skipped_unchanged == 5


def test_changed_file_replaces_its_old_points(
    tmp_path: Path, minilm: HFTokenEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    corpus = make_corpus(tmp_path, 3)
    s = Settings(store_path=tmp_path / "store", device="cpu")
    ingest([corpus], s, embedder=minilm)
    old = open_store(s.store)
    old_version = old.headers()[doc_id(corpus / "doc002.txt")].version
    old.close()

    new_text = "The lighthouse keeper logged every passing ship in a leather book."
    (corpus / "doc002.txt").write_text(new_text)
    did = doc_id(corpus / "doc002.txt")
    with caplog.at_level(logging.INFO, logger="indexer.ingest"):
        report = ingest([corpus], s, embedder=minilm)
    assert (report.documents, report.replaced, report.skipped_unchanged) == (1, 1, 2)
    # --quiet's plain log line: the document, files done, tokens/s and ETA
    assert any(f"stored {did}" in m and "[3.0/3 files" in m and "ETA" in m for m in caplog.messages)

    store = open_store(s.store)
    head = store.headers()[did]
    assert head.version == file_hash(corpus / "doc002.txt") != old_version
    assert store.fetch_segments({did: old_version}) == {}  # old points gone
    segs = store.fetch_segments({did: head.version})[did]
    assert "".join(x.text for x in segs) == new_text
    assert store.stats()["segments"] == 3
    hit = store.recall(minilm.embed_query("lighthouse keeper logging ships"), k=1)[0]
    assert hit.doc_id == did
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
    report = ingest(
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
    assert set(store.headers()) == {doc_id(corpus / "doc000.txt"), doc_id(corpus / "doc001.txt")}
    store.close()


def test_report_json_has_what_the_issue_asks(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    corpus = make_corpus(tmp_path, 2)
    (corpus / "bad.txt").write_bytes(b"\xff\xfe")
    report = ingest([corpus], Settings(store_path=tmp_path / "s", device="cpu"), embedder=minilm)
    d = report.to_json_dict()
    assert d["documents"] == 2 and d["tokens"] > 0 and d["bytes_stored"] > 0
    assert d["seconds"] > 0 and d["tokens_per_second"] > 0
    assert [Path(f["path"]).name for f in d["failures"]] == ["bad.txt"] and d["failures"][0]["reason"]


def test_progress_bar_shows_files_tokens_per_second_and_eta(capsys: pytest.CaptureFixture[str]) -> None:
    bar = Progress(4, bar=True)
    bar.advance("stored", "a.txt", 1000)
    bar.advance("unchanged", "b.txt")
    bar.close()
    err = capsys.readouterr().err
    assert "2/4" in err and "tok/s" in err and "<" in err  # tqdm writes the ETA as elapsed<remaining


def test_same_file_name_in_two_folders_keeps_both(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "notes.txt").write_text("Notes about glaciers carving fjords into granite.")
    (b / "notes.txt").write_text("Notes about a bakery that sells pepper bread.")
    s = Settings(store_path=tmp_path / "store", device="cpu")
    report = ingest([a / "notes.txt", b / "notes.txt"], s, embedder=minilm)
    assert report.documents == 2 and report.failures == []
    store = open_store(s.store)
    heads = store.headers()
    store.close()
    assert set(heads) == {doc_id(a / "notes.txt"), doc_id(b / "notes.txt")}


def test_another_route_to_a_file_is_the_same_document(
    tmp_path: Path, minilm: HFTokenEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = make_corpus(tmp_path, 2)
    s = Settings(store_path=tmp_path / "store", device="cpu")
    assert ingest([corpus / "doc000.txt"], s, embedder=minilm).documents == 1
    # through its folder, then by a relative path from another working directory, then through a symlink
    again = ingest([corpus], s, embedder=minilm)
    assert (again.documents, again.skipped_unchanged) == (1, 1)
    monkeypatch.chdir(corpus)
    assert ingest([Path("doc001.txt")], s, embedder=minilm).skipped_unchanged == 1
    (tmp_path / "link").symlink_to(corpus)
    assert ingest([tmp_path / "link"], s, embedder=minilm).skipped_unchanged == 2
    store = open_store(s.store)
    assert set(store.headers()) == {doc_id(corpus / "doc000.txt"), doc_id(corpus / "doc001.txt")}
    store.close()


def test_doc_id_taken_by_another_file_is_refused_naming_both(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    corpus = make_corpus(tmp_path, 2)
    first, second = corpus / "doc000.txt", corpus / "doc001.txt"
    s = Settings(store_path=tmp_path / "store", device="cpu")
    assert ingest([first], s, embedder=minilm, doc_id="notes").documents == 1
    report = ingest([second], s, embedder=minilm, doc_id="notes")
    [failure] = report.failures
    assert report.documents == 0 and "DocIdCollisionError" in failure.reason
    assert str(first.resolve()) in failure.reason and failure.path == str(second.resolve())
    store = open_store(s.store)
    assert store.headers()["notes"].source == str(first.resolve())  # the first file's document is intact
    store.close()
    # other files of the run go on: the folder's other file is stored under its own id
    report = ingest([corpus], s, embedder=minilm, id_from=tmp_path)
    assert report.documents == 2 and report.failures == []


def test_a_pdf_read_by_an_older_reader_revision_is_read_again(
    tmp_path: Path, minilm: HFTokenEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A document is what its reader made of the file: when the PDF reader changes, "unchanged" bytes
    must not keep the old reading; text files, whose reader did not change, stay unchanged."""
    corpus = make_corpus(tmp_path, 2)
    pdf = pymupdf.open()
    pdf.new_page().insert_text((72, 100), "The widget ships in one box with a power cable.", fontsize=11)
    pdf.save(corpus / "manual.pdf")
    s = Settings(store_path=tmp_path / "store", device="cpu")
    monkeypatch.setitem(indexer.admit.READER_REVISIONS, ".pdf", 1)
    assert ingest([corpus], s, embedder=minilm).documents == 3
    assert ingest([corpus], s, embedder=minilm).skipped_unchanged == 3

    monkeypatch.setitem(indexer.admit.READER_REVISIONS, ".pdf", 2)
    again = ingest([corpus], s, embedder=minilm)
    assert (again.documents, again.replaced, again.skipped_unchanged) == (1, 1, 2)
    store = open_store(s.store)
    assert store.headers()[doc_id(corpus / "manual.pdf")].version == file_hash(corpus / "manual.pdf")
    store.close()


def test_file_stored_under_an_older_id_is_replaced_not_duplicated(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    corpus = make_corpus(tmp_path, 3)
    s = Settings(store_path=tmp_path / "store", device="cpu")
    # ids relative to tmp_path are exactly what the old scheme gave "chunkless ingest corpus/"
    ingest([corpus], s, embedder=minilm, id_from=tmp_path)
    store = open_store(s.store)
    assert set(store.headers()) == {f"corpus/doc00{i}.txt" for i in range(3)}
    store.close()
    report = ingest([corpus], s, embedder=minilm)
    assert report.documents == 3 and report.replaced == 3
    store = open_store(s.store)
    assert set(store.headers()) == {doc_id(corpus / f"doc00{i}.txt") for i in range(3)}
    assert store.stats()["segments"] == 3  # no segments of the old ids left
    store.close()


def test_id_from_outside_root_and_doc_id_for_many_files_are_refused(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path, 2)
    s = Settings(store_path=tmp_path / "store", device="cpu")
    with pytest.raises(InputError, match="--doc-id names one file"):
        ingest([corpus], s, doc_id="x")
    other = tmp_path / "elsewhere"
    other.mkdir()
    report = ingest([corpus / "doc000.txt"], s, id_from=other)
    [failure] = report.failures
    assert "not under --id-from" in failure.reason and report.documents == 0


def test_run_that_finds_no_supported_file_says_so_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "office"
    folder.mkdir()
    for name in ["a.docx", "b.docx", "c.png", "README", ".hidden.txt"]:
        (folder / name).write_bytes(b"x")
    store = tmp_path / "store"
    assert main(["ingest", str(folder), "--store", str(store), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "no supported file found (skipped: 2 .docx, 1 (no extension), 1 .png, 1 hidden)" in err
    assert "0 documents" in err and str(folder) in err


def test_progress_counts_tokens_within_a_file() -> None:
    bar = Progress(2, bar=False, clock=lambda: 10.0)
    bar.working("big.txt", 250, 1000)
    assert bar.files == pytest.approx(0.25) and bar.tokens_seen == 250
    bar.advance("stored", "big.txt", 1000)
    bar.working("next.txt", 500, 1000)
    assert bar.files == pytest.approx(1.5) and bar.tokens_seen == 1500


def test_non_terminal_progress_logs_a_heartbeat_every_few_seconds(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    bar = Progress(1, bar=False, clock=lambda: now[0], every_s=5.0)
    with caplog.at_level(logging.INFO, logger="indexer.ingest"):
        now[0] = 4.9
        assert not bar.tick()  # too soon
        bar.working("huge.txt", 3000, 12000)
        now[0] = 5.0
        assert bar.tick()
        assert not bar.tick()  # just logged
        now[0] = 9.0
        bar.advance("stored", "huge.txt", 12000)  # a stored line counts as output too
        now[0] = 13.0
        assert not bar.tick()
        now[0] = 14.0
        assert bar.tick()
    beats = [m for m in caplog.messages if m.startswith("progress")]
    assert len(beats) == 2
    assert "0.2/1 files" in beats[0] and "3,000 tokens" in beats[0] and "huge.txt" in beats[0]
    assert "1.0/1 files" in beats[1]


def long_text(words: int, seed: int = 7) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(" ".join(rng.choice(WORDS, 12)).capitalize() + "." for _ in range(words // 12))


@pytest.mark.parametrize("pool", [1, 2])
def test_long_document_in_parts_stores_what_a_whole_embedding_stores(
    tmp_path: Path, minilm: HFTokenEmbedder, pool: int
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "long.txt").write_text(long_text(2400))
    # sentence vectors on (the default): a sentence crossing a part's or a segment's edge is stored
    # with the segment it starts in, as for the document embedded whole
    common = {"device": "cpu", "batch_tokens": 256, "segment_tokens": 300, "storage_pool": pool}
    parts = Settings(store_path=tmp_path / "parts", **common)
    whole = Settings(store_path=tmp_path / "whole", **common)
    # the real model goes part by part (parts of 2 windows here); declared unable to, it embeds the document whole
    assert ingest([corpus], parts, embedder=minilm).documents == 1
    assert ingest([corpus], whole, embedder=WholeDocuments(minilm)).documents == 1
    a, b = snapshot(parts), snapshot(whole)
    assert_same(a, b, float16_rounding=True)  # the default storage dtype
    [(_, n_tokens, n_segments)] = a["headers"].values()
    assert n_segments > 3 and n_tokens > 2400
    sa, sb = open_store(parts.store), open_store(whole.store)
    try:
        assert sa.meta.sentence_vectors and sb.meta.sentence_vectors
        want = {(h.doc_id, h.version): list(range(h.n_segments)) for h in sa.headers().values()}
        va, vb = sa.sentence_vectors(want), sb.sentence_vectors(want)
        assert set(va) == set(vb) and len(va) > 100  # the same sentences, each in the segment it starts in
        assert all(np.allclose(va[k], vb[k], atol=2e-3) for k in va)
        pa = sa.backend.scroll(Where(must=[Match("kind", "segment")]), with_vectors=["pooled"])
        pb = {r.id: r for r in sb.backend.scroll(Where(must=[Match("kind", "segment")]), with_vectors=["pooled"])}
        for r in pa:  # same text, offsets and pooled vector per segment
            other = pb[r.id]
            # sentence vectors compared above, sentence sums here (float16 rows: a last bit may differ
            # with the batch, and a sum gathers those bits)
            loose = ("written_at", "alone", SUMS_KEY)
            assert {k: v for k, v in r.payload.items() if k not in loose} == {
                k: v for k, v in other.payload.items() if k not in loose
            }
            sums_a, sums_b = (read_sums(x.payload, sa.meta.dim, "sentences") for x in (r, other))
            assert sums_a is not None and sums_b is not None and sums_a.shape == sums_b.shape
            np.testing.assert_allclose(sums_a, sums_b, atol=2e-2)
            np.testing.assert_allclose(r.vectors["pooled"], other.vectors["pooled"], atol=1e-5)
        ha, hb = (s.backend.scroll(Where(must=[Match("kind", "doc")]), with_vectors=["pooled"])[0] for s in (sa, sb))
        np.testing.assert_allclose(ha.vectors["pooled"], hb.vectors["pooled"], atol=1e-5)
    finally:
        sa.close()
        sb.close()


def test_a_sentence_longer_than_a_segment_keeps_its_vector_in_the_segment_it_starts_in(
    tmp_path: Path, minilm: HFTokenEmbedder
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    run_on = " ".join(np.random.default_rng(3).choice(WORDS, 300)).capitalize()  # no sentence end for 300 words
    text = f"{long_text(480)} {run_on}. {long_text(480, seed=8)} And the last sentence has no stop"
    (corpus / "long.txt").write_text(text)
    common = {"device": "cpu", "batch_tokens": 256, "segment_tokens": 60}
    parts = Settings(store_path=tmp_path / "parts", **common)
    whole = Settings(store_path=tmp_path / "whole", **common)
    assert ingest([corpus], parts, embedder=minilm).documents == 1
    assert ingest([corpus], whole, embedder=WholeDocuments(minilm)).documents == 1
    got = []
    for settings in (parts, whole):
        store = open_store(settings.store)
        try:
            [h] = store.headers().values()
            got.append(store.sentence_vectors({(h.doc_id, h.version): list(range(h.n_segments))}))
            spans = [
                r.payload["char_end"] - r.payload["char_start"]
                for r in store.backend.scroll(Where(must=[Match("kind", "segment")]), with_vectors=[])
            ]
        finally:
            store.close()
    va, vb = got
    assert set(va) == set(vb) and len(va) > 50
    assert all(np.allclose(va[k], vb[k], atol=2e-3) for k in va)
    # the run-on sentence covers more than a segment (the segments after the one it starts in are written first),
    # and the document's unpunctuated end is a sentence too
    assert max(k[3] - k[2] for k in va) > 2 * max(spans)
    assert max(k[3] for k in va) == len(text.rstrip())


class ForwardPasses:
    """Counts the forward passes of a real torch model (a hook on it) while the `with` block runs."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.n = model, 0

    def __enter__(self) -> ForwardPasses:
        self._hook = self.model.register_forward_hook(self._count)
        return self

    def _count(self, *_: object) -> None:
        self.n += 1

    def __exit__(self, *exc: object) -> None:
        self._hook.remove()


def test_a_wrapped_model_embeds_long_documents_in_parts_and_a_query_in_one_pass(
    tmp_path: Path, minilm: HFTokenEmbedder
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "long.txt").write_text(long_text(2400))
    common = {"device": "cpu", "batch_tokens": 256, "segment_tokens": 300}
    bare, wrapped_s, serial_s = (Settings(store_path=tmp_path / n, **common) for n in ("bare", "wrapped", "serial"))
    assert ingest([corpus], bare, embedder=minilm).documents == 1
    # wrappers forward the declared capability: the document never reaches embed_documents whole
    counting = CountingEmbedder(minilm)
    assert counting.capabilities.part_wise
    with ForwardPasses(minilm.model) as passes:
        assert ingest([corpus], wrapped_s, embedder=counting).documents == 1
    assert counting.docs == 0 and passes.n > 1
    # the service's wrapper too, taking its lock per part
    serial = SerialEmbedder(CountingEmbedder(minilm))
    assert ingest([corpus], serial_s, embedder=serial).documents == 1
    assert isinstance(serial.inner, CountingEmbedder) and serial.inner.docs == 0
    a = snapshot(bare)
    assert_same(a, snapshot(wrapped_s))
    assert_same(a, snapshot(serial_s))
    assert a["headers"][doc_id(corpus / "long.txt")][2] > 3  # segments written part by part

    # a query's pooled and token vectors (segments are ranked by MaxSim) come from one forward pass
    for model in (counting, serial):
        with Retriever(wrapped_s.updated(rerank_k=0), embedder=model) as r, ForwardPasses(minilm.model) as passes:
            assert r.search("Which mountain has a glacier?").spans
        assert passes.n == 1


def test_parts_report_progress_within_the_file(minilm: HFTokenEmbedder) -> None:
    doc = LoadedDocument(doc_id="big", source="big.txt", title="big", text=long_text(1200), content_hash="0" * 64)
    seen: list[tuple[int, int]] = []
    items = list(long_documents.embed_in_parts(doc, minilm.windows(), 256, 1, None, lambda d, t: seen.append((d, t))))
    total = seen[-1][1]
    assert len(seen) > 3 and seen[-1][0] == total and seen[0][0] < total
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert isinstance(items[-1], long_documents.PartCommit) and items[-1].n_tokens == total


def test_tokenizing_in_pieces_equals_one_call(minilm: HFTokenEmbedder) -> None:
    text = long_text(600) + "\n\nUnicode — naïve café.  Double  spaces and tabs\there."
    ids, offsets = tokenize_long(minilm.windows(), text, chunk_chars=200)
    whole_ids, whole_off = minilm.tokenize(text)
    assert ids.tolist() == whole_ids
    np.testing.assert_array_equal(offsets, whole_off)
