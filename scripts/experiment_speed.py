"""Speed and quality candidates of the sentence method on a fixed sample, from cached per-candidate scores.

Every sentence of each query's fetched runs is collected once per query encoder with its three
signals, through the public search path (top = rerank_k = every candidate):

- sentence_cos: `rerank_weight=1` (each candidate's sentence vector, its cosine with the query),
- context: `rerank_k=0` (the pooled in-context cosine, nothing re-embedded),
- lexical: `rerank_k=0, lexical_first=1` minus context (BM25 over the fetched sentences, scaled to [0, 1]).

Any first stage (context + a * lexical, keep the best k to re-embed) and final blend
(w * sentence_cos + (1 - w) * context + b * lexical) is then scored offline: hit@1, evidence F1, words.
`--fit-calibration` fits the answerability model on the chosen configuration (half the questions,
answerable and unanswerable, seed 0) and reports AUC on the other half; `--write-calibration`
stores it as retriever/calibration.json.

    python scripts/experiment_speed.py ../shared/benchmarks/squad2-dev --sample 300 --fit-calibration
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.boundaries import boundary_chars
from indexer.embedders import HFTokenEmbedder, load_embedder
from retriever import Retriever
from retriever.calibration import FEATURES, PARAMS, fit, lexical_features
from retriever.evaluation.answerability import auc
from retriever.evaluation.benchmark import BenchQuery, Hit, evidence_f1, hit_at, load_benchmark, words
from retriever.evaluation.evaluate import index_benchmark
from retriever.lexical import coverage
from schemas.settings import Settings

ALL = 400  # more than the sentences of any query's fetched runs
BEFORE: dict[str, object] = {"rerank_k": 40, "lexical_weight": 0.0, "lexical_first": 0.0, "length_penalty": 0.0}
CONFIGS: dict[str, dict[str, object]] = {
    "before: re-embed 40, dense only": BEFORE,
    "before, int8 query encoder": BEFORE | {"query_int8": True},
    "default: re-embed 8, BM25 0.3, length 0.08": {},
    "default, int8 query encoder": {"query_int8": True},
    "BM25, nothing re-embedded": {"rerank_k": 0},
}


@dataclass
class Pool:
    """Every candidate of one query: spans and their three signals (aligned)."""

    hits: list[Hit]
    sentence_cos: np.ndarray
    context: np.ndarray
    lexical: np.ndarray
    segment: float

    @property
    def log_words(self) -> np.ndarray:
        return np.log(np.maximum([len(h.text.split()) for h in self.hits], 1.0))


def collect(
    bench_dir: Path, store: Path, queries: list[BenchQuery], int8: bool, cache: Path, lexical_again: bool = False
) -> list[Pool]:
    """Per-query candidate pools (cached in `cache`; `lexical_again`: redo only the BM25 signal)."""
    base = Settings(  # the signals unmixed
        store_path=store, device="cpu", query_int8=int8, top=ALL, lexical_weight=0, lexical_first=0, length_penalty=0
    )
    embedder = load_embedder(base)
    texts = [q.query for q in queries]
    if cache.is_file():
        pools: list[Pool] = pickle.loads(cache.read_bytes())
        if not lexical_again:
            return pools
        with Retriever(base.updated(rerank_k=0, lexical_first=1.0), embedder=embedder) as r:
            both = [resp for i in range(0, len(texts), 32) for resp in r.search_batch(texts[i : i + 32])]
        for p, b in zip(pools, both, strict=True):
            bo = {(s.doc_id, s.start, s.end): s.score for s in b.spans}
            key = [(h.doc_id, h.start, h.end) for h in p.hits]
            p.lexical = np.array([bo.get(k, c) - c for k, c in zip(key, p.context, strict=True)])
        cache.write_bytes(pickle.dumps(pools))
        return pools
    runs = {}
    for name, s in {
        "sentence_cos": base.updated(rerank_k=ALL, rerank_weight=1.0),
        "context": base.updated(rerank_k=0),
        "both": base.updated(rerank_k=0, lexical_first=1.0),
    }.items():
        t0 = time.perf_counter()
        with Retriever(s, embedder=embedder) as r:
            runs[name] = [resp for i in range(0, len(texts), 32) for resp in r.search_batch(texts[i : i + 32])]
        print(f"  {name}: {time.perf_counter() - t0:.1f}s", flush=True)
    pools = []
    for a, c, b in zip(runs["sentence_cos"], runs["context"], runs["both"], strict=True):
        key = [(s.doc_id, s.start, s.end) for s in c.spans]
        ctx = {k: s.score for k, s in zip(key, c.spans, strict=True)}
        al = {(s.doc_id, s.start, s.end): s.score for s in a.spans}
        bo = {(s.doc_id, s.start, s.end): s.score for s in b.spans}
        hits = [Hit(s.doc_id, s.start, s.end, s.text, s.score) for s in c.spans]
        pools.append(
            Pool(
                hits,
                np.array([al.get(k, -math.inf) for k in key]),
                np.array([ctx[k] for k in key]),
                np.array([bo.get(k, ctx[k]) - ctx[k] for k in key]),
                a.features.get("segment", 0.0),
            )
        )
    cache.write_bytes(pickle.dumps(pools))
    return pools


Config = tuple[int, float, float, float, float]  # re-ranked k, BM25 first, sentence weight, BM25 final, length


def rank(p: Pool, k: int, first_lex: float, w: float, lex: float, lp: float = 0.0) -> np.ndarray:
    """Final scores of a pool's candidates under one configuration (-inf: not re-embedded)."""
    first = p.context + first_lex * p.lexical
    score = np.full(len(first), -math.inf)
    if not len(first):
        return score
    keep = np.argsort(-first, kind="stable")[: max(k, 1)]
    if k == 0:
        return first - lp * p.log_words
    score[keep] = w * p.sentence_cos[keep] + (1 - w) * p.context[keep] + lex * p.lexical[keep] - lp * p.log_words[keep]
    return score


def measure(pools: list[Pool], queries: list[BenchQuery], cfg: Config) -> dict[str, float]:
    h1: list[float] = []
    f1: list[float] = []
    nw: list[int] = []
    for p, q in zip(pools, queries, strict=True):
        if not p.hits:
            h1.append(0.0)
            f1.append(0.0)
            nw.append(0)
            continue
        top = p.hits[int(np.argmax(rank(p, *cfg)))]
        h1.append(float(hit_at(q, [top], 1)))
        f1.append(evidence_f1(q, [top]))
        nw.append(words([top]))
    return {"hit@1": float(np.mean(h1)), "F1": float(np.mean(f1)), "words": float(np.mean(nw))}


def features(p: Pool, query: str, cfg: Config) -> dict[str, float] | None:
    """`retriever.calibration.answer_features`, recomputed from a cached pool."""
    if not p.hits:
        return None
    s = rank(p, *cfg)
    order = np.argsort(-s, kind="stable")
    i0 = int(order[0])
    second = next((s[i] for i in order[1:] if np.isfinite(s[i])), s[i0] - 1.0)
    t = p.hits[i0].text
    return {
        "score": float(s[i0]),
        "margin": float(s[i0] - second),
        "sentence_cos": float(p.sentence_cos[i0]),
        "context": float(p.context[i0]),
        "lexical": float(p.lexical[i0]),
        "coverage": coverage(query, t),
        "segment": p.segment,
        "log_words": math.log(max(len(t.split()), 1)),
    } | lexical_features(query, [h.text for h in p.hits], i0)


def timing(store: Path, work: Path, queries: list[str], configs: dict[str, dict[str, object]], cold: bool) -> None:
    """Batch-1 p50 / p95 of the whole search path per configuration, interleaved query by query (a shared
    machine's load falls on every configuration alike); warm: after one untimed pass; cold: caches cleared."""
    base = Settings(store_path=store, device="cpu")
    embedder = HFTokenEmbedder(base)
    embedder8 = HFTokenEmbedder(base.updated(query_int8=True))  # query_int8 is the model's setting
    rs = {}
    for i, (name, over) in enumerate(configs.items()):
        folder = work / f"store-{i}"
        if not folder.exists():
            shutil.copytree(store, folder)
        model = embedder8 if over.get("query_int8") else embedder
        rs[name] = Retriever(base.updated(store_path=folder, **over), embedder=model)
    encoders: dict[str, Callable[[str], object]] = {
        "two passes (pooled, then tokens)": lambda q: (embedder.embed_query(q), embedder.embed_query_tokens(q)),
        "one pass": lambda q: embedder.encode_queries([q]),
        "one pass, int8": lambda q: embedder8.encode_queries([q]),
    }
    ms: dict[str, list[float]] = {k: [] for k in encoders}
    for q in queries:
        for k, f in encoders.items():
            t0 = time.perf_counter()
            f(q)
            ms[k].append((time.perf_counter() - t0) * 1e3)
    print("\n| query encoding | p50 ms | p95 ms |\n|---|---|---|")
    for k, v in ms.items():
        print(f"| {k} | {np.percentile(v, 50):.1f} | {np.percentile(v, 95):.1f} |")
    if not cold:
        for r in rs.values():
            r.search_batch(queries[:1])
            for q in queries:
                r.search(q)
    walls: dict[str, list[float]] = {k: [] for k in rs}
    stages: dict[str, dict[str, list[float]]] = {k: {} for k in rs}
    for q in queries:
        for name, r in rs.items():
            if cold:
                r.clear_caches()
            t0 = time.perf_counter()
            resp = r.search(q)
            walls[name].append((time.perf_counter() - t0) * 1e3)
            for st, ms_ in resp.timings_ms.items():
                stages[name].setdefault(st, []).append(ms_)
    order = ["embed", "recall", "rank_segments", "fetch", "score", "rerank", "results"]
    print(f"\n| {'cold' if cold else 'warm'}, batch 1, p50 ms | " + " | ".join(order) + " | total p50 / p95 |")
    print("|---|" + "---|" * (len(order) + 1))
    for name in rs:
        cells = [f"{np.percentile(stages[name][o], 50):.1f}" if o in stages[name] else "–" for o in order]
        w = walls[name]
        print(f"| {name} | " + " | ".join(cells) + f" | {np.percentile(w, 50):.1f} / {np.percentile(w, 95):.1f} |")
    for r in rs.values():
        r.close()


def precompute_cost(bench_dir: Path) -> None:
    """What storing every sentence vector at ingest would cost: embedding time and bytes per token."""
    bench = load_benchmark(bench_dir)
    embedder = HFTokenEmbedder(Settings(device="cpu"))
    sentences = []
    for d in bench.docs:
        stops = np.flatnonzero(boundary_chars(d.text, "sentences"))
        a = 0
        for b in [*(int(x) + 1 for x in stops), len(d.text)]:
            if d.text[a:b].strip():
                sentences.append(d.text[a:b].strip())
            a = b
    tokens = sum(len(embedder.tokenize(d.text)[0]) for d in bench.docs)
    t0 = time.perf_counter()
    embedder.embed_texts(sentences)
    secs = time.perf_counter() - t0
    dim = embedder.dim
    print(
        f"\nsentence vectors at ingest: {len(sentences)} sentences, {tokens} tokens, {secs:.1f}s to embed "
        f"({tokens / secs:.0f} tokens/s), float32 {len(sentences) * dim * 4 / tokens:.1f} bytes/token "
        f"(token rows: {dim * 4} bytes/token)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bench", type=Path)
    ap.add_argument("--store", type=Path, default=Path("build/bench-search-store"))
    ap.add_argument("--work", type=Path, default=Path("build/experiment-speed"))
    ap.add_argument("--sample", type=int, default=300, help="answerable questions (and as many unanswerable)")
    ap.add_argument("--int8", action="store_true", help="also collect with the int8 query encoder")
    ap.add_argument("--fit-calibration", action="store_true")
    ap.add_argument("--write-calibration", action="store_true")
    ap.add_argument(
        "--config", default="40,0,0.7,0,0", help="k,first_lex,w,lex,length_penalty of the chosen configuration"
    )
    ap.add_argument("--extra", nargs="*", default=[], help="more configurations to score, as --config")
    ap.add_argument("--lexical-again", action="store_true", help="recollect the BM25 signal of cached pools")
    ap.add_argument("--target", choices=["hit", "answerable"], default="hit", help="what the calibration predicts")
    ap.add_argument("--features", default=",".join(FEATURES))
    ap.add_argument("--timing", type=int, default=0, help="time the candidates on this many questions instead")
    ap.add_argument("--cold", action="store_true", help="timing: clear caches before every query")
    args = ap.parse_args()
    if args.timing:
        bench = load_benchmark(args.bench)
        texts = [q.query for q in bench.answerable(args.timing, seed=1)]
        args.work.mkdir(parents=True, exist_ok=True)
        timing(args.store, args.work, texts, CONFIGS, args.cold)
        if args.cold:
            precompute_cost(args.bench)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    bench = load_benchmark(args.bench)
    settings = Settings(store_path=args.store, device="cpu")
    index_benchmark(bench, settings, load_embedder(settings))
    ans = bench.answerable(args.sample)
    unans = [q for q in bench.queries if not q.answerable]
    unans = random.Random(0).sample(unans, min(args.sample, len(unans)))
    qs = ans + unans
    c = [float(x) for x in args.config.split(",")]
    chosen: Config = (int(c[0]), c[1], c[2], c[3], c[4])
    extra: list[Config] = [chosen]
    for e in args.extra:
        v = [float(x) for x in e.split(",")]
        extra.append((int(v[0]), v[1], v[2], v[3], v[4]))
    encoders = [False, True] if args.int8 else [False]
    for int8 in encoders:
        tag = "int8" if int8 else "fp32"
        cache = args.work / f"pools-v2-{tag}-{args.sample}.pkl"  # v2: Pool.alone became sentence_cos
        pools = collect(args.bench, args.store, qs, int8, cache, args.lexical_again and not int8)
        pa = pools[: len(ans)]
        print(f"\n{tag} query encoder, {len(ans)} answerable questions")
        print("| re-ranked k | BM25 first | sentence weight | BM25 final | length penalty | hit@1 | F1 | words |")
        print("|---|---|---|---|---|---|---|---|")
        grid: list[Config] = [(40, 0, 0.7, 0, 0), (0, 0, 0, 0, 0), (0, 0.3, 0, 0, 0), (ALL, 0, 0.7, 0, 0)]
        grid += [(ALL, 0.0, 1.0, 0.0, 0.0), (40, 0, 0.7, 0, 0.02)]
        grid += [(k, a, 0.7, 0.0, 0.0) for k in (8, 12, 16, 24) for a in (0.0, 0.1, 0.2, 0.4)]
        grid += [(40, 0.0, w, b, 0.0) for w in (0.6, 0.7, 0.8) for b in (0.05, 0.1, 0.15, 0.2)]
        grid += [
            (k, a, 0.7, b, lp) for k in (12, 16) for a in (0.1, 0.2) for b in (0.05, 0.1) for lp in (0, 0.01, 0.02)
        ]
        for cfg in grid + extra:
            m = measure(pa, ans, cfg)
            k = "all" if cfg[0] == ALL else str(cfg[0])
            print(
                f"| {k} | {cfg[1]} | {cfg[2]} | {cfg[3]} | {cfg[4]} | {m['hit@1']:.3f} | {m['F1']:.3f} "
                f"| {m['words']:.2f} |"
            )
        if args.fit_calibration and not int8:
            cfg = chosen
            rows, labels, split = [], [], []
            rng = random.Random(0)
            for p, q in zip(pools, qs, strict=True):
                f = features(p, q.query, cfg)
                if f is None:
                    continue
                top = p.hits[int(np.argmax(rank(p, *cfg)))]
                rows.append(f)
                hit = q.answerable and (args.target == "answerable" or hit_at(q, [top], 1))
                labels.append(int(hit))
                split.append(rng.random() < 0.5)
            tr = [i for i, s in enumerate(split) if s]
            te = [i for i, s in enumerate(split) if not s]
            names = tuple(args.features.split(","))
            model = fit([rows[i] for i in tr], [labels[i] for i in tr], names)
            ans_flag = [q.answerable for p, q in zip(pools, qs, strict=True) if p.hits]
            conf = [model.confidence(r) or 0.0 for r in rows]
            for name, idx in (("train", tr), ("held-out", te)):
                pos = [conf[i] for i in idx if ans_flag[i]]
                neg = [conf[i] for i in idx if not ans_flag[i]]
                raw_pos = [rows[i]["score"] for i in idx if ans_flag[i]]
                raw_neg = [rows[i]["score"] for i in idx if not ans_flag[i]]
                print(
                    f"{name}: answerable vs unanswerable AUC: confidence {auc(pos, neg):.3f}, "
                    f"top score {auc(raw_pos, raw_neg):.3f} ({len(pos)} / {len(neg)})"
                )
                for thr in (0.3, 0.4, 0.5):
                    abst = [i for i in idx if conf[i] < thr]
                    prec = np.mean([not ans_flag[i] for i in abst]) if abst else float("nan")
                    rec = sum(not ans_flag[i] for i in abst) / max(1, sum(not ans_flag[i] for i in idx))
                    print(f"  abstain < {thr}: precision {prec:.3f}, recall {rec:.3f} of unanswerable")
            print("weights:", dict(zip(model.names, np.round(model.weight, 3), strict=True)), "bias", model.bias)
            if args.write_calibration:
                full = fit(rows, labels, names)
                PARAMS.write_text(json.dumps(full.to_json(), indent=1) + "\n", encoding="utf-8")
                print(f"wrote {PARAMS} (fitted on all {len(rows)} questions)")


if __name__ == "__main__":
    main()
