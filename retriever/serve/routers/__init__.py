"""The service's routes, one `APIRouter` per concern; `retriever.serve.app.create_app` mounts them.

- `search`: POST /v1/search, POST /v1/search/batch.
- `documents`: POST /v1/documents (upload or server-side paths; queues a job), GET /v1/documents,
  DELETE /v1/documents/{doc_id}, GET /v1/stats.
- `jobs`: GET /v1/jobs/{job_id}.
- `ops`: /healthz, /readyz, /metrics (not versioned: probes and scrapers address them directly).
"""
