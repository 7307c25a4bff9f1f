import numpy as np
import pytest
import torch

from simlib.features import embed_query, extract_features, model_threads

from .conftest import scene


@pytest.fixture
def mixed_files(tmp_path):
    paths = []
    for i in range(5):
        path = tmp_path / f"ok-{i}.jpg"
        scene(i).save(path)
        paths.append(path)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    paths[2:2] = [tmp_path / "empty.jpg", tmp_path / "text.jpg"]
    return paths


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_are_reported_and_the_rest_are_embedded(resnet18, mixed_files, workers):
    result = extract_features(resnet18, mixed_files, batch_size=3, num_workers=workers, progress=False)
    assert result.indices.tolist() == [0, 1, 4, 5, 6]
    assert result.features.shape == (5, 512)
    assert [e.path for e in result.errors] == [str(mixed_files[2]), str(mixed_files[3])]
    assert "empty file" in result.errors[0].reason and "not an image" in result.errors[1].reason


def test_workers_and_batch_size_do_not_change_features(resnet18, mixed_files):
    serial = extract_features(resnet18, mixed_files, batch_size=1, num_workers=0, progress=False)
    parallel = extract_features(resnet18, mixed_files, batch_size=4, num_workers=2, progress=False)
    assert np.allclose(serial.features, parallel.features, atol=1e-5)


def test_progress_callback_counts_every_file(resnet18, mixed_files):
    calls = []
    extract_features(resnet18, mixed_files, batch_size=2, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (7, 7) and [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_query_path_matches_batch_path(resnet18, mixed_files):
    batch = extract_features(resnet18, mixed_files[:1], progress=False).features[0]
    assert np.allclose(embed_query(resnet18, mixed_files[0]), batch, atol=1e-5)


def test_empty_input_gives_empty_result(resnet18):
    result = extract_features(resnet18, [], progress=False)
    assert result.features.shape == (0, 512) and result.errors == []


def test_the_model_gets_the_cores_the_decoders_leave_and_torch_threads_are_restored(resnet18, mixed_files, monkeypatch):
    monkeypatch.setattr("simlib.features.os.cpu_count", lambda: 8)
    previous = torch.get_num_threads()
    torch.set_num_threads(6)
    try:
        assert [model_threads(w) for w in (0, 1, 2, 4, 7, 8, 12)] == [6, 6, 6, 4, 1, 1, 1]
        seen = []
        monkeypatch.setattr(resnet18, "embed", lambda batch, f=resnet18.embed: seen.append(torch.get_num_threads()) or f(batch))
        extract_features(resnet18, mixed_files, batch_size=2, num_workers=5, progress=False)
        assert seen and set(seen) == {3} and torch.get_num_threads() == 6
    finally:
        torch.set_num_threads(previous)
