"""Load test of `chunkless serve` on loopback: q/s and latency percentiles for 1, 4, 16 and 64 clients.

    python scripts/bench_serve.py ../shared/benchmarks/squad2-dev [--requests 128] [--queries 300]

BENCH_DIR holds corpus.jsonl ({"doc_id", "title", "text"} per line) and queries.jsonl ({"query", ...}).
The corpus is written as text files, a service (`python -m retriever.cli serve`, a real subprocess on
127.0.0.1, never another address) indexes them, then each client count sends the benchmark's questions,
round robin, until `--requests` answers (at least one per client) have come back. Three runs: micro-batching
on (the settings' batch_wait_ms/max_batch), off (max_batch=1: every request its own `search`), and on
again while ingest jobs rewrite the whole corpus, one after another (every file changed each time, so every
document is re-embedded) until the last client count is done.
Prints one table row per run and client count: q/s, p50/p95/p99 latency (ms) and errors.

Search during ingest (`--large-words N`, issue 21's goal: p95 under ingest <= 2x idle p95): one client sends
questions one after another, first on an idle service, then while one large upload (the corpus's texts
joined into one file of N words) is embedded; only searches sent and answered while that job runs count.
`--only-large` runs just this pair of rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


@dataclass
class Row:
    run: str
    clients: int
    requests: int
    seconds: float
    latencies_ms: list[float]
    errors: int
    during_ingest: int | None = None

    def cells(self) -> list[str]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        p50, p95, p99 = np.percentile(lat, [50, 95, 99])
        qps = len(self.latencies_ms) / self.seconds if self.seconds > 0 else 0.0
        return [
            self.run,
            str(self.clients),
            str(self.requests),
            f"{qps:.1f}",
            f"{p50:.0f}",
            f"{p95:.0f}",
            f"{p99:.0f}",
            str(self.errors),
        ]


def start(store: Path, env_extra: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """A `chunkless serve` subprocess on a free loopback port; returns it and its URL once ready."""
    env = {**os.environ, "CHUNKLESS_HOST": HOST, "HF_HUB_OFFLINE": "1", **env_extra}
    cmd = [sys.executable, "-m", "retriever.cli", "serve", "--host", HOST, "--port", "0", "--store", str(store)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)
            if "listening on" not in line:
                print("  server:", line.rstrip(), file=sys.stderr)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 300
    while True:
        line = lines.get(timeout=max(deadline - time.monotonic(), 1.0))
        if "listening on " in line:
            url = line.split("listening on ")[1].split()[0]
            break
    with httpx.Client(base_url=url) as http:
        while True:
            try:
                if http.get("/readyz").status_code == 200:
                    return proc, url
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"the service did not become ready (exit {proc.poll()})")
            time.sleep(0.1)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def upload(url: str, folder: Path) -> str:
    files = sorted(folder.iterdir())
    handles = [f.open("rb") for f in files]
    try:
        parts = [("files", (f.name, h)) for f, h in zip(files, handles, strict=True)]
        r = httpx.post(f"{url}/v1/documents", files=parts, timeout=300)
    finally:
        for h in handles:
            h.close()
    r.raise_for_status()
    return str(r.json()["id"])


def job_state(url: str, job_id: str) -> dict:
    return dict(httpx.get(f"{url}/v1/jobs/{job_id}", timeout=60).json())


def wait_job(url: str, job_id: str) -> dict:
    while (job := job_state(url, job_id))["state"] in ("queued", "running"):
        time.sleep(0.5)
    return job


class Rewriter(threading.Thread):
    """Rewrites the whole corpus again and again (each pass a new revision: every document re-embedded).

    `running` is set while a job is queued or running; `answered_during` counts searches answered then.
    """

    def __init__(self, url: str, texts: dict[str, str], folder: Path) -> None:
        super().__init__(daemon=True)
        self.url, self.texts, self.folder = url, texts, folder
        self.running = threading.Event()
        self._halt = threading.Event()
        self.answered_during = 0
        self.jobs = self.documents = self.failures = 0

    def run(self) -> None:
        k = 0
        while not self._halt.is_set():
            k += 1
            rev = self.folder / str(k)
            rev.mkdir(parents=True)
            for name, text in self.texts.items():
                (rev / name).write_text(text + f"\n\n(Revision {k}.)")
            self.running.set()
            job = wait_job(self.url, upload(self.url, rev))
            self.running.clear()
            self.jobs += 1
            self.documents += job["report"]["documents"]
            self.failures += len(job["report"]["failures"]) + (job["state"] != "done")

    def stop(self) -> None:
        self._halt.set()
        self.join()


def corpus_texts(folder: Path) -> dict[str, str]:
    return {f.name: f.read_text() for f in sorted(folder.iterdir())}


async def load(
    url: str, queries: list[str], clients: int, requests: int, rewriter: Rewriter | None = None
) -> tuple[float, list[float], int]:
    """`clients` concurrent loops sending queries until `requests` answers are in: (seconds, latencies, errors)."""
    sent = 0
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:

        async def client() -> None:
            nonlocal sent, errors
            while sent < requests:
                q = queries[sent % len(queries)]
                sent += 1
                t = time.perf_counter()
                try:
                    r = await http.post("/v1/search", json={"query": q})
                    ok = r.status_code == 200 and "spans" in r.json()
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append((time.perf_counter() - t) * 1e3)
                    if rewriter is not None and rewriter.running.is_set():
                        rewriter.answered_during += 1
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return time.perf_counter() - t0, latencies, errors


def run_levels(run: str, url: str, queries: list[str], levels: list[int], requests: int) -> list[Row]:
    rows = []
    for c in levels:
        n = max(requests, c)
        asyncio.run(load(url, queries, c, max(c, 8)))  # warm every connection, the model and the caches
        secs, lat, err = asyncio.run(load(url, queries, c, n))
        rows.append(Row(run, c, n, secs, lat, err))
        print("  " + " | ".join(rows[-1].cells()), file=sys.stderr)
    return rows


class JobWatch(threading.Thread):
    """Polls one job; `running` is set while it is running, `finished` once it has left queued/running."""

    def __init__(self, url: str, job_id: str) -> None:
        super().__init__(daemon=True)
        self.url, self.job_id = url, job_id
        self.running, self.finished = threading.Event(), threading.Event()
        self.job: dict = {}

    def run(self) -> None:
        while True:
            self.job = job_state(self.url, self.job_id)
            if self.job["state"] == "running":
                self.running.set()
            elif self.job["state"] != "queued":
                self.running.clear()
                self.finished.set()
                return
            time.sleep(0.1)


def sequential(url: str, queries: list[str], n: int, watch: JobWatch | None = None) -> list[float]:
    """Latencies (ms) of `n` searches sent one after another; with `watch`, only those sent and answered while
    its job ran (stops when the job ends)."""
    out: list[float] = []
    with httpx.Client(base_url=url, timeout=300) as http:
        i = 0
        while len(out) < n and not (watch is not None and watch.finished.is_set()):
            q = queries[i % len(queries)]
            i += 1
            during = watch is None or watch.running.is_set()
            t = time.perf_counter()
            r = http.post("/v1/search", json={"query": q})
            ms = (time.perf_counter() - t) * 1e3
            r.raise_for_status()
            if during and (watch is None or watch.running.is_set()):
                out.append(ms)
    return out


def search_during_ingest(
    url: str, queries: list[str], texts: list[str], words: int, n: int, root: Path, label: str = ""
) -> list[Row]:
    """Idle vs during one large upload, one client: two rows (`label` names the service's settings)."""
    # every question once first: both phases then send the same questions to the same warm caches
    sequential(url, queries, n)
    t = time.perf_counter()
    idle = sequential(url, queries, n)
    rows = [Row(f"idle{label}", 1, n, time.perf_counter() - t, idle, 0)]
    big: list[str] = []
    count = 0
    while count < words:
        for text in texts:
            big.append(text)
            count += len(text.split())
            if count >= words:
                break
    folder = Path(tempfile.mkdtemp(prefix="large", dir=root))
    # a name and text of its own per run: the same file again would be unchanged, and nothing would embed
    (folder / f"{folder.name}.txt").write_text(f"{folder.name}\n\n" + "\n\n".join(big))
    watch = JobWatch(url, upload(url, folder))
    watch.start()
    while not watch.running.wait(0.5):
        if watch.finished.is_set():
            raise SystemExit(f"the large upload ended before a search could be sent: {watch.job}")
    t = time.perf_counter()
    busy = sequential(url, queries, n, watch)
    watch.join()
    if watch.job["state"] != "done":
        raise SystemExit(f"the large upload did not finish cleanly: {watch.job}")
    rate = watch.job["report"]["tokens_per_second"]
    during = f"during a {count}-word upload{label} (ingest {rate:.0f} tokens/s)"
    rows.append(Row(during, 1, len(busy), time.perf_counter() - t, busy, 0))
    for r in rows:
        print("  " + " | ".join(r.cells()), file=sys.stderr)
    p95 = [float(np.percentile(r.latencies_ms, 95)) if r.latencies_ms else float("nan") for r in rows]
    print(f"  p95 during ingest / idle p95: {p95[1] / p95[0]:.2f}x (goal <= 2x)", file=sys.stderr)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench_dir", type=Path)
    ap.add_argument("--clients", default="1,4,16,64", help="client counts, comma-separated")
    ap.add_argument("--requests", type=int, default=128, help="answers per client count (at least one per client)")
    ap.add_argument("--queries", type=int, default=300, help="use the first N questions (a subset on small CPUs)")
    ap.add_argument("--docs", type=int, default=0, help="index only the first N documents (0: all)")
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    ap.add_argument(
        "--large-words", type=int, default=0, help="also run search during one upload of this many words (0: skip)"
    )
    ap.add_argument("--only-large", action="store_true", help="run only the search-during-a-large-upload rows")
    ap.add_argument(
        "--ingest-batch-tokens",
        default="",
        help="with --large-words: comma-separated CHUNKLESS_INGEST_BATCH_TOKENS values, one service (and pair of "
        "rows) each, side by side (default: the settings' value)",
    )
    args = ap.parse_args()
    levels = [int(x) for x in args.clients.split(",")]
    queries = [json.loads(x)["query"] for x in (args.bench_dir / "queries.jsonl").read_text().splitlines() if x.strip()]
    queries = queries[: args.queries]
    docs = [json.loads(x) for x in (args.bench_dir / "corpus.jsonl").read_text().splitlines() if x.strip()]
    docs = docs[: args.docs] if args.docs else docs

    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        root = Path(tmp)
        corpus = root / "corpus"
        corpus.mkdir()
        for d in docs:
            name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in d["doc_id"]) + ".txt"
            (corpus / name).write_text(d["text"])
        store = root / "store"
        rows: list[Row] = []

        proc, url = start(store, {})
        try:
            t = time.perf_counter()
            job = wait_job(url, upload(url, corpus))
            rep = job["report"]
            print(
                f"indexed {rep['documents']} documents, {rep['tokens']} tokens in {time.perf_counter() - t:.0f}s; "
                f"{len(queries)} questions",
                file=sys.stderr,
            )
            print("run | clients | requests | q/s | p50 ms | p95 ms | p99 ms | errors", file=sys.stderr)
            if args.large_words and not args.ingest_batch_tokens:
                rows += search_during_ingest(
                    url, queries, [d["text"] for d in docs], args.large_words, args.requests, root
                )
            if not args.only_large:
                rows += run_levels("batching on", url, queries, levels, args.requests)
        finally:
            stop(proc)
        for value in [v for v in args.ingest_batch_tokens.split(",") if v] if args.large_words else []:
            proc, url = start(store, {"CHUNKLESS_INGEST_BATCH_TOKENS": value})
            try:
                label = f", ingest_batch_tokens={value}"
                texts = [d["text"] for d in docs]
                rows += search_during_ingest(url, queries, texts, args.large_words, args.requests, root, label)
            finally:
                stop(proc)
        if args.only_large:
            return print_rows(rows, args.out)

        proc, url = start(store, {"CHUNKLESS_MAX_BATCH": "1"})
        try:
            rows += run_levels("batching off", url, queries, levels, args.requests)
        finally:
            stop(proc)

        proc, url = start(store, {})
        try:
            asyncio.run(load(url, queries, 8, 8))  # warm the model and caches before the jobs start
            rewriter = Rewriter(url, corpus_texts(corpus), root / "revisions")
            rewriter.start()
            for c in levels:
                n = max(args.requests, c)
                rewriter.answered_during = 0
                secs, lat, err = asyncio.run(load(url, queries, c, n, rewriter))
                row = Row("during ingest", c, n, secs, lat, err, rewriter.answered_during)
                rows.append(row)
                print(
                    "  " + " | ".join(row.cells()) + f" | {row.during_ingest} answered while a job ran", file=sys.stderr
                )
            rewriter.stop()
            print(
                f"rewrite jobs: {rewriter.jobs} done, {rewriter.documents} documents re-embedded, "
                f"{rewriter.failures} failures",
                file=sys.stderr,
            )
        finally:
            stop(proc)

    return print_rows(rows, args.out)


def print_rows(rows: list[Row], out: Path | None) -> int:
    """The rows as a markdown table on stdout (and as JSON in `out`); 1 if any request failed."""
    header = "| run | clients | requests | q/s | p50 ms | p95 ms | p99 ms | errors | answered while a job wrote |"
    print(header)
    print("|" + "---|" * 9)
    for r in rows:
        flag = "" if r.during_ingest is None else str(r.during_ingest)
        print("| " + " | ".join([*r.cells(), flag]) + " |")
    if out:
        out.write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    return 0 if all(r.errors == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
