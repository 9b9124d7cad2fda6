"""Fuzzing the HTTP API: schemathesis generates requests from the service's own OpenAPI schema and sends them to
a real server on loopback. Bounded (`EXAMPLES` per operation, a 60 s timeout per request); what must hold for
every one: no 5xx, and every 4xx says which field is at fault (`{"detail": ..., "field": ...}`)."""

from __future__ import annotations

from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexer.embedders import HFTokenEmbedder
from indexer.ingest import ingest
from schemas.settings import Settings
from tests.test_serve import DEMO, live

EXAMPLES = 40  # per operation (11 operations): about a minute on 2 shared cores


def test_no_5xx_and_every_4xx_names_the_field(tmp_path: Path, minilm: HFTokenEmbedder) -> None:
    s = Settings(store_path=tmp_path / "store", device="cpu", max_upload_mb=1, max_query_chars=512)
    ingest([DEMO / "normans.md"], s, embedder=minilm)
    failures: list[str] = []
    with live(s, minilm) as (url, _):
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        for result in schema.get_all_operations():
            operation = result.ok()
            # valid requests and requests that break the schema on purpose (wrong types, missing fields)
            cases = st.one_of(
                operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
                operation.as_strategy(schemathesis.GenerationMode.NEGATIVE),
            )

            # schemathesis' own pytest plugin does not load under pytest 9: hypothesis drives each operation
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,  # the same cases every run: CI stays reproducible
                suppress_health_check=list(HealthCheck),
            )
            @given(case=cases)
            def check(case: schemathesis.Case) -> None:
                response = case.call(timeout=60)
                where = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
                if response.status_code >= 500:
                    failures.append(where)
                elif response.status_code >= 400:
                    body = response.json()
                    if not (isinstance(body, dict) and body.get("detail") and body.get("field")):
                        failures.append(where)

            check()
    assert not failures, "\n".join(dict.fromkeys(failures))
