"""The one check of a query's text, made wherever a query enters: the CLI, the SDK and the service."""

from __future__ import annotations

from schemas.errors import QueryError


def check_query(query: str, max_chars: int, field: str = "query") -> None:
    """Refuse an empty query or one over `max_chars` characters (`max_query_chars`), naming `field`.

    The CLI calls it before it loads anything, `Retriever.search` before embedding, the service before
    it queues the search, so each refuses with the same words.

    Raises:
        QueryError: the query is empty (or only whitespace) or too long.
    """
    if not query.strip():
        raise QueryError(f"{field} is empty; send the question to search for")
    if len(query) > max_chars:
        raise QueryError(f"{field} is {len(query)} characters, over max_query_chars={max_chars}; shorten it")
