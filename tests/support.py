"""Helpers shared by tests (not fixtures: those live in conftest.py)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from indexer.codec import decode_plain
from indexer.discover import discover
from indexer.embedders import WindowEmbedder
from indexer.long_documents import TOKENIZE_CHARS, TokenStream
from indexer.reading import load_file
from schemas.errors import InputError
from schemas.layout import StorageDtype
from schemas.models import EmbeddedDocument, IngestFailure, LoadedDocument
from schemas.structure import DocStructure

# --- paths of the repository and its demo corpus ----------------------------------------------------
REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo" / "corpus"


def fake_embedded(
    doc_id: str, n: int, dim: int, seed: int = 0, version: str = "a" * 64, window: int | None = None
) -> EmbeddedDocument:
    """Random unit token vectors over a synthetic text with one 'word' per token.

    Args:
        doc_id: the document's id (its source is /x/<doc_id>).
        n: tokens.
        dim: vector dimension.
        seed: random seed of the vectors.
        version: the content hash the store records as the version.
        window: tokens per embedding window (None: one window), each pooled as its mean, so that
            segments get distinct pooled vectors.

    Returns:
        The embedded document.
    """
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(n)]
    text = " ".join(words)
    starts = np.cumsum([0] + [len(w) + 1 for w in words[:-1]])
    offsets = np.stack([starts, starts + [len(w) for w in words]], axis=1).astype(np.int64)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    pooled = v.mean(0) / np.linalg.norm(v.mean(0))
    doc = LoadedDocument(doc_id=doc_id, source=f"/x/{doc_id}", title=doc_id, text=text, content_hash=version)
    cuts = [*list(range(0, n, window or n)), n]
    bounds = np.array(list(itertools.pairwise(cuts)), dtype=np.int64)
    wp = np.stack([v[a:b].mean(0) for a, b in bounds])
    wp /= np.linalg.norm(wp, axis=1, keepdims=True)
    if window is None:
        wp = pooled[None]
    return EmbeddedDocument(doc=doc, vectors=v, offsets=offsets, pooled=pooled, window_pooled=wp, window_bounds=bounds)


# --- retrieve: a tiny span-QA benchmark in the shared/benchmarks format --------------------------------
DOCS = {
    "volcano": (
        "Volcanoes form where magma reaches the surface of the Earth. Mt. Etna in Sicily erupts often and its "
        "lava flows have reached nearby towns.\n\nA volcano's magma chamber holds molten rock under pressure. "
        "When the pressure is released, gas expands and the eruption throws ash high into the sky."
    ),
    "bread": (
        "Bread is made from flour, water, salt and yeast. The yeast ferments sugars and releases carbon dioxide, "
        "which makes the dough rise.\n\nBakers knead the dough to develop gluten. A loaf is baked at about "
        "230 degrees Celsius for 30 to 40 minutes until the crust turns brown."
    ),
    "chess": (
        "Chess is a board game for two players on a board of 64 squares. Each player starts with sixteen pieces.\n\n"
        "The aim is to checkmate the opponent's king, so that it is attacked and cannot escape. The Queen is the "
        "strongest piece because it moves any distance along ranks, files and diagonals."
    ),
}

QUESTIONS = [
    ("q1", "What makes the dough rise?", "bread", "carbon dioxide"),
    ("q2", "How long is a loaf baked?", "bread", "30 to 40 minutes"),
    ("q3", "How many squares does a chess board have?", "chess", "64 squares"),
    ("q4", "What is the aim of chess?", "chess", "checkmate the opponent's king"),
    ("q5", "Where does magma reach?", "volcano", "the surface of the Earth"),
    ("q6", "What does an eruption throw into the sky?", "volcano", "ash"),
]


def evidence_of(text: str, pos: int) -> tuple[int, int]:
    start = max(text.rfind(". ", 0, pos) + 2, text.rfind("\n", 0, pos) + 1, 0)
    end = text.find(".", pos)
    return start, (end + 1 if end >= 0 else len(text))


def write_bench(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w") as f:
        for doc_id, text in DOCS.items():
            f.write(json.dumps({"doc_id": doc_id, "title": doc_id.title(), "text": text}) + "\n")
    with (folder / "queries.jsonl").open("w") as f:
        for qid, query, doc_id, answer in QUESTIONS:
            text = DOCS[doc_id]
            a = text.index(answer)
            ev_start, ev_end = evidence_of(text, a)
            row = {
                "query_id": qid,
                "query": query,
                "doc_id": doc_id,
                "answers": [{"start": a, "end": a + len(answer), "text": answer}],
                "evidence": {"start": ev_start, "end": ev_end},
                "paragraph": {"start": 0, "end": len(text)},
            }
            f.write(json.dumps(row) + "\n")
        unanswerable = {"query_id": "u1", "query": "Who invented the bicycle?", "doc_id": "chess", "answers": []}
        f.write(json.dumps({**unanswerable, "evidence": None, "paragraph": None}) + "\n")
    return folder


# --- end retrieve ----------------------------------------------------------------------------------


# --- twins and walks of product code that only tests need ------------------------------------------
def decode_plain_numpy(stored: np.ndarray, scales: np.ndarray | None, dtype: StorageDtype) -> np.ndarray:
    """NumPy twin of `indexer.codec.decode_plain`."""
    return decode_plain(
        torch.from_numpy(np.ascontiguousarray(stored)), None if scales is None else torch.from_numpy(scales), dtype
    ).numpy()


def check_offsets(text: str, structure: DocStructure) -> None:
    """Raise ValueError unless every block lies inside `text` and is neither empty nor padded."""
    for b in structure.blocks:
        piece = text[b.start : b.end]
        if b.end > len(text) or not piece or piece != piece.strip():
            raise ValueError(f"{b.kind} block {b.start}-{b.end} does not index a trimmed piece of the text")


def load_paths(
    paths: Iterable[Path], id_from: Path | None = None, doc_id: str | None = None
) -> Iterator[LoadedDocument | IngestFailure]:
    """Load every supported file under `paths` (ids as `indexer.discover.discover` gives them), no store.

    Bad files come back as IngestFailure, never raise.
    """
    found = discover(paths, id_from, doc_id)
    yield from found.failures
    for f in found.files:
        try:
            yield load_file(f.path, f.doc_id)
        except InputError as e:
            yield IngestFailure(path=e.path, reason=e.reason)


def tokenize_long(
    embedder: WindowEmbedder, text: str, chunk_chars: int = TOKENIZE_CHARS
) -> tuple[np.ndarray, np.ndarray]:
    """A text of any size tokenized in `TokenStream`'s pieces: (n,) int64 ids and (n, 2) absolute offsets."""
    tokens = TokenStream(embedder, text, chunk_chars)
    return tokens.ids(0, tokens.n).copy(), tokens.offsets(0, tokens.n).copy()
