"""Find the files an ingest run names and give each its doc_id.

doc_ids never collide: by default a document's id is its file's resolved absolute POSIX path
(`/home/ann/docs/a/b.pdf`). Two different files cannot share it, and the same file reached by
another route (named alone, through its folder, through a symlink, from another working directory)
gets the same id, so it maps to the same document. `id_from=ROOT` makes ids the path relative to
ROOT instead (`a/b.pdf`: the same on every machine that has the tree under some ROOT); `doc_id=ID`
names one file's document yourself.

The walk follows symlinked folders, each real folder once (a link back to an ancestor is reported
and not followed again), skips hidden files and folders below a named folder, and counts what it
skipped by extension so a run that found nothing can say why. Which types are supported, and how a
refused file is reported, are admission's (`indexer.admit`): the walk refuses what it can tell
without reading a file (another type named directly, two files of the run under one doc_id).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from indexer.admit import SUPPORTED_SUFFIXES, DocIdCollisionError, UnsupportedFileError
from schemas.errors import InputError
from schemas.models import IngestFailure

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoundFile:
    """One file to ingest: its resolved path and the doc_id its document is stored under."""

    path: Path
    doc_id: str


@dataclass
class Discovery:
    """What a walk found: files to ingest, and failures (bad arguments, empty folders, id clashes)."""

    files: list[FoundFile] = field(default_factory=list)
    failures: list[IngestFailure] = field(default_factory=list)


def discover(paths: Iterable[Path], id_from: Path | None = None, doc_id: str | None = None) -> Discovery:
    """Walk `paths` and derive each supported file's doc_id.

    Args:
        paths: files and folders named by the user.
        id_from: when set, doc_ids are paths relative to this folder; files outside it fail.
        doc_id: when set, the one file found is stored under this id.

    Returns:
        The files in walk order (each real file once) and one failure per bad argument, per named
        folder holding no supported file (with what was skipped, by extension), and per file whose
        id another file of this run already took.

    Raises:
        InputError: `doc_id` is given but the paths hold more or fewer than one file.
    """
    out = Discovery()
    seen_paths: set[Path] = set()
    owner: dict[str, Path] = {}  # doc_id -> the file of this run that holds it
    root = id_from.resolve() if id_from is not None else None
    visited: set[str] = set()  # real folders already walked: each once, so links cannot loop
    for arg in paths:
        if not arg.exists():
            reason = (
                "broken symlink; fix or remove it" if arg.is_symlink() else "path does not exist; check the spelling"
            )
            out.failures.append(IngestFailure(path=str(arg), reason=reason))
            continue
        if not arg.is_dir():
            if arg.suffix.lower() not in SUPPORTED_SUFFIXES:
                out.failures.append(_failure(UnsupportedFileError(arg)))
                continue
            candidates = [arg]
        else:
            skipped: Counter[str] = Counter()
            reported = len(out.failures)
            candidates = list(_walk(arg, skipped, visited, out.failures))
            if not candidates:
                if len(out.failures) == reported:  # else the walk said why (a broken link, an unlistable folder)
                    out.failures.append(IngestFailure(path=str(arg), reason=_nothing_found(skipped)))
                continue
        for f in candidates:
            real = f.resolve()
            if real in seen_paths:
                continue  # the same file named twice (alone and through its folder): one document
            seen_paths.add(real)
            try:
                did = doc_id if doc_id is not None else _derive(f, real, root)
            except InputError as e:
                out.failures.append(_failure(e))
                continue
            if did in owner:
                out.failures.append(_failure(DocIdCollisionError(did, owner[did], real)))
                continue
            owner[did] = real
            out.files.append(FoundFile(real, did))
    if doc_id is not None and len(out.files) + len(out.failures) != 1:
        n = len(out.files) + len(out.failures)
        raise InputError(
            ", ".join(str(p) for p in paths),
            f"--doc-id names one file's document, but these paths hold {n} files; "
            "name a single file, or use --id-from ROOT for a folder",
        )
    return out


def _failure(e: InputError) -> IngestFailure:
    return IngestFailure(path=e.path, reason=e.reason)


def _derive(walked: Path, real: Path, root: Path | None) -> str:
    if root is None:
        return real.as_posix()
    # the real path first (any route to the file gives one id); the walked route when only it is under ROOT
    for p in (real, Path(os.path.abspath(walked))):
        if p.is_relative_to(root):
            return p.relative_to(root).as_posix()
    raise InputError(str(walked), f"is not under --id-from {root}; choose a ROOT that holds every file ingested")


def _walk(top: Path, skipped: Counter[str], visited: set[str], failures: list[IngestFailure]) -> Iterator[Path]:
    """Supported files under `top` in sorted depth-first order, following symlinked folders once."""
    real_top = os.path.realpath(top)
    if real_top in visited:
        log.info("skipping %s: already walked in this run", top)
        return
    visited.add(real_top)
    yield from _walk_folder(top, skipped, visited, failures)


def _walk_folder(
    folder: Path, skipped: Counter[str], visited: set[str], failures: list[IngestFailure]
) -> Iterator[Path]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        reason = f"cannot list folder ({err.strerror}); check permissions"
        failures.append(IngestFailure(path=str(folder), reason=reason))
        return
    for e in entries:
        p = Path(e.path)
        if e.name.startswith("."):
            skipped["hidden"] += 1  # .git, .DS_Store, editor swap files: never documents
            continue
        if e.is_dir():  # follows symlinks
            real = os.path.realpath(p)
            if real in visited:
                log.info("not following %s: it leads to %s, already walked (a symlink loop or a second link)", p, real)
                continue
            visited.add(real)
            yield from _walk_folder(p, skipped, visited, failures)
        elif e.is_file():
            if p.suffix.lower() in SUPPORTED_SUFFIXES:
                yield p
            else:
                skipped[p.suffix.lower() or "(no extension)"] += 1
                log.info("skipping %s: %s", p, UnsupportedFileError(p).reason)
        elif e.is_symlink():  # a dangling link is a file the user meant to give: say so, as when named directly
            failures.append(IngestFailure(path=str(p), reason="broken symlink; fix or remove it"))
        else:
            skipped["special file"] += 1


def _nothing_found(skipped: Counter[str]) -> str:
    exts = ", ".join(sorted(SUPPORTED_SUFFIXES))
    if not skipped:
        return f"no supported file found: the folder is empty; chunkless reads {exts}"
    listed = ", ".join(f"{n} {ext}" for ext, n in sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"no supported file found (skipped: {listed}); chunkless reads {exts}"
