"""vptcli.images: decoding real-world files into RGB uint8, or one error that names the file."""

from __future__ import annotations

import pickle
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from vptcli.errors import VptError
from vptcli.images import (
    ALPHA_BACKGROUND,
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    ImageDecodeError,
    decode_image,
    low_bit_usage,
    pixel_sha256,
)

# --------------------------------------------------------------------------------------------------
# builders


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def raw_png(arr: np.ndarray, color_type: int) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB): arr [H, W] or [H, W, C], uint8/uint16."""
    h, w = arr.shape[:2]
    depth = 16 if arr.dtype == np.uint16 else 8
    dtype = ">u2" if depth == 16 else "u1"
    raw = b"".join(b"\x00" + arr[y].astype(dtype).tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def empty_png(width: int, height: int) -> bytes:
    """A valid all-black 8-bit grayscale PNG of any size; tiny on disk (rows compressed one by one)."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def header_only_png(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width × height`` but holds (almost) no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b"")


def noise(h: int = 16, w: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def gradient16(h: int = 8, w: int = 256) -> np.ndarray:
    return np.tile(np.linspace(0, 65535, w).round().astype(np.uint16), (h, 1))


@pytest.fixture(autouse=True)
def img_pillow_limit(monkeypatch):
    """Each test starts with Pillow's default process-wide limit (decode_image(max_pixels=None) lifts it)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS)


@pytest.fixture()
def no_warnings():
    """Fail if anything warns (e.g. Pillow's DecompressionBombWarning printed raw)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# --------------------------------------------------------------------------------------------------
# content, not extension


def test_png_named_jpg_decodes_by_content(tmp_path):
    arr = noise()
    path = tmp_path / "really_a_png.jpg"
    Image.fromarray(arr).save(path, format="PNG")
    img = decode_image(path)
    assert isinstance(img, DecodedImage)
    assert img.pixels.dtype == np.uint8 and img.pixels.shape == (16, 24, 3)
    assert (img.width, img.height) == (24, 16)
    np.testing.assert_array_equal(img.pixels, arr)  # lossless: exactly the PNG's pixels
    assert img.mode == "RGB" and img.notes == ()


def test_html_named_jpg_is_not_an_image(tmp_path):
    path = tmp_path / "download.jpg"
    path.write_text("<!DOCTYPE html><html><body>404 not found</body></html>")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    err = info.value
    assert isinstance(err, VptError)
    assert err.path == path
    assert err.reason.startswith("not an image") and "HTML" in err.reason
    assert str(err) == f"{path}: {err.reason}"


def test_zero_byte_file_is_an_error(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty file: 0 bytes") as info:
        decode_image(path)
    assert info.value.kind == "empty file"


def test_truncated_jpeg_is_an_error(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(noise(64, 64)).save(good, quality=90)
    data = good.read_bytes()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(data[: len(data) // 2])
    decode_image(good)  # the intact file decodes
    with pytest.raises(ImageDecodeError, match="truncated or corrupt") as info:
        decode_image(bad)
    assert info.value.path == bad


def test_truncated_png_is_an_error(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(noise(64, 64)).save(good)
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "stub.png").write_bytes(data[:20])  # signature and a bit of the header
    for name in ("cut.png", "stub.png"):
        with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
            decode_image(tmp_path / name)


def test_missing_file_and_folder_are_errors(tmp_path):
    with pytest.raises(ImageDecodeError, match="file not found"):
        decode_image(tmp_path / "nope.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ImageDecodeError, match="not a regular file"):
        decode_image(tmp_path / "dir.png")


def test_error_is_picklable_and_keeps_fields(tmp_path):
    err = ImageDecodeError(tmp_path / "x.png", "not an image: content is plain text")
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.reason, back.kind, str(back)) == (err.path, err.reason, "not an image", str(err))


# --------------------------------------------------------------------------------------------------
# bit depth


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_gradient_scaled_by_range_not_clipped(tmp_path, fmt):
    path = tmp_path / f"grad.{fmt.lower()}"
    Image.fromarray(gradient16()).save(path, format=fmt)
    img = decode_image(path)
    assert img.mode.startswith("I;16")
    assert abs(float(img.pixels.mean()) - 127.5) < 1.0  # clipping would give ≈ 255
    assert img.pixels[:, 0].max() == 0 and img.pixels[:, -1].min() == 255
    assert np.all(np.diff(img.pixels[0, :, 0].astype(int)) >= 0)  # still monotone
    assert img.source_max == 65535 and not low_bit_usage(img)
    assert (img.pixels[..., 0] == img.pixels[..., 1]).all() and (img.pixels[..., 1] == img.pixels[..., 2]).all()


def test_16bit_big_endian_tiff(tmp_path):
    path = tmp_path / "be.tif"
    Image.fromarray(gradient16().astype(">u2")).save(path)
    assert Image.open(path).mode == "I;16B"
    img = decode_image(path)
    assert abs(float(img.pixels.mean()) - 127.5) < 1.0


def test_12bit_data_in_16bit_file_and_stated_bit_depth(tmp_path):
    data = np.tile(np.linspace(0, 4095, 64).round().astype(np.uint16), (4, 1))
    path = tmp_path / "sensor12.png"
    Image.fromarray(data).save(path)
    img = decode_image(path)
    assert "16-bit data uses 12 bits" in img.notes
    assert img.pixels.max() == 255 and abs(float(img.pixels.mean()) - 127.5) < 1.5
    assert img.source_max == 4095 and low_bit_usage(img)

    stated = decode_image(path, bit_depth=12)
    np.testing.assert_array_equal(stated.pixels, img.pixels)
    as16 = decode_image(path, bit_depth=16)  # value / 65535: dark
    assert as16.pixels.max() == round(4095 * 255 / 65535)
    with pytest.raises(ImageDecodeError, match="above the stated 10-bit range"):
        decode_image(path, bit_depth=10)
    with pytest.raises(VptError, match="bit depth"):
        decode_image(path, bit_depth=20)


def test_dark_16bit_image_uses_even_bit_range(tmp_path):
    # max 3000 needs 12 bits: scaled by 4095, not stretched to 255
    data = np.full((4, 4), 3000, np.uint16)
    path = tmp_path / "dark.png"
    Image.fromarray(data).save(path)
    assert decode_image(path).pixels.max() == round(3000 * 255 / 4095)
    # 8-bit data in a 16-bit container is unchanged
    small = np.arange(16, dtype=np.uint16).reshape(4, 4) * 10
    Image.fromarray(small).save(path)
    np.testing.assert_array_equal(decode_image(path).pixels[..., 0], small.astype(np.uint8))


def test_16bit_rgb_png_keeps_low_bytes(tmp_path):
    # Pillow alone would keep only the high bytes (4095 -> 15); we scale the full 16-bit values
    arr = np.zeros((4, 5, 3), np.uint16)
    arr[..., 0] = 4095
    arr[..., 1] = 2048
    arr[..., 2] = np.arange(5) * 1000
    path = tmp_path / "rgb48.png"
    path.write_bytes(raw_png(arr, color_type=2))
    img = decode_image(path)
    assert img.source_max == 4095
    expected = (arr.astype(np.uint32) * 255 + 2047) // 4095
    np.testing.assert_array_equal(img.pixels, expected.astype(np.uint8))


def test_32bit_signed_and_float_images(tmp_path):
    signed = np.array([[-1000, 0], [1000, 3000]], np.int32)
    Image.fromarray(signed, mode="I").save(tmp_path / "i32.tif")
    img = decode_image(tmp_path / "i32.tif")
    assert img.pixels[0, 0, 0] == 0 and img.pixels[1, 1, 0] == 255
    assert any("min-max" in n for n in img.notes)

    unit = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    Image.fromarray(unit).save(tmp_path / "f01.tif")
    img = decode_image(tmp_path / "f01.tif")
    assert img.mode == "F" and img.pixels[0, 0, 0] == 0 and img.pixels[3, 3, 0] == 255


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_tiff_with_nan_or_inf_is_an_error(tmp_path, bad):
    data = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    data[3, 4] = bad
    path = tmp_path / "float.tif"
    Image.fromarray(data).save(path)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    assert info.value.path == path
    assert "NaN" in info.value.reason and info.value.kind == "invalid pixel values"
    assert ("1 NaN" in info.value.reason) == bool(np.isnan(bad))


# --------------------------------------------------------------------------------------------------
# colour modes


def test_palette_with_and_without_transparency(tmp_path):
    pal = Image.new("P", (4, 2))
    pal.putpalette([255, 255, 255, 255, 0, 0, 0, 0, 255] + [0] * (253 * 3))
    pal.putdata([0, 1, 2, 1, 0, 0, 2, 2])
    pal.save(tmp_path / "plain.png")
    pal.save(tmp_path / "trans.png", transparency=0)  # index 0 (white) transparent
    pal.save(tmp_path / "trans.gif", transparency=0)

    plain = decode_image(tmp_path / "plain.png")
    assert plain.mode == "P"
    assert tuple(plain.pixels[0, 0]) == (255, 255, 255) and tuple(plain.pixels[0, 1]) == (255, 0, 0)
    for name in ("trans.png", "trans.gif"):
        img = decode_image(tmp_path / name)
        assert img.mode == "P"
        assert tuple(img.pixels[0, 0]) == ALPHA_BACKGROUND == (0, 0, 0)  # transparent white -> background
        assert tuple(img.pixels[0, 1]) == (255, 0, 0) and tuple(img.pixels[0, 2]) == (0, 0, 255)


def test_rgba_and_la_composited_on_black(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (200, 100, 50, 255)  # opaque: kept
    rgba[0, 1] = (200, 100, 50, 0)  # transparent: background
    rgba[1, 0] = (255, 255, 255, 0)  # transparent white: background, not white
    rgba[1, 1] = (200, 100, 50, 51)  # 20 % opaque
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    img = decode_image(tmp_path / "rgba.png")
    assert img.mode == "RGBA"
    assert tuple(img.pixels[0, 0]) == (200, 100, 50)
    assert tuple(img.pixels[0, 1]) == (0, 0, 0) and tuple(img.pixels[1, 0]) == (0, 0, 0)
    assert tuple(img.pixels[1, 1]) == (40, 20, 10)

    la = Image.fromarray(np.array([[[100, 255], [100, 0]]], np.uint8), "LA")
    la.save(tmp_path / "la.png")
    img = decode_image(tmp_path / "la.png")
    assert tuple(img.pixels[0, 0]) == (100, 100, 100) and tuple(img.pixels[0, 1]) == (0, 0, 0)


def test_one_bit_image(tmp_path):
    bits = Image.new("1", (3, 1))
    bits.putdata([0, 1, 0])
    bits.save(tmp_path / "bits.png")
    img = decode_image(tmp_path / "bits.png")
    assert img.mode == "1" and img.pixels[0, :, 0].tolist() == [0, 255, 0]


def test_cmyk_jpeg_colours(tmp_path):
    cmyk = Image.new("CMYK", (64, 16))
    blocks = {(0, 255, 255, 0): (255, 0, 0), (255, 0, 255, 0): (0, 255, 0), (255, 255, 0, 0): (0, 0, 255),
              (0, 0, 0, 0): (255, 255, 255)}
    for i, colour in enumerate(blocks):
        cmyk.paste(colour, (i * 16, 0, i * 16 + 16, 16))
    path = tmp_path / "print.jpg"
    cmyk.save(path, quality=95)
    img = decode_image(path)
    assert img.mode == "CMYK"
    for i, rgb in enumerate(blocks.values()):
        got = img.pixels[8, i * 16 + 8].astype(int)
        assert np.abs(got - np.array(rgb)).max() < 12, (i, got, rgb)


def test_exif_rotated_jpeg(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)  # stored: 40 wide, 20 high
    arr[:8, :8] = (255, 0, 0)  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "phone.jpg"
    Image.fromarray(arr).save(path, quality=95, exif=exif.tobytes())
    img = decode_image(path)
    assert img.pixels.shape == (40, 20, 3) and (img.width, img.height) == (20, 40)
    assert any(n.startswith("exif-rotated") for n in img.notes)
    top_right, top_left = img.pixels[3, 16].astype(int), img.pixels[3, 3].astype(int)
    assert top_right[0] > 200 and top_right[1:].max() < 60  # red moved to the top-right
    assert top_left.max() < 60
    # the same pixels without the tag are not rotated
    Image.fromarray(arr).save(tmp_path / "plain.jpg", quality=95)
    assert decode_image(tmp_path / "plain.jpg").pixels.shape == (20, 40, 3)


def test_animated_gif_gives_first_frame_with_note(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    img = decode_image(path)
    assert "animated: first frame of 3" in img.notes
    assert tuple(img.pixels[4, 4]) == (255, 0, 0)


def test_multipage_tiff_gives_first_page(tmp_path):
    pages = [Image.new("L", (4, 4), v) for v in (10, 200)]
    path = tmp_path / "pages.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    img = decode_image(path)
    assert "multi-frame: first frame of 2" in img.notes and img.pixels[0, 0, 0] == 10


# --------------------------------------------------------------------------------------------------
# size limit


def test_pixel_limit_is_configurable(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(noise(64, 64)).save(path)
    assert decode_image(path, max_pixels=64 * 64).width == 64  # at the limit: fine
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path, max_pixels=64 * 64 - 1)
    assert "4,096 pixels (64×64)" in info.value.reason and "4,095" in info.value.reason
    assert info.value.kind == "too many pixels"
    assert decode_image(path, max_pixels=None).width == 64
    assert Image.MAX_IMAGE_PIXELS is None  # documented: no limit asked, Pillow's limit lifted too


def test_larger_limit_than_pillows_is_honoured(tmp_path, no_warnings):
    path = tmp_path / "wide.png"
    path.write_bytes(empty_png(20000, 10000))  # 200 M pixels: above 2 × Pillow's default
    with pytest.raises(ImageDecodeError, match="200,000,000 pixels"):
        decode_image(path)
    with pytest.raises(ImageDecodeError, match="200,000,000 pixels .* above the limit of 199,999,999"):
        decode_image(path, max_pixels=199_999_999)
    # allowed when asked: Pillow's own limit must not refuse it (header only: no decode here)
    from vptcli import images

    images._allow_in_pillow(200_000_000)
    with Image.open(path) as im:
        assert im.size == (20000, 10000)


def test_huge_mostly_empty_png_refused_from_header(tmp_path, no_warnings, capsys):
    # a real, valid 12000×8000 PNG (96 M pixels, ~90 KB on disk): between Pillow's warning and error
    # thresholds, so Pillow would warn; we refuse it with our message and nothing is printed
    path = tmp_path / "huge.png"
    path.write_bytes(empty_png(12000, 8000))
    assert path.stat().st_size < 500_000
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    assert "96,000,000 pixels (12000×8000)" in info.value.reason
    assert f"{DEFAULT_MAX_PIXELS:,}" in info.value.reason and "--max-pixels" in info.value.reason
    with pytest.raises(ImageDecodeError, match="96,000,000 pixels"):
        decode_image(path, max_pixels=1_000_000)
    assert capsys.readouterr() == ("", "")


def test_header_declaring_ten_billion_pixels(tmp_path, no_warnings, capsys):
    path = tmp_path / "bomb.png"
    path.write_bytes(header_only_png(100_000, 100_000))
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    assert "10,000,000,000 pixels" in info.value.reason
    assert "above the limit of 89,478,485 pixels" in info.value.reason
    assert capsys.readouterr() == ("", "")


# --------------------------------------------------------------------------------------------------
# hashing


def test_pixel_sha256_depends_on_pixels_and_shape_only(tmp_path):
    arr = noise(6, 4)
    Image.fromarray(arr).save(tmp_path / "a.png")
    Image.fromarray(arr).save(tmp_path / "a.bmp")
    Image.fromarray(arr).save(tmp_path / "a.tif", compression="tiff_lzw")
    hashes = {pixel_sha256(decode_image(tmp_path / n)) for n in ("a.png", "a.bmp", "a.tif")}
    assert len(hashes) == 1 and len(next(iter(hashes))) == 64

    changed = arr.copy()
    changed[0, 0, 0] ^= 1
    Image.fromarray(changed).save(tmp_path / "b.png")
    assert pixel_sha256(decode_image(tmp_path / "b.png")) not in hashes

    flat = np.arange(12, dtype=np.uint8)
    a = DecodedImage(flat.reshape(2, 2, 3), "RGB", 2, 2)
    b = DecodedImage(flat.reshape(1, 4, 3), "RGB", 4, 1)
    assert pixel_sha256(a) != pixel_sha256(b)


def test_unicode_and_leading_space_file_names(tmp_path):
    folder = tmp_path / " défaut ünïcode"
    folder.mkdir()
    path = folder / " ä b.png"
    Image.fromarray(noise()).save(path)
    assert decode_image(path).pixels.shape == (16, 24, 3)
    (folder / " bad.png").write_text("nope")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(folder / " bad.png")
    assert str(info.value).startswith(str(folder / " bad.png"))


def test_decoding_is_thread_safe(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    paths = []
    for i in range(12):
        p = tmp_path / f"{i}.png"
        Image.fromarray(noise(seed=i)).save(p)
        paths.append(p)
    (tmp_path / "bomb.png").write_bytes(header_only_png(20_000, 20_000))
    paths.append(tmp_path / "bomb.png")

    def work(p):
        try:
            return pixel_sha256(decode_image(p))
        except ImageDecodeError as exc:
            return exc.kind

    serial = [work(p) for p in paths]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(work, paths * 3)) == serial * 3
    assert serial[-1] == "too many pixels"


# --------------------------------------------------------------------------------------------------
# formats Pillow cannot decode: named, never "corrupt"


def jpeg_with_precision(bits: int, sof: int = 0xC1) -> bytes:
    """A baseline JPEG from Pillow whose frame header is rewritten to declare ``bits``-bit samples."""
    import io

    buf = io.BytesIO()
    Image.fromarray(noise(8, 8)).save(buf, "JPEG", exif=Image.Exif().tobytes())
    data = bytearray(buf.getvalue())
    at = data.index(b"\xff\xc0")
    data[at + 1] = sof
    data[at + 4] = bits
    return bytes(data)


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    """An ISO-BMFF file start: an ``ftyp`` box, then an empty ``meta`` box (enough to sniff)."""
    body = major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return struct.pack(">I", 8 + len(body)) + b"ftyp" + body + struct.pack(">I", 8) + b"meta"


@pytest.mark.parametrize("name", ["xray.jpg", "xray.dat"])
def test_12bit_jpeg_is_named_unsupported_not_corrupt(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(jpeg_with_precision(12))
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    assert info.value.kind == "unsupported"
    assert "12-bit JPEG" in info.value.reason
    assert "corrupt" not in info.value.reason and "PNG or TIFF" in info.value.reason
    assert "despite" not in info.value.reason


def test_lossless_jpeg_is_named(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(jpeg_with_precision(8, sof=0xC3))
    with pytest.raises(ImageDecodeError, match="lossless JPEG") as info:
        decode_image(path)
    assert info.value.kind == "unsupported"


def test_8bit_jpeg_with_extended_frame_header_still_decodes(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(jpeg_with_precision(8, sof=0xC1))  # SOF1 at 8 bits: Pillow decodes it
    assert decode_image(path).pixels.shape == (8, 8, 3)


@pytest.mark.parametrize(
    ("name", "major", "compatible", "brand"),
    [
        ("IMG_0001.HEIC", b"heic", (b"mif1", b"heic"), "heic"),
        ("IMG_0002.jpg", b"heic", (b"mif1", b"heic"), "heic"),
        ("photo.heif", b"mif1", (b"mif1", b"heix"), "mif1"),
        ("photo.jpg", b"heix", (b"mif1",), "heix"),
    ],
)
def test_heic_is_named_with_what_to_do(tmp_path, monkeypatch, name, major, compatible, brand):
    from vptcli import images

    monkeypatch.setattr(images, "_heif_plugin", lambda: False)  # as without the optional plug-in
    path = tmp_path / name
    path.write_bytes(ftyp(major, *compatible))
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    reason = info.value.reason
    assert info.value.kind == "unsupported"
    assert "HEIC/HEIF" in reason and f"'{brand}'" in reason
    assert "pillow-heif" in reason and "convert" in reason
    assert ("despite the .jpg name" in reason) == name.endswith(".jpg")


def test_avif_named_only_when_pillow_lacks_it(tmp_path, monkeypatch):
    from vptcli import images

    path = tmp_path / "a.avif"
    path.write_bytes(ftyp(b"avif", b"mif1", b"miaf", b"avif"))
    monkeypatch.setattr(images, "_pillow_opens", lambda fmt: False)
    assert "AVIF image" in images.sniff_unsupported(path)
    monkeypatch.setattr(images, "_pillow_opens", lambda fmt: True)
    assert images.sniff_unsupported(path) is None


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("a.jxl", b"\xff\x0a\xfa\x1f" + bytes(60), "JPEG XL"),
        ("a.png", b"\x00\x00\x00\x0cJXL \r\n\x87\n" + bytes(60), "JPEG XL"),
        ("a.cr2", b"II*\x00\x10\x00\x00\x00CR\x02\x00" + bytes(60), "Canon CR2 raw"),
        ("a.cr3", ftyp(b"crx ", b"crx ", b"isom"), "Canon CR3 raw"),
        ("a.orf", b"IIRO\x08\x00\x00\x00" + bytes(60), "Olympus ORF raw"),
        ("a.rw2", b"IIU\x00\x08\x00\x00\x00" + bytes(60), "Panasonic RW2 raw"),
        ("a.raf", b"FUJIFILMCCD-RAW 0201" + bytes(60), "Fujifilm RAF raw"),
        ("a.nef", None, "Nikon NEF raw"),
        ("a.dng", None, "DNG raw"),
    ],
)
def test_other_unsupported_formats_get_their_own_reason(tmp_path, name, data, expected):
    path = tmp_path / name
    if data is None:  # TIFF-based raw: a real TIFF (Pillow would read it) under a raw camera name
        Image.fromarray(noise(8, 8)).save(path, "TIFF")
    else:
        path.write_bytes(data)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    assert info.value.kind == "unsupported"
    assert expected in info.value.reason
    assert "corrupt" not in info.value.reason


def test_plain_tiff_and_damaged_jpeg_are_not_called_unsupported(tmp_path):
    Image.fromarray(noise(8, 8)).save(tmp_path / "a.tif")
    assert decode_image(tmp_path / "a.tif").width == 8
    good = jpeg_with_precision(8, sof=0xC0)
    (tmp_path / "cut.jpg").write_bytes(good[: len(good) // 2])
    with pytest.raises(ImageDecodeError) as info:
        decode_image(tmp_path / "cut.jpg")
    assert info.value.kind == "truncated or corrupt"
