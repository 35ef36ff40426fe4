"""Turning a manifest's image reference into what goes in ``image_url.url``.

- ``http(s)://`` is sent as is (the endpoint fetches it), unless inlining is asked for.
- a local path (relative to the manifest's folder) or ``file://`` is read (at most
  ``max_bytes``, counted on the bytes read), decoded in full with Pillow so a
  truncated or corrupt file is caught here and never sent, optionally resized, and
  inlined as a base64 data URL.
- ``data:`` URLs pass through after the same check.

Schemes are case-insensitive (``HTTP://`` is a remote URL). The decode that proves an
image whole is the one that prepares it, made as cheap as the format allows: a JPEG is
decoded once, at the smallest DCT scale at or above the size it is sent at (``draft``;
``verify()`` is skipped: it reads no JPEG scan data), then LANCZOS-resized the rest of
the way; at 1/8 scale when its bytes are sent unchanged (never re-encoded).
The check never relies on ``ImageFile.LOAD_TRUNCATED_IMAGES`` (left at Pillow's
default, False, which makes a truncated file an error).

Everything else (an empty cell, ``ftp://``, a missing file, not an image, too
large) raises ``ImageUnreadableError`` with a message that says which.
"""

from __future__ import annotations

import base64
import binascii
import io
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image, ImageFile, UnidentifiedImageError

from .errors import ImageUnreadableError
from .value_types import value_type

# What OpenAI-compatible endpoints accept; anything else is re-encoded as PNG.
SENDABLE_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}


@value_type
class PreparedImage:
    url: str
    width: int | None = None
    height: int | None = None
    inlined: bool = False


@dataclass(frozen=True, slots=True)
class ImageLimits:
    max_bytes: int = 20_000_000
    max_pixels: int = 89_478_485
    max_side: int | None = None


def shorten_data_url(url: str, *, keep: int = 48) -> str:
    """A data URL as it goes in the output: its head and its length, not megabytes of base64."""
    if not is_data_url(url) or len(url) <= keep:
        return url
    return f"{url[:keep]}…[{len(url)} chars]"


def is_remote(url: str) -> bool:
    # Schemes are case-insensitive (RFC 3986): HTTP://x is as remote as http://x.
    return url[:8].lower().startswith(("http://", "https://"))


def remote_url(url: str) -> str:
    """A remote URL as sent: its scheme in lower case, since endpoints that fetch it may compare it exactly."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.lower()}{sep}{rest}"


def is_data_url(url: str) -> bool:
    return url[:5].lower() == "data:"


def prepare_image(url: str, *, base_dir: Path, limits: ImageLimits) -> PreparedImage:
    """Blocking (file I/O, decoding): call it from a worker thread."""
    if not url:
        raise ImageUnreadableError("the row has no image (empty url)")
    if is_remote(url):
        return PreparedImage(url=remote_url(url))
    if is_data_url(url):
        return _from_data_url(url, limits)
    parsed = urlparse(url)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
    elif parsed.scheme and len(parsed.scheme) > 1:
        raise ImageUnreadableError(f"unsupported scheme '{parsed.scheme}://' (use http(s)://, a file path or data:)")
    else:
        path = Path(url)
    if not path.is_absolute():
        path = base_dir / path
    return inline_bytes(_read_file(path, limits), limits=limits, source=str(path))


def local_image_size(url: str, *, base_dir: Path) -> tuple[int, int] | None:
    """Width and height from the header alone (local paths, file:// and data: URLs); None when unknown or unreadable."""
    try:
        if is_data_url(url):
            payload = url.partition(",")[2]
            # The header sits in the first bytes; decode a prefix, not megabytes.
            head = base64.b64decode(payload[:65536], validate=False)
            return header_size(head)
        parsed = urlparse(url)
        if is_remote(url) or (parsed.scheme and len(parsed.scheme) > 1 and parsed.scheme != "file"):
            return None
        path = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(url)
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():  # a pipe would block the open; a device has no header to read
            return None
        with open(path, "rb") as fh:
            return header_size(fh.read(65536))
    except (OSError, binascii.Error, ValueError):
        return None


def header_size(head: bytes) -> tuple[int, int] | None:
    """Image size from its first bytes (enough for PNG, GIF, WebP and most JPEGs)."""
    parser = ImageFile.Parser()
    try:
        parser.feed(head)
    except (OSError, ValueError, SyntaxError):
        return None
    return parser.image.size if parser.image is not None else None


def resized_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """The size ``max_side`` resizing produces (Pillow's thumbnail keeps the aspect ratio)."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _read_file(path: Path, limits: ImageLimits) -> bytes:
    """The file's bytes, at most ``max_bytes``: counted on what is read, since ``st_size`` of a
    device (/dev/zero) or a growing file says nothing about how much there is to read."""
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise ImageUnreadableError(f"{path}: is a directory, not an image")
        if not stat.S_ISREG(info.st_mode):
            raise ImageUnreadableError(f"{path}: not a regular file (a device, pipe or socket); give an image file")
        if info.st_size > limits.max_bytes:  # refused without reading it
            raise ImageUnreadableError(f"{path}: {info.st_size} bytes is over images.max_bytes ({limits.max_bytes})")
        with path.open("rb") as fh:
            data = fh.read(limits.max_bytes + 1)
    except FileNotFoundError:
        raise ImageUnreadableError(f"{path}: file not found") from None
    except OSError as exc:
        raise ImageUnreadableError(f"{path}: cannot be read ({exc.strerror})") from None
    if len(data) > limits.max_bytes:
        raise ImageUnreadableError(f"{path}: more than images.max_bytes ({limits.max_bytes}) bytes")
    return data


def _from_data_url(url: str, limits: ImageLimits) -> PreparedImage:
    header, _, payload = url.partition(",")
    if ";base64" not in header.lower():
        raise ImageUnreadableError("data URL is not base64-encoded")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageUnreadableError("data URL holds invalid base64") from None
    if limits.max_side is not None:
        return inline_bytes(data, limits=limits, source="data URL")
    decoded = decode_for_sending(data, limits, source="data URL")
    decoded.image.close()
    return PreparedImage(url=url, width=decoded.width, height=decoded.height, inlined=True)


@dataclass(frozen=True, slots=True)
class Decoded:
    image: Image.Image  # loaded: resized when max_side applies, else possibly at a reduced draft scale
    width: int  # the image's own size, before any resizing
    height: int
    format: str


def decode_for_sending(data: bytes, limits: ImageLimits, *, source: str) -> Decoded:
    """Check the limits and decode the image once, in full, so a broken file is refused here."""
    if not data:
        raise ImageUnreadableError(f"{source}: the image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageUnreadableError(f"{source}: {len(data)} bytes is over images.max_bytes ({limits.max_bytes})")
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check decides; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return _decode(data, limits, source=source)
    except ImageUnreadableError:
        raise
    except Image.DecompressionBombError:
        raise ImageUnreadableError(f"{source}: refused as a decompression bomb (too many pixels)") from None
    except UnidentifiedImageError:
        raise ImageUnreadableError(f"{source}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageUnreadableError(f"{source}: broken or truncated image ({exc})") from None


def _decode(data: bytes, limits: ImageLimits, *, source: str) -> Decoded:
    im: Image.Image = Image.open(io.BytesIO(data))
    width, height = im.size
    fmt = im.format or ""
    if width * height > limits.max_pixels:
        im.close()
        raise ImageUnreadableError(
            f"{source}: {width}x{height} is over images.max_pixels ({limits.max_pixels}); "
            "refused as a possible decompression bomb"
        )
    if fmt != "JPEG":
        # PNG: chunk checksums, which load() skips for image data. For JPEG verify() checks
        # nothing (a truncated JPEG passes it): the decode below is that check, so it is skipped.
        im.verify()
        im = Image.open(io.BytesIO(data))  # verify() leaves an image unusable: open it again
    if _needs_resize(width, height, limits.max_side):
        target = resized_size(width, height, limits.max_side)
        # A JPEG is decoded once, at the smallest DCT scale (1/2, 1/4, 1/8) at or above the
        # size sent: 1/16 of the pixels of a full decode for a 12 MP photo sent at 768.
        im.draft(None, target)
        # From that scale the resize is under 2x: LANCZOS there costs a few ms more than BICUBIC
        # and stays far closer to a full-size LANCZOS than the JPEG encode after it (bench_images).
        im = _resized(im, target)
    elif fmt in SENDABLE_FORMATS:
        # Sent as its own bytes: decoded only to prove it whole, which a 1/8-scale JPEG decode does.
        im.draft(None, (1, 1))
    im.load()  # raises on a truncated file: LOAD_TRUNCATED_IMAGES is left at False
    return Decoded(image=im, width=width, height=height, format=fmt)


def _resized(im: Image.Image, target: tuple[int, int]) -> Image.Image:
    if im.mode in ("P", "1"):  # palette and 1-bit images cannot be resampled: as thumbnail() does
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.size == target:
        return im
    # load() first: the decode raises here on a truncated file, never hidden by resize().
    im.load()
    return im.resize(target, Image.Resampling.LANCZOS)


def _needs_resize(width: int, height: int, max_side: int | None) -> bool:
    return max_side is not None and max(width, height) > max_side


def inline_bytes(data: bytes, *, limits: ImageLimits, source: str) -> PreparedImage:
    """Check, maybe resize or re-encode, and wrap image bytes as a base64 data URL."""
    decoded = decode_for_sending(data, limits, source=source)
    width, height, fmt = decoded.width, decoded.height, decoded.format
    with decoded.image as im:
        if _needs_resize(width, height, limits.max_side) or fmt not in SENDABLE_FORMATS:
            data, width, height, fmt = _encode(im, source_format=fmt, source=source)
    mime = SENDABLE_FORMATS[fmt]
    encoded = base64.b64encode(data).decode("ascii")
    return PreparedImage(url=f"data:{mime};base64,{encoded}", width=width, height=height, inlined=True)


def _encode(im: Image.Image, *, source_format: str, source: str) -> tuple[bytes, int, int, str]:
    # Transparency survives only in PNG; everything else becomes a smaller JPEG.
    has_alpha = im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info)
    out = io.BytesIO()
    try:
        if has_alpha or source_format == "PNG":
            im.save(out, format="PNG", optimize=False)
            fmt = "PNG"
        else:
            im.convert("RGB").save(out, format="JPEG", quality=90)
            fmt = "JPEG"
    except (OSError, ValueError) as exc:
        raise ImageUnreadableError(f"{source}: cannot be re-encoded for sending ({exc})") from None
    return out.getvalue(), im.width, im.height, fmt
