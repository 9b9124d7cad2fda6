"""How the service refuses: every error answers one JSON body, ``{"detail": message, "field": name}``.

`detail` says what is wrong and what to do; `field` names the part of the request at fault (``query``,
``files.0``, ``authorization``...) or is null. The status comes from one place per kind of error:

- `ApiError`: a refusal by the HTTP layer itself (a bad field, an unknown job, a wrong key, an upload
  over the limit); it carries its status and field.
- `ChunklessError`: raised by the library below (store, model, job queue); the status is the class's
  `http_status` (the table in `schemas.errors`).
- pydantic's validation of a body or query parameter: 400 for malformed JSON, 422 otherwise.
- Starlette's and FastAPI's own (400 a body that does not parse, 404 no such route, 405 wrong method): their
  status, field ``body``, ``path`` or ``method``.

Anything else is a fault, not a refusal, and FastAPI answers 500.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from schemas.errors import ChunklessError


class ApiError(Exception):
    """A request the service refuses: its status, the field at fault and what to do."""

    def __init__(self, status: int, field: str | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message


def error_response(status: int, field: str | None, message: str) -> JSONResponse:
    """The one error body."""
    return JSONResponse({"detail": message, "field": field}, status_code=status)


async def on_api_error(request: Request, e: ApiError) -> JSONResponse:
    """`ApiError`: its own status and field."""
    return error_response(e.status, e.field, e.message)


async def on_chunkless_error(request: Request, e: ChunklessError) -> JSONResponse:
    """`ChunklessError`: the class's `http_status` (schemas.errors), no field."""
    return error_response(e.http_status, None, str(e))


async def on_http_error(request: Request, e: HTTPException) -> JSONResponse:
    """Starlette's and FastAPI's own refusals in the service's body shape: a body that does not parse (400),
    no such path (404), not this method on it (405)."""
    if e.status_code == 400:
        return error_response(400, "body", f"{e.detail}; send one JSON object (Content-Type: application/json)")
    field = {404: "path", 405: "method"}.get(e.status_code)
    return error_response(e.status_code, field, f"{e.detail}: {request.method} {request.url.path[:200]}")


async def on_invalid_request(request: Request, e: RequestValidationError) -> JSONResponse:
    """pydantic's first complaint, as the field it names and a message saying what is allowed."""
    errs = e.errors()
    first: dict[str, Any] = dict(errs[0]) if errs else {"loc": (), "msg": "invalid request", "type": ""}
    loc = [str(x) for x in first.get("loc", ()) if x != "[key]"]  # a bad dict key: name the key itself
    if loc and loc[0] in ("body", "query", "path"):  # where the field was, not its name
        loc = loc[1:]
    field = ".".join(loc) or "body"
    if first.get("type") == "json_invalid":
        return error_response(
            400, "body", f"malformed JSON ({first.get('ctx', {}).get('error', 'cannot parse')}); send one JSON object"
        )
    msg = f"{field}: {first.get('msg')}"
    if first.get("type") == "extra_forbidden" or (len(loc) >= 2 and loc[0] == "filter"):
        msg += "; allowed: query, top, filter (filter fields: doc_id, source)"
    return error_response(422, field, msg)
