import numpy as np
import pytest
from PIL import Image

from simlib import Collection, CollectionError, SearchConfig, SearchCore
from simlib.archive import CollectionFileError

from .conftest import make_photo_folder, scene


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """`photo_folder`'s content once for the module, for the tests that only read it."""
    return make_photo_folder(tmp_path_factory.mktemp("collection") / "photos")


@pytest.fixture(scope="module")
def built(resnet18, photos):
    """One collection over `photos` for the tests that only search it; a test that adds to it or saves it (saving
    changes where its features are read from) builds its own with `fresh`."""
    return Collection.build(photos, resnet18, progress=False)


@pytest.fixture(scope="module")
def heavy(resnet18, photos):
    """`built` with the rating weighted 10 times, for the tests that only search it."""
    return Collection.build(photos, resnet18, SearchConfig(rating_weight=10.0), progress=False)


@pytest.fixture
def fresh(resnet18, photo_folder):
    return Collection.build(photo_folder, resnet18, progress=False)


def photo(folder, i):
    """The path photo_folder gives scene i (every third scene lives in sub/)."""
    return folder / ("sub" if i % 3 == 0 else "") / f"scene-{i:02d}.jpg"


def stars_of(response):
    return [r.rating for r in response.results]


def test_build_indexes_every_image_under_the_folder(built, photos):
    assert len(built) == 12
    assert {r.path for r in built.images} == {str(p) for p in photos.rglob("*.jpg")}
    assert built.core.pca_.n_components_ == 11
    assert any("PCA keeps 11 dimensions" in note for note in built.notes)
    assert not any("whitening" in note for note in built.notes)


def test_whitening_a_pca_that_has_fewer_images_than_dimensions_is_warned_about(resnet18, photos):
    whitened = Collection.build(photos, resnet18, config=SearchConfig(whiten=True), progress=False)
    assert any("whitening fitted on 12 images" in note and "--whiten" in note for note in whitened.notes)


def test_an_indexed_photo_finds_itself_first_as_a_visual_match(built, photos):
    response = built.search(photo(photos, 4), k=3)
    assert not response.fallback
    assert response.results[0].path == str(photo(photos, 4))
    assert response.results[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert [r.reason for r in response.results] == ["visual"] * 3
    assert [r.rank for r in response.results] == [1, 2, 3]


def test_results_carry_the_rating_read_from_sidecars(built, photos):
    result = built.search(photo(photos, 5), k=1).results[0]
    assert result.rating == 5.0
    unrated = built.search(photo(photos, 11), k=1).results[0]
    assert unrated.rating is None


def test_below_threshold_falls_back_to_closest_rating_then_similarity(built, photos):
    response = built.search(photo(photos, 1), k=4, threshold=1.5, query_rating=3)
    assert response.fallback and "below the match threshold 1.500" in response.message
    assert all(r.reason == "rating-fallback" for r in response.results)
    # ratings 0..5 cycle over scenes 0..9: two images rated 3, then two rated 2 and one rated 4
    assert stars_of(response)[:2] == [3.0, 3.0]
    assert set(stars_of(response)[2:]) <= {2.0, 4.0}
    same_distance = [r for r in response.results if r.rating in (2.0, 4.0)]
    assert [r.similarity for r in same_distance] == sorted((r.similarity for r in same_distance), reverse=True)


def test_query_rating_is_read_from_the_query_metadata(built, photos):
    response = built.search(photo(photos, 2), k=2, threshold=1.5)
    assert response.query_rating.stars == 2.0 and stars_of(response) == [2.0, 2.0]


def test_unrated_query_falls_back_to_highest_rated_and_says_so(built, tmp_path):
    query = tmp_path / "new.png"
    scene(99).save(query)
    response = built.search(query, k=3, threshold=1.5)
    assert response.query_rating.unrated and "no rating" in response.message
    assert stars_of(response) == [5.0, 4.0, 3.0]


def test_min_rating_filters_visual_and_fallback_results(built, photos):
    visual = built.search(photo(photos, 0), k=5, min_rating=3)
    assert all(r.rating is not None and r.rating >= 3 for r in visual.results)
    assert len(visual.results) == 4  # scenes rated 3, 4, 5, 3: fewer than k pass the filter
    fallback = built.search(photo(photos, 0), k=10, min_rating=4, threshold=1.5, query_rating=0)
    assert stars_of(fallback) == [4.0, 5.0]


def test_default_threshold_is_calibrated_from_the_collection(built):
    calibration = built.core.calibration_
    assert calibration.n_match == 12
    assert calibration.nonmatch_median < built.threshold < calibration.match_median
    assert built.config.threshold is None


def test_a_configured_threshold_overrides_calibration(resnet18, photos):
    collection = Collection.build(photos, resnet18, SearchConfig(threshold=0.42), progress=False)
    assert collection.threshold == 0.42


def test_broken_files_are_reported_and_the_rest_indexed(resnet18, photo_folder):
    (photo_folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (photo_folder / "empty.png").write_bytes(b"")
    collection = Collection.build(photo_folder, resnet18, progress=False)
    assert len(collection) == 12
    assert sorted(e.path.rsplit("/", 1)[1] for e in collection.errors) == ["broken.jpg", "empty.png"]


def test_add_without_refit_keeps_pca_and_threshold(fresh, tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    for i in range(20, 23):
        scene(i).save(extra / f"extra-{i}.jpg")
    before_components, before_threshold = fresh.core.pca_.components_.copy(), fresh.threshold
    report = fresh.add(extra, progress=False)
    assert report.added == 3 and len(fresh) == 15 and fresh.core.index_.ntotal == 15
    assert np.array_equal(fresh.core.pca_.components_, before_components) and fresh.threshold == before_threshold
    assert fresh.search(extra / "extra-21.jpg", k=1).results[0].path == str(extra / "extra-21.jpg")
    again = fresh.add(extra, progress=False)
    assert again.added == 0 and again.already_present == 3 and len(fresh) == 15


def test_add_with_refit_learns_again_from_everything(fresh, tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    for i in range(30, 40):
        scene(i).save(extra / f"extra-{i}.jpg")
    fresh.add(extra, refit=True, progress=False)
    core = fresh.core
    assert core.pca_.n_samples_ == 22 and core.pca_.n_components_ == 21 and core.calibration_.n_match == 22


def test_one_readable_image_is_a_clear_error(resnet18, tmp_path):
    scene(0).save(tmp_path / "only.jpg")
    (tmp_path / "bad.jpg").write_text("nope")
    with pytest.raises(CollectionError, match=r"at least 2 readable images to fit PCA, got 1 \(1 files skipped\)"):
        Collection.build(tmp_path, resnet18, progress=False)


def test_save_and_load_give_identical_search_results(fresh, photo_folder, tmp_path, resnet18):
    path = fresh.save(tmp_path / "photos.simlib")
    loaded = Collection.load(path, resnet18)
    query = photo(photo_folder, 7)
    assert loaded.search(query, k=5).to_dict() == fresh.search(query, k=5).to_dict()
    assert loaded.errors == fresh.errors and loaded.threshold == fresh.threshold
    assert [r.rating for r in loaded.images] == [r.rating for r in fresh.images]


def test_loading_with_other_weights_is_refused(fresh, tmp_path, efficientnet):
    path = fresh.save(tmp_path / "photos.simlib")
    with pytest.raises(CollectionError, match="built with resnet18"):
        Collection.load(path, efficientnet)


def test_saving_over_a_folder_that_is_not_a_collection_is_refused(fresh, tmp_path):
    with pytest.raises(CollectionFileError, match="a folder that is not a simlib collection"):
        fresh.save(tmp_path)
    assert not (tmp_path / "lock").exists()


def test_rating_weight_pulls_results_towards_the_query_rating(heavy, built, photos):
    response = heavy.search(photo(photos, 0), k=3, query_rating=5, threshold=-1)
    assert stars_of(response)[:2] == [5.0, 4.0]
    assert built.search(photo(photos, 0), k=1).results[0].path.endswith("scene-00.jpg")


def test_queries_may_be_bytes_or_pil_images(built, photos):
    path = photo(photos, 8)
    by_bytes = built.search(path.read_bytes(), k=1, name="upload.jpg")
    by_image = built.search(Image.open(path), k=1)
    assert by_bytes.query == "upload.jpg"
    assert by_bytes.results[0].path == by_image.results[0].path == str(path)


def test_query_rating_out_of_range_is_refused(built, photos):
    with pytest.raises(ValueError, match="within 0..5"):
        built.search(photo(photos, 0), query_rating=9)


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


def test_copy_with_rating_weight_rebuilds_only_the_index(built, heavy, photos, monkeypatch):
    monkeypatch.setattr("simlib.collection.extract_features", None)  # any feature extraction would fail
    copied = built.copy(rating_weight=10.0)
    assert copied.config.rating_weight == 10.0 and built.config.rating_weight == 0.0
    assert copied.features is built.features and copied.core.index_.d == built.core.index_.d + 1
    query = photo(photos, 0)
    assert copied.search(query, k=3, query_rating=5, threshold=-1).to_dict() == heavy.search(
        query, k=3, query_rating=5, threshold=-1
    ).to_dict()


def test_a_folder_filter_keeps_results_under_that_folder(built, photos):
    response = built.search(photo(photos, 4), k=12, under=photos / "sub")
    assert len(response.results) == 4 and all("/sub/" in r.path for r in response.results)
    fallback = built.search(photo(photos, 4), k=12, under=photos / "sub", threshold=1.5, query_rating=3)
    assert fallback.fallback and all("/sub/" in r.path for r in fallback.results)
    assert built.search(photo(photos, 4), k=3, under=photos / "elsewhere").results == []


def test_excluded_ids_never_come_back(built, photos):
    query = photo(photos, 4)
    first = built.search(query, k=1).results[0]
    rest = built.search(query, k=11, exclude=[first.id], threshold=-np.inf)
    assert len(rest.results) == 11 and first.id not in [r.id for r in rest.results]


def test_a_collection_assembled_from_a_core_searches_but_cannot_be_saved_or_refitted(built, photos, tmp_path):
    core = SearchCore.from_state(built.config, built.core.pca_, built.core.vectors_, built.core.stars_,
                                 calibration=built.core.calibration_)
    assembled = Collection(built.backbone, images=built.images, core=core)
    query = photo(photos, 6)
    assert assembled.search(query, k=4).to_dict() == built.search(query, k=4).to_dict()
    with pytest.raises(CollectionError, match="holds no backbone features"):
        assembled.save(tmp_path / "assembled.simlib")
    with pytest.raises(CollectionError, match="records for a search core"):
        Collection(built.backbone, images=built.images[:3], core=core)
