"""Reads of an embedded store that another process holds: answered by the holder (issue 21).

Real parts throughout: a real ingest holding a real Edge store, the packaged MiniLM, `chunkless search`,
`list` and `stats` in fresh processes over real loopback HTTP. The ingest is held mid-run by its own
failure callback (an empty file fails in the loader thread), never by a sleep.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from indexer.embedders import HFTokenEmbedder
from indexer.holder import Advert, advert_path, read_advert, write_advert
from indexer.ingest import ingest
from retriever.cli import main, remote
from retriever.serve.client import RemoteRetriever
from retriever.serve.holder import ReadEndpoint
from schemas.errors import StoreBusyError
from schemas.models import IngestFailure, IngestReport
from schemas.settings import Settings
from tests.support import REPO

BOUND_S = 120.0  # the most any wait below may take before the test fails (never a pause)


HEAVY = ("torch", "transformers", "retriever.search", "indexer.store")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`chunkless ARGS` in a fresh process; its last stderr line names the heavy modules it imported."""
    code = (
        "import sys; from retriever.cli import main; rc = main(sys.argv[1:]); "
        f"print('heavy:', [m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr); sys.exit(rc)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=BOUND_S, cwd=REPO, env=env
    )


def _corpus(root: Path) -> Path:
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "a_bread.txt").write_text(
        "Yeast makes the dough rise. Bread is baked in a hot oven for forty minutes until the crust is brown."
    )
    (corpus / "b_tides.txt").write_text("The moon's gravity pulls the oceans and causes the tides twice a day.")
    (corpus / "c_empty.txt").write_text("")  # fails in the loader: the run waits in its failure callback
    (corpus / "d_volcano.txt").write_text("Lava flows from the volcano's crater when magma rises through the crust.")
    return corpus


def _documents(url: str, token: str) -> set[str]:
    with RemoteRetriever(url, token) as c:
        return {d["doc_id"] for d in c.documents()["documents"]}


def test_a_search_during_a_running_ingest_is_answered_from_committed_documents(
    tmp_path: Path, minilm: HFTokenEmbedder
) -> None:
    corpus = _corpus(tmp_path)
    settings = Settings(store_path=tmp_path / "store", device="cpu")
    failed, release = threading.Event(), threading.Event()

    def hold(f: IngestFailure) -> None:
        failed.set()
        release.wait(BOUND_S)

    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["report"] = ingest(
                [corpus], settings, embedder=minilm, on_failure=hold, id_from=tmp_path,
                reads=ReadEndpoint(settings, role="ingest"),
            )  # fmt: skip
        except BaseException as e:  # the test thread reports it
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    try:
        assert failed.wait(BOUND_S), "the ingest never reached the empty file"
        advert = read_advert(settings.store.collection_path)
        assert advert is not None and advert.pid == os.getpid() and advert.role == "ingest"
        assert advert_path(settings.store.collection_path).stat().st_mode & 0o077 == 0  # the token is private
        # the loader waits at the empty file; what it read before is embedded and committed meanwhile
        committed = {"corpus/a_bread.txt", "corpus/b_tides.txt"}
        deadline = time.monotonic() + BOUND_S
        while (seen := _documents(advert.url, advert.token)) != committed:
            assert seen <= committed, seen  # never the document behind the empty file, never a half one
            assert time.monotonic() < deadline, f"committed documents never became visible: {seen}"

        store = str(tmp_path / "store")
        found = _cli("search", "What makes the dough rise?", "--store", store, "--json", "--top", "1")
        assert found.returncode == 0, found.stderr
        spans = json.loads(found.stdout)["spans"]
        assert spans[0]["doc_id"] == "corpus/a_bread.txt" and "Yeast" in spans[0]["text"]
        assert "held by a running chunkless ingest" in found.stderr and "Traceback" not in found.stderr
        assert "heavy: []" in found.stderr  # the terminal loaded no model, no torch, not the store

        listed = _cli("list", "--store", store, "--json")
        assert listed.returncode == 0, listed.stderr
        assert {d["doc_id"] for d in json.loads(listed.stdout)["documents"]} == committed
        stats = _cli("stats", "--store", store, "--json")
        assert stats.returncode == 0, stats.stderr
        assert json.loads(stats.stdout)["documents"] == 2
    finally:
        release.set()
        t.join(BOUND_S)
    assert "error" not in out, out.get("error")
    report: IngestReport = out["report"]
    assert report.documents == 3 and [f.path for f in report.failures] == [str((corpus / "c_empty.txt").resolve())]
    # the advert goes with the holder: the next reader opens the store itself
    assert read_advert(settings.store.collection_path) is None
    assert not advert_path(settings.store.collection_path).exists()
    after = _cli("list", "--store", str(tmp_path / "store"), "--json")
    assert after.returncode == 0 and "held by" not in after.stderr and "'indexer.store'" in after.stderr
    assert len(json.loads(after.stdout)["documents"]) == 3


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


def test_a_stale_advert_never_hangs_a_reader(
    tmp_path: Path, minilm: HFTokenEmbedder, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "bread.txt").write_text("Yeast makes the dough rise. Bread is baked in a hot oven for forty minutes.")
    settings = Settings(store_path=tmp_path / "store", device="cpu")
    ingest([corpus], settings, embedder=minilm, id_from=tmp_path)
    store, folder = str(tmp_path / "store"), settings.store.collection_path

    # a holder killed with SIGKILL: its advert stays behind, its process is gone
    code = (
        "import sys\n"
        "from indexer.store import open_store\n"
        "from retriever.serve.holder import ReadEndpoint\n"
        "from retriever.serve.service import ReadService\n"
        "from schemas.settings import Settings\n"
        f"s = Settings(store_path={store!r}, device='cpu')\n"
        "st = open_store(s.store)\n"
        "ep = ReadEndpoint(s, role='ingest')\n"
        "ep.start_over(ReadService(ep.settings, st, lambda: None))\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        capsys.readouterr()
        assert main(["list", "--store", store, "--json"]) == 0  # through the holder, which has the store
        captured = capsys.readouterr()
        assert "held by a running chunkless ingest" in captured.err
        assert [d["doc_id"] for d in json.loads(captured.out)["documents"]] == ["corpus/bread.txt"]
        # stopped (Ctrl-Z): it still holds the store and accepts connections, but never answers
        monkeypatch.setattr(remote, "PROBE_S", 0.5)
        holder.send_signal(signal.SIGSTOP)
        try:
            assert main(["list", "--store", store]) == StoreBusyError.exit_code
        finally:
            holder.send_signal(signal.SIGCONT)
        err = capsys.readouterr().err
        assert f"(pid {holder.pid}) that did not answer within 0.5 s" in err and f"kill -CONT {holder.pid}" in err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(BOUND_S)
    assert advert_path(folder).exists()  # left behind
    assert main(["list", "--store", store, "--json"]) == 0  # the store is opened here
    captured = capsys.readouterr()
    assert "held by" not in captured.err and len(json.loads(captured.out)["documents"]) == 1

    # a live pid (a reused one) whose endpoint refuses: one refused connection, then the store is opened here
    write_advert(folder, Advert(pid=os.getpid(), url=f"http://127.0.0.1:{_free_port()}", token="t", role="ingest",
                                started_at=0.0))  # fmt: skip
    assert main(["search", "What makes the dough rise?", "--store", store, "--json", "--top", "1"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["spans"][0]["doc_id"] == "corpus/bread.txt"
    assert "Traceback" not in captured.err


def test_a_search_on_a_store_a_service_holds_asks_the_service(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    from retriever.serve.service import Service

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "tides.txt").write_text("The moon's gravity pulls the oceans and causes the tides twice a day.")
    settings = Settings(store_path=tmp_path / "store", device="cpu")
    ingest([corpus], settings, embedder=minilm, id_from=tmp_path)
    service = Service(settings, embedder=minilm, reads=partial(ReadEndpoint, role="serve"))
    try:
        found = _cli("search", "What causes the tides?", "--store", str(tmp_path / "store"), "--json", "--top", "1")
        assert found.returncode == 0, found.stderr
        assert json.loads(found.stdout)["spans"][0]["doc_id"] == "corpus/tides.txt"
        assert "held by a running chunkless serve" in found.stderr and "heavy: []" in found.stderr
        with RemoteRetriever.for_store(settings.store) as r:  # the SDK's way to the same holder
            assert r.search("What causes the tides?", top=1).spans[0].doc_id == "corpus/tides.txt"
    finally:
        service.close()
    assert not advert_path(settings.store.collection_path).exists()
