"""Benchmark 9: which index a collection of a given size should get. One query at a time through the search core,
an exact index against HNSW at simlib's settings, over collection sizes around the switch point `IndexParams(
kind='auto')` uses (`simlib.config.EXACT_BELOW`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from simlib.config import EXACT_BELOW
from simlib.evaluate import ann_recall_at_k
from simlib.index import IndexParams, exact_search
from simlib.search_core import SearchConfig, SearchCore

from .ann import DB_SEED, QUERY_SEED, real_vectors
from .inputs import NEEDS_WALLPAPERS, RunConfig, quality_backbone, synthetic_vectors, vector_spectrum
from .machine import isa
from .measure import interleaved_rates
from .report import Headline, Section

K = 10


def run(config: RunConfig) -> Section:
    section = Section("9. Index kind by collection size: exact against HNSW")
    backbone = quality_backbone(config)
    if backbone is None:
        section.text(NEEDS_WALLPAPERS)
        return section
    spectrum = vector_spectrum(real_vectors(config, backbone))
    sizes = config.pick([500, 2_000, 8_000], [500, 1_000, 2_000, 5_000, 8_000, 10_000, 12_000, 20_000])
    n_queries, repeats = config.pick((100, 1), (300, 3))
    queries = synthetic_vectors(spectrum, n_queries, QUERY_SEED)
    rows = []
    for n in sizes:
        db = synthetic_vectors(spectrum, n, DB_SEED)
        hnsw = SearchCore.from_state(SearchConfig(pca_dim=None, index=IndexParams("hnsw")), None, db)
        exact = hnsw.with_index(IndexParams("exact"))
        runs = {kind: (lambda c=core: [c.search_vectors(q[None], K, threshold=-np.inf) for q in queries])
                for kind, core in (("exact", exact), ("hnsw", hnsw))}
        rates = interleaved_rates(runs, len(queries), repeats)
        truth = exact_search(db, queries, K)[1]
        found = hnsw.search_vectors(queries, K, threshold=-np.inf).ids
        rows.append({"vectors": n, "exact QPS": rates["exact"], "HNSW QPS": rates["hnsw"],
                     "HNSW recall@10": ann_recall_at_k(found, truth, K),
                     "faster": "exact" if rates["exact"] >= rates["hnsw"] else "HNSW",
                     "auto gives": IndexParams("auto").kind_for(n)})
    table = pd.DataFrame(rows)
    section.text(
        f"Synthetic vectors with the real spectrum (those of benchmark 2), {n_queries} queries, one at a time through "
        f"`SearchCore.search_vectors(q, {K}, threshold=-inf)`, queries per second, median of {repeats} interleaved "
        f"rounds; HNSW at M=32, efConstruction=200, efSearch=128. ISA: {isa()}. `kind='auto'` (the collection "
        f"default) builds an exact index below {EXACT_BELOW:,} vectors, HNSW from there."
    )
    section.table(table, floatfmt=".4g")
    wrong = table[(table["faster"] == "exact") != (table["auto gives"] == "exact")]
    # where the two are within 10% either choice is right
    close = (table["exact QPS"] / table["HNSW QPS"]).between(0.9, 1.1)
    misses = wrong[~close.loc[wrong.index]]
    section.headlines.append(Headline(
        "index kind `auto` picks the faster kind (one query at a time) at every size measured, within 10%",
        "yes" if misses.empty else f"no at {', '.join(f'{n:,}' for n in misses['vectors'])} vectors",
        "every size", misses.empty))
    return section
