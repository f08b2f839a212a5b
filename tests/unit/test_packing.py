"""Raw-text packing: rows, position resets, labels, bad documents, and per-document attention."""

from __future__ import annotations

import json

import pytest
import torch

from taid_vlm.data.collate import IGNORE_INDEX
from taid_vlm.data.packing import PackedCollator, count_packed, pack_dataset, pack_documents
from taid_vlm.data.report import DataReport
from taid_vlm.data.sources import open_records
from taid_vlm.data.types import SkipSample

LM = {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
      "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 128,
      "tie_word_embeddings": True}


def _lens(tok, texts):
    return [len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts]  # + EOS


def test_documents_pack_end_to_end_with_position_resets(tiny_tokenizer):
    texts = ["The circle is red.", "There are 3 shapes. How many shapes are there?", "Yes."]
    lens = _lens(tiny_tokenizer, texts)
    width = 8
    out = pack_documents({"text": texts}, [0, 1, 2], tokenizer=tiny_tokenizer, max_length=width)
    flat = [t for row in out["input_ids"] for t in row]
    assert len(flat) == sum(lens) and all(len(r) == width for r in out["input_ids"][:-1])
    assert flat.count(tiny_tokenizer.eos_token_id) == 3
    # Positions restart at each document start and at each row start.
    starts = {0, lens[0], lens[0] + lens[1]} | set(range(0, sum(lens), width))
    pos = [p for row in out["position_ids"] for p in row]
    assert {i for i, p in enumerate(pos) if p == 0} == starts
    assert out["docs"][0] == 3 and out["skipped"][0] == []


def test_bad_documents_are_skipped_and_counted_or_raise_in_strict(tiny_tokenizer, tmp_path):
    path = tmp_path / "c.jsonl"
    lines = [json.dumps({"text": "The circle is red."}), json.dumps({"body": "no text field"}),
             json.dumps({"text": "   "}), json.dumps({"text": "PLACE"}).replace("PLACE", "r\\u00e9d"), "{cut"]
    path.write_bytes("\n".join(lines).encode().replace(b"r\\u00e9d", b"r\xe9d"))
    ds = pack_dataset(open_records(path, cache_dir=str(tmp_path / "c")), tiny_tokenizer, 16)
    report = DataReport()
    count_packed(ds, report)
    assert report.read == 5
    assert report.skipped == {"bad_record": 1, "bad_text": 1, "empty_document": 1, "missing_text": 1}
    assert "data.text_column" in report.examples["missing_text"][0]
    with pytest.raises(SkipSample, match="missing_text"):
        pack_documents({"body": ["x"]}, [0], tokenizer=tiny_tokenizer, max_length=16, strict=True)


def test_collator_labels_every_token_but_sequence_starts_and_padding():
    rows = [{"input_ids": [5, 6, 7, 8], "position_ids": [0, 1, 0, 1], "docs": 2, "skipped": []},
            {"input_ids": [9, 10], "position_ids": [0, 1], "docs": 1, "skipped": [["doc 7", "empty_document", ""]]}]
    b = PackedCollator(0, teacher=True, count=True)(rows)
    s = b["student"]
    assert s["labels"].tolist() == [[-100, 6, -100, 8], [-100, 10, -100, -100]]
    assert s["position_ids"].tolist() == [[0, 1, 0, 1], [0, 1, 0, 1]]
    assert "attention_mask" not in s and b["teacher"]["input_ids"] is s["input_ids"]
    assert b["num_tokens"] == 3 and b["read"] == 3 and b["skipped"] == [("doc 7", "empty_document", "")]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_documents_do_not_attend_to_each_other(tiny_tokenizer, attn):
    """Hidden states of a document packed after another equal those of the document alone."""
    from taid_vlm.adapters import build_adapter

    torch.manual_seed(0)
    ad = build_adapter("text", config=LM, tokenizer=tiny_tokenizer, attn_implementation=attn)
    ad.model.eval()
    a = tiny_tokenizer("The circle is red.", add_special_tokens=False)["input_ids"]
    b = tiny_tokenizer("Where is the triangle?", add_special_tokens=False)["input_ids"]
    row = {"input_ids": a + b, "position_ids": list(range(len(a))) + list(range(len(b))), "docs": 2}
    batch = PackedCollator(0, teacher=False)([row])["student"]
    with torch.no_grad():
        packed = ad._hidden(batch)[0]
        alone = ad._hidden({"input_ids": torch.tensor([b])})[0]
        joined = ad._hidden({"input_ids": batch["input_ids"]})[0]  # no position ids: one sequence
    torch.testing.assert_close(packed[len(a):], alone, atol=1e-5, rtol=1e-4)
    assert (joined[len(a):] - alone).abs().max() > 1e-3  # without the resets, b does see a
    rh = ad.response_hidden(batch)
    assert rh.targets.tolist() == a[1:] + b[1:] and IGNORE_INDEX not in rh.targets.tolist()
