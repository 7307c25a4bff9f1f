"""The copy-detection peer: imagededup's perceptual hashes (64 bits each), searched by Hamming distance and scored
with the same metrics as simlib, the score of a match being minus its Hamming distance."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from simlib.copydetect import Answers
from simlib.datasets import CopyDetectionSet
from simlib.images import load_image
from simlib.threshold import Calibration, calibration_sample, choose_threshold, edited_copy

HASHES = ("PHash", "DHash")  # the DCT hash imagededup recommends, and the gradient hash, the fastest


def hasher(name: str):
    from imagededup import methods

    return getattr(methods, name)(verbose=False)


def hash_codes(method, images) -> np.ndarray:
    """(n,) uint64 codes of PIL images with an imagededup hash method."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array([int(method.encode_image(image_array=np.asarray(im.convert("RGB"))), 16) for im in images],
                        dtype=np.uint64)


def hamming(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """(nq, nr) Hamming distances between 64-bit codes."""
    return np.bitwise_count(queries[:, None] ^ references[None, :]).astype(np.int16)


def hash_answers(query_codes: np.ndarray, reference_codes: np.ndarray, threshold: float, depth: int) -> Answers:
    """The ranking of the references by Hamming distance (ties by id), the top match's score (-distance) and
    whether it reaches `threshold`."""
    distances = hamming(query_codes, reference_codes)
    ranked = np.argsort(distances, axis=1, kind="stable")[:, :depth]
    score = -distances[np.arange(len(distances)), ranked[:, 0]].astype(np.float64)
    return Answers(ranked.astype(np.int64), score, score >= threshold)


def hash_calibration(copy_codes: np.ndarray, copied: np.ndarray, reference_codes: np.ndarray) -> Calibration:
    """The threshold chosen as a collection chooses it (`simlib.threshold.choose_threshold`), on minus the Hamming
    distance of each calibration copy to its original (match) and to the nearest other reference (non-match)."""
    distances = hamming(copy_codes, reference_codes).astype(np.float64)
    match = distances[np.arange(len(copied)), copied]
    distances[np.arange(len(copied)), copied] = np.inf
    return choose_threshold(-match, -distances.min(axis=1))


def calibration_images(references: list[Path], input_size: int = 224) -> tuple[list[Image.Image], np.ndarray]:
    """The edited copies a collection of `references` calibrates with, as images (`embed_edited_copies` decodes
    and edits them the same way), and the reference of each."""
    sample = calibration_sample(len(references))
    images = [edited_copy(load_image(references[i], min_side=2 * input_size), v) for v, i in enumerate(sample)]
    return images, sample


def peer_codes(data: CopyDetectionSet, render) -> dict[str, np.ndarray]:
    """Every hash of `HASHES` for the references, the queries (`render(i)` gives query i, rendered once for all
    hashes) and the calibration copies, under keys '<hash> <part>', and the calibration copies' references."""
    methods = {name: hasher(name) for name in HASHES}
    copies, copied = calibration_images(data.references)
    parts = {"references": lambda: (load_image(p, min_side=1 << 20) for p in data.references),
             "queries": lambda: (render(i) for i in range(len(data.queries))),
             "calibration": lambda: iter(copies)}
    codes: dict[str, np.ndarray] = {"calibration_ids": copied}
    for part, images in parts.items():
        hashed = {name: [] for name in methods}
        for image in images():
            for name, method in methods.items():
                hashed[name].append(hash_codes(method, [image])[0])
        codes.update({f"{name} {part}": np.array(values, dtype=np.uint64) for name, values in hashed.items()})
    return codes
