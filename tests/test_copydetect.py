from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("albumentations", reason="the copy-detection edits need the bench extra (albumentations)")

from simlib.copydetect import (  # noqa: E402
    UNEDITED,
    Answers,
    Queries,
    by_edit,
    by_strength,
    copydays_map,
    plan_queries,
    render_query,
    restrict,
    scene_split,
    search_answers,
    split_photos,
    summary,
)
from simlib.index import IndexParams  # noqa: E402
from simlib.reduce import normalize_rows  # noqa: E402
from simlib.search_core import SearchConfig, SearchCore  # noqa: E402
from simlib.edits import STRENGTHS, edits_of  # noqa: E402

from .conftest import scene  # noqa: E402

PHOTOS = [Path(f"/photos/p{i:03d}.jpg") for i in range(100)]


def test_split_is_disjoint_seeded_and_sized():
    split = split_photos(PHOTOS, 60, 15, 20, seed=1)
    parts = [split.references, split.distractors, split.background]
    assert [len(p) for p in parts] == [60, 15, 20]
    assert len(set().union(*map(set, parts))) == 95
    assert split == split_photos(PHOTOS[::-1], 60, 15, 20, seed=1)  # the order given does not matter
    assert split != split_photos(PHOTOS, 60, 15, 20, seed=2)
    with pytest.raises(ValueError, match="cannot give"):
        split_photos(PHOTOS, 90, 15, 20)


def test_the_plan_copies_references_once_per_strength_with_no_more_positives_than_negatives():
    references, distractors = PHOTOS[:60], PHOTOS[60:75]
    scenes = [Path(f"/scenes/s{i}.jpg") for i in range(7)]
    queries = plan_queries(references, distractors, scenes, seed=0)
    negatives = 15 * 4 + 7
    assert (~queries.is_copy).sum() == negatives and queries.is_copy.sum() == 3 * (negatives // 3)
    copied = Counter(queries.reference[queries.is_copy].tolist())
    assert set(copied.values()) == {3}
    for r in copied:  # one copy of each strength
        assert sorted(queries.strengths[queries.reference == r]) == sorted(STRENGTHS)
    assert Counter(str(queries.sources[i]) for i in np.flatnonzero(queries.kinds == "distractor")) == {
        str(d): 4 for d in distractors}
    assert (queries.kinds == "scene").sum() == 7 and set(queries.edits[queries.kinds == "scene"]) == {UNEDITED}
    for strength in STRENGTHS:  # the edits of a strength are dealt evenly over its queries
        counts = Counter(queries.edits[queries.strengths == strength].tolist())
        assert set(counts) == set(edits_of(strength)) and max(counts.values()) - min(counts.values()) <= 1
    for source, edit, canvas in zip(queries.sources, queries.edits, queries.canvases):
        assert (canvas is not None) == (edit == "overlay") and canvas != source
        assert canvas is None or canvas in distractors


def test_the_plan_reproduces_from_its_seed():
    a = plan_queries(PHOTOS[:30], PHOTOS[30:40], seed=5)
    b = plan_queries(PHOTOS[:30], PHOTOS[30:40], seed=5)
    c = plan_queries(PHOTOS[:30], PHOTOS[30:40], seed=6)
    assert a.sources == b.sources and np.array_equal(a.seeds, b.seeds) and np.array_equal(a.edits, b.edits)
    assert not np.array_equal(a.seeds, c.seeds)


def test_rendering_a_query_reproduces_it(tmp_path):
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"photo{i}.jpg")
        scene(i).save(paths[-1], quality=90)
    queries = plan_queries(paths[:3], paths[3:], seed=0)
    for i in range(len(queries)):
        first, again = render_query(queries, i), render_query(queries, i)
        assert np.array_equal(np.asarray(first), np.asarray(again))


def test_scene_split_keeps_the_first_shot_of_each_group_as_reference():
    groups = {"b": [Path("b2.jpg"), Path("b1.jpg")], "a": [Path("a1.jpg"), Path("a3.jpg"), Path("a2.jpg")]}
    references, queries, of_group = scene_split(groups)
    assert references == [Path("a1.jpg"), Path("b1.jpg")]
    assert queries == [Path("a2.jpg"), Path("a3.jpg"), Path("b2.jpg")] and of_group == ["a", "a", "b"]


def toy_queries() -> Queries:
    """Four copies (references 0, 1, 2, 3; mild, mild, strong, strong) and two negatives (a distractor, a scene)."""
    return Queries(
        sources=[Path(f"q{i}.jpg") for i in range(6)],
        edits=np.array(["resize", "jpeg-50-90", "overlay", "crop-20-30", UNEDITED, UNEDITED]),
        strengths=np.array(["mild", "mild", "strong", "strong", UNEDITED, UNEDITED]),
        kinds=np.array(["copy"] * 4 + ["distractor", "scene"]),
        reference=np.array([0, 1, 2, 3, -1, -1]),
        seeds=np.arange(6),
        canvases=[None] * 6,
    )


def toy_answers() -> Answers:
    ranked = np.array([[0, 5], [1, 4], [7, 2], [6, 8], [3, 0], [1, 2]])  # copy 2 finds its original second
    score = np.array([0.9, 0.8, 0.5, 0.4, 0.7, 0.6])
    return Answers(ranked, score, score >= 0.65)


def test_summary_by_hand():
    scores = summary(toy_queries(), toy_answers())
    # predictions by score: 0.9 right, 0.8 right, 0.7 wrong, 0.6 wrong, 0.5 wrong, 0.4 wrong; 4 true pairs
    assert scores["muAP"] == pytest.approx((1 + 1) / 4)
    assert scores["R@P90"] == pytest.approx(2 / 4)
    assert scores["top-1"] == pytest.approx(2 / 4)
    assert scores["mAP"] == pytest.approx((1 + 1 + 1 / 2 + 0) / 4)
    # copies 0.9 0.8 0.5 0.4 against negatives 0.7 0.6: 4 of 8 pairs won
    assert scores["AUROC"] == pytest.approx(4 / 8)
    assert scores["miss"] == pytest.approx(2 / 4)  # 0.5 and 0.4 are below 0.65
    assert scores["false match"] == pytest.approx(1 / 2) and scores["false match, scenes"] == 0.0


def test_scores_per_strength_and_edit_by_hand():
    strengths = by_strength(toy_queries(), toy_answers()).set_index("strength")
    assert strengths.loc["mild", "top-1"] == 1.0 and strengths.loc["strong", "top-1"] == 0.0
    assert strengths.loc["strong", "mAP"] == pytest.approx((1 / 2 + 0) / 2)
    assert strengths.loc["mild", "muAP"] == 1.0 and strengths.loc["strong", "muAP"] == 0.0
    assert strengths.loc["mild", "found"] == 1.0 and strengths.loc["strong", "miss"] == 1.0
    assert strengths.loc["medium", "copies"] == 0
    edits = by_edit(toy_queries(), toy_answers()).set_index("edit")
    assert edits.loc["overlay", "mAP"] == pytest.approx(0.5) and edits.loc["overlay", "strength"] == "strong"


def test_copydays_map_counts_a_missing_original_as_zero():
    ranked = np.array([[2, 0, 1], [3, 4, 5]])
    assert copydays_map(np.array([0, 9]), ranked, np.array([True, True])) == pytest.approx((1 / 2 + 0) / 2)


def test_answers_come_from_the_search_core_as_a_collection_asks_it():
    rng = np.random.default_rng(0)
    references = normalize_rows(rng.standard_normal((300, 16)))
    queries = normalize_rows(np.vstack([references[:20] + 0.1 * rng.standard_normal((20, 16)),
                                        rng.standard_normal((20, 16))]))
    core = SearchCore(SearchConfig(pca_dim=None, index=IndexParams("exact"), threshold=0.6)).fit(references)
    answers = search_answers(core, queries, depth=5, chunk=7)  # chunks of 7 give the same as one search
    hits = core.search(queries, 10)
    assert np.array_equal(answers.ranked, core.search(queries, 5, threshold=-np.inf).ids)
    assert np.allclose(answers.score, hits.score) and np.array_equal(answers.accepted, ~hits.fallback)
    assert answers.accepted[:20].all() and not answers.accepted[20:].any()  # copies match, random vectors do not


def test_restricting_the_references_turns_copies_of_those_left_out_into_negatives():
    queries = toy_queries()
    kept = restrict(queries, np.array([False, True, True, False]))
    assert kept.reference.tolist() == [-1, 0, 1, -1, -1, -1]
    assert kept.kinds.tolist() == ["distractor", "copy", "copy", "distractor", "distractor", "scene"]
