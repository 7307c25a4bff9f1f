"""Feature extraction: many image files in, L2-normalised float32 features out, failures collected per file.

Decoding runs in DataLoader worker processes and overlaps with inference in the main process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .backbones import Backbone, Preprocess
from .images import FileError, ImageDecodeError, ImageSource, load_image, source_name

ProgressCallback = Callable[[int, int], None]
Progress = Union[bool, ProgressCallback]


@dataclass
class ExtractionResult:
    """Features of the sources that decoded, their positions in the input, and the files that did not."""

    features: np.ndarray  # (n_ok, dim) float32, rows L2-normalised
    indices: np.ndarray  # (n_ok,) int64 positions in the input sequence
    errors: list[FileError] = field(default_factory=list)


class Extractor(Protocol):
    """Another way to run `extract_features` on the same arguments, with the same result: `simlib.distributed.
    RayExtractor` runs it on a Ray cluster."""

    def __call__(self, backbone: Backbone, sources: Sequence[ImageSource], *, names: Sequence[str] | None = None,
                 progress: Progress = True) -> ExtractionResult: ...


class _DecodeDataset(Dataset):
    def __init__(self, sources: Sequence[ImageSource], names: Sequence[str], preprocess: Preprocess):
        self.sources = sources
        self.names = names
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        return (i, *decode_for_model(self.sources[i], self.names[i], self.preprocess))


def decode_for_model(source: ImageSource, name: str, preprocess: Preprocess) -> tuple[torch.Tensor | None, str | None]:
    """(the model's uint8 input, None) for `source`, or (None, why it cannot be used): the one decoding step of every
    extraction path, local or distributed."""
    try:
        return preprocess(load_image(source, min_side=preprocess.size, name=name)), None
    except ImageDecodeError as exc:
        return None, exc.reason
    except Exception as exc:  # a worker must report, never die: one bad file never stops a batch
        return None, f"unexpected {type(exc).__name__}: {exc}"


def _collate(items):
    ok = [(i, tensor) for i, tensor, _ in items if tensor is not None]
    failed = [(i, reason) for i, _, reason in items if reason is not None]
    batch = torch.stack([tensor for _, tensor in ok]) if ok else None
    return [i for i, _ in ok], batch, failed


def default_batch_size(device: torch.device) -> int:
    """Files decoded per step: 32 to keep a GPU busy; 8 on a CPU, where the model takes 4 at a time
    anyway and a smaller step starts the model sooner and holds fewer decoded images (benchmarks/throughput.py)."""
    return 8 if device.type == "cpu" else 32


def default_workers() -> int:
    """Decoding processes: three quarters of the cores (every core on 2 or 3), at least one, at most eight. A 12 MP
    JPEG costs more CPU to decode than the model spends on it (benchmarks/throughput.py: 33 ms against 9 to 22 ms
    on one core), so the decoders, not the model, set the pace; the model takes the cores they leave, and at
    least one."""
    cores = os.cpu_count() or 1
    return max(1, min(8, cores - cores // 4))


def model_threads(num_workers: int) -> int:
    """Torch threads for the model on a CPU while `num_workers` processes decode: the cores they leave, at least one,
    never more than torch's setting. A model thread that shares its core with a decoder stalls the other model
    threads at every layer."""
    threads = torch.get_num_threads()
    return threads if num_workers == 0 else max(1, min(threads, (os.cpu_count() or 1) - num_workers))


def extract_features(
    backbone: Backbone,
    sources: Sequence[ImageSource],
    *,
    names: Sequence[str] | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: Progress = True,
) -> ExtractionResult:
    """Decode and embed `sources` in batches; a file that fails is reported in `errors` and the rest go on.

    `batch_size` files (default: `default_batch_size`) are decoded per step, in `num_workers` processes; the model
    embeds them with `Backbone.features` on `model_threads(num_workers)` threads. `progress` is True for a tqdm bar,
    False for none, or a callback `(done, total)`.
    """
    names = list(names) if names is not None else [source_name(s) for s in sources]
    if len(names) != len(sources):
        raise ValueError(f"{len(names)} names for {len(sources)} sources")
    total = len(sources)
    features = np.empty((total, backbone.dim), dtype=np.float32)
    ok = np.zeros(total, dtype=bool)
    errors: list[FileError] = []
    if batch_size is None:
        batch_size = default_batch_size(backbone.device)
    if num_workers is None:
        num_workers = default_workers() if total > batch_size else 0
    loader = DataLoader(
        _DecodeDataset(sources, names, backbone.preprocess),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=backbone.device.type == "cuda",
    )
    bar = tqdm(total=total, unit="img", desc=f"{backbone.name} features", disable=progress is not True)
    on_cpu = backbone.device.type == "cpu"
    threads = torch.get_num_threads()
    done = 0
    try:
        if on_cpu:
            torch.set_num_threads(model_threads(num_workers))
        with bar:
            for ids, batch, failed in loader:
                if batch is not None:
                    features[ids] = backbone.features(batch)
                    ok[ids] = True
                errors.extend(FileError(names[i], reason) for i, reason in failed)
                done += len(ids) + len(failed)
                bar.update(len(ids) + len(failed))
                if callable(progress):
                    progress(done, total)
    finally:
        torch.set_num_threads(threads)
    indices = np.flatnonzero(ok)
    return ExtractionResult(features[indices], indices.astype(np.int64), errors)


def embed_query(backbone: Backbone, source: ImageSource, *, name: str | None = None) -> np.ndarray:
    """Features (dim,) of one image, decoded in this process: the low-latency path for queries."""
    image = load_image(source, min_side=backbone.spec.input_size, name=name)
    return backbone.embed(backbone.preprocess(image)[None]).numpy()[0]
