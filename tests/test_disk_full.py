"""A disk that fills at any moment of an ingest ends it with the storage-fault message, never a signal.

Real disks: a tmpfs mounted for each test (root only; skipped with the reason otherwise), filled for real
by a preallocated ballast file at the moment each test picks: before the ingest, after the first or a
middle segment of a document, or just before its header. Whatever could die by SIGBUS runs in a
subprocess, so a regression fails the test with the signal instead of killing pytest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from indexer.embedders import HFTokenEmbedder
from indexer.ingest import ingest
from indexer.store import EdgeBackend, Match, Where, diskspace, open_or_create_store, open_store
from indexer.store.backend import NewPoint, folder_bytes
from schemas.errors import StorageFaultError
from schemas.settings import Settings
from tests.support import REPO, fake_embedded

MiB = 1 << 20


def _run(cmd: list[str]) -> bool:
    return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mounts a tmpfs of the given MiB on a fresh folder; every mount is undone afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(size_mib: int) -> Path:
        mnt = tmp_path / f"mnt{len(mounted)}"
        mnt.mkdir()
        if not _run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(mnt)]):
            pytest.skip("this machine refuses to mount a tmpfs")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        _run(["umount", "-l", str(mnt)])


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill `disk` with a preallocated ballast file until `leave` bytes are free; returns the ballast."""
    ballast = disk / f"ballast{len(list(disk.glob('ballast*')))}"
    free = shutil.disk_usage(disk).free
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, max(1, free - leave))
    except OSError:  # the file system keeps a few blocks for itself: the disk is as full as it gets
        pass
    finally:
        os.close(fd)
    return ballast


def _python(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, cwd=REPO, env=full_env
    )


CLI = "import sys; from retriever.cli import main; sys.exit(main(sys.argv[1:]))"

# the real CLI, with the disk filled (a real ballast file) at one moment of the write of document `big`
FILL_DURING_WRITE = """
import os, sys
from indexer.store import EdgeBackend
from retriever.cli import main
from tests.test_disk_full import fill

moment, disk = os.environ["FILL_MOMENT"], os.environ["FILL_DISK"]
real, seen = EdgeBackend.upsert, []

def upsert(self, points):
    p = points[0].payload
    if p.get("doc_id", "").endswith("big.txt"):
        seen.append(p["kind"])
        if (moment == "first segment" and seen == ["segment"]) or (moment == "middle segment" and len(seen) == 3) \\
                or (moment == "header" and p["kind"] == "doc"):
            fill(__import__("pathlib").Path(disk))
    real(self, points)

EdgeBackend.upsert = upsert
sys.exit(main(sys.argv[1:]))
"""


def _words(n: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    vocab = ["harbour", "glacier", "copper", "violin", "orchard", "comet", "turbine", "meadow", "falcon", "pepper"]
    return " ".join(f"{vocab[i]}." if k % 12 == 11 else vocab[i] for k, i in enumerate(rng.integers(0, 10, n)))


# -- the CLI, filled mid-document ------------------------------------------------------------------------
def test_ingest_that_fills_the_disk_mid_document_exits_5_and_the_store_still_answers(
    tmp_path: Path, tmpfs: Callable[[int], Path], minilm: HFTokenEmbedder
) -> None:
    disk = tmpfs(96)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "bread.txt").write_text("Yeast makes the dough rise. Bread is baked in a hot oven for forty minutes.")
    big = corpus / "big.txt"
    big.write_text(_words(1500, seed=1))
    s = Settings(store_path=disk / "store", device="cpu", segment_tokens=64)
    ingest([corpus / "bread.txt"], s, embedder=minilm)
    env = {"FILL_MOMENT": "middle segment", "FILL_DISK": str(disk), "CHUNKLESS_SEGMENT_TOKENS": "64"}
    out = _python(FILL_DURING_WRITE, "ingest", str(big), "--store", str(disk / "store"), env=env)
    assert out.returncode == 5, out.stderr[-2000:]  # not SIGBUS (-7), not "some files failed" (1)
    err = out.stderr
    assert f"document '{big.resolve().as_posix()}' not stored" in err and "refused before the disk filled" in err
    assert str(disk / "store") in err and "free space or use --store on a larger disk" in err
    assert "Documents stored before are intact" in err and "Traceback" not in err
    # the disk is still full (the ballast stays); the store answers searches, lists and stats
    search = _python(CLI, "search", "What makes the dough rise?", "--store", str(disk / "store"), "--json")
    assert search.returncode == 0, search.stderr[-2000:]
    assert json.loads(search.stdout)["spans"][0]["doc_id"].endswith("bread.txt")
    for cmd in (["list"], ["stats", "--json"]):
        res = _python(CLI, *cmd, "--store", str(disk / "store"))
        assert res.returncode == 0, res.stderr[-2000:]
    assert "big.txt" not in _python(CLI, "list", "--store", str(disk / "store")).stdout
    # space freed: the rerun stores the document, and the orphans of the stopped write are gone
    for ballast in disk.glob("ballast*"):
        ballast.unlink()
    report = ingest([corpus], s, embedder=minilm)
    assert report.documents == 1 and not report.failures
    store = open_store(s.store)
    try:
        heads = store.headers()
        assert sorted(Path(d).name for d in heads) == ["big.txt", "bread.txt"]
        big_id = big.resolve().as_posix()
        segments = store.backend.count(Where(must=[Match("kind", "segment"), Match("doc_id", big_id)]))
        assert segments == heads[big_id].n_segments
    finally:
        store.close()


# -- every moment, every layout: a fast store-level writer in a subprocess ----------------------------------
WRITE_BIG = """
import os, sys
from pathlib import Path
from indexer.store import EdgeBackend, open_or_create_store
from schemas.errors import StorageFaultError
from schemas.settings import Settings
from tests.support import fake_embedded
from tests.test_disk_full import fill

moment, disk, dtype = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
real, seen = EdgeBackend.upsert, []

def upsert(self, points):
    kind = points[0].payload["kind"]
    if points[0].payload.get("doc_id") == "big":
        seen.append(kind)
        if (moment == "first segment" and seen == ["segment"]) or (moment == "middle segment" and len(seen) == 5) \\
                or (moment == "header" and kind == "doc"):
            fill(disk)
    real(self, points)

EdgeBackend.upsert = upsert
s = Settings(store_path=disk / "store", storage_dtype=dtype, segment_tokens=128)
store = open_or_create_store(s.store, "m", 64, "mean")
store.write_document(fake_embedded("small", 300, 64))
if moment == "before":
    fill(disk)
try:
    store.write_document(fake_embedded("big", 2000, 64, seed=1))
except StorageFaultError as e:
    print(e)
    store.close()
    sys.exit(e.exit_code)
store.close()
"""


@pytest.mark.parametrize(
    ("moment", "dtype"),
    [
        ("before", "int8"),
        ("first segment", "int8"),
        ("middle segment", "int8"),
        ("header", "int8"),
        ("middle segment", "float32"),
    ],
)
def test_a_disk_filled_at_any_moment_of_a_write_is_a_storage_fault(
    moment: str, dtype: str, tmpfs: Callable[[int], Path]
) -> None:
    disk = tmpfs(64)
    out = _python(WRITE_BIG, moment, str(disk), dtype)
    assert out.returncode == 5, (out.returncode, out.stdout, out.stderr[-2000:])  # not SIGBUS (-7)
    early = "writing document 'big' in" if moment == "before" else "document 'big' not stored: writing points in"
    assert early in out.stdout and "refused" in out.stdout and str(disk / "store") in out.stdout
    assert "MiB free" in out.stdout and "Documents stored before are intact" in out.stdout
    # the disk is still full; the store opens in place (its reserve) and reads back what was stored
    s = Settings(store_path=disk / "store", storage_dtype=dtype)
    store = open_store(s.store, read_only=True)
    try:
        assert store.backend._copy is None
        assert set(store.headers()) == {"small"}
        got = store.fetch_segments({"small": "a" * 64})["small"]
        want = store.codec.encode(fake_embedded("small", 300, 64).vectors)[0]
        assert np.array_equal(np.concatenate([g.stored for g in got]), want)
    finally:
        store.close()


def test_per_call_estimate_bounds_what_each_edge_write_allocates(
    tmpfs: Callable[[int], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budget every write is checked against is at least what the write takes from the disk."""
    disk = tmpfs(256)
    seen: list[tuple[int, int]] = []
    real = EdgeBackend.upsert

    def upsert(self: EdgeBackend, points: list[NewPoint]) -> None:
        self._count_holes()  # any hole filling due now happens here, outside the measured write
        before = folder_bytes(self.folder / "shard")
        real(self, points)
        seen.append((folder_bytes(self.folder / "shard") - before, diskspace.upsert_bytes(points, self.datatypes)))

    monkeypatch.setattr(EdgeBackend, "upsert", upsert)
    for dtype in ("float32", "float16", "int8", "int4", "binary"):
        s = Settings(store_path=disk / dtype, storage_dtype=dtype, segment_tokens=256)
        store = open_or_create_store(s.store, "m", 384, "mean")
        for i in range(6):
            store.write_document(fake_embedded(f"d{i}", 3000, 384, seed=i))
        store.close()
        shutil.rmtree(disk / dtype)
    assert len(seen) > 5 * 6 * 12
    assert all(took <= budget for took, budget in seen), max(took - budget for took, budget in seen)


# -- a folder whose later files do not fit -------------------------------------------------------------------
def test_folder_whose_later_files_do_not_fit_stops_with_a_storage_fault_and_resumes(
    tmp_path: Path, tmpfs: Callable[[int], Path], minilm: HFTokenEmbedder
) -> None:
    disk = tmpfs(96)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"doc{i}.txt").write_text(_words(700, seed=10 + i))
    s = Settings(store_path=disk / "store", device="cpu")
    ingest([corpus / "doc0.txt"], s, embedder=minilm)
    store = open_store(s.store)
    headroom = store.backend.headroom()
    store.close()
    # room for about two more of these documents (each ~2.2 MB of data and log at the early check)
    ballast = fill(disk, leave=headroom + 5 * MiB)
    refused = r"(writing document '.*doc\d\.txt' in|document '.*doc\d\.txt' not stored: writing points in) .* refused"
    with pytest.raises(StorageFaultError, match=refused) as e:
        ingest([corpus], s, embedder=minilm)
    assert "Documents stored before are intact" in str(e.value) and e.value.exit_code == 5
    store = open_store(s.store, read_only=True)
    stored = sorted(Path(d).name for d in store.headers())
    store.close()
    assert stored[0] == "doc0.txt" and 1 < len(stored) < 6
    assert stored == [f"doc{i}.txt" for i in range(len(stored))]  # files are written in name order
    ballast.unlink()
    report = ingest([corpus], s, embedder=minilm)
    assert report.documents == 6 - len(stored) and report.skipped_unchanged == len(stored) and not report.failures


# -- opening: tmpfs holes, the reserve, a copy ---------------------------------------------------------------
MAKE_STORE = """
import sys
from pathlib import Path
import qdrant_edge as qe
import indexer.store.diskspace as diskspace
import indexer.store.edge as edge
from indexer.store import open_or_create_store
from schemas.settings import Settings
from tests.support import fake_embedded

# as an older chunkless left it: holes unfilled, and with "cached", vectors Edge reads whole at open
diskspace.allocates_on_read = lambda folder: False
plain = edge.edge_config
def cached(spaces):
    c = plain(spaces)
    vectors = {n: qe.EdgeVectorParams(size=v.size, distance=v.distance, datatype=v.datatype,
               multivector_config=v.multivector_config, hnsw_config=v.hnsw_config) for n, v in c.vectors.items()}
    return qe.EdgeConfig(vectors=vectors, optimizers=c.optimizers)
if sys.argv[2] == "cached":
    edge.edge_config = cached
store = open_or_create_store(Settings(store_path=Path(sys.argv[1]) / "store").store, "m", 384, "mean")
for i in range(int(sys.argv[3])):
    store.write_document(fake_embedded(f"d{i}", 3000, 384, seed=i))
store.close()
"""


def test_reopening_a_store_on_tmpfs_allocates_no_more_than_its_counted_holes(tmpfs: Callable[[int], Path]) -> None:
    """Edge reads some files whole when it opens them, which on tmpfs allocates their holes; vectors stay Cold."""
    disk = tmpfs(256)
    made = _python(MAKE_STORE, str(disk), "cold", "4")
    assert made.returncode == 0, made.stderr[-2000:]
    shard = disk / "store" / "chunkless" / "shard"
    holes = diskspace.populate_holes(shard)
    chunk = next(shard.glob("segments/*/vector_storage-tokens/vectors/chunk_0.mmap"))
    before, chunk_holes = folder_bytes(disk), diskspace.hole_bytes(chunk)
    store = open_store(Settings(store_path=disk / "store").store, read_only=True)
    store.close()
    assert diskspace.allocates_on_read(disk) and 0 < holes < 32 * MiB
    assert folder_bytes(disk) - before <= holes + diskspace.OPEN_BYTES
    assert diskspace.populate_holes(shard) == 0  # filled by that open, or by chunkless once it had room
    assert diskspace.hole_bytes(chunk) == chunk_holes > 16 * MiB  # Cold: the vector chunk is never read whole


OPEN_STORE = """
import sys
from pathlib import Path
from indexer.store import open_store
from schemas.errors import StorageFaultError
from schemas.settings import Settings
from tests.test_disk_full import fill

disk = Path(sys.argv[1])
fill(disk, int(sys.argv[2]))
try:
    store = open_store(Settings(store_path=disk / "store").store, read_only=sys.argv[3] == "read")
    print("opened", len(store.headers()))
    store.close()
except StorageFaultError as e:
    print(e)
    sys.exit(e.exit_code)
"""


def test_an_older_store_whose_open_would_fill_the_tmpfs_is_refused_or_read_through_a_copy(
    tmp_path: Path, tmpfs: Callable[[int], Path]
) -> None:
    disk = tmpfs(160)
    made = _python(MAKE_STORE, str(disk), "cached", "1")
    assert made.returncode == 0, made.stderr[-2000:]
    holes = diskspace.populate_holes(disk / "store" / "chunkless" / "shard")
    assert holes > 64 * MiB  # three sparse 32 MiB vector chunks, which Edge reads whole at open
    leave = str(24 * MiB)
    writer = _python(OPEN_STORE, str(disk), leave, "write")
    assert writer.returncode == 5, (writer.returncode, writer.stdout, writer.stderr[-2000:])  # not SIGBUS (-7)
    assert "opening the store in" in writer.stdout and "refused: it needs about" in writer.stdout
    tmp = tmp_path / "tmp"  # a reader copies it where there is room (here: the test's own disk)
    tmp.mkdir()
    reader = _python(OPEN_STORE, str(disk), leave, "read", env={"TMPDIR": str(tmp)})
    assert reader.returncode == 0, (reader.returncode, reader.stdout, reader.stderr[-2000:])
    assert "opened 1" in reader.stdout and "is on a full disk" in reader.stderr
    assert not list(tmp.iterdir())  # the copy went with the close


def test_a_store_on_a_disk_with_no_byte_free_opens_with_its_reserve(tmpfs: Callable[[int], Path]) -> None:
    disk = tmpfs(64)
    s = Settings(store_path=disk / "store", segment_tokens=256)
    store = open_or_create_store(s.store, "m", 64, "mean")
    store.write_document(fake_embedded("a", 500, 64))
    store.close()
    assert diskspace.populate_holes(disk / "store" / "chunkless" / "shard") == 0  # filled while there was room
    reserve = disk / "store" / "chunkless" / diskspace.RESERVE_FILE
    assert reserve.stat().st_blocks * 512 == diskspace.RESERVE_FILE_BYTES
    fill(disk)
    assert shutil.disk_usage(disk).free < diskspace.OPEN_BYTES
    code = (
        "import sys; from pathlib import Path; from indexer.store import open_store; "
        "from schemas.settings import Settings; "
        "st = open_store(Settings(store_path=Path(sys.argv[1])).store); print(sorted(st.headers())); st.close()"
    )
    out = _python(code, str(disk / "store"))
    assert out.returncode == 0 and "['a']" in out.stdout, (out.returncode, out.stderr[-2000:])
    assert not reserve.exists()  # spent on that open; held again once the disk has room
    for ballast in disk.glob("ballast*"):
        ballast.unlink()
    store = open_store(s.store)
    store.close()
    assert reserve.stat().st_blocks * 512 == diskspace.RESERVE_FILE_BYTES
    assert store.backend.disk_bytes() == folder_bytes(disk / "store") - diskspace.RESERVE_FILE_BYTES
