"""Sources through ``datasets``, lazy conversion, layouts, streams and their exact resume."""

from __future__ import annotations

import io
import json

import datasets
import pytest
from PIL import Image

from taid_vlm.data.collate import PairCollator
from taid_vlm.data.formats import RecordOptions
from taid_vlm.data.lazy import BadRecord, LazySamples, StreamSamples
from taid_vlm.data.readers import load_samples
from taid_vlm.data.report import DataReport
from taid_vlm.data.sources import iter_file_records, open_records
from taid_vlm.data.types import Sample, SkipSample
from taid_vlm.train.data_order import StreamPlan


def png(color=(255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def conv(q="<image>\nWhat colour?", a="red"):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


@pytest.fixture()
def llava_file(tmp_path):
    """A JSON list mixing a string image, a list of two images (multi-image) and no image."""
    (tmp_path / "a.png").write_bytes(png())
    (tmp_path / "b.png").write_bytes(png((0, 0, 255)))
    recs = [
        {"id": "x", "image": "a.png", "conversations": conv()},
        {"id": "y", "image": ["a.png", "b.png"], "conversations": conv("<image><image>\nSame colour?", "no")},
        {"id": "x", "conversations": conv("Hello", "Hi")},
    ]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(recs))
    return path


def test_json_list_with_mixed_image_fields_reads_lazily(llava_file, tmp_path):
    ds = open_records(llava_file, cache_dir=str(tmp_path / "cache"))
    assert isinstance(ds, datasets.Dataset) and len(ds) == 3
    items = LazySamples(ds, "auto", RecordOptions(image_root=str(tmp_path)), "train.json")
    s0, s1, s2 = items[0], items[1], items[2]
    assert [s.id for s in (s0, s1, s2)] == ["x", "y", "x#2"]  # duplicates renamed, as load_samples does
    assert len(s1.images) == 2 and [b["type"] for b in s1.messages[0]["content"]] == ["image", "image", "text"]
    assert s1.images[1].load().getpixel((0, 0)) == (0, 0, 255)
    assert s2.images == []


def test_truncated_json_list_and_bad_bytes_are_skipped_not_fatal(tmp_path):
    good = json.dumps({"id": "a", "conversations": conv("Hi", "Hello")})
    bad = json.dumps({"id": "b", "conversations": conv("Hi", "PLACE")}).replace("PLACE", "r\\u00e9d")
    raw = ("[" + good + "," + bad + "," + good[:-20]).encode().replace(b"r\\u00e9d", b"r\xe9d")
    path = tmp_path / "t.json"
    path.write_bytes(raw)
    items = LazySamples(open_records(path, cache_dir=str(tmp_path / "c")), "auto", RecordOptions(), "t.json")
    assert len(items) == 3
    assert isinstance(items[0], Sample)
    assert isinstance(items[1], BadRecord) and items[1].reason == "bad_text"
    assert isinstance(items[2], BadRecord) and items[2].reason == "bad_record" and "ends" in items[2].detail
    strict = LazySamples(open_records(path, cache_dir=str(tmp_path / "c")), "auto", RecordOptions(), "t.json",
                         strict=True)
    with pytest.raises(SkipSample, match="bad_text"):
        strict[1]


def test_bad_records_are_counted_by_the_collator(llava_file, tmp_path):
    class Enc:  # a stand-in adapter: encoding is not what is tested here
        def encode(self, sample, max_length):
            return {"labels": [1, 2]}

        def collate(self, encs):
            import torch

            return {"labels": torch.tensor([e["labels"] for e in encs])}

    report = DataReport()
    collate = PairCollator(Enc(), max_length=16, report=report)
    batch = collate([BadRecord("q", "bad_record", "d"), load_samples(llava_file)[0]])
    assert batch["ids"] == ["x"] and batch["skipped"] == [("q", "bad_record", "d")]
    assert report.skipped == {"bad_record": 1}


def test_the_cauldron_and_sharegpt_layouts(tmp_path):
    ds = datasets.Dataset.from_list([
        {"images": [{"bytes": png(), "path": None}], "texts": [
            {"user": "What colour?", "assistant": "Red.", "source": "x"},
            {"user": "Sure?", "assistant": "Yes.", "source": "x"}]},
    ], features=datasets.Features({"images": datasets.Sequence(datasets.Image()), "texts": [
        {"user": datasets.Value("string"), "assistant": datasets.Value("string"), "source": datasets.Value("string")}]}))
    (s,) = load_samples(ds)
    assert [m["role"] for m in s.messages] == ["user", "assistant", "user", "assistant"]
    assert s.messages[0]["content"][0] == {"type": "image"} and s.images[0].load().size == (8, 8)
    share = [{"id": "g", "conversations": [{"from": "system", "value": "Be brief."},
                                           {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}]
    (g,) = load_samples(datasets.Dataset.from_list(share), format="sharegpt")
    assert [m["role"] for m in g.messages] == ["system", "user", "assistant"]


def test_parquet_absolute_paths_need_permission(tmp_path):
    img = tmp_path / "imgs" / "a.png"
    img.parent.mkdir()
    img.write_bytes(png())
    data = tmp_path / "data"
    data.mkdir()
    datasets.Dataset.from_list([{"id": "p", "image": str(img), "conversations": conv()}]).to_parquet(
        str(data / "t.parquet"))
    ds = open_records(data / "t.parquet", cache_dir=str(tmp_path / "c"))
    report = DataReport()

    class Enc:
        def encode(self, sample, max_length):
            sample.images[0].load()
            return {"labels": [1]}

    collate = PairCollator(Enc(), max_length=8, report=report)
    denied = LazySamples(ds, "auto", RecordOptions(image_root=str(data)))[0]
    collate([denied])
    assert report.skipped == {"path_escape": 1}
    assert "data.allow_absolute_paths" in report.examples["path_escape"][0]
    allowed = LazySamples(ds, "auto", RecordOptions(image_root=str(data), allow_outside_root=True))[0]
    assert allowed.images[0].load().size == (8, 8)


def test_saved_dataset_dict_split_and_hub_id_offline(tmp_path):
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list([{"id": "t", "conversations": conv("a", "b")}]),
                               "val": datasets.Dataset.from_list([{"id": "v", "conversations": conv("c", "d")}])})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert [s.id for s in load_samples(tmp_path / "dd", split="val")] == ["v"]
    with pytest.raises(ValueError, match="no split 'test'.*data.split"):
        load_samples(str(tmp_path / "dd"), split="test")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        open_records("someone/not-cached-dataset")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_records(str(tmp_path / "missing.json"))


def test_txt_documents_and_jsonl_bad_lines(tmp_path):
    (tmp_path / "c.txt").write_bytes(b"First doc\nline two\n\n\nSecond \xff doc\n")
    assert [r["text"] for r in iter_file_records(tmp_path / "c.txt")] == ["First doc\nline two", "Second \udcff doc"]
    (tmp_path / "r.jsonl").write_text('{"text": "a"}\n{broken\n')
    recs = list(iter_file_records(tmp_path / "r.jsonl"))
    assert recs[0] == {"text": "a"} and recs[1]["__skip__"][0] == "bad_record"


def _stream_plan(ds, bs=2):
    return StreamPlan(ds, lambda d: StreamSamples(d, "auto", RecordOptions()), bs, 1, 0, seed=0)


def test_stream_resume_is_exact_and_the_stream_restarts_at_its_end(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"s{i}", "conversations": conv("q", f"a{i}")}) for i in range(7)))
    ids = lambda b: [s.id for s in b]  # noqa: E731
    full = [ids(b) for b in _stream_plan(open_records(path, streaming=True)).micro_batches(0, 6, list)]
    assert full[0] == ["s0", "s1"] and full[3] == ["s6", "s0"]  # a new pass after the 7th record

    first = _stream_plan(open_records(path, streaming=True))
    it = first.micro_batches(0, 6, list)
    head = [ids(next(it)) for _ in range(4)]
    state = json.loads(json.dumps(first.state_dict()))  # it goes through a checkpoint file
    resumed = _stream_plan(open_records(path, streaming=True))
    resumed.load_state_dict(state)
    tail = [ids(b) for b in resumed.micro_batches(4, 6, list)]
    assert head + tail == full
    # Without a saved state the plan skips the micro-batches already done: same result.
    assert [ids(b) for b in _stream_plan(open_records(path, streaming=True)).micro_batches(4, 6, list)] == tail


def test_in_memory_iterable_dataset_and_empty_stream(tmp_path):
    rows = [{"id": f"m{i}", "conversations": conv("q", "a")} for i in range(3)]
    ids = [s.id for b in _stream_plan(datasets.Dataset.from_list(rows).to_iterable_dataset(), 3).micro_batches(
        0, 1, list) for s in b]
    assert ids == ["m0", "m1", "m2"]
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(ValueError, match="no records"):
        list(_stream_plan(open_records(tmp_path / "e.jsonl", streaming=True)).micro_batches(0, 1, list))
