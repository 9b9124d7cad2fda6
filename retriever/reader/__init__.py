"""The reader: a cross-encoder that reads the span method's candidates with the query (see `stage`).

    from retriever.reader import make_reader
    reader = make_reader(settings, segment_texts)   # None when CHUNKLESS_READER_MODEL is unset / "none"

Modules: `model` (the cross-encoder contract, ONNX Runtime and transformers backends), `units` (answer
units: whole sentences, table rows with their header, list items with their lead-in), `stage` (the
re-ranking), `calibration` (the reader's answerability model, shipped as `calibration.json`).
"""

from __future__ import annotations

from retriever.reader.calibration import reader_calibration
from retriever.reader.model import (
    DEFAULT_READER,
    PACKAGED_READERS,
    CrossEncoder,
    HFCrossEncoder,
    OnnxCrossEncoder,
    load_cross_encoder,
    packaged_reader_path,
    reader_backend,
)
from retriever.reader.stage import Reader
from retriever.reader.units import SegmentTexts, Unit, UnitBuilder, structure_of
from schemas.settings import Settings


def make_reader(settings: Settings, segment_texts: SegmentTexts | None) -> Reader | None:
    """The reading stage `settings.reader` asks for; None when no reader model is set.

    Args:
        settings: all settings; the reader group is used.
        segment_texts: reads stored segments' text (units may reach past a fetched run).

    Returns:
        The reader, with the shipped calibration when it was fitted for this model, or None.

    Raises:
        ModelLoadError: the reader model cannot be found or loaded.
    """
    st = settings.reader
    if st.reader_model is None:
        return None
    model = load_cross_encoder(st.reader_model, st.reader_max_tokens, st.reader_device, st.reader_threads)
    return Reader(model, st, segment_texts, reader_calibration(model.name))


__all__ = [
    "DEFAULT_READER",
    "PACKAGED_READERS",
    "CrossEncoder",
    "HFCrossEncoder",
    "OnnxCrossEncoder",
    "Reader",
    "SegmentTexts",
    "Unit",
    "UnitBuilder",
    "load_cross_encoder",
    "make_reader",
    "packaged_reader_path",
    "reader_backend",
    "reader_calibration",
    "structure_of",
]
