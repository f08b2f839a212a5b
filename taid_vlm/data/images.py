"""Lazy image references: a path under an image root, embedded bytes, or an in-memory PIL image.

Nothing is decoded until ``ImageRef.load()``. Loading applies the EXIF orientation, converts every
mode to 8-bit RGB (palette, alpha over white, CMYK, 16-bit, greyscale), bounds the pixel count
before decoding (decompression bombs) and turns every failure into a ``SkipSample`` whose reason
the data report counts:

- ``path_escape``: the path resolves outside the image root (``../``, absolute elsewhere, a
  symlink out) and ``allow_outside_root`` is off;
- ``bad_path``: the path cannot name a file (a NUL byte, too long, a symlink loop);
- ``missing_image``: no file at the path;
- ``corrupt_image``: zero bytes, truncated data, not an image, or a side below ``min_side``;
- ``image_too_large``: more than ``max_pixels`` pixels (checked from the header, before decoding).

A 1x1 image is a valid image and is accepted with the default ``min_side=1``; raise ``min_side``
to reject degenerate images.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from taid_vlm.data.types import SkipSample

# 64 MP: far above any training image, far below what fills memory (PIL's own warning is ~89 MP).
DEFAULT_MAX_PIXELS = 64_000_000
_WHITE = (255, 255, 255)


@dataclass(frozen=True, eq=False)
class ImageRef:
    """One image, opened on demand.

    Exactly one of ``path``, ``data``, ``image`` is set. ``path`` is resolved against ``root``
    (relative paths) and must stay inside it unless ``allow_outside_root``; with ``root=None``
    it is used as given.

    Attributes:
        path: file path, relative to ``root`` or absolute.
        data: the encoded file bytes (parquet ``{"bytes": ...}`` columns, HF ``Image`` features).
        image: an in-memory PIL image.
        root: the image root folder.
        allow_outside_root: accept paths that resolve outside ``root``.
        max_pixels: width x height bound checked from the header before decoding.
        min_side: smaller images count as ``corrupt_image``.
        max_side: if set, images whose longer side exceeds it are resized down, aspect kept.
    """

    path: str | None = None
    data: bytes | None = None
    image: Any = None
    root: str | None = None
    allow_outside_root: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = 1
    max_side: int | None = None

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.path, self.data, self.image)) != 1:
            raise ValueError("ImageRef: set exactly one of path, data, image")

    def __repr__(self) -> str:
        if self.path is not None:
            return f"ImageRef(path={self.path!r}, root={self.root!r})"
        if self.data is not None:
            return f"ImageRef(data=<{len(self.data)} bytes>)"
        return f"ImageRef(image={self.image!r})"

    @property
    def label(self) -> str:
        """Short description for error messages."""
        return self.path if self.path is not None else "<embedded image>"

    def resolve(self) -> Path:
        """The file path, checked against the root. Raises ``SkipSample('path_escape')``."""
        assert self.path is not None
        if "\x00" in self.path:
            # The OS cannot take a NUL in a path (``ValueError: embedded null byte`` from every call).
            raise SkipSample("bad_path", f"{self.path!r} contains a NUL byte")
        p = Path(self.path)
        if self.root is None:
            return p
        root = Path(self.root).resolve()
        try:
            full = (root / p).resolve()  # resolves ``..`` and symlinks, so both escape routes are seen
        except (OSError, ValueError) as err:  # too long, a symlink loop, ...
            raise SkipSample("bad_path", f"{self.path!r}: {err}") from None
        if not self.allow_outside_root and not full.is_relative_to(root):
            raise SkipSample("path_escape", f"{self.path!r} resolves outside the image root {str(root)!r}")
        return full

    def _open(self) -> Image.Image:
        """Open (header only) from the path or bytes."""
        if self.path is not None:
            full = self.resolve()
            try:
                is_file = full.is_file()
            except (OSError, ValueError) as err:  # e.g. a path component longer than NAME_MAX
                raise SkipSample("bad_path", f"{self.path!r}: {err}") from None
            if not is_file:
                raise SkipSample("missing_image", f"no file {str(full)!r}")
            if os.path.getsize(full) == 0:
                raise SkipSample("corrupt_image", f"{self.label!r} is empty (0 bytes)")
            source: Any = str(full)
        else:
            if len(self.data) == 0:
                raise SkipSample("corrupt_image", "embedded image has 0 bytes")
            source = io.BytesIO(self.data)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return Image.open(source)
        except Image.DecompressionBombError as err:
            raise SkipSample("image_too_large", f"{self.label!r}: {err}") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            raise SkipSample("corrupt_image", f"{self.label!r}: {err}") from None

    def _check_size(self, img: Image.Image) -> None:
        w, h = img.size
        if w * h > self.max_pixels:
            raise SkipSample("image_too_large", f"{self.label!r} is {w}x{h} > max_pixels {self.max_pixels}")
        if min(w, h) < self.min_side:
            raise SkipSample("corrupt_image", f"{self.label!r} is {w}x{h}, below min_side {self.min_side}")

    def load(self) -> Image.Image:
        """Decode to an RGB ``PIL.Image`` (EXIF-rotated, size-bounded, optionally resized down)."""
        if self.image is not None:
            img = self.image
            self._check_size(img)
        else:
            img = self._open()
            try:
                self._check_size(img)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    img.load()  # full decode here: truncated data fails now, not inside a model
            except SkipSample:
                img.close()
                raise
            except (OSError, ValueError, SyntaxError, EOFError) as err:
                img.close()
                raise SkipSample("corrupt_image", f"{self.label!r}: {err}") from None
        out = to_rgb(exif_transpose(img))
        if out is img:
            out = img.copy()
        return resize_max_side(out, self.max_side)

    def check(self) -> None:
        """Decode once and discard: raises the ``SkipSample`` that ``load`` would raise."""
        self.load().close()

    def check_header(self) -> None:
        """The cheap part of ``load``: the path (root, existence), the header (format, size bounds),
        no pixel decode. Truncated pixel data still passes; ``check`` finds that too."""
        if self.image is not None:
            self._check_size(self.image)
            return
        img = self._open()
        try:
            self._check_size(img)
        finally:
            img.close()


def exif_transpose(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a broken EXIF block leaves the image as it is."""
    try:
        return ImageOps.exif_transpose(img) or img
    except Exception:  # noqa: BLE001 - malformed EXIF is common and never worth a skip
        return img


def _over_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    bg = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(bg, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit ``RGB``.

    Transparency (RGBA, LA, PA, palette or RGB with a transparent colour) is composited over
    white rather than dropped, so transparent pixels do not turn black. 16/32-bit integer and
    float greyscale are scaled to 0..255 from their full range (``I;16``: /257).
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        return _over_white(img)
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8), mode="L").convert("RGB")
    return img.convert("RGB")  # P, L, 1, CMYK, YCbCr, LAB, HSV


def resize_max_side(img: Image.Image, max_side: int | None) -> Image.Image:
    """Resize down (bicubic) so the longer side is at most ``max_side``; aspect ratio kept."""
    if not max_side or max(img.size) <= max_side:
        return img
    w, h = img.size
    scale = max_side / max(w, h)
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)


def image_ref(value: Any, *, root: str | None = None, **options: Any) -> ImageRef:
    """Build an ``ImageRef`` from what records hold: a path string, raw bytes, a PIL image, an
    ``ImageRef`` (returned as is), or an HF ``Image``-feature dict ``{"bytes": ..., "path": ...}``
    (bytes win when both are set)."""
    if isinstance(value, ImageRef):
        return value
    if isinstance(value, Image.Image):
        return ImageRef(image=value, **options)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ImageRef(data=bytes(value), **options)
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return ImageRef(data=bytes(value["bytes"]), **options)
        if value.get("path"):
            return ImageRef(path=str(value["path"]), root=root, **options)
        raise SkipSample("bad_record", "image dict without 'bytes' or 'path'")
    if isinstance(value, (str, os.PathLike)) and str(value):
        return ImageRef(path=str(value), root=root, **options)
    raise SkipSample("bad_record", f"cannot use {type(value).__name__} as an image")
