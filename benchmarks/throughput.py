"""Benchmark 1: feature extraction throughput on 12-megapixel JPEGs, end to end (decode + features).

(a) the straightforward way: one image at a time, full decode, full-size resize, batch of one;
(b) simlib's pipeline: `extract_features` with its defaults;
ceiling: the model alone on already-preprocessed uint8 tensors, at its best batch size and thread count here.
"""

from __future__ import annotations

import itertools
import os
import time

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from simlib.backbones import CPU_MODEL_BATCH, Backbone, load_backbone
from simlib.features import default_batch_size, default_workers, extract_features, model_threads
from simlib.images import load_image

from .inputs import CAMERA_SIZE, RunConfig, camera_jpegs, timing_backbones
from .measure import interleaved_rates, rate
from .report import Headline, Section

DEFAULT_BATCH = default_batch_size(torch.device("cpu"))
MODEL_BATCHES = tuple(sorted({1, CPU_MODEL_BATCH, 8, 32}))
CORES = os.cpu_count() or 1


def naive_features(backbone: Backbone, paths) -> np.ndarray:
    """The straightforward way: each file fully decoded, resized from full size, embedded alone."""
    size = backbone.spec.input_size
    rows = []
    for path in paths:
        image = load_image(path, min_side=0)  # min_side=0: no draft mode, every pixel decoded
        tensor = pil_to_tensor(image.resize((size, size), Image.Resampling.BILINEAR))
        rows.append(backbone.embed(tensor[None]).numpy()[0])
    return np.stack(rows)


def simlib_features(backbone: Backbone, paths, **options) -> np.ndarray:
    result = extract_features(backbone, paths, progress=False, **options)
    if result.errors:
        raise RuntimeError(f"extraction failed: {result.errors}")
    return result.features


def preprocessed(backbone: Backbone, paths) -> list[torch.Tensor]:
    """What the model alone is fed: each file decoded (draft) and resized to a uint8 tensor, as (b) does."""
    return [backbone.preprocess(load_image(p, min_side=backbone.spec.input_size)) for p in paths]


def batched(tensors: list[torch.Tensor], batch_size: int) -> list[torch.Tensor]:
    return [torch.stack(tensors[i : i + batch_size]) for i in range(0, len(tensors), batch_size)]


def model_alone(backbone: Backbone, batches: list[torch.Tensor]) -> None:
    for batch in batches:
        backbone.embed(batch)


def run(config: RunConfig) -> Section:
    distinct, n_images, n_naive, repeats = config.pick((3, 8, 3, 1), (12, 96, 24, 3))
    files = camera_jpegs(config, distinct)
    paths = [files[i % distinct] for i in range(n_images)]
    mean_mb = np.mean([os.path.getsize(f) for f in files]) / 1e6
    section = Section("1. Extraction throughput (12-megapixel JPEGs, decode + features)")
    section.text(
        f"{n_images} decodes ({n_naive} for the slow path (a)) of {distinct} distinct "
        f"{CAMERA_SIZE[0]}x{CAMERA_SIZE[1]} baseline JPEGs (quality 92, 4:2:0, mean {mean_mb:.1f} MB) cropped from "
        f"the shared wallpaper photos (`benchmarks/inputs.py`). "
        f"(a) one image at a time in fp32: full decode, PIL resize from full size, batch of 1; (b) `extract_features` "
        f"with its defaults (batch {DEFAULT_BATCH}, {default_workers()} decoding worker(s) on this machine, "
        f"{torch.get_num_threads()} torch threads); ceiling: `Backbone.embed` alone on preprocessed uint8 tensors, "
        f"at its best over batch sizes {', '.join(map(str, MODEL_BATCHES))} and 1 or {CORES} torch threads. Images "
        f"per second, median of {repeats} interleaved rounds. "
        f"'Where the CPU goes' gives CPU milliseconds per image for the draft decode + resize of (b) and for the "
        f"model on one thread at batch {CPU_MODEL_BATCH}. Decoding and the model share the {CORES} cores, so (b) "
        f"cannot exceed {CORES} x 1000 / (decode ms + model ms) images per second, however well they overlap: the "
        f"'physical bound', and b/bound says how close (b) comes to it. (a) runs in fp32, as the straightforward "
        f"way does; (b), the ceiling and the model's milliseconds in the precision `--precision auto` chooses on "
        f"this CPU (column 'precision (b)'). cos(a, b): agreement of the two paths' features (draft decoding, the "
        f"resize path and the precision change them slightly)."
    )
    rows, model_rows = [], []
    amx = bool(torch.cpu.get_capabilities().get("amx_bf16")) if hasattr(torch.cpu, "get_capabilities") else False
    ratio_target = 6.0 if amx else 4.0  # the 6x holds where AMX is present; without it, the earlier 4x
    for backbone in timing_backbones(config):
        row, rates = _compare(backbone, paths, n_naive, files, repeats)
        rows.append(row)
        model_rows += rates
        label = f"{backbone.name} in {backbone.precision}" + (" (random weights)" if backbone.name == "resnet18" else "")
        ratio = rows[-1]["b/a"]
        section.headlines.append(Headline(f"extraction b/a (a in fp32), {label}, {'with' if amx else 'no'} AMX",
                                          f"{ratio:.1f}x", f">= {ratio_target:g}", ratio >= ratio_target))
        section.headlines.append(
            Headline(f"extraction b / physical bound cores x 1000 / (decode + model ms), {label}",
                     f"{rows[-1]['b/bound']:.2f}", ">= 0.85", rows[-1]["b/bound"] >= 0.85)
        )
    frame = pd.DataFrame(rows)
    main = ["backbone", "precision (b)", "(a) naive img/s", "(b) simlib img/s", "ceiling img/s", "b/a", "b/bound",
            "b/ceiling", "cos(a, b) min"]
    section.table(frame[main], "Images per second:", floatfmt=".3g")
    section.table(frame[[c for c in frame.columns if c not in main[1:]]], "Where the CPU goes:", floatfmt=".3g")
    section.table(pd.DataFrame(model_rows), "The model alone, images per second (one round each):", floatfmt=".3g")
    if not config.quick:
        grid = pd.concat([_settings_grid(b, paths) for b in timing_backbones(config)], ignore_index=True)
        section.table(grid, "Pipeline settings tried (images per second, one round each):", floatfmt=".3g")
    return section


def _compare(backbone: Backbone, paths, n_naive: int, files, repeats: int) -> tuple[dict, list[dict]]:
    """(a) in fp32 against (b) and the ceiling in `backbone`'s own precision (what `auto` chose here)."""
    fp32 = backbone if backbone.precision == "fp32" else load_backbone(
        backbone.name, backbone.weights_path, device="cpu", precision="fp32")
    tensors = [t for t, _ in zip(itertools.cycle(preprocessed(backbone, files)), paths)]
    naive_features(fp32, files[:1])  # warm-up: first calls build the model's kernels
    simlib_features(backbone, paths[:32])  # warm-up, decoding workers included
    # the ceiling: the model's best throughput over batch sizes and thread counts, on this machine
    by_size = {size: batched(tensors, size) for size in MODEL_BATCHES}
    model_rates = {threads: _model_rates(backbone, by_size, threads, len(tensors)) for threads in sorted({1, CORES})}
    best_threads, best_size = max(
        ((t, size) for t, rates in model_rates.items() for size in rates), key=lambda ts: model_rates[ts[0]][ts[1]]
    )
    rates = interleaved_rates(
        {
            "a": lambda: naive_features(fp32, paths[:n_naive]),
            "b": lambda: simlib_features(backbone, paths),
            "ceiling": lambda: _with_threads(best_threads, lambda: model_alone(backbone, by_size[best_size])),
        },
        {"a": n_naive, "b": len(paths), "ceiling": len(paths)},
        repeats,
    )
    agreement = np.einsum("ij,ij->i", naive_features(fp32, files), simlib_features(backbone, files))
    decode_ms = cpu_milliseconds(lambda: preprocessed(backbone, files)) / len(files)
    model_ms = _with_threads(
        1, lambda: cpu_milliseconds(lambda: model_alone(backbone, by_size[CPU_MODEL_BATCH])) / len(tensors)
    )
    bound = CORES * 1000 / (decode_ms + model_ms)
    return {
        "backbone": backbone.name + (" (random weights)" if backbone.name == "resnet18" else ""),
        "precision (b)": backbone.precision,
        "(a) naive img/s": rates["a"],
        "(b) simlib img/s": rates["b"],
        "ceiling img/s": rates["ceiling"],
        "ceiling threads x batch": f"{best_threads} x {best_size}",
        "b/a": rates["b"] / rates["a"],
        "b/bound": rates["b"] / bound,
        "b/ceiling": rates["b"] / rates["ceiling"],
        "decode CPU ms/img": decode_ms,
        f"model CPU ms/img (1 thread, batch {CPU_MODEL_BATCH})": model_ms,
        "physical bound img/s": bound,
        "cos(a, b) min": float(agreement.min()),
    }, [
        {"backbone": backbone.name, "torch threads": threads, **{f"batch {size}": r for size, r in by_batch.items()}}
        for threads, by_batch in model_rates.items()
    ]


def _model_rates(backbone: Backbone, by_size: dict, threads: int, items: int) -> dict[int, float]:
    """Images per second of the model alone at each batch size, on `threads` torch threads (one round)."""

    def measure():
        for batches in by_size.values():
            model_alone(backbone, batches[:1])  # warm-up
        return interleaved_rates({size: lambda b=b: model_alone(backbone, b) for size, b in by_size.items()}, items, 1)

    return _with_threads(threads, measure)


def _with_threads(threads: int, run):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return run()
    finally:
        torch.set_num_threads(previous)


def cpu_milliseconds(run) -> float:
    """CPU time of this process (all its threads) spent in `run()`, in milliseconds."""
    started = time.process_time()
    run()
    return (time.process_time() - started) * 1000


def _settings_grid(backbone: Backbone, paths) -> pd.DataFrame:
    """`extract_features` over decoding workers and batch sizes; with no worker, also the model on 1 thread."""
    rows = []
    for workers, threads, batch in itertools.product((0, 1, 2), sorted({1, CORES}), (4, 8, 32)):
        if workers and threads != CORES:
            continue  # with workers, extract_features chooses the model's threads itself
        speed = _with_threads(
            threads,
            lambda: rate(lambda: simlib_features(backbone, paths, num_workers=workers, batch_size=batch), len(paths), 1),
        )
        used = _with_threads(threads, lambda: model_threads(workers))
        rows.append({"backbone": backbone.name, "workers": workers, "model threads": used, "batch": batch,
                     "img/s": speed})
    return pd.DataFrame(rows)
