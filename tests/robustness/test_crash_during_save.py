"""A process saving a collection is killed (SIGKILL) at many different moments: during whole saves, during
incremental saves that append new images, and during compactions that rewrite every file. Loading afterwards
always gives the last collection saved in full, with identical search results, never a corrupt one, and what the
dead writers left behind never breaks the next save."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import numpy as np
import pytest

from simlib import Collection

from ..conftest import scene

KILLS = 30
INCREMENTAL_KILLS = 12


@pytest.fixture(scope="module")
def photos(resnet18, tmp_path_factory):
    """Two different collections (6 and 9 photos), a folder of 3 more photos, and a query photo."""
    folder = tmp_path_factory.mktemp("crash")
    built = []
    for name, seeds in (("a", range(200, 206)), ("b", range(300, 309)), ("a/extra", range(210, 213))):
        (folder / name).mkdir()
        for seed in seeds:
            scene(seed).save(folder / name / f"{seed}.jpg", quality=90)
        if name != "a/extra":
            built.append(Collection.build(folder / name, resnet18, progress=False, num_workers=0))
    query = folder / "query.jpg"
    scene(203).save(query, quality=70)
    return built[0], built[1], folder / "a" / "extra", query


def unsaved(collection: Collection) -> Collection:
    """The same collection, tied to no folder: saving it replaces whatever a folder holds."""
    return Collection(collection.backbone, images=list(collection.images), features=collection.features,
                      core=collection.core.copy(), errors=collection.errors, notes=collection.notes,
                      root=collection.root)


def fingerprint(collection: Collection, query) -> tuple:
    """What a user sees of a collection: its images and the ranked results of a search."""
    response = collection.search(query, k=12)
    return (tuple(r.path for r in collection.images),
            tuple((r.path, round(r.similarity, 5), r.reason) for r in response.results))


def leftovers(folder) -> list[str]:
    """Files of the folder that its database does not name (data files of a dead writer, a hot journal)."""
    db = sqlite3.connect(folder / "collection.sqlite")
    named = {name for (name,) in db.execute("SELECT name FROM files")} | {"collection.sqlite", "lock"}
    db.close()
    return sorted(p.name for p in folder.iterdir() if p.name not in named)


def save_forever(collections: dict[str, Collection], target, report: int) -> None:
    """In the child: save the collections over `target` in turn, writing 's<name>' before and 'd<name>' after each."""
    try:
        while True:
            for name, collection in collections.items():
                os.write(report, f"s{name}".encode())
                unsaved(collection).save(target)
                os.write(report, f"d{name}".encode())
    finally:
        os._exit(0)


def test_killing_a_save_at_any_moment_leaves_the_last_complete_collection(photos, resnet18, tmp_path):
    a, b, _, query = photos
    a, b = unsaved(a), unsaved(b)
    expected = {"a": fingerprint(a, query), "b": fingerprint(b, query)}
    assert expected["a"] != expected["b"]
    target = tmp_path / "photos.simlib"
    unsaved(a).save(target)
    start = time.perf_counter()
    unsaved(b).save(tmp_path / "timing.simlib")
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
        killed_mid_write += bool(leftovers(target))
        # the folder holds what was saved last in full, or, if the kill came between the commit and the report,
        # what was being saved; a's save before the loop is the first "saved in full"
        events = ["da"] + [log[i : i + 2] for i in range(0, len(log), 2)]
        last_done = next(e[1] for e in reversed(events) if e[0] == "d")
        possible = {last_done} | ({events[-1][1]} if events[-1][0] == "s" else set())
        loaded = fingerprint(Collection.load(target, resnet18), query)
        assert loaded in [expected[name] for name in possible], f"kill {kill}: log {log!r}"
    assert killed_mid_write >= KILLS // 3  # most kills landed while new files were being written
    unsaved(b).save(target)  # what the dead writers left does not get in the way, and is cleared
    assert fingerprint(Collection.load(target, resnet18), query) == expected["b"]
    assert leftovers(target) == []


def add_and_remove_forever(target, backbone, extra, report: int) -> None:
    """In the child: load `target`, then in turn add `extra` and save ('s1' ... 'd1': an incremental save), remove
    it and save ('s0' ... 'd0': the removed share passes 20%, so the save compacts)."""
    try:
        import faiss
        import torch

        torch.set_num_threads(1)  # no OpenMP thread pool in a forked child
        faiss.omp_set_num_threads(1)
        collection = Collection.load(target, backbone)
        while True:
            collection.add(extra, progress=False, num_workers=0)
            os.write(report, b"s1")
            collection.save(target)
            os.write(report, b"d1")
            collection.remove(extra)
            os.write(report, b"s0")
            collection.save(target)
            os.write(report, b"d0")
    finally:
        os._exit(0)


def test_killing_incremental_saves_and_compactions_leaves_the_last_complete_collection(photos, resnet18, tmp_path):
    a, _, extra, query = photos
    target = tmp_path / "photos.simlib"
    unsaved(a).save(target)
    state = Collection.load(target, resnet18)
    expected = {"0": fingerprint(state, query)}
    state.add(extra, progress=False, num_workers=0)
    expected["1"] = fingerprint(state, query)
    seconds = {}
    for phase in ("1", "0"):  # how long an incremental save and a compaction take here
        started = time.perf_counter()
        state.save(target)
        seconds[phase] = time.perf_counter() - started
        if phase == "1":
            state.remove(extra)
    assert Collection.load(target, resnet18).core.index_.ntotal == 6  # the removal was compacted away
    rng = np.random.default_rng(1)
    mid_save = {"0": 0, "1": 0}
    for kill in range(INCREMENTAL_KILLS):
        phase, nth = "10"[kill % 2], 1 + (kill // 2) % 3
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            add_and_remove_forever(target, resnet18, extra, write_end)
        os.close(write_end)
        log = ""
        while log.count(f"s{phase}") < nth:  # kill during the nth save of this phase, or just after it
            log += os.read(read_end, 2).decode()
        time.sleep(float(rng.uniform(0, 1.5 * seconds[phase])))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        log += read_all(read_end)
        events = ["d0"] + [log[i : i + 2] for i in range(0, len(log), 2)]
        last_done = next(e[1] for e in reversed(events) if e[0] == "d")
        possible = {last_done} | ({events[-1][1]} if events[-1][0] == "s" else set())
        mid_save[phase] += events[-1] == f"s{phase}"
        loaded = fingerprint(Collection.load(target, resnet18), query)
        assert loaded in [expected[p] for p in possible], f"kill {kill}: log {log!r}"
    assert min(mid_save.values()) >= 2, mid_save  # kills landed inside both kinds of save
    survivor = Collection.load(target, resnet18)
    survivor.add(extra, progress=False, num_workers=0)
    survivor.save(target)  # what the dead writers left does not get in the way, and is cleared
    assert fingerprint(Collection.load(target, resnet18), query) == expected["1"]
    assert leftovers(target) == []


def read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode()
