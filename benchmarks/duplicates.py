"""Benchmark 7: grouping near duplicates at scale, in bounded memory. Synthetic unit vectors with planted copies are
grouped by simlib's own path (`simlib.duplicates.group_vectors` through `simlib.tuning.grouping_cost`: every vector
searches the search core's HNSW index for its neighbours, a chunk at a time, and the pairs at or above the
threshold are grouped by the star rule). Each size is grouped in a fresh process that loads the vectors and the
index from disk, so the peak resident memory measured during the grouping is the grouping's alone, beside what
holding the collection costs; an n x n similarity matrix is never made.

Run as `python -m benchmarks.duplicates VECTORS INDEX TRUTH THRESHOLD` it is that child process: it prints one
JSON object with its measurements.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from simlib.duplicates import FIRST_NEIGHBOURS, SEARCH_BUDGET
from simlib.evaluate import pair_precision_recall
from simlib.index import IndexParams, prefer_huge_pages
from simlib.search_core import SearchConfig, SearchCore
from simlib.tuning import grouping_cost, plant_copies

from .ann import real_vectors
from .inputs import (
    ROOT,
    Built,
    RunConfig,
    atomic_write,
    cache_key,
    cached_build,
    quality_backbone,
    synthetic_vectors,
    vector_spectrum,
)
from .report import Headline, Section

# cheaper than simlib's defaults (M=32, efConstruction=200), whose 1M build took 757 s here: near duplicates are so
# close that a sparse graph finds them, and the grouping's cost, not the build's, is measured
PARAMS = IndexParams(M=16, ef_construction=40, ef_search=16)
CONFIG = SearchConfig(pca_dim=None, index=PARAMS)
THRESHOLD = 0.9
SHARE = 0.02  # vectors replaced by a copy of another
SIMILARITY = (0.9, 0.99)  # cosine of a planted copy to its original
SEED = 3
MiB = 2**20
OWN = "grouping's own MiB"


def run(config: RunConfig) -> Section:
    section = Section("7. Grouping near duplicates: every vector's neighbours, bounded memory")
    spectrum, origin = _spectrum(config)
    sizes = config.pick([1_000, 2_000], [10_000, 100_000, 1_000_000])
    section.text(
        f"Vectors: {origin}; {SHARE:.0%} of them replaced by copies of others (an original may get several) at a "
        f"cosine drawn from {SIMILARITY[0]}-{SIMILARITY[1]} to it, and grouped at threshold {THRESHOLD}: "
        f"`simlib.tuning.grouping_cost`, i.e. `simlib.duplicates.neighbour_edges` (each vector asks the search "
        f"core for its {FIRST_NEIGHBOURS} nearest, 4x more while the last still reaches the threshold) then "
        f"`keepers_by_rating` (the star rule). The HNSW index is built with cheaper parameters than simlib's "
        f"defaults, M={PARAMS.M}, efConstruction={PARAMS.ef_construction}, searched at efSearch={PARAMS.ef_search} "
        f"(no 1M index of benchmark 2 was cached to reuse; at simlib's M=32 / efConstruction=200 its build took "
        f"757 s on this machine). Each size is grouped in a fresh process that loads the vectors and the index "
        f"from disk: *RSS before* is that process holding them (plus Python, NumPy, FAISS and torch, which "
        f"importing simlib loads), *peak RSS* its peak during the grouping (the kernel's peak reset just before, "
        f"`/proc/self/clear_refs`), *grouping's own* the difference. Pair precision / recall: of the pairs grouped "
        f"together, the share that are a planted copy and its original (or two copies of one original), and of "
        f"those, the share grouped together."
    )
    rows = [_measure_size(config, spectrum, n) for n in sizes]
    if not all(row.pop("peak reset") for row in rows):
        section.text("The kernel did not let the peak be reset: peak RSS is the process's peak since it started.")
    table = pd.DataFrame(rows)
    section.table(table, floatfmt=".4g")
    last, before = rows[-1], rows[-2] if len(rows) > 1 else rows[-1]
    per_vector = last[OWN] * MiB / last["vectors"]
    linear = per_vector <= 2 * before[OWN] * MiB / before["vectors"]
    section.text(
        f"At {last['vectors']:,} vectors the grouping's own memory is {last[OWN]:.0f} MiB ({per_vector:.0f} bytes "
        f"per vector), against {_gib(last['n x n float32 GiB'])} for an n x n float32 similarity matrix. What it "
        f"holds: one search call's results (at most {SEARCH_BUDGET:,} neighbours, a constant), the pairs found "
        f"({last['pairs MiB']:.1f} MiB, in proportion to the copies), and a few arrays of one number per vector "
        f"(the live ids, the keeper of each id). At {before['vectors']:,} vectors it was "
        f"{before[OWN] * MiB / before['vectors']:.0f} bytes per vector: the constant part weighs less as n grows."
    )
    section.headlines.append(Headline(
        f"grouping {last['vectors']:,} vectors: peak RSS (grouping's own)",
        f"{last['peak RSS MiB']:.0f} MiB ({last[OWN]:.0f} MiB, {per_vector:.0f} B/vector)",
        "bytes per vector not growing with n (no n x n matrix)", bool(linear)))
    return section


def _spectrum(config: RunConfig) -> tuple[np.ndarray, str]:
    """Per-axis variances of the synthetic vectors, and where they come from."""
    backbone = quality_backbone(config)
    if backbone is not None:
        return vector_spectrum(real_vectors(config, backbone)), ("drawn from a Gaussian with the per-axis variances of the real wallpaper vectors of "
                          "benchmark 2 (128-d), then L2-normalised")
    spectrum = 1.0 / np.arange(1, 129)
    return spectrum, ("drawn from a Gaussian with variances falling as 1/i over 128 axes (the shared wallpaper set "
                      "or the offline backbone is missing, so the real spectrum is not at hand), then L2-normalised")


def _measure_size(config: RunConfig, spectrum: np.ndarray, n: int) -> dict:
    """Make (or reuse) the planted vectors and their index on disk, then group them in a fresh process."""
    paths, built, index_path = _inputs(config, spectrum, n)
    child = _child(paths["vectors"], index_path, paths["truth"])
    return {
        "vectors": n,
        "copies planted": int(round(SHARE * n)),
        "index build s": built.build_seconds,
        "build": f"cached ({built.built_at} UTC)" if built.cached else "this run",
        "vectors + index MiB": (paths["vectors"].stat().st_size + index_path.stat().st_size) / MiB,
        "RSS before MiB": child["rss_before"] / MiB,
        "peak RSS MiB": child["peak_rss"] / MiB,
        OWN: max(0, child["peak_rss"] - child["rss_before"]) / MiB,
        "pairs MiB": child["pairs_bytes"] / MiB,
        "neighbour search s": child["search_seconds"],
        "star rule s": child["grouping_seconds"],
        "pairs found": child["pairs"],
        "groups": child["groups"],
        "pair precision": child["precision"],
        "pair recall": child["recall"],
        "n x n float32 GiB": 4 * n * n / 2**30,
        "peak reset": child["peak_reset"],
    }


def _inputs(config: RunConfig, spectrum: np.ndarray, n: int) -> tuple[dict[str, Path], Built, Path]:
    """The planted vectors and their truth as .npy files, and the index over them as a FAISS file, cached."""
    key = cache_key(n, spectrum.round(8).tolist(), SHARE, SIMILARITY, SEED)
    paths = {name: config.cache / "duplicates" / f"{name}-{n}-{key}.npy" for name in ("vectors", "truth")}
    if not all(p.is_file() for p in paths.values()) or not config.use_cache:
        vectors, truth = plant_copies(synthetic_vectors(spectrum, n, SEED), SHARE, SEED, SIMILARITY)
        for name, array in (("vectors", vectors), ("truth", truth)):
            atomic_write(paths[name], lambda tmp, a=array: _save_npy(tmp, a))
    name = f"faiss-hnsw-M{PARAMS.M}-efc{PARAMS.ef_construction}-{n}-{key}.index"

    def build() -> faiss.Index:
        return SearchCore.from_state(CONFIG, None, np.load(paths["vectors"])).index_

    built = cached_build(config, name, build, lambda index, path: faiss.write_index(index, os.fspath(path)),
                         lambda path: None)
    return paths, built, config.cache / "indexes" / name


def _gib(gib: float) -> str:
    return f"{gib / 1024:,.1f} TiB" if gib >= 1024 else f"{gib:,.3g} GiB"


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)


def _child(vectors: Path, index: Path, truth: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.duplicates", str(vectors), str(index), str(truth), str(THRESHOLD)],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the grouping process failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(vectors_path: str, index_path: str, truth_path: str, threshold: float) -> dict:
    """In this process: load the vectors and the index, group them, and measure."""
    vectors = np.load(vectors_path)
    index = faiss.read_index(index_path)
    prefer_huge_pages(index)
    core = SearchCore.from_state(CONFIG, None, vectors, index=index)
    started = time.perf_counter()
    cost = grouping_cost(core, threshold)
    quality = pair_precision_recall(cost.keeper, np.load(truth_path))
    return {
        "rss_before": cost.rss_before, "peak_rss": cost.peak_rss, "peak_reset": cost.peak_reset,
        "search_seconds": cost.search_seconds, "grouping_seconds": cost.grouping_seconds,
        "seconds": time.perf_counter() - started, "pairs": cost.pairs, "pairs_bytes": cost.pairs_bytes,
        "groups": cost.groups, "grouped": cost.grouped, "precision": quality["precision"],
        "recall": quality["recall"],
    }


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))))
