"""Position biases of chunkless on a span-QA benchmark: window-edge ripple, document-start bias, and
cheap query-level features for telling answerable from unanswerable questions.

1. Ripple. Every stored token vector comes from the window where it is most central (indexer/embedders.py),
   so its distance to that window's centre runs 0..63 (MiniLM: 254 content tokens, stride 127); only the
   first and last ~63 tokens of a document sit further out. Per distance class it measures, over the gold
   document of every answerable question: the mean within-document z-score of r = D @ q, the same for gold
   answer tokens, the cosine of token vectors with their document's mean vector, the break between adjacent
   tokens taken from different windows, and (the causal test) the change of each token's r when the
   document is re-embedded with windows shifted by half a stride, which moves edge tokens to the centre.
   Corrections, applied to r by a span-method factory (`retriever.methods.with_correction`), measured with
   both span methods:
     doc-mean    r - (mean r of the token's class in its document - mean r of the document)
     doc-z       r standardised per class within its document, mapped back to the document's mean and sd
     corpus-mean r - q . (mean token vector of the class over the corpus - mean token vector overall)
     two layouts r from each token's vector averaged over the indexer's and the shifted layout (not a
                 correction of r but an index-time fix: twice the embedding cost)
2. Start bias. Deciles of the top span's relative position in its document against the gold answer's.
   Corrections re-rank the returned candidates by score + beta * g(relative position), beta fitted on
   the half of the questions whose md5(query_id) is even, reported on the other half.
3. Answerable vs unanswerable: AUC of a few per-query features (and a logistic mix fitted on the fit half).

    python scripts/experiment_bias.py /work/shared/benchmarks/squad2-dev --store /tmp/bias/store

Whole documents are scored (fetch_segments=0, pinned whatever the defaults say): the class tables index
whole documents. Runs return TOP=40 candidates (so position re-ranking can reorder them); hit@1/5 use the first 5.
Full squad2-dev (1,409 + 1,511 questions) takes about 9 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from indexer.embedders import HFTokenEmbedder, load_embedder
from indexer.store import Candidate, Where
from indexer.windows import assign_central, window_starts
from retriever import Retriever
from retriever.evaluation.answerability import auc
from retriever.evaluation.benchmark import Benchmark, BenchQuery, Hit, Scores, hit_at, load_benchmark, score
from retriever.evaluation.evaluate import index_benchmark, run_chunkless
from retriever.fetch import DocTokens
from retriever.methods import (
    MethodContext,
    MethodFactory,
    SentenceCaches,
    SentenceMethod,
    ThresholdMethod,
    ThresholdOptions,
    with_correction,
)
from schemas import Settings

TOP = 40  # every re-ranked candidate comes back, so position re-ranking can reorder them; hit@1/5 unchanged
BIN = 8  # tokens per distance-to-centre class
EDGE = 64  # distance at and beyond which a token is at a document's start or end (no window centres it)
N_CLS = EDGE // BIN + 1  # classes 0..7 inside windows, 8: document edge
Correction = Callable[[torch.Tensor, torch.Tensor, list[DocTokens], torch.Tensor], torch.Tensor]


# --- window geometry -------------------------------------------------------------------------------
@dataclass
class Geometry:
    """Per token of one document: distance to its owner window's centre, class, and owner switches."""

    dist: np.ndarray  # (n,) float
    cls: np.ndarray  # (n,) int64 in [0, N_CLS)
    switch: np.ndarray  # (n,) bool: token i comes from another window than token i - 1


def geometry(n: int, width: int, starts: Sequence[int]) -> Geometry:
    bounds = np.array([[s, min(s + width, n)] for s in starts], dtype=np.int64)
    owner = assign_central(n, bounds)
    idx = np.arange(n)
    centre = (bounds[owner, 0] + bounds[owner, 1] - 1) / 2
    dist = np.abs(idx - centre)
    cls = np.minimum(dist.astype(np.int64) // BIN, N_CLS - 1)
    switch = np.zeros(n, dtype=bool)
    switch[1:] = owner[1:] != owner[:-1]
    return Geometry(dist, cls, switch)


def shifted_starts(n: int, width: int, stride: int) -> list[int]:
    """Windows offset by half a stride from the indexer's: tokens at a window edge there sit at a centre here."""
    if n <= width:
        return [0]
    starts = [0, *range(stride // 2, n - width, stride)]
    starts.append(n - width)
    return sorted(set(starts))


def hidden_states(emb: HFTokenEmbedder, seqs: list[list[int]]) -> list[np.ndarray]:
    """(len, dim) last hidden states of each id sequence, in token-budgeted batches of similar length.

    The embedder's public methods window whole documents their own way; the shifted layout needs the
    model run on windows of our choosing, so this drives `emb.model` with the embedder's padding and
    batch budget (right padding, as the indexer does: encoder states are unaffected by it).
    """
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    out: list[np.ndarray] = [np.empty(0)] * len(seqs)
    i = 0
    while i < len(order):
        longest = len(seqs[order[i]])
        n = max(1, min(len(order) - i, emb.batch_tokens // max(longest, 1)))
        batch = order[i : i + n]
        ids = torch.full((len(batch), longest), emb.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, j in enumerate(batch):
            ids[row, : len(seqs[j])] = torch.tensor(seqs[j])
            mask[row, : len(seqs[j])] = 1
        with torch.inference_mode():
            hidden = emb.model(input_ids=ids.to(emb.device), attention_mask=mask.to(emb.device)).last_hidden_state
        for row, j in enumerate(batch):
            out[j] = hidden[row, : len(seqs[j])].float().cpu().numpy()
        i += n
    return out


def embed_with_starts(emb: HFTokenEmbedder, ids: list[int], starts: list[int]) -> np.ndarray:
    """(n, dim) unit token vectors of one document embedded with the given window starts (most-central rule)."""
    n, w = len(ids), emb.content
    bounds = np.array([[s, min(s + w, n)] for s in starts], dtype=np.int64)
    owner = assign_central(n, bounds)
    res = hidden_states(emb, [emb.prefix + ids[s:e] + emb.suffix for s, e in bounds])
    p = len(emb.prefix)
    out = np.empty((n, emb.dim), dtype=np.float32)
    for k, (s, e) in enumerate(bounds):
        take = np.nonzero(owner[s:e] == k)[0]
        out[s + take] = res[k][p : p + (e - s)][take]
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


# --- the retriever with a hook on r -----------------------------------------------------------------
class Probe(Retriever):
    """A Retriever whose raw relevance goes through `correction`, recording per query max r and the best
    doc cosine."""

    def __init__(
        self,
        settings: Settings,
        embedder: HFTokenEmbedder,
        classes: dict[str, torch.Tensor],
        correction: Correction | None,
        span_method: MethodFactory | None,
    ) -> None:
        super().__init__(settings, embedder=embedder, span_method=with_correction(self.corrected, span_method))
        self.classes = classes
        self.correction = correction
        self.max_r: list[float] = []
        self.doc_cos: list[float] = []

    def recall(self, query: str, q: np.ndarray, where: Where | None = None) -> list[Candidate]:
        cands = super().recall(query, q, where)
        self.doc_cos.append(cands[0].score if cands else float("nan"))
        return cands

    def corrected(self, r: torch.Tensor, q: torch.Tensor, docs: list[DocTokens]) -> torch.Tensor:
        """The relevance hook: records max r, then applies the correction with the tokens' classes."""
        self.max_r.append(float(r.max()) if r.numel() else float("nan"))
        if self.correction is None or not docs:
            return r
        cls = torch.cat([self.classes[d.doc_id] for d in docs])
        assert cls.numel() == r.numel(), "class tables need whole documents (fetch_segments=0)"
        return self.correction(r, cls, docs, q)


def doc_keys(docs: list[DocTokens], cls: torch.Tensor) -> torch.Tensor:
    doc = torch.repeat_interleave(torch.arange(len(docs), device=cls.device), torch.tensor([d.n for d in docs]))
    return doc * N_CLS + cls


def group_stats(x: torch.Tensor, key: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.double()
    cnt = torch.bincount(key, minlength=n).double().clamp(min=1)
    mu = torch.bincount(key, x, minlength=n) / cnt
    var = torch.bincount(key, x * x, minlength=n) / cnt - mu * mu
    return mu, var.clamp(min=1e-12).sqrt()


def doc_mean(r: torch.Tensor, cls: torch.Tensor, docs: list[DocTokens], q: torch.Tensor) -> torch.Tensor:
    key = doc_keys(docs, cls)
    mu_c, _ = group_stats(r, key, len(docs) * N_CLS)
    mu_d, _ = group_stats(r, key // N_CLS, len(docs))
    return (r.double() - mu_c[key] + mu_d[key // N_CLS]).float()


def doc_z(r: torch.Tensor, cls: torch.Tensor, docs: list[DocTokens], q: torch.Tensor) -> torch.Tensor:
    key = doc_keys(docs, cls)
    mu_c, sd_c = group_stats(r, key, len(docs) * N_CLS)
    mu_d, sd_d = group_stats(r, key // N_CLS, len(docs))
    d = key // N_CLS
    return (mu_d[d] + sd_d[d] * (r.double() - mu_c[key]) / sd_c[key]).float()


def corpus_mean(offsets: torch.Tensor) -> Correction:
    """offsets (N_CLS, dim): class mean token vector minus overall mean (an index-time vector shift)."""

    def fix(r: torch.Tensor, cls: torch.Tensor, docs: list[DocTokens], q: torch.Tensor) -> torch.Tensor:
        return r - (offsets @ q)[cls]

    return fix


def two_layouts(avg: dict[str, torch.Tensor]) -> Correction:
    """r from the mean of each token's vectors in the indexer's and the shifted window layout (2x index cost)."""

    def fix(r: torch.Tensor, cls: torch.Tensor, docs: list[DocTokens], q: torch.Tensor) -> torch.Tensor:
        return torch.cat([avg[d.doc_id] @ q for d in docs])

    return fix


# --- helpers ---------------------------------------------------------------------------------------
def is_fit(q: BenchQuery) -> bool:
    return int(hashlib.md5(q.query_id.encode()).hexdigest(), 16) % 2 == 0


def hit1(qs: list[BenchQuery], hits: list[list[Hit]]) -> float:
    return float(np.mean([hit_at(q, h, 1) for q, h in zip(qs, hits, strict=True)])) if qs else float("nan")


def table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    )


@dataclass
class Run:
    hits: list[list[Hit]]
    max_r: list[float]
    doc_cos: list[float]
    secs: float


@dataclass
class Context:
    settings: Settings
    emb: HFTokenEmbedder
    classes: dict[str, torch.Tensor]
    caches: SentenceCaches = field(default_factory=SentenceCaches)

    def sentence_method(self, ctx: MethodContext) -> SentenceMethod:
        """The sentence method with caches shared by every run: re-ranking embeds each sentence once."""
        return SentenceMethod(ctx, self.caches)

    def run(
        self,
        queries: list[BenchQuery],
        correction: Correction | None = None,
        method: MethodFactory | None = None,
        **update: object,
    ) -> Run:
        s = self.settings.updated(**update)
        if method is None and s.spans.span_method == "sentences":
            method = self.sentence_method
        r = Probe(s, self.emb, self.classes, correction, method)
        try:
            hits, secs = run_chunkless(r, queries, top=TOP)
            assert len(r.max_r) == len(r.doc_cos) == len(queries)
            return Run(hits, r.max_r, r.doc_cos, secs)
        finally:
            r.close()


# --- 1. ripple -------------------------------------------------------------------------------------
def ripple_tables(
    bench: Benchmark,
    queries: list[BenchQuery],
    qvec: np.ndarray,
    vecs: dict[str, np.ndarray],
    shifted: dict[str, np.ndarray],
    geo: dict[str, Geometry],
    starts: dict[str, np.ndarray],
    ends: dict[str, np.ndarray],
) -> str:
    z_by = np.full((len(queries), N_CLS), np.nan)
    raw_by = np.full((len(queries), N_CLS), np.nan)
    dz_by = np.full((len(queries), N_CLS), np.nan)
    ans_sum, ans_cnt = np.zeros(N_CLS), np.zeros(N_CLS)
    jump_sw, jump_no = [], []
    for i, q in enumerate(queries):
        v, g = vecs[q.doc_id], geo[q.doc_id]
        r = v @ qvec[i]
        mu, sd = r.mean(), r.std() + 1e-12
        z = (r - mu) / sd
        zs = (shifted[q.doc_id] @ qvec[i] - mu) / sd  # the same tokens, windows shifted half a stride
        cnt = np.bincount(g.cls, minlength=N_CLS)
        z_by[i] = np.bincount(g.cls, z, minlength=N_CLS) / np.maximum(cnt, 1)
        raw_by[i] = np.bincount(g.cls, r, minlength=N_CLS) / np.maximum(cnt, 1)
        dz_by[i] = np.bincount(g.cls, z - zs, minlength=N_CLS) / np.maximum(cnt, 1)
        ans = np.zeros(len(r), dtype=bool)
        for a, b in q.answers:
            ans |= (starts[q.doc_id] < b) & (ends[q.doc_id] > a)
        ans_sum += np.bincount(g.cls[ans], z[ans], minlength=N_CLS)
        ans_cnt += np.bincount(g.cls[ans], minlength=N_CLS)
        dz = np.abs(np.diff(z))
        jump_sw.append(dz[g.switch[1:]].mean())
        jump_no.append(dz[~g.switch[1:]].mean())
    # query-independent: cosine with the document's mean token vector, adjacent-token cosine
    cos_sum, cos_cnt = np.zeros(N_CLS), np.zeros(N_CLS)
    adj_sw, adj_no, self_sum = [], [], np.zeros(N_CLS)
    for d in bench.docs:
        v, g = vecs[d.doc_id], geo[d.doc_id]
        m = v.mean(0)
        c = v @ (m / np.linalg.norm(m))
        cos_sum += np.bincount(g.cls, c, minlength=N_CLS)
        cos_cnt += np.bincount(g.cls, minlength=N_CLS)
        self_sum += np.bincount(g.cls, (v * shifted[d.doc_id]).sum(1), minlength=N_CLS)
        adj = (v[1:] * v[:-1]).sum(1)
        adj_sw += list(adj[g.switch[1:]])
        adj_no += list(adj[~g.switch[1:]])
    n = len(queries)

    def ms(x: np.ndarray, j: int) -> str:
        col = x[:, j][np.isfinite(x[:, j])]
        return f"{col.mean():+.3f} ± {col.std() / np.sqrt(len(col)):.3f}"

    rows = []
    for j in range(N_CLS):
        label = f"{j * BIN}-{j * BIN + BIN - 1}" if j < N_CLS - 1 else f">={EDGE} (doc edge)"
        rows.append(
            [
                label,
                f"{int(cos_cnt[j])}",
                ms(z_by, j),
                f"{np.nanmean(raw_by[:, j]):.4f}",
                f"{ans_sum[j] / max(ans_cnt[j], 1):+.3f} ({int(ans_cnt[j])})",
                ms(dz_by, j),
                f"{cos_sum[j] / max(cos_cnt[j], 1):.4f}",
                f"{self_sum[j] / max(cos_cnt[j], 1):.4f}",
            ]
        )
    out = table(
        [
            "dist to window centre",
            "tokens",
            "mean z(r) ± se",
            "mean r",
            "answer-token z (n)",
            "z(r) - z(r shifted) ± se",
            "cos to doc mean",
            "cos to shifted self",
        ],
        rows,
    )
    out += (
        f"\n\nover {n} questions (gold document). Break at window switches: mean |z(r_i) - z(r_i-1)| "
        f"{np.mean(jump_sw):.3f} at a switch vs {np.mean(jump_no):.3f} elsewhere; adjacent-token cosine "
        f"{np.mean(adj_sw):.4f} at a switch vs {np.mean(adj_no):.4f} elsewhere "
        f"({len(adj_sw)} switches, {len(adj_no)} other pairs)."
    )
    return out


# --- 2. start bias ---------------------------------------------------------------------------------
def relpos(h: Hit, lengths: dict[str, int]) -> float:
    return h.start / max(lengths[h.doc_id], 1)


def decile_table(queries: list[BenchQuery], runs: dict[str, list[list[Hit]]], lengths: dict[str, int]) -> str:
    gold = np.array([min(a for a, _ in q.answers) / lengths[q.doc_id] for q in queries])
    cols: dict[str, np.ndarray] = {"gold answer": gold}
    for name, hits in runs.items():
        top = np.array([relpos(h[0], lengths) if h else np.nan for h in hits])
        miss = np.array([not hit_at(q, h, 1) for q, h in zip(queries, hits, strict=True)])
        cols[f"{name} top-1"] = top
        cols[f"{name} top-1, misses"] = top[miss]
        cols[f"{name} gold, misses"] = gold[miss]
    rows = []
    for k in range(10):
        row = [f"{k / 10:.1f}-{(k + 1) / 10:.1f}"]
        for x in cols.values():
            x = x[np.isfinite(x)]
            row.append(f"{np.mean(np.minimum(x * 10, 9.999).astype(int) == k):.3f}")
        rows.append(row)
    rows.append(["mean", *[f"{np.nanmean(x):.3f}" for x in cols.values()]])
    rows.append(["n", *[f"{np.isfinite(x).sum()}" for x in cols.values()]])
    return table(["relative position", *cols], rows)


SHAPES: dict[str, Callable[[float], float]] = {
    "linear (relpos)": lambda p: p,
    "first 10% (-1 if relpos < 0.1)": lambda p: -1.0 if p < 0.1 else 0.0,
    "early decay (-exp(-relpos/0.1))": lambda p: -float(np.exp(-p / 0.1)),
}
BETAS = [round(float(b), 3) for b in np.arange(-0.1, 0.1001, 0.005)]


def reranked(
    hits: list[list[Hit]], lengths: dict[str, int], g: Callable[[float], float], beta: float
) -> list[list[Hit]]:
    if beta == 0:
        return [h[:5] for h in hits]
    return [sorted(h, key=lambda x: -(x.score + beta * g(relpos(x, lengths))))[:5] for h in hits]


def start_bias_fit(queries: list[BenchQuery], hits: list[list[Hit]], lengths: dict[str, int]) -> str:
    fit = [i for i, q in enumerate(queries) if is_fit(q)]
    held = [i for i, q in enumerate(queries) if not is_fit(q)]

    def sub(idx: list[int], hs: list[list[Hit]]) -> tuple[list[BenchQuery], list[list[Hit]]]:
        return [queries[i] for i in idx], [hs[i] for i in idx]

    base = score(*sub(held, [h[:5] for h in hits]))
    rows = [["none", "0", f"{hit1(*sub(fit, hits)):.3f}", f"{base.hit1:.3f}", f"{base.hit5:.3f}", f"{base.f1:.3f}"]]
    for name, g in SHAPES.items():
        best = max(BETAS, key=lambda b: (hit1(*sub(fit, reranked(hits, lengths, g, b))), -abs(b)))
        s = score(*sub(held, reranked(hits, lengths, g, best)))
        fit_h1 = hit1(*sub(fit, reranked(hits, lengths, g, best)))
        rows.append([name, f"{best:+.3f}", f"{fit_h1:.3f}", f"{s.hit1:.3f}", f"{s.hit5:.3f}", f"{s.f1:.3f}"])
    return table(
        ["score + beta * g(relpos)", "beta (fit half)", "fit hit@1", "held-out hit@1", "hit@5", "F1"], rows
    ) + (f"\n\nfit half {len(fit)} questions, held-out half {len(held)} (md5(query_id) even / odd)")


# --- 3. AUC features -------------------------------------------------------------------------------
def features(run: Run) -> dict[str, np.ndarray]:
    def at(h: list[Hit], k: int) -> float:
        return h[min(k, len(h) - 1)].score if h else -1.0

    return {
        "top-1 span score (current)": np.array([at(h, 0) for h in run.hits]),
        "margin top-1 - top-2": np.array([at(h, 0) - at(h, 1) for h in run.hits]),
        "margin top-1 - top-5": np.array([at(h, 0) - at(h, 4) for h in run.hits]),
        "max raw token r": np.array(run.max_r),
        "best doc pooled cosine": np.array(run.doc_cos),
    }


def logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 50) -> np.ndarray:
    """Weights (with bias last) by Newton's method on standardised features."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xb.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-xb @ w))
        grad = xb.T @ (p - y) + l2 * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + l2 * np.eye(len(w))
        w -= np.linalg.solve(hess, grad)
    return w


def f3(x: float | None) -> str:
    """An AUC to three decimals; "-" when a half has no question of one kind (tiny benchmarks)."""
    return "-" if x is None else f"{x:.3f}"


def auc_table(pos: Run, neg: Run, qpos: list[BenchQuery], qneg: list[BenchQuery]) -> str:
    fp, fn = features(pos), features(neg)
    mpos = np.array([is_fit(q) for q in qpos])
    mneg = np.array([is_fit(q) for q in qneg])
    rows = []
    for name in fp:
        a = auc(list(fp[name]), list(fn[name]))
        h = auc(list(fp[name][~mpos]), list(fn[name][~mneg]))
        rows.append([name, f3(a), f3(h)])
    names = list(fp)
    for combo in (names, [names[0], names[3], names[4]]):
        x = np.vstack([np.column_stack([fp[n] for n in combo]), np.column_stack([fn[n] for n in combo])])
        y = np.concatenate([np.ones(len(qpos)), np.zeros(len(qneg))])
        m = np.concatenate([mpos, mneg])
        mu, sd = x[m].mean(0), x[m].std(0) + 1e-12
        xs = (x - mu) / sd
        w = logistic(xs[m], y[m])
        s = xs @ w[:-1]
        ho = ~m
        h = auc(list(s[ho & (y == 1)]), list(s[ho & (y == 0)]))
        label = "logistic mix of all" if combo is names else "logistic mix: top-1, max r, doc cosine"
        rows.append([f"{label} (fit on fit half)", "-", f3(h)])
    return table(["feature", "AUC all", "AUC held-out half"], rows) + (
        f"\n\n{len(qpos)} answerable vs {len(qneg)} unanswerable; AUC > .5: higher for answerable"
    )


# --- main ------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench_dir", type=Path)
    ap.add_argument("--store", type=Path, required=True, help="store folder (reused when it holds the corpus)")
    ap.add_argument("--sample", type=int, default=0, help="answerable questions (seeded sample; 0: all)")
    ap.add_argument("--json", type=Path, help="write the per-run scores here")
    args = ap.parse_args()
    t_start = time.perf_counter()
    bench = load_benchmark(args.bench_dir)
    # pinned, whatever the defaults are: whole documents scored (the class tables index whole documents),
    # stored in segments of the server limit
    settings = Settings(store_path=args.store, fetch_segments=0, segment_tokens=None, fetch_rank="pooled")
    emb = load_embedder(settings)
    assert isinstance(emb, HFTokenEmbedder)
    n_new = index_benchmark(bench, settings, emb)
    queries = bench.answerable(args.sample or None)
    unans = [q for q in bench.queries if not q.answerable]
    unans = unans[: args.sample] if args.sample else unans
    lengths = {d.doc_id: len(d.text) for d in bench.docs}
    print(
        f"{len(queries)} answerable, {len(unans)} unanswerable questions, {len(bench.docs)} documents "
        f"({n_new} embedded now); window {emb.content} content tokens, stride {emb.stride}\n",
        flush=True,
    )

    # stored vectors and their window geometry
    with Retriever(settings, embedder=emb) as r:
        docs = {d.doc_id: d for d in r.fetcher.fetch(r.store.headers())}
        device = r.device
    vecs = {k: d.vectors.cpu().numpy() for k, d in docs.items()}
    starts = {k: np.asarray(d.starts) for k, d in docs.items()}
    ends = {k: np.asarray(d.ends) for k, d in docs.items()}
    geo: dict[str, Geometry] = {}
    shifted: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    for d in bench.docs:
        ids, off = emb.tokenize(d.text)
        assert len(ids) == docs[d.doc_id].n and np.array_equal(off[:, 0], starts[d.doc_id]), d.doc_id
        geo[d.doc_id] = geometry(len(ids), emb.content, window_starts(len(ids), emb.content, emb.stride))
        shifted[d.doc_id] = embed_with_starts(emb, ids, shifted_starts(len(ids), emb.content, emb.stride))
    t_shift = time.perf_counter() - t0
    classes = {k: torch.from_numpy(g.cls).to(device) for k, g in geo.items()}
    allv = np.concatenate(list(vecs.values()))
    allc = np.concatenate([geo[k].cls for k in vecs])
    m_all = allv.mean(0)
    offsets = np.stack([allv[allc == c].mean(0) - m_all for c in range(N_CLS)]).astype(np.float32)
    qvec = np.concatenate(
        [emb.embed_queries([q.query for q in queries[i : i + 64]]) for i in range(0, len(queries), 64)]
    )

    print("## 1. Ripple by distance to the owner window's centre (tokens)\n")
    print(ripple_tables(bench, queries, qvec, vecs, shifted, geo, starts, ends))
    print(
        f"\n(re-embedding with shifted windows took {t_shift:.0f}s; corpus-mean offset norms by class: "
        + ", ".join(f"{np.linalg.norm(o):.3f}" for o in offsets)
        + ")\n",
        flush=True,
    )

    avg = {}
    for k, v in vecs.items():
        a = v + shifted[k]
        avg[k] = torch.from_numpy(a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)).to(device)
    ctx = Context(settings, emb, classes)
    corrections: dict[str, Correction | None] = {
        "none": None,
        "doc-mean": doc_mean,
        "doc-z": doc_z,
        "corpus-mean": corpus_mean(torch.from_numpy(offsets).to(device)),
        "two layouts": two_layouts(avg),
    }
    relative = ThresholdMethod.with_options(ThresholdOptions(mode="relative"))
    methods: dict[str, tuple[MethodFactory | None, dict[str, object]]] = {
        "sentences": (None, {}),
        "threshold (relative)": (relative, {"span_method": "threshold"}),
    }
    held = [i for i, q in enumerate(queries) if not is_fit(q)]
    runs: dict[tuple[str, str], Run] = {}
    rows, dump = [], {}
    for mname, (factory, upd) in methods.items():
        for cname, corr in corrections.items():
            run = ctx.run(queries, corr, factory, **upd)
            runs[(mname, cname)] = run
            sc: Scores = score(queries, [h[:5] for h in run.hits], run.secs)
            h1_held = hit1([queries[i] for i in held], [run.hits[i] for i in held])
            rows.append(
                [
                    mname,
                    cname,
                    f"{sc.hit1:.3f}",
                    f"{h1_held:.3f}",
                    f"{sc.hit5:.3f}",
                    f"{sc.f1:.3f}",
                    f"{sc.words:.1f}",
                    f"{run.secs:.0f}",
                ]
            )
            dump[f"{mname}/{cname}"] = {**sc.__dict__, "hit1_held_out": h1_held}
            print("| " + " | ".join(rows[-1]) + " |", file=sys.stderr, flush=True)  # progress
    print("\n## Ripple corrections\n")
    print(table(["span method", "correction", "hit@1", "hit@1 held-out half", "hit@5", "F1", "words", "run s"], rows))

    print("\n## 2. Relative position in the document (share of questions per decile)\n")
    base = {m: runs[(m, "none")].hits for m in methods}
    print(decile_table(queries, base, lengths))
    for m in methods:
        print(f"\n### Position re-ranking of the returned candidates, {m}\n")
        print(start_bias_fit(queries, base[m], lengths))

    print("\n## 3. Answerable vs unanswerable (default method)\n", flush=True)
    neg = ctx.run(unans)
    print(auc_table(runs[("sentences", "none")], neg, queries, unans))
    print(f"\ntotal {time.perf_counter() - t_start:.0f}s")
    if args.json:
        args.json.write_text(json.dumps(dump, indent=1))


if __name__ == "__main__":
    main()
