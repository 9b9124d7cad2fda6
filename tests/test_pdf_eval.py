"""The PDF benchmark's measures (retriever/evaluation/pdf_manuals.py), as the benchmark's score.py defines them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retriever.evaluation.pdf_manuals import (
    PdfQuery,
    PdfSpan,
    is_pdf_benchmark,
    load_queries,
    normalize_words,
    score,
    score_query,
)
from schemas.errors import InputError

GOLD = (
    "Compile your program with -g to include debugging information so that Memcheck's error messages "
    "include exact line numbers. Using -O0 is also a good idea."
)
Q = PdfQuery("q1", "Preparing your program", "heading", "valgrind_manual.pdf", GOLD, (5,))


def test_normalisation_drops_markup_punctuation_and_articles() -> None:
    assert normalize_words("**The** [link](http://x) <br>Memcheck's -O0!") == ["link", "memcheck", "s", "o0"]
    assert normalize_words("The a an", drop_articles=False) == ["the", "a", "an"]


def test_hit_by_twelve_word_run_even_with_low_f1() -> None:
    run = "Compile your program with -g to include debugging information so that Memcheck's error"
    long_span = run + " " + " ".join(f"filler{i}" for i in range(200))
    m = score_query(Q, [PdfSpan("docs/valgrind_manual.pdf", long_span, (5,))])
    assert m["hit@1"] == 1.0 and m["wF1"] < 0.3 and m["page@1"] == 1.0


def test_heading_alone_is_a_miss_and_wrong_document_scores_nothing() -> None:
    heading = PdfSpan("valgrind_manual", "2. Preparing your program", (5,))
    m = score_query(Q, [heading])
    assert m["hit@1"] == 0.0 and m["page@1"] == 1.0 and m["words"] == 4.0
    wrong = score_query(Q, [PdfSpan("nettle.pdf", GOLD, (5,))])
    assert wrong == {
        "hit@1": 0.0,
        "hit@5": 0.0,
        "page@1": 0.0,
        "page@5": 0.0,
        "wF1": 0.0,
        "words": float(len(GOLD.split())),
    }


def test_hit_at_5_and_means() -> None:
    spans = [PdfSpan("valgrind_manual.pdf", "unrelated words here", (9,))] * 4 + [
        PdfSpan("valgrind_manual.pdf", GOLD, (5,))
    ]
    m = score_query(Q, spans)
    assert m["hit@1"] == 0.0 and m["hit@5"] == 1.0
    agg = score([Q, Q], [spans, []])
    assert agg.n == 2 and agg.means["hit@5"] == 0.5 and agg.means["words"] == 1.5


def test_format_detection_and_bad_query_lines(tmp_path: Path) -> None:
    assert not is_pdf_benchmark(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.pdf").write_bytes(b"%PDF")
    (tmp_path / "queries.jsonl").write_text(json.dumps({"query_id": "x", "query": "q", "doc": "a.pdf"}) + "\n")
    assert is_pdf_benchmark(tmp_path)
    (tmp_path / "corpus.jsonl").write_text("")
    assert not is_pdf_benchmark(tmp_path)
    with pytest.raises(InputError, match=r"queries.jsonl:1.*gold_text"):
        load_queries(tmp_path)
