"""The advert a process leaves in an embedded store it holds, so other processes ask it to read the store.

Edge admits one process per store (a lock on its write-ahead log). The process that holds a store for a
while (`chunkless ingest`, `chunkless serve`) serves reads of it on a loopback HTTP endpoint
(`retriever.serve.holder`) and says where in `<collection folder>/holder.json`: its pid, the endpoint's
URL, a random token that every request must carry, and what it is doing. `chunkless search`, `list` and
`stats` read the advert before opening the store and, when a live holder advertises, ask it instead
(`RemoteRetriever.for_store` does the same from Python).

The file is written atomically (a temporary file renamed over it) with mode 0600: the token is a
password to the holder's reads, readable only by the store's owner, who can read the store anyway. It
is removed when the holder closes. A holder killed with SIGKILL leaves it behind: a reader ignores an
advert whose process is gone, and one whose endpoint refuses connections (a pid reused by another
process) costs the reader one refused connection before it opens the store itself. The next holder
writes its own over it.

This module is plain file handling (no HTTP, no torch), so a terminal command can look for a holder in
a few milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ADVERT_FILE = "holder.json"


@dataclass(frozen=True)
class Advert:
    """One holder's advert: who holds the store and where it answers reads.

    Attributes:
        pid: the holding process.
        url: its read endpoint, e.g. ``http://127.0.0.1:40123``.
        token: the Bearer token its endpoint asks for.
        role: what the holder is doing (``ingest``, ``serve``), for messages.
        started_at: when the endpoint started (Unix seconds).
    """

    pid: int
    url: str
    token: str
    role: str
    started_at: float


def advert_path(folder: Path) -> Path:
    """Where the advert of the store in collection folder `folder` lives."""
    return folder / ADVERT_FILE


def new_advert(url: str, token: str, role: str) -> Advert:
    """An advert for this process."""
    return Advert(pid=os.getpid(), url=url, token=token, role=role, started_at=time.time())


def write_advert(folder: Path, advert: Advert) -> None:
    """Publish `advert` in `folder`: mode 0600, atomically (a reader sees the old file or the new, whole).

    Raises:
        OSError: the folder cannot be written (the caller decides whether serving reads matters).
    """
    tmp = folder / f".{ADVERT_FILE}.{advert.pid}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(advert), f)
        os.replace(tmp, advert_path(folder))
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def read_advert(folder: Path) -> Advert | None:
    """The advert of a live holder of the store in `folder`, or None.

    None when there is no advert, when it cannot be read or parsed (another user's, or a damaged file),
    or when its process is gone (a holder killed with SIGKILL). A live pid is not proof: the caller
    treats a refused connection as no holder.
    """
    try:
        raw = json.loads(advert_path(folder).read_text())
        advert = Advert(
            pid=int(raw["pid"]),
            url=str(raw["url"]),
            token=str(raw["token"]),
            role=str(raw.get("role", "")),
            started_at=float(raw.get("started_at", 0.0)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return advert if _alive(advert.pid) else None


def remove_advert(folder: Path, advert: Advert) -> None:
    """Remove `advert` if it is still the one published (another holder may have replaced a stale one)."""
    path = advert_path(folder)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("token") == advert.token:
            path.unlink()


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
