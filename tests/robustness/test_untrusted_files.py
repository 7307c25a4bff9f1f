"""Collections and weights files written by someone else: nothing in them is unpickled, nothing they contain runs,
a forged FAISS index is refused before FAISS reads it, and a tampered file is refused with a clear message."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
import sqlite3
import struct
import zipfile

import faiss
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simlib import Collection
from simlib.archive import read_collection
from simlib.backbones import WeightsMismatchError, load_backbone
from simlib.index import MAX_EF, IndexParams, build_index, index_to_bytes
from simlib.index_check import check_index_bytes
from simlib.manifest import read_manifest
from simlib.store import CollectionFileError

from ..conftest import scene
from ..format1 import write_format1

DATA_FILES = ["features", "vectors", "stars", "index"]


class Payload:
    """Unpickling this creates the marker file: code from the file would have run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


@pytest.fixture(scope="module")
def built(resnet18, tmp_path_factory):
    folder = tmp_path_factory.mktemp("untrusted")
    (folder / "photos").mkdir()
    for seed in range(400, 406):
        scene(seed).save(folder / "photos" / f"{seed}.jpg", quality=90)
    return Collection.build(folder / "photos", resnet18, progress=False, num_workers=0)


@pytest.fixture(scope="module")
def saved(built):
    return built.save(built.root.parent / "good.simlib")


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "code-ran"


def forge(source, target, files: dict[str, bytes] | None = None, settings=None, sql: str | None = None,
          checksums: bool = True):
    """A copy of the collection folder `source` beside it with data files replaced, their chunk sizes and
    checksums recomputed (as an attacker who rewrites everything would; `checksums=False` keeps the old ones),
    `settings(s)` altering the settings, and `sql` run on the database last."""
    target = source.parent / target.name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    db = sqlite3.connect(target / "collection.sqlite")
    for kind, data in (files or {}).items():
        (name,) = db.execute("SELECT name FROM files WHERE kind = ?", (kind,)).fetchone()
        (target / name).write_bytes(data)
        if checksums:
            rows = db.execute("SELECT rows FROM files WHERE name = ?", (name,)).fetchone()[0]
            db.execute("DELETE FROM chunks WHERE file = ?", (name,))
            db.execute("INSERT INTO chunks VALUES (?, 0, ?, ?, ?)", (name, rows, len(data),
                                                                    hashlib.sha256(data).hexdigest()))
    if settings is not None:
        document = {key: json.loads(value) for key, value in db.execute("SELECT key, value FROM settings")}
        settings(document)
        db.execute("DELETE FROM settings")
        db.executemany("INSERT INTO settings VALUES (?, ?)", ((k, json.dumps(v)) for k, v in document.items()))
    if sql is not None:
        db.executescript(sql)
    db.commit()
    db.close()
    return target


def data_file(folder, kind):
    db = sqlite3.connect(folder / "collection.sqlite")
    (name,) = db.execute("SELECT name FROM files WHERE kind = ?", (kind,)).fetchone()
    db.close()
    return folder / name


# ------------------------------------------------------------------------------------------ pickles


def test_the_payload_runs_code_when_unpickled_so_the_marker_detects_it(marker):
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("kind", DATA_FILES)
def test_a_pickle_in_place_of_a_data_file_is_refused_and_never_run(kind, saved, tmp_path, marker, resnet18):
    forged = forge(saved, tmp_path / f"evil-{kind}.simlib", {kind: pickle.dumps(Payload(marker))})
    expected = "is not one simlib writes" if kind == "index" else "do not hold the 6 rows"
    with pytest.raises(CollectionFileError, match=expected):
        Collection.load(forged, resnet18)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["array", "setting"])
def test_a_pickle_in_place_of_an_array_or_a_setting_is_refused_and_never_run(where, saved, tmp_path, marker,
                                                                             resnet18):
    evil = pickle.dumps(Payload(marker))
    if where == "array":
        sql = (f"UPDATE arrays SET dtype = '|O', data = x'{evil.hex()}', "
               f"sha256 = '{hashlib.sha256(evil).hexdigest()}' WHERE name = 'pca_components'")
        expected = "array 'pca_components' has dtype '|O'"
    else:
        sql = f"UPDATE settings SET value = x'{evil.hex()}' WHERE key = 'config'"
        expected = "setting 'config' is not valid JSON"
    forged = forge(saved, tmp_path / f"evil-{where}.simlib", sql=sql)
    with pytest.raises(CollectionFileError, match=expected):
        Collection.load(forged, resnet18)
    assert not marker.exists()


def test_a_data_file_named_outside_the_collection_folder_is_refused(saved, tmp_path, resnet18):
    forged = forge(saved, tmp_path / "escape.simlib", sql="UPDATE files SET name = '../good.simlib/x' "
                                                          "WHERE kind = 'stars'")
    with pytest.raises(CollectionFileError, match="data file entry '../good.simlib/x'"):
        Collection.load(forged, resnet18)


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


@pytest.mark.parametrize("kind", DATA_FILES)
def test_a_data_file_changed_after_saving_fails_its_checksum_with_a_clear_message(kind, saved, tmp_path, resnet18):
    data = bytearray(data_file(saved, kind).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit flipped; the database keeps the original checksum
    forged = forge(saved, tmp_path / f"tampered-{kind}.simlib", {kind: bytes(data)}, checksums=False)
    message = f"checksum mismatch for {data_file(forged, kind).name} .*: the file was modified or corrupted"
    if kind == "features":  # search does not read the features: they are checked when something does
        collection = Collection.load(forged, resnet18)
        assert len(collection.search(collection.images[0].path, k=3).results) == 3
        with pytest.raises(CollectionFileError, match=message):
            collection.features
    else:
        with pytest.raises(CollectionFileError, match=message):
            Collection.load(forged, resnet18)


def test_a_database_that_misstates_a_size_is_refused(saved, tmp_path, resnet18):
    forged = forge(saved, tmp_path / "size.simlib", sql="UPDATE chunks SET bytes = bytes + 4 WHERE file LIKE 'vectors-%'")
    with pytest.raises(CollectionFileError, match="its chunks do not hold the 6 rows"):
        Collection.load(forged, resnet18)


def test_a_format1_file_with_a_compressed_member_is_refused_unread_so_a_zip_bomb_cannot_inflate(built, tmp_path):
    old = write_format1(built, tmp_path / "old.simlib")
    bomb = np.zeros((1 << 20, 64), np.float32)  # 256 MB of zeros deflate to about 250 kB
    buffer = io.BytesIO()
    np.save(buffer, bomb)
    with zipfile.ZipFile(old) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["features.npy"] = buffer.getvalue()
    with zipfile.ZipFile(old, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data, zipfile.ZIP_DEFLATED if name == "features.npy" else zipfile.ZIP_STORED)
    assert old.stat().st_size < 2**20
    with pytest.raises(CollectionFileError, match="member features.npy is compressed"):
        read_collection(old)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.__setitem__("notes", "not a list"), "malformed manifest .*expected a list"),
        (lambda s: s.pop("pca"), "malformed manifest .*'pca' is missing"),
        (lambda s: s["config"].__setitem__("threshold", "high"), "malformed manifest .*threshold must be a number"),
        (lambda s: s.__setitem__("calibration", None), "malformed manifest .*expected an object"),
        (lambda s: s["config"]["index"].__setitem__("ef_search", 2**31 - 1), "ef_search must be within 1..1048576"),
        (lambda s: s.__setitem__("backbone", {"name": "resnet18"}), "the backbone name and weights checksum are missing"),
        (lambda s: s.__setitem__("root", {"relative": 7}), "malformed manifest .*expected text"),
        (lambda s: s.__setitem__("rows", -3), "setting 'rows' must be an integer >= 0"),
        (lambda s: s.__setitem__("index_tail", [2**40]), "inconsistent collection: the index holds"),
    ],
    ids=["notes-not-a-list", "pca-missing", "threshold-not-a-number", "calibration-null", "ef-search-2^31",
         "backbone-without-checksum", "root-not-text", "rows-negative", "index-tail-too-long"],
)
def test_a_malformed_manifest_is_refused_with_a_clear_message(change, message, saved, tmp_path, resnet18):
    forged = forge(saved, tmp_path / "malformed.simlib", settings=change)
    with pytest.raises(CollectionFileError, match=message):
        Collection.load(forged, resnet18)
    if "inconsistent" not in message and "rows" not in message:  # the settings alone show these
        with pytest.raises(CollectionFileError, match=message):
            read_manifest(forged)  # what `simlib info` and the app read


def test_a_record_whose_rating_disagrees_with_the_ratings_file_is_refused_when_it_is_found(saved, tmp_path, resnet18):
    forged = forge(saved, tmp_path / "rating.simlib", sql="UPDATE images SET stars = 4 WHERE id = 0")
    collection = Collection.load(forged, resnet18)
    with pytest.raises(CollectionFileError, match="in its record and .* in the ratings array: the collection "
                                                  "was modified or corrupted"):
        collection.search(collection.images[0].path, k=6)


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
def test_a_forged_faiss_index_is_refused_before_faiss_reads_it(kind, saved, tmp_path, resnet18):
    data, message = forged_indexes()[kind]
    with pytest.raises(ValueError, match=message):
        check_index_bytes(data)
    forged = forge(saved, tmp_path / "forged.simlib", {"index": data})
    with pytest.raises(CollectionFileError, match=r"index index-\w+\.faiss cannot be parsed"):
        Collection.load(forged, resnet18)


def test_an_index_for_a_different_number_of_images_is_refused(saved, tmp_path, resnet18):
    forged = forge(saved, tmp_path / "count.simlib", {"index": hnsw_bytes(n=40, d=5)})
    with pytest.raises(CollectionFileError, match="the index holds 40 vectors, the collection 6"):
        Collection.load(forged, resnet18)


def test_indexes_simlib_writes_pass_the_check():
    vectors = np.random.default_rng(1).standard_normal((500, 16)).astype(np.float32)
    for params in (IndexParams(M=32), IndexParams(M=2), IndexParams("exact")):
        check_index_bytes(index_to_bytes(build_index(vectors, params)), 500)
    check_index_bytes(index_to_bytes(faiss.IndexHNSWFlat(16, 32)), 0)


# ------------------------------------------------------------------------------------------ forged IVF-PQ indexes


def ivf_pq_bytes(n: int = 40, d: int = 8, nlist: int = 4, pq_m: int = 2) -> bytes:
    """An IVF-PQ index as `simlib.index.build_index` makes one (flat quantizer, 8-bit PQ of residuals), small."""
    rng = np.random.default_rng(0)
    index = faiss.IndexIVFPQ(faiss.IndexFlatL2(d), d, nlist, pq_m, 8)
    index.train(rng.standard_normal((512, d)).astype(np.float32))
    index.add(rng.standard_normal((n, d)).astype(np.float32))
    index.nprobe = 2
    return index_to_bytes(index)


def ivf_fields(data: bytes, d: int = 8, nlist: int = 4) -> dict[str, int]:
    """Byte offsets of the IVF-PQ fields a forger would change (faiss/impl/index_write.cpp, IndexIVFPQ)."""
    header = 4 + 8 * 3 + 1 + 4  # d, ntotal, two unused, is_trained, metric
    offsets = {"nlist": 4 + header, "nprobe": 4 + header + 8, "quantizer": 4 + header + 16}
    offsets["direct_map"] = offsets["quantizer"] + 4 + header + 8 + nlist * d * 4
    offsets["nbits"] = offsets["direct_map"] + 1 + 8 + 1 + 8 + 16  # no map, its empty array, by_residual, code size
    offsets["lists"] = offsets["nbits"] + 8 + 8 + d * 256 * 4 + 4 + 8 + 8 + 4  # codebooks, ilar, nlist, code size
    sizes = np.frombuffer(data, "<u8", nlist, offsets["lists"] + 8)
    first = int(np.flatnonzero(sizes)[0])
    offsets["first_ids"] = offsets["lists"] + 8 + nlist * 8 + int(sizes[first]) * 2  # 2-byte codes, then ids
    offsets["first_size"] = offsets["lists"] + 8 + first * 8
    return offsets


def forged_ivf_indexes() -> dict[str, tuple[bytes, str]]:
    data = ivf_pq_bytes()
    fields = ivf_fields(data)
    ids = fields["first_ids"]
    (second,) = struct.unpack_from("<q", data, ids + 8)
    return {
        "nlist-2^40": (patched(data, fields["nlist"], "<Q", 1 << 40), "nlist"),
        "nprobe-above-nlist": (patched(data, fields["nprobe"], "<Q", 5), "nprobe"),
        "quantizer-of-another-type": (patched(data, fields["quantizer"], "<4s", b"IHNf"), "quantizer"),
        "direct-map": (patched(data, fields["direct_map"], "<b", 1), "direct map"),
        "pq-16-bits": (patched(data, fields["nbits"], "<Q", 16), "product quantizer"),
        "list-size-2^40": (patched(data, fields["first_size"], "<Q", 1 << 40), "the IVF lists hold"),
        "list-vector-length-2^39": (patched(data, fields["lists"], "<Q", 1 << 39), "claims"),
        "id-out-of-range": (patched(data, ids, "<q", 40 + 3), "id outside the index"),
        "negative-id": (patched(data, ids, "<q", -1), "id outside the index"),
        "id-twice": (patched(data, ids, "<q", second), "exactly once"),
        "trailing-bytes": (data + b"\x00" * 8, "unexpected bytes after the index"),
        "truncated": (data[:-10], "claims"),
        "ivf-flat": (index_to_bytes(_ivf_flat()), "is not one simlib writes"),
    }


def _ivf_flat() -> faiss.Index:
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(8), 8, 4)
    index.train(np.random.default_rng(0).standard_normal((256, 8)).astype(np.float32))
    return index


@pytest.mark.parametrize("kind", list(forged_ivf_indexes()))
def test_a_forged_ivf_pq_index_is_refused_before_faiss_reads_it(kind, saved, tmp_path, resnet18):
    data, message = forged_ivf_indexes()[kind]
    with pytest.raises(ValueError, match=message):
        check_index_bytes(data)
    forged = forge(saved, tmp_path / "forged.simlib", {"index": data})
    with pytest.raises(CollectionFileError, match=r"index index-\w+\.faiss cannot be parsed"):
        Collection.load(forged, resnet18)


def test_ivf_pq_indexes_simlib_writes_pass_the_check():
    check_index_bytes(ivf_pq_bytes(), 40)
    check_index_bytes(ivf_pq_bytes(n=3, nlist=64), 3)  # most lists empty: FAISS writes the sparse size table
    vectors = np.random.default_rng(1).standard_normal((IndexParams("ivf-pq", nlist=8).ivf_min_vectors, 16))
    check_index_bytes(index_to_bytes(build_index(vectors.astype(np.float32), IndexParams("ivf-pq", nlist=8, pq_m=4))))


IVF_INDEX = ivf_pq_bytes()


@settings(deadline=None, derandomize=True, database=None, max_examples=400)
@given(st.lists(st.tuples(st.integers(0, len(IVF_INDEX) - 1), st.binary(min_size=1, max_size=8)), min_size=1,
                max_size=4))
def test_a_mutated_ivf_pq_index_is_refused_or_searches_safely(changes):
    refused_or_searches_safely(IVF_INDEX, changes)


def refused_or_searches_safely(original: bytes, changes) -> None:
    """`original` (an index of 40 vectors of 8 dimensions) with `changes` (position, bytes) written over it is
    either refused by the check or searches returning only ids of its vectors."""
    data = bytearray(original)
    for position, chunk in changes:
        data[position : position + len(chunk)] = chunk
    try:
        check_index_bytes(bytes(data), 40)
    except ValueError:
        return
    index = faiss.deserialize_index(np.frombuffer(bytes(data), dtype=np.uint8))
    distances, ids = index.search(np.ones((2, 8), np.float32), 5)
    assert ids.shape == (2, 5) and ((ids >= -1) & (ids < 40)).all()


INDEX = hnsw_bytes()


@settings(deadline=None, derandomize=True, database=None, max_examples=400)
@given(st.lists(st.tuples(st.integers(0, len(INDEX) - 1), st.binary(min_size=1, max_size=8)), min_size=1, max_size=4))
def test_a_mutated_index_is_refused_or_searches_safely(changes):
    refused_or_searches_safely(INDEX, changes)
