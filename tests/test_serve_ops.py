"""The service under load and over time: the model shared per forward batch (searches first), long uploads
embedded part by part, jobs that tell the truth and outlive the process, and a safe default bind."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from indexer.embedders import HFTokenEmbedder
from indexer.store import open_store
from retriever import RemoteRetriever
from retriever.serve.embedder import ModelScheduler
from schemas.settings import Settings
from tests.test_serve import WORDS, live, poll


def long_text(words: int, seed: int = 7) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(" ".join(rng.choice(WORDS, 12)).capitalize() + "." for _ in range(words // 12))


def test_a_long_upload_through_serve_is_embedded_part_by_part_in_small_forward_batches(
    tmp_path: Path, minilm: HFTokenEmbedder
) -> None:
    # a part is batch_tokens (256) tokens; the upload is ~3000 tokens, so about a dozen parts
    settings = Settings(
        store_path=tmp_path / "store", device="cpu", batch_tokens=256, segment_tokens=300, ingest_batch_tokens=128
    )
    text = long_text(2400)
    with live(settings, minilm) as (url, service), RemoteRetriever(url) as remote:
        with httpx.Client(base_url=url, timeout=60) as http:
            r = http.post("/v1/documents", files=[("files", ("long.txt", text.encode()))])
        assert r.status_code == 202, r.text
        job = remote.wait(r.json()["id"], timeout=300)
        assert job["state"] == "done", job
        serial = service.embedder
        # never embedded whole: part by part, each part in forward batches of at most 128 padded tokens
        assert serial.whole_documents == 0
        assert serial.parts > 3
        assert serial.scheduler.ingest_turns > serial.parts
        n_tokens = job["report"]["tokens"]
        assert job["tokens_done"] == n_tokens > 2000
        assert remote.search("basil and garlic in the oven", top=1).spans[0].doc_id == "long.txt"
    store = open_store(settings.store, read_only=True)
    try:
        assert store.headers()["long.txt"].n_tokens == n_tokens
    finally:
        store.close()


def _take(s: ModelScheduler, ingest: bool, order: list[str], name: str, go: threading.Event) -> None:
    with s.model(ingest):
        order.append(name)
        go.wait(60)


def test_a_waiting_search_goes_before_a_waiting_ingest_batch_and_a_running_search_holds_ingest_back() -> None:
    s = ModelScheduler(ingest_batch_tokens=128)
    order: list[str] = []
    release = threading.Event()
    release.set()
    with s.model(ingest=True):  # an ingest batch is running
        ingest = threading.Thread(target=_take, args=(s, True, order, "ingest", release))
        ingest.start()
        poll(lambda: s._ingest_waiting == 1, what="the next ingest batch to wait")
        search = threading.Thread(target=_take, args=(s, False, order, "search", release))
        search.start()
        poll(lambda: s._searches_waiting == 1, what="the search to wait")
    search.join(60)
    ingest.join(60)
    assert order == ["search", "ingest"]

    # while a search is answered (recall, fetch, scoring: no model), no ingest batch starts
    order.clear()
    with s.searching():
        ingest = threading.Thread(target=_take, args=(s, True, order, "ingest", release))
        ingest.start()
        poll(lambda: s._ingest_waiting == 1, what="the ingest batch to wait")
        with s.model(ingest=False):
            order.append("search")
    ingest.join(60)
    assert order == ["search", "ingest"]


def test_ingest_still_moves_under_a_steady_stream_of_searches() -> None:
    s = ModelScheduler()
    order: list[str] = []
    release = threading.Event()
    release.set()
    first = s.searching()
    first.__enter__()
    ingest = threading.Thread(target=_take, args=(s, True, order, "ingest", release))
    ingest.start()
    poll(lambda: s._ingest_waiting == 1, what="the ingest batch to wait")
    second = s.searching()
    second.__enter__()  # another search starts before the first ends: it would starve ingest forever
    first.__exit__(None, None, None)  # the first ends while ingest waits: ingest is owed a batch
    ingest.join(60)
    assert order == ["ingest"]
    second.__exit__(None, None, None)


@pytest.mark.parametrize("scheduled", [True, False])
def test_the_wrapper_forwards_what_the_model_declares(minilm: HFTokenEmbedder, scheduled: bool) -> None:
    import dataclasses

    from indexer.embedders import DelegatingEmbedder
    from retriever.serve.embedder import SerialEmbedder

    inner: DelegatingEmbedder | HFTokenEmbedder = minilm
    if not scheduled:

        class Unscheduled(DelegatingEmbedder):
            def __init__(self, e: HFTokenEmbedder) -> None:
                super().__init__(e)
                self.capabilities = dataclasses.replace(e.capabilities, scheduled=False)

        inner = Unscheduled(minilm)
    serial = SerialEmbedder(inner, ingest_batch_tokens=128)
    assert serial.capabilities == inner.capabilities
    assert serial.capabilities.part_wise and serial.capabilities.query_tokens
    [q] = serial.encode_queries(["Which mountain has a glacier?"])
    [want] = minilm.encode_queries(["Which mountain has a glacier?"])
    np.testing.assert_array_equal(q.pooled, want.pooled)
    assert q.tokens is not None and want.tokens is not None
    np.testing.assert_array_equal(q.tokens, want.tokens)
    w = serial.windows()
    ids, _ = w.tokenize(long_text(400))
    before = serial.scheduler.ingest_turns
    got = w.embed_windows([np.asarray(ids[:100]), np.asarray(ids[50:150])])
    ref = minilm.windows().embed_windows([np.asarray(ids[:100]), np.asarray(ids[50:150])])
    for (a, b), (c, d) in zip(got, ref, strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    assert serial.scheduler.ingest_turns > before and serial.parts == 1


# --- safe by default -----------------------------------------------------------------------------------
def test_serve_refuses_an_open_api_on_a_non_loopback_host_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from retriever import cli

    store = tmp_path / "store"
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "0", "--store", str(store)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "refusing to serve on 0.0.0.0 without an API key" in line
    assert "CHUNKLESS_SERVICE_API_KEY" in line and "--insecure" in line
    assert not store.exists(), "refused before the store is opened or the model loaded"


def test_loopback_a_key_or_insecure_lets_serve_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from retriever.cli.serve import check_exposure, is_loopback
    from schemas.errors import SettingsError
    from schemas.settings import ServeSettings

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("")
    check_exposure(ServeSettings(host="127.0.0.1"), insecure=False)
    check_exposure(ServeSettings(host="0.0.0.0", service_api_key="k"), insecure=False)
    check_exposure(ServeSettings(host="0.0.0.0"), insecure=True)
    with pytest.raises(SettingsError, match="without an API key"):
        check_exposure(ServeSettings(host="0.0.0.0", service_api_key=""), insecure=False)


# --- jobs that tell the truth and survive restarts -------------------------------------------------------
BROKEN_PDF = b"%PDF-1.7\n" + bytes(range(256)) * 8


def _upload(url: str, files: list[tuple[str, bytes]]) -> str:
    with httpx.Client(base_url=url, timeout=60) as http:
        r = http.post("/v1/documents", files=[("files", f) for f in files])
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def test_a_job_whose_only_file_failed_is_failed_and_each_file_has_its_result(
    tmp_path: Path, minilm: HFTokenEmbedder
) -> None:
    settings = Settings(store_path=tmp_path / "store", device="cpu")
    notes = ("notes.txt", b"Pistons move when steam expands in the cylinder.")
    with live(settings, minilm) as (url, _), RemoteRetriever(url) as remote:
        only = remote.wait(_upload(url, [("broken.pdf", BROKEN_PDF)]), timeout=120)
        assert only["state"] == "failed" and only["documents_done"] == 1 and only["report"]["documents"] == 0
        [f] = only["files"]
        assert f["input"] == "broken.pdf" and f["state"] == "failed" and f["reason"]
        assert only["error"].startswith("broken.pdf: ")

        mixed = remote.wait(_upload(url, [("broken.pdf", BROKEN_PDF), notes]), timeout=120)
        assert mixed["state"] == "partial", mixed
        assert [(f["input"], f["state"]) for f in mixed["files"]] == [("broken.pdf", "failed"), ("notes.txt", "stored")]
        assert mixed["files"][1]["tokens"] == mixed["tokens_done"] > 0
        assert "1 of 2 files failed" in mixed["error"]

        again = remote.wait(_upload(url, [notes]), timeout=120)
        assert again["state"] == "done" and again["error"] is None
        assert [f["state"] for f in again["files"]] == ["unchanged"]
        ids = [only["id"], mixed["id"], again["id"]]

    # a restarted service lists them, with what they said before
    with live(settings, minilm) as (url, _), RemoteRetriever(url) as remote:
        listed = remote.jobs()
        assert [j["id"] for j in listed] == ids[::-1]
        assert remote.job(mixed["id"]) == mixed
    assert (settings.store.store_path / "chunkless.jobs.jsonl").is_file()


def test_a_job_left_running_by_a_stopped_service_reads_as_interrupted(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    from retriever.serve.jobs import FileJobLog
    from retriever.serve.models import FileResult, Job

    settings = Settings(store_path=tmp_path / "store", device="cpu")
    settings.store.store_path.mkdir()
    left = Job(id="a" * 32, state="running", inputs=["x.txt"], files=[FileResult(input="x.txt", doc_id="x.txt")])
    FileJobLog(settings.store.store_path / "chunkless.jobs.jsonl").save(left)
    with live(settings, minilm) as (url, _), RemoteRetriever(url) as remote:
        job = remote.job("a" * 32)
        assert job["state"] == "interrupted" and "upload again" in job["error"]


class _Gate:
    """A model's windows that stop before their third part until the test lets them go on."""

    def __init__(self, inner: object, gate: threading.Event, reached: threading.Event) -> None:
        self._inner, self._gate, self._reached = inner, gate, reached
        self.dim, self.content, self.stride = inner.dim, inner.content, inner.stride  # type: ignore[attr-defined]
        self._calls = 0

    def tokenize(self, text: str) -> tuple[list[int], np.ndarray]:
        return self._inner.tokenize(text)  # type: ignore[attr-defined,no-any-return]

    def embed_windows(self, windows: object) -> object:
        self._calls += 1
        if self._calls == 3:
            self._reached.set()
            assert self._gate.wait(120), "the test never let the part go on"
        return self._inner.embed_windows(windows)  # type: ignore[attr-defined]


def test_tokens_done_moves_while_one_large_file_is_embedded(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    from indexer.embedders import DelegatingEmbedder, WindowEmbedder

    gate, reached = threading.Event(), threading.Event()

    class Gated(DelegatingEmbedder):
        def windows(self) -> WindowEmbedder:
            return _Gate(self.inner.windows(), gate, reached)  # type: ignore[return-value]

    settings = Settings(store_path=tmp_path / "store", device="cpu", batch_tokens=256, segment_tokens=300)
    with live(settings, Gated(minilm)) as (url, _), RemoteRetriever(url) as remote:  # type: ignore[arg-type]
        job_id = _upload(url, [("long.txt", long_text(2400).encode())])
        assert reached.wait(120), "the upload reached its third part"
        try:
            mid = remote.job(job_id)
        finally:
            gate.set()
        assert mid["state"] == "running" and mid["documents_done"] == 0
        assert mid["files"][0]["state"] == "pending"
        assert 0 < mid["tokens_done"] < 1000, "two parts of ~256 tokens embedded, the file not yet stored"
        done = remote.wait(job_id, timeout=300)
        assert done["state"] == "done" and done["tokens_done"] == done["report"]["tokens"] > 2000


def test_jobs_on_a_qdrant_backend_are_kept_in_a_collection_replicas_share(tmp_path: Path) -> None:
    from qdrant_client import QdrantClient

    from retriever.serve.jobs import QdrantJobLog, job_log
    from retriever.serve.models import FileResult, Job

    client = QdrantClient(path=str(tmp_path / "q"))
    record = QdrantJobLog(client, "chunkless_jobs")
    a = Job(id="a" * 32, inputs=["x.txt"], files=[FileResult(input="x.txt", doc_id="x.txt")], created_at=1.0)
    b = Job(id="b" * 32, inputs=["y.txt"], created_at=2.0)
    record.save(a)
    record.save(b)
    record.save(a.model_copy(update={"state": "partial", "error": "x.txt: broken"}))
    client.close()

    again = QdrantJobLog(QdrantClient(path=str(tmp_path / "q")), "chunkless_jobs")  # another replica, or a restart
    assert [j.id for j in again.load()] == [a.id, b.id]
    got = again.get(a.id)
    assert got is not None and got.state == "partial" and got.files[0].doc_id == "x.txt"
    assert again.get("c" * 32) is None and again.shared
    again.client.close()

    # the service's choice: a collection beside the store's on a server, a file beside the embedded store
    assert job_log(Settings(url=f"local:{tmp_path / 'store'}")).shared
    assert not job_log(Settings(store_path=tmp_path / "edge")).shared


def test_a_service_on_a_qdrant_backend_lists_its_jobs_after_a_restart(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    settings = Settings(url=f"local:{tmp_path / 'q'}", device="cpu")
    with live(settings, minilm) as (url, _), RemoteRetriever(url) as remote:
        job = remote.wait(_upload(url, [("notes.txt", b"Pistons move when steam expands.")]), timeout=120)
        assert job["state"] == "done"
    with live(settings, minilm) as (url, _), RemoteRetriever(url) as remote:
        assert [j["id"] for j in remote.jobs()] == [job["id"]]
        assert remote.job(job["id"])["files"] == job["files"]
