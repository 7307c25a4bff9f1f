"""Benchmark 13: feature extraction on Ray (`simlib.distributed.RayExtractor`) against the single-machine path
(`extract_features`), on the same 12-megapixel JPEGs and backbone: throughput, what starting the local cluster
costs, a rerun that finds every shard finished, and how far the features move."""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from simlib.distributed import RayExtractor
from simlib.features import extract_features

from .inputs import RunConfig, camera_jpegs, timing_backbones
from .report import Headline, Section


def run(config: RunConfig) -> Section:
    section = Section("13. Extraction on Ray: a local cluster against the single-machine path")
    if importlib.util.find_spec("ray") is None:
        section.text("Skipped: Ray is not installed (pip install 'simlib[ray]').")
        return section
    import ray

    backbone = timing_backbones(config)[0]
    files = camera_jpegs(config, config.pick(8, 192))
    started = time.perf_counter()
    local = extract_features(backbone, files, progress=False)
    local_s = time.perf_counter() - started
    rows = [{"path": "extract_features (this process, DataLoader decoders)", "seconds": local_s,
             "img/s": len(files) / local_s, "vs single machine": 1.0, "min cosine to it": 1.0}]
    runs = [("RayExtractor, first run (actors start, load the model)", "a"),
            ("RayExtractor, second run (cluster and code warm)", "b"),
            ("RayExtractor, rerun with every shard finished", "b")]
    if config.quick:  # a smoke run: the warm run is the first run's code again, and costs a second actor pool
        runs = [runs[0], (runs[2][0], "a")]
    with tempfile.TemporaryDirectory(prefix="simlib-ray-") as scratch:
        started = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        start_s = time.perf_counter() - started
        try:
            for name, shards in runs:
                extractor = RayExtractor(shards=Path(scratch) / shards)
                started = time.perf_counter()
                result = extractor(backbone, files, progress=False)
                seconds = time.perf_counter() - started
                rows.append({"path": name, "seconds": seconds, "img/s": len(files) / seconds,
                             "vs single machine": local_s / seconds,
                             "min cosine to it": float((result.features * local.features).sum(1).min())})
            resumed = extractor.resumed
        finally:
            ray.shutdown()
    table = pd.DataFrame(rows)
    warm = table.iloc[len(runs) - 1]  # the second run (the first in a quick run)
    section.text(
        f"{len(files)} distinct 4000x3000 JPEGs, {backbone.name} in {backbone.precision}. A local Ray cluster of "
        f"{os.cpu_count()} CPUs on this machine (started in {start_s:.1f} s, not counted in the runs); shards in a "
        f"fresh folder for each run but the last, which finds all {resumed} files in finished shards. On one "
        f"machine Ray can only add overhead (tasks, actors, the object store) to the same decoding and model work; "
        f"it pays where the cluster has more cores than this machine. Rows are one run each."
    )
    section.table(table, floatfmt=".3g")
    section.headlines.append(Headline(
        f"Ray extraction on one machine, {'first run' if config.quick else 'warm'}, against the single-machine path",
        f"{warm['img/s']:.1f} img/s, {warm['vs single machine']:.2f}x; features min cosine "
        f"{warm['min cosine to it']:.6f} ({len(files)} images)",
        "cosine >= 0.9999", bool(table["min cosine to it"].min() >= 0.9999)))
    return section
