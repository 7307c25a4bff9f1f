"""End to end on real photos: the bundled sample through the CLI, and the shared datasets through the library."""

import csv
import io
import json
import os
import subprocess
import sys
from collections import defaultdict

import pytest
from PIL import Image

from simlib import Collection
from simlib.cli import main

from .conftest import DATA, ROOT, SHARED, needs_offline_backbone, needs_shared

pytestmark = [needs_offline_backbone, pytest.mark.slow]


def simlib(*args, cwd=ROOT):
    result = subprocess.run([sys.executable, "-m", "simlib", *map(str, args)], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    output = tmp_path_factory.mktemp("bundled") / "data.simlib"
    simlib("index", DATA / "collection", "-o", output, "--backbone", "efficientnet_lite0", "-q")
    return output


QUERIES = DATA / "queries"


@pytest.fixture(scope="module")
def answers(bundled):
    """Both bundled queries through one `simlib search --json` process: query file name -> its JSON answer."""
    queries = [QUERIES / "blinds-4-stars.jpg", QUERIES / "ladybird-cropped-small.jpg"]
    lines = simlib("search", bundled, *queries, "-k", "5", "--json").stdout.splitlines()
    payloads = [json.loads(line) for line in lines]
    assert [payload["query"] for payload in payloads] == [str(query) for query in queries]
    return {query.name: payload for query, payload in zip(queries, payloads)}


def test_bundled_query_without_a_visual_counterpart_falls_back_to_its_rating(bundled, answers, capsys):
    payload = answers["blinds-4-stars.jpg"]
    assert payload["fallback"] and payload["query_rating"] == 4.0
    assert [r["reason"] for r in payload["results"]] == ["rating-fallback"] * 5
    assert [r["rating"] for r in payload["results"]][:4] == [4.0] * 4  # four 4-star images in the sample
    assert main(["search", str(bundled), str(QUERIES / "blinds-4-stars.jpg"), "-k", "3"]) == 0  # the table, in-process
    table = capsys.readouterr().out
    assert "below the match threshold" in table and table.count("rating-fallback") == 3


def test_bundled_edited_copy_finds_its_original_first(answers):
    first = answers["ladybird-cropped-small.jpg"]["results"][0]
    assert first["reason"] == "visual" and first["path"].endswith("06-sidecar-name-ext-xmp-LadyBird.jpg")
    assert first["rating"] == 4.0


def edited(path, edit):
    image = Image.open(path).convert("RGB")
    w, h = image.size
    if edit == "resized":
        image = image.resize((w // 3, h // 3))
    elif edit == "cropped":
        image = image.crop((w // 8, h // 8, w - w // 8, h - h // 8))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=35 if edit == "recompressed" else 85)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def rated(efficientnet):
    return Collection.build(SHARED / "rated", efficientnet, progress=False)


@needs_shared
@pytest.mark.parametrize("edit", ["resized", "recompressed", "cropped"])
def test_edited_copies_of_real_photos_find_their_original_first(rated, edit):
    originals = sorted((SHARED / "rated").glob("*.jpg"))[:10]
    for original in originals:
        response = rated.search(edited(original, edit), k=1, name=f"{edit} {original.name}")
        assert response.results[0].path == str(original), response.query
        assert response.results[0].reason == "visual"


@needs_shared
def test_real_near_duplicates_from_other_packages_are_found(efficientnet):
    """Wallpapers shipped at several sizes: index the largest of each group, query with the others."""
    folder = SHARED / "wallpapers"
    groups = defaultdict(list)
    with open(folder / "groups.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            groups[row["group"]].append(folder / row["file"])
    indexed, queries = [], []
    for files in groups.values():
        files.sort(key=lambda f: os.path.getsize(f), reverse=True)
        indexed.append(files[0])
        queries += [(q, files[0]) for q in files[1:]]
    collection = Collection.build(indexed, efficientnet, progress=False)
    answers = collection.search_many([q for q, _ in queries], k=1)  # decoded in workers, embedded in batches
    hits = sum(answer.results[0].path == str(target) for answer, (_, target) in zip(answers, queries))
    assert len(queries) == 43
    assert hits / len(queries) >= 0.9  # measured 41/43 with efficientnet_lite0
