import faiss
import numpy as np
import pytest

from simlib.index import (
    IndexParams,
    add_vectors,
    build_index,
    bytes_per_vector,
    exact_search,
    index_from_bytes,
    index_to_bytes,
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


def test_builds_are_reproducible(vectors):
    first, second = build_index(vectors), build_index(vectors)
    assert np.array_equal(search_index(first, vectors[:100], 10)[1], search_index(second, vectors[:100], 10)[1])


@pytest.mark.parametrize(
    "bad, message",
    [(np.zeros(32), "2-D"), (np.zeros((2, 31)), "31 dimensions"), (np.full((1, 32), np.nan), "NaN")],
)
def test_bad_query_arrays_get_clear_errors(vectors, bad, message):
    with pytest.raises(ValueError, match=message):
        search_index(build_index(vectors[:10]), bad, 1)


def test_invalid_params_are_refused():
    with pytest.raises(ValueError, match="M must be"):
        IndexParams(M=0)
    with pytest.raises(ValueError, match="kind"):
        IndexParams(kind="ivf")
