"""An ipywidgets panel for tuning HNSW by hand (needs the notebooks extra: ipywidgets, matplotlib).

Sliders for M, efConstruction, efSearch and k over fixed vectors and queries: moving M or efConstruction rebuilds
the index, moving efSearch or k re-queries, and the recall-vs-speed plot and the results grid follow. What is
shown is kept on the panel (`index_`, `curve_`, `point_`, `results_`), so code can drive the sliders by setting
their `.value` and read what changed.
"""

from __future__ import annotations

import io
from typing import Sequence

import ipywidgets as widgets
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .index import IndexParams, bytes_per_vector, check_vectors, exact_search
from .tuning import QueryRun, measure_queries, timed_core

EF_SEARCH_CURVE = (10, 20, 40, 80, 160, 320)  # efSearch values measured for each plotted curve
MAX_K = 50


class HNSWPanel:
    """Interactive HNSW tuning over `vectors` (the database) and `queries`; display it in a notebook cell.

    The plot shows recall@k against queries per second over `ef_search_curve` and every efSearch visited, for
    the current M and efConstruction (earlier settings stay in grey for comparison), with the current efSearch
    starred. The grid lists the results for the query chosen by the `query` slider next to the exact ones.
    """

    def __init__(
        self,
        vectors: np.ndarray,
        queries: np.ndarray,
        *,
        names: Sequence[str] | None = None,
        params: IndexParams = IndexParams(),
        k: int = 10,
        ef_search_curve: Sequence[int] = EF_SEARCH_CURVE,
        repeats: int = 3,
    ):
        self.vectors = check_vectors(vectors)
        self.queries = check_vectors(queries, self.vectors.shape[1], "queries")
        if len(self.queries) == 0:
            raise ValueError("the panel needs at least one query")
        self.names = [str(i) for i in range(len(self.vectors))] if names is None else [str(n) for n in names]
        if len(self.names) != len(self.vectors):
            raise ValueError(f"{len(self.names)} names for {len(self.vectors)} vectors")
        self.ef_search_curve = tuple(sorted({int(e) for e in ef_search_curve}))
        self.repeats = repeats
        k_max = min(MAX_K, len(self.vectors))
        self._exact_ids = exact_search(self.vectors, self.queries, k_max)[1]

        style = dict(continuous_update=False, style={"description_width": "initial"})
        self.M = widgets.IntSlider(params.M, min=2, max=max(64, params.M), description="M", **style)
        self.ef_construction = widgets.IntSlider(
            params.ef_construction, min=8, max=max(512, params.ef_construction), step=8, description="efConstruction",
            **style,
        )
        self.ef_search = widgets.IntSlider(
            params.ef_search, min=1, max=max(512, params.ef_search), description="efSearch", **style
        )
        self.k = widgets.IntSlider(min(k, k_max), min=1, max=k_max, description="k", **style)
        self.query = widgets.IntSlider(0, min=0, max=len(self.queries) - 1, description="query shown", **style)
        self.summary = widgets.HTML()
        self.plot = widgets.Image(format="png")
        self.grid = widgets.HTML()
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.M, self.ef_construction]),
                widgets.HBox([self.ef_search, self.k, self.query]),
                self.summary,
                widgets.HBox([self.plot, self.grid]),
            ]
        )
        self.figure = Figure(figsize=(6, 4.2), dpi=80)
        FigureCanvasAgg(self.figure)
        self._built: tuple[int, int] | None = None
        self._runs: dict[tuple[int, int, int], dict[int, QueryRun]] = {}  # (M, efC, k) -> efSearch -> run
        for slider in (self.M, self.ef_construction, self.ef_search, self.k):
            slider.observe(lambda _: self.update(), names="value")
        self.query.observe(lambda _: self._show_results(), names="value")
        self.update()

    def update(self) -> None:
        """Rebuild the index if M or efConstruction moved, query at the current efSearch and k, and redraw."""
        key = (self.M.value, self.ef_construction.value)
        if key != self._built:
            self.core_, self.build_seconds_ = timed_core(self.vectors, IndexParams(M=key[0], ef_construction=key[1]))
            self.index_ = self.core_.index_
            self._built = key
            for stale in [run_key for run_key in self._runs if run_key[:2] == key]:
                del self._runs[stale]  # measured on an earlier build of these settings: measure the new one
        k = self.k.value
        runs = self._runs.setdefault((*key, k), {})
        ef_search = max(self.ef_search.value, k)  # search_index never searches with a beam narrower than k
        for ef in {max(e, k) for e in self.ef_search_curve} | {ef_search}:
            if ef not in runs:
                runs[ef] = measure_queries(self.core_, self.queries, self._exact_ids[:, :k], k, ef, self.repeats)
        run = runs[ef_search]
        self._found = run.ids
        self.curve_ = _curve(runs)
        self.point_ = pd.Series(
            {
                "M": key[0],
                "ef_construction": key[1],
                "ef_search": ef_search,
                "k": k,
                "recall": run.recall,
                "qps": run.qps,
                "distances_per_query": run.distances_per_query,
                "build_s": self.build_seconds_,
                "bytes_per_vector": bytes_per_vector(self.index_),
            }
        )
        self.summary.value = (
            f"<b>M={key[0]}, efConstruction={key[1]}</b>: built in {self.build_seconds_:.2f} s, "
            f"{self.point_['bytes_per_vector']:.0f} bytes per vector. <b>efSearch={ef_search}, k={k}</b>: "
            f"recall@{k} {run.recall:.3f} over {len(self.queries)} queries, {run.qps:,.0f} queries per second, "
            f"{run.distances_per_query:,.0f} distances computed per query."
        )
        self._draw()
        self._show_results()

    def _draw(self) -> None:
        self.figure.clear()
        axes = self.figure.add_subplot()
        k = int(self.point_["k"])
        for (m, ef_c, curve_k), runs in self._runs.items():
            if curve_k == k and (m, ef_c) != self._built:
                curve = _curve(runs)
                axes.plot(curve["qps"], curve["recall"], "-", color="0.75", lw=1)
                axes.annotate(f"M={m} efC={ef_c}", (curve["qps"].iloc[0], curve["recall"].iloc[0]), fontsize=7,
                              color="0.5")
        (self.curve_line,) = axes.plot(self.curve_["qps"], self.curve_["recall"], "o-", color="tab:blue",
                                       label=f"M={self._built[0]} efC={self._built[1]}")
        for _, row in self.curve_.iterrows():
            axes.annotate(f"{row['ef_search']:.0f}", (row["qps"], row["recall"]), textcoords="offset points",
                          xytext=(4, -10), fontsize=7)
        (self.point_marker,) = axes.plot([self.point_["qps"]], [self.point_["recall"]], "*", ms=16,
                                         color="tab:red", label=f"efSearch={self.point_['ef_search']:.0f}")
        axes.set_xscale("log")
        axes.set_xlabel("queries per second (one at a time)")
        axes.set_ylabel(f"recall@{k} against exact search")
        axes.set_title("numbers on the curve: efSearch", fontsize=9)
        axes.grid(alpha=0.3)
        axes.legend(loc="lower left", fontsize=8)
        self.figure.tight_layout()
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png")
        self.plot.value = buffer.getvalue()

    def _show_results(self) -> None:
        """The grid: the k results for the query shown, beside the exact k nearest."""
        q = self.query.value
        found, exact = self._found[q], self._exact_ids[q, : int(self.point_["k"])]

        def distance(ids: np.ndarray) -> np.ndarray:
            safe = np.clip(ids, 0, None)
            return np.where(ids >= 0, ((self.vectors[safe] - self.queries[q]) ** 2).sum(axis=1), np.nan)

        self.results_ = pd.DataFrame(
            {
                "rank": np.arange(1, len(found) + 1),
                "HNSW result": [self.names[i] if i >= 0 else "(none)" for i in found],
                "distance": distance(found),
                "in exact top k": np.isin(found, exact),
                "exact result": [self.names[i] for i in exact],
                "exact distance": distance(exact),
            }
        )
        self.grid.value = (
            f"<b>query {q}</b>: {int(self.results_['in exact top k'].sum())} of {len(exact)} exact neighbours found"
            + self.results_.to_html(index=False, float_format=lambda x: f"{x:.4f}")
        )

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def _curve(runs: dict[int, QueryRun]) -> pd.DataFrame:
    """Recall, speed and cost by efSearch, in efSearch order."""
    return pd.DataFrame(
        [
            {"ef_search": ef, "recall": run.recall, "qps": run.qps, "distances_per_query": run.distances_per_query}
            for ef, run in sorted(runs.items())
        ]
    )
