import os

from PIL import Image

from simlib.files import find_images


def test_finds_images_recursively_in_sorted_order_skipping_hidden_and_non_images(tmp_path):
    for name in ["b.jpg", "a.PNG", "sub/c.webp", "sub/deep/d.tif", ".cache/x.jpg", ".hidden.jpg", "notes.txt", "a.xmp"]:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (2, 2)).save(path, format="PNG") if name.endswith(("jpg", "PNG", "webp", "tif")) else path.write_text("x")
    files, errors = find_images(tmp_path)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a.PNG", "b.jpg", "sub/c.webp", "sub/deep/d.tif"]
    assert errors == []


def test_symlink_loops_are_walked_once(tmp_path):
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (2, 2)).save(tmp_path / "sub" / "a.jpg")
    os.symlink(tmp_path, tmp_path / "sub" / "loop")
    os.symlink(tmp_path / "missing", tmp_path / "dangling.jpg")
    files, errors = find_images(tmp_path)
    assert [f.name for f in files] == ["a.jpg"]


def test_unicode_spaces_and_shell_characters_in_names(tmp_path):
    name = "été $(rm -rf) ; 'quoted' & *.jpg"
    Image.new("RGB", (2, 2)).save(tmp_path / name, format="JPEG")
    files, _ = find_images(tmp_path)
    assert [f.name for f in files] == [name]
