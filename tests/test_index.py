import sys

import faiss
import numpy as np
import pytest

from simlib.index import (
    IndexParams,
    add_vectors,
    build_index,
    bytes_per_vector,
    exact_search,
    flat_storage,
    index_from_bytes,
    index_to_bytes,
    prefer_huge_pages,
    rerank,
    search_index,
)
from simlib.reduce import normalize_rows


@pytest.fixture
def vectors():
    return normalize_rows(np.random.default_rng(0).standard_normal((2000, 32)))


def test_hnsw_recall_against_exact_search(vectors):
    queries = normalize_rows(vectors[:200] + 0.3 * np.random.default_rng(1).standard_normal((200, 32)))
    index = build_index(vectors, IndexParams(M=16, ef_construction=100, ef_search=64))
    _, approximate = search_index(index, queries, 10)
    _, exact = exact_search(vectors, queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approximate, exact)])
    assert recall >= 0.95


def test_exact_kind_is_brute_force(vectors):
    index = build_index(vectors, IndexParams(kind="exact"))
    assert isinstance(index, faiss.IndexFlatL2)
    assert search_index(index, vectors[5:6], 1)[1][0, 0] == 5


def test_ids_are_insertion_positions_and_stay_stable_when_adding(vectors):
    index = build_index(vectors[:1000])
    add_vectors(index, vectors[1000:])
    _, ids = search_index(index, vectors[[3, 1500]], 1)
    assert ids[:, 0].tolist() == [3, 1500]


def test_ef_search_per_call_does_not_change_the_index(vectors):
    index = build_index(vectors, IndexParams(ef_search=16))
    search_index(index, vectors[:1], 5, ef_search=200)
    assert index.hnsw.efSearch == 16


def test_k_larger_than_the_collection_pads_with_minus_one(vectors):
    _, ids = search_index(build_index(vectors[:3]), vectors[:1], 5)
    assert sorted(ids[0][:3]) == [0, 1, 2] and ids[0][3:].tolist() == [-1, -1]


def test_serialisation_round_trip_gives_identical_results(vectors):
    index = build_index(vectors)
    restored = index_from_bytes(index_to_bytes(index))
    assert np.array_equal(search_index(index, vectors[:20], 5)[1], search_index(restored, vectors[:20], 5)[1])
    assert bytes_per_vector(index) > 32 * 4


def test_a_selector_restricts_results_to_the_selected_ids(vectors):
    index = build_index(vectors, IndexParams(M=16, ef_construction=64))
    selected = np.zeros(len(vectors), bool)
    selected[::7] = True
    bits = np.packbits(selected, bitorder="little")
    selector = faiss.IDSelectorBitmap(len(vectors), faiss.swig_ptr(bits))
    _, ids = search_index(index, vectors[:30], 10, 256, selector)
    assert selected[ids].all()
    _, exact_ids = search_index(flat_storage(index), vectors[:30], 10, selector=selector)
    subset = np.flatnonzero(selected)
    assert np.array_equal(exact_ids, subset[exact_search(vectors[subset], vectors[:30], 10)[1]])


def test_exact_search_agrees_with_brute_force_in_numpy(vectors):
    queries = vectors[:25] + 0.05
    distances, ids = exact_search(vectors, queries, 5)
    full = ((queries[:, None, :] - vectors[None]) ** 2).sum(axis=2)
    assert np.array_equal(ids, np.argsort(full, axis=1)[:, :5])
    assert np.allclose(distances, np.sort(full, axis=1)[:, :5], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros(32), "2-D"),
        (np.zeros((2, 31)), "31 dimensions"),
        (np.full((1, 32), np.nan), "NaN"),
        (np.vstack([np.zeros(32), np.r_[np.inf, np.zeros(31)]]), "infinite"),
        (np.full((1, 32), 1e30), "overflow"),  # finite, but its squared distances are not in float32
    ],
)
def test_bad_query_arrays_get_clear_errors(vectors, bad, message):
    with pytest.raises(ValueError, match=message):
        search_index(build_index(vectors[:10]), bad, 1)


def test_invalid_params_are_refused():
    with pytest.raises(ValueError, match="M must be"):
        IndexParams(M=0)
    with pytest.raises(ValueError, match="ef_search must be within"):
        IndexParams(ef_search=2**31 - 1)
    with pytest.raises(ValueError, match="M must be an integer"):
        IndexParams(M=3.5)
    with pytest.raises(ValueError, match="kind"):
        IndexParams(kind="ivf")


@pytest.mark.parametrize("ef_search", [None, 4, 64])
def test_one_query_at_a_time_matches_faiss_own_search(vectors, ef_search):
    index = build_index(vectors, IndexParams(M=16, ef_construction=64, ef_search=32))
    for query in vectors[:20] + 0.01:
        distances, ids = search_index(index, query[None], 10, ef_search)
        ef = max(ef_search or 32, 10)
        expected = index.search(query[None], 10, params=faiss.SearchParametersHNSW(efSearch=ef))
        assert np.array_equal(ids, expected[1]) and np.allclose(distances, expected[0])


def test_a_beam_narrower_than_k_still_returns_k_neighbours(vectors):
    index = build_index(vectors, IndexParams(ef_search=2))
    _, ids = search_index(index, vectors[:3], 10, ef_search=1)
    assert ids.shape == (3, 10) and (ids >= 0).all() and ids[:, 0].tolist() == [0, 1, 2]


def test_queries_in_any_float_layout_are_accepted(vectors):
    index = build_index(vectors)
    fortran = np.asfortranarray(vectors[:5].astype(np.float64))
    assert np.array_equal(search_index(index, fortran, 3)[1], search_index(index, vectors[:5], 3)[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="huge pages are asked for on Linux only")
def test_huge_page_advice_covers_large_indexes_and_leaves_results_unchanged():
    rows = normalize_rows(np.random.default_rng(2).standard_normal((40_000, 128)))  # 20 MB of vectors
    index = build_index(rows, IndexParams(M=4, ef_construction=8))
    plain = faiss.clone_index(index)  # fresh memory, never advised
    assert prefer_huge_pages(index) >= 16 << 20 and prefer_huge_pages(build_index(rows[:100])) == 0
    assert np.array_equal(search_index(index, rows[:50], 10)[1], search_index(plain, rows[:50], 10)[1])


# ------------------------------------------------------------------ IVF-PQ

IVF = IndexParams("ivf-pq", nlist=32, pq_m=8, nprobe=4)


@pytest.fixture(scope="module")
def ivf_vectors():
    return normalize_rows(np.random.default_rng(2).standard_normal((IVF.ivf_min_vectors, 16)))


@pytest.fixture(scope="module")
def ivf_index(ivf_vectors):
    return build_index(ivf_vectors, IVF)


def test_ivf_pq_is_trained_on_a_seeded_sample_and_holds_every_id_once(ivf_vectors, ivf_index):
    assert isinstance(ivf_index, faiss.IndexIVFPQ) and ivf_index.is_trained and ivf_index.ntotal == len(ivf_vectors)
    assert ivf_index.nlist == 32 and ivf_index.nprobe == 4 and ivf_index.pq.M == 8 and ivf_index.code_size == 8
    assert flat_storage(ivf_index) is None  # no float vectors: re-ranking needs them from elsewhere
    lists = faiss.extract_index_ivf(ivf_index).invlists
    ids = np.concatenate([faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy() for i in range(32)])
    assert np.array_equal(np.sort(ids), np.arange(len(ivf_vectors)))
    assert index_to_bytes(build_index(ivf_vectors, IVF)) == index_to_bytes(ivf_index)  # the sample is seeded


def test_ivf_search_probes_the_lists_asked_for_and_honours_a_selector(ivf_vectors, ivf_index):
    queries = ivf_vectors[:50]
    _, exact = exact_search(ivf_vectors, queries, 10)
    hit = [np.mean([len(set(a) & set(e)) / 10 for a, e in zip(search_index(ivf_index, queries, 100, p)[1], exact)])
           for p in (1, 32)]
    assert hit[0] < 0.8 < hit[1]  # one list of 32 misses most neighbours; all of them find nearly all in 100
    selected = np.zeros(len(ivf_vectors), bool)
    selected[::5] = True
    bits = np.packbits(selected, bitorder="little")
    _, ids = search_index(ivf_index, queries, 10, 8, faiss.IDSelectorBitmap(len(selected), faiss.swig_ptr(bits)))
    assert selected[ids[ids >= 0]].all() and (ids >= 0).mean() > 0.9


def test_rerank_orders_candidates_by_exact_distance_and_keeps_missing_last():
    queries = np.zeros((1, 2), np.float32)
    ids = np.array([[7, -1, 3, 5]])
    candidates = np.array([[[3, 0], [0, 0], [1, 0], [2, 0]]], np.float32)
    assert rerank(queries, ids, candidates, 4).tolist() == [[3, 5, 7, -1]]


def test_ivf_pq_refuses_a_width_its_codes_do_not_split(ivf_vectors):
    with pytest.raises(ValueError, match="must be a multiple of it"):
        build_index(ivf_vectors[:, :15], IVF)
