"""Two `simlib index --add` processes adding to the same collection at once: the second waits for the first (the
writer lock is held from loading to saving), and the collection ends up with the images of both."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from simlib import Collection
from simlib.cli import main
from simlib.store import locked

from ..conftest import ROOT, scene


@pytest.mark.slow
def test_two_add_processes_at_once_serialise_and_lose_no_images(resnet18, resnet18_weights, tmp_path):
    for name, seeds in (("photos", range(900, 904)), ("one", range(910, 912)), ("two", range(920, 922))):
        (tmp_path / name).mkdir()
        for seed in seeds:
            scene(seed).save(tmp_path / name / f"{seed}.jpg", quality=90)
    target = tmp_path / "photos.simlib"
    weights = ["--weights", str(resnet18_weights), "-q", "--workers", "0"]
    assert main(["index", str(tmp_path / "photos"), "-o", str(target), "--backbone", "resnet18", *weights]) == 0
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    with locked(target):  # both start while a writer holds the collection, so both must wait
        writers = [subprocess.Popen([sys.executable, "-m", "simlib", "index", str(tmp_path / name), "-o", str(target),
                                     "--add", *weights], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    cwd=ROOT, env=environment) for name in ("one", "two")]
        waiting = [writer.stderr.readline() for writer in writers]
    outputs = [writer.communicate(timeout=300) for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0], outputs
    assert all(f"another process (pid {os.getpid()}) is writing this collection; waiting" in line for line in waiting)
    added = sorted(out for out, _ in outputs)
    assert "the collection holds 6." in added[0] and "the collection holds 8." in added[1]
    collection = Collection.load(target, resnet18)
    assert sorted(os.path.basename(r.path) for r in collection.images) == sorted(
        f"{seed}.jpg" for seed in [*range(900, 904), *range(910, 912), *range(920, 922)])
