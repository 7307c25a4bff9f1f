import json

import pytest

from simlib.cli import main

from .conftest import scene


@pytest.fixture
def collection_file(photo_folder, resnet18_weights, tmp_path, capsys):
    (photo_folder / "broken.jpg").write_text("not a jpeg")
    output = tmp_path / "photos.simlib"
    code = main(["index", str(photo_folder), "-o", str(output), "--backbone", "resnet18",
                 "--weights", str(resnet18_weights), "-q"])
    assert code == 0
    return output


def test_index_reports_skipped_files_and_writes_the_good_ones(collection_file, capsys):
    out = capsys.readouterr().out
    assert "Skipped 1 file(s):" in out and "broken.jpg: not an image format Pillow can read" in out
    assert "Indexed 12 image(s)" in out and "Match threshold" in out and collection_file.exists()


def test_search_prints_a_table_with_reasons(collection_file, photo_folder, resnet18_weights, capsys):
    capsys.readouterr()
    code = main(["search", str(collection_file), str(photo_folder / "scene-01.jpg"), "-k", "3",
                 "--weights", str(resnet18_weights)])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].startswith("Query: ") and "1 star (from sidecar scene-01.jpg.xmp xmp:Rating)" in out[0]
    assert out[2].split() == ["rank", "similarity", "rating", "reason", "path"]
    assert out[3].split()[:4] == ["1", "1.000", "1", "visual"] and out[3].endswith("scene-01.jpg")


def test_search_json_has_the_documented_shape(collection_file, photo_folder, resnet18_weights, capsys, tmp_path):
    scene(500).save(tmp_path / "unrelated.png")
    capsys.readouterr()
    main(["search", str(collection_file), str(tmp_path / "unrelated.png"), "-k", "2", "--json",
          "--threshold", "1.5", "--query-rating", "4", "--weights", str(resnet18_weights)])
    payload = json.loads(capsys.readouterr().out)
    assert payload["query"] == str(tmp_path / "unrelated.png")
    assert len(payload["results"]) == 2
    for result in payload["results"]:
        assert set(result) == {"path", "similarity", "rating", "reason"}
        assert result["reason"] == "rating-fallback"
    assert [r["rating"] for r in payload["results"]][0] == 4.0  # one image is rated 4; next come 3s and 5s
    assert payload["results"][1]["rating"] in (3.0, 5.0)


def test_info_describes_the_collection(collection_file, capsys):
    capsys.readouterr()
    assert main(["info", str(collection_file)]) == 0
    out = capsys.readouterr().out
    assert "12 images, 1 skipped" in out and "resnet18 (512-d)" in out and "HNSW M=32" in out
    assert main(["info", str(collection_file), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 12 and summary["ratings"]["unrated"] == 2


def test_add_appends_to_an_existing_collection(collection_file, resnet18_weights, tmp_path, capsys):
    extra = tmp_path / "extra"
    extra.mkdir()
    scene(77).save(extra / "new.jpg")
    capsys.readouterr()
    assert main(["index", str(extra), "-o", str(collection_file), "--add", "--weights", str(resnet18_weights), "-q"]) == 0
    assert "Added 1 image(s); the collection holds 13" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["search", "{c}", "{missing}"], "file not found"),
        (["search", "{missing}", "{missing}"], "no such collection"),
        (["search", "{c}", "{text}"], "not an image format"),
        (["search", "{c}", "{query}", "-k", "0"], "k must be >= 1"),
    ],
)
def test_bad_input_exits_non_zero_with_a_clear_message(argv, message, collection_file, photo_folder, resnet18_weights,
                                                       tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    names = {"c": collection_file, "missing": tmp_path / "missing.jpg", "text": tmp_path / "notes.txt",
             "query": photo_folder / "scene-01.jpg"}
    code = main([a.format(**names) for a in argv] + ["--weights", str(resnet18_weights)])
    assert code == 1
    assert message in capsys.readouterr().err


def test_an_empty_folder_is_an_error_not_a_crash(tmp_path, resnet18_weights, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["index", str(tmp_path / "empty"), "-o", str(tmp_path / "x.simlib"), "--backbone", "resnet18",
                 "--weights", str(resnet18_weights), "-q"])
    assert code == 1 and "at least 2 readable images" in capsys.readouterr().err


def test_search_under_a_folder_returns_only_images_in_it(collection_file, photo_folder, resnet18_weights, capsys):
    capsys.readouterr()
    assert main(["search", str(collection_file), str(photo_folder / "scene-01.jpg"), "-k", "12", "--json",
                 "--under", str(photo_folder / "sub"), "--weights", str(resnet18_weights)]) == 0
    paths = [r["path"] for r in json.loads(capsys.readouterr().out)["results"]]
    assert len(paths) == 4 and all("/sub/" in p for p in paths)
