"""Collection folders: a second save writes only what is new, loading maps what search does not need, removed
images never come back and are compacted away when they are many, paths follow the folder, and a writer that
would lose another's images is stopped."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3

import numpy as np
import pytest

import simlib.collection
from simlib import Collection, CollectionFileError
from simlib.cli import main
from simlib.index import index_to_bytes
from simlib.records import ImageRecord
from simlib.store import CollectionLockedError, locked

from .conftest import scene, xmp_packet


@pytest.fixture(scope="module")
def library(resnet18, tmp_path_factory):
    """Eight photos, every other one in 2024/, some rated by sidecars; and a collection built from them."""
    photos = tmp_path_factory.mktemp("library") / "photos"
    (photos / "2024").mkdir(parents=True)
    for i in range(8):
        path = photos / ("2024" if i % 2 else "") / f"{i}.jpg"
        scene(700 + i).save(path, quality=90)
        if i < 6:
            path.with_name(path.name + ".xmp").write_text(xmp_packet(i % 6))
    return Collection.build(photos, resnet18, progress=False, num_workers=0)


def copied(library, tmp_path):
    """The library's photos copied under tmp_path/lib/photos, built into a collection saved at tmp_path/lib."""
    photos = tmp_path / "lib" / "photos"
    shutil.copytree(library.root, photos)
    images = [ImageRecord(str(photos / os.path.relpath(r.path, library.root)), r.rating, r.stamp)
              for r in library.images]
    collection = Collection(library.backbone, images=images, features=library.features, core=library.core.copy(),
                            root=photos)
    collection.save(tmp_path / "lib" / "photos.simlib")
    return collection, photos, tmp_path / "lib" / "photos.simlib"


def extra_photos(folder, seeds):
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        scene(seed).save(folder / f"{seed}.jpg", quality=90)
    return folder


def files(folder):
    db = sqlite3.connect(folder / "collection.sqlite")
    named = dict(db.execute("SELECT kind, name FROM files"))
    chunks = dict(db.execute("SELECT file, count(*) FROM chunks GROUP BY file"))
    db.close()
    return {kind: (name, chunks[name], (folder / name).stat().st_size) for kind, name in named.items()}


def test_saving_again_appends_the_new_images_and_loading_gives_the_same_graph(library, resnet18, tmp_path):
    collection, photos, target = copied(library, tmp_path)
    before = files(target)
    collection.add(extra_photos(photos / "new", range(720, 723)), progress=False, num_workers=0)
    collection.save(target)
    after = files(target)
    for kind, width in (("features", 512), ("vectors", collection.core.dim)):
        assert after[kind][0] == before[kind][0] and after[kind][1] == 2  # the same file, one chunk more
        assert after[kind][2] == before[kind][2] + 3 * width * 4
    assert after["index"] == before["index"]  # not rewritten: loading adds the 3 new images to it again
    loaded = Collection.load(target, resnet18)
    assert index_to_bytes(loaded.core.index_) == index_to_bytes(collection.core.index_)
    query = photos / "new" / "721.jpg"
    assert loaded.search(query, k=5).to_dict() == collection.search(query, k=5).to_dict()
    assert loaded.search(query, k=1, threshold=-np.inf).results[0].path == str(query)  # the visual rule's graph


def test_the_index_is_rewritten_once_more_than_the_tail_limit_was_added(library, resnet18, tmp_path, monkeypatch):
    monkeypatch.setattr(simlib.collection, "INDEX_TAIL_LIMIT", 2)
    collection, photos, target = copied(library, tmp_path)
    before = files(target)["index"]
    collection.add(extra_photos(photos / "new", range(730, 733)), progress=False, num_workers=0)
    collection.save(target)
    assert files(target)["index"][0] != before[0]
    loaded = Collection.load(target, resnet18)
    assert loaded.core.batches_ == [] and index_to_bytes(loaded.core.index_) == index_to_bytes(collection.core.index_)


def test_loading_maps_the_features_without_reading_them(library, resnet18, tmp_path):
    _, photos, target = copied(library, tmp_path)
    loaded = Collection.load(target, resnet18)
    assert isinstance(loaded.features, np.memmap)
    assert not loaded.core.vectors_.flags.owndata and not loaded.core.vectors_.flags.writeable  # the file, mapped
    assert np.array_equal(loaded.features, library.features)


def test_removed_images_never_come_back_and_stay_removed_once_saved(library, resnet18, tmp_path):
    collection, photos, target = copied(library, tmp_path)
    report = collection.remove([photos / "2.jpg", photos / "nothing-here.jpg"])
    assert report.removed == 1 and report.not_found == [str(photos / "nothing-here.jpg")] and len(collection) == 7
    gone = {str(photos / "2.jpg")}
    searches = [dict(k=8, threshold=-np.inf), dict(k=8, threshold=np.inf, query_rating=2),
                dict(k=8, threshold=-np.inf, min_rating=1), dict(k=8, threshold=np.inf, under=photos)]
    collection.save(target)
    loaded = Collection.load(target, resnet18)
    query = library.features[2]  # the removed photo's own features
    for searched in (collection, loaded):
        for options in searches:
            found = {r.path for r in searched.search_features(query, **options).results}
            assert found and not found & gone, options
    assert len(loaded) == 7 and loaded.core.index_.ntotal == 8  # 1 of 8 removed: not worth compacting yet
    assert {r.path for r in loaded.images}.isdisjoint(gone)


def test_removing_a_folder_and_then_more_than_a_fifth_compacts(library, resnet18, tmp_path):
    collection, photos, target = copied(library, tmp_path)
    before = files(target)
    assert collection.remove(photos / "2024").removed == 4  # every other photo
    query = photos / "0.jpg"
    expected = collection.search(query, k=8, threshold=-np.inf).to_dict()
    assert collection.compaction_pays
    collection.save(target)
    loaded = Collection.load(target, resnet18)
    assert loaded.core.index_.ntotal == 4 and len(loaded.core) == 4
    assert all(files(target)[kind][0] != before[kind][0] for kind in before)  # every file written anew
    assert loaded.search(query, k=8, threshold=-np.inf).to_dict() == expected
    assert sorted(os.listdir(target)) == sorted(["collection.sqlite", "lock", *(f[0] for f in files(target).values())])


def test_moving_the_folder_with_its_collection_keeps_every_result_valid(library, resnet18, tmp_path):
    copied(library, tmp_path)
    shutil.move(tmp_path / "lib", tmp_path / "moved")
    loaded = Collection.load(tmp_path / "moved" / "photos.simlib", resnet18)
    query = tmp_path / "moved" / "photos" / "2024" / "5.jpg"
    results = loaded.search(query, k=8).results
    assert loaded.root == tmp_path / "moved" / "photos" and results[0].path == str(query)
    assert all(os.path.isfile(r.path) for r in results)


def test_a_folder_mounted_elsewhere_is_opened_with_root_and_a_missing_one_is_named(library, resnet18, tmp_path,
                                                                                  resnet18_weights, capsys):
    _, photos, target = copied(library, tmp_path)
    shutil.move(target, tmp_path / "photos.simlib")  # the collection kept elsewhere ...
    shutil.move(photos, tmp_path / "mnt")  # ... and the folder mounted at another place
    with pytest.raises(simlib.CollectionError, match="the folder it indexes is missing: neither .* --root NEW_PATH"):
        Collection.load(tmp_path / "photos.simlib", resnet18)
    loaded = Collection.load(tmp_path / "photos.simlib", resnet18, root=tmp_path / "mnt")
    assert loaded.search(tmp_path / "mnt" / "4.jpg", k=1).results[0].path == str(tmp_path / "mnt" / "4.jpg")
    capsys.readouterr()
    assert main(["search", str(tmp_path / "photos.simlib"), str(tmp_path / "mnt" / "4.jpg"), "-k", "1", "--json",
                 "--root", str(tmp_path / "mnt"), "--weights", str(resnet18_weights)]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["path"] == str(tmp_path / "mnt" / "4.jpg")


def test_a_writer_that_loaded_before_another_saved_is_refused_instead_of_losing_images(library, resnet18, tmp_path):
    _, photos, target = copied(library, tmp_path)
    first, second = Collection.load(target, resnet18), Collection.load(target, resnet18)
    first.add(extra_photos(tmp_path / "one", [740]), progress=False, num_workers=0)
    second.add(extra_photos(tmp_path / "two", [741]), progress=False, num_workers=0)
    first.save(target)
    with pytest.raises(CollectionFileError, match="another process saved to this collection since it was loaded"):
        second.save(target)
    assert len(Collection.load(target, resnet18)) == 9


def test_the_writer_lock_is_refused_to_another_process_while_held(tmp_path):
    folder = tmp_path / "c.simlib"
    go_read, go_write = os.pipe()
    answer_read, answer_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # another process, started before the lock was taken
        try:
            os.read(go_read, 1)
            try:
                with locked(folder, wait=False):
                    os.write(answer_write, b"taken")
            except CollectionLockedError as exc:
                os.write(answer_write, str(exc).encode())
        finally:
            os._exit(0)
    with locked(folder):
        os.write(go_write, b"x")
        answer = os.read(answer_read, 4096).decode()
        with locked(folder):  # the same thread may take it again
            pass
    os.waitpid(pid, 0)
    assert f"another process (pid {os.getpid()}) is writing this collection; try again" in answer
    with locked(folder, wait=False):
        pass


def test_a_collection_with_an_ivf_pq_index_loads_with_the_same_codes_and_results(library, resnet18, tmp_path):
    """A collection large enough to train IVF-PQ (records of files that need not exist: search never opens them)."""
    from simlib import IndexParams, SearchConfig, SearchCore
    from simlib.ratings import Rating
    from simlib.reduce import normalize_rows

    n = IndexParams("ivf-pq", nlist=64).ivf_min_vectors + 16
    rng = np.random.default_rng(5)
    features = normalize_rows(rng.standard_normal((n, 512)) * np.geomspace(3, 0.1, 512)).astype(np.float32)
    stars = rng.choice([np.nan, 1.0, 3.0, 5.0], n)
    config = SearchConfig(pca_dim=32, index=IndexParams("ivf-pq", nlist=64, pq_m=8, nprobe=8), threshold=0.5)
    core = SearchCore(config).fit(features, stars).set_calibration(library.core.calibration_)
    root = tmp_path / "photos"
    root.mkdir()
    images = [ImageRecord(str(root / f"{i}.jpg"), Rating(None if np.isnan(s) else float(s), None))
              for i, s in enumerate(stars)]
    collection = Collection(library.backbone, images=images, features=features, core=core, root=root)
    collection.save(tmp_path / "big.simlib")
    loaded = Collection.load(tmp_path / "big.simlib", resnet18)
    assert loaded.core.index_kind == "ivf-pq"
    assert index_to_bytes(loaded.core.index_) == index_to_bytes(collection.core.index_)
    for query in features[:3]:
        for options in ({}, {"min_rating": 5}, {"query_rating": 3, "threshold": 2.0}):
            found = loaded.search_features(query, k=5, **options)
            assert found.to_dict() == collection.search_features(query, k=5, **options).to_dict(), options
            assert len(found.results) == 5
