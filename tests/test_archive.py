import io
import json
import zipfile

import numpy as np
import pytest

from simlib import Collection
from simlib.archive import FORMAT_VERSION, CollectionFileError, read_collection, read_manifest


@pytest.fixture
def saved(resnet18, photo_folder, tmp_path):
    return Collection.build(photo_folder, resnet18, progress=False).save(tmp_path / "c.simlib")


def rewrite(path, change):
    """Copy the archive member by member, letting `change(name, data)` alter a member."""
    with zipfile.ZipFile(path) as source:
        members = {name: source.read(name) for name in source.namelist()}
    with zipfile.ZipFile(path, "w") as target:
        for name, data in members.items():
            target.writestr(name, change(name, data))


def test_manifest_records_what_a_reader_needs(saved):
    manifest = read_manifest(saved)
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["backbone"]["name"] == "resnet18" and len(manifest["backbone"]["weights_sha256"]) == 64
    assert manifest["config"]["pca_dim"] == 128 and manifest["pca"]["n_components"] == 11
    assert manifest["config"]["index"] == {"kind": "auto", "M": 32, "ef_construction": 200, "ef_search": 128}
    assert manifest["backbone"]["precision"] == "fp32"
    assert {"torch", "faiss", "numpy", "simlib"} <= set(manifest["library_versions"])
    assert len(manifest["images"]) == 12 and {"path", "rating", "rating_source"} <= set(manifest["images"][0])
    assert set(manifest["files"]) >= {"features.npy", "vectors.npy", "index.faiss", "pca_components.npy"}


def test_a_member_that_does_not_match_its_checksum_is_refused(saved):
    rewrite(saved, lambda name, data: data[:-4] + b"\x00\x00\x00\x00" if name == "vectors.npy" else data)
    with pytest.raises(CollectionFileError, match="checksum mismatch for vectors.npy"):
        read_collection(saved)


def test_a_newer_format_version_is_refused_with_advice(saved):
    def bump(name, data):
        if name != "manifest.json":
            return data
        manifest = json.loads(data)
        manifest["format_version"] = FORMAT_VERSION + 1
        return json.dumps(manifest)

    rewrite(saved, bump)
    with pytest.raises(CollectionFileError, match="format version 2 .* Rebuild"):
        Collection.load(saved)


def test_a_pickled_array_is_never_loaded(saved):
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    evil = buffer.getvalue()

    def swap(name, data):
        if name == "manifest.json":
            manifest = json.loads(data)
            import hashlib

            manifest["files"]["vectors.npy"] = {"sha256": hashlib.sha256(evil).hexdigest(), "bytes": len(evil)}
            return json.dumps(manifest)
        return evil if name == "vectors.npy" else data

    rewrite(saved, swap)
    with pytest.raises(CollectionFileError, match="vectors.npy cannot be parsed.*pickle"):
        read_collection(saved)


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04 broken"])
def test_files_that_are_not_collections_are_named(tmp_path, content):
    path = tmp_path / "x.simlib"
    path.write_bytes(content)
    with pytest.raises(CollectionFileError, match="x.simlib: not a simlib collection"):
        read_collection(path)


def test_missing_member_is_reported(saved):
    with zipfile.ZipFile(saved) as source:
        members = {n: source.read(n) for n in source.namelist() if n != "index.faiss"}
    with zipfile.ZipFile(saved, "w") as target:
        for name, data in members.items():
            target.writestr(name, data)
    with pytest.raises(CollectionFileError, match="index.faiss listed in the manifest is missing"):
        read_collection(saved)


def test_save_replaces_atomically_and_leaves_no_temporary_files(resnet18, photo_folder, saved):
    Collection.build(photo_folder, resnet18, progress=False).save(saved)
    assert [p.name for p in saved.parent.iterdir() if p.name.startswith(".")] == []
    assert read_collection(saved)[2].ntotal == 12
