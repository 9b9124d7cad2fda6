"""Moved to tests/support.py; kept so modules still importing it keep working until they switch."""

from tests.support import DOCS, QUESTIONS, evidence_of, write_bench

__all__ = ["DOCS", "QUESTIONS", "evidence_of", "write_bench"]
