"""Extraction on Ray: the same collection as without it, a worker killed mid-run, a stopped run resumed, and the
shards it keeps (read back, or made again when they do not hold what they should).

The Ray tests share one local cluster started by this process; a command-line run joins it by its address, and
its rerun, given no address, starts a cluster of its own."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from simlib.distributed import (RayExtractor, read_shard, remove_stale_writes, shard_key, shard_size_for,
                                write_shard)
from simlib.files import walk_images
from simlib.ratings import read_rating

from .conftest import ROOT, SHARED, needs_offline_backbone, needs_shared

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is an optional extra: pip install 'simlib[ray]'")
EMBEDDER = "MapBatches(_Embedder)"  # in the process title Ray gives an embedding actor


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs for this module; yields its address."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def real_folder(tmp_path_factory) -> Path:
    """Real photos: the 31 rated ones with their sidecars, 30 others, one truncated JPEG and one text file."""
    folder = tmp_path_factory.mktemp("real")
    shutil.copytree(SHARED / "rated", folder / "rated", ignore=shutil.ignore_patterns("*.csv", "*.md"))
    (folder / "photos").mkdir()
    for photo in sorted((SHARED / "photos").glob("*.jpg"))[:30]:
        shutil.copy(photo, folder / "photos" / photo.name)
    (folder / "broken.jpg").write_bytes(next((SHARED / "photos").glob("*.jpg")).read_bytes()[:300])
    (folder / "notes.png").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def local(real_folder, efficientnet):
    """`real_folder` indexed without Ray."""
    from simlib.collection import Collection

    return Collection.build(real_folder, efficientnet, progress=False)


def _records(collection) -> list:
    return collection.records.records(range(len(collection)))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1)


@needs_ray
@needs_shared
@needs_offline_backbone
@pytest.mark.slow
def test_ray_builds_the_collection_the_local_path_builds(cluster, real_folder, efficientnet, local, tmp_path):
    from simlib.collection import Collection

    extractor = RayExtractor(cluster, shards=tmp_path / "shards")
    distributed = Collection.build(real_folder, efficientnet, progress=False, extractor=extractor)
    mine, theirs = _records(distributed), _records(local)
    assert [r.path for r in mine] == [r.path for r in theirs]
    assert [r.rating for r in mine] == [r.rating for r in theirs]
    assert sorted(map(str, distributed.errors)) == sorted(map(str, local.errors))
    assert {Path(e.path).name for e in local.errors} >= {"broken.jpg", "notes.png"}
    assert _cosines(distributed.features, local.features).min() >= 0.9999
    assert len(list((tmp_path / "shards").iterdir())) == -(-len(walk_images(real_folder).images) // 8)
    extractor.forget()
    assert not list((tmp_path / "shards").iterdir())


def _embedder_pids() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and EMBEDDER in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@needs_ray
@needs_shared
@needs_offline_backbone
@pytest.mark.slow
def test_an_embedding_worker_killed_mid_run_leaves_every_image_indexed_once(cluster, efficientnet, tmp_path):
    from simlib.features import extract_features

    photos = sorted((SHARED / "photos").glob("*.jpg"))[:120]
    shards = tmp_path / "shards"
    killed = []

    def kill_once_shards_are_written():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            pids = _embedder_pids()
            if pids and shards.is_dir() and len(list(shards.glob("*.npz"))) >= 2:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(len(list(shards.glob("*.npz"))))
            time.sleep(0.05)

    killer = threading.Thread(target=kill_once_shards_are_written)
    killer.start()
    result = RayExtractor(cluster, shards=shards, shard_size=8)(efficientnet, photos, progress=False)
    killer.join()
    assert killed and killed[0] < len(photos) // 8, "the embedding actor was not killed before the run ended"
    expected = extract_features(efficientnet, photos, progress=False)
    assert result.indices.tolist() == list(range(len(photos))) == expected.indices.tolist()
    assert not result.errors
    assert _cosines(result.features, expected.features).min() >= 0.9999


@needs_ray
@needs_shared
@needs_offline_backbone
@pytest.mark.slow
def test_a_stopped_cli_run_resumes_from_its_finished_shards_on_a_cluster_of_its_own(cluster, real_folder,
                                                                                   efficientnet, tmp_path):
    """`simlib index --ray ADDRESS` killed midway; the rerun, `--ray` without an address, starts a local cluster
    of its own (not this process's, which `ray start` did not start) and takes the finished shards from disk."""
    from simlib.collection import Collection
    from simlib.features import extract_features

    folder = tmp_path / "photos"
    shutil.copytree(real_folder, folder)
    for photo in sorted((SHARED / "photos").glob("*.jpg"))[100:150]:  # enough to stop a run midway
        shutil.copy(photo, folder / "photos" / photo.name)
    files = walk_images(folder).images
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    shards = tmp_path / "cache" / "simlib" / "ray-shards"
    command = [sys.executable, "-m", "simlib", "index", str(folder), "-o", str(tmp_path / "c"),
               "--backbone", "efficientnet_lite0", "--precision", efficientnet.precision, "--ray"]
    first = subprocess.Popen([*command, cluster, "-q"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while first.poll() is None and time.monotonic() < deadline and len(list(shards.glob("*.npz"))) < 3:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    finished = len(list(shards.glob("*.npz")))
    size = shard_size_for(len(files))
    assert 3 <= finished < -(-len(files) // size), "the first run was not stopped midway"

    second = subprocess.run([*command, "-q"], env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    used = re.search(r"Features extracted on the Ray cluster at ([\d.]+:\d+) \(\d+ CPUs", second.stdout)
    assert used and used[1] != cluster, second.stdout
    resumed = re.search(r"(\d+) image\(s\) came from the finished shards of an earlier run", second.stdout)
    assert resumed and (finished - 1) * size < int(resumed[1]) <= finished * size, second.stdout
    assert not list(shards.iterdir()), "shards or temporary files stay after the collection was saved"
    saved = Collection.load(tmp_path / "c")
    expected = extract_features(efficientnet, files, progress=False)
    assert [r.path for r in _records(saved)] == [files[i] for i in expected.indices]
    assert [r.rating for r in _records(saved)] == [read_rating(files[i]) for i in expected.indices]
    assert sorted(map(str, saved.errors)) == sorted(map(str, expected.errors))
    assert _cosines(saved.features, expected.features).min() >= 0.9999


def test_a_shard_is_named_by_the_backbone_and_each_file_as_it_is_now(resnet18, tmp_path):
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"one")
    before = shard_key(resnet18, [str(photo)])
    assert shard_key(resnet18, [str(photo)]) == before
    os.utime(photo, ns=(1, 1))
    assert shard_key(resnet18, [str(photo)]) != before
    touched = shard_key(resnet18, [str(photo)])
    other = type(resnet18)(resnet18.spec, resnet18.model, resnet18.weights_path, "0" * 64, resnet18.device)
    assert shard_key(other, [str(photo)]) != touched


def test_a_shard_reads_back_and_one_that_does_not_hold_what_it_should_is_made_again(tmp_path):
    features = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    ok = np.array([True, False, True])
    reasons = np.array(["", "file not found", ""], dtype=object)
    path = tmp_path / "shard.npz"
    write_shard(path, features, ok, reasons)
    got = read_shard(path, 3, 4)
    assert np.array_equal(got[0], features) and np.array_equal(got[1], ok) and list(got[2]) == list(reasons)
    assert read_shard(path, 4, 4) is None  # another shard's length
    assert read_shard(path, 3, 5) is None  # another backbone's width
    write_shard(path, features, np.array([True, False, True]), np.array(["", "", ""], dtype=object))
    assert read_shard(path, 3, 4) is None  # a failed file without its reason
    path.write_bytes(path.read_bytes()[:100])
    assert read_shard(path, 3, 4) is None  # truncated
    assert read_shard(tmp_path / "absent.npz", 3, 4) is None
    assert not list(tmp_path.glob(".shard-*")), "a temporary file was left behind"


def test_the_temporary_files_of_writers_that_died_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".shard-{int(dead.stdout)}-abc.tmp"
    live = tmp_path / f".shard-{os.getpid()}-abc.tmp"
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    remove_stale_writes(tmp_path)
    assert not stale.exists() and live.exists()


def test_shards_hold_a_hundredth_of_the_run_within_bounds():
    assert shard_size_for(1) == 8
    assert shard_size_for(5_000) == 50
    assert shard_size_for(10_000_000) == 1024


def test_ray_extraction_takes_paths_and_checks_its_settings(resnet18):
    with pytest.raises(ValueError, match="shard_size"):
        RayExtractor(shard_size=0)
    with pytest.raises(TypeError, match="by path"):
        RayExtractor()(resnet18, [b"bytes"], progress=False)
