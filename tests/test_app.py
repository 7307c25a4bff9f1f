"""The Streamlit app driven by AppTest: it opens on the bundled sample, builds from uploads, searches, explains
fallbacks, reports bad files, and its controls change results without rebuilding what they need not."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from .conftest import DATA, ROOT, needs_offline_backbone, scene, xmp_packet

APP = ROOT / "streamlit_app" / "app.py"
TIMEOUT = 600  # the first run indexes the bundled sample on a slow CI machine

pytestmark = needs_offline_backbone


@pytest.fixture
def app_env(tmp_path, monkeypatch) -> Path:
    """A store for saved collections and uploads under tmp_path; 'auto' resolves to EfficientNet-Lite0 on every
    machine (the ResNet-18 weights it is pointed at do not exist)."""
    monkeypatch.setenv("SIMLIB_RESNET18_WEIGHTS", str(tmp_path / "no-resnet18-weights.pth"))
    monkeypatch.setenv("SIMLIB_APP_STORE", str(tmp_path / "store"))
    return tmp_path / "store"


@pytest.fixture
def app(app_env) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    return at


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def upload_query(at: AppTest, name: str, data: bytes) -> AppTest:
    at.file_uploader(key="query_file").set_value((name, data, "image/jpeg")).run()
    assert not at.exception, at.exception
    return at


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def frame(at: AppTest, column: str):
    """The first table on the page with `column`, as a DataFrame."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def results(at: AppTest):
    """The results table: rank, file, similarity, rating, reason, query, threshold."""
    return frame(at, "similarity")


def badges(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if "-badge[" in m.value]


def counting(monkeypatch, module: str, name: str) -> list:
    """Wrap <module>.<name> so every call is recorded."""
    import importlib

    target = importlib.import_module(module)
    calls = []
    original = getattr(target, name)

    def wrapper(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapper)
    return calls


def test_opens_on_the_bundled_sample_ready_to_search(app):
    assert metric(app, "Images") == "26"
    assert metric(app, "Backbone") in ("efficientnet_lite0 (fp32)", "efficientnet_lite0 (bf16)")  # auto, by the CPU
    assert any("ResNet-18 ImageNet weights are not available offline" in i.value for i in app.sidebar.info)
    assert app.file_uploader(key="query_file").value is None
    assert any("Upload a query image" in i.value for i in app.info)
    assert len(app.get("vega_lite_chart")) == 2  # rating distribution and PCA explained variance


def test_uploaded_copy_finds_its_original_as_a_visual_match(app):
    upload_query(app, "ladybird-cropped-small.jpg", (DATA / "queries" / "ladybird-cropped-small.jpg").read_bytes())
    table = results(app)
    assert len(table) == 8 and table["file"][0] == "06-sidecar-name-ext-xmp-LadyBird.jpg"
    assert table["similarity"][0] > 0.9 and list(table["reason"]) == ["visual"] * 8
    assert all(table["similarity"][1:] < 0.5)  # no other picture in the sample is a copy of it
    assert badges(app) == [":green-badge[Visual match]"] + [":gray-badge[Visual, below threshold]"] * 7
    assert "reaches the match threshold" in app.success[0].value
    assert len(app.get("image")) == 9  # the query and every result show a thumbnail
    assert app.download_button(key="download_csv").label == "Download results (CSV)"


def test_unmatched_query_falls_back_to_its_rating_and_says_why(app):
    upload_query(app, "blinds-4-stars.jpg", (DATA / "queries" / "blinds-4-stars.jpg").read_bytes())
    message = app.warning[0].value
    assert message.startswith("Best visual similarity ") and "is below the match threshold" in message
    assert "rated closest to the query's 4-star rating" in message
    table = results(app)
    assert list(table["reason"]) == ["rating-fallback"] * 8
    assert badges(app) == [":orange-badge[Rating fallback]"] * 8
    distances = np.abs(table["rating"].to_numpy() - 4)
    assert distances[0] == 0 and list(distances) == sorted(distances)


def test_bad_query_upload_is_reported_with_its_reason(app):
    upload_query(app, "notes.txt", b"not a picture")
    assert app.error[0].value == "Cannot search: notes.txt: not an image format Pillow can read"


def test_controls_change_results_without_rebuilding(app, monkeypatch):
    extractions, builds = (counting(monkeypatch, "simlib.collection", "extract_features"),
                           counting(monkeypatch, "simlib.search_core", "build_index"))
    upload_query(app, "ladybird.jpg", (DATA / "queries" / "ladybird-cropped-small.jpg").read_bytes())
    assert results(app)["reason"][0] == "visual"

    app.select_slider(key="min_rating").set_value(5).run()
    assert set(results(app)["rating"]) == {5.0}

    app.toggle(key="calibrated_threshold").set_value(False).run()
    app.slider(key="threshold").set_value(1.0).run()
    assert "below the match threshold 1.000" in app.warning[0].value
    assert set(results(app)["reason"]) == {"rating-fallback"}

    app.select_slider(key="min_rating").set_value("any").run()
    app.slider(key="ef_search").set_value(8).run()
    assert len(results(app)) == 8
    assert extractions == [] and builds == []  # efSearch, threshold and the rating filter rebuild nothing

    app.slider(key="rating_weight").set_value(1.75).run()
    assert not app.exception and len(results(app)) == 8
    assert extractions == [] and builds == ["build_index"]  # only the index, from the stored vectors
    index = frame(app, "parameter").set_index("parameter")["value"]
    assert index["dimensions"] == "26" and index["rating weight"] == "1.75"  # 25 PCA dimensions + the rating


def test_building_from_uploads_keeps_good_files_and_reports_bad_ones(app, app_env, monkeypatch, tmp_path):
    monkeypatch.setenv("SIMLIB_APP_MAX_UPLOAD_MB", "0.2")
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    huge = io.BytesIO()
    Image.fromarray(noise).save(huge, "PNG")
    uploads = [(f"scene-{i}.jpg", jpeg(scene(i)), "image/jpeg") for i in range(4)]
    uploads += [
        ("scene-1.jpg.xmp", xmp_packet(4).encode(), "application/rdf+xml"),
        ("../../escaped.jpg", jpeg(scene(9)), "image/jpeg"),
        ("notes.txt", b"just some text", "text/plain"),
        ("broken.jpg", jpeg(scene(8))[:300], "image/jpeg"),
        ("huge.png", huge.getvalue(), "image/png"),
    ]
    app.file_uploader(key="build_files").set_value(uploads).run()
    app.button(key="build").click().run()
    assert not app.exception, app.exception

    assert "Built a new collection of 5 images from 9 uploaded files." in app.success[0].value
    skipped = frame(app, "reason").set_index("file")["reason"]
    assert sorted(skipped.index) == ["broken.jpg", "huge.png", "notes.txt"]
    assert "not an image format" in skipped["notes.txt"]
    assert "too large" in skipped["huge.png"]
    assert app.get("progress")[0].value == 100
    assert metric(app, "Images") == "5"

    folder = app.session_state["workspace"].folder
    assert folder.parent == app_env / "uploads"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["scene-0.jpg", "scene-1.jpg", "scene-1.jpg.xmp", "scene-2.jpg", "scene-3.jpg", "escaped.jpg",
         "notes.txt", "broken.jpg"]
    )
    assert not (tmp_path / "escaped.jpg").exists() and not (app_env / "escaped.jpg").exists()

    app.radio(key="query_mode").set_value("Pick one from the collection").run()
    app.selectbox(key="query_pick").select_index(app.selectbox(key="query_pick").options.index("scene-1.jpg")).run()
    assert "4 stars (from sidecar" in next(m.value for m in app.markdown if m.value.startswith("**Query rating"))
    table = results(app)
    assert table["file"][0] == "scene-1.jpg" and table["similarity"][0] == pytest.approx(1.0, abs=1e-3)


def test_save_reopen_and_add_leave_the_shared_sample_intact(app, app_env):
    app.file_uploader(key="build_files").set_value(
        [(f"scene-{i}.jpg", jpeg(scene(i)), "image/jpeg") for i in range(3)]
    ).run()
    app.button(key="build").click().run()
    app.slider(key="rating_weight").set_value(1.0).run()
    app.text_input(key="save_name").input("../My set").run()
    app.button(key="save").click().run()
    assert (app_env / "collections" / "My set.simlib" / "collection.sqlite").is_file()

    app.slider(key="rating_weight").set_value(0.0).run()
    app.button(key="close").click().run()
    assert metric(app, "Images") == "26"
    app.selectbox(key="open_name").set_value("My set").run()
    app.button(key="open").click().run()
    assert not app.exception, app.exception
    assert metric(app, "Images") == "3" and "Opened 'My set'" in app.success[0].value
    assert app.slider(key="rating_weight").value == 1.0  # the sidebar follows the collection opened

    app.file_uploader(key="build_files").set_value(
        [(f"more-{i}.jpg", jpeg(scene(20 + i)), "image/jpeg") for i in range(2)]
    ).run()
    app.button(key="add").click().run()
    assert metric(app, "Images") == "5"

    app.button(key="close").click().run()
    app.button(key="add").click().run()  # the same two uploads, added to the bundled sample
    assert metric(app, "Images") == "28"
    app.button(key="add").click().run()
    assert "2 were already in it" in app.success[0].value and metric(app, "Images") == "28"

    other_session = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert metric(other_session, "Images") == "26"


def test_resnet18_without_weights_is_reported_and_stops_the_page(app):
    app.selectbox(key="backbone").set_value("resnet18").run()
    assert any("resnet18 cannot be loaded" in e.value for e in app.sidebar.error)
    assert not app.tabs


def test_a_session_upload_folder_goes_with_the_session_unless_saved(app_env):
    import gc

    unsaved = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    saved = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    saved.file_uploader(key="build_files").set_value(
        [(f"scene-{i}.jpg", jpeg(scene(i)), "image/jpeg") for i in range(2)]
    ).run()
    saved.button(key="build").click().run()
    saved.text_input(key="save_name").input("kept").run()
    saved.button(key="save").click().run()
    folders = [session.session_state["workspace"].folder for session in (unsaved, saved)]
    assert all(folder.is_dir() for folder in folders)
    del unsaved, saved
    gc.collect()
    assert not folders[0].exists()
    assert sorted(p.name for p in folders[1].iterdir()) == ["scene-0.jpg", "scene-1.jpg"]


def test_the_folder_filter_keeps_results_in_the_chosen_folder(app, app_env, efficientnet, tmp_path):
    """A saved collection over two folders, opened in the app: choosing a folder keeps the results in it."""
    from simlib import Collection

    for i in range(6):
        folder = tmp_path / "photos" / ("beach" if i % 2 else "hills")
        folder.mkdir(parents=True, exist_ok=True)
        scene(300 + i).save(folder / f"{i}.jpg", quality=90)
    (app_env / "collections").mkdir(parents=True)
    Collection.build(tmp_path / "photos", efficientnet, progress=False, num_workers=0).save(
        app_env / "collections" / "trip.simlib")
    app.run()  # the saved collections are listed as the page is drawn
    app.selectbox(key="open_name").set_value("trip").run()
    app.button(key="open").click().run()
    upload_query(app, "q.jpg", jpeg(scene(301)))
    assert len(results(app)) == 6
    assert app.selectbox(key="under").options == ["any folder", "photos/beach", "photos/hills"]
    app.selectbox(key="under").set_value(str(tmp_path / "photos" / "beach")).run()
    assert not app.exception, app.exception
    assert len(results(app)) == 3 and set(results(app)["file"]) == {"1.jpg", "3.jpg", "5.jpg"}


def test_a_server_folder_is_built_into_a_collection_and_synced_with_its_files(app, app_env, tmp_path, monkeypatch):
    library = tmp_path / "library"
    (library / "trip").mkdir(parents=True)
    for i in range(4):
        scene(600 + i).save(library / "trip" / f"{i}.jpg", quality=90)
    monkeypatch.setenv("SIMLIB_APP_LIBRARY", str(library))
    app.run()
    app.text_input(key="server_folder").input("trip").run()
    app.text_input(key="server_name").input("Trip").run()
    app.button(key="sync").click().run()
    assert not app.exception, app.exception
    assert f"Built 'Trip' from {library / 'trip'}: 4 images." in app.success[0].value and metric(app, "Images") == "4"

    (library / "trip" / "0.jpg").unlink()
    scene(610).save(library / "trip" / "new.jpg", quality=90)
    (library / "trip" / "1.jpg.xmp").write_text(xmp_packet(5))
    app.button(key="sync").click().run()
    assert not app.exception, app.exception
    assert ("1 added, 1 removed, 0 changed, 1 rating changed, 2 unchanged, 0 skipped." in app.success[0].value)
    assert metric(app, "Images") == "4"
    app.text_input(key="server_folder").input("../..").run()
    app.button(key="sync").click().run()
    assert "is not a folder under" in app.error[0].value  # nothing outside the library folder is indexed


def test_the_duplicates_tab_shows_groups_with_keepers_and_its_slider_regroups_without_rebuilding(app, monkeypatch):
    extractions, builds, decodes = (counting(monkeypatch, "simlib.collection", "extract_features"),
                                    counting(monkeypatch, "simlib.search_core", "build_index"),
                                    counting(monkeypatch, "simlib.duplicates", "read_facts"))
    assert not any(m.value.startswith(":blue-badge[Exact copies]") for m in app.markdown)  # drawn only when open
    app.session_state["tab"] = "Duplicates"
    app.run()
    # the sample's two PNGs decode to the same uniform colour: one exact group, no near duplicates
    assert metric(app, "Exact groups") == "1" and metric(app, "Near groups") == "0"
    assert [b for b in badges(app) if "Keeper" in b or "Copy" in b] == [":green-badge[Keeper]", ":orange-badge[Copy]"]
    group = [m.value for m in app.markdown if m.value.startswith(":blue-badge[Exact copies] **Group 1**")]
    assert group and "2 images, keeper " in group[0]
    assert any(c.value.startswith("the keeper: ") for c in app.caption)
    assert len(app.get("image")) == 2 and len(decodes) == 2  # no query yet: only the group's thumbnails
    assert app.download_button(key="download_duplicates").label == "Download groups (CSV)"

    app.slider(key="duplicate_threshold").set_value(0.5).run()
    assert not app.exception, app.exception
    assert metric(app, "Exact groups") == "1" and metric(app, "Near groups") == "1"
    assert any(m.value.startswith(":violet-badge[Near duplicates] **Group 2**") for m in app.markdown)
    assert len(app.get("image")) == 4 and len(decodes) == 4  # the facts of the two images newly grouped
    app.slider(key="duplicate_threshold").set_value(1.0).run()
    assert metric(app, "Near groups") == "0" and metric(app, "Exact groups") == "1"
    assert extractions == [] and builds == [] and len(decodes) == 4  # regrouped from the neighbours and facts found
