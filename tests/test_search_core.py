"""The search core on random vectors: the visual rule against exact search, the rating rule against a brute-force
reference, filters inside FAISS against exact search over the allowed ids, derivation and saving."""

from dataclasses import replace

import faiss
import numpy as np
import pytest

import simlib.search_core as search_core
from simlib.index import IndexParams, bytes_per_vector, exact_search, index_from_bytes, index_to_bytes, search_index
from simlib.ratings import REJECTED
from simlib.reduce import normalize_rows
from simlib.search_core import SearchConfig, SearchCore
from simlib.threshold import Calibration

EXACT = IndexParams("exact")
STAR_CHOICES = np.array([np.nan, REJECTED, 0, 1, 2, 2.5, 3, 4, 5])


def clustered_features(n, dim=48, seed=0):
    """Features with structure (clusters on a decaying spectrum), as CNN features have."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(2, n // 20), dim)) * np.geomspace(3, 0.3, dim)
    points = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, dim))
    return normalize_rows(points)


def random_stars(n, seed=0):
    return np.random.default_rng(seed).choice(STAR_CHOICES, n)


@pytest.fixture(scope="module")
def features():
    return clustered_features(5000)


@pytest.fixture(scope="module")
def stars():
    return random_stars(5000)


@pytest.fixture(scope="module")
def hnsw(features, stars):
    return SearchCore(SearchConfig(pca_dim=32, index=IndexParams(M=8, ef_construction=64, ef_search=64))).fit(
        features, stars)


@pytest.fixture(scope="module")
def exact(hnsw):
    return hnsw.with_index(EXACT)


@pytest.fixture(scope="module")
def queries(features):
    rng = np.random.default_rng(7)
    return normalize_rows(features[:200] + 0.2 * rng.standard_normal(features[:200].shape))


def recall(found, truth):
    return np.mean([len(set(a[a >= 0]) & set(t)) / len(t) for a, t in zip(found, truth)])


# ------------------------------------------------------------------ building


def test_fit_reduces_normalises_and_indexes_every_vector(hnsw, features):
    assert len(hnsw) == 5000 and hnsw.dim == 32 and hnsw.index_.ntotal == 5000
    assert np.allclose(np.linalg.norm(hnsw.vectors_, axis=1), 1, atol=1e-5)
    assert np.allclose(hnsw.transform(features[:10]), hnsw.vectors_[:10], atol=1e-6)


def test_without_pca_the_raw_features_are_searched(features):
    core = SearchCore(SearchConfig(pca_dim=None, index=EXACT)).fit(features[:300])
    assert core.pca_ is None and core.dim == 48
    assert core.search(features[:5], 1, threshold=-np.inf).ids[:, 0].tolist() == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------ the visual rule


def test_hnsw_finds_nearly_all_exact_neighbours_at_a_size_where_the_graph_is_sparse(hnsw, exact, queries):
    truth = exact.search(queries, 10, threshold=-np.inf).ids
    assert recall(hnsw.search(queries, 10, threshold=-np.inf).ids, truth) >= 0.95
    # the control: the same graph searched with the narrowest beam misses neighbours, so the floor above can fail
    assert recall(hnsw.search(queries, 10, threshold=-np.inf, ef_search=10).ids, truth) < 0.95


def test_visual_similarities_are_cosines_of_the_reduced_vectors(hnsw, queries):
    hits = hnsw.search(queries[:20], 5, threshold=-np.inf)
    vectors = hnsw.transform(queries[:20])
    expected = np.einsum("qkd,qd->qk", hnsw.vectors_[hits.ids], vectors)
    assert np.allclose(hits.similarities, expected, atol=1e-5)
    assert np.all(np.diff(hits.similarities, axis=1) <= 1e-6)  # ranked, nearest first
    assert np.allclose(hits.best, hits.similarities.max(axis=1)) and not hits.fallback.any()


def test_similarities_are_the_same_numbers_whether_the_vectors_are_held_joined_split_or_unaligned(features, queries):
    whole = SearchCore(SearchConfig(pca_dim=None, threshold=-np.inf)).fit(features[:400])
    split = SearchCore(SearchConfig(pca_dim=None, threshold=-np.inf)).fit(features[:250])
    split.add(features[250:400])
    assert len(split._parts) == 2  # held in the arrays they arrived in
    vectors = whole.vectors_
    unaligned = np.frombuffer(bytearray(vectors.nbytes + 4), dtype=np.uint8)[4:].view(np.float32).reshape(vectors.shape)
    unaligned[:] = vectors  # a memory-mapped file need not be aligned as a fresh array is
    shifted = SearchCore.from_state(whole.config, None, unaligned, index=faiss.clone_index(whole.index_))
    found = [core.search(queries[:30], 10) for core in (whole, split, shifted)]
    assert all(np.array_equal(hits.ids, found[0].ids) for hits in found)
    assert all(np.array_equal(hits.similarities, found[0].similarities) for hits in found)
    assert all(np.array_equal(hits.score, found[0].score) for hits in found)


def test_the_threshold_decides_per_query_which_rule_answers(exact, queries):
    score = exact.search(queries[:50], 5, threshold=-np.inf).score
    cut = float(np.median(score))
    hits = exact.search(queries[:50], 5, threshold=cut)
    assert hits.fallback.tolist() == (score < cut).tolist()


def test_the_match_score_is_the_best_similarity_less_half_the_mean_of_the_5th_to_9th_neighbours(exact, queries):
    hits = exact.search(queries[:30], 3, threshold=-np.inf)
    vectors = exact.transform(queries[:30])
    ordered = -np.sort(-(vectors @ exact.vectors_.T), axis=1)
    assert np.allclose(hits.best, ordered[:, 0], atol=1e-5)
    assert np.allclose(hits.neighbourhood, ordered[:, 4:9].mean(axis=1), atol=1e-5)
    assert np.allclose(hits.score, ordered[:, 0] - 0.5 * ordered[:, 4:9].mean(axis=1), atol=1e-5)


def test_filters_do_not_change_the_match_score_of_the_best_allowed_image(hnsw, queries):
    plain = hnsw.search(queries[:30], 5, threshold=-np.inf)
    allowed = np.zeros(len(hnsw), bool)
    allowed[plain.ids[:, 0]] = True  # each query's best image stays allowed, its neighbourhood mostly not
    filtered = hnsw.search(queries[:30], 5, threshold=-np.inf, allowed=allowed)
    assert np.allclose(filtered.neighbourhood, plain.neighbourhood) and np.allclose(filtered.score, plain.score)


def test_without_score_normalisation_the_match_score_is_the_best_similarity(features, queries):
    core = SearchCore(SearchConfig(pca_dim=32, index=EXACT, score_norm=0.0)).fit(features)
    hits = core.search(queries[:20], 5, threshold=-np.inf)
    assert np.array_equal(hits.score, hits.best.astype(np.float64)) and not hits.neighbourhood.any()


def test_a_collection_smaller_than_the_ranks_scores_what_it_has():
    vectors = normalize_rows(np.random.default_rng(0).standard_normal((6, 8)))
    core = SearchCore.from_state(SearchConfig(pca_dim=None, index=EXACT, threshold=0.0), None, vectors)
    hits = core.search_vectors(vectors[:1], 3)
    ordered = -np.sort(-(vectors[:1] @ vectors.T), axis=1)[0]
    assert hits.neighbourhood[0] == pytest.approx(ordered[4:].mean())  # ranks 4 and 5: all there are
    tiny = SearchCore.from_state(SearchConfig(pca_dim=None, index=EXACT, threshold=0.0), None, vectors[:3])
    assert tiny.search_vectors(vectors[:1], 3).score[0] == pytest.approx(1.0)  # no 5th image: nothing subtracted


def test_a_nan_threshold_is_refused(exact, queries):
    with pytest.raises(ValueError, match="NaN"):
        exact.search(queries[:1], 5, threshold=float("nan"))


def test_a_core_without_calibration_or_configured_threshold_says_so(exact, queries):
    with pytest.raises(ValueError, match="no match threshold"):
        exact.search(queries[:1], 5)
    configured = SearchCore.from_state(SearchConfig(pca_dim=None, index=EXACT, threshold=0.5), None, exact.vectors_)
    assert configured.threshold == 0.5
    calibrated = exact.copy().set_calibration(Calibration(0.7, 1, 1, 0.9, 0.1, 0.0, 0.0))
    assert calibrated.threshold == 0.7


# ------------------------------------------------------------------ the rating rule


def reference_fallback(core, vector, query_stars, k, allowed=None):
    """The rating rule written out by brute force: every usable image sorted by rating gap, then similarity."""
    stars = core.stars_
    usable = ~np.isnan(stars)
    if query_stars != REJECTED:
        usable &= stars != REJECTED
    if allowed is not None:
        usable &= allowed
    ids = np.flatnonzero(usable)
    similarity = core.vectors_[ids] @ vector
    first = -stars[ids] if np.isnan(query_stars) else np.abs(stars[ids] - query_stars)
    return ids[np.lexsort((-similarity, first))][:k]


@pytest.mark.parametrize("query_stars", [3.0, 0.0, 5.0, 2.5, REJECTED, np.nan])
def test_the_rating_rule_orders_by_rating_gap_then_similarity(exact, queries, query_stars):
    vectors = exact.transform(queries[:10])
    hits = exact.search_vectors(vectors, 12, threshold=np.inf, query_stars=query_stars)
    assert hits.fallback.all()
    for i, vector in enumerate(vectors):
        assert hits.ids[i].tolist() == reference_fallback(exact, vector, query_stars, 12).tolist()


def test_rejected_images_are_fallback_candidates_only_for_a_rejected_query(exact, queries):
    everything = len(exact)  # every tier exhausted
    rated = exact.search(queries[:2], everything, threshold=np.inf, query_stars=0).ids
    usable = np.isfinite(exact.stars_) & (exact.stars_ != REJECTED)
    assert sorted(rated[0][rated[0] >= 0]) == np.flatnonzero(usable).tolist()
    rejected = exact.search(queries[:2], 40, threshold=np.inf, query_stars=REJECTED).ids
    assert (exact.stars_[rejected] == REJECTED).all()


def test_hnsw_fallback_keeps_the_rating_order_and_nearly_the_similarity_order(hnsw, exact, queries):
    approximate = hnsw.search(queries[:50], 10, threshold=np.inf, query_stars=4).ids
    reference = exact.search(queries[:50], 10, threshold=np.inf, query_stars=4).ids
    assert (hnsw.stars_[approximate] == exact.stars_[reference]).all()  # the same rating tier at every rank
    # a tier (here 1 image in 9) is searched through the sparse M=8 graph with a filter; in random order the
    # overlap would be about 10 / 555
    assert recall(approximate, reference) >= 0.8


def test_the_rating_rule_with_nothing_rated_finds_nothing(features):
    core = SearchCore(SearchConfig(pca_dim=None, index=EXACT)).fit(features[:50])
    hits = core.search(features[:2], 5, threshold=np.inf, query_stars=3)
    assert hits.fallback.all() and (hits.ids == -1).all() and np.isnan(hits.similarities).all()


# ------------------------------------------------------------------ filters inside FAISS


@pytest.mark.parametrize("min_rating", [0, 3, 4.5])
def test_min_rating_returns_exact_search_over_the_images_it_allows(hnsw, queries, min_rating):
    allowed = hnsw.stars_ >= min_rating
    hits = hnsw.search(queries[:50], 10, threshold=-np.inf, min_rating=min_rating)
    ids = np.flatnonzero(allowed)
    _, truth = exact_search(hnsw.vectors_[ids], hnsw.transform(queries[:50]), 10)
    assert np.isin(hits.ids, ids).all() and (hits.ids >= 0).all()
    assert recall(hits.ids, ids[truth]) >= 0.95


def test_min_rating_filters_the_rating_rule_too(exact, queries):
    vectors = exact.transform(queries[:10])
    hits = exact.search_vectors(vectors, 15, threshold=np.inf, query_stars=1, min_rating=3)
    allowed = exact.stars_ >= 3
    for i, vector in enumerate(vectors):
        assert hits.ids[i].tolist() == reference_fallback(exact, vector, 1, 15, allowed).tolist()


def test_a_filter_allowing_fewer_than_k_returns_those_and_pads(hnsw, queries):
    allowed = np.zeros(len(hnsw), bool)
    allowed[[3, 99, 4000]] = True
    hits = hnsw.search(queries[:4], 10, threshold=-np.inf, allowed=allowed)
    assert (np.sort(hits.ids[:, :3], axis=1) == [3, 99, 4000]).all() and (hits.ids[:, 3:] == -1).all()
    none = hnsw.search(queries[:2], 5, threshold=0.0, allowed=np.zeros(len(hnsw), bool))
    assert (none.ids == -1).all() and np.isneginf(none.best).all() and none.fallback.all()


@pytest.mark.parametrize("threshold", [-np.inf, np.inf])
def test_an_allowed_subset_and_a_minimum_rating_apply_together(hnsw, queries, threshold):
    allowed = np.arange(len(hnsw)) % 3 == 0
    hits = hnsw.search(queries[:20], 10, threshold=threshold, allowed=allowed, min_rating=4, query_stars=2)
    assert (hits.ids >= 0).all() and allowed[hits.ids].all() and (hnsw.stars_[hits.ids] >= 4).all()


def test_a_malformed_allowed_mask_is_refused(hnsw, queries):
    with pytest.raises(ValueError, match="bool array of shape"):
        hnsw.search(queries[:1], 5, threshold=-np.inf, allowed=np.ones(10, bool))


@pytest.fixture(scope="module")
def large():
    """100,000 vectors in an HNSW graph: large enough that a 1% filter is selective."""
    features = clustered_features(100_000, dim=32, seed=3)
    config = SearchConfig(pca_dim=None, index=IndexParams(M=16, ef_construction=40, ef_search=64))
    return SearchCore.from_state(config, None, features, random_stars(100_000, seed=3))


@pytest.mark.slow
def test_a_one_percent_filter_at_100k_vectors_equals_exact_search_over_the_allowed_ids(large):
    rng = np.random.default_rng(4)
    allowed = np.zeros(len(large), bool)
    allowed[rng.choice(len(large), 1000, replace=False)] = True
    queries = normalize_rows(large.vectors_[:100] + 0.1 * rng.standard_normal((100, 32)))
    hits = large.search_vectors(queries, 10, threshold=-np.inf, allowed=allowed)
    ids = np.flatnonzero(allowed)
    _, truth = exact_search(large.vectors_[ids], queries, 10)
    assert np.array_equal(hits.ids, ids[truth])


@pytest.mark.slow
def test_filtered_hnsw_search_keeps_its_recall_and_never_returns_short(large, monkeypatch):
    monkeypatch.setattr(search_core.SearchCore, "_exact_is_cheaper", lambda *_: False)  # the graph at every share
    rng = np.random.default_rng(5)
    queries = normalize_rows(large.vectors_[:100] + 0.1 * rng.standard_normal((100, 32)))
    unfiltered = recall(large.search_vectors(queries, 10, threshold=-np.inf).ids, exact_search(large.vectors_,
                                                                                            queries, 10)[1])
    for share in (0.02, 0.05, 0.1, 0.3):
        allowed = rng.random(len(large)) < share
        hits = large.search_vectors(queries, 10, threshold=-np.inf, allowed=allowed)
        ids = np.flatnonzero(allowed)
        _, truth = exact_search(large.vectors_[ids], queries, 10)
        assert (hits.ids >= 0).all() and allowed[hits.ids].all()
        assert recall(hits.ids, ids[truth]) >= unfiltered - 0.03  # the beam is widened for small shares


# ------------------------------------------------------------------ deriving and saving


def test_another_rating_weight_rebuilds_only_the_index_and_matches_a_fresh_fit(features, stars, queries):
    config = SearchConfig(pca_dim=16, index=EXACT)
    pure = SearchCore(config).fit(features[:1000], stars[:1000])
    heavy = pure.with_rating_weight(3.0)
    fresh = SearchCore(SearchConfig(pca_dim=16, index=EXACT, rating_weight=3.0)).fit(features[:1000], stars[:1000])
    assert heavy.vectors_ is pure.vectors_ and heavy.index_.d == pure.index_.d + 1
    a = heavy.search(queries[:20], 10, threshold=-np.inf, query_stars=5)
    b = fresh.search(queries[:20], 10, threshold=-np.inf, query_stars=5)
    assert np.array_equal(a.ids, b.ids)
    plain = pure.search(queries[:20], 10, threshold=-np.inf, query_stars=5)
    assert not np.array_equal(a.ids, plain.ids)  # the weight moves results towards 5 stars
    assert np.nanmean(heavy.stars_[a.ids]) > np.nanmean(pure.stars_[plain.ids])


def test_adding_keeps_ids_and_searches_the_new_vectors(features, stars):
    core = SearchCore(SearchConfig(pca_dim=16, index=IndexParams(M=8))).fit(features[:2000], stars[:2000])
    copy = core.copy()
    ids = copy.add(features[2000:2100], stars[2000:2100])
    assert ids.tolist() == list(range(2000, 2100)) and len(copy) == 2100 and len(core) == 2000
    assert copy.search(features[2050:2051], 1, threshold=-np.inf).ids[0, 0] == 2050
    assert copy.search(features[5:6], 1, threshold=-np.inf).ids[0, 0] == 5


def test_arrays_round_trip_gives_identical_hits(hnsw, queries):
    restored = SearchCore.from_arrays(hnsw.config, hnsw.to_arrays(), faiss.clone_index(hnsw.index_), None)
    for options in ({"threshold": -np.inf}, {"threshold": np.inf, "query_stars": 2}, {"threshold": -np.inf,
                                                                                      "min_rating": 4}):
        a, b = hnsw.search(queries[:30], 8, **options), restored.search(queries[:30], 8, **options)
        assert np.array_equal(a.ids, b.ids) and np.allclose(a.similarities, b.similarities, equal_nan=True)
    assert all(array.dtype != object for array in hnsw.to_arrays().values())


def test_state_that_does_not_fit_together_is_refused(hnsw):
    arrays = hnsw.to_arrays()
    with pytest.raises(ValueError, match="the index holds"):
        SearchCore.from_arrays(hnsw.config, {**arrays, "vectors": arrays["vectors"][:10],
                                             "stars": arrays["stars"][:10]}, hnsw.index_, None)
    with pytest.raises(ValueError, match="stars must be"):
        SearchCore.from_arrays(hnsw.config, {**arrays, "stars": np.full(len(hnsw), 7.0)}, hnsw.index_, None)
    with pytest.raises(ValueError, match="vectors must be float32"):
        SearchCore.from_arrays(hnsw.config, {**arrays, "vectors": arrays["vectors"].astype(np.float64)},
                               hnsw.index_, None)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"pca_dim": 0}, "pca_dim"),
        ({"rating_weight": -1}, "rating_weight"),
        ({"rating_weight": float("inf")}, "rating_weight"),
        ({"threshold": float("nan")}, "threshold"),
        ({"whiten": "yes"}, "whiten"),
        ({"score_norm": 1.5}, "score_norm"),
        ({"norm_ranks": (0, 3)}, "norm_ranks"),
        ({"norm_ranks": (5, 4)}, "norm_ranks"),
        ({"norm_ranks": (4,)}, "norm_ranks"),
    ],
)
def test_invalid_configurations_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        SearchConfig(**options)


def test_a_configuration_round_trips_through_plain_data():
    config = SearchConfig(pca_dim=64, whiten=True, index=IndexParams(M=16), rating_weight=0.5, threshold=0.8,
                          score_norm=0.25, norm_ranks=(2, 6))
    assert SearchConfig.from_dict(config.to_dict()) == config
    as_json = {**config.to_dict(), "norm_ranks": [2, 6]}  # how JSON gives the pair back
    assert SearchConfig.from_dict(as_json) == config
    with pytest.raises(ValueError, match="unexpected fields"):
        SearchConfig.from_dict({**config.to_dict(), "colour": "blue"})


def test_a_configuration_saved_before_score_normalisation_reads_without_it():
    saved = SearchConfig().to_dict()
    del saved["score_norm"], saved["norm_ranks"]
    assert SearchConfig.from_dict(saved).score_norm == 0.0


# ------------------------------------------------------------------ removing


def test_removed_ids_are_left_out_of_both_rules_and_every_filter(hnsw, queries):
    core = hnsw.copy()
    first = core.search(queries[:20], 5, threshold=-np.inf).ids
    selection = core.selection(np.ones(len(core), dtype=bool))  # made before the removal
    gone = np.unique(first[:, :2])
    assert core.remove(gone) == len(gone) and core.live_count == len(core) - len(gone)
    for options in ({"threshold": -np.inf}, {"threshold": np.inf, "query_stars": 3}, {"threshold": np.inf},
                    {"threshold": -np.inf, "min_rating": 2}, {"threshold": -np.inf, "allowed": selection},
                    {"threshold": np.inf, "allowed": core.selection(np.ones(len(core), dtype=bool))}):
        ids = core.search(queries[:20], 10, **options).ids
        assert (ids >= 0).any() and not np.isin(ids, gone).any(), options
    assert np.array_equal(hnsw.search(queries[:20], 5, threshold=-np.inf).ids, first)  # the original keeps them


def test_a_compacted_core_answers_like_the_filtered_one(exact, queries):
    core = exact.copy()
    core.remove(np.arange(0, len(core), 3))
    compacted = core.compacted()
    keep = np.flatnonzero(core.live_)
    assert len(compacted) == compacted.index_.ntotal == len(keep)
    for options in ({"threshold": -np.inf}, {"threshold": np.inf, "query_stars": 4}, {"threshold": -np.inf,
                                                                                      "min_rating": 3}):
        a, b = core.search(queries[:30], 8, **options), compacted.search(queries[:30], 8, **options)
        assert np.array_equal(a.ids, np.where(b.ids >= 0, keep[b.ids], -1)), options


def test_new_ratings_keep_ids_without_a_rating_weight_and_move_them_with_one(features, stars, queries):
    pure = SearchCore(SearchConfig(pca_dim=16, index=EXACT)).fit(features[:500], stars[:500])
    assert pure.set_stars([3, 4], np.array([5.0, np.nan])).tolist() == [3, 4]
    assert pure.stars_[3] == 5.0 and np.isnan(pure.stars_[4]) and len(pure) == 500
    heavy = SearchCore(SearchConfig(pca_dim=16, index=EXACT, rating_weight=2.0)).fit(features[:500], stars[:500])
    moved = heavy.set_stars([3, 4], np.array([5.0, 1.0]))
    assert moved.tolist() == [500, 501] and not heavy.live_[[3, 4]].any() and heavy.stars_[500] == 5.0
    assert np.array_equal(heavy.vectors_[500], heavy.vectors_[3])
    assert heavy.search_vectors(heavy.vectors_[3:4], 1, threshold=-np.inf, query_stars=5).ids[0, 0] == 500


def test_an_auto_index_is_exact_while_small_and_becomes_hnsw_as_it_grows(features, monkeypatch):
    import simlib.config

    monkeypatch.setattr(simlib.config, "EXACT_BELOW", 300)
    core = SearchCore(SearchConfig(pca_dim=16)).fit(features[:200])
    assert core.config.index.kind == "auto" and core.index_kind == "exact"
    core.add(features[200:400])
    assert core.index_kind == "hnsw" and core.index_.ntotal == 400
    assert core.search(features[350:351], 1, threshold=-np.inf).ids[0, 0] == 350
    assert SearchCore(SearchConfig(pca_dim=16, index=IndexParams(kind="hnsw"))).fit(features[:50]).index_kind == "hnsw"


# ------------------------------------------------------------------ the compressed index (IVF-PQ)

# 12,000 vectors (the fewest the default rule trains an IVF on is 39 x 256 = 9,984), 64 lists of which a search
# probes 8: far from exhaustive, so the tests below fail when probing, re-ranking or the filters go wrong
IVF = IndexParams("ivf-pq", nlist=64, pq_m=8, nprobe=8, refine=10)


@pytest.fixture(scope="module")
def ivf_features():
    return clustered_features(12_000, seed=3)


@pytest.fixture(scope="module")
def ivf(ivf_features):
    return SearchCore(SearchConfig(pca_dim=32, index=IVF)).fit(ivf_features, random_stars(12_000, seed=3))


@pytest.fixture(scope="module")
def ivf_exact(ivf):
    return ivf.with_index(EXACT)


@pytest.fixture(scope="module")
def ivf_queries(ivf_features):
    rng = np.random.default_rng(8)
    return normalize_rows(ivf_features[:200] + 0.2 * rng.standard_normal(ivf_features[:200].shape))


def test_an_auto_index_becomes_ivf_pq_past_its_size_and_stays_hnsw_below(ivf_features, monkeypatch):
    import simlib.config

    assert IndexParams("auto").kind_for(simlib.config.IVF_PQ_FROM - 1) == "hnsw"
    assert IndexParams("auto").kind_for(simlib.config.IVF_PQ_FROM) == "ivf-pq"
    monkeypatch.setattr(simlib.config, "IVF_PQ_FROM", 11_000)
    auto = replace(IVF, kind="auto")
    core = SearchCore(SearchConfig(pca_dim=32, index=auto)).fit(ivf_features[:10_500])
    assert core.index_kind == "hnsw"
    core.add(ivf_features[10_500:])
    assert core.index_kind == "ivf-pq" and isinstance(core.index_, faiss.IndexIVFPQ) and core.index_.ntotal == 12_000
    assert core.search(ivf_features[11_900:11_901], 1, threshold=-np.inf).ids[0, 0] == 11_900


def test_an_ivf_pq_index_holds_codes_only_and_reranks_its_shortlist_to_exact_order(ivf, ivf_exact, ivf_queries):
    index = ivf.index_
    assert ivf.index_kind == "ivf-pq" and isinstance(index, faiss.IndexIVFPQ) and index.nprobe < index.nlist
    assert bytes_per_vector(index) <= IVF.pq_m + 8 + 4  # codes and 64-bit ids; centroids and codebooks besides
    vectors = ivf.transform(ivf_queries)
    _, truth = exact_search(ivf.vectors_, vectors, 10)
    hits = ivf.search_vectors(vectors, 10, threshold=-np.inf)
    codes_only = search_index(index, vectors, 10)[1]  # FAISS's own ranking by code distance
    assert recall(hits.ids, truth) >= 0.9 and recall(hits.ids, truth) > recall(codes_only, truth) + 0.1
    # the re-ranked results come in exact order: their similarities are the cosines, descending
    assert (np.diff(hits.similarities, axis=1) <= 1e-6).all()
    assert np.allclose(hits.similarities[:, 0], np.einsum("qd,qd->q", ivf.vectors_[hits.ids[:, 0]], vectors),
                       atol=1e-6)


def test_probing_more_lists_raises_ivf_recall_to_nearly_exact(ivf, ivf_queries):
    vectors = ivf.transform(ivf_queries)
    _, truth = exact_search(ivf.vectors_, vectors, 10)
    found = {nprobe: recall(ivf.search_vectors(vectors, 10, threshold=-np.inf, ef_search=nprobe).ids, truth)
             for nprobe in (1, 8, 64)}
    assert found[1] < found[8] < found[64] and found[64] >= 0.99


@pytest.mark.parametrize("min_rating", [0, 3, 5])
def test_ivf_min_rating_returns_exact_search_over_the_images_it_allows(ivf, ivf_queries, min_rating):
    ids = np.flatnonzero(ivf.stars_ >= min_rating)
    vectors = ivf.transform(ivf_queries[:50])
    _, truth = exact_search(ivf.vectors_[ids], vectors, 10)
    hits = ivf.search_vectors(vectors, 10, threshold=-np.inf, min_rating=min_rating)
    assert np.isin(hits.ids, ids).all() and (hits.ids >= 0).all()
    assert recall(hits.ids, ids[truth]) >= 0.95


def test_a_selective_ivf_filter_takes_the_exact_path_and_a_broad_one_the_lists(ivf, ivf_queries, monkeypatch):
    calls = []
    original = search_core.search_checked
    def recorded(index, queries, k, ef_search=None, selector=None):
        calls.append((index, selector is not None))
        return original(index, queries, k, ef_search, selector)

    monkeypatch.setattr(search_core, "search_checked", recorded)
    vectors = ivf.transform(ivf_queries[:20])
    for share, path in ((0.005, "exact"), (0.5, "ivf")):
        calls.clear()
        allowed = np.random.default_rng(1).random(len(ivf)) < share
        ids = np.flatnonzero(allowed)
        hits = ivf.search_vectors(vectors, 10, threshold=-np.inf, allowed=allowed)
        _, truth = exact_search(ivf.vectors_[ids], vectors, 10)
        assert allowed[hits.ids].all() and recall(hits.ids, ids[truth]) >= (1.0 if path == "exact" else 0.95)
        filtered = [index for index, selected in calls if selected]  # the unfiltered neighbourhood term aside
        assert (ivf.index_ in filtered) == (path == "ivf"), share


def test_ivf_fallback_keeps_the_rating_order_and_nearly_the_similarity_order(ivf, ivf_exact, ivf_queries):
    approximate = ivf.search(ivf_queries[:50], 10, threshold=np.inf, query_stars=4).ids
    reference = ivf_exact.search(ivf_queries[:50], 10, threshold=np.inf, query_stars=4).ids
    assert (ivf.stars_[approximate] == ivf_exact.stars_[reference]).all()
    assert recall(approximate, reference) >= 0.95


def test_removed_ids_are_left_out_of_ivf_searches(ivf, ivf_queries):
    core = ivf.copy()
    first = core.search(ivf_queries[:20], 5, threshold=-np.inf).ids
    gone = np.unique(first[:, :2])
    core.remove(gone)
    for options in ({"threshold": -np.inf}, {"threshold": np.inf, "query_stars": 3},
                    {"threshold": -np.inf, "min_rating": 2}):
        ids = core.search(ivf_queries[:20], 10, **options).ids
        assert (ids >= 0).all() and not np.isin(ids, gone).any(), options
    assert np.array_equal(ivf.search(ivf_queries[:20], 5, threshold=-np.inf).ids, first)
    compacted = core.compacted()
    assert compacted.index_kind == "ivf-pq" and compacted.index_.ntotal == core.live_count


def test_an_ivf_index_saved_as_bytes_and_completed_with_its_adds_gives_identical_hits(ivf, ivf_features, ivf_queries):
    grown = ivf.copy()
    added = grown.add(ivf_features[:300] * 0.9 + 0.1 * ivf_features[300:600])
    assert grown.index_kind == "ivf-pq" and added[0] == len(ivf)
    assert grown.search(ivf_features[:1] * 0.9 + 0.1 * ivf_features[300:301], 1, threshold=-np.inf).ids[0, 0] == added[0]
    arrays = grown.to_arrays()
    restored = SearchCore.from_arrays(grown.config, arrays, index_from_bytes(index_to_bytes(ivf.index_)), None,
                                      batches=[len(added)])
    for options in ({"threshold": -np.inf}, {"threshold": np.inf, "query_stars": 2},
                    {"threshold": -np.inf, "min_rating": 4}):
        a, b = grown.search(ivf_queries[:30], 8, **options), restored.search(ivf_queries[:30], 8, **options)
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.similarities, b.similarities, equal_nan=True)


def test_an_ivf_pq_index_is_exact_while_too_small_to_train_and_trains_as_it_grows(ivf_features):
    params = IndexParams("ivf-pq", nlist=64, pq_m=8)
    assert params.ivf_min_vectors == 39 * 256
    core = SearchCore(SearchConfig(pca_dim=32, index=params)).fit(ivf_features[:9000])
    assert core.index_kind == "exact"
    core.add(ivf_features[9000:])
    assert core.index_kind == "ivf-pq" and core.index_.ntotal == 12_000
    assert core.search(ivf_features[11_000:11_001], 1, threshold=-np.inf).ids[0, 0] == 11_000


def test_ivf_pq_with_a_rating_weight_needs_a_width_the_code_splits(ivf_features):
    with pytest.raises(ValueError, match="must be a multiple of it"):
        SearchCore(SearchConfig(pca_dim=32, index=IVF, rating_weight=1.0)).fit(ivf_features)
    weighted = SearchCore(SearchConfig(pca_dim=31, index=IVF, rating_weight=1.0)).fit(
        ivf_features, random_stars(12_000, seed=3))
    hits = weighted.search(ivf_features[:20], 5, threshold=-np.inf, query_stars=5)
    assert weighted.index_.d == 32 and (hits.ids >= 0).all()
