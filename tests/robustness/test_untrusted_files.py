"""Collection and weights files written by someone else: nothing in them is unpickled, nothing they contain runs,
a forged FAISS index is refused before FAISS reads it, and a tampered member is refused with a clear message."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import struct
import zipfile

import faiss
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simlib import Collection
from simlib.archive import MAX_EF, CollectionFileError, check_index_bytes, read_collection
from simlib.backbones import WeightsMismatchError, load_backbone
from simlib.manifest import read_manifest
from simlib.index import IndexParams, build_index, index_to_bytes

from ..conftest import scene

MEMBERS = ["features.npy", "vectors.npy", "stars.npy", "pca_mean.npy", "pca_components.npy", "pca_explained_variance.npy",
           "pca_explained_variance_ratio.npy", "pca_settings.npy", "index.faiss"]


class Payload:
    """Unpickling this creates the marker file: code from the file would have run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


@pytest.fixture(scope="module")
def saved(resnet18, tmp_path_factory):
    folder = tmp_path_factory.mktemp("untrusted")
    for seed in range(400, 406):
        scene(seed).save(folder / f"{seed}.jpg", quality=90)
    return Collection.build(folder, resnet18, progress=False, num_workers=0).save(folder / "good.simlib")


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "code-ran"


def forge(source, target, members: dict[str, bytes | None] | None = None, manifest=None, compress=frozenset()):
    """A copy of collection `source` with members replaced (None: removed) and their checksums recomputed, as an
    attacker who rewrites the whole file would; `manifest(m)` may alter the manifest last."""
    with zipfile.ZipFile(source) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
    document = json.loads(contents.pop("manifest.json"))
    for name, data in (members or {}).items():
        if data is None:
            contents.pop(name, None)
            document["files"].pop(name, None)
        else:
            contents[name] = data
            document["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    if manifest is not None:
        manifest(document)
    contents["manifest.json"] = json.dumps(document).encode()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in contents.items():
            archive.writestr(name, data, zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED)
    return target


# ------------------------------------------------------------------------------------------ pickles


def test_the_payload_runs_code_when_unpickled_so_the_marker_detects_it(marker):
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("name", [m for m in MEMBERS if m.endswith(".npy")])
def test_a_pickled_array_member_is_refused_and_never_run(name, saved, tmp_path, marker):
    buffer = io.BytesIO()
    np.save(buffer, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    forged = forge(saved, tmp_path / "evil.simlib", {name: buffer.getvalue()})
    with pytest.raises(CollectionFileError, match=f"member {name} cannot be parsed.*allow_pickle=False"):
        Collection.load(forged)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["index.faiss", "manifest.json"])
def test_a_pickle_in_place_of_the_index_or_manifest_is_refused_and_never_run(where, saved, tmp_path, marker):
    evil = pickle.dumps(Payload(marker))
    if where == "index.faiss":
        forged = forge(saved, tmp_path / "evil.simlib", {"index.faiss": evil})
        expected = "member index.faiss cannot be parsed .*index type .* is not one simlib writes"
    else:
        forged = tmp_path / "evil.simlib"
        with zipfile.ZipFile(forged, "w") as archive:
            archive.writestr("manifest.json", evil)
        expected = "manifest.json is unreadable"
    with pytest.raises(CollectionFileError, match=expected):
        Collection.load(forged)
    assert not marker.exists()


def test_an_unlisted_pickle_member_is_ignored_and_never_run(saved, tmp_path, marker, resnet18):
    forged = forge(saved, tmp_path / "extra.simlib")
    with zipfile.ZipFile(forged, "a") as archive:
        archive.writestr("collection.pkl", pickle.dumps(Payload(marker)))
    assert len(Collection.load(forged, resnet18)) == 6
    assert not marker.exists()


@pytest.mark.parametrize("layout", ["torch-zip", "plain-pickle"])
def test_a_weights_file_holding_code_is_refused_and_never_run(layout, tmp_path, marker, saved):
    weights = tmp_path / "resnet18-evil.pth"
    if layout == "torch-zip":
        torch.save({"conv1.weight": torch.zeros(1), "payload": Payload(marker)}, weights)
    else:
        weights.write_bytes(pickle.dumps({"conv1.weight": Payload(marker)}))
    with pytest.raises(WeightsMismatchError, match="not a loadable weights file"):
        load_backbone("resnet18", weights, device="cpu")
    with pytest.raises(WeightsMismatchError, match="not a loadable weights file"):
        Collection.load(saved, weights=weights)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ tampering


@pytest.mark.parametrize("name", MEMBERS)
def test_a_member_changed_after_saving_fails_its_checksum_with_a_clear_message(name, saved, tmp_path):
    with zipfile.ZipFile(saved) as archive:
        contents = {n: archive.read(n) for n in archive.namelist()}
    data = bytearray(contents[name])
    data[len(data) // 2] ^= 0xFF
    contents[name] = bytes(data)  # one bit flipped; the manifest keeps the original checksum
    tampered = tmp_path / "tampered.simlib"
    with zipfile.ZipFile(tampered, "w") as archive:
        for n, d in contents.items():
            archive.writestr(n, d)
    with pytest.raises(CollectionFileError, match=f"checksum mismatch for {name}: the file was modified or corrupted"):
        Collection.load(tampered)


def test_a_manifest_that_misstates_a_size_is_refused(saved, tmp_path):
    forged = forge(saved, tmp_path / "size.simlib",
                   manifest=lambda m: m["files"]["vectors.npy"].update(bytes=m["files"]["vectors.npy"]["bytes"] + 1))
    with pytest.raises(CollectionFileError, match="member vectors.npy has .* bytes, the manifest says"):
        read_collection(forged)


def test_a_compressed_member_is_refused_unread_so_a_zip_bomb_cannot_inflate(saved, tmp_path):
    bomb = np.zeros((1 << 20, 64), np.float32)  # 256 MB of zeros deflate to about 250 kB
    buffer = io.BytesIO()
    np.save(buffer, bomb)
    forged = forge(saved, tmp_path / "bomb.simlib", {"features.npy": buffer.getvalue()}, compress={"features.npy"})
    assert forged.stat().st_size < 2**20
    with pytest.raises(CollectionFileError, match="member features.npy is compressed"):
        read_collection(forged)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.__setitem__("images", "not a list"), "malformed manifest .*expected a list"),
        (lambda m: m["images"][0].pop("rating_values"), "malformed manifest .*'rating_values' is missing"),
        (lambda m: m["config"].__setitem__("threshold", "high"), "malformed manifest .*threshold must be a number"),
        (lambda m: m["images"][0].__setitem__("rating", "five"), "malformed manifest .*expected a number"),
        (lambda m: m.__setitem__("calibration", None), "malformed manifest .*expected an object"),
        (lambda m: m["config"]["index"].__setitem__("ef_search", 2**31 - 1), "ef_search must be within 1..1048576"),
        (lambda m: m.__setitem__("backbone", {"name": "resnet18"}), "the backbone name and weights checksum are missing"),
        (lambda m: m["images"].pop(), "inconsistent collection: 5 image records for a search core of 6"),
        (lambda m: m["images"][0].__setitem__("rating", 4), "the ratings array disagrees with the image records"),
    ],
    ids=["images-not-a-list", "record-missing-field", "threshold-not-a-number", "rating-not-a-number",
         "calibration-null", "ef-search-2^31", "backbone-without-checksum", "a-record-too-few", "rating-changed"],
)
def test_a_malformed_manifest_is_refused_with_a_clear_message(change, message, saved, tmp_path, resnet18):
    forged = forge(saved, tmp_path / "malformed.simlib", manifest=change)
    with pytest.raises(CollectionFileError, match=message):
        Collection.load(forged, resnet18)
    if "inconsistent" not in message and "disagrees" not in message:  # the manifest alone shows these
        with pytest.raises(CollectionFileError, match=message):
            read_manifest(forged)  # what `simlib info` and the app read


def test_arrays_of_the_wrong_type_are_refused(saved, tmp_path, resnet18):
    buffer = io.BytesIO()
    np.save(buffer, np.full((6, 512), "x"))
    forged = forge(saved, tmp_path / "strings.simlib", {"features.npy": buffer.getvalue()})
    with pytest.raises(CollectionFileError, match="inconsistent collection: features must be float32"):
        Collection.load(forged, resnet18)


# ------------------------------------------------------------------------------------------ forged FAISS indexes


def hnsw_bytes(n: int = 40, d: int = 8) -> bytes:
    vectors = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    return index_to_bytes(build_index(vectors, IndexParams(M=4)))


def hnsw_fields(data: bytes) -> dict[str, int]:
    """Byte offsets of the HNSW fields a forger would change (layout of faiss/impl/index_write.cpp)."""
    position = 4 + 4 + 8 * 3 + 1 + 4  # fourcc, d, ntotal, two unused, is_trained, metric
    offsets = {}
    for name, itemsize in (("probabilities", 8), ("cumulative", 4), ("levels", 4), ("offsets", 8), ("neighbours", 4)):
        offsets[name] = position
        (count,) = struct.unpack_from("<Q", data, position)
        position += 8 + count * itemsize
    offsets["entry"], offsets["ef_search"] = position, position + 12
    return offsets


def patched(data: bytes, offset: int, fmt: str, value) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def forged_indexes() -> dict[str, tuple[bytes, str]]:
    data = hnsw_bytes()
    fields = hnsw_fields(data)
    neighbours = fields["neighbours"] + 8
    levels = np.frombuffer(data, "<i4", 40, fields["levels"] + 8)
    low, high = int(np.argmin(levels)), int(np.argmax(levels))
    # a link on the top level of the highest node, pointing to a node that only lives on level 0
    cumulative = np.frombuffer(data, "<i4", struct.unpack_from("<Q", data, fields["cumulative"])[0], fields["cumulative"] + 8)
    node_start = int(np.frombuffer(data, "<u8", 41, fields["offsets"] + 8)[high])
    top_slot = neighbours + 4 * (node_start + int(cumulative[levels[high] - 1]))
    return {
        "vector-length-2^39": (patched(data, fields["neighbours"], "<Q", 1 << 39), "claims"),
        "neighbour-out-of-range": (patched(data, neighbours, "<i", 40 + 5), "neighbour id lies outside the graph"),
        "negative-neighbour": (patched(data, neighbours, "<i", -7), "neighbour id lies outside the graph"),
        "link-to-absent-level": (patched(data, top_slot, "<i", low), "links to a node absent from that level"),
        "ef-search-2^31": (patched(data, fields["ef_search"], "<i", 2**31 - 1), f"outside 1..{MAX_EF}"),
        "entry-point-out-of-range": (patched(data, fields["entry"], "<i", 1000), "entry point"),
        "trailing-bytes": (data + b"\x00" * 8, "unexpected bytes after the index"),
        "truncated": (data[:-10], "claims"),
        "other-index-type": (faiss.serialize_index(faiss.IndexLSH(8, 16)).tobytes(), "is not one simlib writes"),
    }


@pytest.mark.parametrize("kind", list(forged_indexes()))
def test_a_forged_faiss_index_is_refused_before_faiss_reads_it(kind, saved, tmp_path):
    data, message = forged_indexes()[kind]
    with pytest.raises(ValueError, match=message):
        check_index_bytes(data)
    forged = forge(saved, tmp_path / "forged.simlib", {"index.faiss": data})
    with pytest.raises(CollectionFileError, match="member index.faiss cannot be parsed"):
        read_collection(forged)


def test_an_index_for_a_different_number_of_images_is_refused(saved, tmp_path):
    forged = forge(saved, tmp_path / "count.simlib", {"index.faiss": hnsw_bytes(n=40, d=5)})
    with pytest.raises(CollectionFileError, match="the index holds 40 vectors, the collection 6"):
        read_collection(forged)


def test_indexes_simlib_writes_pass_the_check():
    vectors = np.random.default_rng(1).standard_normal((500, 16)).astype(np.float32)
    for params in (IndexParams(M=32), IndexParams(M=2), IndexParams("exact")):
        check_index_bytes(index_to_bytes(build_index(vectors, params)), 500)
    check_index_bytes(index_to_bytes(faiss.IndexHNSWFlat(16, 32)), 0)


INDEX = hnsw_bytes()


@settings(deadline=None, derandomize=True, database=None, max_examples=400)
@given(st.lists(st.tuples(st.integers(0, len(INDEX) - 1), st.binary(min_size=1, max_size=8)), min_size=1, max_size=4))
def test_a_mutated_index_is_refused_or_searches_safely(changes):
    data = bytearray(INDEX)
    for position, chunk in changes:
        data[position : position + len(chunk)] = chunk
    try:
        check_index_bytes(bytes(data), 40)
    except ValueError:
        return
    index = faiss.deserialize_index(np.frombuffer(bytes(data), dtype=np.uint8))
    distances, ids = index.search(np.ones((2, 8), np.float32), 5)
    assert ids.shape == (2, 5) and ((ids >= -1) & (ids < 40)).all()
