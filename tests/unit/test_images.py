"""ImageRef: lazy loading, RGB conversion of every mode, EXIF, size bounds, skip reasons."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from taid_vlm.data.images import ImageRef, image_ref
from taid_vlm.data.types import SkipSample


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` (no pixel data follows)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def reason(ref: ImageRef) -> str:
    with pytest.raises(SkipSample) as err:
        ref.load()
    return err.value.reason


def test_rgb_image_roundtrip_and_lazy(tmp_path):
    Image.new("RGB", (5, 3), (10, 20, 30)).save(tmp_path / "a.png")
    ref = ImageRef(path="a.png", root=str(tmp_path))
    (tmp_path / "b.png").write_bytes(b"")  # creating refs never touches files
    ImageRef(path="b.png", root=str(tmp_path))
    img = ref.load()
    assert img.mode == "RGB" and img.size == (5, 3) and img.getpixel((4, 2)) == (10, 20, 30)


def test_modes_convert_to_rgb():
    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 0))  # fully transparent black -> white, not black
    got = ImageRef(data=encode(rgba)).load()
    assert got.getpixel((0, 0)) == (255, 0, 0) and got.getpixel((1, 0)) == (255, 255, 255)

    la = Image.new("LA", (1, 1), (100, 255))
    assert ImageRef(data=encode(la)).load().getpixel((0, 0)) == (100, 100, 100)

    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 1  # palette index 1 transparent -> white
    got = ImageRef(data=encode(pal, transparency=1)).load()
    assert got.getpixel((0, 0)) == (0, 0, 255) and got.getpixel((1, 0)) == (255, 255, 255)

    grey = Image.new("L", (1, 1), 77)
    assert ImageRef(image=grey).load().getpixel((0, 0)) == (77, 77, 77)


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    got = ImageRef(data=encode(cmyk, "JPEG", quality=95)).load()
    assert got.mode == "RGB"
    r, g, b = got.getpixel((4, 4))
    assert r > 230 and g < 25 and b < 25


def test_16bit_png_scaled_to_8bit():
    arr = np.array([[0, 65535, 257 * 100]], dtype=np.uint16)
    data = encode(Image.fromarray(arr))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    got = ImageRef(data=data).load()
    assert [got.getpixel((x, 0))[0] for x in range(3)] == [0, 255, 100]


def test_exif_orientation_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    data = encode(Image.new("RGB", (20, 10), (0, 128, 0)), "JPEG", exif=exif)
    assert ImageRef(data=data).load().size == (10, 20)


def test_max_side_keeps_aspect():
    img = ImageRef(image=Image.new("RGB", (100, 50)), max_side=20).load()
    assert img.size == (20, 10)
    assert ImageRef(image=Image.new("RGB", (10, 5)), max_side=20).load().size == (10, 5)


def test_bad_files_skip_with_reasons(tmp_path):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    full = encode(noise)
    (tmp_path / "trunc.png").write_bytes(full[: len(full) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_bytes(b"this is not an image at all")
    (tmp_path / "huge.png").write_bytes(png_declaring(100_000, 100_000))
    (tmp_path / "big.png").write_bytes(png_declaring(5000, 5000))
    root = str(tmp_path)
    assert reason(ImageRef(path="missing.png", root=root)) == "missing_image"
    assert reason(ImageRef(path="trunc.png", root=root)) == "corrupt_image"
    assert reason(ImageRef(path="empty.png", root=root)) == "corrupt_image"
    assert reason(ImageRef(path="text.png", root=root)) == "corrupt_image"
    assert reason(ImageRef(data=b"")) == "corrupt_image"
    assert reason(ImageRef(path="huge.png", root=root)) == "image_too_large"  # PIL's own bomb bound
    assert reason(ImageRef(path="big.png", root=root, max_pixels=1_000_000)) == "image_too_large"
    assert reason(ImageRef(path="big.png", root=root)) == "corrupt_image"  # allowed size, but no pixels


def test_one_pixel_image_accepted_unless_min_side(tmp_path):
    Image.new("RGB", (1, 1), (1, 2, 3)).save(tmp_path / "dot.png")
    assert ImageRef(path="dot.png", root=str(tmp_path)).load().getpixel((0, 0)) == (1, 2, 3)
    assert reason(ImageRef(path="dot.png", root=str(tmp_path), min_side=2)) == "corrupt_image"


def test_paths_stay_inside_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    Image.new("RGB", (2, 2)).save(tmp_path / "outside.png")
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    for p in ("../outside.png", str(tmp_path / "outside.png"), "link.png"):
        assert reason(ImageRef(path=p, root=str(root))) == "path_escape", p
    assert ImageRef(path="../outside.png", root=str(root), allow_outside_root=True).load().size == (2, 2)


def test_image_ref_from_record_values(tmp_path):
    img = Image.new("RGB", (3, 2), (9, 9, 9))
    data = encode(img)
    img.save(tmp_path / "x.png")
    assert image_ref({"bytes": data, "path": "ignored.png"}).load().size == (3, 2)
    assert image_ref({"bytes": None, "path": "x.png"}, root=str(tmp_path)).load().size == (3, 2)
    assert image_ref(data).load().size == (3, 2)
    assert image_ref(img).load().size == (3, 2)
    assert "bytes" in repr(image_ref(data)) and str(data[:8]) not in repr(image_ref(data))
    with pytest.raises(SkipSample) as err:
        image_ref(12)
    assert err.value.reason == "bad_record"
