"""`chunkless serve`: a real uvicorn server on an ephemeral loopback port, a real Edge store, the packaged MiniLM."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

from indexer.embedders import HFTokenEmbedder
from indexer.ingest import ingest
from indexer.store import Match, Where, open_store
from retriever import RemoteRetriever, Retriever, cli
from retriever.serve.app import create_app
from retriever.serve.batcher import MicroBatcher
from retriever.serve.service import Service
from schemas.errors import QueryError, ServerError, ShuttingDownError
from schemas.settings import Settings, _warn_deprecated_key_name

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo" / "corpus"
QUERY = "How does a steam engine turn heat into mechanical work?"
WORDS = ["basil", "oven", "dough", "simmer", "garlic", "butter", "whisk", "pepper", "saucepan", "onion", "flour"]


def poll(cond: Callable[[], bool], timeout: float = 120.0, what: str = "condition") -> None:
    """Wait on state, bounded: True from `cond` or a failure naming `what`."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        threading.Event().wait(0.02)


def cooking_corpus(root: Path, n: int, words: int) -> list[Path]:
    """n deterministic text files about cooking: nothing a steam-engine query should prefer."""
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        text = " ".join(" ".join(rng.choice(WORDS, 10)).capitalize() + "." for _ in range(words // 10))
        p = root / f"kitchen{i:02d}.txt"
        p.write_text(f"Kitchen notes {i}. " + text)
        out.append(p)
    return out


@contextmanager
def live(settings: Settings, embedder: HFTokenEmbedder | None) -> Iterator[tuple[str, Service]]:
    """A real uvicorn server over a fresh Service, in a thread, on an ephemeral loopback port."""
    service = Service(settings, embedder)
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    poll(lambda: server.started, what="uvicorn to start")
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", service
    finally:
        server.should_exit = True
        thread.join(60)
        assert service.closed, "the app's shutdown closes the service (store handle released)"


def same_spans(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """The same spans in the same order; scores equal up to float noise (a batch pads queries together)."""
    assert [{k: v for k, v in g.items() if k != "score"} for g in got] == [
        {k: v for k, v in w.items() if k != "score"} for w in want
    ]
    np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], atol=1e-5)


def local_json(settings: Settings, embedder: HFTokenEmbedder, query: str) -> dict[str, Any]:
    """What `chunkless search --json` prints for this store and query."""
    with Retriever(settings, embedder=embedder) as r:
        resp = r.search(query)
    return {
        "query": resp.query,
        "confidence": resp.confidence,
        "abstained": resp.abstained,
        "threshold": resp.threshold,
        "spans": [s.model_dump() for s in resp.spans],
    }


def test_search_matches_cli_and_is_answered_during_an_ingest_job(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    settings = Settings(store_path=tmp_path / "store", device="cpu", batch_wait_ms=20)
    ingest([DEMO], settings, embedder=minilm)
    expected = local_json(settings, minilm, QUERY)
    assert expected["spans"], "the demo corpus answers the steam-engine query"
    other = "Who were the Normans?"
    expected_other = local_json(settings, minilm, other)

    with live(settings, minilm) as (url, _), httpx.Client(base_url=url, timeout=120) as http:
        r = http.post("/v1/search", json={"query": QUERY})
        assert r.status_code == 200
        body = r.json()
        assert {k: body[k] for k in expected} == expected
        assert body["timings_ms"]["total"] > 0

        # the CLI through the service prints exactly what it prints from the store
        buf = io.StringIO()
        with redirect_stdout(buf):
            assert cli.main(["search", QUERY, "--json", "--server", url]) == 0
        assert json.loads(buf.getvalue()) == expected

        # concurrent searches, gathered into micro-batches, each get their own answer
        queries = [QUERY, other] * 4
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda q: http.post("/v1/search", json={"query": q}).json(), queries))
        for q, a in zip(queries, answers, strict=True):
            same_spans(a["spans"], (expected if q == QUERY else expected_other)["spans"])

        # the SDK: same signatures and return types as Retriever
        with RemoteRetriever(url) as remote:
            batch = remote.search_batch([QUERY, other])
            same_spans([s.model_dump() for s in batch[0].spans], expected["spans"])
            same_spans([s.model_dump() for s in batch[1].spans], expected_other["spans"])
            assert remote.search(QUERY).spans[0].text == expected["spans"][0]["text"]

            # an ingest job of unrelated documents; searches keep being answered, unchanged, while it writes
            files = cooking_corpus(tmp_path / "kitchen", n=5, words=1000)
            job = remote.upload([(p, p.name) for p in files])
            assert job["state"] == "queued"
            during = 0
            poll(lambda: remote.job(job["id"])["state"] != "queued", what="the job to start")
            while remote.job(job["id"])["state"] == "running":
                got = http.post("/v1/search", json={"query": QUERY}).json()
                same_spans(got["spans"][:1], expected["spans"][:1])
                if remote.job(job["id"])["state"] == "running":
                    during += 1
            assert during >= 1, "at least one search was answered while the job was writing"
            done = remote.wait(job["id"], timeout=300)
            assert done["state"] == "done" and done["report"]["documents"] == 5, done
            assert done["report"]["tokens"] == done["tokens_done"] > 0

            # the new documents are visible once written
            hit = remote.search("simmer the garlic and butter in a saucepan", filter={"doc_id": "kitchen03.txt"})
            assert hit.spans and hit.spans[0].doc_id == "kitchen03.txt"
            assert remote.stats()["documents"] == 3 + 5
            assert remote.documents(limit=2)["total"] == 8

        metrics = http.get("/metrics").text
        assert 'chunkless_requests_total{method="POST",route="/v1/search",status="200"}' in metrics
        assert "chunkless_search_batch_size_count" in metrics
        assert "chunkless_ingested_tokens_total" in metrics and "chunkless_cache_bytes" in metrics


# the service's API: every route the routers mount, and nothing else
ROUTES = {
    ("POST", "/v1/search"),
    ("POST", "/v1/search/batch"),
    ("POST", "/v1/documents"),
    ("GET", "/v1/documents"),
    ("DELETE", "/v1/documents/{doc_id}"),
    ("GET", "/v1/stats"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{job_id}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
}


def test_auth_on_and_off(tmp_path: Path, minilm: HFTokenEmbedder, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(store_path=tmp_path / "store", device="cpu", service_api_key="s3cret")
    ingest([DEMO], settings, embedder=minilm)
    with live(settings, minilm) as (url, _), httpx.Client(base_url=url, timeout=60) as http:
        assert http.get("/healthz").status_code == 200  # open: a liveness probe has no key
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"api-key": "wrong"}, {"Authorization": "s3cret"}):
            r = http.post("/v1/search", json={"query": QUERY}, headers=headers)
            assert r.status_code == 401 and r.json()["field"] == "authorization"
            assert http.get("/readyz", headers=headers).status_code == 401
        # a rejected upload costs nothing: no job, nothing stored
        r = http.post("/v1/documents", files=[("files", ("x.txt", b"hello there " * 1000))])
        assert r.status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert http.get("/v1/stats", headers=good).json()["documents"] == 3
        assert http.post("/v1/search", json={"query": QUERY}, headers={"api-key": "s3cret"}).json()["spans"]
        assert 'route="unmatched",status="401"' in http.get("/metrics", headers=good).text
        paths = http.get("/openapi.json", headers=good).json()["paths"]
        assert {(m.upper(), p) for p, ms in paths.items() for m in ms} == ROUTES
        with RemoteRetriever(url) as anonymous, pytest.raises(ServerError, match="API key"):
            anonymous.search(QUERY)
        with RemoteRetriever(url, api_key="s3cret") as keyed:
            assert keyed.search(QUERY).spans

        # the CLI's --server calls send the service's key, from the new variable or the deprecated one
        for variable in ("CHUNKLESS_SERVICE_API_KEY", "CHUNKLESS_API_KEY"):
            with monkeypatch.context() as env:
                env.setenv(variable, "s3cret")
                buf = io.StringIO()
                with redirect_stdout(buf):
                    assert cli.main(["stats", "--json", "--server", url]) == 0
                assert json.loads(buf.getvalue())["documents"] == 3
    open_settings = settings.updated(service_api_key=None)
    with live(open_settings, minilm) as (url, _), httpx.Client(base_url=url, timeout=60) as http:
        assert http.get("/v1/stats").status_code == 200
        assert http.post("/v1/search", json={"query": QUERY}).status_code == 200


def test_the_service_key_and_the_qdrant_key_are_separate_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHUNKLESS_SERVICE_API_KEY", "service")
    monkeypatch.setenv("CHUNKLESS_QDRANT_API_KEY", "qdrant")
    s = Settings()
    assert s.serve.service_api_key is not None and s.serve.service_api_key.get_secret_value() == "service"
    assert s.store.qdrant_api_key is not None and s.store.qdrant_api_key.get_secret_value() == "qdrant"
    monkeypatch.delenv("CHUNKLESS_QDRANT_API_KEY")
    assert Settings().store.qdrant_api_key is None, "the service's key is never sent to Qdrant"


def test_the_deprecated_key_variable_is_read_as_the_service_key_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _warn_deprecated_key_name.cache_clear()
    monkeypatch.setenv("CHUNKLESS_API_KEY", "old")
    with caplog.at_level(logging.WARNING, logger="schemas.settings"):
        s = Settings()
        assert s.serve.service_api_key is not None and s.serve.service_api_key.get_secret_value() == "old"
        assert s.store.qdrant_api_key is None, "no longer the Qdrant key's fallback"
        assert s.updated(top=3).serve.service_api_key == s.serve.service_api_key
        Settings()
    [line] = [r.getMessage() for r in caplog.records]
    assert "CHUNKLESS_API_KEY is deprecated" in line and "CHUNKLESS_SERVICE_API_KEY" in line and "\n" not in line

    # the new variable wins, and the old one is then not used (nothing to warn about)
    _warn_deprecated_key_name.cache_clear()
    caplog.clear()
    monkeypatch.setenv("CHUNKLESS_SERVICE_API_KEY", "new")
    s = Settings()
    assert s.serve.service_api_key is not None and s.serve.service_api_key.get_secret_value() == "new"
    assert Settings(service_api_key=None).serve.service_api_key is None, "an explicit value beats both variables"
    assert not caplog.records


BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int, str]] = [
    (
        "POST",
        "/v1/search",
        {"content": b'{"query": "steam', "headers": {"content-type": "application/json"}},
        400,
        "body",
    ),
    ("POST", "/v1/search", {"json": {"query": ""}}, 422, "query"),
    ("POST", "/v1/search", {"json": {"query": "   "}}, 422, "query"),
    ("POST", "/v1/search", {"json": {"query": "steam " * 100}}, 422, "query"),
    ("POST", "/v1/search", {"json": {"query": 5}}, 422, "query"),
    ("POST", "/v1/search", {"json": {}}, 422, "query"),
    ("POST", "/v1/search", {"json": {"query": "steam", "top": "many"}}, 422, "top"),
    ("POST", "/v1/search", {"json": {"query": "steam", "top": 0}}, 422, "top"),
    ("POST", "/v1/search", {"json": {"query": "steam", "filter": {"color": "red"}}}, 422, "filter.color"),
    ("POST", "/v1/search", {"json": {"query": "steam", "filter": {"doc_id": 3}}}, 422, "filter.doc_id.str"),
    ("POST", "/v1/search", {"json": {"query": "steam", "limit": 3}}, 422, "limit"),
    ("POST", "/v1/search", {"json": ["steam"]}, 422, "body"),
    ("POST", "/v1/search/batch", {"json": {"queries": []}}, 422, "queries"),
    ("POST", "/v1/search/batch", {"json": {"queries": ["steam", ""]}}, 422, "queries.1"),
    ("POST", "/v1/documents", {"json": {"files": []}}, 415, "body"),
    ("POST", "/v1/documents", {"files": [("other", ("a.txt", b"text"))]}, 422, "other"),
    ("POST", "/v1/documents", {"files": [("doc_id", (None, "a.txt"))]}, 422, "files"),
    ("POST", "/v1/documents", {"data": {"doc_id": "a.txt"}}, 415, "body"),
    ("POST", "/v1/documents", {"files": [("files", ("a.exe", b"MZ"))]}, 422, "files.0"),
    ("POST", "/v1/documents", {"files": [("files", ("a.txt", b"x"))], "data": {"doc_id": "../a.txt"}}, 422, "doc_id.0"),
    (
        "POST",
        "/v1/documents",
        {"files": [("files", ("a.txt", b"x"))], "data": {"doc_id": "/etc/a.txt"}},
        422,
        "doc_id.0",
    ),
    (
        "POST",
        "/v1/documents",
        {"files": [("files", ("a.txt", b"x")), ("files", ("b.txt", b"y"))], "data": {"doc_id": "a.txt"}},
        422,
        "doc_id",
    ),
    ("POST", "/v1/documents", {"files": [("files", ("a.txt", b"x")), ("files", ("sub/a.txt", b"y"))]}, 422, "files"),
    ("POST", "/v1/documents", {"files": [("files", ("big.txt", b"x" * (3 << 20)))]}, 413, "files"),
    ("POST", "/v1/documents", {"files": [("path", (None, "/etc"))]}, 403, "path"),
    ("DELETE", "/v1/documents/no-such-doc.txt", {}, 404, "doc_id"),
    ("DELETE", "/v1/documents/..%2Fforce.txt", {}, 422, "doc_id"),
    ("GET", "/v1/jobs/12345", {}, 404, "job_id"),
    ("GET", "/v1/jobs/" + "a" * 32, {}, 404, "job_id"),
    ("GET", "/v1/documents?limit=0", {}, 422, "limit"),
    ("GET", "/v1/documents?offset=x", {}, 422, "offset"),
]


def test_each_bad_request_is_a_4xx_naming_the_field_and_the_store_is_untouched(
    tmp_path: Path, minilm: HFTokenEmbedder
) -> None:
    settings = Settings(store_path=tmp_path / "store", device="cpu", max_query_chars=200, max_upload_mb=2)
    ingest([DEMO], settings, embedder=minilm)
    with live(settings, minilm) as (url, service), httpx.Client(base_url=url, timeout=60) as http:
        before = http.get("/v1/documents").json()
        wrong = []
        for method, path, kw, status, field in BAD_REQUESTS:
            r = http.request(method, path, **kw)
            body = r.json()
            if (r.status_code, body.get("field")) != (status, field) or not body.get("detail"):
                wrong.append((method, path, str(kw)[:80], r.status_code, body))
        assert not wrong, "\n".join(map(str, wrong))
        # an upload without Content-Length (chunked) is refused before its body is read
        r = http.post(
            "/v1/documents", content=iter([b"--x--\r\n"]), headers={"content-type": "multipart/form-data; boundary=x"}
        )
        assert (r.status_code, r.json()["field"]) == (411, "content-length")
        # refusals are counted under their route, the upload limit's included (it is the upload's dependency)
        metrics = http.get("/metrics").text
        assert 'route="/v1/documents",status="413"' in metrics
        assert 'route="/v1/documents/{doc_id:path}",status="404"' in metrics
        assert http.get("/v1/documents").json() == before
        assert service.jobs.depth() == 0
        assert not list(service.spool.iterdir()), "refused uploads leave nothing in the spool"
        # an upload's own file name is never a path: only its last part names the document
        r = http.post("/v1/documents", files=[("files", ("../../escape.txt", b"Boilers make steam."))])
        assert r.status_code == 202
        with RemoteRetriever(url) as remote:
            assert remote.wait(r.json()["id"], timeout=120)["state"] == "done"
            assert "escape.txt" in {d["doc_id"] for d in remote.documents()["documents"]}
            assert not (tmp_path / "escape.txt").exists() and not (tmp_path.parent / "escape.txt").exists()
            with pytest.raises(QueryError, match="query"):
                remote.search("")
            assert remote.delete("escape.txt") and not remote.delete("escape.txt")
    assert not (tmp_path / "store.uploads" / "escape.txt").exists()


def test_server_side_ingest_only_under_the_configured_roots(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    root = tmp_path / "shared"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.md").write_text("# Boilers\n\nA boiler turns water into steam under pressure.")
    outside = tmp_path / "private.txt"
    outside.write_text("secret")
    settings = Settings(store_path=tmp_path / "store", device="cpu", ingest_roots=[root])
    with live(settings, minilm) as (url, service), RemoteRetriever(url) as remote:
        for bad in (str(outside), str(root / ".." / "private.txt")):
            with pytest.raises(QueryError, match="INGEST_ROOTS"):
                remote.ingest_paths([bad])
        job = remote.wait(remote.ingest_paths([str(root / "docs")])["id"], timeout=120)
        assert job["state"] == "done" and job["report"]["documents"] == 1
        assert [d["doc_id"] for d in remote.documents()["documents"]] == ["docs/a.md"]

        # a stopping service refuses new jobs with 503 (ShuttingDownError), which the client reads as a ServerError
        service.jobs.stop()
        with httpx.Client(base_url=url, timeout=60) as http:
            r = http.post("/v1/documents", files=[("path", (None, str(root / "docs")))])
            assert (r.status_code, r.json()["field"]) == (503, None) and "shutting down" in r.json()["detail"]
            assert http.get("/readyz").status_code == 503
        with pytest.raises(ServerError, match="503"):
            remote.ingest_paths([str(root / "docs")])


def test_the_service_never_imports_the_cli() -> None:
    # arrows go one way: the CLI's `serve` imports the service, never the reverse (no import cycle)
    code = (
        "import sys, retriever.serve.app, retriever.serve.client; "
        "print(sorted(m for m in sys.modules if m in ('retriever.cli', 'retriever.serve.cli') "
        "or m.startswith('retriever.cli.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_searches_still_queued_when_the_service_stops_are_refused_as_shutting_down() -> None:
    async def run() -> None:
        batcher = MicroBatcher(lambda queries, top, flt: [], wait_ms=0, max_batch=4)  # never started
        pending = asyncio.ensure_future(batcher.search("steam", None, None))
        await asyncio.sleep(0)  # one turn of the loop: the query is queued
        await batcher.stop()
        with pytest.raises(ShuttingDownError, match="shutting down") as e:
            await pending
        assert e.value.http_status == 503

    asyncio.run(run())


def test_a_corrupt_pdf_fails_inside_the_job_and_the_rest_goes_on(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    import pymupdf

    pdf = pymupdf.open()
    page = pdf.new_page()
    page.insert_text((72, 72), "The regulator keeps the locomotive boiler pressure steady.", fontsize=11)
    good_pdf = pdf.tobytes()
    settings = Settings(store_path=tmp_path / "store", device="cpu")
    with live(settings, minilm) as (url, _), httpx.Client(base_url=url, timeout=60) as http:
        r = http.post(
            "/v1/documents",
            files=[
                ("files", ("good.pdf", good_pdf)),
                ("files", ("broken.pdf", b"%PDF-1.7\n" + os.urandom(2000))),
                ("files", ("notes.txt", b"Pistons move when steam expands.")),
            ],
        )
        assert r.status_code == 202 and r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
        with RemoteRetriever(url) as remote:
            job = remote.wait(r.json()["id"], timeout=120)
            assert job["state"] == "partial"  # one of three files failed
            assert job["report"]["documents"] == 2
            [failure] = job["report"]["failures"]
            assert failure["path"].endswith("broken.pdf") and failure["reason"]
            hit = remote.search("What keeps the boiler pressure steady?", top=1)
            assert hit.spans[0].doc_id == "good.pdf" and hit.spans[0].pages == [1]


# --- a real `chunkless serve` process ----------------------------------------------------------------
def start_server(store: Path, extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """`python -m retriever.cli serve --port 0` in a subprocess; its URL read from the line it prints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUNKLESS_")}
    # one small file per ingest call and per forward pass: a job runs long enough to be stopped part-way
    env |= {"CHUNKLESS_BATCH_TOKENS": "256", "CHUNKLESS_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", **(extra_env or {})}
    cmd = [sys.executable, "-m", "retriever.cli", "serve", "--port", "0", "--store", str(store)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 180
    while True:
        line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
        if "listening on " in line:
            url = line.split("listening on ")[1].split()[0]
            break
    with httpx.Client(base_url=url) as http:
        poll(lambda: _ready(http), what="readyz")
    return proc, url


def _ready(http: httpx.Client) -> bool:
    try:
        return http.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


def store_state(settings: Settings) -> dict[str, Any]:
    """Headers (minus the server-side upload path) and segment ids: what a run leaves in the store."""
    store = open_store(settings.store)
    try:
        heads = store.headers()
        segs = store.backend.scroll(Where(must=[Match("kind", "segment")]), with_vectors=[])
        return {
            "headers": {d: (h.version, h.n_tokens, h.n_segments) for d, h in heads.items()},
            "segment_ids": sorted(r.id for r in segs),
        }
    finally:
        store.close()


def test_kill_9_during_an_ingest_job_then_restart_and_upload_again_gives_the_clean_store(
    tmp_path: Path, minilm: HFTokenEmbedder
) -> None:
    files = cooking_corpus(tmp_path / "kitchen", n=8, words=600)
    clean = Settings(store_path=tmp_path / "clean", device="cpu")
    ingest(files, clean, embedder=minilm, id_from=files[0].parent)  # one uninterrupted run, same ids
    store = tmp_path / "store"

    proc, url = start_server(store)
    try:
        with RemoteRetriever(url) as remote:
            job = remote.upload([(p, p.name) for p in files])
            poll(lambda: remote.job(job["id"])["documents_done"] >= 2, what="two documents stored")
            assert remote.job(job["id"])["state"] == "running", "killed part-way, not after the job"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()

    proc, url = start_server(store)
    try:
        with RemoteRetriever(url) as remote:
            job = remote.wait(remote.upload([(p, p.name) for p in files])["id"], timeout=300)
            assert job["state"] == "done", job
            rep = job["report"]
            assert rep["documents"] + rep["skipped_unchanged"] == 8 and rep["skipped_unchanged"] >= 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
        proc.wait()
    assert store_state(Settings(store_path=store, device="cpu")) == store_state(clean)


def test_sigterm_finishes_the_document_being_written_and_stops_cleanly(tmp_path: Path) -> None:
    files = cooking_corpus(tmp_path / "kitchen", n=8, words=600)
    store = tmp_path / "store"
    proc, url = start_server(store)
    try:
        with RemoteRetriever(url) as remote:
            job = remote.upload([(p, p.name) for p in files])
            poll(lambda: remote.job(job["id"])["documents_done"] >= 1, what="a document stored")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
        proc.wait()
    settings = Settings(store_path=store, device="cpu")
    s = open_store(settings.store)  # the lock was released
    try:
        assert s.remove_orphans() == 0, "nothing half-written: the document in progress was finished"
        heads = s.headers()
        assert 1 <= len(heads) < 8
        assert all(h.n_tokens > 0 for h in heads.values())
    finally:
        s.close()
