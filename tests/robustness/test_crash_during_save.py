"""A process saving a collection is killed (SIGKILL) at many different moments: loading afterwards always gives
the last collection saved in full, never a corrupt one, and the temporary files the dead writers leave behind
never break the next save."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from simlib import Collection

from ..conftest import scene

KILLS = 30


@pytest.fixture(scope="module")
def two_collections(resnet18, tmp_path_factory):
    """Two different collections (6 and 9 photos) and a query photo."""
    folder = tmp_path_factory.mktemp("crash")
    built = []
    for name, seeds in (("a", range(200, 206)), ("b", range(300, 309))):
        (folder / name).mkdir()
        for seed in seeds:
            scene(seed).save(folder / name / f"{seed}.jpg", quality=90)
        built.append(Collection.build(folder / name, resnet18, progress=False, num_workers=0))
    query = folder / "query.jpg"
    scene(203).save(query, quality=70)
    return built[0], built[1], query


def fingerprint(collection: Collection, query) -> tuple:
    """What a user sees of a collection: its images and the ranked results of a search."""
    response = collection.search(query, k=5)
    return (tuple(r.path for r in collection.images),
            tuple((r.path, round(r.similarity, 5), r.reason) for r in response.results))


def save_forever(collections: dict[str, Collection], target, report: int) -> None:
    """In the child: save the collections over `target` in turn, writing 's<name>' before and 'd<name>' after each."""
    try:
        while True:
            for name, collection in collections.items():
                os.write(report, f"s{name}".encode())
                collection.save(target)
                os.write(report, f"d{name}".encode())
    finally:
        os._exit(0)


def test_killing_a_save_at_any_moment_leaves_the_last_complete_collection(two_collections, resnet18, tmp_path):
    a, b, query = two_collections
    expected = {"a": fingerprint(a, query), "b": fingerprint(b, query)}
    assert expected["a"] != expected["b"]
    target = tmp_path / "photos.simlib"
    a.save(target)
    start = time.perf_counter()
    b.save(tmp_path / "timing.simlib")
    save_seconds = time.perf_counter() - start
    rng = np.random.default_rng(0)
    killed_mid_write = 0
    for kill in range(KILLS):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            save_forever({"b": b, "a": a}, target, write_end)
        os.close(write_end)
        started = os.read(read_end, 2)  # the delay counts from the child's first save, however busy the machine
        time.sleep(float(rng.uniform(0, 6 * save_seconds)) if kill else 0.0)  # the first is killed at once
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        log = started.decode() + read_all(read_end)
        killed_mid_write += any(p.name.startswith(f".photos.simlib.tmp-{pid}-") for p in tmp_path.iterdir())
        # the file holds what was saved last in full, or, if the kill came between the rename and the report,
        # what was being saved; a's save before the loop is the first "saved in full"
        events = ["da"] + [log[i : i + 2] for i in range(0, len(log), 2)]
        last_done = next(e[1] for e in reversed(events) if e[0] == "d")
        possible = {last_done} | ({events[-1][1]} if events[-1][0] == "s" else set())
        loaded = fingerprint(Collection.load(target, resnet18), query)
        assert loaded in [expected[name] for name in possible], f"kill {kill}: log {log!r}"
    assert killed_mid_write >= KILLS // 3  # most kills landed while a temporary file was being written
    b.save(target)  # the temporaries of the dead writers do not get in the way, and are cleared
    assert fingerprint(Collection.load(target, resnet18), query) == expected["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos.simlib", "timing.simlib"]


def read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode()
