"""Helpers shared by several test files (import from here, never from another test module).

Blocks: paths of the repository and its demo corpus; a tiny span-QA benchmark in the shared/benchmarks
format.
"""

from __future__ import annotations

import json
from pathlib import Path

# --- paths ----------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo" / "corpus"

# --- a tiny span-QA benchmark ---------------------------------------------------------------------
DOCS = {
    "volcano": (
        "Volcanoes form where magma reaches the surface of the Earth. Mt. Etna in Sicily erupts often and its "
        "lava flows have reached nearby towns.\n\nA volcano's magma chamber holds molten rock under pressure. "
        "When the pressure is released, gas expands and the eruption throws ash high into the sky."
    ),
    "bread": (
        "Bread is made from flour, water, salt and yeast. The yeast ferments sugars and releases carbon dioxide, "
        "which makes the dough rise.\n\nBakers knead the dough to develop gluten. A loaf is baked at about "
        "230 degrees Celsius for 30 to 40 minutes until the crust turns brown."
    ),
    "chess": (
        "Chess is a board game for two players on a board of 64 squares. Each player starts with sixteen pieces.\n\n"
        "The aim is to checkmate the opponent's king, so that it is attacked and cannot escape. The Queen is the "
        "strongest piece because it moves any distance along ranks, files and diagonals."
    ),
}

QUESTIONS = [
    ("q1", "What makes the dough rise?", "bread", "carbon dioxide"),
    ("q2", "How long is a loaf baked?", "bread", "30 to 40 minutes"),
    ("q3", "How many squares does a chess board have?", "chess", "64 squares"),
    ("q4", "What is the aim of chess?", "chess", "checkmate the opponent's king"),
    ("q5", "Where does magma reach?", "volcano", "the surface of the Earth"),
    ("q6", "What does an eruption throw into the sky?", "volcano", "ash"),
]


def evidence_of(text: str, pos: int) -> tuple[int, int]:
    """The sentence around character `pos` (the gold evidence of an answer there)."""
    start = max(text.rfind(". ", 0, pos) + 2, text.rfind("\n", 0, pos) + 1, 0)
    end = text.find(".", pos)
    return start, (end + 1 if end >= 0 else len(text))


def write_bench(folder: Path) -> Path:
    """DOCS and QUESTIONS (plus one unanswerable question) as corpus.jsonl and queries.jsonl in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w") as f:
        for doc_id, text in DOCS.items():
            f.write(json.dumps({"doc_id": doc_id, "title": doc_id.title(), "text": text}) + "\n")
    with (folder / "queries.jsonl").open("w") as f:
        for qid, query, doc_id, answer in QUESTIONS:
            text = DOCS[doc_id]
            a = text.index(answer)
            ev_start, ev_end = evidence_of(text, a)
            row = {
                "query_id": qid,
                "query": query,
                "doc_id": doc_id,
                "answers": [{"start": a, "end": a + len(answer), "text": answer}],
                "evidence": {"start": ev_start, "end": ev_end},
                "paragraph": {"start": 0, "end": len(text)},
            }
            f.write(json.dumps(row) + "\n")
        unanswerable = {"query_id": "u1", "query": "Who invented the bicycle?", "doc_id": "chess", "answers": []}
        f.write(json.dumps({**unanswerable, "evidence": None, "paragraph": None}) + "\n")
    return folder
