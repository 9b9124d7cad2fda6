"""The chunkless command end to end on the bundled demo corpus, on a real Edge store."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from retriever.cli import EXIT_BUG, build_parser, main
from retriever.cli.flags import settings_of
from retriever.cli.printing import terminal_safe
from schemas.errors import EXIT_FILES_FAILED, SettingsError, StoreBusyError, StoreError
from tests.support import DEMO, REPO


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo corpus plus bad files, ingested once."""
    root = tmp_path_factory.mktemp("cli")
    corpus = root / "corpus"
    shutil.copytree(DEMO, corpus)
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.7 truncated")
    (corpus / "empty.txt").write_text("")
    store = root / "store"
    # ids relative to root ("corpus/force.txt"), so the bundled DEMO (also "corpus") maps to the same ids
    args = ["ingest", str(corpus), "--store", str(store), "--id-from", str(root)]
    assert main(args) == EXIT_FILES_FAILED  # two files failed
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
    assert set(top) == {"doc_id", "source", "start", "end", "text", "score", "pages", "page_labels", "section", "lead"}
    assert set(out) == {"query", "confidence", "abstained", "threshold", "spans"} and out["abstained"] is False
    assert top["doc_id"] == "corpus/steam_engine.pdf" and top["pages"] and min(top["pages"]) >= 1
    scores = [s["score"] for s in out["spans"]]
    assert scores == sorted(scores, reverse=True)


def test_reingest_is_skipped_and_failures_reported(
    demo_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "r.json"
    argv = ["ingest", str(DEMO), "--store", str(demo_store), "--report", str(report), "--id-from", str(DEMO.parent)]
    assert main(argv) == 0
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


QUESTION = "How does a steam engine turn heat into mechanical work?"


def test_top_from_the_environment_applies_when_the_flag_is_not_given(
    demo_store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHUNKLESS_TOP", "2")
    assert len(run_json(capsys, "search", QUESTION, "--json", "--store", str(demo_store))["spans"]) == 2
    assert len(run_json(capsys, "search", QUESTION, "--json", "--store", str(demo_store), "--top", "3")["spans"]) == 3


def test_unset_flags_never_override_the_environment(
    demo_store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHUNKLESS_COLLECTION", "elsewhere")
    monkeypatch.setenv("CHUNKLESS_DTYPE", "bfloat16")
    s = settings_of(build_parser().parse_args(["search", "q", "--store", str(demo_store)]))
    assert s.store.collection == "elsewhere" and s.model.dtype == "bfloat16" and s.spans.top == 5
    assert main(["list", "--store", str(demo_store)]) == StoreError.exit_code
    assert "no collection 'elsewhere'" in capsys.readouterr().err


def test_dtype_is_the_model_dtype_and_storage_dtype_the_stored_one() -> None:
    s = settings_of(build_parser().parse_args(["ingest", "x", "--dtype", "float16", "--storage-dtype", "int8"]))
    assert s.model.dtype == "float16" and s.store.storage_dtype == "int8"
    s = settings_of(build_parser().parse_args(["ingest", "x", "--storage", "int8-pca128-pool2"]))
    assert s.store.layout.name == "int8-pca128-pool2" and s.model.dtype == "auto"


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["search", "q", "--top", "0"], ["--top", "CHUNKLESS_TOP", "=0", "greater than or equal to 1"]),
        (["search", "q", "--top", "-1"], ["--top", "=-1", "greater than or equal to 1"]),
        (
            ["ingest", "x", "--storage", "int8-pool9"],
            ["storage_pool", "CHUNKLESS_STORAGE_POOL", "=9", "less than or equal to 4"],
        ),
        (["ingest", "x", "--storage", "int9"], ["--storage", "'int9'", "DTYPE[-pcaN|-truncateN][-poolK]"]),
    ],
)
def test_bad_settings_name_field_value_and_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needles: list[str]
) -> None:
    assert main([*argv, "--store", str(tmp_path / "s")]) == SettingsError.exit_code == 2
    err = capsys.readouterr().err
    assert err.startswith("chunkless: error: ") and err.count("\n") == 1 and "Traceback" not in err
    for n in needles:
        assert n in err
    assert not (tmp_path / "s").exists()  # refused before anything was opened or created


def test_exit_codes_follow_the_error_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--store", str(tmp_path / "missing")]) == 3  # StoreNotFoundError
    assert "chunkless ingest" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nobench")]) == 2  # InputError: the benchmark file is missing
    assert "corpus.jsonl" in capsys.readouterr().err


def test_an_unexpected_error_is_one_line_and_exit_70(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from retriever.cli import commands

    def broken(args: object) -> int:
        raise RuntimeError("something impossible\nsecond line")

    monkeypatch.setattr(commands, "cmd_list", broken)  # stands in for a bug anywhere below the command
    assert main(["list"]) == EXIT_BUG == 70
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "RuntimeError: something impossible" in err and "this is a bug, please report" in err
    monkeypatch.setenv("CHUNKLESS_DEBUG", "1")
    assert main(["list"]) == 70
    assert "Traceback" in capsys.readouterr().err


def test_list_shows_ids_sources_tokens_and_ingest_time(demo_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from datetime import datetime

    docs = run_json(capsys, "list", "--json", "--store", str(demo_store))["documents"]
    assert [d["doc_id"] for d in docs] == ["corpus/force.txt", "corpus/normans.md", "corpus/steam_engine.pdf"]
    for d in docs:
        assert d["n_tokens"] > 500 and Path(d["source"]).name == Path(d["doc_id"]).name
        assert datetime.fromisoformat(d["ingested_at"]).year >= 2024
    assert main(["list", "--store", str(demo_store)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("corpus/force.txt\t") and "tokens" in lines[0]


def test_terminal_safe_drops_escapes_and_controls() -> None:
    assert terminal_safe("a\x1b[31mb\x1b[0m\x07c\x1b]0;pwned\x07d\u202ee\tf\ng") == "abcde\tf\ng"


def test_document_escapes_never_reach_the_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "dragon.txt").write_text(
        "The red dragon \x1b[31mbreathes fire\x1b[0m over the castle every night.\x07 "
        "The knights of the castle flee into the forest when it comes."
    )
    store = str(tmp_path / "store")
    assert main(["ingest", str(corpus), "--store", store]) == 0
    capsys.readouterr()
    assert main(["search", "What does the dragon breathe?", "--store", store]) == 0
    out = capsys.readouterr().out
    assert "breathes fire" in out and "\x1b" not in out and "\x07" not in out
    assert main(["search", "What does the dragon breathe?", "--store", store, "--json"]) == 0
    raw = capsys.readouterr().out
    assert "\x1b" not in raw and "\x07" not in raw  # JSON escapes them...
    assert "\x1b[31m" in json.loads(raw)["spans"][0]["text"]  # ...and keeps the document's text exact


def test_a_busy_store_exits_4(demo_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from indexer.store import open_store
    from schemas.settings import Settings

    holder = open_store(Settings(store_path=demo_store).store)  # Edge allows one open per store
    try:
        assert main(["list", "--store", str(demo_store)]) == StoreBusyError.exit_code == 4
    finally:
        holder.close()
    err = capsys.readouterr().err
    assert err.startswith("chunkless: error: ") and "Traceback" not in err


def test_storage_report_flags_are_in_the_one_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["storage-report", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: chunkless storage-report")
    for flag in ("--model", "--out", "--sample", "--seed", "--configs", "--latency-queries", "--cache-dir"):
        assert flag in out
    for flag in ("--no-chunks", "--device", "--span-method", "--rerank-k", "--threshold-mode"):
        assert flag in out
    args = build_parser().parse_args(["storage-report", "bench", "--configs", "int8,binary-pool2", "--no-chunks"])
    assert (args.bench, args.configs, args.no_chunks, args.sample, args.device) == (
        Path("bench"),
        "int8,binary-pool2",
        True,
        300,
        "cpu",
    )


def test_help_imports_nothing_heavy() -> None:
    """Building the whole parser loads neither torch, the search engine, the ingest pipeline nor the service."""
    code = (
        "import sys; from retriever.cli import build_parser; build_parser(); "
        "print(' '.join(m for m in ('torch', 'retriever.search', 'indexer.ingest', 'retriever.serve.app', "
        "'retriever.evaluation', 'uvicorn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == ""


def imported_modules(path: Path) -> list[str]:
    """Every module an `import` or `from ... import` in this file names (relative imports as written)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):  # `from retriever import cli` names retriever.cli
            found += [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
    return found


def test_the_service_and_evaluation_never_import_the_cli() -> None:
    """The CLI imports them; an import back would make a cycle (and load the CLI into the service)."""
    offenders = [
        f"{path.relative_to(REPO)}: {name}"
        for folder in ("retriever/serve", "retriever/evaluation")
        for path in sorted((REPO / folder).rglob("*.py"))
        for name in imported_modules(path)
        if name == "retriever.cli" or name.startswith("retriever.cli.")
    ]
    assert offenders == []
