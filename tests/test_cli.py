"""The chunkless command end to end on the bundled demo corpus, on a real Edge store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from retriever.cli import main
from tests.conftest import DEMO


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo corpus plus bad files, ingested once."""
    root = tmp_path_factory.mktemp("cli")
    corpus = root / "corpus"
    shutil.copytree(DEMO, corpus)
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.7 truncated")
    (corpus / "empty.txt").write_text("")
    store = root / "store"
    assert main(["ingest", str(corpus), "--store", str(store)]) == 1  # non-zero: two files failed
    return store


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_ingest_keeps_good_files_and_names_bad_ones(demo_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stats = run_json(capsys, "stats", "--store", str(demo_store), "--json")
    assert stats["documents"] == 3 and stats["tokens"] > 3000 and stats["bytes_per_token"] > 384 * 4


def test_search_json_format(demo_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(
        capsys,
        "search",
        "How does a steam engine turn heat into mechanical work?",
        "--json",
        "--store",
        str(demo_store),
    )
    assert out["query"].startswith("How does a steam engine")
    assert out["spans"], "expected at least one span for an on-topic query"
    top = out["spans"][0]
    assert set(top) == {"doc_id", "source", "start", "end", "text", "score", "pages", "page_labels", "section"}
    assert top["doc_id"] == "corpus/steam_engine.pdf" and top["pages"] and min(top["pages"]) >= 1
    scores = [s["score"] for s in out["spans"]]
    assert scores == sorted(scores, reverse=True)


def test_reingest_is_skipped_and_failures_reported(
    demo_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "r.json"
    assert main(["ingest", str(DEMO), "--store", str(demo_store), "--report", str(report)]) == 0
    # DEMO is named "corpus" too, so its doc_ids are the stored ones: nothing to embed again
    r = json.loads(report.read_text())
    assert r["documents"] == 0 and r["skipped_unchanged"] == 3 and r["failures"] == []


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["search", "anything"], "no collection 'chunkless'"),
        (["search", "  ", "--store", "{store}"], "query is empty"),
        (["stats", "--store", "{missing}"], "run 'chunkless ingest"),
        (["delete", "nope.txt", "--store", "{store}"], "no document 'nope.txt'"),
        (["ingest", "{missing}/x.txt", "--store", "{store}"], "does not exist"),
    ],
)
def test_errors_are_one_line_and_say_what_to_do(
    demo_store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    needle: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = [a.format(store=demo_store, missing=tmp_path / "missing") for a in argv]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert needle in err


def test_delete_removes_a_document(demo_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "copy"
    shutil.copytree(demo_store, store)
    assert main(["delete", "corpus/force.txt", "--store", str(store)]) == 0
    assert run_json(capsys, "stats", "--store", str(store), "--json")["documents"] == 2
