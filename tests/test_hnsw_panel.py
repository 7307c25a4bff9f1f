"""The HNSW tuning panel, driven the way a test can: by setting slider values and reading what the panel shows."""

import faiss
import numpy as np
import pytest

pytest.importorskip("ipywidgets", reason="the panel needs the notebooks extra: pip install 'simlib[notebooks]'")

from simlib.hnsw_panel import HNSWPanel  # noqa: E402
from simlib.index import IndexParams, exact_search  # noqa: E402


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((2000, 24)).astype(np.float32), rng.standard_normal((60, 24)).astype(np.float32)


@pytest.fixture
def panel(data):
    vectors, queries = data
    names = [f"image-{i}" for i in range(len(vectors))]
    return HNSWPanel(vectors, queries, names=names, params=IndexParams(M=4, ef_construction=16, ef_search=10),
                     k=10, ef_search_curve=(10, 40, 160), repeats=1)


def test_panel_starts_from_the_given_settings_and_shows_them(panel):
    assert (panel.M.value, panel.ef_construction.value, panel.ef_search.value, panel.k.value) == (4, 16, 10, 10)
    assert panel.point_[["M", "ef_construction", "ef_search", "k"]].tolist() == [4, 16, 10, 10]
    assert panel.curve_["ef_search"].tolist() == [10, 40, 160]
    assert bytes(panel.plot.value).startswith(b"\x89PNG") and "recall@10" in panel.summary.value
    assert len(panel.results_) == 10 and panel.grid.value.count("<tr") == 11  # header + 10 results


def test_moving_ef_search_requeries_the_same_index_and_moves_the_plotted_point(panel):
    index, png, grid = panel.index_, panel.plot.value, panel.results_.copy()
    low = panel.point_["recall"]
    assert panel.point_marker.get_ydata()[0] == low
    panel.ef_search.value = 400
    assert panel.index_ is index  # re-queried, not rebuilt
    assert panel.point_["ef_search"] == 400 and panel.point_["recall"] > max(low + 0.2, 0.9)
    assert panel.curve_["ef_search"].tolist() == [10, 40, 160, 400]  # the visited efSearch joins the curve
    assert panel.point_marker.get_ydata()[0] == panel.point_["recall"]
    assert panel.point_marker.get_xdata()[0] == panel.point_["qps"]
    assert panel.plot.value != png
    assert panel.results_["in exact top k"].sum() > grid["in exact top k"].sum()


def test_moving_M_rebuilds_the_index_and_redraws_the_curve(panel):
    index, curve, size = panel.index_, panel.curve_.copy(), panel.point_["bytes_per_vector"]
    panel.M.value = 32
    assert panel.index_ is not index and panel.index_.hnsw.nb_neighbors(1) == 32
    assert panel.point_["bytes_per_vector"] > 2 * size
    assert (panel.curve_["recall"].to_numpy() > curve["recall"].to_numpy()).all()
    assert list(panel.curve_line.get_ydata()) == panel.curve_["recall"].tolist()
    assert "M=32, efConstruction=16" in panel.summary.value


def test_moving_ef_construction_rebuilds_the_index(panel):
    index = panel.index_
    panel.ef_construction.value = 200
    assert panel.index_ is not index and panel.index_.hnsw.efConstruction == 200
    assert panel.point_["ef_construction"] == 200


def test_moving_k_changes_the_number_of_results_and_the_recall_measured(panel, data):
    panel.ef_search.value = 400
    panel.k.value = 3
    assert len(panel.results_) == 3 and panel.grid.value.count("<tr") == 4
    assert panel.point_["k"] == 3 and "recall@3" in panel.summary.value
    vectors, queries = data
    exact = exact_search(vectors, queries[:1], 3)[1][0]
    assert panel.results_["exact result"].tolist() == [f"image-{i}" for i in exact]


def test_results_grid_marks_the_results_missing_from_the_exact_neighbours(panel, data):
    vectors, queries = data
    panel.query.value = 5
    # what the grid should show, found without the panel: FAISS's own search of the panel's index at its efSearch,
    # and the exact neighbours by sorting every distance
    distances = ((vectors - queries[5]) ** 2).sum(axis=1)
    exact = np.argsort(distances)[:10]
    params = faiss.SearchParametersHNSW(efSearch=int(panel.point_["ef_search"]))
    found = panel.index_.search(queries[5:6], 10, params=params)[1][0]
    assert panel.results_["HNSW result"].tolist() == [f"image-{i}" for i in found]
    assert panel.results_["exact result"].tolist() == [f"image-{i}" for i in exact]
    assert panel.results_["in exact top k"].tolist() == [i in set(exact.tolist()) for i in found]
    assert not panel.results_["in exact top k"].all()  # at efSearch 10 with M=4 some neighbours are missed
    assert f"query 5</b>: {len(set(found.tolist()) & set(exact.tolist()))} of 10" in panel.grid.value
    assert np.allclose(panel.results_["distance"].to_numpy(), distances[found], rtol=1e-4)


def test_earlier_settings_stay_on_the_plot_for_comparison(panel):
    before = panel.curve_["recall"].tolist()
    panel.M.value = 16
    axes = panel.figure.axes[0]
    grey = [line for line in axes.lines if line.get_color() == "0.75"]
    assert len(grey) == 1 and list(grey[0].get_ydata()) == before


def test_panel_rejects_mismatched_inputs(data):
    vectors, queries = data
    with pytest.raises(ValueError, match="dimensions"):
        HNSWPanel(vectors, queries[:, :8])
    with pytest.raises(ValueError, match="names"):
        HNSWPanel(vectors, queries, names=["a"])
