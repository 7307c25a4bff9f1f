import numpy as np
import pytest
from PIL import Image

from simlib import Collection, CollectionError, SearchConfig, SearchCore
from simlib.archive import CollectionFileError

from .conftest import scene


@pytest.fixture
def built(resnet18, photo_folder):
    return Collection.build(photo_folder, resnet18, progress=False)


def photo(folder, i):
    """The path photo_folder gives scene i (every third scene lives in sub/)."""
    return folder / ("sub" if i % 3 == 0 else "") / f"scene-{i:02d}.jpg"


def stars_of(response):
    return [r.rating for r in response.results]


def test_build_indexes_every_image_under_the_folder(built, photo_folder):
    assert len(built) == 12
    assert {r.path for r in built.images} == {str(p) for p in photo_folder.rglob("*.jpg")}
    assert built.core.pca_.n_components_ == 11
    assert any("PCA keeps 11 dimensions" in note for note in built.notes)
    assert not any("whitening" in note for note in built.notes)


def test_whitening_a_pca_that_has_fewer_images_than_dimensions_is_warned_about(resnet18, photo_folder):
    whitened = Collection.build(photo_folder, resnet18, config=SearchConfig(whiten=True), progress=False)
    assert any("whitening fitted on 12 images" in note and "--whiten" in note for note in whitened.notes)


def test_an_indexed_photo_finds_itself_first_as_a_visual_match(built, photo_folder):
    response = built.search(photo(photo_folder, 4), k=3)
    assert not response.fallback
    assert response.results[0].path == str(photo(photo_folder, 4))
    assert response.results[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert [r.reason for r in response.results] == ["visual"] * 3
    assert [r.rank for r in response.results] == [1, 2, 3]


def test_results_carry_the_rating_read_from_sidecars(built, photo_folder):
    result = built.search(photo(photo_folder, 5), k=1).results[0]
    assert result.rating == 5.0
    unrated = built.search(photo(photo_folder, 11), k=1).results[0]
    assert unrated.rating is None


def test_below_threshold_falls_back_to_closest_rating_then_similarity(built, photo_folder):
    response = built.search(photo(photo_folder, 1), k=4, threshold=1.5, query_rating=3)
    assert response.fallback and "below the match threshold 1.500" in response.message
    assert all(r.reason == "rating-fallback" for r in response.results)
    # ratings 0..5 cycle over scenes 0..9: two images rated 3, then two rated 2 and one rated 4
    assert stars_of(response)[:2] == [3.0, 3.0]
    assert set(stars_of(response)[2:]) <= {2.0, 4.0}
    same_distance = [r for r in response.results if r.rating in (2.0, 4.0)]
    assert [r.similarity for r in same_distance] == sorted((r.similarity for r in same_distance), reverse=True)


def test_query_rating_is_read_from_the_query_metadata(built, photo_folder):
    response = built.search(photo(photo_folder, 2), k=2, threshold=1.5)
    assert response.query_rating.stars == 2.0 and stars_of(response) == [2.0, 2.0]


def test_unrated_query_falls_back_to_highest_rated_and_says_so(built, tmp_path):
    query = tmp_path / "new.png"
    scene(99).save(query)
    response = built.search(query, k=3, threshold=1.5)
    assert response.query_rating.unrated and "no rating" in response.message
    assert stars_of(response) == [5.0, 4.0, 3.0]


def test_min_rating_filters_visual_and_fallback_results(built, photo_folder):
    visual = built.search(photo(photo_folder, 0), k=5, min_rating=3)
    assert all(r.rating is not None and r.rating >= 3 for r in visual.results)
    assert len(visual.results) == 4  # scenes rated 3, 4, 5, 3: fewer than k pass the filter
    fallback = built.search(photo(photo_folder, 0), k=10, min_rating=4, threshold=1.5, query_rating=0)
    assert stars_of(fallback) == [4.0, 5.0]


def test_default_threshold_is_calibrated_from_the_collection(built):
    calibration = built.core.calibration_
    assert calibration.n_match == 12
    assert calibration.nonmatch_median < built.threshold < calibration.match_median
    assert built.config.threshold is None


def test_a_configured_threshold_overrides_calibration(resnet18, photo_folder):
    collection = Collection.build(photo_folder, resnet18, SearchConfig(threshold=0.42), progress=False)
    assert collection.threshold == 0.42


def test_broken_files_are_reported_and_the_rest_indexed(resnet18, photo_folder):
    (photo_folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (photo_folder / "empty.png").write_bytes(b"")
    collection = Collection.build(photo_folder, resnet18, progress=False)
    assert len(collection) == 12
    assert sorted(e.path.rsplit("/", 1)[1] for e in collection.errors) == ["broken.jpg", "empty.png"]


def test_add_without_refit_keeps_pca_and_threshold(built, tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    for i in range(20, 23):
        scene(i).save(extra / f"extra-{i}.jpg")
    before_components, before_threshold = built.core.pca_.components_.copy(), built.threshold
    report = built.add(extra, progress=False)
    assert report.added == 3 and len(built) == 15 and built.core.index_.ntotal == 15
    assert np.array_equal(built.core.pca_.components_, before_components) and built.threshold == before_threshold
    assert built.search(extra / "extra-21.jpg", k=1).results[0].path == str(extra / "extra-21.jpg")
    again = built.add(extra, progress=False)
    assert again.added == 0 and again.already_present == 3 and len(built) == 15


def test_add_with_refit_learns_again_from_everything(built, tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    for i in range(30, 40):
        scene(i).save(extra / f"extra-{i}.jpg")
    built.add(extra, refit=True, progress=False)
    core = built.core
    assert core.pca_.n_samples_ == 22 and core.pca_.n_components_ == 21 and core.calibration_.n_match == 22


def test_one_readable_image_is_a_clear_error(resnet18, tmp_path):
    scene(0).save(tmp_path / "only.jpg")
    (tmp_path / "bad.jpg").write_text("nope")
    with pytest.raises(CollectionError, match=r"at least 2 readable images to fit PCA, got 1 \(1 files skipped\)"):
        Collection.build(tmp_path, resnet18, progress=False)


def test_save_and_load_give_identical_search_results(built, photo_folder, tmp_path, resnet18):
    path = built.save(tmp_path / "photos.simlib")
    loaded = Collection.load(path, resnet18)
    query = photo(photo_folder, 7)
    assert loaded.search(query, k=5).to_dict() == built.search(query, k=5).to_dict()
    assert loaded.errors == built.errors and loaded.threshold == built.threshold
    assert [r.rating for r in loaded.images] == [r.rating for r in built.images]


def test_loading_with_other_weights_is_refused(built, tmp_path, efficientnet):
    path = built.save(tmp_path / "photos.simlib")
    with pytest.raises(CollectionError, match="built with resnet18"):
        Collection.load(path, efficientnet)


def test_saving_over_a_folder_that_is_not_a_collection_is_refused(built, tmp_path):
    with pytest.raises(CollectionFileError, match="a folder that is not a simlib collection"):
        built.save(tmp_path)
    assert not (tmp_path / "lock").exists()


def test_rating_weight_pulls_results_towards_the_query_rating(resnet18, photo_folder):
    heavy = Collection.build(photo_folder, resnet18, SearchConfig(rating_weight=10.0), progress=False)
    response = heavy.search(photo(photo_folder, 0), k=3, query_rating=5, threshold=-1)
    assert stars_of(response)[:2] == [5.0, 4.0]
    pure = Collection.build(photo_folder, resnet18, progress=False)
    assert pure.search(photo(photo_folder, 0), k=1).results[0].path.endswith("scene-00.jpg")


def test_queries_may_be_bytes_or_pil_images(built, photo_folder):
    path = photo(photo_folder, 8)
    by_bytes = built.search(path.read_bytes(), k=1, name="upload.jpg")
    by_image = built.search(Image.open(path), k=1)
    assert by_bytes.query == "upload.jpg"
    assert by_bytes.results[0].path == by_image.results[0].path == str(path)


def test_query_rating_out_of_range_is_refused(built, photo_folder):
    with pytest.raises(ValueError, match="within 0..5"):
        built.search(photo(photo_folder, 0), query_rating=9)


def test_adding_to_a_copy_leaves_the_original_untouched(built, tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    scene(50).save(extra / "extra-50.jpg")
    twin = built.copy()
    twin.add(extra, progress=False)
    assert len(twin) == 13 and twin.core.index_.ntotal == 13
    assert len(built) == 12 and built.core.index_.ntotal == 12 and len(built.core.vectors_) == 12
    query = extra / "extra-50.jpg"
    assert twin.search(query, k=1).results[0].path == str(query)
    assert all(r.path != str(query) for r in built.search(query, k=12).results)


def test_copy_with_rating_weight_rebuilds_only_the_index(resnet18, photo_folder, monkeypatch):
    pure = Collection.build(photo_folder, resnet18, progress=False)
    reference = Collection.build(photo_folder, resnet18, SearchConfig(rating_weight=10.0), progress=False)
    monkeypatch.setattr("simlib.collection.extract_features", None)  # any feature extraction would fail
    heavy = pure.copy(rating_weight=10.0)
    assert heavy.config.rating_weight == 10.0 and pure.config.rating_weight == 0.0
    assert heavy.features is pure.features and heavy.core.index_.d == pure.core.index_.d + 1
    query = photo(photo_folder, 0)
    assert heavy.search(query, k=3, query_rating=5, threshold=-1).to_dict() == reference.search(
        query, k=3, query_rating=5, threshold=-1
    ).to_dict()


def test_a_folder_filter_keeps_results_under_that_folder(built, photo_folder):
    response = built.search(photo(photo_folder, 4), k=12, under=photo_folder / "sub")
    assert len(response.results) == 4 and all("/sub/" in r.path for r in response.results)
    fallback = built.search(photo(photo_folder, 4), k=12, under=photo_folder / "sub", threshold=1.5, query_rating=3)
    assert fallback.fallback and all("/sub/" in r.path for r in fallback.results)
    assert built.search(photo(photo_folder, 4), k=3, under=photo_folder / "elsewhere").results == []


def test_excluded_ids_never_come_back(built, photo_folder):
    query = photo(photo_folder, 4)
    first = built.search(query, k=1).results[0]
    rest = built.search(query, k=11, exclude=[first.id], threshold=-np.inf)
    assert len(rest.results) == 11 and first.id not in [r.id for r in rest.results]


def test_a_collection_assembled_from_a_core_searches_but_cannot_be_saved_or_refitted(built, photo_folder, tmp_path):
    core = SearchCore.from_state(built.config, built.core.pca_, built.core.vectors_, built.core.stars_,
                                 calibration=built.core.calibration_)
    assembled = Collection(built.backbone, images=built.images, core=core)
    query = photo(photo_folder, 6)
    assert assembled.search(query, k=4).to_dict() == built.search(query, k=4).to_dict()
    with pytest.raises(CollectionError, match="holds no backbone features"):
        assembled.save(tmp_path / "assembled.simlib")
    with pytest.raises(CollectionError, match="records for a search core"):
        Collection(built.backbone, images=built.images[:3], core=core)
