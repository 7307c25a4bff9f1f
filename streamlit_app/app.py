"""simlib's Streamlit app: layout and session state only; every piece of logic comes from simlib.

Launch with `scripts/app` (or `streamlit run streamlit_app/app.py`). It opens on the bundled sample collection.
"""

import streamlit as st

import build_view
import duplicates_view
import labels
import overview_view
import search_view
import sidebar
import workspace


def main() -> None:
    # a function, so that no module global keeps a session's objects alive after its run
    st.set_page_config(page_title="simlib: similar-image search", page_icon=":mag:", layout="wide")
    session = workspace.current()
    settings = sidebar.render()
    backbone = sidebar.load_backbone(settings)

    st.title("simlib: similar-image search")
    header = st.container()
    # the tabs track which one is open, so that the Duplicates tab groups the collection only while it is shown
    search_tab, duplicates_tab, overview_tab, build_tab = st.tabs(
        ["Search", "Duplicates", "Collection", "Build, save, open"], key="tab", on_change="rerun")
    with build_tab:
        # drawn first, so that a collection built or added to here is the one the other tabs show in this run
        build_view.render(session, backbone, session.active(settings.backbone, settings.rating_weight),
                          settings.rating_weight)
    collection = session.active(settings.backbone, settings.rating_weight)
    threshold = sidebar.threshold(settings, collection)

    with header:
        st.caption(
            f"Open: {labels.escape(session.label)}, {len(collection)} images, {collection.backbone.name} features, "
            f"threshold {collection.threshold:.3f}."
        )
        if collection.backbone.name != backbone.name:
            st.info(f"This collection was built with {collection.backbone.name}; the backbone choice applies to the "
                    "bundled sample and to new collections.")
    with search_tab:
        search_view.render(collection, settings.ef_search, threshold, settings.min_rating)
    if duplicates_tab.open:
        with duplicates_tab:
            duplicates_view.render(collection, session.duplicates)
    with overview_tab:
        overview_view.render(collection)


main()
