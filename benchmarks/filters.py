"""Benchmark 5: filtered search. A query restricted to an allowed subset of the collection (a folder, a minimum
rating, ids left out) runs inside FAISS through the search core, `SearchCore.search_vectors(..., allowed=mask)`,
by one of two paths: the HNSW graph search with an `IDSelectorBitmap` over the allowed ids, or an exact search over
the allowed ids only; a rule in `simlib.search_core` picks one. This benchmark times both paths and the rule at
allowed shares from 0.1% to 50% of 100,000 and 1,000,000 synthetic vectors (benchmark 2's), measures their
recall@10 against exact search over the allowed ids, and finds the share at which the exact path stops being the
faster one.

Each path is forced through the search core itself, so what is timed is the product's code: with a fixed-share rule
(`EXACT_FRACTION`) by setting it to 0 or 1, with a cost rule (`SearchCore._exact_is_cheaper`) by answering it with
false or true for the core under test. Which path a search took is read by watching the core's calls to
`simlib.index.search_checked`.
"""

from __future__ import annotations

import contextlib
import time

import faiss
import numpy as np
import pandas as pd

from simlib import search_core
from simlib.evaluate import ann_recall_at_k
from simlib.index import exact_search, flat_storage, search_checked
from simlib.search_core import SearchCore

from .ann import DB_SEED, PARAMS, QUERY_SEED, VECTORS, real_vectors, simlib_index
from .inputs import NEEDS_WALLPAPERS, RunConfig, quality_backbone, synthetic_vectors, vector_spectrum
from .measure import interleaved_rates
from .report import Headline, Section

K = 10
FRACTIONS = [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5]
TOLERANCE = 1.10  # the rule's path may be this much slower than the faster path and still count as the right pick
CHECK_SIZE, CHECK_FRACTION = 100_000, 0.01  # where results are compared id for id with exact search
RULE_CONSTANTS = ("EXACT_FRACTION", "FILTER_SHARE", "FILTER_BEAM", "BIT_TEST_COST")  # those this version defines

HNSW_PATH = "(i) HNSW + selector"
EXACT_PATH = "(ii) exact over allowed"
RULE_PATH = "(iii) simlib's rule"
UNFILTERED = "unfiltered search"
FAISS_HNSW = "FAISS HNSW + selector alone"
FAISS_FLAT = "FAISS flat + selector alone"


def rule_description() -> str:
    """simlib's rule for choosing the path, as this version of `simlib.search_core` ships it."""
    constants = ", ".join(f"`{name}` = {getattr(search_core, name):g}" for name in RULE_CONSTANTS
                          if hasattr(search_core, name))
    if hasattr(search_core, "EXACT_FRACTION"):
        return f"exact at or below `EXACT_FRACTION` of the collection (or k allowed ids), else HNSW ({constants})"
    if hasattr(SearchCore, "_exact_is_cheaper"):
        return (f"the cheaper path by `SearchCore._exact_is_cheaper`, the beam as `SearchCore._nearest` sets it "
                f"({constants})")
    raise RuntimeError("simlib.search_core has neither EXACT_FRACTION nor SearchCore._exact_is_cheaper: "
                       "benchmarks/filters.py cannot force the filtered-search paths")


@contextlib.contextmanager
def forced(core: SearchCore, path: str | None):
    """Filtered searches of `core` take `path` ("HNSW" or "exact"; None: simlib's rule) for the duration."""
    if path is None:
        yield
        return
    exact = path == "exact"
    if hasattr(search_core, "EXACT_FRACTION"):
        saved = search_core.EXACT_FRACTION
        search_core.EXACT_FRACTION = 1.0 if exact else 0.0
        try:
            yield
        finally:
            search_core.EXACT_FRACTION = saved
    else:
        rule_description()  # raises when there is no rule to force
        core._exact_is_cheaper = lambda *args: exact  # an instance attribute shadows the method
        try:
            yield
        finally:
            del core._exact_is_cheaper


class PathSpy:
    """Records the filtered searches the search core makes through `simlib.index.search_checked` while active:
    which index (HNSW or the flat storage: exact), the efSearch passed, and how many queries came back short."""

    def __init__(self):
        self.calls: list[dict] = []
        self._original = None

    def __enter__(self) -> "PathSpy":
        self._original = search_core.search_checked
        search_core.search_checked = self._search
        return self

    def __exit__(self, *exc) -> None:
        search_core.search_checked = self._original

    def _search(self, index, queries, k, ef_search=None, selector=None):
        distances, ids = self._original(index, queries, k, ef_search, selector)
        if selector is not None:
            self.calls.append({
                "path": "HNSW" if isinstance(index, faiss.IndexHNSW) else "exact",
                "ef": ef_search,
                "queries": len(queries),
                "short": int(((ids >= 0).sum(axis=1) < k).sum()),
            })
        return distances, ids


def run(config: RunConfig) -> Section:
    section = Section("5. Filtered search: HNSW with a selector vs exact search over the allowed ids")
    backbone = quality_backbone(config)
    if backbone is None:
        section.text(NEEDS_WALLPAPERS)
        return section
    spectrum = vector_spectrum(real_vectors(config, backbone))
    sizes = config.pick([5_000], [CHECK_SIZE, 1_000_000])
    n_queries, repeats = config.pick((50, 1), (200, 3))
    budget = config.pick((5, 1.0), (20, 20.0))  # at least this many queries per path, until this many seconds
    queries = synthetic_vectors(spectrum, n_queries, QUERY_SEED)
    section.text(
        f"The synthetic vectors of benchmark 2 (spectrum-matched, L2-normalised; its cached HNSW index, M={PARAMS.M}, "
        f"efConstruction={PARAMS.ef_construction}, simlib's default efSearch={PARAMS.ef_search}) and the first "
        f"{n_queries} of its queries, one at a time through `SearchCore.search_vectors(q, {K}, threshold=-inf, "
        f"allowed=mask)`, the mask a seeded random subset of the given share of the ids, passed on every call as "
        f"`Collection.search` passes its folder mask. {HNSW_PATH}: the graph search keeps only allowed nodes (a "
        f"query that comes back with fewer than {K} is answered exactly, as the core does); {EXACT_PATH}: a flat "
        f"search comparing the query with the allowed vectors only; {RULE_PATH}: what simlib does as it ships, "
        f"{rule_description()}. Each path is forced inside the search core (see `benchmarks/filters.py`). "
        f"'{UNFILTERED}' is the same call without a mask; the rule's overhead is its time beyond that. The 'alone' "
        f"columns call `simlib.index.search_checked` on the index (at the efSearch the core passed) or its flat "
        f"storage, with a selector built once: FAISS's own cost without the core's per-call work (checking and "
        f"packing the mask, the similarities). Microseconds per query, median of {repeats} interleaved round(s); "
        f"recall@{K} against exact search over the allowed ids (`simlib.index.exact_search` on the allowed vectors). "
        f"A path slow enough to take over {budget[1]:g} s for the queries is measured on its first queries only, "
        f"at least {budget[0]} ('queries' columns: how many; the 'alone' columns use those of their path). "
        f"'HNSW efSearch' is the beam the core gave the graph search, 'HNSW short' the share of queries it left "
        f"short of {K} allowed results."
    )
    for n in sizes:
        db = synthetic_vectors(spectrum, n, DB_SEED)
        built = simlib_index(config, db, cache=n >= 100_000 and not config.quick)
        core = SearchCore.from_state(VECTORS, None, db, index=built.index)
        table, check = measure(core, db, queries, repeats, budget, check=n == CHECK_SIZE or config.quick)
        origin = f"cached, built {built.built_at} UTC" if built.cached else "built in this run"
        section.table(table, f"**{n:,} vectors** (index {origin}):", floatfmt=".4g")
        verdict = switch_point(table, n)
        section.text(verdict["explanation"])
        section.headlines.append(
            Headline(f"filtered search, {n:,} vectors: allowed share where exact stops beating HNSW + selector",
                     verdict["value"], f"simlib's rule picks the faster path at every measured share, within "
                     f"{100 * (TOLERANCE - 1):.0f}%", verdict["met"])
        )
        if check is not None:
            section.text(check["explanation"])
            section.headlines.append(
                Headline(f"filtered search, {n:,} vectors, {100 * CHECK_FRACTION:g}% allowed: queries whose top {K} "
                         f"equal exact search over the allowed ids", check["value"], "all", check["met"])
            )
        del core, built, db
    return section


def allowed_ids(n: int, fraction: float, seed: int = 0) -> np.ndarray:
    """A seeded random subset of round(fraction * n) ids (at least k + 1), sorted."""
    count = max(K + 1, round(fraction * n))
    return np.sort(np.random.default_rng(seed).choice(n, count, replace=False))


def measure(core: SearchCore, db: np.ndarray, queries: np.ndarray, repeats: int, budget: tuple[int, float],
            check: bool):
    """One row per allowed share: times and recalls of each path; and, when `check`, the id-for-id comparison at
    `CHECK_FRACTION` (None otherwise). `budget` (queries, seconds): a path's first pass stops after `seconds` once
    it has answered `queries`, and its timed rounds use the queries it answered."""
    n = len(core)
    singles = [queries[i : i + 1] for i in range(len(queries))]
    index, flat = core.index_, flat_storage(core.index_)
    rows, result = [], None
    for fraction in FRACTIONS:
        ids = allowed_ids(n, fraction)
        mask = np.zeros(n, dtype=bool)
        mask[ids] = True
        bits = np.packbits(mask, bitorder="little")  # must outlive the selector's searches: kept till the next share
        selector = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits))

        def filtered(path, some, mask=mask):
            with forced(core, path):
                return [core.search_vectors(q, K, threshold=-np.inf, allowed=mask).ids for q in some]

        def first_pass(path, mask=mask):
            """The path's results for the queries it answers within the budget (the warm-up of its timed rounds)."""
            found, started = [], time.perf_counter()
            with PathSpy() as spy, forced(core, path):
                for q in singles:
                    found.append(core.search_vectors(q, K, threshold=-np.inf, allowed=mask).ids)
                    if len(found) >= budget[0] and time.perf_counter() - started > budget[1]:
                        break
            return np.vstack(found), spy.calls

        passes = {name: first_pass(path) for name, path in ((HNSW_PATH, "HNSW"), (EXACT_PATH, "exact"),
                                                             (RULE_PATH, None))}
        found = {name: ids_ for name, (ids_, _) in passes.items()}
        m = {name: len(ids_) for name, ids_ in found.items()}
        picks = {call["path"] for call in passes[RULE_PATH][1][:1]}
        graph = [call for call in passes[HNSW_PATH][1] if call["path"] == "HNSW"]
        ef = graph[0]["ef"] if graph else None
        m.update({UNFILTERED: len(singles), FAISS_HNSW: m[HNSW_PATH], FAISS_FLAT: m[EXACT_PATH]})
        runs = {
            HNSW_PATH: lambda: filtered("HNSW", singles[: m[HNSW_PATH]]),
            EXACT_PATH: lambda: filtered("exact", singles[: m[EXACT_PATH]]),
            RULE_PATH: lambda: filtered(None, singles[: m[RULE_PATH]]),
            UNFILTERED: lambda: [core.search_vectors(q, K, threshold=-np.inf) for q in singles],
            FAISS_HNSW: lambda ef=ef, selector=selector: [
                search_checked(index, q, K, ef, selector) for q in singles[: m[HNSW_PATH]]
            ],
            FAISS_FLAT: lambda selector=selector: [
                search_checked(flat, q, K, None, selector) for q in singles[: m[EXACT_PATH]]
            ],
        }
        us = {name: 1e6 / rate for name, rate in interleaved_rates(runs, m, repeats).items()}
        _, nearest = exact_search(db[ids], queries, K)
        truth = ids[nearest]
        pick = picks.pop() if len(picks) == 1 else "?"

        def recall(name, truth=truth):
            return ann_recall_at_k(found[name], truth[: m[name]], K)

        rows.append({
            "allowed %": 100 * fraction,
            "allowed ids": len(ids),
            "rule picks": pick,
            f"{HNSW_PATH} us": us[HNSW_PATH],
            f"{EXACT_PATH} us": us[EXACT_PATH],
            f"{RULE_PATH} us": us[RULE_PATH],
            f"{UNFILTERED} us": us[UNFILTERED],
            "rule overhead beyond unfiltered us": us[RULE_PATH] - us[UNFILTERED],
            f"{FAISS_HNSW} us": us[FAISS_HNSW],
            f"{FAISS_FLAT} us": us[FAISS_FLAT],
            f"recall@{K} (i)": recall(HNSW_PATH),
            f"recall@{K} (ii)": recall(EXACT_PATH),
            f"recall@{K} (iii)": recall(RULE_PATH),
            "queries (i) / (ii) / (iii)": f"{m[HNSW_PATH]} / {m[EXACT_PATH]} / {m[RULE_PATH]}",
            "HNSW efSearch": ef if ef is not None else PARAMS.ef_search,
            "HNSW short": sum(c["short"] for c in graph) / m[HNSW_PATH],
        })
        if check and fraction == CHECK_FRACTION:
            result = compare_with_exact(db, queries[: m[RULE_PATH]], ids, found[RULE_PATH], pick)
    table = pd.DataFrame(rows)
    table["HNSW efSearch"] = table["HNSW efSearch"].astype("Int64")
    return table, result


def compare_with_exact(db: np.ndarray, queries: np.ndarray, ids: np.ndarray, found: np.ndarray, pick: str):
    """The rule's top-k ids against the k nearest allowed ids computed here in float64 (a reference independent of
    FAISS's float32 kernels), ranked and as sets."""
    allowed, q = db[ids].astype(np.float64), queries.astype(np.float64)
    distances = (q**2).sum(axis=1)[:, None] - 2 * q @ allowed.T + (allowed**2).sum(axis=1)[None, :]
    truth = ids[np.argsort(distances, axis=1, kind="stable")[:, :K]]
    ranked = float(np.mean((found == truth).all(axis=1)))
    as_sets = float(np.mean([set(a) == set(b) for a, b in zip(found.tolist(), truth.tolist())]))
    return {
        "value": f"{ranked:.3f} ranked, {as_sets:.3f} as sets ({len(found)} queries)",
        "met": ranked == 1.0,
        "explanation": (
            f"At {100 * CHECK_FRACTION:g}% allowed ({len(ids)} of {len(db):,} ids) simlib's rule takes the {pick} "
            f"path. Against the {K} nearest allowed ids computed here in float64, a share of {ranked:.3f} of the "
            f"{len(found)} queries get the same {K} ids in the same order, {as_sets:.3f} the same {K} ids."
        ),
    }


def switch_point(table: pd.DataFrame, n: int) -> dict:
    """Where the exact path stops beating the HNSW path (log-linear interpolation of the time ratio between the two
    measured shares around the first crossing), and whether the rule's path is within `TOLERANCE` of the faster
    one at every share."""
    share = table["allowed %"].to_numpy(float)
    hnsw, exact = table[f"{HNSW_PATH} us"].to_numpy(float), table[f"{EXACT_PATH} us"].to_numpy(float)
    chosen = np.where(table["rule picks"] == "exact", exact, hnsw)
    best = np.minimum(hnsw, exact)
    ok = chosen <= TOLERANCE * best
    exact_wins = exact < hnsw
    if exact_wins.all():
        value = f"exact faster at every share up to {share[-1]:g}%"
    elif not exact_wins.any():
        value = f"HNSW faster at every share from {share[0]:g}%"
    elif not exact_wins[0]:
        value = "not monotonic: exact faster at " + ", ".join(f"{s:g}%" for s in share[exact_wins])
    else:
        i = int(np.flatnonzero(~exact_wins)[0]) - 1  # last share of the first run where exact wins
        ratio = np.log(exact / hnsw)  # < 0: exact faster
        t = ratio[i] / (ratio[i] - ratio[i + 1])
        at = float(np.exp(np.log(share[i]) + t * (np.log(share[i + 1]) - np.log(share[i]))))
        value = f"~{at:.2g}% (exact faster up to {share[i]:g}%, HNSW from {share[i + 1]:g}%)"
        if exact_wins[i + 1 :].any():
            value += "; exact faster again at " + ", ".join(f"{s:g}%" for s in share[i + 1 :][exact_wins[i + 1 :]])
    wrong = [f"{s:g}% ({c / b:.2f}x the faster)" for s, c, b, good in zip(share, chosen, best, ok) if not good]
    explanation = (
        f"{n:,} vectors: the exact path is faster at "
        + (", ".join(f"{s:g}%" for s in share[exact_wins]) or "no measured share")
        + f" allowed; the switch point is {value}. simlib's rule "
        + (f"takes a path within {100 * (TOLERANCE - 1):.0f}% of the faster one at every measured share."
           if ok.all() else f"takes a path more than {100 * (TOLERANCE - 1):.0f}% slower than the other at "
           + ", ".join(wrong) + ".")
    )
    return {"value": value, "met": bool(ok.all()), "explanation": explanation}
