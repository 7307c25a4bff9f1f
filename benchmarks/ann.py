"""Benchmark 2: ANN search. simlib's search core (`SearchCore.search_vectors`, FAISS HNSW at simlib's settings)
against exact search and against hnswlib at the same M and efConstruction, on the real benchmark vectors and on
synthetic vectors whose spectrum matches them: recall@10 against queries per second, one query at a time (the
app's path) and batched; build time; bytes per vector; and where the time of one query goes, from the search core
down to FAISS's C++ search.
"""

from __future__ import annotations

import hashlib
import os
from importlib.metadata import distribution, version

import faiss
import hnswlib
import numpy as np
import pandas as pd

from simlib.evaluate import ann_recall_at_k
from simlib.index import IndexParams, bytes_per_vector, exact_search, prefer_huge_pages, search_index
from simlib.search_core import SearchConfig, SearchCore

from .inputs import (
    Built,
    RunConfig,
    benchmark_features,
    cache_key,
    cached_build,
    NEEDS_WALLPAPERS,
    quality_backbone,
    spectrum_core,
    synthetic_vectors,
    vector_spectrum,
)
from .measure import interleaved_rates, per_call_microseconds
from .report import Headline, Section

K = 10
PARAMS = IndexParams()  # simlib's settings: M, efConstruction and default efSearch
# a search core over vectors as they are (already reduced and normalised), indexed at simlib's settings
VECTORS = SearchConfig(pca_dim=None, index=PARAMS)
TARGET_RECALL = 0.99
EF_SWEEP = [16, 32, 64, 96, 128, 192, 256, 384, 512]
DB_SEED, QUERY_SEED = 1, 2


def run(config: RunConfig) -> Section:
    section = Section("2. ANN search: FAISS HNSW (simlib) vs exact vs hnswlib")
    backbone = quality_backbone(config)
    if backbone is None:
        section.text(NEEDS_WALLPAPERS)
        return section
    real = real_vectors(config, backbone)
    spectrum = vector_spectrum(real)
    sizes, n_queries = config.pick(([2_000], 100), ([10_000, 1_000_000], 1_000))
    sizes = list(config.ann_sizes) if config.ann_sizes else sizes
    repeats = config.pick(1, 3)
    section.text(
        f"Settings: M={PARAMS.M}, efConstruction={PARAMS.ef_construction} for both libraries (simlib's defaults; "
        f"simlib searches at efSearch={PARAMS.ef_search} unless told otherwise), k={K}, recall@{K} against exact "
        f"search (`simlib.index.exact_search`). simlib rows search through its search core, "
        f"`SearchCore.search_vectors(q, {K}, threshold=-inf, ef_search=ef)` (the visual rule, as `Collection.search` "
        f"runs it for a query with a visual match): FAISS HNSW plus the core's own work (checking the queries, "
        f"the similarities of the results, the rule); exact rows search the same core with an exact index "
        f"(`core.with_index(IndexParams('exact'))`). QPS is wall-clock queries per second, median of {repeats} "
        f"interleaved rounds; one-query rows call the library once per query from Python (the app's path), batched "
        f"rows pass all queries in one call using every core. hnswlib builds with every core, as FAISS does. The "
        f"speed ratio at recall@{K} = {TARGET_RECALL} interpolates each library's one-query curve (log QPS linear in "
        f"recall between the two efSearch values around {TARGET_RECALL}). {_builds_of_libraries()}"
    )
    unique = np.unique(real, axis=0)
    section.text(
        f"**Real vectors.** EfficientNet-Lite0 features of the {len(real) // 4} wallpapers and 3 edited copies of each "
        f"(`simlib.threshold` edits), PCA-128 fitted on all of them, L2-normalised: {len(real)} vectors, "
        f"{len(unique)} once exact duplicates are dropped (KDE ships some wallpapers as byte-identical files under "
        f"two names, and exact ties would make id-based recall arbitrary). Every vector queries the index (itself "
        f"included)."
    )
    section.table(compare(config, unique, unique, [16, 64, PARAMS.ef_search], repeats, cache=False)[0], floatfmt=".4g")
    queries = synthetic_vectors(spectrum, n_queries, QUERY_SEED)
    for n in sizes:
        db = synthetic_vectors(spectrum, n, DB_SEED)
        section.text(
            f"**{n:,} synthetic vectors** and {n_queries:,} queries, drawn from a Gaussian with the per-axis "
            f"variances of the real vectors above, then L2-normalised. Spectrum check (share of the variance in the "
            f"first 1 / 8 / 32 axes): real {_shares(spectrum)}, synthetic {_shares(vector_spectrum(db))}."
        )
        efs = config.pick([16, 64, 128], [16, 32, 64, 128, 256] if n < 100_000 else EF_SWEEP)
        sweep, builds, breakdown, verdict = compare(config, db, queries, efs, repeats, cache=n >= 100_000)
        section.table(builds, "Builds:", floatfmt=".4g")
        section.table(sweep, "Recall and speed against efSearch:", floatfmt=".4g")
        section.table(breakdown, "Where one query's time goes (microseconds per call, one at a time):", floatfmt=".4g")
        section.text(verdict.explanation)
        section.headlines.append(
            Headline(
                f"ANN one-query QPS simlib/hnswlib at recall@{K} = {TARGET_RECALL}, {n:,} synthetic vectors",
                "not reached" if verdict.ratio is None else f"{verdict.ratio:.2f}",
                ">= 1.0",
                None if verdict.ratio is None else verdict.ratio >= 1.0,
            )
        )
        del db
    return section


def _builds_of_libraries() -> str:
    """How the two libraries were compiled: a wheel built from source is tagged for the bare platform."""
    tags = [line.split(":", 1)[1].strip() for line in (distribution("hnswlib").read_text("WHEEL") or "").splitlines()
            if line.startswith("Tag:")]
    local = bool(tags) and not any("manylinux" in tag or "musllinux" in tag for tag in tags)
    hnswlib_build = (
        f"was built from source (wheel tag {', '.join(tags)}, not a portable manylinux wheel), and hnswlib's build "
        "compiles with -march=native unless HNSWLIB_NO_NATIVE is set"
        if local
        else f"is a portable wheel ({', '.join(tags) or 'tag unknown'})"
    )
    return (
        f"hnswlib {version('hnswlib')} {hnswlib_build}; faiss-cpu {faiss.__version__} is a portable wheel that picks "
        f"its SIMD kernels at run time (compile options: {faiss.get_compile_options().strip()})."
    )


def real_vectors(config: RunConfig, backbone) -> np.ndarray:
    """The wallpapers and their edited copies as simlib reduces them: the vectors of `spectrum_core`."""
    return spectrum_core(benchmark_features(config, backbone)).vectors_


def _shares(spectrum: np.ndarray) -> str:
    total = spectrum.sum()
    return " / ".join(f"{spectrum[:m].sum() / total:.2f}" for m in (1, 8, 32))


class Verdict:
    """The one-query speed ratio simlib / hnswlib at the target recall, and a sentence saying how it was found."""

    def __init__(self, sweep: pd.DataFrame):
        single = sweep[sweep["mode"] == "one query"]
        self.simlib = _first_reaching(single, "simlib (FAISS HNSW)")
        simlib_qps = qps_at_recall(single[single["library"] == "simlib (FAISS HNSW)"], TARGET_RECALL)
        hnswlib_qps = qps_at_recall(single[single["library"] == "hnswlib"], TARGET_RECALL)
        self.ratio = None
        if simlib_qps is None or hnswlib_qps is None:
            self.explanation = f"One of the libraries did not reach recall@{K} >= {TARGET_RECALL} in this sweep."
            return
        self.ratio = simlib_qps / hnswlib_qps
        ours = single[single["library"] == "simlib (FAISS HNSW)"]
        default = ours[ours["efSearch"] == PARAMS.ef_search]["recall@10"]
        self.explanation = (
            f"At recall@{K} = {TARGET_RECALL}, one query at a time: simlib {simlib_qps:.0f} QPS, hnswlib "
            f"{hnswlib_qps:.0f} QPS (interpolated): ratio {self.ratio:.2f}. simlib first reaches it at "
            f"efSearch={self.simlib['efSearch']} (recall {self.simlib['recall@10']:.4f})"
            + (f"; its default efSearch={PARAMS.ef_search} gives {default.iloc[0]:.4f}." if len(default) else ".")
        )


def qps_at_recall(rows: pd.DataFrame, target: float) -> float | None:
    """QPS where the recall-QPS curve crosses `target`, log-linear between the two points around it; the first
    point's QPS when it already exceeds `target`; None when no point reaches it."""
    rows = rows.sort_values("efSearch")
    recall, qps = rows["recall@10"].to_numpy(float), rows["QPS"].to_numpy(float)
    above = np.flatnonzero(recall >= target)
    if not len(above):
        return None
    i = above[0]
    if i == 0 or recall[i] == recall[i - 1]:
        return float(qps[i])
    t = (target - recall[i - 1]) / (recall[i] - recall[i - 1])
    return float(np.exp(np.log(qps[i - 1]) + t * (np.log(qps[i]) - np.log(qps[i - 1]))))


def _first_reaching(rows: pd.DataFrame, library: str):
    reached = rows[(rows["library"] == library) & (rows["recall@10"] >= TARGET_RECALL)]
    return None if reached.empty else reached.sort_values("efSearch").iloc[0]


def compare(config: RunConfig, db: np.ndarray, queries: np.ndarray, efs, repeats: int, cache: bool):
    """Build both indexes (or load them), sweep efSearch; returns (sweep, builds, breakdown, verdict)."""
    faiss_built = simlib_index(config, db, cache)
    core = SearchCore.from_state(VECTORS, None, db, index=faiss_built.index)
    hnsw_built = cached_build(
        config, f"hnswlib-{len(db)}-{_fingerprint(db)}.bin", lambda: hnswlib_index(db),
        lambda index, path: index.save_index(os.fspath(path)), lambda path: _load_hnswlib(path, *db.shape[::-1]), cache,
    )
    exact = core.with_index(IndexParams("exact"))
    _, truth = exact_search(db, queries, K)
    sweep = _sweep(core, hnsw_built.index, exact, queries, truth, efs, repeats)
    del exact
    builds = _builds(faiss_built, hnsw_built, len(db))
    verdict = Verdict(sweep)
    ef = int(verdict.simlib["efSearch"]) if verdict.simlib is not None else PARAMS.ef_search
    breakdown = _breakdown(core, hnsw_built.index, queries[: min(len(queries), 300)], ef)
    return sweep, builds, breakdown, verdict


def simlib_index(config: RunConfig, db: np.ndarray, cache: bool) -> Built:
    """The FAISS index a search core over `db` builds at simlib's settings (`SearchCore.from_state`, its
    `index_`), timed; cached, and loaded the way simlib loads an index (`index_from_bytes`: FAISS's reader, then
    `prefer_huge_pages`). Pass it as `index=` to `SearchCore.from_state` over the same vectors."""

    def load(path):
        index = faiss.read_index(os.fspath(path))
        prefer_huge_pages(index)
        return index

    return cached_build(
        config, f"faiss-hnsw-{len(db)}-{_fingerprint(db)}.index",
        lambda: SearchCore.from_state(VECTORS, None, db).index_,
        lambda index, path: faiss.write_index(index, os.fspath(path)), load, cache,
    )


def _fingerprint(db: np.ndarray) -> str:
    sample = hashlib.sha256(np.ascontiguousarray(db[:: max(1, len(db) // 4096)]).tobytes()).hexdigest()
    return cache_key(db.shape, sample, _hnsw_settings(PARAMS), faiss.__version__, version("hnswlib"))


def _hnsw_settings(params: IndexParams) -> str:
    """What an HNSW build depends on, spelled as `IndexParams` printed before it had IVF-PQ fields, so the indexes
    cached by then stay valid (a 1M build costs over ten minutes here)."""
    return (f"IndexParams(kind={params.kind!r}, M={params.M}, ef_construction={params.ef_construction}, "
            f"ef_search={params.ef_search})")


def hnswlib_index(db: np.ndarray) -> hnswlib.Index:
    index = hnswlib.Index(space="l2", dim=db.shape[1])
    index.init_index(max_elements=len(db), M=PARAMS.M, ef_construction=PARAMS.ef_construction, random_seed=0)
    index.add_items(db, np.arange(len(db)), num_threads=os.cpu_count() or 1)
    return index


def _load_hnswlib(path, d: int, n: int) -> hnswlib.Index:
    index = hnswlib.Index(space="l2", dim=d)
    index.load_index(os.fspath(path), max_elements=n)
    return index


def _builds(faiss_built: Built, hnsw_built: Built, n: int) -> pd.DataFrame:
    def when(built: Built) -> str:
        return f"cached, built {built.built_at} UTC" if built.cached else "this run"

    return pd.DataFrame(
        [
            {"library": "simlib (FAISS HNSW)", "vectors": n, "build s": faiss_built.build_seconds,
             "bytes/vector": bytes_per_vector(faiss_built.index), "build measured": when(faiss_built)},
            {"library": "hnswlib", "vectors": n, "build s": hnsw_built.build_seconds,
             "bytes/vector": hnsw_built.index.index_file_size() / n, "build measured": when(hnsw_built)},
        ]
    )


def _sweep(core: SearchCore, hnsw: hnswlib.Index, exact: SearchCore, queries, truth, efs, repeats: int) -> pd.DataFrame:
    singles = [queries[i : i + 1] for i in range(len(queries))]
    threads = os.cpu_count() or 1
    rows = []

    def hnsw_one(ef):
        hnsw.set_ef(ef)
        return np.vstack([hnsw.knn_query(q, K)[0] for q in singles]).astype(np.int64)

    def hnsw_batch(ef):
        hnsw.set_ef(ef)
        return hnsw.knn_query(queries, K, num_threads=threads)[0].astype(np.int64)

    for ef in efs:
        runs = {
            ("simlib (FAISS HNSW)", "one query"): lambda: _one_at_a_time(core, singles, ef),
            ("hnswlib", "one query"): lambda: hnsw_one(ef),
            ("simlib (FAISS HNSW)", "batched"): lambda: _visual(core, queries, ef),
            ("hnswlib", "batched"): lambda: hnsw_batch(ef),
        }
        recalls = {name: ann_recall_at_k(run(), truth, K) for name, run in runs.items()}
        rates = interleaved_rates(runs, len(queries), repeats)
        rows += [
            {"library": lib, "mode": mode, "efSearch": ef, "recall@10": recalls[(lib, mode)], "QPS": rates[(lib, mode)]}
            for lib, mode in runs
        ]
    few = singles[:100]  # brute force one query at a time is slow; 100 queries time it well enough
    exact_runs = {
        ("exact (FAISS flat)", "one query"): lambda: _one_at_a_time(exact, few, None),
        ("exact (FAISS flat)", "batched"): lambda: _visual(exact, queries, None),
    }
    counts = dict(zip(exact_runs, (len(few), len(queries))))
    rates = interleaved_rates(exact_runs, counts, repeats)
    rows += [{"library": lib, "mode": mode, "efSearch": None, "recall@10": 1.0, "QPS": rates[(lib, mode)]}
             for lib, mode in exact_runs]
    frame = pd.DataFrame(rows)
    frame["efSearch"] = frame["efSearch"].astype("Int64")
    return frame.sort_values(["mode", "library", "efSearch"], ignore_index=True)


def _visual(core: SearchCore, queries: np.ndarray, ef: int | None) -> np.ndarray:
    """Ids of the k nearest by the search core's visual rule (threshold -inf: never the rating fallback)."""
    return core.search_vectors(queries, K, threshold=-np.inf, ef_search=ef).ids


def _one_at_a_time(core: SearchCore, singles, ef: int | None) -> np.ndarray:
    return np.vstack([_visual(core, q, ef) for q in singles])


def _breakdown(core: SearchCore, hnsw: hnswlib.Index, queries: np.ndarray, ef: int) -> pd.DataFrame:
    """Per-call cost of each layer between the search core and FAISS's C++ search, against hnswlib, at one
    efSearch; the last row is the search core's own work per query (its time beyond `search_index` on the same
    index).

    `faiss.clone_index` copies the index into fresh memory that was never advised, i.e. 4 KB pages, so the
    clone shows what `prefer_huge_pages` is worth."""
    index = core.index_
    singles = [queries[i : i + 1] for i in range(len(queries))]
    small_pages = faiss.clone_index(index)
    params = faiss.SearchParametersHNSW(efSearch=ef)
    distances, ids = np.empty((1, K), np.float32), np.empty((1, K), np.int64)
    hnsw.set_ef(ef)

    def bare(q):
        index.search_c(1, faiss.swig_ptr(q), K, faiss.swig_ptr(distances), faiss.swig_ptr(ids), params)

    core_call = "SearchCore.search_vectors(q, 10, threshold=-inf, ef_search=ef), 2 MB pages: the product's path"
    index_call = "simlib.index.search_index now, 2 MB pages (prefer_huge_pages)"
    calls = {
        core_call: lambda q: core.search_vectors(q, K, threshold=-np.inf, ef_search=ef),
        "simlib's previous path: FAISS Python search, new SearchParametersHNSW per call, 4 KB pages": lambda q: (
            small_pages.search(q, K, params=faiss.SearchParametersHNSW(efSearch=ef))
        ),
        "simlib.index.search_index now, index in 4 KB pages": lambda q: search_index(small_pages, q, K, ef),
        index_call: lambda q: search_index(index, q, K, ef),
        "FAISS C++ search alone (search_c), 2 MB pages": bare,
        "hnswlib knn_query (its own allocation: 4 KB pages)": lambda q: hnsw.knn_query(q, K),
    }
    timings = per_call_microseconds(calls, singles)
    omp = faiss.omp_get_max_threads()
    try:
        faiss.omp_set_num_threads(1)
        one_thread = per_call_microseconds({"x": lambda q: search_index(index, q, K, ef)}, singles)["x"]
    finally:
        faiss.omp_set_num_threads(omp)
    timings[f"simlib.index.search_index now, FAISS held to 1 OpenMP thread (default {omp})"] = one_thread
    timings["the search core's own work per query (its row minus search_index's, 2 MB pages)"] = (
        timings[core_call] - timings[index_call]
    )
    del small_pages
    return pd.DataFrame({"call": list(timings), f"us per query at efSearch={ef}": list(timings.values())})
