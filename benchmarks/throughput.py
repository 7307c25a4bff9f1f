"""Benchmark 1: feature extraction throughput on 12-megapixel JPEGs, end to end (decode + features).

(a) the straightforward way: one image at a time, full decode, full-size resize, batch of one;
(b) simlib's pipeline: `extract_features` with its defaults;
ceiling: the model alone on already-preprocessed uint8 tensors, in batches of the pipeline's size.
"""

from __future__ import annotations

import inspect
import itertools
import os
import time

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from simlib.backbones import Backbone
from simlib.features import default_workers, extract_features
from simlib.images import load_image

from .inputs import CAMERA_SIZE, RunConfig, camera_jpegs, timing_backbones
from .measure import interleaved_rates, rate
from .report import Headline, Section

DEFAULT_BATCH = inspect.signature(extract_features).parameters["batch_size"].default
MODEL_BATCHES = (1, 8, DEFAULT_BATCH)


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
        f"(a) one image at a time: full decode, PIL resize from full size, batch of 1; (b) `extract_features` "
        f"with its defaults (batch {DEFAULT_BATCH}, {default_workers()} decoding worker(s) on this machine, "
        f"{torch.get_num_threads()} torch threads); ceiling: `Backbone.embed` alone on preprocessed uint8 tensors, "
        f"at the best of batch sizes {', '.join(map(str, MODEL_BATCHES))}. Images per second, median of "
        f"{repeats} interleaved rounds. "
        f"CPU milliseconds per image (all threads of this process) for the draft decode + resize of (b) and for "
        f"the model: when both cores are busy, (b) cannot beat the ceiling by more than model / (model + decode), "
        f"the 'b/ceiling bound' column. cos(a, b): agreement of the two paths' features (draft decoding and the "
        f"resize path change pixels slightly)."
    )
    rows = []
    for backbone in timing_backbones(config):
        rows.append(_compare(backbone, paths, n_naive, files, repeats))
        label = f"{backbone.name} b/a" + (" (random weights)" if backbone.name == "resnet18" else "")
        ratio = rows[-1]["b/a"]
        section.headlines.append(Headline(f"extraction {label}", f"{ratio:.1f}x", ">= 4", ratio >= 4))
        section.headlines.append(
            Headline(f"extraction {backbone.name} b/ceiling", f"{rows[-1]['b/ceiling']:.2f}", ">= 0.85",
                     rows[-1]["b/ceiling"] >= 0.85)
        )
    frame = pd.DataFrame(rows)
    main = ["backbone", "(a) naive img/s", "(b) simlib img/s", "ceiling img/s", "b/a", "b/ceiling", "cos(a, b) min"]
    section.table(frame[main], "Images per second:", floatfmt=".3g")
    section.table(frame[[c for c in frame.columns if c not in main[1:]]], "Where the CPU goes:", floatfmt=".3g")
    if not config.quick:
        grid = pd.concat([_settings_grid(b, paths) for b in timing_backbones(config)], ignore_index=True)
        section.table(grid, "Pipeline settings tried (images per second, one round each):", floatfmt=".3g")
    return section


def _compare(backbone: Backbone, paths, n_naive: int, files, repeats: int) -> dict:
    tensors = [t for t, _ in zip(itertools.cycle(preprocessed(backbone, files)), paths)]
    naive_features(backbone, files[:1])  # warm-up: first calls build the model's kernels
    simlib_features(backbone, paths[:DEFAULT_BATCH])
    # the ceiling: the model's best throughput over batch sizes, on this machine
    by_size = {size: batched(tensors, size) for size in MODEL_BATCHES}
    for batches in by_size.values():
        model_alone(backbone, batches[:1])
    model_rates = interleaved_rates({size: lambda b=b: model_alone(backbone, b) for size, b in by_size.items()},
                                    len(tensors), 1)
    best = max(model_rates, key=model_rates.get)
    rates = interleaved_rates(
        {
            "a": lambda: naive_features(backbone, paths[:n_naive]),
            "b": lambda: simlib_features(backbone, paths),
            "ceiling": lambda: model_alone(backbone, by_size[best]),
        },
        {"a": n_naive, "b": len(paths), "ceiling": len(paths)},
        repeats,
    )
    agreement = np.einsum("ij,ij->i", naive_features(backbone, files), simlib_features(backbone, files))
    decode_ms = cpu_milliseconds(lambda: preprocessed(backbone, files)) / len(files)
    model_ms = cpu_milliseconds(lambda: model_alone(backbone, by_size[DEFAULT_BATCH])) / len(paths)
    return {
        "backbone": backbone.name + (" (random weights)" if backbone.name == "resnet18" else ""),
        "(a) naive img/s": rates["a"],
        "(b) simlib img/s": rates["b"],
        "ceiling img/s": rates["ceiling"],
        "ceiling batch": best,
        "b/a": rates["b"] / rates["a"],
        "b/ceiling": rates["b"] / rates["ceiling"],
        "decode CPU ms/img": decode_ms,
        f"model CPU ms/img (batch {DEFAULT_BATCH})": model_ms,
        "b/ceiling bound": model_ms / (model_ms + decode_ms),
        "cos(a, b) min": float(agreement.min()),
        **{f"model alone img/s, batch {size}": r for size, r in model_rates.items()},
    }


def cpu_milliseconds(run) -> float:
    """CPU time of this process (all its threads) spent in `run()`, in milliseconds."""
    started = time.process_time()
    run()
    return (time.process_time() - started) * 1000


def _settings_grid(backbone: Backbone, paths) -> pd.DataFrame:
    threads = torch.get_num_threads()
    rows = []
    try:
        for workers, torch_threads, batch in itertools.product((0, 1, 2), (1, 2), (8, 32)):
            torch.set_num_threads(torch_threads)
            speed = rate(lambda: simlib_features(backbone, paths, num_workers=workers, batch_size=batch), len(paths), 1)
            rows.append(
                {"backbone": backbone.name, "workers": workers, "torch threads": torch_threads, "batch": batch,
                 "img/s": speed}
            )
    finally:
        torch.set_num_threads(threads)
    return pd.DataFrame(rows)
