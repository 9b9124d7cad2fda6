"""Throughput of the span engine: r = D @ q, smoothing and span extraction over a ~1M-token batch.

Prints, per dimension, the median time of each stage and of the whole scoring path, tokens scored per
second, and the effective bandwidth (bytes of D read / time) against the copy bandwidth measured on the
same device (a large tensor clone; read + write bytes / time, as STREAM's "copy" counts it).

    python scripts/bench_spans.py --device cpu --dims 384 1024 --docs 500 --tokens 2000
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from indexer import codec
from retriever.relevance import gemv_blocks, relevance_smoothed
from retriever.spans import SpanParams, extract_spans, smooth


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> tuple[float, float]:
    """(median, best) seconds of `fn` over `repeats` runs, device-synchronised around each.

    On a shared machine the best run is the one least disturbed by other work: both are printed.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int) -> float:
    """GB/s of a large clone on `device`, counting bytes read plus bytes written."""
    x = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    y = torch.empty_like(x)  # preallocated: a fresh clone would time page faults, not memory traffic
    _, best = timed(lambda: y.copy_(x), device, repeats)
    return 2 * nbytes / best / 1e9


def make_batch(
    n_docs: int, n_tok: int, dim: int, device: torch.device, gen: torch.Generator
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-document unit token matrices (as the cache holds them), doc_starts (B+1,), ends_sentence (N,), q."""
    docs = []
    q = torch.nn.functional.normalize(torch.randn(dim, generator=gen), dim=0)
    for _ in range(n_docs):
        d = torch.randn(n_tok, dim, generator=gen)  # (n_tok, dim)
        # one answer-like run per document, leaning towards q, so every document yields a span
        a = int(torch.randint(0, n_tok - 60, (1,), generator=gen))
        d[a : a + 60] += 0.1 * dim**0.5 * q
        docs.append(torch.nn.functional.normalize(d, dim=1).to(device))
    doc_starts = torch.arange(n_docs + 1, device=device) * n_tok
    ends_sentence = (torch.rand(n_docs * n_tok, generator=gen) < 0.05).to(device)
    return docs, doc_starts, ends_sentence, q.to(device)


def time_flat_gemv(
    docs: list[torch.Tensor], q: torch.Tensor, device: torch.device, repeats: int
) -> tuple[float, float]:
    """D @ q over all documents in one contiguous (N, dim) tensor: the layout a concatenating cache would hold."""
    flat = torch.cat(docs)  # (N, dim) a copy, freed on return
    return timed(lambda: gemv_blocks([flat], q), device, repeats)


def bench_dim(args: argparse.Namespace, dim: int, device: torch.device, copy_before: float) -> None:
    gen = torch.Generator().manual_seed(0)
    docs, doc_starts, ends_sentence, q = make_batch(args.docs, args.tokens, dim, device, gen)
    n = args.docs * args.tokens
    d_bytes = n * dim * 4
    params = SpanParams()
    thr = 0.05  # between the noise (~1/sqrt(dim)) and the planted runs (~0.1)

    def relevance() -> torch.Tensor:
        return gemv_blocks(docs, q)  # (N,) one GEMV per document into one output, as Scorer.relevance

    r = relevance()
    s = smooth(r, doc_starts, params.sigma)

    def full() -> object:
        _, ss = relevance_smoothed(docs, q, doc_starts, params.sigma)  # as ThresholdMethod.signal
        return extract_spans(ss, doc_starts, ends_sentence, params, thr)

    stages = {
        "D @ q (per doc)": timed(relevance, device, args.repeats),
        "D @ q (per doc, torch.mv)": timed(lambda: gemv_blocks(docs, q, use_numpy=False), device, args.repeats),
        "D @ q (one flat GEMV)": time_flat_gemv(docs, q, device, args.repeats),
        "smooth": timed(lambda: smooth(r, doc_starts, params.sigma), device, args.repeats),
        "D @ q + smooth (fused)": timed(
            lambda: relevance_smoothed(docs, q, doc_starts, params.sigma), device, args.repeats
        ),
        "extract_spans": timed(lambda: extract_spans(s, doc_starts, ends_sentence, params, thr), device, args.repeats),
        "full path": timed(full, device, args.repeats),
    }
    if args.int8:
        codes, scales = codec.encode_plain(docs[0].cpu().numpy(), "int8")
        c = torch.from_numpy(codes).to(device).repeat(args.docs, 1)  # (N, dim) uint8
        sc = torch.from_numpy(scales).to(device).repeat(args.docs)  # (N,)
        stages["int8 decode (fetch time)"] = timed(lambda: codec.decode_plain(c, sc, "int8"), device, args.repeats)
    spans = extract_spans(s, doc_starts, ends_sentence, params, thr)
    print(f"\n{dim}-d, {args.docs} docs x {args.tokens} tokens = {n:,} tokens, D = {d_bytes / 1e9:.2f} GB float32")
    print(f"  spans found: {spans.start.numel()}")
    print(f"  {'stage':<26} {'median ms':>10} {'best ms':>9}")
    for name, (med, best) in stages.items():
        print(f"  {name:<26} {med * 1e3:10.2f} {best * 1e3:9.2f}")
    # a shared host's bandwidth drifts: the larger of the readings before and after is the fairer yardstick
    copy_after = copy_bandwidth(device, 1 << 30, args.repeats)
    copy_gbs = max(copy_before, copy_after)
    print(f"  copy bandwidth before {copy_before:.2f} GB/s, after {copy_after:.2f} GB/s: % of {copy_gbs:.2f}")
    for name in (*(k for k in stages if k.startswith("D @ q")), "full path"):
        for label, t in zip(("median", "best"), stages[name], strict=True):
            gbs = d_bytes / t / 1e9
            print(
                f"  {name:<26} {label:<6} {n / t / 1e6:7.1f} M tokens/s  {gbs:6.2f} GB/s effective"
                f"  = {100 * gbs / copy_gbs:5.1f}% of copy bandwidth"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dims", type=int, nargs="+", default=[384, 1024])
    ap.add_argument("--docs", type=int, default=500)
    ap.add_argument("--tokens", type=int, default=2000, help="tokens per document")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--int8", action="store_true", help="also time int8 decode of the batch")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    copy_gbs = copy_bandwidth(device, 1 << 30, args.repeats)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"copy bandwidth (1 GiB copy_, read + write, best of {args.repeats}): {copy_gbs:.2f} GB/s")
    with torch.inference_mode():
        for dim in args.dims:
            bench_dim(args, dim, device, copy_gbs)
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
