"""`chunkless eval` end to end on a tiny synthetic benchmark, and the measures on hand-made cases."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from indexer.boundaries import sentence_ranges
from indexer.embedders import HFTokenEmbedder
from retriever.cli import main
from retriever.evaluation import (
    BenchQuery,
    Hit,
    auc,
    evaluate,
    evidence_f1,
    hit_at,
    load_benchmark,
    sentences,
    token_chunks,
    words,
)
from schemas.settings import Settings
from tests.support import DOCS, QUESTIONS, write_bench


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bench(tmp_path_factory.mktemp("bench") / "tiny")


def test_eval_cli_prints_table_and_writes_results(
    bench_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "results.jsonl"
    assert main(["eval", str(bench_dir), "--results", str(out_file)]) == 0
    table = capsys.readouterr().out
    for name in ("chunkless", "64-token chunks", "128-token chunks", "256-token chunks", "sentences"):
        assert f"| {name} |" in table
    assert "AUC" in table  # the bench has an unanswerable question
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["query_id"] for r in rows] == [q[0] for q in QUESTIONS]
    for r in rows:
        assert set(r) == {"query_id", "spans"} and r["spans"]
        scores = [s["score"] for s in r["spans"]]
        assert scores == sorted(scores, reverse=True)
        for s in r["spans"]:
            assert set(s) == {"doc_id", "start", "end", "text", "score"}
            assert DOCS[s["doc_id"]][s["start"] : s["end"]] == s["text"]  # offsets index the benchmark text


def test_named_store_is_reused(bench_dir: Path, tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    bench = load_benchmark(bench_dir)
    s = Settings(device="cpu")
    logs: list[str] = []
    first = evaluate(bench, s, minilm, store_dir=tmp_path / "st", baselines=False, log=logs.append)
    again = evaluate(bench, s, minilm, store_dir=tmp_path / "st", baselines=False, log=logs.append)
    assert logs[0].startswith("indexed 3 documents") and any(
        m.startswith("indexed 0 documents (3 reused)") for m in logs
    )
    assert first.results["chunkless"] == again.results["chunkless"]
    assert first.rows["chunkless"].hit1 >= 0.5  # the tiny questions are easy for MiniLM


def test_baselines_tile_documents(bench_dir: Path, minilm: HFTokenEmbedder) -> None:
    bench = load_benchmark(bench_dir)
    chunks = token_chunks(bench, minilm, 16)
    per_doc = [c for c in chunks if c[0] == "bread"]
    assert len(per_doc) > 2 and per_doc[0][1] == 0 and per_doc[-1][2] == len(DOCS["bread"])
    assert all(a[2] <= b[1] for a, b in itertools.pairwise(per_doc))  # no overlap
    sents = [DOCS[d][a:b] for d, a, b in sentences(bench) if d == "volcano"]
    assert sents[1].startswith("Mt. Etna") and sents[1].endswith("towns.")  # "Mt." does not end a sentence


def test_sentence_ranges_trim_and_keep_abbreviations() -> None:
    text = "  Dr. Smith paid $3.50 for it. Then he left!\n\nA new paragraph"
    got = [text[a:b] for a, b in sentence_ranges(text)]
    assert got == ["Dr. Smith paid $3.50 for it.", "Then he left!", "A new paragraph"]


def q(answers: list[tuple[int, int]], evidence: tuple[int, int] | None = (10, 30)) -> BenchQuery:
    return BenchQuery("x", "?", "d", answers, evidence)


def test_hit_at_needs_the_whole_answer_in_the_right_doc() -> None:
    query = q([(12, 15)])
    inside, partial, other = Hit("d", 10, 20, "", 1), Hit("d", 13, 20, "", 1), Hit("e", 0, 99, "", 1)
    assert hit_at(query, [inside], 1)
    assert not hit_at(query, [partial], 1)
    assert not hit_at(query, [other, inside], 1) and hit_at(query, [other, inside], 2)


def test_evidence_f1_and_words() -> None:
    query = q([(12, 15)], (10, 30))
    assert evidence_f1(query, [Hit("d", 10, 30, "", 1)]) == 1.0
    assert evidence_f1(query, [Hit("d", 20, 40, "", 1)]) == pytest.approx(0.5)  # p = r = 1/2
    assert evidence_f1(query, [Hit("e", 10, 30, "", 1)]) == 0.0 and evidence_f1(query, []) == 0.0
    assert words([Hit("d", 0, 1, " one two\nthree ", 1)]) == 3 and words([]) == 0


def test_auc() -> None:
    assert auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auc([0.1], [0.9]) == 0.0
    assert auc([0.5, 0.5], [0.5]) == 0.5  # ties count half
    assert auc([0.5], []) is None


def test_storage_report_runs_from_the_package(
    bench_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sr"
    argv = [str(bench_dir), "--out", str(out), "--configs", "int8", "--no-chunks", "--sample", "3"]
    assert main(["storage-report", *argv, "--latency-queries", "1", "--cache-dir", str(tmp_path / "c")]) == 0
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("config,") and len(rows) == 2 and rows[1].startswith("int8,")
    assert "| int8 |" in (out / "table.md").read_text() and (out / "quality_vs_bytes.png").is_file()


def test_storage_report_names_a_bad_layout(bench_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(bench_dir), "--out", str(tmp_path / "sr"), "--configs", "int8,int8-pool9"]
    assert main(["storage-report", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("chunkless: error: --configs int8-pool9: invalid setting storage_pool") and "=9" in err
