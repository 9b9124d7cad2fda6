"""Span-QA benchmarks in the shared/benchmarks format, and the measures over them.

A benchmark folder holds corpus.jsonl ({"doc_id", "title", "text"}) and queries.jsonl ({"query_id",
"query", "doc_id", "answers": [{"start", "end", "text"}], "evidence": {"start", "end"} | null, ...}).
Offsets are Python string indices into the document's text, end exclusive.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from schemas.errors import InputError


@dataclass(frozen=True)
class BenchDoc:
    doc_id: str
    title: str
    text: str


@dataclass(frozen=True)
class BenchQuery:
    query_id: str
    query: str
    doc_id: str
    answers: list[tuple[int, int]]  # gold character ranges, end exclusive
    evidence: tuple[int, int] | None

    @property
    def answerable(self) -> bool:
        return bool(self.answers)


@dataclass(frozen=True)
class Hit:
    """One returned span, in benchmark coordinates."""

    doc_id: str
    start: int
    end: int
    text: str
    score: float


@dataclass
class Benchmark:
    name: str
    docs: list[BenchDoc]
    queries: list[BenchQuery] = field(default_factory=list)

    def answerable(self, sample: int | None = None, seed: int = 0) -> list[BenchQuery]:
        qs = [q for q in self.queries if q.answerable]
        return random.Random(seed).sample(qs, sample) if sample and sample < len(qs) else qs


def load_benchmark(folder: Path) -> Benchmark:
    """Read a benchmark folder; InputError names the file and field at fault."""
    corpus, queries = folder / "corpus.jsonl", folder / "queries.jsonl"
    for f in (corpus, queries):
        if not f.is_file():
            raise InputError(str(f), "missing; a benchmark folder needs corpus.jsonl and queries.jsonl")
    docs = [BenchDoc(d["doc_id"], d.get("title", d["doc_id"]), d["text"]) for d in _jsonl(corpus, ("doc_id", "text"))]
    known = {d.doc_id for d in docs}
    qs = []
    for q in _jsonl(queries, ("query_id", "query", "doc_id", "answers")):
        if q["doc_id"] not in known:
            raise InputError(str(queries), f"query {q['query_id']} names doc_id '{q['doc_id']}' not in corpus.jsonl")
        ev = q.get("evidence")
        qs.append(
            BenchQuery(
                q["query_id"],
                q["query"],
                q["doc_id"],
                [(int(a["start"]), int(a["end"])) for a in q["answers"]],
                (int(ev["start"]), int(ev["end"])) if ev else None,
            )
        )
    return Benchmark(folder.name, docs, qs)


def _jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{n}", f"not valid JSON ({e.msg}); fix or remove the line") from e
        missing = [k for k in required if k not in row]
        if missing:
            raise InputError(f"{path}:{n}", f"missing field(s) {missing}")
        rows.append(row)
    return rows


# --- measures -------------------------------------------------------------------------------------
def hit_at(q: BenchQuery, hits: list[Hit], k: int) -> bool:
    """Some gold answer lies inside one of the top-k spans of the right document."""
    return any(h.doc_id == q.doc_id and any(h.start <= a and b <= h.end for a, b in q.answers) for h in hits[:k])


def evidence_f1(q: BenchQuery, hits: list[Hit]) -> float:
    """Character-overlap F1 of the top span with the gold evidence (0 for a wrong document or no span)."""
    if not hits or q.evidence is None or hits[0].doc_id != q.doc_id:
        return 0.0
    h, (a, b) = hits[0], q.evidence
    overlap = max(0, min(h.end, b) - max(h.start, a))
    if overlap == 0:
        return 0.0
    p, r = overlap / (h.end - h.start), overlap / (b - a)
    return 2 * p * r / (p + r)


def words(hits: list[Hit]) -> int:
    """Whitespace words in the top span."""
    return len(re.findall(r"\S+", hits[0].text)) if hits else 0


@dataclass
class Scores:
    """Averages over answerable questions."""

    n: int = 0
    hit1: float = 0.0
    hit5: float = 0.0
    doc1: float = 0.0
    f1: float = 0.0
    words: float = 0.0
    no_span: float = 0.0
    ms_per_query: float = 0.0

    def row(self, name: str) -> str:
        return (
            f"| {name} | {self.hit1:.3f} | {self.hit5:.3f} | {self.doc1:.3f} | {self.f1:.3f} | {self.words:.0f} "
            f"| {self.no_span:.0%} | {self.ms_per_query:.1f} |"
        )

    HEADER = (
        "| method | hit@1 | hit@5 | doc@1 | evidence F1 | words | no span | ms/query |\n"
        "|---|---|---|---|---|---|---|---|"
    )


def score(queries: list[BenchQuery], results: list[list[Hit]], seconds: float = 0.0) -> Scores:
    """Average the measures over answerable `queries` (results aligned with them)."""
    pairs = [(q, h) for q, h in zip(queries, results, strict=True) if q.answerable]
    n = len(pairs)
    if n == 0:
        return Scores()
    return Scores(
        n=n,
        hit1=sum(hit_at(q, h, 1) for q, h in pairs) / n,
        hit5=sum(hit_at(q, h, 5) for q, h in pairs) / n,
        doc1=sum(bool(h) and h[0].doc_id == q.doc_id for q, h in pairs) / n,
        f1=sum(evidence_f1(q, h) for q, h in pairs) / n,
        words=sum(words(h) for _, h in pairs) / n,
        no_span=sum(not h for _, h in pairs) / n,
        ms_per_query=1e3 * seconds / max(len(queries), 1),
    )
