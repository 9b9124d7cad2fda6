from __future__ import annotations

from pathlib import Path

import pymupdf
import pytest

from indexer.discover import discover
from indexer.reading import load_file
from schemas.errors import InputError
from schemas.models import IngestFailure, LoadedDocument
from tests.support import load_paths

PAGES = [
    "Alpha page talks about glaciers and ice sheets.",
    "Beta page describes volcanoes and lava flows.",
    "Gamma page covers coral reefs and tropical fish.",
]


@pytest.fixture
def pdf(tmp_path: Path) -> Path:
    doc = pymupdf.open()
    for text in PAGES:
        doc.new_page().insert_text((72, 72), text, fontsize=11)
    path = tmp_path / "three.pdf"
    doc.save(path)
    return path


def test_pdf_page_offsets_index_each_page(pdf: Path) -> None:
    d = load_file(pdf, "three.pdf")
    assert len(d.page_starts) == 3
    for i, want in enumerate(PAGES):
        end = d.page_starts[i + 1] if i + 1 < len(PAGES) else len(d.text)
        page_text = d.text[d.page_starts[i] : end]
        assert want.split()[0] in page_text and want.split()[-1].rstrip(".") in page_text
        assert all(PAGES[j].split()[0] not in page_text for j in range(3) if j != i)


def test_text_is_verbatim(tmp_path: Path) -> None:
    raw = "Line one\r\nLine two — ünïcode\n\n# not a title in txt"
    p = tmp_path / "a.txt"
    p.write_bytes(raw.encode("utf-8"))
    d = load_file(p, "a.txt")
    assert d.text == raw and d.title == "a"
    m = tmp_path / "b.md"
    m.write_text("intro\n# The Title\nbody")
    assert load_file(m, "b.md").title == "The Title"


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("empty.txt", b"  \n", "empty"),
        ("bad.txt", b"caf\xe9 latin-1", "UTF-8"),
        ("corrupt.pdf", b"%PDF-1.4 this is not a pdf", "corrupt"),
        ("notes.docx", b"PK..", "unsupported"),
    ],
)
def test_bad_files_name_the_file_and_the_fix(tmp_path: Path, name: str, content: bytes, needle: str) -> None:
    p = tmp_path / name
    p.write_bytes(content)
    [item] = list(load_paths([p]))
    assert isinstance(item, IngestFailure)
    assert item.path.endswith(name) and needle in item.reason


def test_blank_pdf_is_rejected(tmp_path: Path) -> None:
    doc = pymupdf.open()
    doc.new_page()
    p = tmp_path / "blank.pdf"
    doc.save(p)
    with pytest.raises(InputError, match="no extractable text"):
        load_file(p, "blank.pdf")


def test_walk_is_recursive_with_stable_ids(tmp_path: Path, pdf: Path) -> None:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "x.md").write_text("# X\nhello")
    (root / "y.txt").write_text("world")
    (root / ".hidden.txt").write_text("secret")
    (root / ".git").mkdir()
    (root / ".git" / "notes.txt").write_text("secret")
    (root / "img.png").write_bytes(b"\x89PNG")
    found = discover([root, tmp_path / "missing"])
    want = [(root / "sub" / "x.md").resolve().as_posix(), (root / "y.txt").resolve().as_posix()]
    assert [f.doc_id for f in found.files] == want
    assert len(found.failures) == 1 and "does not exist" in found.failures[0].reason
    docs = [d for d in load_paths([root]) if isinstance(d, LoadedDocument)]
    assert {d.doc_id for d in docs} == set(want)
    assert [f.doc_id for f in discover([root], id_from=tmp_path).files] == ["docs/sub/x.md", "docs/y.txt"]
    assert [f.doc_id for f in discover([root / "y.txt"], doc_id="mine").files] == ["mine"]


def test_symlinked_folders_are_followed_once_and_loops_stop(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "o.txt").write_text("outside text")
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.txt").write_text("a")
    (root / "linked").symlink_to(outside)
    (root / "sub" / "up").symlink_to(root)  # a link to an ancestor: must not loop
    (root / "twice").symlink_to(outside)  # a second link to one folder: walked once
    found = discover([root])
    assert [f.path for f in found.files] == [(outside / "o.txt").resolve(), (root / "sub" / "a.txt").resolve()]
    assert found.failures == []


def test_folder_without_supported_files_lists_what_was_skipped(tmp_path: Path) -> None:
    root = tmp_path / "office"
    root.mkdir()
    for name in ["a.docx", "b.DOCX", "c.xlsx", ".DS_Store"]:
        (root / name).write_bytes(b"x")
    empty = tmp_path / "empty"
    empty.mkdir()
    found = discover([root, empty])
    assert found.files == []
    reasons = {Path(f.path).name: f.reason for f in found.failures}
    assert "no supported file found (skipped: 2 .docx, 1 .xlsx, 1 hidden)" in reasons["office"]
    assert "chunkless reads .htm, .html, .markdown, .md, .pdf, .txt" in reasons["office"]
    assert "the folder is empty" in reasons["empty"]


def test_encrypted_pdf_says_encrypted(tmp_path: Path) -> None:
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "Secret plans for the glacier expedition.", fontsize=11)
    p = tmp_path / "locked.pdf"
    doc.save(p, encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="x", owner_pw="y")
    with pytest.raises(InputError, match="encrypted") as err:
        load_file(p, "locked.pdf")
    assert "TypeError" not in str(err.value) and str(p) in str(err.value)
