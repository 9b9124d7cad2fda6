"""The reading stage: after the span method, a cross-encoder reads each candidate with the query.

For every query of a batch:

1. the span method's best `reader_k` spans become answer units (`retriever.reader.units`): whole
   sentences, table rows with their header row, list items with their lead-in; a lead-in also offers
   the rows / items it introduces;
2. the cross-encoder scores each query's (query, unit) pairs in calls of their own (a query's spans
   must not depend on its batch mates), a unit read with its section title and lead (`Unit.passage`);
3. units are ranked by reader logit - `reader_length_penalty` x ln(words) + `reader_source_weight` x
   the span method's score (z-scored over the query's units, in the spread of the reader's scores);
4. the top unit is joined with the sentence / row before or after it when the pair ranks at least
   `reader_join_margin` above the unit alone (the answer needs both);
5. the top span's features (reader logit, its margin over the next unit, the span method's score)
   go to the calibration, which turns them into `confidence`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence

import numpy as np

from retriever.calibration import Calibration
from retriever.lexical import coverage
from retriever.methods.base import MethodOutput, QueryDocs, span_result
from retriever.reader.model import CrossEncoder
from retriever.reader.units import SegmentTexts, Unit, UnitBuilder, structure_of
from schemas.models import SpanLead, SpanResult
from schemas.settings import ReaderSettings

FEATURES = ("reader", "reader_margin", "source")
HEADING_COVERAGE = 0.8  # share of terms a query and a section title must share (each way) to be a lookup of it
# a question asks (ends in "?" or opens with a question word); anything else is a lookup (a heading, a
# name), whose answer is the section under the matching heading: the span method finds that, the reader
# (trained on questions) reads every unit of the section as relevant (pdf-manuals-dev, docs/quality.md, The reader)
_QUESTION = re.compile(
    r"^\W*(what|which|who|whom|whose|when|where|why|how|is|are|am|was|were|can|could|do|does|did|should|"
    r"would|will|has|have|had)\b",
    re.IGNORECASE,
)


def is_question(text: str) -> bool:
    """Whether a query asks a question, rather than looking up a heading or a name."""
    t = text.strip()
    return t.endswith("?") or bool(_QUESTION.match(t))


class Reader:
    """Re-ranks a span method's candidates by reading them; safe to share between threads.

    Args:
        model: the cross-encoder.
        settings: the reader settings (k, weights, batch).
        segment_texts: reads stored segments' text, for units that reach past a fetched run.
        calibration: turns the top span's features into `confidence` (None: none is given).

    Example:
        >>> reader = Reader(load_cross_encoder(DEFAULT_READER), settings.reader, store.segment_texts)  # doctest: +SKIP
        >>> reader.read(batch, method.find_spans(batch, reader.candidates(top)), top)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: CrossEncoder,
        settings: ReaderSettings,
        segment_texts: SegmentTexts | None,
        calibration: Calibration | None = None,
    ) -> None:
        self.model = model
        self.settings = settings
        self.segment_texts = segment_texts
        self.calibration = calibration

    def candidates(self, top: int) -> int:
        """How many spans the span method must give for `top` answers: `reader_k`, at least `top`."""
        return max(self.settings.reader_k, top)

    def read(self, batch: Sequence[QueryDocs], found: list[MethodOutput], top: int) -> None:
        """Re-rank every query's spans in place; its features become the reader's; times "read".

        Args:
            batch: the queries with their candidate documents, as the span method got them.
            found: the span method's output for each (at least `candidates(top)` spans where it had them).
            top: spans kept per query.
        """
        t0 = time.perf_counter()
        st = self.settings
        builders = [UnitBuilder(q.docs, self.segment_texts) for q in batch]
        units: list[list[Unit]] = []
        for q, out, b in zip(batch, found, builders, strict=True):
            read = self.reads(q.text) and not (st.reader_queries == "questions" and self._heading_lookup(q, out, b))
            units.append(self._units(q, out.spans[: st.reader_k], b) if read else [])
        titles = st.reader_titles
        for q, us in zip(batch, units, strict=True):
            if not us:
                continue
            # each query's pairs in calls of their own: the int8 graph quantises activations per call, so
            # pairs scored beside another query's would move with it (a query's spans must not depend on
            # what it was batched with)
            logits = self.model.score([(q.text, u.passage(titles)) for u in us], st.reader_batch)
            for u, z in zip(us, logits, strict=True):
                u.extra["logit"] = float(z)
            self._blend(us)
            us.sort(key=lambda u: -self._final(u))
        self._join(batch, builders, units)
        live = sum(1 for q in batch if q.docs)
        per = (time.perf_counter() - t0) * 1e3 / max(live, 1)
        for q, out, us in zip(batch, found, units, strict=True):
            if not us:  # not read (no units, or not a question under reader_queries): the method's own top
                out.spans = out.spans[:top]
                continue
            out.spans = self._spans(q, us, top)
            out.features = out.features | self._features(us)  # the span method's own stay (query-level cues)
            out.timings_ms["read"] = per

    def reads(self, query: str) -> bool:
        """Whether the reader reads this query's candidates (`reader_queries`); otherwise the span method's stand."""
        return bool(query) and (self.settings.reader_queries == "all" or is_question(query))

    @staticmethod
    def _heading_lookup(q: QueryDocs, out: MethodOutput, b: UnitBuilder) -> bool:
        """Whether the query repeats the title of the section the span method answers from (a FAQ's question
        is its heading): the section under that heading is the answer, whatever the reader makes of it.
        """
        if not out.spans:
            return False
        top = out.spans[0]
        doc = b.run_of(top.doc_id, top.start, top.end)
        layout = structure_of(q.docs[doc]) if doc is not None else None
        title = UnitBuilder.title_at(layout, top.start) if layout is not None else None
        # both ways: a one-word title ("Tools") inside a longer question is no lookup of it
        t = title or ""
        return bool(t) and min(coverage(t, q.text), coverage(q.text, t)) >= HEADING_COVERAGE

    def _reading(self, u: Unit) -> float:
        # the reader favours longer passages (more chances to hold the answer): a length penalty keeps
        # answers as short as the sentences they are made of
        words = max(len(u.text.split()), 1)
        return u.extra["logit"] - self.settings.reader_length_penalty * math.log(words)

    def _blend(self, us: list[Unit]) -> None:
        """Give each unit its share of the span method's score, in the reader's units.

        The span method's score is z-scored over the query's units and scaled by the spread of the
        reader's own scores, so `reader_source_weight` 1 lets one standard deviation of the span
        method's order weigh as much as one of the reader's, whatever either's scale.
        """
        w = self.settings.reader_source_weight
        if not us:
            return
        src = np.array([u.source for u in us], dtype=np.float64)
        r = np.array([self._reading(u) for u in us], dtype=np.float64)
        mu, sd, spread = float(src.mean()), float(src.std()), float(r.std())
        for u in us:
            u.extra["blend"] = 0.0 if w == 0.0 or sd == 0.0 else w * spread * (u.source - mu) / sd

    def _final(self, u: Unit) -> float:
        return self._reading(u) + u.extra.get("blend", 0.0)

    def _units(self, q: QueryDocs, spans: list[SpanResult], b: UnitBuilder) -> list[Unit]:
        seen: dict[tuple[int, int, int], Unit] = {}
        for rank, s in enumerate(spans):
            doc = b.run_of(s.doc_id, s.start, s.end)
            if doc is None:
                continue
            for u in b.units(doc, s.start, s.end, s.text, s.score, rank):
                if u.key not in seen and u.text.strip():
                    seen[u.key] = u
        return list(seen.values())

    def _join(self, batch: Sequence[QueryDocs], builders: list[UnitBuilder], units: list[list[Unit]]) -> None:
        """Join each query's top unit with a neighbour when the reader says the pair answers better."""
        margin = self.settings.reader_join_margin
        if margin is None:
            return
        tries: list[tuple[int, Unit]] = []
        for qi, (b, us) in enumerate(zip(builders, units, strict=True)):
            if not us:
                continue
            for side in ("before", "after"):
                j = b.join(us[0], side)
                if j is not None:
                    tries.append((qi, j))
        if not tries:
            return
        titles = self.settings.reader_titles
        logits: list[float] = []
        for qi in dict.fromkeys(qi for qi, _ in tries):  # per query, as in `read`
            mine = [j for q, j in tries if q == qi]
            logits += [
                float(z)
                for z in self.model.score(
                    [(batch[qi].text, j.passage(titles)) for j in mine], self.settings.reader_batch
                )
            ]
        best: dict[int, Unit] = {}
        for (qi, j), z in zip(tries, logits, strict=True):
            j.extra["logit"] = float(z)
            j.extra["blend"] = units[qi][0].extra.get("blend", 0.0)  # a joined unit keeps its part's share
            # in the ranking's terms (length penalty included): the pair must beat the unit alone by `margin`
            if self._final(j) >= self._final(units[qi][0]) + margin and (
                qi not in best or self._final(j) > self._final(best[qi])
            ):
                best[qi] = j
        for qi, j in best.items():
            units[qi].insert(0, j)

    def _spans(self, q: QueryDocs, us: list[Unit], top: int) -> list[SpanResult]:
        out: list[SpanResult] = []
        taken: list[tuple[int, int, int]] = []
        for u in us:
            if len(out) == top:
                break
            if any(d == u.doc and a < u.end and u.start < b for d, a, b in taken):
                continue  # a unit inside one already returned (a joined unit and its parts)
            taken.append(u.key)
            s = span_result(q.docs[u.doc], u.start, u.end, self._final(u), u.text)
            if u.lead is not None:
                s.lead = SpanLead(start=u.lead[0], end=u.lead[1], text=u.lead[2])
            out.append(s)
        return out

    def _features(self, us: list[Unit]) -> dict[str, float]:
        top = us[0]
        others = [u.extra["logit"] for u in us[1:] if u.doc != top.doc or u.end <= top.start or top.end <= u.start]
        second = max(others) if others else top.extra["logit"] - 10.0
        return {
            "reader": top.extra["logit"],
            "reader_margin": top.extra["logit"] - second,
            # the best logit of any unit read: "is the answer anywhere here", whichever unit ranks first
            "reader_max": float(max(u.extra["logit"] for u in us)),
            "source": top.source,
            "reader_max_source": float(np.max([u.source for u in us])),
        }
