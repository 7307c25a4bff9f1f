import json
import shutil
import subprocess
import sys

import pytest

from simlib.cli import main

from .conftest import ROOT, make_photo_folder, scene


@pytest.fixture(scope="module")
def indexed(resnet18_weights, tmp_path_factory):
    """One CLI-built collection over the photo folder for the whole module, and what `index` printed."""
    base = tmp_path_factory.mktemp("cli")
    folder = make_photo_folder(base / "photos")
    (folder / "broken.jpg").write_text("not a jpeg")
    output = base / "photos.simlib"
    result = subprocess.run([sys.executable, "-m", "simlib", "index", str(folder), "-o", str(output), "--backbone",
                             "resnet18", "--weights", str(resnet18_weights), "-q"], capture_output=True, text=True,
                            cwd=base)
    assert result.returncode == 0, result.stderr
    return folder, output, result.stdout


@pytest.fixture
def photo_folder(indexed):
    return indexed[0]


@pytest.fixture
def collection_file(indexed):
    return indexed[1]


def test_index_reports_skipped_files_and_writes_the_good_ones(indexed):
    out, collection_file = indexed[2], indexed[1]
    assert "Skipped 1 file(s):" in out and "broken.jpg: not an image format Pillow can read" in out
    assert "Indexed 12 image(s)" in out and "Match threshold" in out and collection_file.exists()
    assert "resnet18 512-d in fp32" in out and "exact index (chosen by size)" in out


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
    assert "12 images, 1 skipped" in out and "resnet18 (512-d, fp32)" in out and "exact index (chosen by size)" in out
    assert main(["info", str(collection_file), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 12 and summary["ratings"]["unrated"] == 2
    assert summary["score_norm"] == 0.5 and summary["norm_ranks"] == [4, 8]
    assert "mean similarity of the neighbours 5 to 9" in out


def test_score_normalisation_can_be_turned_off(photo_folder, resnet18_weights, tmp_path, capsys):
    output = tmp_path / "plain.simlib"
    assert main(["index", str(photo_folder), "-o", str(output), "--backbone", "resnet18", "--weights",
                 str(resnet18_weights), "--score-norm", "0", "-q"]) == 0
    capsys.readouterr()
    assert main(["info", str(output)]) == 0
    assert "on the match score (the best similarity)" in capsys.readouterr().out


def test_an_ivf_pq_collection_is_exact_until_it_can_train_and_says_so(photo_folder, resnet18_weights, tmp_path, capsys):
    output = tmp_path / "compressed.simlib"
    assert main(["index", str(photo_folder), "-o", str(output), "--backbone", "resnet18", "--weights",
                 str(resnet18_weights), "--index", "ivf-pq", "--nlist", "8", "--pq-m", "4", "--nprobe", "2",
                 "-q"]) == 0
    assert "exact index (ivf-pq from 9,984 vectors)" in capsys.readouterr().out
    assert main(["info", str(output)]) == 0
    assert "exact index (ivf-pq from 9,984 vectors)" in capsys.readouterr().out


def test_add_appends_to_an_existing_collection(collection_file, resnet18_weights, tmp_path, capsys):
    extra = tmp_path / "extra"
    extra.mkdir()
    scene(77).save(extra / "new.jpg")
    mine = shutil.copytree(collection_file, tmp_path / "mine.simlib")
    capsys.readouterr()
    assert main(["index", str(extra), "-o", str(mine), "--add", "--weights", str(resnet18_weights), "-q"]) == 0
    assert "Added 1 image(s); the collection holds 13" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["search", "{c}", "{missing}"], "missing.jpg: no such query file or folder"),
        (["search", "{missing}", "{missing}"], "missing.jpg: no such collection"),
        (["search", "{c}", "{text}"], "not an image format"),
        (["index", "{missing}", "-o", "{out}"], "missing.jpg: no such file or folder"),
    ],
)
def test_bad_input_exits_non_zero_with_a_clear_message(argv, message, collection_file, photo_folder, resnet18_weights,
                                                       tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    names = {"c": collection_file, "missing": tmp_path / "missing.jpg", "text": tmp_path / "notes.txt",
             "query": photo_folder / "scene-01.jpg", "out": tmp_path / "out.simlib"}
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


@pytest.mark.parametrize(
    "argv, message",
    [
        (["search", "c.simlib", "q.jpg", "-k", "0"], "argument -k: must be >= 1, got 0"),
        (["search", "c.simlib", "q.jpg", "--threshold", "nan"], "argument --threshold: must be a number, got NaN"),
        (["search", "c.simlib", "q.jpg", "--min-rating", "7"], "must be -1 (rejected) or within 0..5, got 7"),
        (["index", "d", "-o", "c.simlib", "--rating-weight", "inf"], "must be a finite number >= 0, got inf"),
        (["index", "d", "-o", "c.simlib", "--M", "three"], "argument --M: not an integer: 'three'"),
        (["index", "d", "-o", "c.simlib", "--index", "ivf-pq", "--nprobe", "0"], "argument --nprobe: must be >= 1"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


NO_TORCH = ("import sys\n"
            "for heavy in ('torch', 'torchvision', 'faiss', 'sklearn'):\n"
            "    sys.modules[heavy] = None  # importing any of them now raises ImportError\n"
            "from simlib.cli import main\n"
            "sys.exit(main(sys.argv[1:]))")


@pytest.mark.parametrize(
    "argv, code, expected",
    [
        (["--help"], 0, "Similar-image search"),
        (["info", "{c}"], 0, "12 images, 1 skipped"),
        (["search", "{c}", "q.jpg", "--threshold", "nan"], 2, "must be a number, got NaN"),
        (["search", "{c}", "{missing}"], 1, "no such query file or folder"),
        (["index", "{missing}", "-o", "x.simlib"], 1, "no such file or folder"),
    ],
)
def test_help_info_and_argument_errors_need_neither_torch_nor_faiss(argv, code, expected, collection_file, tmp_path):
    names = {"c": collection_file, "missing": tmp_path / "missing.jpg"}
    result = subprocess.run([sys.executable, "-c", NO_TORCH, *[a.format(**names) for a in argv]],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == code, result.stderr
    assert expected in result.stdout + result.stderr


def test_many_queries_give_what_each_query_gives_alone(collection_file, photo_folder, resnet18_weights, capsys,
                                                        tmp_path):
    (tmp_path / "broken.jpg").write_text("not a jpeg")
    queries = [photo_folder / "scene-01.jpg", tmp_path / "broken.jpg", photo_folder / "sub" / "scene-03.jpg"]
    capsys.readouterr()
    code = main(["search", str(collection_file), *map(str, queries), "--json", "-k", "4",
                 "--weights", str(resnet18_weights)])
    captured = capsys.readouterr()
    together = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 1 and "broken.jpg: not an image format" in captured.err  # the others are still answered
    assert len(together) == 2
    for query, answer in zip([queries[0], queries[2]], together):
        main(["search", str(collection_file), str(query), "--json", "-k", "4", "--weights", str(resnet18_weights)])
        alone = json.loads(capsys.readouterr().out)
        assert [r["path"] for r in answer["results"]] == [r["path"] for r in alone["results"]]
        assert [r["similarity"] for r in answer["results"]] == pytest.approx(
            [r["similarity"] for r in alone["results"]], abs=1e-5)
        assert answer["match_score"] == pytest.approx(alone["match_score"], abs=1e-5)
        assert {k: v for k, v in answer.items() if k not in ("results", "best_similarity", "match_score")} == {
            k: v for k, v in alone.items() if k not in ("results", "best_similarity", "match_score")}


def test_a_folder_of_queries_is_searched_query_by_query(collection_file, photo_folder, resnet18_weights, capsys):
    capsys.readouterr()
    assert main(["search", str(collection_file), str(photo_folder / "sub"), "-k", "1",
                 "--weights", str(resnet18_weights)]) == 0
    out = capsys.readouterr().out
    assert out.count("Query: ") == 4 and out.count("rank  similarity") == 4
