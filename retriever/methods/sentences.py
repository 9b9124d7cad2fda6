"""The sentence method (the default): rank whole sentences, then re-rank the best by their sentence vectors.

1. Candidates: every sentence of the candidate documents scored by the cosine of its pooled in-context
   token vectors with the query (`retriever.sentence_table`), or for multivector models by MaxSim restricted
   to its in-context tokens (`Scorer.sentence_scores`); sentences shorter than `min_sentence_tokens`
   (headings) are skipped; the best max(rerank_k, top) are kept.
2. Sentences a fetched run of segments cut are finished from the neighbour segments' text.
3. Re-ranking, batched over all queries of a batch: the best `rerank_k` candidates get their sentence
   vectors, each sentence embedded on its own (through an LRU of them by text; read from the store
   when the collection stores sentence vectors, `store_sentence_vectors`, and embedded at query time
   only when it has none for the exact characters, e.g. a sentence cut differently at a segment edge),
   and their score becomes rerank_weight * sentence-vector cosine + (1 - rerank_weight) * pooled cosine;
   the rest fall below them.
   BM25 over the fetched sentences (`retriever.lexical`, scaled to [0, 1]) joins the pooled cosine with
   weight `lexical_first` in choosing the candidates, and the blend with weight `lexical_weight`.
4. Length penalty: length_penalty * ln(words) is subtracted from every score.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from retriever.calibration import answer_features
from retriever.fetch import DocTokens
from retriever.lexical import LexicalStats, LexicalUnits, bm25
from retriever.methods.base import MethodContext, QueryDocs, SpanMethod, span_result
from retriever.methods.structured import answer_range, structure_masks
from retriever.sentence_table import SentenceCandidates, SentenceTable, SentenceTables, complete_cut, cut_sentences
from schemas.models import SpanResult


class SentenceVectorCache:
    """Bounded LRU of sentence vectors by text: popular sentences are embedded once. Thread-safe.

    Args:
        max_entries: most texts kept; the least recently used go first.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def embed(self, texts: list[str], embed: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """Vectors of `texts`; only the ones not cached go through `embed`, in one batch.

        Args:
            texts: the texts, duplicates allowed.
            embed: embeds a list of distinct texts, (n, dim).

        Returns:
            (len(texts), dim) in the order of `texts`.
        """
        with self._lock:
            found = {t: self._items[t] for t in texts if t in self._items}
            for t in found:
                self._items.move_to_end(t)
        todo = list(dict.fromkeys(t for t in texts if t not in found))
        if todo:
            fresh = embed(todo)
            found.update(zip(todo, fresh, strict=True))
            with self._lock:
                for t, v in zip(todo, fresh, strict=True):
                    self._items[t] = v
                while len(self._items) > self.max_entries:
                    self._items.popitem(last=False)
        return np.stack([found[t] for t in texts])

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


@dataclass
class SentenceCaches:
    """What the sentence method caches across queries; share one between retrievers over the same
    collection and model (e.g. several settings in an experiment) so each sentence is embedded once.

    Attributes:
        vectors: sentence vectors by text.
        tables: per-document sentence tables by document run.
        lexical: per-run BM25 units.
    """

    vectors: SentenceVectorCache = field(default_factory=lambda: SentenceVectorCache(16384))
    tables: SentenceTables = field(default_factory=SentenceTables)
    lexical: LexicalUnits = field(default_factory=LexicalUnits)


class SentenceMethod(SpanMethod[SentenceCandidates]):
    """Whole sentences ranked by pooled in-context vectors, the best re-ranked by their sentence vectors.

    Args:
        ctx: span settings, scorer, `embed_texts` (sentence vectors at query time), `sentence_vectors`
            (stored ones) and `segment_texts` (cut sentences).
        caches: caches to use, e.g. shared with another retriever; None: fresh ones sized by
            `rerank_cache`.
    """

    def __init__(self, ctx: MethodContext, caches: SentenceCaches | None = None) -> None:
        self.settings = ctx.settings
        self.scorer = ctx.scorer
        self.embed_texts = ctx.embed_texts
        self.segment_texts = ctx.segment_texts
        self.stored_vectors = ctx.sentence_vectors
        self.caches = caches or SentenceCaches(SentenceVectorCache(ctx.settings.rerank_cache))
        self.min_sentence_rows = max(1, math.ceil(ctx.settings.min_sentence_tokens / ctx.pool))

    @property
    def scores_from_sentence_sums(self) -> bool:
        """A pooled-hidden model's sentence score is the cosine of the sentence's summed rows; a multivector
        model's (MaxSim within the sentence) and a relevance correction need every row."""
        return not self.scorer.needs_query_tokens and self.scorer.correction is None

    def score(self, query: QueryDocs, top: int | None) -> SentenceCandidates:
        """Score every sentence of the candidate documents from the token signal only; keep the best few."""
        st = self.settings
        q, docs = query.q, query.docs
        top = top or st.top
        tab = self.caches.tables.table(docs, self.scorer.device)
        # pooled-hidden models: cosine of the sentence's summed in-context token vectors with q;
        # multivector models: MaxSim restricted to the sentence (`Scorer.sentence_scores`)
        pooled = self.scorer.sentence_scores(q, docs, tab, query.tokens)
        lexical = self._bm25(query.text, docs, tab)
        score = pooled
        if st.lexical_first > 0:
            score = pooled + st.lexical_first * torch.from_numpy(lexical).to(pooled)
        eligible = tab.length >= self.min_sentence_rows
        masks = structure_masks(docs)
        if masks is not None:  # headings compete (they become their section's answer), navigation never does
            skip, heading = (m.to(pooled.device)[tab.start] for m in masks)
            eligible = (eligible | heading) & ~skip
        score = torch.where(eligible, score, torch.full_like(score, -math.inf))
        k = min(max(st.rerank_k, top), tab.n)
        best = torch.topk(score, k).indices
        best = best[torch.isfinite(score[best])]
        offsets = np.cumsum([0] + [len(d.starts) for d in docs])
        sdoc = tab.doc[best].cpu().numpy()
        a = tab.start[best].cpu().numpy() - offsets[sdoc]
        b = tab.end[best].cpu().numpy() - offsets[sdoc]
        chars = [(int(docs[d].starts[x]), int(docs[d].ends[y])) for d, x, y in zip(sdoc, a, b, strict=True)]
        texts = [docs[d].chars(c0, c1) for d, (c0, c1) in zip(sdoc, chars, strict=True)]
        cands = SentenceCandidates(sdoc, chars, texts, score[best].cpu().numpy().astype(np.float64), q)
        cands.context = pooled[best].cpu().numpy().astype(np.float64)
        cands.lexical = lexical[best.cpu().numpy()]
        cands.segment_score = query.segment_score
        need = cut_sentences(cands, docs)
        if need:  # a fetched run cut some sentences: finish them from the neighbour segments' text
            complete_cut(cands, docs, self.segment_texts(need), st.boundary)
        if self.stored_vectors is not None:
            self._locate(cands, docs)
        return cands

    @staticmethod
    def _locate(c: SentenceCandidates, docs: list[DocTokens]) -> None:
        """Where the store keeps each candidate's sentence vector: the segment it starts in (one the run
        holds, or the one before when a cut sentence was finished from it)."""
        c.keys, c.segments = [], []
        for i, (c0, c1) in enumerate(c.chars):
            d = docs[int(c.doc[i])]
            c.keys.append((d.doc_id, d.version, int(c0), int(c1)))
            before = c0 < d.char_base
            c.segments.append(
                [d.first_segment - 1] if before else list(range(d.first_segment, d.first_segment + d.n_segments))
            )

    def rerank(self, batch: list[SentenceCandidates]) -> None:
        """Final scores: the re-ranking by sentence vectors, then the length penalty."""
        self._rerank_by_sentence_vectors(batch)
        if self.settings.length_penalty > 0:
            for c in batch:
                words = np.array([len(t.split()) for t in c.texts], dtype=np.float64)
                c.score -= self.settings.length_penalty * np.log(np.maximum(words, 1.0))

    def _rerank_by_sentence_vectors(self, batch: list[SentenceCandidates]) -> None:
        """The sentence vectors of every query's best `rerank_k` candidates, in one batched call; blend cosines."""
        st = self.settings
        if st.rerank_k == 0:
            return
        texts = [t for c in batch for t in c.texts[: st.rerank_k]]
        if not texts:
            return
        embed = self.embed_texts
        if self.stored_vectors is not None:
            where: dict[str, tuple[tuple[str, str, int, int], list[int]]] = {}
            for c in batch:
                assert c.keys is not None and c.segments is not None  # `_locate` ran in `score`
                for i in range(min(st.rerank_k, len(c.texts))):
                    where.setdefault(c.texts[i], (c.keys[i], c.segments[i]))
            embed = partial(self._stored_or_embedded, where)
        vecs = self.caches.vectors.embed(texts, embed)
        i = 0
        for c in batch:
            m = min(st.rerank_k, len(c.texts))
            cos = vecs[i : i + m] @ c.q
            i += m
            context = c.score[:m] if c.context is None else c.context[:m]
            c.sentence_cos = cos.astype(np.float64)
            c.score[:m] = st.rerank_weight * cos + (1 - st.rerank_weight) * context
            if c.lexical is not None and st.lexical_weight > 0:
                c.score[:m] += st.lexical_weight * c.lexical[:m]
            c.score[m:] = -math.inf if m else c.score[m:]  # not re-ranked: below every re-ranked one

    def _stored_or_embedded(
        self, where: dict[str, tuple[tuple[str, str, int, int], list[int]]], texts: list[str]
    ) -> np.ndarray:
        """Sentence vectors of `texts` read from the store in one call; only those it lacks go to the model."""
        assert self.stored_vectors is not None
        need: dict[tuple[str, str], set[int]] = {}
        for t in texts:
            (doc_id, version, _, _), segs = where[t]
            need.setdefault((doc_id, version), set()).update(segs)
        stored = self.stored_vectors({k: sorted(v) for k, v in need.items()})
        missing = [t for t in texts if where[t][0] not in stored]
        fresh = dict(zip(missing, self.embed_texts(missing), strict=True)) if missing else {}
        return np.stack([stored[where[t][0]] if t not in fresh else fresh[t] for t in texts])

    def _bm25(self, query: str, docs: list[DocTokens], tab: SentenceTable) -> np.ndarray:
        """(S,) BM25 of every sentence of the table over the fetched runs' statistics, scaled to [0, 1]."""
        stats = LexicalStats()
        counts = []
        for d in docs:
            if len(d.starts):
                unit = self.caches.lexical.unit(d, self.caches.tables.get(d))
                stats.add(d.key, unit)
                counts += unit.counts
        raw = bm25(query, counts, stats)
        top = float(raw.max()) if len(raw) else 0.0
        return raw / top if top > 0 else raw

    def features(self, state: SentenceCandidates, query: QueryDocs, spans: list[SpanResult]) -> dict[str, float]:
        """`retriever.calibration.answer_features` of the top span."""
        return answer_features(state, spans, query.text)

    def clear_caches(self) -> None:
        """Forget sentence vectors, sentence tables and BM25 statistics."""
        self.caches.vectors.clear()
        self.caches.tables.clear()
        self.caches.lexical.clear()

    def results(self, state: SentenceCandidates, query: QueryDocs, top: int | None) -> list[SpanResult]:
        c, docs = state, query.docs
        top = top or self.settings.top
        order = np.argsort(-c.score, kind="stable")
        out: list[SpanResult] = []
        seen: set[tuple[int, int, int]] = set()
        for i in order:
            if len(out) == top:
                break
            if not np.isfinite(c.score[i]):
                continue
            cs, ce = c.chars[i]
            d, text = docs[int(c.doc[i])], c.texts[i]
            if d.layout is not None:  # a heading becomes its section's answer; navigation is never returned
                answer = answer_range(d.layout, int(cs), int(ce), d.text, d.char_base)
                if answer is None:
                    continue
                if answer != (cs, ce):
                    (cs, ce), text = answer, d.chars(*answer)
            if (int(c.doc[i]), cs, ce) in seen:  # two cut pieces of one sentence, or two headings of one section
                continue
            seen.add((int(c.doc[i]), cs, ce))
            out.append(span_result(d, int(cs), int(ce), float(c.score[i]), text))
        return out
