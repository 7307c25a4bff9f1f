"""Benchmark 8: inference precision. Speed of each backbone in fp32 and bf16 (the model alone, as `Backbone.embed`
runs it), and for the backbone with real ImageNet weights here the retrieval quality each precision gives, through
the product's own path (`extract_features` -> `SearchCore`), on the shared photos with edited copies as queries and
on the wallpaper near-duplicate groups. The quality decides whether `--precision auto` may choose bf16.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from simlib.backbones import Backbone, load_backbone, native_bf16
from simlib.evaluate import error_rates, evaluate_configuration, match_scores, roc_auc
from simlib.features import extract_features
from simlib.search_core import SearchConfig, SearchCore
from simlib.threshold import EDITS, choose_threshold, embed_edited_copies

from .inputs import RunConfig, atomic_write, cache_key, offline_backbone_available, resnet18_random_weights, wallpaper_set
from .machine import isa
from .report import Headline, Section

PRECISIONS = ("fp32", "bf16")
MAX_LOSS_POINTS = 0.5  # the rule: bf16 may be chosen by `auto` only within 0.5 points of fp32


def run(config: RunConfig) -> Section:
    section = Section("8. Inference precision: fp32 and bf16")
    section.text(f"ISA: {isa()}. bf16 runs natively here: {native_bf16(torch.device('cpu'))}.")
    section.table(speed(config), "Model alone, milliseconds per image (`Backbone.embed`, 224x224 uint8 input):",
                  floatfmt=".3g")
    if not (offline_backbone_available() and (config.shared / "photos").is_dir()):
        section.text("Quality skipped: needs the offline backbone (EfficientNet-Lite0) and ../shared/datasets/photos.")
        return section
    table, agreement = quality(config)
    section.table(table, "Retrieval quality by precision (EfficientNet-Lite0, ImageNet weights):", floatfmt=".4g")
    section.table(agreement, "bf16 features against fp32 features of the same images (cosine):", floatfmt=".5g")
    section.text(_quality_text(config))
    loss = _largest_loss(table)
    holds = loss <= MAX_LOSS_POINTS
    spec_says = load_backbone("efficientnet_lite0", device="cpu", precision="fp32").spec.bf16_holds_quality
    section.headlines.append(Headline("EfficientNet-Lite0 bf16: largest quality loss against fp32 (points)",
                                      f"{loss:.2f}", f"<= {MAX_LOSS_POINTS}", holds))
    section.headlines.append(Headline("`auto` precision rule for EfficientNet-Lite0 agrees with this measurement",
                                      f"auto picks bf16: {spec_says}; measured holds: {holds}", "equal",
                                      spec_says == holds))
    section.text(
        "ResNet-18's quality in bf16 cannot be measured here (its ImageNet weights cannot be downloaded; random "
        "weights are not quality), so `auto` keeps it in fp32 until a run with its weights shows the quality holds."
    )
    return section


def speed(config: RunConfig) -> pd.DataFrame:
    backbones = [("efficientnet_lite0", None)] if offline_backbone_available() else []
    backbones.append(("resnet18", resnet18_random_weights(config)))
    repeats = config.pick(2, 5)
    rows = []
    for name, weights in backbones:
        for precision in PRECISIONS:
            backbone = load_backbone(name, weights, device="cpu", precision=precision)
            row = {"backbone": name, "precision": precision}
            for batch, threads in ((4, torch.get_num_threads()), (1, torch.get_num_threads()), (4, 1)):
                row[f"batch {batch}, {threads} thread(s)"] = _milliseconds(backbone, batch, threads, repeats)
            rows.append(row)
    return pd.DataFrame(rows)


def _milliseconds(backbone: Backbone, batch: int, threads: int, repeats: int) -> float:
    x = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        backbone.embed(x)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            backbone.embed(x)
            times.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(before)
    return float(np.median(times)) * 1000 / batch


def _photos(config: RunConfig):
    paths = sorted((config.shared / "photos").glob("*.jpg"))
    return paths[: config.pick(8, len(paths))]  # quick: enough to fill every table (figures of a quick run are not quoted)


def _features(config: RunConfig, precision: str) -> dict[str, np.ndarray]:
    """Features of the photos and of 3 edited copies of each, and of the wallpapers, in `precision` (cached)."""
    backbone = load_backbone("efficientnet_lite0", device="cpu", precision=precision)
    photos, wallpapers = _photos(config), wallpaper_set(config)
    stamps = [(p.name, p.stat().st_size) for p in photos + wallpapers.paths]
    key = cache_key(backbone.weights_sha256, precision, stamps, EDITS)  # the edits too: they make the copies
    path = config.cache / f"precision-{precision}-{key}.npz"
    if config.use_cache and path.is_file():
        with np.load(path, allow_pickle=False) as stored:
            return dict(stored)
    result = extract_features(backbone, photos, progress=False)
    copies, copy_of = embed_edited_copies(backbone, [photos[i] for i in result.indices])
    walls = extract_features(backbone, wallpapers.paths, progress=False)
    arrays = dict(photos=result.features, copies=copies, copy_of=result.indices[copy_of], photo_ids=result.indices,
                  walls=walls.features, wall_ids=walls.indices)

    def write(tmp):
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    atomic_write(path, write)
    return arrays


def quality(config: RunConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    features = {p: _features(config, p) for p in PRECISIONS}
    wall_labels = wallpaper_set(config).labels
    rows, threshold = [], None
    for precision in PRECISIONS:
        f = features[precision]
        core = SearchCore(SearchConfig()).fit(f["photos"])
        labels = f["photo_ids"]
        copies = core.transform(f["copies"])
        hits = core.search_vectors(copies, 10, threshold=-np.inf)
        top1 = float(np.mean(labels[hits.ids[:, 0]] == f["copy_of"]))
        match, nonmatch = match_scores(copies, f["copy_of"], core.vectors_, labels)
        scores = np.concatenate([match, nonmatch])
        truth = np.r_[np.ones(len(match), bool), np.zeros(len(nonmatch), bool)]
        if threshold is None:  # fp32 comes first: both precisions are judged at the fp32 threshold
            threshold = choose_threshold(match, nonmatch).threshold
        rates = error_rates(scores, truth, threshold)
        walls = evaluate_configuration(f["walls"], wall_labels[f["wall_ids"]], config=SearchConfig()).iloc[0]
        rows.append({
            "precision": precision,
            "copies: top-1 finds the original": top1,
            "copies: match/no-match ROC AUC": roc_auc(scores, truth),
            "miss rate at the fp32 threshold": rates["miss_rate"],
            "false-match rate at the fp32 threshold": rates["false_match_rate"],
            "wallpapers: mAP (leave-one-out)": walls["mAP"],
            "wallpapers: P@1": walls["P@1"],
        })
    f32, b16 = features["fp32"], features["bf16"]
    agreement = pd.DataFrame([
        {"images": name, "n": len(f32[key]), "min": float(c.min()), "median": float(np.median(c)),
         "share below 0.99": float(np.mean(c < 0.99))}
        for name, key in (("photos", "photos"), ("edited copies", "copies"), ("wallpapers", "walls"))
        for c in [np.einsum("ij,ij->i", f32[key], b16[key])]
    ])
    return pd.DataFrame(rows), agreement


def _largest_loss(table: pd.DataFrame) -> float:
    """Largest drop from fp32 to bf16 in points (x100) over the quality columns (error rates count when they grow)."""
    f32, b16 = table.iloc[0], table.iloc[1]
    losses = []
    for column in table.columns[1:]:
        worse = b16[column] - f32[column] if "rate" in column else f32[column] - b16[column]
        losses.append(100 * worse)
    return float(max(losses))


def _quality_text(config: RunConfig) -> str:
    n = len(_photos(config))
    return (
        f"Copies: the {n} photos of `../shared/datasets/photos` are the collection (PCA-128 fitted on them, HNSW at "
        f"simlib's defaults, `SearchCore`); each is edited {len(EDITS)} ways (`simlib.threshold`'s edits, mild to "
        f"strong) and every copy searches the collection. Top-1: the copy's original ranks first. ROC AUC: a copy's best similarity to its original "
        f"(match) against its best similarity to any other photo (non-match). Error rates at the threshold "
        f"`choose_threshold` picks on the fp32 scores, applied to both precisions. Wallpapers: the "
        f"{len(wallpaper_set(config))} images of `../shared/datasets/wallpapers` in their near-duplicate groups, "
        f"leave-one-out, `evaluate_configuration` with simlib's defaults. Features are extracted by `extract_features` "
        f"with a backbone loaded in each precision (`load_backbone(precision=...)`)."
    )
