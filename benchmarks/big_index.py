"""Benchmark 12: an index for collections beyond memory. simlib's `ivf-pq` kind (FAISS IndexIVFPQ: product-quantized
codes only, a shortlist re-ranked exactly against the search core's float vectors, memory-mapped) on 10,000,000
synthetic vectors with the real spectrum, against HNSW-flat at 1,000,000 (benchmark 2's index): build time, bytes
per vector of the index, recall@10 after re-ranking, one-query QPS."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace

import faiss
import numpy as np
import pandas as pd

from simlib.evaluate import ann_recall_at_k
from simlib.index import TRAIN_PER_LIST, TRAIN_SEED, IndexParams, bytes_per_vector, exact_search
from simlib.reduce import normalize_rows
from simlib.search_core import SearchConfig, SearchCore

from .ann import DB_SEED, QUERY_SEED, VECTORS, real_vectors, simlib_index
from .inputs import (
    NEEDS_WALLPAPERS,
    RunConfig,
    atomic_write,
    cache_key,
    cached_build,
    quality_backbone,
    synthetic_vectors,
    vector_spectrum,
)
from .measure import interleaved_rates
from .report import Headline, Section

K = 10
TARGET_BYTES, TARGET_RECALL = 64, 0.95
CHUNK = 500_000  # rows drawn (and normalised) at once when the big collection is generated
HNSW_FLAT = IndexParams("hnsw")
TIMED_QUERIES = 300  # queries timed one at a time (recall counts all of them)


def run(config: RunConfig) -> Section:
    section = Section("12. An index beyond memory: IVF-PQ at 10M vectors against HNSW-flat at 1M")
    backbone = quality_backbone(config)
    if backbone is None:
        section.text(NEEDS_WALLPAPERS)
        return section
    spectrum = vector_spectrum(real_vectors(config, backbone))
    big, small, n_queries = config.pick((20_000, 5_000, 100), (10_000_000, 1_000_000, 1_000))
    params = config.pick(IndexParams("ivf-pq", nlist=64, nprobe=8), IndexParams("ivf-pq"))
    # codes split the vector evenly: a quick run's spectrum (PCA of a few real images) may have an odd width
    params = replace(params, pq_m=max(m for m in range(1, params.pq_m + 1) if len(spectrum) % m == 0))
    nprobes = config.pick([2, 8, 32], [32, 64, 128, 256, 512])
    refines = config.pick([10, params.refine], sorted({10, 20, params.refine}))
    repeats = config.pick(1, 3)
    queries = synthetic_vectors(spectrum, n_queries, QUERY_SEED)

    hnsw_row = _hnsw_flat(config, spectrum, small, queries, repeats)
    db = big_vectors(config, spectrum, big)
    key = cache_key(_fingerprint(spectrum), params.nlist, params.pq_m, TRAIN_SEED, TRAIN_PER_LIST, faiss.__version__)
    built = cached_build(
        config, f"ivfpq-{big}-{key}.index",
        lambda: SearchCore.from_state(SearchConfig(pca_dim=None, index=params), None, db).index_,
        lambda index, path: faiss.write_index(index, os.fspath(path)), lambda path: faiss.read_index(os.fspath(path)),
        cache=not config.quick,
    )
    index = built.index
    size = bytes_per_vector(index)
    truth = exact_search(db, queries, K)[1]
    rows = []
    for refine in refines:
        core = SearchCore.from_state(SearchConfig(pca_dim=None, index=replace(params, refine=refine)), None, db,
                                     index=index)
        for nprobe in nprobes if refine >= min(20, params.refine) else [params.nprobe]:  # a grid from 20 x k up
            rows.append({"index": "IVF-PQ (simlib ivf-pq)", "vectors": big, "nlist": params.nlist,
                         "code bytes": params.pq_m, "nprobe": nprobe, "shortlist": f"{refine} x k",
                         **_measure(core, queries, truth, nprobe, repeats)})
    sweep = pd.DataFrame(rows)
    default = sweep[(sweep["nprobe"] == params.nprobe) & (sweep["shortlist"] == f"{params.refine} x k")].iloc[0]
    enough = sweep[sweep[f"recall@{K}"] >= TARGET_RECALL]
    fastest = enough.loc[enough["QPS"].idxmax()] if len(enough) else None
    when = f"cached, built {built.built_at} UTC" if built.cached else "this run"
    builds = pd.DataFrame([
        {"index": "IVF-PQ (simlib ivf-pq)", "vectors": big, "build s": built.build_seconds, "bytes/vector": size,
         "GB at 100M vectors (extrapolated)": size * 1e8 / 1e9, "build measured": when},
        {"index": "HNSW-flat (simlib hnsw)", "vectors": small, "build s": hnsw_row["build s"],
         "bytes/vector": hnsw_row["bytes/vector"], "GB at 100M vectors (extrapolated)": hnsw_row["bytes/vector"] * 0.1,
         "build measured": hnsw_row["build measured"]},
    ])
    section.text(
        f"{big:,} synthetic {len(spectrum)}-d unit vectors with the real spectrum (benchmark 2's Gaussian, drawn "
        f"in chunks of {CHUNK:,} into a memory-mapped file in the benchmark cache), {n_queries:,} queries; "
        f"recall@{K} against exact search (`simlib.index.exact_search`) over all of them. IVF-PQ is simlib's "
        f"`ivf-pq` kind at its defaults (nlist={params.nlist}, {params.pq_m}-byte codes, nprobe={params.nprobe}, a "
        f"shortlist of {params.refine} x k re-ranked exactly): `faiss.IndexIVFPQ` over a flat quantizer, trained on "
        f"a seeded sample of {min(big, TRAIN_PER_LIST * max(params.nlist, 256)):,} vectors, searched through "
        f"`SearchCore.search_vectors(q, {K}, threshold=-inf, ef_search=nprobe)`; QPS: the first "
        f"{min(n_queries, TIMED_QUERIES)} queries one at a time, median of {repeats} rounds. The float vectors it "
        f"re-ranks against are the core's `vectors_`, here the memory-mapped file, resident in the page cache during "
        f"the run (a collection larger than memory reads {params.refine * K} rows of {4 * len(spectrum)} bytes per "
        f"query from disk instead, which this run does not measure). Bytes per vector: the serialized index over its "
        f"vectors (codes, 8-byte ids, centroids, codebooks), without the float vectors on disk. HNSW-flat is "
        f"benchmark 2's index over {small:,} vectors (M={HNSW_FLAT.M}, efConstruction={HNSW_FLAT.ef_construction}) "
        f"searched at efSearch={HNSW_FLAT.ef_search} through the same core. The 100M column multiplies bytes per "
        f"vector (extrapolated, not measured)."
    )
    section.table(builds, "Builds and memory:", floatfmt=".4g")
    hnsw_table = pd.DataFrame([{k: v for k, v in hnsw_row.items() if k in ("index", "vectors", "efSearch",
                                                                           f"recall@{K}", "QPS")}])
    section.table(pd.concat([sweep, hnsw_table], ignore_index=True), "Recall and one-query speed:", floatfmt=".4g")
    section.text(
        f"The fastest setting measured with recall@{K} >= {TARGET_RECALL}: "
        + (f"nprobe {fastest['nprobe']}, shortlist {fastest['shortlist']} ({fastest[f'recall@{K}']:.4f}, "
           f"{fastest['QPS']:.0f} QPS); the defaults: nprobe {params.nprobe}, shortlist {params.refine} x k."
           if fastest is not None else "none.")
    )
    section.headlines.append(Headline(
        f"IVF-PQ bytes per vector at {big:,} vectors (index without the float vectors)", f"{size:.1f}",
        f"<= {TARGET_BYTES}", size <= TARGET_BYTES))
    section.headlines.append(Headline(
        f"IVF-PQ recall@{K} after re-ranking at {big:,} vectors, defaults (nprobe {params.nprobe}, one-query QPS "
        f"{default['QPS']:.0f}; HNSW-flat at {small:,}: {hnsw_row[f'recall@{K}']:.3f}, {hnsw_row['QPS']:.0f} QPS)",
        f"{default[f'recall@{K}']:.4f}", f">= {TARGET_RECALL}", bool(default[f"recall@{K}"] >= TARGET_RECALL)))
    return section


def _measure(core: SearchCore, queries: np.ndarray, truth: np.ndarray, effort: int, repeats: int) -> dict:
    found = core.search_vectors(queries, K, threshold=-np.inf, ef_search=effort).ids
    singles = [queries[i : i + 1] for i in range(min(len(queries), TIMED_QUERIES))]
    run = lambda: [core.search_vectors(q, K, threshold=-np.inf, ef_search=effort) for q in singles]  # noqa: E731
    return {f"recall@{K}": ann_recall_at_k(found, truth, K), "QPS": interleaved_rates({"x": run}, len(singles),
                                                                                     repeats)["x"]}


def _hnsw_flat(config: RunConfig, spectrum: np.ndarray, n: int, queries: np.ndarray, repeats: int) -> dict:
    """Benchmark 2's HNSW-flat index over its synthetic vectors (cached there at 1M), measured the same way."""
    db = synthetic_vectors(spectrum, n, DB_SEED)
    built = simlib_index(config, db, cache=not config.quick)
    core = SearchCore.from_state(VECTORS, None, db, index=built.index)
    truth = exact_search(db, queries, K)[1]
    measured = _measure(core, queries, truth, HNSW_FLAT.ef_search, repeats)
    return {"index": "HNSW-flat (simlib hnsw)", "vectors": n, "efSearch": HNSW_FLAT.ef_search, **measured,
            "build s": built.build_seconds, "bytes/vector": bytes_per_vector(built.index),
            "build measured": f"cached, built {built.built_at} UTC" if built.cached else "this run"}


def big_vectors(config: RunConfig, spectrum: np.ndarray, n: int) -> np.ndarray:
    """n synthetic unit vectors with `spectrum` (as `synthetic_vectors` draws them, chunk by chunk from seeds of
    their own), memory-mapped from a file in the cache; written once, a chunk at a time."""
    path = config.cache / f"vectors-{n}-{cache_key(_fingerprint(spectrum), DB_SEED, CHUNK)}.f32"
    shape = (n, len(spectrum))
    if not (config.use_cache and path.is_file() and path.stat().st_size == n * len(spectrum) * 4):
        scale = np.sqrt(np.maximum(spectrum, 0)).astype(np.float32)

        def write(tmp):
            out = np.memmap(tmp, dtype="<f4", mode="w+", shape=shape)  # raw rows, as a collection stores them
            for start in range(0, n, CHUNK):
                stop = min(n, start + CHUNK)
                rng = np.random.default_rng((DB_SEED, start))
                draws = rng.standard_normal((stop - start, shape[1]), dtype=np.float32)
                out[start:stop] = normalize_rows(draws * scale)
            out.flush()
            del out

        atomic_write(path, write)
    return np.memmap(path, dtype="<f4", mode="r", shape=shape)


def _fingerprint(spectrum: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(spectrum, dtype=np.float64).tobytes()).hexdigest()[:16]

