"""`chunkless serve`: one process owns the store and the model, answers searches while it ingests, over HTTP.

- `app.create_app(service)`: the FastAPI app; it only wires the parts below.
- `routers`: the routes, one `APIRouter` each: `search`, `documents` (upload, list, delete, stats), `jobs`,
  `ops` (/healthz, /readyz, /metrics).
- `models`: the request and response bodies (the API's contract).
- `deps`: the `Service` and micro-batcher as dependencies, the API-key and metrics middleware, the upload
  size limit.
- `errors`: `ApiError` and the exception handlers: one JSON error body, the status from the error.
- `service.Service`: the store, the shared model, the `Retriever` and the ingest job queue, opened once.
- `batcher.MicroBatcher`: concurrent searches gathered into `Retriever.search_batch` calls.
- `jobs.JobQueue`: ingest jobs run one at a time, each with a report.
- `client.RemoteRetriever`: `search` / `search_batch` over HTTP, with `Retriever`'s signatures and return types.

Nothing here imports `retriever.cli`; the CLI's `serve` command imports this package.
"""
