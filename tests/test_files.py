import os

from PIL import Image

from simlib.files import MAX_NAME_BYTES, find_images, safe_file_name


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


def test_safe_file_name_keeps_only_the_last_component_of_uploaded_names():
    assert safe_file_name("../../etc/passwd") == "passwd"
    assert safe_file_name("C:\\Users\\me\\holiday.jpg") == "holiday.jpg"
    assert safe_file_name("/abs/path/photo.PNG") == "photo.PNG"
    for hostile in ("..", ".", "", "/", "  ", "a/.."):
        assert safe_file_name(hostile) == "file"


def test_safe_file_name_replaces_unsafe_characters_and_leading_dots():
    assert safe_file_name("été $(rm -rf) ; 'quoted' & *.jpg") == "été __rm -rf_ _ _quoted_ _ _.jpg"
    assert safe_file_name(".hidden.jpg") == "hidden.jpg"
    assert safe_file_name("nul\x00byte\nline.png") == "nul_byte_line.png"
    assert safe_file_name("photo.jpg.xmp") == "photo.jpg.xmp"


def test_safe_file_name_shortens_long_names_keeping_the_extension(tmp_path):
    name = safe_file_name("ü" * 300 + ".jpeg")
    assert name.endswith(".jpeg") and len(name.encode()) <= MAX_NAME_BYTES
    (tmp_path / name).write_bytes(b"x")  # the filesystem accepts it
