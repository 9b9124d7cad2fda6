"""Disk space an embedded (Edge) store needs before it maps anything: a full disk is an error, never SIGBUS.

Qdrant Edge writes its write-ahead log and its segments through shared memory maps of sparse files (32 MiB
WAL segments and vector chunks, created with ftruncate, no block behind them). When a page of such a map
is first touched, the file system allocates it; if it cannot (the disk is full), the kernel does not
return an error: it sends SIGBUS, which ends the process with no message (exit 135). Nothing can catch
that in Python, so the only defence is to know, before each Edge call, what the call can allocate, and
refuse it with a StorageFaultError while the disk still has room (docs/operations.md has the
measurements behind every constant here).

On tmpfs a *read* of a hole allocates too, and Edge reads some files whole when it opens a shard
(MADV_POPULATE_READ on its payload indexes, and on the vectors of segments kept in RAM): an open needs
room for those holes. `populate_holes` counts them; other file systems map a hole read to the zero page.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from indexer.store.backend import NewPoint

# bytes a call can allocate beyond its payload and vector numbers, measured on tmpfs over 1,560 upserts
# of 256-row segments (four layouts): the WAL adds at most 2 KiB over 5 B a number plus the payload
# JSON, the segment files at most 40 KiB over their stored numbers plus the payload (page rounding
# across a dozen files); each is doubled here
WAL_BYTES_PER_NUMBER_MAX = 5  # CBOR: a float32 that float16 cannot hold exactly takes 5 bytes, others 3
CALL_BYTES = 64 << 10
POINT_BYTES = 16 << 10
DELETE_BYTES = 1 << 20  # a delete by filter: one WAL record and deletion flags in files already sized
FLUSH_BYTES = 1 << 20  # a flush: small JSON files and the id tracker's appended mappings
FLUSH_BYTES_PER_POINT = 64
# what an open allocates besides tmpfs holes: Edge rewrites its config (one page), opens the WAL and
# replays at most the one call a killed writer had not finished (a flushed store replays nothing)
OPEN_BYTES = 2 << 20
# an optimize (compact, the end of an ingest) beyond the live bytes it copies: the rewritten segment's
# and a fresh appendable segment's vector, int8 and payload files; on tmpfs every chunk it touches is
# allocated. Measured on tmpfs: a 49 MiB store (pooled, tokens, ranking rows) grew to 97 MiB.
OPTIMIZE_BYTES = 64 << 20
# what a writer leaves free when it refuses a write: room for the flush and close that follow the
# refusal, and for later opens (a payload index page, 4 MiB, can appear on tmpfs after a hole count)
WRITE_MARGIN = 16 << 20
# the reserve file: held by every writable store, released only when the disk is too full for an
# open, a flush or a close; then the store still opens for search, list and stats on a full disk
RESERVE_FILE = "chunkless.reserve"
RESERVE_FILE_BYTES = 8 << 20

ITEMSIZE = {"float32": 4, "float16": 2, "uint8": 1}  # stored bytes per vector number
_TMPFS_MAGIC = 0x01021994
# storage types whose files Edge maps without reading them whole at open ("Cold" memory); every other
# file of a segment is counted when it has holes (conservative: a type this list does not know counts)
_COLD_VECTORS = {"Mmap", "ChunkedMmap"}
_COLD_PAYLOAD = {"mmap"}


def allocates_on_read(folder: Path) -> bool:
    """Whether reading a hole of a memory-mapped file allocates it on the file system holding `folder`.

    True on tmpfs (shared memory: every page touched is a page allocated). False elsewhere, and on
    systems where statfs cannot be asked (not Linux).

    Args:
        folder: an existing folder.

    Returns:
        Whether an open can allocate the holes of the files it reads.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux; f_type comes first
    if libc.statfs(os.fsencode(folder), buf) != 0:
        return False
    return bool(struct.unpack_from("l", buf.raw)[0] == _TMPFS_MAGIC)


def hole_bytes(path: Path) -> int:
    """Bytes of `path` that have no block behind them (its logical size minus its allocated bytes)."""
    st = path.stat()
    return max(0, st.st_size - st.st_blocks * 512)


def _cold_parts(segment: Path) -> set[str]:
    """The folders of a segment that an open does not read whole: cold vector storages, mmap payload storage."""
    try:
        config = json.loads((segment / "segment.json").read_text())["config"]
        cold = {f"vector_storage-{n}" for n, v in config["vector_data"].items() if v["storage_type"] in _COLD_VECTORS}
        if config["payload_storage_type"]["type"] in _COLD_PAYLOAD:
            cold.add("payload_storage")
        return cold
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _populated_files(shard: Path) -> Iterator[Path]:
    """The files Edge reads whole when it opens `shard`."""
    segments = shard / "segments"
    if not segments.is_dir():
        return
    for seg in segments.iterdir():
        if seg.is_dir():
            cold = _cold_parts(seg)
            yield from (f for f in seg.rglob("*") if f.relative_to(seg).parts[0] not in cold and f.is_file())


def populate_holes(shard: Path) -> int:
    """Holes of the files Edge reads whole when it opens `shard`: what an open allocates on tmpfs.

    Args:
        shard: the Edge shard folder.

    Returns:
        Bytes (0 for a shard that does not exist yet).
    """
    return sum(hole_bytes(f) for f in _populated_files(shard))


def fill_populated_holes(shard: Path) -> int:
    """Allocate the holes an open would allocate, now, while the disk has room; returns the holes left.

    On tmpfs this costs nothing the next open would not take anyway, and it makes that open (and every
    later write into those files) need no room: a store filled by a ballast right after still opens.
    A hole the disk cannot hold stays a hole (posix_fallocate fails cleanly, unlike a mapped page).

    Args:
        shard: the Edge shard folder.

    Returns:
        Bytes of holes left (0 when everything fitted).
    """
    left = 0
    for f in _populated_files(shard):
        holes = hole_bytes(f)
        if not holes:
            continue
        try:
            fd = os.open(f, os.O_WRONLY)
        except OSError:
            left += holes
            continue
        try:
            os.posix_fallocate(fd, 0, f.stat().st_size)  # mode 0: allocates, never changes a byte
        except OSError:
            left += hole_bytes(f)
        finally:
            os.close(fd)
    return left


def payload_bytes(payload: dict[str, Any]) -> int:
    """Bytes of a payload as JSON: about what Edge writes of it, once to the WAL and once to the segment."""
    return len(json.dumps(payload, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass"))


def upsert_bytes(points: list[NewPoint], datatypes: dict[str, str]) -> int:
    """At most what one Edge upsert of these points allocates: its WAL record and its segment bytes.

    Args:
        points: the points.
        datatypes: stored datatype per named vector (float32, float16, uint8).

    Returns:
        Bytes.
    """
    total = CALL_BYTES
    for p in points:
        for name, v in p.vectors.items():
            total += np.asarray(v).size * (WAL_BYTES_PER_NUMBER_MAX + ITEMSIZE[datatypes.get(name, "float32")])
        total += 2 * payload_bytes(p.payload) + POINT_BYTES
    return total


class Reserve:
    """A preallocated file in the store's folder that holds room for opening and closing on a full disk.

    Args:
        folder: the collection's folder.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / RESERVE_FILE

    def held(self) -> int:
        """Allocated bytes of the reserve file (0 when there is none)."""
        try:
            return self.path.stat().st_blocks * 512
        except FileNotFoundError:
            return 0

    def hold(self, free: int) -> None:
        """Create the reserve when the disk has room for it and still WRITE_MARGIN more; never raises.

        Args:
            free: free bytes on the disk now.
        """
        held = self.held()
        if held >= RESERVE_FILE_BYTES or free - (RESERVE_FILE_BYTES - held) < WRITE_MARGIN:
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        except OSError:
            return  # a store this user can only read: no reserve, and nothing to protect
        try:
            os.posix_fallocate(fd, 0, RESERVE_FILE_BYTES)  # real blocks, unlike Edge's sparse files
        except OSError:  # no room after all, or a file system without fallocate: no reserve, not half of one
            os.close(fd)
            self.release()
            return
        os.close(fd)

    def release(self) -> int:
        """Delete the reserve file, giving its room to the open, flush or close about to run.

        Returns:
            Bytes freed.
        """
        freed = self.held()
        try:
            self.path.unlink()
        except FileNotFoundError:
            return 0
        return freed
