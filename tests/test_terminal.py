"""What the terminal says, and when: issue 21's smaller items (broken links, long queries, cut spans, closed pipes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from indexer.discover import discover
from indexer.embedders import HFTokenEmbedder
from indexer.ingest import ingest
from retriever.cli import main
from retriever.cli.printing import SPAN_CHARS, print_search
from retriever.serve.errors import ApiError
from retriever.serve.routers.search import check_query as service_check
from schemas.errors import QueryError
from schemas.models import SearchResponse, SpanResult
from schemas.settings import Settings
from tests.support import REPO

BROKEN = "broken symlink; fix or remove it"


def test_a_dangling_link_inside_a_folder_is_reported(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("A real note.")
    (folder / "gone.txt").symlink_to(tmp_path / "deleted.txt")  # its target does not exist
    found = discover([folder])
    assert [f.path.name for f in found.files] == ["a.txt"]
    assert [(f.path, f.reason) for f in found.failures] == [(str(folder / "gone.txt"), BROKEN)]
    # a folder holding nothing but the broken link: that link is the reason, once (not also "the folder is empty")
    (folder / "a.txt").unlink()
    found = discover([folder])
    assert not found.files
    assert [(f.path, f.reason) for f in found.failures] == [(str(folder / "gone.txt"), BROKEN)]


@pytest.mark.parametrize(("limit", "length"), [(None, 100_000), ("100", 101)])
def test_the_cli_refuses_an_over_long_query_as_the_service_does(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    limit: str | None,
    length: int,
) -> None:
    if limit is not None:
        monkeypatch.setenv("CHUNKLESS_MAX_QUERY_CHARS", limit)
    query = "x" * length
    # no store there: the query is refused before anything is opened or loaded
    assert main(["search", query, "--store", str(tmp_path / "none")]) == QueryError.exit_code
    err = capsys.readouterr().err.strip()
    with pytest.raises(ApiError) as refused:
        service_check(query, "query", Settings().serve)
    assert refused.value.status == 422 and refused.value.field == "query"
    assert err == f"chunkless: error: {refused.value.message}"
    max_chars = Settings().serve.max_query_chars
    assert refused.value.message == f"query is {length} characters, over max_query_chars={max_chars}; shorten it"


def _span(text: str) -> SpanResult:
    return SpanResult(doc_id="d", source="/d.txt", start=0, end=len(text), text=text, score=0.5, pages=[1])


def test_the_terminal_says_where_it_cuts_a_span(capsys: pytest.CaptureFixture[str]) -> None:
    long_text = " ".join(f"word{i}" for i in range(400))  # 2,689 characters
    print_search(SearchResponse(query="q", spans=[_span("A short span."), _span(long_text)]), as_json=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "    A short span."  # whole: no note
    shown = lines[3]
    assert shown.startswith("    " + long_text[:SPAN_CHARS] + "…")
    assert shown.endswith(f"[cut at {SPAN_CHARS} of {len(long_text)} characters; --json prints it whole]")
    print_search(SearchResponse(query="q", spans=[_span(long_text)]), as_json=True)
    assert json.loads(capsys.readouterr().out)["spans"][0]["text"] == long_text


def test_a_closed_output_pipe_ends_a_search_quietly(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "bread.txt").write_text("Yeast makes the dough rise. Bread is baked in a hot oven for forty minutes.")
    ingest([corpus], Settings(store_path=tmp_path / "store", device="cpu"), embedder=minilm)
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head -c 300` that has already gone: every write meets a closed pipe
    try:
        code = "import sys; from retriever.cli import main; sys.exit(main(sys.argv[1:]))"
        out = subprocess.run(
            [sys.executable, "-c", code, "search", "What makes the dough rise?", "--json", "--store",
             str(tmp_path / "store")],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # no BrokenPipeError, no "this is a bug", no "Exception ignored" at exit
