"""Feature extraction on a Ray cluster (Ray Data): the features `simlib.features.extract_features` makes, decoded in
Ray tasks spread over the cluster and embedded in actors that load the backbone once.

This process (the driver) lists the files and keeps what comes back in shards of consecutive files (a hundredth
of the run, 8 to 1,024 files), written to a shard folder on its own disk once every file of the shard is done. A shard is named by what it was made
from (the backbone's weights, its precision, and each file's path, size and modification time), so running the same
extraction again takes the finished shards and extracts only the rest: a run stopped midway (the driver killed, the
cluster lost) loses no finished shard. A worker that dies is restarted by Ray and its batch run again; results are
kept by file position, so a batch delivered twice counts once.

Workers read the image files by their paths, so on a cluster of several machines every node must see the files at
the same paths (a shared or network file system) and have simlib installed. The backbone's weights travel through
Ray's object store; they need not be on the workers.

Ray is an optional dependency (`pip install "simlib[ray]"`), imported only when an extraction runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from .backbones import Backbone, Preprocess
from .features import ExtractionResult, Progress, decode_for_model, default_batch_size
from .images import DEFAULT_MAX_PIXELS, FileError, ImageSource, source_name

MAX_SHARD = 1024  # files per shard at most: what a stopped run can lose, and the driver's unit of writing
_SHARD_FORMAT = 1
_BLOCK_BATCHES = 4  # batches per Ray Data block: the unit a decoding task takes
_DECODE_MEMORY = 3 * DEFAULT_MAX_PIXELS  # bytes a decoding task may hold: an RGB image at the decoder's pixel limit


def default_shard_folder() -> Path:
    """Where finished shards wait until the collection is saved: $XDG_CACHE_HOME/simlib/ray-shards."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "simlib" / "ray-shards"


@dataclass
class RayExtractor:
    """Extract features on Ray: `address` is passed to `ray.init` ('HOST:PORT' or 'ray://HOST:PORT' of a running
    cluster; 'local' starts a local one; None joins the cluster in $RAY_ADDRESS or one started on this machine with
    `ray start`, else starts a local one), once per process: a later extraction uses the same. Pass it as `extractor=` to
    `Collection.build`, `add` or `sync`, or call it as `extract_features` is called.

    On a cluster with GPUs each embedding actor takes one GPU; on CPUs each takes `model_cpus` cores (default: a
    quarter of the cluster's, 1 to 4) and at most `max_actors` run (default: as many as leave half the cores to
    decoding). `batch_size` files are decoded and embedded per step (default: as `extract_features`)."""

    address: str | None = None
    shards: str | os.PathLike | None = None  # shard folder; default `default_shard_folder()`
    shard_size: int | None = None  # files per shard; default `shard_size_for` the number of files
    batch_size: int | None = None
    model_cpus: int | None = None
    max_actors: int | None = None
    resumed: int = field(default=0, init=False)  # files the last call took from shards of an earlier run
    cluster: str | None = field(default=None, init=False)  # what the last call ran on: address and resources
    _used: set[Path] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("shard_size", "batch_size", "model_cpus", "max_actors"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def __call__(
        self,
        backbone: Backbone,
        sources: Sequence[ImageSource],
        *,
        names: Sequence[str] | None = None,
        progress: Progress = True,
    ) -> ExtractionResult:
        """Features of `sources` (image file paths), as `extract_features` returns them."""
        paths = [_path(source) for source in sources]
        names = list(names) if names is not None else [source_name(source) for source in sources]
        if len(names) != len(paths):
            raise ValueError(f"{len(names)} names for {len(paths)} sources")
        folder = Path(self.shards) if self.shards is not None else default_shard_folder()
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_writes(folder)
        run = _Run(backbone, paths, folder, self.shard_size or shard_size_for(len(paths)))
        self.resumed = int(run.done.sum())
        self._used.update(run.files)
        bar = tqdm(total=len(paths), initial=self.resumed, unit="img", desc=f"{backbone.name} features on Ray",
                   disable=progress is not True)
        with bar:
            pending = np.flatnonzero(~run.done)
            done = self.resumed
            if len(pending):
                batch_size = self.batch_size or default_batch_size(backbone.device)
                for settled in _ray_batches(self, backbone, paths, pending, batch_size, run):
                    done += settled
                    bar.update(settled)
                    if callable(progress):
                        progress(done, len(paths))
        errors = [FileError(names[i], str(run.reasons[i])) for i in np.flatnonzero(~run.ok)]
        indices = np.flatnonzero(run.ok)
        return ExtractionResult(run.features[indices], indices.astype(np.int64), errors)

    def forget(self) -> None:
        """Delete the shards this extractor wrote or took: call it once the collection holding them is saved."""
        for path in self._used:
            path.unlink(missing_ok=True)
        self._used.clear()


def shard_size_for(files: int) -> int:
    """Files per shard for a run of `files`: a hundredth of them, at least 8 and at most `MAX_SHARD`, so a stopped
    run loses little of a small run and a large one writes shards of a few MB."""
    return max(8, min(MAX_SHARD, -(-files // 100)))


def _path(source: ImageSource) -> str:
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"Ray extraction reads image files by path; got {type(source).__name__}")
    return os.path.abspath(os.fspath(source))


class _Run:
    """One extraction's results by file position, and its shards: taken from the folder where finished, written
    there as they finish."""

    def __init__(self, backbone: Backbone, paths: list[str], folder: Path, shard_size: int):
        n = len(paths)
        self.features = np.zeros((n, backbone.dim), dtype=np.float32)
        self.ok = np.zeros(n, dtype=bool)
        self.done = np.zeros(n, dtype=bool)
        self.reasons = np.full(n, "", dtype=object)
        self.shard_size = shard_size
        self.files = [folder / f"{shard_key(backbone, paths[start:start + shard_size])}.npz"
                      for start in range(0, n, shard_size)]
        self.left = np.array([min(shard_size, n - start) for start in range(0, n, shard_size)], dtype=np.int64)
        for shard, file in enumerate(self.files):
            taken = read_shard(file, int(self.left[shard]), backbone.dim)
            if taken is not None:
                rows = self._rows(shard)
                self.features[rows], self.ok[rows], self.reasons[rows] = taken
                self.done[rows] = True
                self.left[shard] = 0

    def _rows(self, shard: int) -> slice:
        return slice(shard * self.shard_size, min((shard + 1) * self.shard_size, len(self.done)))

    def take(self, positions: np.ndarray, features: np.ndarray, reasons: np.ndarray) -> int:
        """Record one batch that came back; returns how many of its files were new (a batch run twice after a
        worker died counts once). Writes each shard it completes."""
        fresh = ~self.done[positions]
        positions, features, reasons = positions[fresh], features[fresh], reasons[fresh]
        ok = reasons == ""
        self.features[positions[ok]] = features[ok]
        self.ok[positions] = ok
        self.reasons[positions] = reasons
        self.done[positions] = True
        for shard, count in zip(*np.unique(positions // self.shard_size, return_counts=True)):
            self.left[shard] -= count
            if self.left[shard] == 0:
                rows = self._rows(int(shard))
                write_shard(self.files[shard], self.features[rows], self.ok[rows], self.reasons[rows])
        return len(positions)


def shard_key(backbone: Backbone, paths: Sequence[str]) -> str:
    """SHA-256 of what a shard's features depend on: the backbone (weights and precision) and each file's path, size
    and modification time (None where the file cannot be examined)."""
    files = []
    for path in paths:
        try:
            info = os.stat(path)
            files.append([path, info.st_size, info.st_mtime_ns])
        except OSError:
            files.append([path, None, None])
    made_of = [_SHARD_FORMAT, backbone.name, backbone.weights_sha256, backbone.precision, files]
    return hashlib.sha256(json.dumps(made_of).encode()).hexdigest()


def write_shard(path: Path, features: np.ndarray, ok: np.ndarray, reasons: np.ndarray) -> None:
    """Write a shard atomically (a temporary file renamed over it), so a crash leaves it whole or absent; the
    temporary file of a writer that crashed is removed by the next run (`remove_stale_writes`)."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".shard-{os.getpid()}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            np.savez(out, features=features, ok=ok, reasons=np.asarray(reasons, dtype=str))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def remove_stale_writes(folder: Path) -> None:
    """Remove the temporary files that writers no longer running left in `folder`."""
    for temporary in folder.glob(".shard-*-*.tmp"):
        pid = temporary.name.split("-")[1]
        if pid.isdigit() and not _running(int(pid)):
            temporary.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def read_shard(path: Path, rows: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(features, ok, reasons) of a finished shard of `rows` files, or None where there is none or it does not
    read as one (it is then made again). Nothing in it is unpickled."""
    try:
        with np.load(path, allow_pickle=False) as shard:
            features, ok, reasons = shard["features"], shard["ok"], shard["reasons"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if (features.shape != (rows, dim) or features.dtype != np.float32 or ok.shape != (rows,) or ok.dtype != bool
            or reasons.shape != (rows,) or reasons.dtype.kind != "U" or (reasons[~ok] == "").any()):
        return None
    return features, ok, reasons.astype(object)


def _ray_batches(extractor: RayExtractor, backbone: Backbone, paths: list[str], pending: np.ndarray,
                 batch_size: int, run: _Run):
    """Run the pending files through Ray Data; yields how many new files each batch that came back settled."""
    ray = _connect(extractor.address)
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    extractor.cluster = f"{ray.get_runtime_context().gcs_address} ({cpus} CPUs, {gpus} GPUs)"
    model_cpus = extractor.model_cpus or max(1, min(4, cpus // 4))
    if gpus:
        actors, placement = gpus, {"num_gpus": 1}
    else:
        actors, placement = extractor.max_actors or max(1, cpus // (2 * model_cpus)), {"num_cpus": model_cpus}
    weights = ray.put(Path(backbone.weights_path).read_bytes())
    items = [{"position": int(i), "path": paths[i]} for i in pending]
    blocks = max(1, -(-len(items) // (batch_size * _BLOCK_BATCHES)))
    dataset = (
        ray.data.from_items(items, override_num_blocks=blocks)
        # the memory a decode may hold also keeps decoding in tasks of its own, apart from the embedding actors:
        # Ray Data fuses consecutive steps whose resources agree
        .map_batches(_decode_batch, fn_kwargs={"size": backbone.spec.input_size}, batch_size=batch_size,
                     batch_format="numpy", num_cpus=1, memory=_DECODE_MEMORY)
        .map_batches(_Embedder, fn_constructor_kwargs={
                         "name": backbone.name, "weights": weights, "sha256": backbone.weights_sha256,
                         "suffix": Path(backbone.weights_path).suffix, "precision": backbone.precision,
                         "device": "cuda" if gpus else "cpu", "threads": model_cpus},
                     batch_size=batch_size, batch_format="numpy",
                     compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors), **placement)
    )
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        yield run.take(batch["position"].astype(np.int64), batch["features"], batch["reason"].astype(str))


def _connect(address: str | None):
    """The `ray` module, connected to the cluster at `address` or to a local one started now (or earlier)."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise RuntimeError('Ray extraction needs Ray Data: pip install "simlib[ray]" (or "ray[data]")') from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled": ours show
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.issue_detectors_config.detectors = []  # their advice on memory hints is noise for a command-line run
    return ray


def _decode_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Ray task: decode a batch of files to the model's uint8 input; a file that fails gets its reason instead."""
    preprocess = Preprocess(size)
    pixels = np.zeros((len(batch["path"]), 3, size, size), dtype=np.uint8)
    reasons = []
    for row, path in enumerate(batch["path"]):
        tensor, reason = decode_for_model(str(path), str(path), preprocess)
        if tensor is not None:
            pixels[row] = tensor.numpy()
        reasons.append(reason or "")
    return {"position": batch["position"], "pixels": pixels, "reason": np.array(reasons, dtype=str)}


class _Embedder:
    """Ray actor: loads the backbone once (its weights from the object store, checked against their SHA-256) and
    embeds the batches it is given."""

    def __init__(self, name: str, weights, sha256: str, suffix: str, precision: str, device: str, threads: int):
        import ray
        import torch

        from .backbones import load_backbone

        torch.set_num_threads(threads)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"weights{suffix}"
            path.write_bytes(ray.get(weights))  # weights: the ObjectRef of the file's bytes
            self.backbone = load_backbone(name, path, device=device, download=False, precision=precision)
        if self.backbone.weights_sha256 != sha256:
            raise RuntimeError(f"{name} weights reached the worker with SHA-256 {self.backbone.weights_sha256}, "
                               f"not {sha256}")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        ok = batch["reason"] == ""
        features = np.zeros((len(ok), self.backbone.dim), dtype=np.float32)
        if ok.any():
            features[ok] = self.backbone.features(torch.from_numpy(batch["pixels"][ok]))
        return {"position": batch["position"], "features": features, "reason": batch["reason"]}
