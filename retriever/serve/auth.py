"""API-key check: `Authorization: Bearer KEY` or `api-key: KEY`, compared in constant time."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers

OPEN_PATHS = frozenset({"/healthz"})  # a load balancer's liveness probe carries no key


def authorized(headers: Headers, key: str | None) -> bool:
    """True when no key is configured, or the request carries it.

    Args:
        headers: the request's headers.
        key: the configured key (`CHUNKLESS_SERVICE_API_KEY`), None for an open service.

    Returns:
        Whether the request may proceed.
    """
    if key is None:
        return True
    given = headers.get("api-key")
    if given is None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    return given is not None and hmac.compare_digest(given.encode(), key.encode())
