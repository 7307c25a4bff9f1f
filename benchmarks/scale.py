"""Benchmark 6: a photo library at scale. Collections of 100,000 and 1,000,000 images with the features of
ResNet-18 (512-d) and EfficientNet-Lite0 (1,280-d), through `Collection`: the folder's size, save, load, add 100
camera photos and save, sync with nothing changed, remove 1,000 and search, the time a query costs beyond decoding
and embedding it (visual, fallback, minimum rating), and the peak RSS of each. Every step runs in a fresh process
(`python -m benchmarks.scale STEP ARGS`), so its time and its peak RSS (VmHWM) are its own; a quick
run (a few thousand images) runs them in this process and measures no RSS.

The images are synthetic but laid out like a camera library: a folder per day (`2019/2019-07-14/`), `IMG_*.JPG`
files of 2 to 9 MB (sparse files on disk: their sizes and times are real, their bytes are never read, since a sync
with nothing changed only compares sizes and times), ratings for about half of them, most in XMP sidecars that
exist on disk. The search vectors are benchmark 2's (the real PCA-128 spectrum, seeded), indexed at simlib's
settings (its cached index when there is one); the features put those vectors on their first 128 axes and Gaussian
noise with the real features' remaining variances on the others, L2-normalised, the PCA is fitted on 20,000 of them.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from simlib import Collection, SearchConfig, SearchCore
from simlib.backbones import load_backbone
from simlib.ratings import Rating, RatingValue
from simlib.records import FileStamp, ImageRecord
from simlib.reduce import PCA, normalize_rows
from simlib.threshold import Calibration

from .ann import DB_SEED, PARAMS, simlib_index
from .inputs import (
    NEEDS_WALLPAPERS,
    ROOT,
    RunConfig,
    benchmark_features,
    camera_jpegs,
    offline_backbone_available,
    quality_backbone,
    resnet18_random_weights,
    spectrum_core,
    synthetic_vectors,
    vector_spectrum,
)
from .report import Headline, Section

K = 10
PCA_SAMPLE = 20_000
TARGETS = {"load": 3.0, "add": 5.0, "sync": 30.0, "overhead": 5.0, "rss": 3.0}  # s, s, s, ms p50, GB + the index
CALIBRATION = Calibration(0.9, 0, 0, 0.0, 0.0, 0.0, 0.0, "fixed for the benchmark")
STARS = np.array([np.nan, -1, 1, 2, 3, 4, 5])
STAR_SHARES = np.array([0.50, 0.02, 0.05, 0.08, 0.17, 0.12, 0.06])  # unrated, rejected, 1..5 stars
DAY_SECONDS, PER_DAY = 86_400, 30
FIRST_DAY = 1_420_070_400  # 2015-01-01 UTC


def run(config: RunConfig) -> Section:
    section = Section("6. A library at scale: save, load, add, sync, remove, search")
    reference_backbone = quality_backbone(config)
    if reference_backbone is None:
        section.text(NEEDS_WALLPAPERS)
        return section
    data = benchmark_features(config, reference_backbone)
    vector_variances = vector_spectrum(spectrum_core(data).vectors_)
    feature_variances = vector_spectrum(np.vstack([data.features, data.copies]))
    backbones = [("resnet18", os.fspath(resnet18_random_weights(config)), 512)]
    if offline_backbone_available():
        backbones.append(("efficientnet_lite0", None, 1280))
    backbones = config.pick(backbones[-1:], backbones)  # a quick run: the wider features only
    sizes = config.pick([2_000], [100_000, 1_000_000])
    added, removed, queries = config.pick(4, 100), config.pick(100, 1_000), config.pick(30, 300)
    photos = [os.fspath(p) for p in camera_jpegs(config, config.pick(3, 12))]
    work = config.cache / "scale-work"
    shutil.rmtree(work, ignore_errors=True)
    rows, overheads, notes = [], [], []
    try:
        for n in sizes:
            vectors = synthetic_vectors(vector_variances, n, DB_SEED)
            built = simlib_index(config, vectors, cache=n >= 100_000 and not config.quick)
            inputs = work / f"{n}"
            inputs.mkdir(parents=True)
            np.save(inputs / "vectors.npy", vectors)
            faiss.write_index(built.index, os.fspath(inputs / "index.faiss"))
            origin = (f"cached from a build of {built.build_seconds:.0f} s on {built.built_at} UTC" if built.cached
                      else f"built in this run in {built.build_seconds:.0f} s")
            del vectors, built
            root = inputs / "library"
            started = time.perf_counter()
            make_library(root, n)
            notes.append(f"{n:,} images: the index was {origin}; the library folder (sparse files and sidecars) "
                         f"was made in {time.perf_counter() - started:.0f} s.")
            for name, weights, dim in backbones:
                features = inputs / f"features-{dim}.f32"
                write_features(features, inputs / "vectors.npy", vector_variances, feature_variances, dim)
                args = {"n": n, "backbone": name, "weights": weights, "dim": dim, "inputs": os.fspath(inputs),
                        "root": os.fspath(root), "collection": os.fspath(inputs / f"{name}.simlib"),
                        "photos": photos, "added": added, "removed": removed, "queries": queries}
                results = {step: measure(step, args, isolated=not config.quick) for step in STEPS}
                rows.append(_row(n, name, dim, results))
                overheads.append(_overheads(n, name, results))
                shutil.rmtree(inputs / f"{name}.simlib")
                features.unlink()
            shutil.rmtree(inputs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = pd.DataFrame(rows)
    measured = ("A quick run does every step in this process and measures no RSS." if config.quick else
                "Peak RSS is each process's VmHWM (its resident high-water mark), which counts the pages of "
                "memory-mapped files it touched.")
    section.text(
        f"Each collection is saved into an empty folder, then each step below starts a new process that loads it. "
        f"{measured} In order: save (in the process that assembled the collection from its inputs: records, "
        f"mapped features, vectors, index); load (`Collection.load`, the backbone already loaded); {queries} "
        f"searches; sync of the library folder with nothing changed; add {added} camera photos (4000x3000 JPEGs, "
        f"features extracted) and save; remove {removed} images by path, search, and save. Index: FAISS HNSW at "
        f"simlib's settings (M={PARAMS.M}, efConstruction={PARAMS.ef_construction}), one per size, shared by both "
        f"backbones. " + " ".join(notes)
    )
    rss = [c for c in table.columns if c.startswith("RSS")]
    section.table(table.drop(columns=rss), "Sizes in GB, times in seconds:", floatfmt=".3g")
    section.table(table[["images", "backbone", *rss]], "Peak RSS of each step's process, GB:", floatfmt=".3g")
    section.table(pd.concat(overheads).reset_index(drop=True),
                  f"Query cost beyond decode + embed, `Collection.search_features(features, k={K})` (the search "
                  f"core, the records of the results read from the database, the response), one query at a time, "
                  f"milliseconds:", floatfmt=".3g")
    _headlines(section, table, overheads, added)
    return section


# ------------------------------------------------------------------ the library


def library_records(n: int, root: Path) -> list[ImageRecord]:
    """n records of a camera library under `root`: a folder a day, 30 photos a day, sizes, times, hashes and
    ratings drawn from a seed (most ratings from a sidecar, the rest embedded)."""
    rng = np.random.default_rng(7)
    sizes = rng.integers(2_000_000, 9_000_000, n)
    stars = rng.choice(STARS, n, p=STAR_SHARES)
    in_sidecar = rng.random(n) < 0.8
    digests = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    records = []
    for i in range(n):
        day, number = divmod(i, PER_DAY)
        seconds = FIRST_DAY + day * DAY_SECONDS + 9 * 3600 + number * 600
        date = time.strftime("%Y/%Y-%m-%d", time.gmtime(seconds))
        name = f"IMG_{i:07d}.JPG"
        sidecar = ""
        if np.isnan(stars[i]):
            rating = Rating(None, None)
        else:
            source = f"sidecar {name}.xmp xmp:Rating" if in_sidecar[i] else "xmp:Rating"
            raw = f"{stars[i]:g}"
            rating = Rating(float(stars[i]), source, (RatingValue(source, raw, float(stars[i])),))
            if in_sidecar[i]:
                sidecar = f"{name}.xmp {len(sidecar_packet(raw))} {(seconds + 60) * 10**9}"
        stamp = FileStamp(int(sizes[i]), seconds * 10**9, digests[i].tobytes().hex(), sidecar)
        records.append(ImageRecord(os.path.join(root, date, name), rating, stamp))
    return records


def sidecar_packet(raw: str) -> bytes:
    return (f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f'<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="{raw}"/></rdf:RDF>'
            f'</x:xmpmeta>').encode()


def make_library(root: Path, n: int) -> None:
    """The files `library_records` describes: sparse image files of the recorded sizes and times, and sidecars."""
    for record in library_records(n, root):
        folder = os.path.dirname(record.path)
        if not os.path.isdir(folder):
            os.makedirs(folder)
        handle = os.open(record.path, os.O_CREAT | os.O_WRONLY, 0o644)
        os.ftruncate(handle, record.stamp.size)
        os.close(handle)
        os.utime(record.path, ns=(record.stamp.mtime_ns, record.stamp.mtime_ns))
        if record.stamp.sidecars:
            name, _, mtime = record.stamp.sidecars.split(" ")
            sidecar = os.path.join(folder, name)
            with open(sidecar, "wb") as out:
                out.write(sidecar_packet(record.rating.values[0].raw))
            os.utime(sidecar, ns=(int(mtime), int(mtime)))


def write_features(path: Path, vectors_path: Path, vector_variances: np.ndarray, feature_variances: np.ndarray,
                   dim: int, chunk: int = 100_000) -> None:
    """Features (n, dim), raw float32 written a chunk at a time: the vectors rescaled to the real features'
    leading variances on the first axes, Gaussian noise with the real features' next variances on the others,
    L2-normalised."""
    vectors = np.load(vectors_path, mmap_mode="r")
    n, width = vectors.shape
    variances = np.pad(np.maximum(feature_variances[:dim], 0), (0, max(0, dim - len(feature_variances))))
    leading = np.sqrt(variances[:width] / np.maximum(vector_variances[:width], 1e-12)).astype(np.float32)
    noise = np.sqrt(variances[width:]).astype(np.float32)
    out = np.memmap(path, dtype=np.float32, mode="w+", shape=(n, dim))
    rng = np.random.default_rng(11)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        block = np.empty((stop - start, dim), dtype=np.float32)
        block[:, :width] = vectors[start:stop] * leading
        block[:, width:] = rng.standard_normal((stop - start, dim - width), dtype=np.float32) * noise
        out[start:stop] = normalize_rows(block)
    out.flush()
    del out


# ------------------------------------------------------------------ the steps, each in its own process


def measure(step: str, args: dict, isolated: bool) -> dict:
    """Run one step here, or in a new Python process that prints its results as JSON on its last line."""
    if not isolated:  # this process's peak RSS is not the step's
        return {key: (float("nan") if key.startswith("rss") else value) for key, value in STEPS[step](args).items()}
    done = subprocess.run([sys.executable, "-m", "benchmarks.scale", step, json.dumps(args)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.fspath(ROOT)})
    if done.returncode != 0:
        raise RuntimeError(f"scale step {step} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@functools.lru_cache(maxsize=2)
def _load_backbone(name: str, weights: str | None):
    return load_backbone(name, weights, device="cpu")


def _backbone(args: dict):
    return _load_backbone(args["backbone"], args["weights"])


def _rss_gb() -> float:
    """This process's peak RSS in GB: VmHWM, the high-water mark of its own memory (`ru_maxrss` would report the
    parent's when that was larger: Linux carries it across the fork and exec that start the step)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _save(args: dict) -> dict:
    inputs = Path(args["inputs"])
    backbone = _backbone(args)
    records = library_records(args["n"], Path(args["root"]))
    features = np.memmap(inputs / f"features-{args['dim']}.f32", dtype=np.float32, mode="r",
                         shape=(args["n"], args["dim"]))
    vectors = np.load(inputs / "vectors.npy", mmap_mode="r")
    width = vectors.shape[1]  # 128 (a quick run's spectrum has fewer dimensions)
    sample = np.random.default_rng(3).choice(args["n"], min(PCA_SAMPLE, args["n"]), replace=False)
    pca = PCA(width).fit(np.asarray(features[np.sort(sample)]))
    stars = np.array([np.nan if r.rating.stars is None else r.rating.stars for r in records])
    config = SearchConfig(pca_dim=width, index=PARAMS)
    core = SearchCore.from_state(config, pca, vectors, stars,
                                 index=faiss.read_index(os.fspath(inputs / "index.faiss")), calibration=CALIBRATION)
    collection = Collection(backbone, images=records, features=features, core=core, root=args["root"])
    del records
    started = time.perf_counter()
    collection.save(args["collection"])
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in Path(args["collection"]).iterdir())
    index = next(p for p in Path(args["collection"]).iterdir() if p.suffix == ".faiss").stat().st_size
    return {"save_s": seconds, "folder_gb": size / 1e9, "index_gb": index / 1e9, "rss_gb": _rss_gb()}


def _load(args: dict) -> dict:
    backbone = _backbone(args)
    before = _rss_gb()
    started = time.perf_counter()
    collection = Collection.load(args["collection"], backbone)
    seconds = time.perf_counter() - started
    assert len(collection) == args["n"]
    return {"load_s": seconds, "rss_before_gb": before, "rss_gb": _rss_gb()}


def _queries(args: dict) -> np.ndarray:
    """Near-duplicates of images in the collection, as backbone features (read from the benchmark's inputs: the
    collection's own features are not read by a search)."""
    rng = np.random.default_rng(5)
    ids = rng.choice(args["n"], args["queries"], replace=False)
    features = np.memmap(Path(args["inputs"]) / f"features-{args['dim']}.f32", dtype=np.float32, mode="r",
                         shape=(args["n"], args["dim"]))
    picked = np.asarray(features[np.sort(ids)])
    return normalize_rows(picked + 0.02 * rng.standard_normal(picked.shape).astype(np.float32))


CASES = {
    "visual": dict(threshold=-np.inf),
    "fallback (3-star query)": dict(threshold=np.inf, query_rating=3.0),
    "min_rating=4": dict(threshold=-np.inf, min_rating=4),
}


def _overhead_ms(collection: Collection, queries: np.ndarray) -> dict[str, float]:
    """Median milliseconds per query of each case, after one warm-up query."""
    medians = {}
    for case, options in CASES.items():
        collection.search_features(queries[0], K, **options)
        taken = []
        for query in queries:
            started = time.perf_counter()
            collection.search_features(query, K, **options)
            taken.append(time.perf_counter() - started)
        medians[case] = float(np.median(taken)) * 1000
    return medians


def _search(args: dict) -> dict:
    collection = Collection.load(args["collection"], _backbone(args))
    return {"overhead_ms": _overhead_ms(collection, _queries(args)), "rss_gb": _rss_gb()}


def _sync(args: dict) -> dict:
    collection = Collection.load(args["collection"], _backbone(args))
    started = time.perf_counter()
    report = collection.sync(args["root"], progress=False)
    seconds = time.perf_counter() - started
    assert report.unchanged == args["n"] and not (report.added or report.removed or report.changed), report
    return {"sync_s": seconds, "rss_gb": _rss_gb()}


def _add(args: dict) -> dict:
    collection = Collection.load(args["collection"], _backbone(args))
    new = Path(args["inputs"]) / "new-photos"
    new.mkdir(exist_ok=True)
    files = []
    for i in range(args["added"]):  # distinct names, the camera photos' bytes
        target = new / f"DSC_{i:05d}.JPG"
        if not target.exists():
            os.link(args["photos"][i % len(args["photos"])], target)
        files.append(target)
    started = time.perf_counter()
    report = collection.add(files, progress=False)
    extracted = time.perf_counter() - started
    collection.save(args["collection"])
    total = time.perf_counter() - started
    assert report.added == args["added"], report
    return {"add_save_s": total, "add_extract_s": extracted, "rss_gb": _rss_gb()}


def _remove(args: dict) -> dict:
    collection = Collection.load(args["collection"], _backbone(args))
    rng = np.random.default_rng(9)
    paths = collection.records.paths(np.sort(rng.choice(args["n"], args["removed"], replace=False)))
    queries = _queries(args)
    started = time.perf_counter()
    report = collection.remove(paths)
    seconds = time.perf_counter() - started
    assert report.removed == args["removed"], report
    overhead = _overhead_ms(collection, queries)
    started = time.perf_counter()
    collection.save(args["collection"])
    return {"remove_s": seconds, "save_s": time.perf_counter() - started, "overhead_ms": overhead,
            "rss_gb": _rss_gb()}


STEPS = {"save": _save, "load": _load, "search": _search, "sync": _sync, "add": _add, "remove": _remove}


# ------------------------------------------------------------------ tables


def _row(n, name, dim, results) -> dict:
    save, load, search = results["save"], results["load"], results["search"]
    sync, add, remove = results["sync"], results["add"], results["remove"]
    return {
        "images": n, "backbone": f"{name} {dim}-d", "folder GB": save["folder_gb"], "index GB": save["index_gb"],
        "save s": save["save_s"], "load s": load["load_s"], "add + save s": add["add_save_s"],
        "(of it extraction) s": add["add_extract_s"], "sync, nothing changed s": sync["sync_s"],
        "remove s": remove["remove_s"], "save after remove s": remove["save_s"],
        "RSS save": save["rss_gb"], "RSS load": load["rss_gb"], "RSS search": search["rss_gb"],
        "RSS sync": sync["rss_gb"], "RSS add": add["rss_gb"], "RSS remove": remove["rss_gb"],
    }


def _overheads(n, name, results) -> pd.DataFrame:
    rows = []
    for when, key in (("as loaded", "search"), ("after removing", "remove")):
        for case, ms in results[key]["overhead_ms"].items():
            rows.append({"images": n, "backbone": name, "case": case, "collection": when, "p50 ms": ms})
    return pd.DataFrame(rows)


def _headlines(section: Section, table: pd.DataFrame, overheads: list[pd.DataFrame], added: int) -> None:
    largest = table[table["images"] == table["images"].max()]
    for _, row in largest.iterrows():
        label = f"{row['images']:,} images, {row['backbone']}"
        rss = row["RSS search"] - row["index GB"] if pd.notna(row["RSS search"]) else float("nan")
        cost = pd.concat(overheads)
        worst = cost[(cost["images"] == row["images"]) & (cost["backbone"] == row["backbone"].split()[0])]["p50 ms"]
        for figure, value, target, key in (
            ("load", f"{row['load s']:.2f} s", "<= 3 s", row["load s"] <= TARGETS["load"]),
            (f"add {added} + save", f"{row['add + save s']:.2f} s (extraction {row['(of it extraction) s']:.2f} s)",
             "<= 5 s", row["add + save s"] <= TARGETS["add"]),
            ("sync, nothing changed", f"{row['sync, nothing changed s']:.1f} s", "<= 30 s",
             row["sync, nothing changed s"] <= TARGETS["sync"]),
            ("query overhead beyond decode + embed, worst case p50", f"{worst.max():.2f} ms", "<= 5 ms",
             worst.max() <= TARGETS["overhead"]),
            ("peak RSS while searching, less the index", f"{rss:.2f} GB (index {row['index GB']:.2f} GB)",
             "<= 3 GB", bool(rss <= TARGETS["rss"]) if np.isfinite(rss) else None),
        ):
            section.headlines.append(Headline(f"scale: {figure}, {label}", value, target,
                                              None if key is None else bool(key)))


if __name__ == "__main__":
    step, payload = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps({**STEPS[step](payload)}))
