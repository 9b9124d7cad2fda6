"""Token relevance over many row blocks into one flat vector, and its smoothing: the span engine's heavy half.

A query comes in one of two forms. A pooled vector q (dim,) gives r = D @ q, each row's cosine with
it. Query token vectors Q (m, dim) give each row its best match among them, r_j = max_i Q_i . d_j: the
document side of MaxSim (one (n, dim) x (dim, m) product per block, then a row maximum). Which form a
model's rows are meant for is the `Scorer`'s choice (retriever.methods.base); everything here takes
either, and one vector is the m = 1 case of the other.

On the CPU, batches of at least MIN_SPLIT_ROWS float32 rows go through numpy's BLAS (OpenBLAS), reading
torch's storage without a copy: torch's CPU BLAS is MKL, whose sgemv was markedly slower than OpenBLAS'
on the AMD EPYC hosts measured (`scripts/bench_spans.py` prints both; README, Speed). The rows are cut
into one range per torch thread, each run by a worker with single-threaded BLAS: OpenBLAS' own threads
keep spinning after a call, and slowed the torch smoothing after them and warm queries over many small
blocks. Query token vectors take the same path, one GEMM and row maximum per range. Smaller batches,
CUDA, other dtypes and non-contiguous views go through torch. Every block writes into its slice of
one preallocated output, so there is no concatenation copy.

`relevance_smoothed` also smooths on the CPU workers, each over its own row range while its rows are
still in cache (np.convolve releases the GIL): after a memory-bound GEMV the compute-bound convolution
then costs less than a separate torch pass. Each worker recomputes the rad rows on either side of its
range, so workers never wait on one another.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch
from threadpoolctl import ThreadpoolController

from retriever.spans import fix_edges, kernel_taps, smooth

# below this many rows torch.mv is as fast (the crossover measured at 384-d and 1024-d)
MIN_SPLIT_ROWS = 8_192
CHUNK_ROWS = 16_384  # rows a fused worker multiplies before smoothing them: r stays in cache
SENTENCE_GROUP_ROWS = 65_536  # rows of query-token similarities a sentence MaxSim holds: 8 MiB at m = 32


class _CpuPool:
    """Workers and a BLAS thread limiter, made on first use and shared by all retrievers."""

    _lock = threading.Lock()
    _pool: ThreadPoolExecutor | None = None
    _blas: ThreadpoolController | None = None
    _workers = 1
    _users = 0  # calls inside single_blas now
    _limiter: object | None = None

    @classmethod
    def get(cls) -> tuple[ThreadPoolExecutor, int]:
        with cls._lock:
            if cls._pool is None:
                cls._workers = max(1, torch.get_num_threads())
                cls._pool = ThreadPoolExecutor(cls._workers, thread_name_prefix="chunkless-gemv")
                cls._blas = ThreadpoolController().select(user_api="blas")
            return cls._pool, cls._workers

    @classmethod
    @contextmanager
    def single_blas(cls) -> Iterator[None]:
        """BLAS single-threaded while any call is inside; the first in sets it, the last out restores it.

        threadpoolctl's own `limit` contexts, overlapping in two threads, would restore in the wrong
        order and leave the process' numpy pinned to one thread.
        """
        cls.get()
        with cls._lock:
            if cls._users == 0:
                assert cls._blas is not None
                cls._limiter = cls._blas.limit(limits=1)
            cls._users += 1
        try:
            yield
        finally:
            with cls._lock:
                cls._users -= 1
                if cls._users == 0 and cls._limiter is not None:
                    cls._limiter.restore_original_limits()  # type: ignore[attr-defined]
                    cls._limiter = None


def _numpy_ok(block: torch.Tensor) -> bool:
    return (
        block.device.type == "cpu"
        and block.dtype == torch.float32
        and block.is_contiguous()
        and not block.requires_grad
    )


def token_relevance(
    blocks: Sequence[torch.Tensor], q: torch.Tensor, use_numpy: bool = True, min_split_rows: int = MIN_SPLIT_ROWS
) -> torch.Tensor:
    """Every row's relevance over (n_i, dim) blocks, for a query in either form.

    A pooled vector q (dim,) gives r = block_i @ q (one GEMV per block); query token vectors (m, dim)
    give each row's best match among them, r_j = max_i q_i . d_j (one product and a row maximum per
    block). Both share the CPU row-range BLAS path.

    Args:
        blocks: row blocks, scored in order (never concatenated).
        q: (dim,) query vector or (m, dim) query token vectors, m >= 1.
        use_numpy: allow the CPU row-range BLAS path (False: always torch).
        min_split_rows: fewest rows for the BLAS path.

    Returns:
        (sum n_i,) float32 on q's device.
    """
    n = sum(int(b.shape[0]) for b in blocks)
    out = torch.empty(n, dtype=torch.float32, device=q.device)  # (N,)
    if use_numpy and _cpu_fast(blocks, q, n, min_split_rows):
        src, q_np, out_np = _Rows([b.numpy() for b in blocks if len(b)]), _host_q(q), out.numpy()
        _in_ranges(n, lambda lo, hi: src.dot(lo, hi, q_np, out_np[lo:hi]))
        return out
    q32 = q.to(torch.float32)
    off = 0
    for b in blocks:
        m = int(b.shape[0])
        if m:
            if q32.dim() == 1:
                torch.mv(b.to(torch.float32), q32, out=out[off : off + m])
            else:
                torch.amax(b.to(torch.float32) @ q32.T, dim=1, out=out[off : off + m])
        off += m
    return out


def gemv_blocks(
    blocks: Sequence[torch.Tensor], q: torch.Tensor, use_numpy: bool = True, min_split_rows: int = MIN_SPLIT_ROWS
) -> torch.Tensor:
    """The concatenation of block_i @ q for a (dim,) query vector (`token_relevance`'s pooled form)."""
    return token_relevance(blocks, q, use_numpy, min_split_rows)


def similarities(blocks: Sequence[torch.Tensor], qs: torch.Tensor) -> torch.Tensor:
    """(N, m) every row's cosine with every query token vector: what MaxSim maximises, kept whole.

    For callers that change it before maximising (a relevance correction); `token_relevance` and
    `sentence_maxsim` never hold more than one block's worth.
    """
    qt = qs.to(torch.float32).T  # (dim, m)
    parts = [b.to(torch.float32) @ qt for b in blocks if len(b)]
    return torch.cat(parts) if parts else torch.zeros(0, qs.shape[0], device=qs.device)


def segment_max(
    sims: torch.Tensor, sid: torch.Tensor, n_segments: int, into: torch.Tensor | None = None
) -> torch.Tensor:
    """(S, m) per segment (sentence) and column, the maximum of `sims` (n, m) over the rows `sid` (n,) assigns it.

    Args:
        sims: row-by-query-token similarities.
        sid: segment of each row, in [0, n_segments).
        n_segments: S.
        into: an (S, m) accumulator to fold into (rows of other blocks); None: a fresh one at -inf.

    Returns:
        The accumulator; segments without rows stay -inf.
    """
    acc = torch.full((n_segments, sims.shape[1]), -math.inf, device=sims.device) if into is None else into
    return acc.scatter_reduce_(0, sid[:, None].expand(-1, sims.shape[1]), sims, "amax")


def sentence_maxsim(
    blocks: Sequence[torch.Tensor],
    qs: torch.Tensor,
    sid: torch.Tensor,
    n_sentences: int,
    group_rows: int = SENTENCE_GROUP_ROWS,
) -> torch.Tensor:
    """MaxSim restricted to each sentence: mean over query tokens of their best match among its rows.

    Args:
        blocks: row blocks of all documents, in order; their rows are sid's rows.
        qs: (m, dim) query token vectors.
        sid: (N,) sentence of each row.
        n_sentences: S.
        group_rows: rows whose (rows, m) similarities are held and reduced at once.

    Returns:
        (S,) float32; a sentence of no rows gets -inf.
    """
    acc = torch.full((n_sentences, int(qs.shape[0])), -math.inf, device=qs.device)  # (S, m)
    qt = qs.to(torch.float32).T  # (dim, m)
    group: list[torch.Tensor] = []
    lo = hi = 0  # the group's flat rows
    for b in [*blocks, None]:  # blocks gathered into groups: one reduction per group, bounded memory
        if group and (b is None or hi - lo + len(b) > group_rows):
            segment_max(torch.cat(group) if len(group) > 1 else group[0], sid[lo:hi], n_sentences, acc)
            group, lo = [], hi
        if b is not None and len(b):
            group.append(b.to(torch.float32) @ qt)
            hi += len(b)
    return acc.mean(1)


def _cpu_fast(blocks: Sequence[torch.Tensor], q: torch.Tensor, n: int, min_split_rows: int) -> bool:
    """Whether the batch takes the BLAS row-range path: on the CPU, large enough, all float32 and contiguous."""
    return q.device.type == "cpu" and n >= min_split_rows and all(_numpy_ok(b) for b in blocks if len(b))


def _host_q(q: torch.Tensor) -> np.ndarray:
    """q (dim,) as is; query token vectors (m, dim) transposed to (dim, m), so a row range is one GEMM."""
    q32 = q.to(torch.float32)
    return (q32 if q32.dim() == 1 else q32.T).contiguous().numpy()


def _in_ranges(n: int, work: Callable[[int, int], None]) -> None:
    """work(lo, hi) over one nearly equal row range per worker, BLAS single-threaded meanwhile."""
    pool, workers = _CpuPool.get()
    bounds = [n * k // workers for k in range(workers + 1)]
    with _CpuPool.single_blas():
        if workers == 1:
            work(0, n)
            return
        futures = [pool.submit(work, bounds[k], bounds[k + 1]) for k in range(workers) if bounds[k] < bounds[k + 1]]
        for f in futures:
            f.result()


class _Rows:
    """(n_i, dim) row arrays laid end to end, addressable by global row ranges."""

    def __init__(self, rows: list[np.ndarray]) -> None:
        self.rows = rows
        self.offsets = np.cumsum([0] + [len(p) for p in self.rows])  # (P+1,)

    @property
    def n(self) -> int:
        return int(self.offsets[-1])

    def dot(self, a: int, b: int, q: np.ndarray, out: np.ndarray) -> None:
        """out (b-a,) = rows[a:b] @ q for q (dim,); their row maxima of rows[a:b] @ q for q (dim, m)."""
        i = int(np.searchsorted(self.offsets, a, side="right")) - 1
        while a < b:
            lo = a - int(self.offsets[i])
            hi = min(b, int(self.offsets[i + 1])) - int(self.offsets[i])
            if q.ndim == 1:
                np.dot(self.rows[i][lo:hi], q, out=out[: hi - lo])
            else:
                np.dot(self.rows[i][lo:hi], q).max(axis=1, out=out[: hi - lo])
            out = out[hi - lo :]
            a += hi - lo
            i += 1


def _fused_range(
    src: _Rows, lo: int, hi: int, q: np.ndarray, w: np.ndarray, r: np.ndarray, s: np.ndarray, chunk: int
) -> None:
    """r[lo:hi] = the rows' relevance to q (`_Rows.dot`), s[lo:hi] = its zero-padded flat convolution with w,
    chunk by chunk."""
    rad = (len(w) - 1) // 2
    buf = np.zeros(hi - lo + 2 * rad, dtype=np.float32)  # r over [lo - rad, hi + rad); zeros outside [0, N)
    a0, b0 = max(lo - rad, 0), min(hi + rad, src.n)
    done = lo  # outputs [lo, done) are smoothed
    for a in range(a0, b0, chunk):
        b = min(a + chunk, b0)
        src.dot(a, b, q, buf[a - lo + rad : b - lo + rad])
        ready = hi if b == b0 else min(hi, b - rad)  # output i needs r up to i + rad
        if ready > done:
            s[done:ready] = np.convolve(buf[done - lo : ready - lo + 2 * rad], w, mode="valid")  # symmetric w
            done = ready
    r[lo:hi] = buf[rad : rad + hi - lo]


def relevance_smoothed(
    blocks: Sequence[torch.Tensor],
    q: torch.Tensor,
    doc_starts: torch.Tensor,
    sigma: float,
    min_split_rows: int = MIN_SPLIT_ROWS,
    chunk_rows: int = CHUNK_ROWS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw r and its per-document smoothing, as `token_relevance` then `smooth` (fused on the CPU).

    Args:
        blocks: row blocks of all documents, in order.
        q: (dim,) pooled query vector (r = blocks @ q), or (m, dim) query token vectors (r = row maxima).
        doc_starts: (B+1,) where each document begins in the flat rows.
        sigma: Gaussian width in rows (0: no smoothing).
        min_split_rows: fewest rows for the fused CPU path.
        chunk_rows: rows a worker multiplies before smoothing them.

    Returns:
        r (N,) and smoothed (N,), float32.
    """
    n = sum(int(b.shape[0]) for b in blocks)
    if sigma <= 0 or doc_starts.device.type != "cpu" or not _cpu_fast(blocks, q, n, min_split_rows):
        r = token_relevance(blocks, q)
        return r, smooth(r, doc_starts, sigma)
    src, q_np = _Rows([b.numpy() for b in blocks if len(b)]), _host_q(q)
    w = np.asarray(kernel_taps(float(sigma)), dtype=np.float32)
    r = torch.empty(n, dtype=torch.float32)  # (N,)
    out = torch.empty(n + 1, dtype=torch.float32)  # (N + 1,) spare last slot for fix_edges
    r_np, s_np = r.numpy(), out.numpy()[:n]
    _in_ranges(n, lambda lo, hi: _fused_range(src, lo, hi, q_np, w, r_np, s_np, chunk_rows))
    return r, fix_edges(out, r, doc_starts, sigma)
