import io

import numpy as np
import pytest
from PIL import Image

from simlib.images import ImageDecodeError, load_image, load_thumbnail, to_rgb

from .conftest import scene


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    """Store `image` transformed so that a viewer applying EXIF `orientation` shows the original."""
    inverse = {
        2: [Image.Transpose.FLIP_LEFT_RIGHT],
        3: [Image.Transpose.ROTATE_180],
        4: [Image.Transpose.FLIP_TOP_BOTTOM],
        5: [Image.Transpose.TRANSPOSE],
        6: [Image.Transpose.ROTATE_90],
        7: [Image.Transpose.TRANSVERSE],
        8: [Image.Transpose.ROTATE_270],
    }
    stored = image
    for op in inverse.get(orientation, []):
        stored = stored.transpose(op)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, "PNG", exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_shown_upright(orientation):
    original = scene(1, (64, 40))
    decoded = load_image(with_orientation(original, orientation), min_side=0)
    assert decoded.size == original.size
    assert np.array_equal(np.asarray(decoded), np.asarray(original))


def test_large_jpeg_is_decoded_at_reduced_scale_but_not_below_min_side():
    big = scene(2, (4000, 3000))
    decoded = load_image(jpeg_bytes(big), min_side=224)
    assert decoded.size == (500, 375)  # 1/8 scale keeps both sides >= 224
    assert min(load_image(jpeg_bytes(big), min_side=400).size) >= 400


def test_a_thumbnail_fits_its_side_upright_and_keeps_the_aspect():
    original = scene(4, (1200, 600))
    thumbnail = load_thumbnail(with_orientation(original, 6), 100)  # a PNG stored rotated: full-size decode, scaled
    assert thumbnail.size == (100, 50)
    expected = original.resize((100, 50), Image.Resampling.BOX)
    assert np.abs(np.asarray(thumbnail, dtype=int) - np.asarray(expected, dtype=int)).mean() < 8


def test_draft_never_goes_below_min_side_on_a_narrow_panorama():
    panorama = scene(3, (8000, 300))
    decoded = load_image(jpeg_bytes(panorama), min_side=224)
    assert decoded.size[1] >= 224


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: Image.new("L", (4, 4), 128), (128, 128, 128)),
        (lambda: Image.new("1", (4, 4), 1), (255, 255, 255)),
        (lambda: Image.new("CMYK", (4, 4), (0, 0, 0, 0)), (255, 255, 255)),
        (lambda: Image.new("RGBA", (4, 4), (255, 0, 0, 0)), (255, 255, 255)),
        (lambda: Image.new("LA", (4, 4), (0, 255)), (0, 0, 0)),
        (lambda: Image.fromarray(np.full((4, 4), 65535, np.uint16)), (255, 255, 255)),
        (lambda: Image.fromarray(np.full((4, 4), 32896, np.uint16)), (128, 128, 128)),
        (lambda: Image.fromarray(np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)), None),
    ],
    ids=["L", "1", "CMYK", "RGBA-transparent", "LA", "I16-white", "I16-mid", "F"],
)
def test_every_mode_becomes_rgb_without_clipping(make, expected):
    rgb = to_rgb(make())
    assert rgb.mode == "RGB"
    if expected is not None:
        assert rgb.getpixel((0, 0)) == expected
    else:
        values = np.asarray(rgb)[..., 0]
        assert values.min() == 0 and values.max() == 255


def test_palette_with_transparency_is_composited_on_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([10, 20, 30] + [0] * 765)
    image.info["transparency"] = 0
    assert to_rgb(image).getpixel((1, 1)) == (255, 255, 255)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    assert load_image(buffer.getvalue(), min_side=0).getpixel((0, 0)) == (255, 0, 0)


def test_path_and_bytes_decode_identically(tmp_path):
    data = jpeg_bytes(scene(4))
    (tmp_path / "a.jpg").write_bytes(data)
    assert np.array_equal(np.asarray(load_image(tmp_path / "a.jpg")), np.asarray(load_image(data)))


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"this is not an image\n", "not an image format"),
        (jpeg_bytes(scene(5))[:2000], "truncated"),
    ],
    ids=["zero-bytes", "text", "truncated-jpeg"],
)
def test_bad_files_raise_an_error_naming_file_and_reason(tmp_path, content, reason):
    path = tmp_path / "bad photo.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError) as info:
        load_image(path)
    assert info.value.path == str(path)
    assert reason in info.value.reason
    assert str(path) in str(info.value)


def test_missing_file_and_folder_are_reported(tmp_path):
    with pytest.raises(ImageDecodeError, match="file not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageDecodeError, match="directory"):
        load_image(tmp_path)


def test_images_decoding_to_more_than_max_pixels_are_refused():
    data = jpeg_bytes(scene(6, (1000, 1000)))
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        load_image(data, min_side=0, max_pixels=999_999)
    # draft mode decodes this JPEG at 1/4 scale, which is under the limit
    assert load_image(data, min_side=224, max_pixels=999_999).size == (250, 250)


def test_name_is_used_for_bytes_in_errors():
    with pytest.raises(ImageDecodeError, match="upload.png"):
        load_image(b"garbage", name="upload.png")
