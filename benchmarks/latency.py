"""Benchmark 3: query latency end to end, a 12-megapixel JPEG query to its top 10 through `Collection.search`,
over collections of 10,000 and 1,000,000 vectors: p50 and p95, and where the time goes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from simlib.collection import Collection, CollectionConfig, ImageRecord
from simlib.features import embed_query
from simlib.images import load_image
from simlib.index import add_vectors, search_index
from simlib.ratings import Rating, RatingValue, read_rating
from simlib.reduce import normalize_rows

from .ann import DB_SEED, simlib_index
from .inputs import (
    RunConfig,
    benchmark_features,
    camera_jpegs,
    NEEDS_WALLPAPERS,
    quality_backbone,
    spectrum_pca,
    synthetic_vectors,
    vector_spectrum,
)
from .measure import latencies
from .quality import decision_threshold
from .report import Headline, Section

K = 10
TARGET_P50_MS = 50.0


def run(config: RunConfig) -> Section:
    section = Section("3. Query latency end to end (12-megapixel JPEG -> top 10)")
    backbone = quality_backbone(config)
    if backbone is None:
        section.text(NEEDS_WALLPAPERS)
        return section
    data = benchmark_features(config, backbone)
    pca = spectrum_pca(data)
    spectrum = vector_spectrum(normalize_rows(pca.transform(np.vstack([data.features, data.copies]))))
    real = normalize_rows(pca.transform(data.features))
    threshold = decision_threshold(data, pca)
    queries = camera_jpegs(config, config.pick(3, 12))
    rounds = config.pick(2, 5)
    sizes = config.pick([2_000], [10_000, 1_000_000])
    section.text(
        f"Queries: {len(queries)} distinct 4000x3000 JPEGs (those of benchmark 1), each searched {rounds} times after "
        f"a warm-up round, one at a time, with `Collection.search(path, k={K})`: read the query's rating, decode "
        f"(draft mode), embed (EfficientNet-Lite0, batch of 1, {torch.get_num_threads()} torch threads), PCA, HNSW "
        f"search at simlib's settings, results. Each collection holds the {len(real)} wallpaper photos the queries "
        f"were cut from plus synthetic filler vectors (the spectrum-matched vectors of benchmark 2, built into the "
        f"index through `simlib.index`; the 1M index is the one benchmark 2 built), with a match threshold of "
        f"{threshold:.3f} chosen by `choose_threshold` on the wallpapers' edited copies. Features of the filler "
        f"are not materialised: search never reads them."
    )
    rows, parts = [], []
    for size in sizes:
        collection = synthetic_collection(config, backbone, pca, data, real, spectrum, size, threshold)
        search = lambda path: collection.search(path, k=K)  # noqa: E731
        latencies(search, queries)  # warm-up
        taken = latencies(search, queries * rounds) * 1000
        responses = [collection.search(q, k=K) for q in queries]
        visual = np.mean([not r.fallback for r in responses])
        rows.append(
            {
                "collection vectors": len(collection),
                "queries": len(taken),
                "p50 ms": float(np.percentile(taken, 50)),
                "p95 ms": float(np.percentile(taken, 95)),
                "mean ms": float(taken.mean()),
                "answered by visual match": float(visual),
            }
        )
        parts.append(breakdown(collection, queries))
        del collection
    table = pd.DataFrame(rows)
    section.table(table, "Latency of `Collection.search` (wall clock):", floatfmt=".3g")
    section.table(pd.concat(parts, axis=1).reset_index(), "Median milliseconds per step:", floatfmt=".3g")
    largest = rows[-1]
    section.headlines.append(
        Headline(
            f"query p50, 12 MP JPEG -> top 10, {largest['collection vectors']:,} vectors",
            f"{largest['p50 ms']:.1f} ms (p95 {largest['p95 ms']:.1f})",
            f"<= {TARGET_P50_MS:.0f} ms",
            largest["p50 ms"] <= TARGET_P50_MS,
        )
    )
    return section


RATINGS = [Rating(None, None)] + [
    Rating(float(s), "XMP xmp:Rating", (RatingValue("XMP xmp:Rating", str(s), float(s)),)) for s in range(1, 6)
]


def synthetic_collection(config, backbone, pca, data, real, spectrum, size: int, threshold: float) -> Collection:
    """A `Collection` of `size` synthetic filler vectors (ids 0.., the database of benchmark 2 when `size` matches,
    so its cached index serves) followed by the real wallpapers."""
    filler_count = size
    filler = synthetic_vectors(spectrum, filler_count, DB_SEED)
    built = simlib_index(config, filler, cache=filler_count >= 100_000 and not config.quick)
    add_vectors(built.index, real)
    collection = Collection(backbone, CollectionConfig(pca_dim=pca.n_components_, threshold=threshold))
    collection.pca_ = pca
    collection.vectors = np.vstack([filler, real])
    collection.index_ = built.index
    collection.images = [ImageRecord(f"synthetic/{i:07d}.jpg", RATINGS[i % len(RATINGS)]) for i in range(filler_count)]
    collection.images += [ImageRecord(str(p), RATINGS[0]) for p in data.images.paths]
    return collection


def breakdown(collection: Collection, queries) -> pd.DataFrame:
    """Median milliseconds of each step of `Collection.search`, timed one step at a time with the library's
    functions (the full search also builds the result objects)."""
    backbone, pca = collection.backbone, collection.pca_
    size = backbone.spec.input_size
    decoded = [load_image(q, min_side=size) for q in queries]
    tensors = [backbone.preprocess(image)[None] for image in decoded]
    features = [embed_query(backbone, q)[None] for q in queries]
    vectors = [normalize_rows(pca.transform(f)) for f in features]
    ef_search = collection.config.index.ef_search
    steps = {
        "read rating (EXIF/XMP/sidecars)": lambda i: read_rating(queries[i]),
        "decode (draft) + resize to 224": lambda i: backbone.preprocess(load_image(queries[i], min_side=size)),
        "embed (batch of 1)": lambda i: backbone.embed(tensors[i]),
        "PCA + normalise": lambda i: normalize_rows(pca.transform(features[i])),
        "HNSW search (search_index)": lambda i: search_index(collection.index_, vectors[i], K, ef_search),
        "whole Collection.search": lambda i: collection.search(queries[i], k=K),
    }
    medians = {}
    for name, step in steps.items():
        step(0)
        medians[name] = float(np.median(latencies(step, list(range(len(queries))) * 2))) * 1000
    return pd.DataFrame({f"{len(collection):,} vectors": medians}).rename_axis("step")
