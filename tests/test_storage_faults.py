"""Storage faults and server connections end in one clear message, and nothing stored is lost.

Real faults where the machine allows them: a read-only bind mount and a small tmpfs (root only; skipped
with the reason otherwise), a non-root process for permission denied, loopback ports where nothing
listens or where a plain TCP or HTTP server answers instead of Qdrant.
"""

from __future__ import annotations

import errno
import http.server
import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from indexer.embedders import HFTokenEmbedder
from indexer.ingest import ingest
from indexer.store import open_or_create_store, open_store
from indexer.store.backend import WRITE_FACTOR, storage_fault
from indexer.store.server import grpc_port_for
from schemas.errors import ServerError, SettingsError, StorageFaultError
from schemas.settings import Settings
from tests.support import REPO, fake_embedded


def _run(cmd: list[str]) -> bool:
    return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Path]:
    """An empty folder that tests mount things on; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only bind mount or a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    yield mnt
    _run(["umount", "-l", str(mnt)])


def _store_with_a(path: Path) -> Settings:
    s = Settings(store_path=path, device="cpu")
    store = open_or_create_store(s.store, "m", 16, "mean")
    store.write_document(fake_embedded("a", 40, 16))
    store.close()
    return s


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from retriever.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=REPO, env=env
    )


# -- read-only store and permission denied -------------------------------------------------------------
def test_read_only_store_is_searched_and_never_written(
    tmp_path: Path, mount_point: Path, minilm: HFTokenEmbedder
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "bread.txt").write_text("Yeast makes the dough rise. Bread is baked in a hot oven for forty minutes.")
    (corpus / "tides.txt").write_text("The moon's gravity pulls the oceans and causes the tides twice a day.")
    s = Settings(store_path=tmp_path / "src", device="cpu")
    ingest([corpus], s, embedder=minilm, id_from=tmp_path)  # ids "corpus/bread.txt"
    if not _run(["mount", "--bind", "-o", "ro", str(tmp_path / "src"), str(mount_point)]):
        pytest.skip("this machine refuses a read-only bind mount")
    ro = Settings(store_path=mount_point, device="cpu")
    # a writer gets one clear message: Edge 0.9 (Python) cannot even open a store it cannot write
    with pytest.raises(StorageFaultError, match="not writable by this user") as e:
        open_store(ro.store)
    assert str(mount_point) in str(e.value) and "copy the store to a writable folder" in str(e.value)
    assert e.value.exit_code == 5
    # a reader searches a temporary copy; a write through it is refused, never silently dropped
    store = open_store(ro.store, read_only=True)
    assert set(store.headers()) == {"corpus/bread.txt", "corpus/tides.txt"}
    with pytest.raises(StorageFaultError, match="open for reading through a temporary copy"):
        store.delete_document("corpus/bread.txt")
    store.close()
    out = _cli("search", "What makes the dough rise?", "--store", str(mount_point), "--json", "--top", "1")
    assert out.returncode == 0, out.stderr
    spans = json.loads(out.stdout)["spans"]
    assert spans[0]["doc_id"] == "corpus/bread.txt" and "Yeast" in spans[0]["text"]
    listed = _cli("list", "--store", str(mount_point), "--json")  # list opens read-only too (it exited 5)
    assert listed.returncode == 0, listed.stderr
    assert {d["doc_id"] for d in json.loads(listed.stdout)["documents"]} == {"corpus/bread.txt", "corpus/tides.txt"}
    _run(["umount", str(mount_point)])
    store = open_store(s.store)  # nothing stored was lost or changed
    assert set(store.headers()) == {"corpus/bread.txt", "corpus/tides.txt"}
    store.close()


def test_store_this_user_cannot_write_is_read_through_a_copy_and_refused_for_writes() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a check as another user")
    base = Path(tempfile.mkdtemp(prefix="chunkless-perm-"))  # under /tmp: every user may traverse it
    try:
        base.chmod(0o755)
        _store_with_a(base / "store")
        code = (
            "import os, sys\n"
            "from indexer.store import open_store, open_or_create_store\n"
            "from schemas.errors import StorageFaultError\n"
            "from schemas.settings import Settings\n"
            f"s = Settings(store_path={str(base / 'store')!r}).store\n"
            "os.setgid(65534); os.setuid(65534)  # nobody: may read the store, not write it\n"
            "st = open_store(s, read_only=True); print('read', sorted(st.headers())); st.close()\n"
            "try:\n    open_or_create_store(s, 'm', 16, 'mean')\n"
            "except StorageFaultError as e:\n    print(e); sys.exit(e.exit_code)\n"
        )
        tmp = base / "tmp"  # the copy's temporary folder, private to this test
        tmp.mkdir()
        tmp.chmod(0o1777)
        env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp)}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO, env=env
        )
        assert out.returncode == 5, out.stderr
        assert "read ['a']" in out.stdout
        assert "not writable by this user" in out.stdout and str(base / "store") in out.stdout
        assert "give this user write access" in out.stdout
        assert not list(tmp.iterdir())  # the copy went on close
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_os_and_edge_faults_map_to_storage_fault_errors() -> None:
    full = storage_fault(OSError(errno.ENOSPC, "No space left on device"), "/s", "writing points")
    assert isinstance(full, StorageFaultError) and "the disk is full" in str(full) and "/s" in str(full)
    edge = storage_fault(Exception("Service runtime error: Failed to open mmap: (os error 30)"), "/s", "opening")
    assert edge is not None and "read-only" in str(edge) and "copy it to a writable folder" in str(edge)
    denied = storage_fault(PermissionError(errno.EACCES, "Permission denied"), "/s", "creating")
    assert denied is not None and "permission denied" in str(denied)
    assert storage_fault(ValueError("bad vector"), "/s", "writing") is None


# -- disk full -------------------------------------------------------------------------------------------
def test_tiny_disk_refuses_the_store_before_any_mmap(mount_point: Path) -> None:
    """On a full disk Edge's mmap writes end the process with SIGBUS: the free-space check comes first."""
    if not _run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)]):
        pytest.skip("this machine refuses to mount a tmpfs")
    out = _cli("ingest", str(REPO / "README.md"), "--store", str(mount_point / "store"))
    assert out.returncode not in (0, -7), out.stderr  # -7: SIGBUS
    assert "refused" in out.stderr and "MiB free" in out.stderr and str(mount_point) in out.stderr
    assert "Traceback" not in out.stderr


def test_document_too_big_for_the_disk_is_refused_and_earlier_ones_stay(mount_point: Path) -> None:
    if not _run(["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", str(mount_point)]):
        pytest.skip("this machine refuses to mount a tmpfs")
    s = Settings(store_path=mount_point / "store", device="cpu", segment_tokens=None, storage_dtype="float32")
    store = open_or_create_store(s.store, "m", 384, "mean")
    store.write_document(fake_embedded("small", 50, 384))
    big = fake_embedded("big", 40_000, 384, seed=1)  # ~61 MB of float32 rows: x3 + reserve exceeds the disk
    with pytest.raises(StorageFaultError, match=r"writing document 'big'.*refused.*MiB free") as e:
        store.write_document(big)
    free = shutil.disk_usage(mount_point).free
    assert free < WRITE_FACTOR * big.vectors.nbytes + store.backend.headroom()  # the refusal was real, not too eager
    assert f"the disk has {free / 2**20:.1f} MiB free" in str(e.value)
    store.close()
    store = open_store(s.store)
    assert set(store.headers()) == {"small"}  # nothing stored before was lost
    got = store.fetch_segments({"small": "a" * 64})["small"]
    assert np.allclose(np.concatenate([g.stored for g in got]), fake_embedded("small", 50, 384).vectors, atol=1e-6)
    store.close()


# -- server connection -----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_grpc_port_defaults_to_the_rest_port_plus_one() -> None:
    assert grpc_port_for(Settings(url="http://localhost:6343").store) == 6344
    assert grpc_port_for(Settings(url="https://qdrant.example.com").store) == 6334
    assert grpc_port_for(Settings(url="localhost:7000").store) == 7001
    assert grpc_port_for(Settings(url="http://localhost:6343", grpc_port=9000).store) == 9000


@pytest.mark.parametrize("grpc", [True, False])
def test_unreachable_server_is_a_server_error_naming_the_url(grpc: bool) -> None:
    port = _free_port()  # nothing listens there, nor (almost surely) on port + 1
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(ServerError, match="cannot reach the Qdrant server") as e:
        open_store(Settings(url=url, prefer_grpc=grpc).store)
    assert url in str(e.value) and "CHUNKLESS_URL" in str(e.value) and e.value.exit_code == 6
    assert (f"gRPC port {port + 1}" in str(e.value)) == grpc


def test_the_client_talks_grpc_to_the_port_it_derives() -> None:
    """A plain TCP listener on REST port + 1 sees the gRPC connection (and the call fails clearly)."""
    rest = _free_port()
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", rest + 1))
    except OSError:
        listener.close()
        pytest.skip("port REST + 1 is taken on this machine")
    listener.listen(4)
    listener.settimeout(30)
    seen: list[bytes] = []

    def accept() -> None:
        try:
            conn, _ = listener.accept()
            seen.append(conn.recv(24))  # the HTTP/2 preface a gRPC client opens with
            conn.close()
        except OSError:
            pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        with pytest.raises(ServerError, match=f"gRPC port {rest + 1}"):
            open_store(Settings(url=f"http://127.0.0.1:{rest}").store)
        t.join(30)
    finally:
        listener.close()
    assert seen and seen[0].startswith(b"PRI * HTTP/2.0")


class _FakeQdrant(http.server.BaseHTTPRequestHandler):
    """Answers like a Qdrant REST endpoint would for one case: a refused key or an old version."""

    mode = "401"

    def do_GET(self) -> None:
        if self.mode == "401":
            self.send_response(401)
            self.end_headers()
            self.wfile.write(b"Must provide an API key or an Authorization bearer token")
            return
        if self.mode == "full" and self.path != "/":
            body = b'{"status":{"error":"Service internal error: No space left on device (os error 28)"}}'
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        version = importlib.metadata.version("qdrant-client") if self.mode == "full" else "0.11.0"
        body = json.dumps({"title": "qdrant - vector search engine", "version": version}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_qdrant() -> Iterator[tuple[str, type[_FakeQdrant]]]:
    handler = type("Handler", (_FakeQdrant,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_wrong_api_key_is_a_server_error_saying_which_setting(fake_qdrant: tuple[str, type[_FakeQdrant]]) -> None:
    url, handler = fake_qdrant
    handler.mode = "401"
    with pytest.raises(ServerError, match="refused the API key; set CHUNKLESS_QDRANT_API_KEY") as e:
        open_store(Settings(url=url, prefer_grpc=False, qdrant_api_key="wrong").store)
    assert url in str(e.value)


def test_incompatible_server_version_is_named(fake_qdrant: tuple[str, type[_FakeQdrant]]) -> None:
    url, handler = fake_qdrant
    handler.mode = "old"
    with pytest.raises(ServerError, match=r"runs version 0\.11\.0, which qdrant-client") as e:
        open_or_create_store(Settings(url=url, prefer_grpc=False).store, "m", 8, "mean")
    assert url in str(e.value)


def test_server_disk_full_is_a_storage_fault_naming_the_server(fake_qdrant: tuple[str, type[_FakeQdrant]]) -> None:
    url, handler = fake_qdrant
    handler.mode = "full"
    with pytest.raises(StorageFaultError, match="the disk is full") as e:
        open_store(Settings(url=url, prefer_grpc=False).store)
    assert url in str(e.value)


# -- collection names --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["..", ".", "a/b", "../x", "/abs", "a\\b", ""])
def test_collection_names_with_path_parts_are_refused(name: str) -> None:
    with pytest.raises(SettingsError, match="collection"):
        Settings(collection=name)


def test_collection_flag_with_path_parts_is_refused_by_the_cli(tmp_path: Path) -> None:
    for name in ("..", "a/b"):
        out = _cli("stats", "--store", str(tmp_path), "--collection", name)
        assert out.returncode == 2 and "collection" in out.stderr and "Traceback" not in out.stderr
        assert not (tmp_path.parent / "chunkless.json").exists()
