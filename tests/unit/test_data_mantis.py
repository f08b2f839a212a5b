"""Mantis-Instruct records (``conversation`` turns, ``images`` as ``{bytes, path}``): all images
load, placeholders are checked against the images, the per-record cap counts its skips, and a
local copy laid out as on the hub (subsets as configs) reads through ``datasets``."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from taid_vlm.config import ConfigError, DataConfig
from taid_vlm.data.formats import RecordOptions, detect_format, record_to_sample
from taid_vlm.data.readers import DataReport, load_samples


def png(color: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def mantis(i: int, images: list[dict], n_placeholders: int | None = None, source: str = "nlvr2") -> dict:
    """A record as TIGER-Lab/Mantis-Instruct stores it."""
    n = len(images) if n_placeholders is None else n_placeholders
    marks = " ".join(f"Image {k + 1}: <image>" for k in range(n))
    return {"id": f"m{i}", "source": source, "images": images, "conversation": [
        {"role": "user", "content": f"{marks}\nWhich image is redder?"}, {"role": "assistant", "content": "The first."},
        {"role": "user", "content": "And the other?"}, {"role": "assistant", "content": "It is blue."}]}


@pytest.fixture()
def root(tmp_path):
    (tmp_path / "images" / "nlvr2").mkdir(parents=True)
    (tmp_path / "images" / "nlvr2" / "b.png").write_bytes(png((0, 0, 255)))
    return tmp_path


def test_record_with_bytes_and_bare_path_loads_every_image_in_place(root):
    rec = mantis(0, [{"bytes": png((255, 0, 0)), "path": None}, {"bytes": None, "path": "nlvr2/b.png"},
                     {"bytes": png((0, 255, 0), (5, 9)), "path": "ignored/when/bytes.png"}])
    assert detect_format(rec) == "mantis"
    s = record_to_sample(rec, "auto", 0, RecordOptions(image_root=str(root / "images")))
    assert s.id == "m0" and s.meta == {"source": "nlvr2"}
    user = s.messages[0]["content"]
    assert [b["type"] for b in user] == ["text", "image", "text", "image", "text", "image", "text"]
    assert [b.get("text") for b in user if b["type"] == "text"] == ["Image 1:", "Image 2:", "Image 3:",
                                                                     "Which image is redder?"]
    pixels = [img.load().getpixel((0, 0)) for img in s.images]
    assert pixels == [(255, 0, 0), (0, 0, 255), (0, 255, 0)] and s.images[2].load().size == (5, 9)
    assert [m["role"] for m in s.messages] == ["user", "assistant", "user", "assistant"]


def test_mismatch_and_cap_are_skipped_and_counted(root):
    good = mantis(0, [{"bytes": None, "path": "nlvr2/b.png"}] * 2)
    fewer_marks = mantis(1, [{"bytes": None, "path": "nlvr2/b.png"}] * 2, n_placeholders=1)
    no_marks = mantis(2, [{"bytes": None, "path": "nlvr2/b.png"}], n_placeholders=0)
    many = mantis(3, [{"bytes": None, "path": "nlvr2/b.png"}] * 5)
    (root / "d.json").write_text(json.dumps([good, fewer_marks, no_marks, many]))
    report = DataReport()
    out = load_samples(root / "d.json", image_root=root / "images", report=report, max_images=4)
    assert [s.id for s in out] == ["m0"] and len(out[0].images) == 2
    assert report.skipped == {"image_count_mismatch": 2, "too_many_images": 1}
    report = DataReport()  # no cap: the five-image record loads with all of them
    out = load_samples(root / "d.json", image_root=root / "images", report=report, format="mantis")
    assert [len(s.images) for s in out] == [2, 5] and report.skipped == {"image_count_mismatch": 2}


def test_max_images_is_checked_by_name():
    with pytest.raises(ConfigError, match="data.max_images"):
        DataConfig(train="x.json", max_images=0).check()


def write_hub_layout(root, subsets: dict[str, list[dict]]) -> None:
    """A folder as TIGER-Lab/Mantis-Instruct is on the hub: one folder of parquet files per subset,
    named as configs in README.md."""
    import datasets

    features = datasets.Features({
        "id": datasets.Value("string"), "source": datasets.Value("string"),
        "images": [{"bytes": datasets.Value("binary"), "path": datasets.Value("string")}],
        "conversation": [{"role": datasets.Value("string"), "content": datasets.Value("string")}]})
    cards = []
    for name, records in subsets.items():
        (root / name).mkdir()
        datasets.Dataset.from_list(records, features=features).to_parquet(str(root / name / "train-00000.parquet"))
        cards.append(f"- config_name: {name}\n  data_files:\n  - split: train\n    path: {name}/train-*.parquet\n")
    (root / "README.md").write_text("---\nconfigs:\n" + "".join(cards) + "---\n# a local copy\n")


def test_hub_layout_subset_reads_through_datasets(root):
    data = root / "Mantis-Instruct"
    data.mkdir()
    write_hub_layout(data, {
        "nlvr2": [mantis(0, [{"bytes": png((255, 0, 0)), "path": None}, {"bytes": None, "path": "nlvr2/b.png"}])],
        "multi_vqa": [mantis(i, [{"bytes": png((0, 9 * i, 0)), "path": None}] * 3, source="multi_vqa")
                      for i in range(1, 3)]})
    out = load_samples(str(data), subset="multi_vqa", format="mantis")
    assert [s.id for s in out] == ["m1", "m2"] and [len(s.images) for s in out] == [3, 3]
    assert out[1].images[0].load().getpixel((0, 0)) == (0, 18, 0) and out[1].meta["source"] == "multi_vqa"
    out = load_samples(str(data), subset="nlvr2", image_root=root / "images")
    assert [img.load().getpixel((0, 0)) for img in out[0].images] == [(255, 0, 0), (0, 0, 255)]
    both = load_samples(str(data), subset=["multi_vqa", "nlvr2"], image_root=root / "images")
    assert [s.id for s in both] == ["m1", "m2", "m0"]
    with pytest.raises(ConfigError, match="data.subset"):
        DataConfig(train="x", subset=[]).check()


@pytest.mark.parametrize("streaming", [False, True])
def test_subsets_with_other_columns_concatenate_on_the_shared_ones(tmp_path, streaming):
    """smollm-corpus's subsets share only ``text``: a list of them reads as one table of the shared columns."""
    import datasets

    from taid_vlm.data.sources import open_records

    cards = []
    for name, extra in (("cosmo", {"prompt": ["p1", "p2"]}), ("fineweb", {"score": [0.5]})):
        (tmp_path / name).mkdir()
        rows = {"text": [f"{name} {i}" for i in range(len(next(iter(extra.values()))))], **extra}
        datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / name / "train-00000.parquet"))
        cards.append(f"- config_name: {name}\n  data_files:\n  - split: train\n    path: {name}/*.parquet\n")
    (tmp_path / "README.md").write_text("---\nconfigs:\n" + "".join(cards) + "---\n")
    ds = open_records(str(tmp_path), subset=["cosmo", "fineweb"], streaming=streaming)
    assert [r["text"] for r in ds] == ["cosmo 0", "cosmo 1", "fineweb 0"]
    assert list(next(iter(ds))) == ["text"]


def test_subset_round_trips_through_the_saved_config(tmp_path):
    """The run marker and final/config.yaml hold data.subset (null, a name or a list) and load back."""
    from taid_vlm.config_io import config_from_dict, config_to_dict

    for subset in (None, "nlvr2", ["nlvr2", "multi_vqa"]):
        cfg = config_from_dict({"data": {"train": "x.json", "subset": subset}, "student": {"family": "text", "path": "s"},
                                "loss": {"name": "sft"}, "train": {"output_dir": str(tmp_path)}})
        assert config_from_dict(config_to_dict(cfg)).data.subset == subset
