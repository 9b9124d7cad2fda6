"""chunkless at query time, and the front doors built on it.

The library: `Retriever` finds the spans of a collection that answer a query (search.py: embed, recall
candidate documents, fetch their token matrices through fetch.py's caches, score every token with
relevance.py, cut and rank spans with a span method from methods/); `RemoteRetriever` makes the same
calls to a running `chunkless serve` (serve/client.py). The front doors: the command line (cli), the
HTTP service (serve/), and the benchmarks that measure it all (evaluation/).

    from retriever import Retriever
    from schemas import Settings

    with Retriever(Settings(store_path="chunkless_store")) as r:
        print(r.search("How does a steam engine work?").spans[0].text)

`Retriever` and `RemoteRetriever` are the public API; importing this package loads neither torch nor a
model (each name is imported on first use, PEP 562), so `chunkless --help` and a remote client start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retriever.search import Retriever
    from retriever.serve.client import RemoteRetriever

__all__ = ["RemoteRetriever", "Retriever"]

_HOMES = {"Retriever": "retriever.search", "RemoteRetriever": "retriever.serve.client"}


def __getattr__(name: str) -> Any:
    """`Retriever` and `RemoteRetriever`, imported from their modules when first asked for."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'retriever' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
