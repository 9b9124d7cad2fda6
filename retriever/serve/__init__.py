"""`chunkless serve`: one process owns the store and the model, answers searches while it ingests, over HTTP.

- `app.create_app(service)`: the FastAPI app (routes under /v1, /healthz, /readyz, /metrics).
- `service.Service`: the store, the shared model, the `Retriever` and the ingest job queue, opened once.
- `batcher.MicroBatcher`: concurrent searches gathered into `Retriever.search_batch` calls.
- `jobs.JobQueue`: ingest jobs run one at a time, each with a report.
- `client.RemoteRetriever`: `search` / `search_batch` over HTTP, with `Retriever`'s signatures and return types.
"""
