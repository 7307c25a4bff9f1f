"""The benchmark scripts still work: `python -m benchmarks --quick` into a temporary folder writes RESULTS.md with
every section and its tables. Benchmarks are not tests: no timing is asserted here."""

from __future__ import annotations

import importlib.util
import re

import pytest

from benchmarks.__main__ import main
from benchmarks.inputs import offline_backbone_available

from .conftest import SHARED

pytestmark = pytest.mark.slow  # the quick run takes about two minutes

TITLES = {
    "throughput": "1. Extraction throughput",
    "ann": "2. ANN search",
    "latency": "3. Query latency",
    "quality": "4. Retrieval quality",
    "scale": "6. A library at scale",
    "duplicates": "7. Grouping near duplicates",
    "copydetect": "10. Copy detection",
    "big_index": "12. An index beyond memory",
    "distributed": "13. Extraction on Ray",
}
TABLES = {"throughput": 1, "ann": 4, "latency": 2, "quality": 2, "scale": 3, "duplicates": 1, "copydetect": 8,
          "big_index": 2, "distributed": 1}
# sections that need neither the shared datasets nor the offline backbone (Ray's: only Ray)
ALWAYS = {"throughput", "duplicates"} | ({"distributed"} if importlib.util.find_spec("ray") else set())


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("benchmarks")
    written = main(["--quick", "--output", str(folder / "RESULTS.md"), "--cache", str(folder / "cache")])
    assert written == folder / "RESULTS.md"
    return written.read_text()


def sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## ", text, flags=re.MULTILINE)
    return {name: next(p for p in parts if p.startswith(title)) for name, title in TITLES.items()}


def test_quick_run_writes_every_section_with_its_tables(results):
    runs_everything = SHARED.is_dir() and offline_backbone_available()
    for name, section in sections(results).items():
        if name in ALWAYS or runs_everything:
            assert section.count("\n|---") >= TABLES[name], f"{name}: expected {TABLES[name]} tables\n{section}"
        else:
            assert "Skipped" in section


def test_quick_run_names_the_machine_and_every_headline_target(results):
    assert re.search(r"\*\*Machine:\*\* .+, \d+ logical CPUs", results)
    headlines = results.split("## Headline figures", 1)[1].split("\n## ", 1)[0]
    assert "b/a" in headlines and "physical bound" in headlines and "grouping 2,000 vectors: peak RSS" in headlines
    if SHARED.is_dir() and offline_backbone_available():
        for figure in ("ANN one-query QPS", "query p50", "muAP loss, PCA-128 + HNSW", "false-match rate",
                       "scale: load", "scale: sync, nothing changed"):
            assert figure in headlines


def test_quick_run_measures_recall_and_quality_within_sane_bounds(results):
    if not (SHARED.is_dir() and offline_backbone_available()):
        pytest.skip("the ANN and quality benchmarks need the shared datasets and the offline backbone")
    quality = sections(results)["quality"]
    raw_exact = re.search(r"^\| raw \| - \| 1280 \| exact \| ([0-9.]+) \|", quality, flags=re.MULTILINE)
    assert raw_exact and 0.5 <= float(raw_exact.group(1)) <= 1.0  # real features find their near-duplicates
    copies = sections(results)["copydetect"]
    row = re.search(r"^\| raw 1280-d, exact \| 1280 \| ([0-9.]+) \|", copies, flags=re.MULTILINE)
    assert row and 0.3 <= float(row.group(1)) <= 1.0  # real features find most copies first
    hashes = re.findall(r"^\| imagededup \w+ \(64 bits\) \| 64 \| ([0-9.]+) \|", copies, flags=re.MULTILINE)
    assert len(hashes) == 2
    ann = sections(results)["ann"]
    row = r"^\| simlib \(FAISS HNSW\) \| one query \| 128 \| ([0-9.]+) \|"
    recalls = [float(r) for r in re.findall(row, ann, re.MULTILINE)]
    assert recalls and min(recalls) >= 0.95
