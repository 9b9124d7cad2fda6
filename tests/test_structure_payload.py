"""The header payload of a structure parsed lazily answers exactly as the validated structure it was
written from: same blocks, section paths, ranges, layout arrays and payload, without building a block
per block (the query side parses every recalled document's structure)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from retriever.fetch import SHORT_KINDS, Layout
from schemas.structure import NON_ANSWER_KINDS, SECTION_SEPARATOR, Block, BlockKind, DocStructure, PayloadBlocks

# (kind, level, title) in reading order: levels that rise by more than one, fall back several at once,
# repeat, a heading without a level (counts as 1), one without a title and one with an empty title
LAYOUT: list[tuple[BlockKind, int | None, str | None]] = [
    ("header", None, None),
    ("toc", None, None),
    ("toc", None, None),
    ("paragraph", None, None),  # before any heading: no section
    ("heading", 1, "1 Start"),
    ("paragraph", None, None),
    ("heading", 2, "1.1 Install"),
    ("list_item", None, None),
    ("list_item", None, None),
    ("heading", 4, "1.1.0.1 Deep"),
    ("code", None, None),
    ("heading", 3, "1.1.1 Less deep"),
    ("table_row", None, None),
    ("table_row", None, None),
    ("table_row", None, None),
    ("footer", None, None),
    ("heading", 2, "1.2 Use"),
    ("footnote", None, None),
    ("heading", 2, None),
    ("paragraph", None, None),
    ("heading", 3, ""),
    ("paragraph", None, None),
    ("heading", None, "2 Levelless"),
    ("paragraph", None, None),
    ("heading", 1, "3 Last"),
    ("heading", 1, "4 Empty section"),
    ("paragraph", None, None),
    ("header", None, None),
]


def make_structure(layout: list[tuple[BlockKind, int | None, str | None]] = LAYOUT) -> DocStructure:
    """Validated blocks with gaps between them, several per page, as a reader builds them."""
    blocks, pos = [], 0
    for i, (kind, level, title) in enumerate(layout):
        length = 5 + i % 7
        blocks.append(Block(kind=kind, start=pos, end=pos + length, page=1 + i // 4, level=level, title=title))
        pos += length + 1 + i % 3
    pages = blocks[-1].page
    return DocStructure(blocks=blocks, page_labels=[f"p{n}" for n in range(1, pages + 1)])


def reference_section_of(blocks: list[Block], pos: int) -> list[int]:
    """The section path as it was computed before: every block up to `pos`, a stack of open headings."""
    path: list[int] = []
    for i, b in enumerate(blocks):
        if b.start > pos:
            break
        if b.kind != "heading":
            continue
        while path and (blocks[path[-1]].level or 1) >= (b.level or 1):
            path.pop()
        path.append(i)
    return path


def reference_arrays(blocks: list[Block]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The layout arrays as they were computed before: one block at a time."""
    return (
        np.array([b.start for b in blocks], dtype=np.int64),
        np.array([b.end for b in blocks], dtype=np.int64),
        np.array([b.kind in NON_ANSWER_KINDS for b in blocks], dtype=bool),
        np.array([b.kind in SHORT_KINDS for b in blocks], dtype=bool),
    )


def roundtrip(s: DocStructure) -> tuple[dict[str, Any], DocStructure]:
    """The payload as the store gives it back (through JSON) and the structure parsed from it."""
    payload = json.loads(json.dumps(s.to_payload()))
    back = DocStructure.from_payload(payload)
    assert back is not None
    return payload, back


def test_parsed_payload_answers_as_the_validated_structure() -> None:
    s = make_structure()
    blocks = list(s.blocks)
    payload, back = roundtrip(s)
    assert isinstance(back.blocks, PayloadBlocks) and back.blocks.built == 0
    assert len(back.blocks) == len(blocks)
    for i, b in enumerate(blocks):
        assert back.blocks[i] == b and back.blocks[i - len(blocks)] == b
    assert list(back.blocks) == blocks and [b for b in back.blocks] == blocks
    for sl in (slice(3, None), slice(None, 5), slice(2, 20, 3), slice(-4, None), slice(None, None, -1), slice(50, 60)):
        assert list(back.blocks[sl]) == blocks[sl] and len(back.blocks[sl]) == len(blocks[sl])
        assert back.blocks[sl] == blocks[sl] and blocks[sl] == back.blocks[sl]
    assert list(back.blocks[4:][2:]) == blocks[4:][2:]
    with pytest.raises(IndexError):
        back.blocks[len(blocks)]
    assert back == s and s == back and back.blocks == s.blocks and s.blocks == back.blocks
    assert back.blocks != blocks[:-1] and back.blocks[1:] != back.blocks[:-1]

    end = blocks[-1].end
    for pos in range(-1, end + 3):
        want = reference_section_of(blocks, pos)
        assert back.section_of(pos) == want == s.section_of(pos), pos
        titles = [blocks[i].title or "" for i in want]
        path = SECTION_SEPARATOR.join(t for t in titles if t) or None
        assert back.section_path(pos) == path == s.section_path(pos), pos
    h = next(b for b in blocks if b.title == "1.1.0.1 Deep")
    assert back.section_path(h.start) == "1 Start › 1.1 Install › 1.1.0.1 Deep"

    for kinds in ({"table_row"}, NON_ANSWER_KINDS, {"heading", "code"}, set(), {"nonsense"}):
        want_ranges = [(b.start, b.end) for b in blocks if b.kind in kinds]
        assert back.ranges(kinds) == want_ranges == s.ranges(kinds)
    assert back.has_headings and s.has_headings
    pages = [0, 1, 3, 7, 8, 99]
    assert back.labels_of(pages) == s.labels_of(pages) == ["", "p1", "p3", "p7", "", ""]
    assert back.to_payload() == payload == s.to_payload()
    assert back.model_dump() == s.model_dump() and back.model_dump_json() == s.model_dump_json()


def test_structures_without_headings_labels_or_blocks() -> None:
    s = make_structure([("paragraph", None, None), ("table_row", None, None), ("footer", None, None)])
    s.page_labels = None
    _, back = roundtrip(s)
    assert not back.has_headings and back.section_of(10**6) == [] and back.section_path(10**6) is None
    assert back.labels_of([1]) is None and back == s
    empty = DocStructure()
    _, none = roundtrip(empty)
    assert len(none.blocks) == 0 and list(none.blocks) == [] and none == empty and not none.has_headings
    assert Layout.of_payload(empty.to_payload()) is None
    assert DocStructure.from_payload(None) is None and DocStructure.from_payload({"v": 999}) is None


def test_a_corrupt_payload_fails_when_parsed() -> None:
    payload = make_structure().to_payload()
    with pytest.raises(ValueError, match="length"):
        DocStructure.from_payload({**payload, "ends": payload["ends"][:-1]})
    with pytest.raises(ValueError, match="unknown"):
        DocStructure.from_payload({**payload, "kinds": "X" + payload["kinds"][1:]})


def test_layout_of_payload_equals_layout_of_the_validated_structure() -> None:
    s = make_structure()
    payload, _ = roundtrip(s)
    lay = Layout.of_payload(payload)
    assert lay is not None
    eager = Layout.of(s)
    for got, mine, want in zip(
        (lay.starts, lay.ends, lay.skip, lay.short_ok),
        (eager.starts, eager.ends, eager.skip, eager.short_ok),
        reference_arrays(list(s.blocks)),
        strict=True,
    ):
        assert got.dtype == want.dtype and mine.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(mine, want)
    assert lay.structure == s


def test_a_large_structure_is_parsed_without_building_its_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    layout = [
        ("heading", 1 + i % 3, f"H{i}") if i % 37 == 0 else (("paragraph", "table_row", "toc")[i % 3], None, None)
        for i in range(5000)
    ]
    s = make_structure(layout)
    blocks = list(s.blocks)
    payload, _ = roundtrip(s)
    built: list[int] = []
    construct = Block.model_construct

    def counting(*args: Any, **kwargs: Any) -> Block:
        built.append(1)
        return construct(*args, **kwargs)

    monkeypatch.setattr(Block, "model_construct", counting)
    lay = Layout.of_payload(payload)
    assert lay is not None and len(lay.starts) == 5000
    parsed = lay.structure.blocks
    assert isinstance(parsed, PayloadBlocks)
    # the section paths, ranges and payload read the arrays, not blocks
    for pos in range(0, blocks[-1].end, 997):
        assert lay.structure.section_of(pos) == reference_section_of(blocks, pos)
    assert lay.structure.ranges({"table_row"})[:3] == [(b.start, b.end) for b in blocks if b.kind == "table_row"][:3]
    assert lay.structure.to_payload() == payload
    assert built == [] and parsed.built == 0

    assert parsed[10] == blocks[10] and parsed[-1] == blocks[-1] and parsed[10] is parsed[10]
    assert parsed.built == 2 and len(built) == 2
    for n, b in enumerate(parsed[100:]):  # a walk that stops early builds only what it read
        assert b == blocks[100 + n]
        if n == 4:
            break
    assert parsed.built == 7 and len(built) == 7
