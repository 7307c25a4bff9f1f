"""The research notebooks: each runs top to bottom in a fresh kernel on the bundled sample, and the committed
files carry no outputs."""

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

nbformat = pytest.importorskip("nbformat", reason="notebook tests need the dev extra (nbformat, nbclient)")
nbclient = pytest.importorskip("nbclient", reason="notebook tests need the dev extra (nbformat, nbclient)")
pytest.importorskip("ipykernel", reason="notebook tests need the notebooks extra (ipykernel, ipywidgets)")
pytest.importorskip("ipywidgets", reason="notebook tests need the notebooks extra (ipykernel, ipywidgets)")

from .conftest import ROOT, needs_offline_backbone  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
STRIP = "strip them with: jupyter nbconvert --clear-output --inplace notebooks/*.ipynb"
# Smaller sizes for the suite's run, set in a cell after the parameters cell (papermill's convention): the notebooks
# run every cell as a reader runs them, on fewer synthetic vectors (their sweeps at the committed sizes take a minute)
TEST_PARAMETERS = {
    "03_hnsw_sweeps": "N_SYNTHETIC = 4_000\nN_QUERIES = 100",
    "05_near_duplicates": "SIZES = (1_000, 2_000)",
}


def test_the_five_research_notebooks_are_present():
    assert [path.stem for path in NOTEBOOKS] == [
        "01_feature_extraction",
        "02_pca_variance",
        "03_hnsw_sweeps",
        "04_rating_fallback",
        "05_near_duplicates",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_notebook_carries_no_outputs_and_one_parameters_cell(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    with_outputs = [i for i, cell in enumerate(code) if cell.outputs or cell.execution_count is not None]
    assert not with_outputs, f"{path.name}: code cells {with_outputs} carry outputs; {STRIP}"
    assert "widgets" not in notebook.metadata, f"{path.name}: saved widget state; {STRIP}"
    parameters = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1 and "DATASET = " in parameters[0].source
    for line in TEST_PARAMETERS.get(path.stem, "").splitlines():  # the suite's sizes set parameters that exist
        assert line.split(" = ")[0] + " = " in parameters[0].source, f"{path.name} has no parameter for {line!r}"


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory, monkeypatch_module):
    """A kernel spec running this interpreter, first on the Jupyter path: every notebook gets a fresh kernel
    of the environment under test, whatever kernels the machine has registered, on the bundled sample."""
    folder = tmp_path_factory.mktemp("jupyter")
    spec = folder / "kernels" / "simlib-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    # one compute thread per kernel: the notebooks run side by side (`executed`), a kernel a core, and barely gain
    # from more threads (they spend their time in Python, Pillow and matplotlib)
    env = dict.fromkeys(("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"), "1")
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "simlib tests", "language": "python", "env": env})
    )
    monkeypatch_module.setenv("JUPYTER_PATH", str(folder))
    monkeypatch_module.delenv("SIMLIB_NOTEBOOK_DATASET", raising=False)  # the kernel inherits it: run the default
    # importing streamlit (the app tests) sets MPLBACKEND=Agg in this process; a kernel inheriting it draws nothing
    monkeypatch_module.delenv("MPLBACKEND", raising=False)
    return "simlib-test"


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def execute(path, kernel_name):
    """`path` run top to bottom in a fresh kernel; the executed notebook, or the error of its first failing cell."""
    notebook = nbformat.read(path, as_version=4)
    if path.stem in TEST_PARAMETERS:
        at = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
        injected = nbformat.v4.new_code_cell(TEST_PARAMETERS[path.stem], metadata={"tags": ["injected-parameters"]})
        notebook.cells.insert(at + 1, injected)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name=kernel_name, resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell and the error, at the first failing cell
    return notebook


@pytest.fixture(scope="module")
def executed(request, kernel_name):
    """The notebooks whose run test is selected, each started in its own fresh kernel as soon as a core is free
    (a kernel a core), in test order: path -> future of the executed notebook."""
    selected = [item.callspec.params["path"] for item in request.session.items
                if item.originalname == "test_notebook_runs_top_to_bottom_in_a_fresh_kernel"]
    with ThreadPoolExecutor(max(1, min(len(selected), os.cpu_count() or 1))) as pool:
        futures = {path: pool.submit(execute, path, kernel_name) for path in selected}
        yield futures
        for future in futures.values():
            future.cancel()  # those not started yet, when a test stopped the run early


@needs_offline_backbone  # load_backbone("auto") falls back to EfficientNet-Lite0 without ResNet-18 weights
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_top_to_bottom_in_a_fresh_kernel(path, executed):
    notebook = executed[path].result()  # raises the error of the first failing cell, naming the cell
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code)
    outputs = [output for cell in code for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert figures, f"{path.name} drew no figure"
    if path.stem == "03_hnsw_sweeps":
        assert any("application/vnd.jupyter.widget-view+json" in output.get("data", {}) for output in outputs)
