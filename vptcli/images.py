"""Decode one image file into an RGB ``uint8`` array, or raise one error that names the file.

Every command reads images through :func:`decode_image`, so training, evaluation and prediction see
exactly the same pixels. The rules, in order:

1. **Content decides, not the extension.** Pillow identifies the format from the file's bytes: a PNG
   named ``.jpg`` decodes; an HTML page named ``.jpg`` is "not an image". 0-byte files are refused.
2. **Size limit from the header.** The pixel count is checked from the header (before any pixel is
   decoded) against ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`, Pillow's own default), so a
   decompression bomb is refused with its pixel count instead of exhausting memory. Pillow's
   ``DecompressionBombWarning`` is silenced during decoding and its ``DecompressionBombError`` becomes an
   :class:`ImageDecodeError`.
3. **Full decode.** Pixels are decoded completely (not ``verify()``): truncated or corrupt data is an
   error. (A PNG whose pixel data is complete but whose final ``IEND`` chunk is cut off decodes, as in
   Pillow.)
   Files in formats that Pillow cannot decode are recognised from their bytes before decoding and
   named, with what to do, as ``"unsupported: ..."`` (never "corrupt"): JPEG with 12-bit (or other
   non-8-bit) sample precision and lossless JPEG (X-ray and thermal cameras), HEIC/HEIF (phone
   photos; decoded when the optional ``pillow-heif`` plug-in is installed), AVIF when this Pillow
   build lacks it, JPEG XL, and camera raw formats (CR2, CR3, CRW, NEF, ARW, DNG, ORF, RW2, RAF, PEF,
   SRW...; a raw file must never be read as its small embedded preview). See :func:`sniff_unsupported`.
4. **First frame.** Animated or multi-frame files (GIF, APNG, WebP, multi-page TIFF, MPO) give their
   first frame, with a note such as ``"animated: first frame of 5"``.
5. **Bit depth.** 16-bit integer data (``I;16``, ``I;16B``, ``I``, 16-bit TIFF, and 16-bit RGB/RGBA
   PNG/TIFF, whose low bytes Pillow would drop) is scaled by its *used bit range*: the largest value
   ``m`` gives ``b = max(8, bit_length(m))`` rounded up to an even number of bits (sensors are 8, 10,
   12, 14 or 16-bit), and ``out = round(value * 255 / (2**b - 1))``. A 0–65535 gradient therefore
   comes out with mean ≈ 127, 12-bit data stored in 16-bit files fills 0–255, and 8-bit data in a
   16-bit container is unchanged. Because ``b`` is inferred per image, a very dark image can be scaled
   differently from its bright siblings: state the sensor's bit depth (``bit_depth=12``,
   ``vpt ingest --bit-depth 12``) to scale every image by ``value / (2**bit_depth - 1)``; values above
   that range are then an error. Signed or 32-bit integer data outside 0–65535 is scaled by its
   min–max range (with a note). Float data: NaN or ±inf is an error; values within [0, 1] are scaled
   by 255, values within [0, 255] are kept, anything else is scaled by its min–max range (with a note).
6. **Colour.** Palette (with or without transparency), ``1``, ``L``, ``LA``, ``RGBA``, ``PA`` and
   colour-keyed images become RGB; transparent pixels are composited over :data:`ALPHA_BACKGROUND`
   (black). ``CMYK`` uses the embedded ICC profile when there is one (littleCMS, to sRGB), otherwise
   Pillow's ``R = (255 - C) * (255 - K) / 255`` conversion. Other embedded ICC profiles are not applied.
7. **EXIF orientation** (tag 274, also read from XMP by Pillow) is applied last, with the same
   transpositions as ``PIL.ImageOps.exif_transpose``; ``width``/``height`` are the displayed size.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from vptcli.errors import VptError, one_line

__all__ = [
    "ALPHA_BACKGROUND",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "DecodedImage",
    "ImageDecodeError",
    "decode_image",
    "low_bit_usage",
    "pixel_sha256",
    "sniff_unsupported",
]

DEFAULT_MAX_PIXELS: int = 89_478_485
"""Default pixel limit (width × height), the same as Pillow's ``Image.MAX_IMAGE_PIXELS`` default."""

ALPHA_BACKGROUND: tuple[int, int, int] = (0, 0, 0)
"""RGB background that transparent pixels are composited on: black.

Black matches what ``Image.convert("RGB")`` gives for the usual fully transparent black pixels, and
the dark background of most machine-vision set-ups. Fixed so that one image always decodes the same."""

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {
        ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp",
        ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".j2k", ".avif", ".mpo", ".pcx",
        ".sgi", ".rgb", ".ras", ".dds", ".psd", ".xbm", ".xpm", ".im", ".icns", ".qoi",
    }
)
"""Usual image file suffixes (lower case). Only used to word "not an image" reasons: decoding is
decided by content, never by the suffix."""

LOW_BIT_FRACTION: float = 1 / 8
"""16-bit data whose largest value never exceeds this fraction of 65535 is reported by ingest."""

# Reason categories (the part of ImageDecodeError.reason before the first ": ").
KIND_MISSING = "missing"
KIND_UNREADABLE = "unreadable"
KIND_EMPTY = "empty file"
KIND_NOT_IMAGE = "not an image"
KIND_CORRUPT = "truncated or corrupt"
KIND_TOO_LARGE = "too many pixels"
KIND_BAD_VALUES = "invalid pixel values"
KIND_UNSUPPORTED = "unsupported"

_PIL_LIMIT_LOCK = threading.Lock()
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
_ORIENTATION_TAG = 0x0112
# The transpositions of PIL.ImageOps.exif_transpose, by EXIF orientation value.
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAP_16 = {";16B": ";16L", ";16L": ";16B"}


class ImageDecodeError(VptError):
    """A file that cannot be turned into an RGB image.

    Attributes: ``path`` (:class:`~pathlib.Path`), ``reason`` (one line, ``"<kind>: <detail>"``, e.g.
    ``"not an image: content looks like HTML or XML text"``) and ``kind`` (the part before the colon,
    one of the ``KIND_*`` constants; ingest groups skipped files by it). ``str(err)`` is
    ``"<path>: <reason>"``.
    """

    def __init__(self, path: str | Path, reason: str, kind: str | None = None) -> None:
        self.path = Path(path)
        self.reason = reason
        self.kind = kind or reason.split(":", 1)[0]
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable (process pools, multiprocessing DataLoader workers)
        return (type(self), (self.path, self.reason, self.kind))


@dataclass(frozen=True)
class DecodedImage:
    """One decoded image.

    ``pixels``: ``[H, W, 3]`` ``uint8`` RGB (C-contiguous), after EXIF orientation.
    ``mode``: the file's Pillow mode before conversion (``'L'``, ``'I;16'``, ``'P'``, ``'CMYK'``...).
    ``width``/``height``: displayed size in pixels (after EXIF orientation).
    ``notes``: what decoding did beyond a plain read, e.g. ``'animated: first frame of 5'``,
    ``'exif-rotated (orientation 6)'``, ``'16-bit data uses 12 bits'``.
    ``source_max``: for integer data wider than 8 bits, the largest raw value before scaling (used to
    warn about 12-bit data in 16-bit files); ``None`` for 8-bit and float sources.
    """

    pixels: np.ndarray
    mode: str
    width: int
    height: int
    notes: tuple[str, ...] = ()
    source_max: int | None = None


def pixel_sha256(img: DecodedImage) -> str:
    """SHA-256 (hex) of the decoded pixels, shape included: identical pictures in different files,
    formats or orientations-on-disk hash the same; any pixel change gives another hash."""
    pixels = np.ascontiguousarray(img.pixels, dtype=np.uint8)
    digest = hashlib.sha256("x".join(str(d) for d in pixels.shape).encode("ascii") + b":")
    digest.update(memoryview(pixels).cast("B"))
    return digest.hexdigest()


def low_bit_usage(img: DecodedImage, fraction: float = LOW_BIT_FRACTION) -> bool:
    """True when ``img`` came from integer data wider than 8 bits (16-bit files) whose largest value
    never exceeds ``fraction`` (default 1/8) of the 16-bit range, i.e. ``source_max <= 65535 *
    fraction``: typically 10/12-bit sensor data stored in 16-bit files (see ``--bit-depth``)."""
    return img.source_max is not None and img.source_max <= 65535 * fraction


def decode_image(
    path: str | Path,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    bit_depth: int | None = None,
) -> DecodedImage:
    """Decode ``path`` into a :class:`DecodedImage` (``[H, W, 3]`` uint8 RGB); see the module docstring.

    ``max_pixels``: refuse images whose width × height exceeds this (checked from the header, before
    decoding); ``None`` disables the limit (Pillow's own limit is then lifted for the process).
    ``bit_depth``: the sensor's bit depth (8–16) for integer data wider than 8 bits: scale by
    ``value / (2**bit_depth - 1)`` instead of the inferred used range; ignored for 8-bit files.

    Raises :class:`ImageDecodeError` (a :class:`VptError`) naming the file and the reason for anything
    that is not a fully decodable image; :class:`VptError` for an invalid ``bit_depth``/``max_pixels``.
    Thread-safe (ingest decodes in a thread pool).
    """
    path = Path(path)
    if bit_depth is not None and not (isinstance(bit_depth, int) and 8 <= bit_depth <= 16):
        raise VptError(f"bit depth must be an integer from 8 to 16 (got {bit_depth!r})")
    if max_pixels is not None and (not isinstance(max_pixels, int) or max_pixels < 1):
        raise VptError(f"the pixel limit must be a positive integer (got {max_pixels!r})")
    _check_file(path)
    unsupported = sniff_unsupported(path)
    if unsupported is not None:
        raise ImageDecodeError(path, f"{KIND_UNSUPPORTED}: {unsupported}")
    _allow_in_pillow(max_pixels)
    with warnings.catch_warnings():
        # Pillow's warnings (decompression bomb, odd EXIF, ...) are never printed raw: the size limit
        # is enforced below and every real problem becomes an ImageDecodeError.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", module=r"PIL(\..*)?$")
        try:
            return _decode(path, max_pixels, bit_depth)
        except ImageDecodeError:
            raise
        except Image.DecompressionBombError as exc:
            raise _too_large(path, _bomb_pixels(exc), max_pixels) from None
        except UnidentifiedImageError:
            raise ImageDecodeError(path, _describe_content(path)) from None
        except MemoryError:
            raise ImageDecodeError(path, f"{KIND_TOO_LARGE}: out of memory while decoding") from None
        except PermissionError as exc:
            raise ImageDecodeError(path, f"{KIND_UNREADABLE}: {exc.strerror or exc}") from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError,
                ZeroDivisionError, RuntimeError) as exc:
            # What Pillow raises for damaged data: "image file is truncated", "broken PNG file", ...
            detail = str(exc).strip() or type(exc).__name__
            raise ImageDecodeError(path, f"{KIND_CORRUPT}: {one_line(detail, 200)}") from None


# --------------------------------------------------------------------------------------------------
# steps


def _check_file(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        kind = "broken symbolic link" if path.is_symlink() else "file not found"
        raise ImageDecodeError(path, f"{KIND_MISSING}: {kind}") from None
    except PermissionError:
        raise ImageDecodeError(path, f"{KIND_UNREADABLE}: permission denied") from None
    except OSError as exc:
        raise ImageDecodeError(path, f"{KIND_UNREADABLE}: {exc.strerror or exc}") from None
    if not path.is_file():
        raise ImageDecodeError(path, f"{KIND_NOT_IMAGE}: not a regular file")
    if st.st_size == 0:
        raise ImageDecodeError(path, f"{KIND_EMPTY}: 0 bytes")


def _allow_in_pillow(max_pixels: int | None) -> None:
    """Make sure Pillow's process-wide limit never refuses what ``max_pixels`` allows (raise only)."""
    with _PIL_LIMIT_LOCK:
        current = Image.MAX_IMAGE_PIXELS
        if current is None:
            return
        if max_pixels is None:
            Image.MAX_IMAGE_PIXELS = None
        elif max_pixels > current:
            Image.MAX_IMAGE_PIXELS = max_pixels


def _decode(path: Path, max_pixels: int | None, bit_depth: int | None) -> DecodedImage:
    notes: list[str] = []
    with Image.open(path) as im:
        width, height = im.size
        if width < 1 or height < 1:
            raise ImageDecodeError(path, f"{KIND_CORRUPT}: header declares a {width}×{height} image")
        if max_pixels is not None and width * height > max_pixels:
            raise _too_large(path, width * height, max_pixels, (width, height))
        n_frames = int(getattr(im, "n_frames", 1) or 1)
        if n_frames > 1:
            kind = "animated" if getattr(im, "is_animated", False) and im.format != "TIFF" else "multi-frame"
            notes.append(f"{kind}: first frame of {n_frames}")
            im.seek(0)
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            notes.append("warning: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; truncation not detected")
        mode = im.mode
        wide_tiles = _swapped_16bit_tiles(im)  # before anything loads the pixels (PNG getexif does)
        im.load()
        orientation = _orientation(im)
        if im.size != (width, height):  # e.g. a GIF frame larger than the logical screen
            width, height = im.size
            if max_pixels is not None and width * height > max_pixels:
                raise _too_large(path, width * height, max_pixels, (width, height))
        rgb, source_max = _to_rgb(im, path, bit_depth, notes, wide_tiles)
    if orientation in _EXIF_TRANSPOSE:
        rgb = np.asarray(Image.fromarray(rgb, "RGB").transpose(_EXIF_TRANSPOSE[orientation]))
        notes.append(f"exif-rotated (orientation {orientation})")
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:  # defensive: never hand out anything but [H, W, 3]
        raise ImageDecodeError(path, f"{KIND_UNSUPPORTED}: decoded to shape {rgb.shape}")
    return DecodedImage(
        pixels=rgb,
        mode=mode,
        width=int(rgb.shape[1]),
        height=int(rgb.shape[0]),
        notes=tuple(notes),
        source_max=source_max,
    )


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_ORIENTATION_TAG)
        return int(value) if value is not None else 1
    except Exception:  # noqa: BLE001 - unreadable EXIF is not a reason to refuse the pixels
        return 1


def _tile_rawmode(tile) -> str | None:
    args = tile[3] if len(tile) > 3 else None
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


def _swapped_16bit_tiles(im: Image.Image) -> list | None:
    """For 16-bit-per-channel RGB/RGBA files (which Pillow reduces to their high bytes), the same
    tiles with the byte order swapped: decoding those gives the low bytes. ``None`` otherwise."""
    if im.mode not in ("RGB", "RGBA") or not im.tile:
        return None
    swapped = []
    for tile in im.tile:
        rawmode = _tile_rawmode(tile)
        if rawmode is None or not rawmode.startswith(im.mode + ";16"):
            return None
        suffix = rawmode[len(im.mode):]
        if suffix == ";16N":
            suffix = ";16L" if np.little_endian else ";16B"
        if suffix not in _SWAP_16:
            return None
        new_raw = im.mode + _SWAP_16[suffix]
        args = tile[3]
        new_args = new_raw if isinstance(args, str) else (new_raw, *args[1:])
        swapped.append(tuple(tile[:3]) + (new_args,) + tuple(tile[4:]))
    return swapped


def _to_rgb(
    im: Image.Image, path: Path, bit_depth: int | None, notes: list[str], wide_tiles: list | None
) -> tuple[np.ndarray, int | None]:
    """Loaded first frame -> ([H, W, 3] uint8, source_max)."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        data = np.asarray(im)
        if data.dtype.kind == "u" or (data.size and int(data.min()) >= 0 and int(data.max()) <= 65535):
            gray, source_max = _scale_wide(data, path, bit_depth, notes)
        else:
            gray, source_max = _scale_min_max(data.astype(np.float64), notes, "integer data"), None
        return np.repeat(gray[:, :, None], 3, axis=2), source_max
    if mode == "F":
        return np.repeat(_scale_float(np.asarray(im), path, notes)[:, :, None], 3, axis=2), None
    if wide_tiles is not None:
        wide = _decode_low_bytes(im, path, wide_tiles)
        if wide is not None:
            notes.append(f"16-bit colour ({mode};16)")
            color, source_max = _scale_wide(wide[:, :, :3], path, bit_depth, notes)
            if mode == "RGBA":
                alpha = wide[:, :, 3].astype(np.float64) / 65535.0
                return _composite(color.astype(np.float64), alpha), source_max
            return color, source_max
        notes.append("16-bit colour reduced to 8 bits by Pillow")
    if mode == "1":
        return np.asarray(im.convert("RGB")), None
    if mode == "CMYK":
        return _cmyk_to_rgb(im, notes), None
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or im.has_transparency_data:
        rgba = np.asarray(im.convert("RGBA"))
        alpha = rgba[:, :, 3]
        if alpha.min() < 255:
            notes.append("alpha composited on black")
        return _composite(rgba[:, :, :3].astype(np.float64), alpha.astype(np.float64) / 255.0), None
    if mode == "RGB":
        return np.asarray(im), None
    try:
        return np.asarray(im.convert("RGB")), None
    except ValueError as exc:
        raise ImageDecodeError(path, f"{KIND_UNSUPPORTED}: colour mode {mode} ({exc})") from None


def _decode_low_bytes(im: Image.Image, path: Path, wide_tiles: list) -> np.ndarray | None:
    """Decode a 16-bit RGB(A) file a second time with swapped byte order; ``[H, W, C]`` uint16."""
    high = np.asarray(im)
    try:
        with Image.open(path) as again:
            again.tile = _as_tiles(again, wide_tiles)
            again.load()
            low = np.asarray(again)
    except Exception:  # noqa: BLE001 - fall back to Pillow's 8-bit reading
        return None
    if low.shape != high.shape:
        return None
    return (high.astype(np.uint16) << 8) | low.astype(np.uint16)


def _as_tiles(im: Image.Image, tiles: list) -> list:
    tile_type = type(im.tile[0]) if im.tile else tuple
    if hasattr(tile_type, "_fields"):
        return [tile_type(*t) for t in tiles]
    return [tuple(t) for t in tiles]


def _scale_wide(data: np.ndarray, path: Path, bit_depth: int | None, notes: list[str]) -> tuple[np.ndarray, int]:
    """Integer data in 0..65535 -> uint8, by the stated or the inferred used bit depth."""
    values = data.astype(np.uint32)
    source_max = int(values.max()) if values.size else 0
    if bit_depth is not None:
        denom = (1 << bit_depth) - 1
        if source_max > denom:
            raise ImageDecodeError(
                path,
                f"{KIND_BAD_VALUES}: values reach {source_max}, above the stated {bit_depth}-bit range "
                f"(0-{denom}); check --bit-depth",
            )
        if bit_depth < 16:
            notes.append(f"16-bit data scaled as {bit_depth}-bit")
    else:
        used = max(8, source_max.bit_length())
        used += used % 2
        denom = (1 << used) - 1
        if used < 16:
            notes.append(f"16-bit data uses {used} bits")
    out = (values * 255 + denom // 2) // denom
    return out.astype(np.uint8), source_max


def _scale_min_max(data: np.ndarray, notes: list[str], what: str) -> np.ndarray:
    lo, hi = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    notes.append(f"{what} scaled by its min-max range [{lo:g}, {hi:g}]")
    if hi <= lo:
        return np.zeros(data.shape, np.uint8)
    return np.rint((data - lo) * (255.0 / (hi - lo))).clip(0, 255).astype(np.uint8)


def _scale_float(data: np.ndarray, path: Path, notes: list[str]) -> np.ndarray:
    finite = np.isfinite(data)
    if not finite.all():
        n_nan = int(np.isnan(data).sum())
        n_inf = int(data.size - finite.sum()) - n_nan
        raise ImageDecodeError(
            path, f"{KIND_BAD_VALUES}: float image holds {n_nan} NaN and {n_inf} infinite value(s)"
        )
    data = data.astype(np.float64)
    lo, hi = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    if lo >= 0.0 and hi <= 1.0:
        notes.append("float data in [0, 1] scaled by 255")
        return np.rint(data * 255.0).astype(np.uint8)
    if lo >= 0.0 and hi <= 255.0:
        notes.append("float data in [0, 255] rounded")
        return np.rint(data).astype(np.uint8)
    return _scale_min_max(data, notes, "float data")


def _composite(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``rgb`` float [H, W, 3] in 0..255, ``alpha`` float [H, W] in 0..1 -> uint8 over ALPHA_BACKGROUND."""
    background = np.asarray(ALPHA_BACKGROUND, np.float64)
    a = alpha[:, :, None]
    return np.rint(rgb * a + background * (1.0 - a)).clip(0, 255).astype(np.uint8)


def _cmyk_to_rgb(im: Image.Image, notes: list[str]) -> np.ndarray:
    icc = im.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
            if converted is not None:
                notes.append("CMYK converted with its ICC profile")
                return np.asarray(converted.convert("RGB"))
        except Exception:  # noqa: BLE001 - a broken profile: plain conversion
            notes.append("CMYK ICC profile unusable; plain conversion")
    return np.asarray(im.convert("RGB"))


# --------------------------------------------------------------------------------------------------
# formats Pillow cannot decode

_HEIF_BRANDS = frozenset({"heic", "heix", "heim", "heis", "hevc", "hevx", "hevm", "hevs", "heif", "mif1", "msf1"})
_HEVC_BRANDS = _HEIF_BRANDS - {"heif", "mif1", "msf1"}
_AVIF_BRANDS = frozenset({"avif", "avis"})
_RAW_SUFFIXES = {
    ".cr2": "Canon CR2", ".cr3": "Canon CR3", ".crw": "Canon CRW", ".nef": "Nikon NEF", ".nrw": "Nikon NRW",
    ".arw": "Sony ARW", ".srf": "Sony SRF", ".sr2": "Sony SR2", ".dng": "DNG", ".orf": "Olympus ORF",
    ".rw2": "Panasonic RW2", ".raf": "Fujifilm RAF", ".pef": "Pentax PEF", ".srw": "Samsung SRW",
    ".3fr": "Hasselblad 3FR", ".erf": "Epson ERF", ".kdc": "Kodak KDC", ".dcr": "Kodak DCR",
    ".mos": "Leaf MOS", ".mrw": "Minolta MRW", ".x3f": "Sigma X3F", ".iiq": "Phase One IIQ",
    ".rwl": "Leica RWL",
}
_RAW_ADVICE = (
    "Pillow would at best read its small embedded preview: convert it to 16-bit TIFF or PNG with the "
    "camera software, darktable, RawTherapee or dcraw/LibRaw (e.g. `dcraw -T -4 FILE`)"
)
_HEIF_PLUGIN_LOCK = threading.Lock()


def sniff_unsupported(path: str | Path, head: bytes | None = None) -> str | None:
    """Recognise, from the file's bytes, an image format that Pillow cannot decode (here).

    Returns ``None`` for anything else, or the detail of the reason (without the ``"unsupported: "``
    prefix): what the format is and what to do. Recognised (sources: ITU T.81 for JPEG frame headers,
    ISO/IEC 14496-12 / 23008-12 for the ``ftyp`` box and its HEIF/AVIF brands, ISO/IEC 18181-2 for JPEG
    XL signatures, the camera makers' TIFF-based raw layouts):

    * JPEG whose frame header (SOFn) declares a sample precision other than 8 bits (12-bit JPEG from
      X-ray and thermal cameras), or the lossless process (SOF3);
    * HEIC/HEIF (``ftyp`` brands ``heic``, ``heix``, ``mif1``, ...), unless the optional
      ``pillow-heif`` plug-in is installed (it is then registered with Pillow and the file decodes);
    * AVIF when this Pillow build has no AVIF support;
    * JPEG XL (bare codestream ``FF 0A`` or the ``JXL `` container) unless a Pillow plug-in opens it;
    * camera raw files: by signature (Canon CR2/CR3/CRW, Olympus ORF, Panasonic RW2, Fujifilm RAF,
      Minolta MRW, Sigma X3F) or a raw suffix (``.nef``, ``.arw``, ``.dng``...) on TIFF content.

    The file name is only used for wording (``"despite the .jpg name"``) and for TIFF-based raw
    formats that carry no signature of their own. ``head``: the first bytes if already read (at least
    64 bytes); the JPEG check reads the file's segment headers itself. Never raises for I/O problems
    (returns ``None``; decoding then reports them).
    """
    path = Path(path)
    try:
        if head is None:
            with open(path, "rb") as fh:
                head = fh.read(64)
    except OSError:
        return None
    suffix = unicodedata.normalize("NFC", path.suffix.lower())
    found = _sniff_container(head, suffix)
    if found is None and head.startswith(b"\xff\xd8\xff"):
        found = _sniff_jpeg(path)
    if found is None:
        return None
    name, advice = found
    if suffix in IMAGE_SUFFIXES and not _suffix_matches(name, suffix):
        name += f" (despite the {suffix} name)"
    return f"{name}; {advice}"


def _suffix_matches(name: str, suffix: str) -> bool:
    """Whether ``suffix`` is a usual name for the format described by ``name``."""
    for key, suffixes in (
        ("JPEG XL", {".jxl"}), ("AVIF", {".avif"}), ("HEIC", {".heic", ".heif", ".hif"}),
        ("JPEG", {".jpg", ".jpeg", ".jpe", ".jfif"}),
    ):
        if key in name:
            return suffix in suffixes
    return False


_RAW_SIGNATURES = (
    (lambda h: h.startswith(b"II*\x00") and h[8:11] == b"CR\x02", "Canon CR2"),
    (lambda h: h.startswith(b"II\x1a\x00\x00\x00HEAPCCDR"), "Canon CRW"),
    (lambda h: h[:4] in (b"IIRO", b"IIRS", b"MMOR"), "Olympus ORF"),
    (lambda h: h.startswith(b"IIU\x00"), "Panasonic RW2"),
    (lambda h: h.startswith(b"FUJIFILMCCD-RAW"), "Fujifilm RAF"),
    (lambda h: h.startswith(b"\x00MRM"), "Minolta MRW"),
    (lambda h: h.startswith(b"FOVb"), "Sigma X3F"),
)
"""Camera raw formats recognised by their own signature (the rest are TIFF files named by suffix)."""


def _sniff_container(head: bytes, suffix: str) -> tuple[str, str] | None:
    if head[4:8] == b"ftyp":
        found = _sniff_ftyp(head)
        if found is not None:
            return found if found != ("", "") else None
    if head.startswith((b"\xff\n", b"\x00\x00\x00\x0cJXL \r\n\x87\n")):
        return _jxl()
    for matches, name in _RAW_SIGNATURES:
        if matches(head):
            return f"{name} raw image", _RAW_ADVICE
    if head[:4] in (b"II*\x00", b"MM\x00*") and suffix in _RAW_SUFFIXES:
        return f"{_RAW_SUFFIXES[suffix]} raw image", _RAW_ADVICE
    return None


def _sniff_ftyp(head: bytes) -> tuple[str, str] | None:
    """An ISO-BMFF ``ftyp`` box: ``(name, advice)`` for a format Pillow cannot decode, ``("", "")`` for
    one it can (AVIF with support, HEIF with the plug-in), ``None`` for other brands."""
    size = int.from_bytes(head[:4], "big")
    box = head[8:max(16, min(size, len(head)))]
    brands = [box[i:i + 4].decode("latin-1") for i in range(0, len(box) - 3, 4)]
    brands = {b for i, b in enumerate(brands) if i != 1}  # skip minor_version
    if "crx " in brands:
        return "Canon CR3 raw image", _RAW_ADVICE
    if brands & _AVIF_BRANDS and not brands & _HEVC_BRANDS:
        if _pillow_opens("AVIF"):
            return "", ""
        return ("AVIF image, which this Pillow build cannot decode",
                "convert it to PNG or JPEG, or upgrade Pillow (11.3+ reads AVIF)")
    if brands & _HEIF_BRANDS:
        if _heif_plugin():
            return "", ""
        major = box[:4].decode("latin-1")
        brand = major if major in _HEIF_BRANDS else min(brands & _HEIF_BRANDS)
        return ((f"HEIC/HEIF image (ftyp brand '{brand.strip()}', the photo format of most phones), "
                 "which Pillow cannot decode"),
                ("convert it to PNG or JPEG (e.g. `heif-convert`, or export from the phone or "
                 "Photos), or install the plug-in: pip install pillow-heif"))
    if "jxl " in brands:
        return _jxl() or ("", "")
    return None


def _jxl() -> tuple[str, str] | None:
    if _pillow_opens("JXL"):
        return None
    return ("JPEG XL image, which Pillow cannot decode",
            "convert it to PNG or JPEG (e.g. `djxl FILE out.png`)")


def _pillow_opens(fmt: str) -> bool:
    Image.init()
    if fmt not in Image.OPEN:
        return False
    if fmt == "AVIF":
        try:
            from PIL import features

            return bool(features.check("avif"))
        except Exception:  # noqa: BLE001
            return False
    return True


def _heif_plugin() -> bool:
    """Register the optional ``pillow-heif`` opener with Pillow; True when HEIF can be decoded."""
    with _HEIF_PLUGIN_LOCK:
        if _pillow_opens("HEIF"):
            return True
        try:
            import pillow_heif  # optional plug-in
        except ImportError:
            return False
        try:
            pillow_heif.register_heif_opener()
        except Exception:  # noqa: BLE001 - a broken plug-in: report the format as unsupported
            return False
        return _pillow_opens("HEIF")


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _sniff_jpeg(path: Path) -> tuple[str, str] | None:
    """Walk a JPEG's marker segments up to the frame header; unsupported precision or process."""
    try:
        with open(path, "rb") as fh:
            fh.seek(2)
            for _ in range(256):  # a JPEG has a handful of segments before SOF
                marker = fh.read(2)
                while marker[:1] == b"\xff" and marker[1:2] == b"\xff":  # fill bytes
                    marker = marker[1:] + fh.read(1)
                if len(marker) < 2 or marker[0] != 0xFF:
                    return None
                code = marker[1]
                if code in (0x01,) or 0xD0 <= code <= 0xD7:
                    continue
                if code in (0xD9, 0xDA):  # end of image / start of scan before any frame header
                    return None
                length = int.from_bytes(fh.read(2), "big")
                if length < 2:
                    return None
                if code in _SOF_MARKERS:
                    precision = fh.read(1)
                    if not precision:
                        return None
                    bits = precision[0]
                    if bits != 8:
                        return ((f"{bits}-bit JPEG (the frame header declares {bits}-bit samples, common "
                                "from X-ray and thermal cameras), which Pillow cannot decode"),
                                ("export the images as 16-bit PNG or TIFF from the camera software, or "
                                "convert them with a 12-bit-capable tool (e.g. dcmtk or GDAL)"))
                    if code in (0xC3, 0xC7, 0xCB, 0xCF):
                        return ("lossless JPEG (ITU T.81 process 14), which Pillow cannot decode",
                                "export the images as PNG or TIFF from the camera software")
                    return None
                fh.seek(length - 2, 1)
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------------------------------
# messages


def _too_large(path: Path, pixels: int | None, limit: int | None, size: tuple[int, int] | None = None):
    what = f"{pixels:,} pixels" if pixels is not None else "more pixels than Pillow allows"
    if size is not None:
        what += f" ({size[0]}×{size[1]})"
    limit_text = f"{limit:,}" if limit is not None else f"{Image.MAX_IMAGE_PIXELS:,}"
    return ImageDecodeError(
        path,
        f"{KIND_TOO_LARGE}: image has {what}, above the limit of {limit_text} pixels "
        "(raise --max-pixels if the image is genuine)",
    )


def _bomb_pixels(exc: Exception) -> int | None:
    match = _BOMB_PIXELS.search(str(exc))
    return int(match.group(1)) if match else None


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _describe_content(path: Path) -> str:
    """The reason for a file that Pillow does not recognise: a damaged image (known signature) or
    "not an image" with a short description of what it seems to be."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        head = b""
    suffix = unicodedata.normalize("NFC", path.suffix.lower())
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return f"{KIND_CORRUPT}: {name} signature but unreadable header (truncated?)"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped[:1] == b"<":
        kind = "content looks like HTML or XML text"
    elif stripped.startswith(b"%PDF"):
        kind = "content is a PDF document"
    elif head.startswith((b"PK\x03\x04", b"\x1f\x8b", b"7z\xbc\xaf")):
        kind = "content is an archive"
    elif head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        kind = "content is plain text"
    else:
        kind = "content is not a recognised image format"
    if suffix in IMAGE_SUFFIXES:
        return f"{KIND_NOT_IMAGE}: {kind} (despite the {suffix} name)"
    if suffix:
        return f"{KIND_NOT_IMAGE}: {kind} ({suffix} file)"
    return f"{KIND_NOT_IMAGE}: {kind}"


