"""Readers: every input format, the bad-record corpus with its skip counts, strict mode, the report."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from taid_vlm.data.readers import DataReport, load_samples
from taid_vlm.data.types import SkipSample


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` (no pixel data follows)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def png(color=(255, 0, 0), size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def llava(i, image, answer="red", frm="gpt", extra=None):
    conv = [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": frm, "value": answer}]
    rec = {"id": f"r{i}", "image": image, "conversations": conv + (extra or [])}
    return rec


@pytest.fixture()
def corpus(tmp_path):
    """A JSONL file of good and bad records; returns (path, ids of good records, expected skips)."""
    root = tmp_path / "data"
    img = root / "img"
    img.mkdir(parents=True)
    (img / "good.png").write_bytes(png())
    (img / "empty.png").write_bytes(b"")
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noise.save(buf, format="PNG")
    (img / "trunc.png").write_bytes(buf.getvalue()[:300])
    (img / "text.png").write_bytes(b"GIF? no, just text")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(img / "cmyk.jpg", format="JPEG")
    Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16)).save(img / "grey16.png")
    Image.new("RGB", (1, 1), (0, 0, 255)).save(img / "dot.png")
    (img / "huge.png").write_bytes(png_declaring(60_000, 60_000))
    (tmp_path / "outside.png").write_bytes(png())
    lines = [
        json.dumps(llava(0, "img/good.png")),
        json.dumps(llava(1, "img/missing.png")),
        json.dumps(llava(2, "img/empty.png")),
        json.dumps(llava(3, "img/trunc.png")),
        json.dumps(llava(4, "img/text.png")),
        json.dumps(llava(5, "img/cmyk.jpg")),
        json.dumps(llava(6, "img/grey16.png")),
        json.dumps(llava(7, "img/dot.png")),
        json.dumps(llava(8, "img/huge.png")),
        json.dumps(llava(9, "img/good.png", answer="  ")),
        json.dumps({"id": "r10", "image": "img/good.png", "conversations": [{"from": "human", "value": "hi"}]}),
        json.dumps(llava(11, "img/good.png", frm="robot")),
        json.dumps(llava(12, "img/good.png", answer="PLACEHOLDER")).replace("PLACEHOLDER", "r\\u00e9d"),
        json.dumps(llava(13, "../outside.png")),
        json.dumps(llava(14, "img/good.png", answer="blue")),
        "{not json",
        json.dumps({"id": "r16", "conversations": [{"from": "human", "value": "Hello!"}, {"from": "gpt", "value": "Hi"}]}),
    ]
    raw = "\n".join(lines).encode("utf-8")
    raw = raw.replace(b"r\\u00e9d", b"r\xe9d")  # latin-1 byte: not UTF-8
    path = root / "train.jsonl"
    path.write_bytes(raw)
    good = ["r0", "r5", "r6", "r7", "r14", "r16"]
    skips = {"missing_image": 1, "corrupt_image": 3, "image_too_large": 1, "empty_answer": 1,
             "no_assistant_turn": 1, "unknown_role": 1, "bad_text": 1, "path_escape": 1, "bad_record": 1}
    return path, good, skips


def test_bad_record_corpus_counts(corpus):
    path, good, skips = corpus
    report = DataReport()
    samples = load_samples(path, report=report)
    assert [s.id for s in samples] == good
    assert report.read == 17 and report.used == len(good)
    assert dict(report.skipped) == skips
    for s in samples:
        for ref in s.images:
            assert ref.load().mode == "RGB"
    assert samples[2].images[0].load().getpixel((0, 0)) == (156, 156, 156)  # 40000 / 257
    text = report.summary()
    assert text.startswith("data: read 17, used 6, skipped 11 (") and "corrupt_image 3" in text
    d = report.to_dict()
    assert d["read"] == 17 and d["used"] == 6 and d["skipped"]["path_escape"] == 1
    assert samples[-1].images == [] and samples[-1].messages[1]["content"] == [{"type": "text", "text": "Hi"}]


def test_strict_raises_first_bad_record(corpus):
    path, _, _ = corpus
    with pytest.raises(SkipSample) as err:
        load_samples(path, strict=True)
    assert err.value.reason == "missing_image" and "record 1" in str(err.value)


def test_image_placement_and_formats_in_one_file(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    (tmp_path / "b.png").write_bytes(png((0, 255, 0)))
    recs = [
        {"id": "noph", "image": "a.png", "conversations": [{"from": "system", "value": "Be brief."},
                                                           {"from": "human", "value": "Colour?"},
                                                           {"from": "gpt", "value": "red"}]},
        {"id": "two", "image": ["a.png", "b.png"], "conversations": [
            {"from": "human", "value": "<image> and <image>: same?"}, {"from": "gpt", "value": "no"},
            {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "yes"}]},
        {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "A square."}]}],
         "images": ["b.png"]},
        {"question_id": 7, "image": "a.png", "question": "Colour?",
         "answers": [{"answer": "red"}, {"answer": "crimson"}, {"answer": "red"}]},
        {"id": "cap", "image": "b.png", "captions": ["A green square.", "Green."]},
        {"id": "cap", "image": "b.png", "caption": "Green image."},
        {"id": "txt", "image": "", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]},
    ]
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(recs))
    s = load_samples(path, caption_prompt="Caption:")
    assert [x.id for x in s] == ["noph", "two", "2", "7", "cap", "cap#2", "txt"]
    assert s[6].images == [] and s[6].messages[0]["content"] == [{"type": "text", "text": "Hi"}]
    assert s[0].messages[1]["content"] == [{"type": "image"}, {"type": "text", "text": "Colour?"}]
    assert s[0].messages[0]["role"] == "system" and s[0].messages[2]["role"] == "assistant"
    assert s[1].messages[0]["content"] == [{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"},
                                           {"type": "text", "text": ": same?"}]
    assert len(s[1].images) == 2 and s[1].images[1].load().getpixel((0, 0)) == (0, 255, 0)
    assert s[2].messages[1]["content"][0]["text"] == "A square." and s[2].num_images == 1
    assert s[3].messages[1]["content"][0]["text"] == "red" and s[3].meta["answers"] == ["red", "crimson", "red"]
    assert s[4].messages[0]["content"][1]["text"] == "Caption:" and s[4].meta["captions"] == ["A green square.", "Green."]
    assert s[4].messages[1]["content"][0]["text"] == "A green square."
    assert len(load_samples(path, limit=2)) == 2
    with pytest.raises(ValueError, match="valid: auto"):
        load_samples(path, format="coco")


def test_placeholder_count_mismatch_has_its_own_reason(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    rec = {"id": "x", "image": "a.png", "conversations": [{"from": "human", "value": "<image><image>"},
                                                          {"from": "gpt", "value": "ok"}]}
    (tmp_path / "d.json").write_text(json.dumps([rec]))
    report = DataReport()
    assert load_samples(tmp_path / "d.json", report=report) == [] and report.skipped == {"image_count_mismatch": 1}


def test_parquet_with_embedded_bytes_and_image_feature(tmp_path):
    import datasets

    rows = {"image": [{"bytes": png((0, 0, 255)), "path": None}], "question": ["Colour?"], "answers": [["blue"] * 3]}
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "plain.parquet"))
    ds = datasets.Dataset.from_dict({"image": [Image.new("RGB", (5, 4), (0, 255, 0))], "captions": [["Green."]]})
    ds.cast_column("image", datasets.Image()).to_parquet(str(tmp_path / "feat.parquet"))
    a = load_samples(tmp_path / "plain.parquet", cache_dir=str(tmp_path / "cache"))
    b = load_samples(tmp_path / "feat.parquet", cache_dir=str(tmp_path / "cache"))
    assert a[0].meta["answers"] == ["blue"] * 3 and a[0].images[0].load().getpixel((0, 0)) == (0, 0, 255)
    assert b[0].meta["captions"] == ["Green."] and b[0].images[0].load().size == (5, 4)
    assert b[0].images[0].data is not None  # kept as bytes, decoded only on load()


def test_imagefolder_and_saved_dataset(tmp_path):
    import datasets

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.png").write_bytes(png((255, 0, 0)))
    (folder / "b.png").write_bytes(png((0, 255, 0)))
    meta = [{"file_name": "a.png", "captions": ["A red square."]}, {"file_name": "b.png", "captions": ["Green."]}]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(m) for m in meta))
    s = load_samples(folder, cache_dir=str(tmp_path / "cache"))
    got = sorted((x.meta["captions"][0], x.images[0].load().getpixel((0, 0))) for x in s)
    assert got == [("A red square.", (255, 0, 0)), ("Green.", (0, 255, 0))]

    rec = {"id": ["t1"], "conversations": [[{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]]}
    datasets.Dataset.from_dict(rec).save_to_disk(str(tmp_path / "saved"))
    s = load_samples(tmp_path / "saved")
    assert s[0].id == "t1" and s[0].messages[1]["content"][0]["text"] == "Hello"
    (tmp_path / "t.jsonl").write_text(json.dumps({"id": "j", "conversations": rec["conversations"][0]}))
    assert load_samples(tmp_path / "t.jsonl", format="hf", cache_dir=str(tmp_path / "cache"))[0].id == "j"
