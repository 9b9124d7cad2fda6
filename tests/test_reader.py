"""The reading stage: the packaged cross-encoder (int8 ONNX, real tokenizer), answer units over real
structure (Markdown tables and lists through the real reader), a real Edge store and MiniLM."""

from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from indexer.boundaries import sentence_ranges
from indexer.embedders import HFTokenEmbedder
from indexer.reading import load_file
from retriever.evaluation.pdf_manuals import index_documents
from retriever.reader import (
    DEFAULT_READER,
    HFCrossEncoder,
    OnnxCrossEncoder,
    load_cross_encoder,
    packaged_reader_path,
    reader_backend,
)
from retriever.reader.stage import is_question
from retriever.reader.units import is_fragment, whole_sentences
from retriever.search import Retriever
from schemas.errors import ModelLoadError
from schemas.settings import Settings

MANUAL = """# Probability distributions

R provides functions for many probability distributions.

The following table lists each distribution with its R name and its additional arguments.

| Distribution | R name | Additional arguments |
|---|---|---|
| beta | beta | shape1, shape2, ncp |
| binomial | binom | size, prob |
| hypergeometric | hyper | m, n, k |
| normal | norm | mean, sd |
| Poisson | pois | lambda |

Prefix the name with d for the density and p for the cumulative distribution function.

# Getting RStudio

RStudio Desktop is an editor for R that many people use, and it can be downloaded from
www.rstudio.com/). It runs on Windows, macOS and Linux.

# Tools

Valgrind ships the following tools for finding errors:

- Memcheck detects memory errors such as reading freed memory.
- Cachegrind simulates the processor caches to profile a program.
- Helgrind detects data races between threads.
"""


@pytest.fixture(scope="module")
def reader() -> OnnxCrossEncoder:
    model = load_cross_encoder(DEFAULT_READER, threads=1)
    assert isinstance(model, OnnxCrossEncoder)
    return model


@pytest.fixture
def manual_settings(tmp_path: Path, minilm: HFTokenEmbedder) -> Settings:
    path = tmp_path / "manual.md"
    path.write_text(MANUAL, encoding="utf-8")
    s = Settings(store_path=tmp_path / "store", device="cpu", reader_model=DEFAULT_READER, reader_threads=1)
    assert index_documents([load_file(path, "manual.md")], s, minilm) == 1
    return s


def test_packaged_reader_is_found_by_name_and_runs_on_onnx(reader: OnnxCrossEncoder) -> None:
    folder = packaged_reader_path(DEFAULT_READER)
    assert folder is not None and (folder / "model.onnx").is_file()
    assert packaged_reader_path("ms-marco-MiniLM-L-12-v2") == folder
    assert reader_backend(folder) == "onnx" and reader.backend == "onnx"
    q = "Which tool detects data races between threads?"
    z = reader.score(
        [
            (q, "Helgrind detects data races between threads."),
            (q, "Cachegrind simulates the processor caches."),
            (q, "The hypergeometric distribution takes m, n and k."),
        ]
    )
    assert z.shape == (3,) and z[0] > z[1] and z[0] > z[2]
    # the int8 graph quantises activations per batch, so a pair's logit moves a little with its batch mates
    alone = reader.score([(q, "Helgrind detects data races between threads.")])
    np.testing.assert_allclose(alone, z[:1], atol=0.3)
    assert reader.score([]).shape == (0,)


def test_a_folder_without_model_onnx_runs_on_transformers(tmp_path: Path) -> None:
    """A tiny random BERT classifier saved as a transformers folder: the folder, not a probe, picks the backend."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    packaged = packaged_reader_path(DEFAULT_READER)
    assert packaged is not None
    tok = BertTokenizerFast(vocab_file=str(packaged / "vocab.txt"))
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
    )
    folder = tmp_path / "tiny-ce"
    BertForSequenceClassification(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    model = load_cross_encoder(str(folder), max_tokens=64, device="cpu")
    assert isinstance(model, HFCrossEncoder) and model.backend == "transformers" == reader_backend(folder)
    z = model.score([("a question", "a passage"), ("another question", "a longer passage " * 40)])
    assert z.shape == (2,) and np.isfinite(z).all()


def test_missing_reader_model_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="CHUNKLESS_READER_MODEL"):
        load_cross_encoder(str(tmp_path / "nowhere"))
    assert Settings(reader_model="none").reader.reader_model is None
    assert Settings(reader_model="").reader.reader_model is None


def test_fragments_join_their_sentence_and_urls_never_stand_alone() -> None:
    text = "It can be downloaded from\nwww.rstudio.com/). It runs on Windows, macOS and Linux."
    raw = [text[a:b] for a, b in sentence_ranges(text)]
    assert "www.rstudio.com/)." in raw  # the splitter alone leaves the URL as a "sentence"
    units = [text[a:b] for a, b in whole_sentences(text, 0)]
    assert units == ["It can be downloaded from\nwww.rstudio.com/).", "It runs on Windows, macOS and Linux."]
    assert is_fragment("www.rstudio.com/).") and is_fragment("(see 3.2)") and not is_fragment(units[1])


def test_a_table_question_gets_the_answering_row_with_its_header(manual_settings: Settings, minilm) -> None:
    with Retriever(manual_settings, embedder=minilm) as r:
        resp = r.search("What are the additional arguments of the hypergeometric distribution?", top=3)
    top = resp.spans[0]
    assert top.text == "hypergeometric; hyper; m, n, k", top.text  # the row, not the table, not the lead-in
    assert top.lead is not None and top.lead.text == "Distribution; R name; Additional arguments"
    assert MANUAL.count("hypergeometric") == 1
    assert resp.timings_ms["read"] > 0


def test_a_list_question_gets_the_item_with_its_lead_in(manual_settings: Settings, minilm) -> None:
    with Retriever(manual_settings, embedder=minilm) as r:
        top = r.search("Which Valgrind tool finds data races?", top=3).spans[0]
    assert top.text == "Helgrind detects data races between threads."
    assert top.lead is not None and top.lead.text == "Valgrind ships the following tools for finding errors:"


def test_spans_are_whole_sentences_and_never_a_url_fragment(manual_settings: Settings, minilm) -> None:
    """The threshold method cuts spans anywhere; read, every span starts and ends on a sentence (or row) edge."""
    s = manual_settings.updated(span_method="threshold", threshold=0.0, min_span_size=2, max_extension=0)
    doc_text = load_file(Path(s.store.store_path).parent / "manual.md", "manual.md").text
    edges = {a for a, _ in sentence_ranges(doc_text)} | {b for _, b in sentence_ranges(doc_text)}
    with Retriever(s, embedder=minilm) as r:
        resp = r.search("Where can RStudio Desktop be downloaded from?", top=5)
    assert resp.spans
    for sp in resp.spans:
        assert sp.start in edges and sp.end in edges, sp.text
        assert not is_fragment(sp.text), sp.text
    assert any("www.rstudio.com" in sp.text and "downloaded" in sp.text for sp in resp.spans)


def test_reader_off_is_the_span_method_alone(manual_settings: Settings, minilm) -> None:
    q = "What are the additional arguments of the hypergeometric distribution?"
    with Retriever(manual_settings.updated(reader_model="none"), embedder=minilm) as r:
        assert r.reader is None
        resp = r.search(q, top=5)
    assert "read" not in resp.timings_ms
    # the span method's table rows come with their header row too; other spans lead with nothing
    header = "Distribution; R name; Additional arguments"
    rows = [sp for sp in resp.spans if sp.text.count(";") == 2 and sp.text != header]
    assert rows, [sp.text for sp in resp.spans]
    for sp in resp.spans:
        if sp in rows:
            assert sp.lead is not None and sp.lead.text == header
        else:
            assert sp.lead is None, sp.text


def test_confidence_abstention_in_json_and_terminal(manual_settings: Settings, minilm) -> None:
    from retriever.cli.printing import print_search

    with Retriever(manual_settings.updated(abstain=0.999), embedder=minilm) as r:
        if r.calibration is None:
            pytest.skip("no reader calibration shipped")
        resp = r.search("What port does the RStudio Server listen on by default?")
    assert resp.confidence is not None and 0.0 <= resp.confidence < 0.999
    assert resp.abstained and resp.threshold == 0.999 and resp.spans == []
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        print_search(resp, as_json=True)
        print_search(resp, as_json=False)
    body = json.loads(out.getvalue().splitlines()[0])
    assert body["abstained"] is True and body["threshold"] == 0.999 and body["spans"] == []
    assert body["confidence"] == pytest.approx(resp.confidence)
    assert "no answer above confidence 1.00" in err.getvalue()


def test_answerable_beats_unanswerable_confidence(manual_settings: Settings, minilm) -> None:
    with Retriever(manual_settings, embedder=minilm) as r:
        if r.calibration is None:
            pytest.skip("no reader calibration shipped")
        yes = r.search("Which Valgrind tool detects memory errors?").confidence
        no = r.search("How much does an RStudio Server licence cost per year?").confidence
    assert yes is not None and no is not None and yes > no


def test_questions_are_told_from_heading_lookups() -> None:
    for q in (
        "What port does RStudio Server listen on?",
        "how tools work",
        "Does Valgrind handle Java?",
        "The stack traces aren't helpful. How can I improve them?",
        "R name of the beta distribution?",
    ):
        assert is_question(q), q
    for q in ("Preparing your program", "Probability distributions", "HMAC-SHA256", "Whatever happened"):
        assert not is_question(q), q


def test_heading_lookups_keep_the_span_method_when_the_reader_reads_questions_only(
    manual_settings: Settings, minilm
) -> None:
    q = "Getting RStudio"
    with Retriever(manual_settings.updated(reader_model="none"), embedder=minilm) as r:
        alone = r.search(q, top=3)
    with Retriever(manual_settings.updated(reader_queries="questions"), embedder=minilm) as r:
        gated = r.search(q, top=3)
        asked = r.search("Where can RStudio Desktop be downloaded from?", top=3)
        titled = r.search("Getting RStudio?", top=3)  # a question that is its section's title
    assert [sp.text for sp in gated.spans] == [sp.text for sp in alone.spans]
    assert "read" not in gated.timings_ms and "read" in asked.timings_ms
    assert titled.spans and titled.spans[0].section and "Getting RStudio" in titled.spans[0].section
    assert "read" not in titled.timings_ms
    assert gated.confidence is not None  # the span method's calibration answers for what the reader skipped


def test_a_heavy_source_weight_keeps_the_span_methods_top_candidate(manual_settings: Settings, minilm) -> None:
    q = "Which Valgrind tool simulates the processor caches?"
    with Retriever(manual_settings.updated(reader_model="none"), embedder=minilm) as r:
        first = r.search(q, top=1).spans[0]
    with Retriever(
        manual_settings.updated(reader_source_weight=1000.0, reader_length_penalty=0.0), embedder=minilm
    ) as r:
        top = r.search(q, top=1).spans[0]
    assert top.start <= first.start < top.end or first.start <= top.start < first.end, (top.text, first.text)


def test_packaged_model_is_not_a_python_import(tmp_path: Path) -> None:
    """The model folder is located with importlib's spec only: copying it elsewhere works the same."""
    src = packaged_reader_path(DEFAULT_READER)
    assert src is not None
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    assert reader_backend(dst) == "onnx"
    assert isinstance(load_cross_encoder(str(dst), threads=1), OnnxCrossEncoder)
