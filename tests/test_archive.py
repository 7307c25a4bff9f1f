"""Collection files of format version 1 (one zip): loading one says how to convert it, `simlib convert` turns it
into a collection folder with the same search results, and a damaged or forged file is refused while converting."""

import hashlib
import io
import json
import pickle
import zipfile

import numpy as np
import pytest

from simlib import Collection
from simlib.archive import read_collection
from simlib.cli import main
from simlib.store import CollectionFileError

from .format1 import write_format1


@pytest.fixture(scope="module")
def built(resnet18, tmp_path_factory):
    from .conftest import scene

    folder = tmp_path_factory.mktemp("format1") / "photos"
    folder.mkdir()
    for seed in range(600, 606):
        scene(seed).save(folder / f"{seed}.jpg", quality=90)
    return Collection.build(folder, resnet18, progress=False, num_workers=0)


@pytest.fixture
def old_file(built, tmp_path):
    return write_format1(built, tmp_path / "old.simlib")


def rewrite(path, change):
    """Copy the archive member by member, letting `change(name, data)` alter a member."""
    with zipfile.ZipFile(path) as source:
        members = {name: source.read(name) for name in source.namelist()}
    with zipfile.ZipFile(path, "w") as target:
        for name, data in members.items():
            target.writestr(name, change(name, data))


def test_loading_a_format1_file_says_how_to_convert_it(old_file):
    with pytest.raises(CollectionFileError, match=r"format version 1 .* Convert it with `simlib convert"):
        Collection.load(old_file)


def test_convert_gives_a_folder_with_the_same_search_results(old_file, built, resnet18_weights, tmp_path, capsys):
    assert main(["convert", str(old_file), str(tmp_path / "new.simlib"), "--weights", str(resnet18_weights)]) == 0
    assert "Converted" in capsys.readouterr().out
    converted = Collection.load(tmp_path / "new.simlib", built.backbone)
    query = built.images[2].path
    assert converted.search(query, k=4).to_dict() == built.search(query, k=4).to_dict()
    assert converted.root == built.root and all(r.stamp.sha256 is None for r in converted.images)
    assert main(["convert", str(old_file), str(tmp_path / "new.simlib")]) == 1  # never over an existing one


def test_a_member_that_does_not_match_its_checksum_is_refused(old_file):
    rewrite(old_file, lambda name, data: data[:-4] + b"\x00\x00\x00\x00" if name == "vectors.npy" else data)
    with pytest.raises(CollectionFileError, match="checksum mismatch for vectors.npy"):
        read_collection(old_file)


def test_a_pickled_array_member_is_refused_and_never_run(old_file, tmp_path):
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').close()",)

    buffer = io.BytesIO()
    np.save(buffer, np.array([Payload()], dtype=object), allow_pickle=True)
    evil = buffer.getvalue()
    assert pickle.loads(pickle.dumps(Payload())) is None and marker.exists()  # the control: unpickling runs it
    marker.unlink()

    def swap(name, data):
        if name == "manifest.json":
            manifest = json.loads(data)
            manifest["files"]["vectors.npy"] = {"sha256": hashlib.sha256(evil).hexdigest(), "bytes": len(evil)}
            return json.dumps(manifest)
        return evil if name == "vectors.npy" else data

    rewrite(old_file, swap)
    with pytest.raises(CollectionFileError, match="vectors.npy cannot be parsed.*pickle"):
        read_collection(old_file)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04 broken"])
def test_files_that_are_not_collections_are_named(tmp_path, content):
    path = tmp_path / "x.simlib"
    path.write_bytes(content)
    with pytest.raises(CollectionFileError, match="x.simlib: not a simlib collection"):
        read_collection(path)
