"""Several browser sessions of one app server at the same time: each builds and searches its own collection from
uploads with the same file names, one adds to the shared bundled sample, one searches the sample, and none sees
another's images.

AppTest runs each session's script in its own thread, but around every run it sets and then clears two
process-wide things: Streamlit's Runtime singleton and the `global.appTest` option. Sessions running at the same
time would clear them under each other, so for this test both are held steady (`steady_streamlit_globals`); all
the app's own state is left as it is, which is what the test is about.
"""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image
from streamlit import config
from streamlit.runtime import Runtime
from streamlit.testing.v1 import AppTest

from ..conftest import DATA, ROOT, needs_offline_backbone, scene

APP = ROOT / "streamlit_app" / "app.py"
TIMEOUT = 600
OWN_SESSIONS = 3
NAMES = [f"photo-{j}.jpg" for j in range(3)]  # every session uploads files of these names, with its own pictures

pytestmark = [needs_offline_backbone, pytest.mark.slow]


@pytest.fixture
def steady_streamlit_globals(monkeypatch):
    runtimes: list[Runtime] = []

    def instance(cls) -> Runtime:
        if cls._instance is not None:
            runtimes.append(cls._instance)
        return runtimes[-1]

    def exists(cls) -> bool:
        return cls._instance is not None or bool(runtimes)

    real_get_option = config.get_option
    monkeypatch.setattr(Runtime, "instance", classmethod(instance))
    monkeypatch.setattr(Runtime, "exists", classmethod(exists))
    monkeypatch.setattr(config, "get_option", lambda name: True if name == "global.appTest" else real_get_option(name))


@pytest.fixture
def app_env(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SIMLIB_RESNET18_WEIGHTS", str(tmp_path / "no-resnet18-weights.pth"))  # 'auto' -> Lite0
    monkeypatch.setenv("SIMLIB_APP_STORE", str(tmp_path / "store"))
    return tmp_path / "store"


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def results(at: AppTest):
    return next(d.value for d in at.dataframe if "similarity" in d.value.columns)


def checked(at: AppTest) -> AppTest:
    assert not at.exception, at.exception
    return at


def own_collection(session: int, start: threading.Barrier) -> dict:
    """Build from three uploads named like every other session's, then search with one of them."""
    pictures = {name: jpeg(scene(100 * session + j)) for j, name in enumerate(NAMES)}
    at = checked(AppTest.from_file(APP, default_timeout=TIMEOUT).run())
    at.file_uploader(key="build_files").set_value([(n, data, "image/jpeg") for n, data in pictures.items()])
    checked(at.run())
    start.wait()
    checked(at.button(key="build").click().run())
    at.file_uploader(key="query_file").set_value(("query.jpg", pictures["photo-1.jpg"], "image/jpeg"))
    checked(at.run())
    folder = at.session_state["workspace"].folder
    collection = at.session_state["workspace"].collection
    return {
        "images": metric(at, "Images"),
        "paths": [record.path for record in collection.images],
        "folder": folder,
        "stored": {p.name: p.read_bytes() for p in folder.iterdir()},
        "pictures": pictures,
        "results": results(at),
    }


def adds_to_the_sample(start: threading.Barrier) -> str:
    at = checked(AppTest.from_file(APP, default_timeout=TIMEOUT).run())
    at.file_uploader(key="build_files").set_value(("photo-0.jpg", jpeg(scene(999)), "image/jpeg"))
    checked(at.run())
    start.wait()
    checked(at.button(key="add").click().run())
    return metric(at, "Images")


def searches_the_sample(start: threading.Barrier) -> tuple[str, object]:
    at = checked(AppTest.from_file(APP, default_timeout=TIMEOUT).run())
    start.wait()
    query = (DATA / "queries" / "ladybird-cropped-small.jpg").read_bytes()
    checked(at.file_uploader(key="query_file").set_value(("ladybird.jpg", query, "image/jpeg")).run())
    return metric(at, "Images"), results(at)


def test_concurrent_sessions_keep_their_uploads_and_collections_apart(app_env, steady_streamlit_globals):
    start = threading.Barrier(OWN_SESSIONS + 2, timeout=TIMEOUT)
    with ThreadPoolExecutor(OWN_SESSIONS + 2) as pool:
        own = [pool.submit(own_collection, i, start) for i in range(OWN_SESSIONS)]
        added = pool.submit(adds_to_the_sample, start)
        searched = pool.submit(searches_the_sample, start)
        own = [future.result() for future in own]
        added, (sample_images, sample_results) = added.result(), searched.result()

    assert len({str(session["folder"]) for session in own}) == OWN_SESSIONS
    for session in own:
        assert session["images"] == "3"
        assert all(Path(p).parent == session["folder"] for p in session["paths"])
        assert session["stored"] == session["pictures"]  # nobody else's photo-1.jpg was written over this one's
        table = session["results"]
        assert set(table["file"]) == set(NAMES)
        assert table["file"][0] == "photo-1.jpg" and table["similarity"][0] == pytest.approx(1.0, abs=1e-3)
    assert added == "27"
    assert sample_images == "26" and "photo-0.jpg" not in set(sample_results["file"])
    assert sample_results["file"][0] == "06-sidecar-name-ext-xmp-LadyBird.jpg"

    later = checked(AppTest.from_file(APP, default_timeout=TIMEOUT).run())
    assert metric(later, "Images") == "26"
    index = next(d.value for d in later.dataframe if "parameter" in d.value.columns).set_index("parameter")
    assert index["value"]["vectors"] == "26"
