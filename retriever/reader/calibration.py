"""The reader's answerability model: the probability that the top span answers, from what the reader saw.

A logistic model (`retriever.calibration.Calibration`) over the reader's features of the top span
(`retriever.reader.stage.FEATURES`: its logit, its margin over the best other unit, the span method's
score), fitted by `scripts/experiment_reader.py --fit` on squad2-dev (label: the top span holds a gold
answer; unanswerable questions are all 0) on one half of the questions and checked on the other,
shipped as `calibration.json` beside this module with the model it was fitted for. A reader model
other than that one gets no confidence (its logits mean something else).
"""

from __future__ import annotations

import json
from pathlib import Path

from retriever.calibration import Calibration
from retriever.reader.model import PACKAGED_READERS

PARAMS = Path(__file__).with_name("calibration.json")


def _canonical(name: str) -> str:
    for full in PACKAGED_READERS:
        if name in (full, full.split("/", 1)[1]):
            return full
    return name


def reader_calibration(model: str, path: Path = PARAMS) -> Calibration | None:
    """The shipped calibration when it was fitted for `model`, else None (no confidence is given).

    Args:
        model: the reader model's name or folder, as configured.
        path: the parameters file (default: the one shipped).
    """
    if not path.is_file():
        return None
    d = json.loads(path.read_text(encoding="utf-8"))
    if _canonical(str(d.get("model", ""))) != _canonical(model):
        return None
    return Calibration.from_json(d)


def save_reader_calibration(cal: Calibration, model: str, path: Path = PARAMS, **notes: object) -> None:
    """Write `cal` for `model` (and what it was measured to do, in `notes`) as the shipped parameters."""
    d = {"model": _canonical(model), **cal.to_json(), **notes}
    path.write_text(json.dumps(d, indent=1) + "\n", encoding="utf-8")
