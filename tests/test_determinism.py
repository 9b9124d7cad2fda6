"""The same query on the same store gives bit-identical scores: across processes, and whatever it is batched with.

A forward pass's float results depend on the padded width of its batch (not on the batch size or the
other rows): padded to the longest of its batch, a query's vectors changed in the last bits with the
queries it shared a batch with (130 of 180 pairs measured), so under load the service's micro-batcher,
`search_batch` and `chunkless eval` scored the same query differently. Each sequence now has a width
of its own (`indexer.windows.PAD_MULTIPLE`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from indexer.embedders import HFTokenEmbedder
from indexer.ingest import ingest
from retriever.search import Retriever
from schemas.settings import Settings
from tests.support import DEMO, QUESTIONS, REPO

QUERIES = [q for _, q, _, _ in QUESTIONS] + [
    "How does a steam engine work?",
    "Who were the Normans?",
    "x",
    "What is force, and how is it measured in physics experiments today?",
]


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory, minilm: HFTokenEmbedder) -> Settings:
    s = Settings(store_path=tmp_path_factory.mktemp("determinism") / "store", device="cpu")
    ingest([DEMO], s, embedder=minilm)
    return s


def test_same_search_in_two_fresh_processes_prints_the_same_bytes(demo_store: Settings) -> None:
    code = "import sys; from retriever.cli import main; sys.exit(main(sys.argv[1:]))"
    outs = []
    for seed in ("1", "2"):  # another hash seed: set and dict-of-set orders differ between the two
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": seed}
        args = ["search", "How does a steam engine work?", "--store", str(demo_store.store.store_path), "--json"]
        res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, timeout=300, cwd=REPO, env=env)
        assert res.returncode == 0, res.stderr[-2000:]
        outs.append(res.stdout)
    assert json.loads(outs[0])["spans"]
    assert outs[0] == outs[1]


def test_a_query_gets_the_same_vectors_whatever_it_is_batched_with(minilm: HFTokenEmbedder) -> None:
    seqs = {q: minilm.query_ids(q) for q in QUERIES}
    alone = {q: minilm.encode([ids])[0] for q, ids in seqs.items()}
    for i, q in enumerate(QUERIES):
        company = [QUERIES[(i + k) % len(QUERIES)] for k in range(1, 4)]
        for batch in ([q, company[0]], [company[1], q], [company[2], q, *company[:2]]):
            rows, pooled = minilm.encode([seqs[b] for b in batch])[batch.index(q)]
            assert np.array_equal(rows, alone[q][0]) and np.array_equal(pooled, alone[q][1]), (q, batch)


def test_a_query_searched_in_a_batch_gets_the_spans_it_gets_alone(demo_store: Settings) -> None:
    """What the service's micro-batcher does under load: the batch must not change a query's scores."""
    with Retriever(demo_store) as r:
        alone = [r.search(q) for q in QUERIES[:4]]
        r.clear_caches()  # re-ranking embeds sentences again, now alongside the other queries' sentences
        batched = r.search_batch(QUERIES[:4])
    for a, b in zip(alone, batched, strict=True):
        assert a.spans and [s.model_dump() for s in a.spans] == [s.model_dump() for s in b.spans]


def test_documents_get_the_same_vectors_alone_or_in_a_folder(minilm: HFTokenEmbedder, tmp_path: Path) -> None:
    """Ingest batches windows of several documents together; a document's stored rows must not depend on them."""
    from schemas.models import LoadedDocument

    docs = [
        LoadedDocument(doc_id=p.name, source=str(p), title=p.name, text=p.read_text(), content_hash="0" * 64)
        for p in sorted(DEMO.glob("*.txt")) + sorted(DEMO.glob("*.md"))
    ]
    together = minilm.embed_documents(docs)
    for d, t in zip(docs, together, strict=True):
        [alone] = minilm.embed_documents([d])
        assert np.array_equal(alone.vectors, t.vectors) and np.array_equal(alone.pooled, t.pooled)
