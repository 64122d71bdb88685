"""Text sources and block packing."""

from __future__ import annotations

import csv
import gzip
import json
import sys
import types

import pytest
import torch

from sae.activations import DataError, iter_texts, pack_blocks

DOCS = ["The first document , about lobsters .", "A second one , about Burma .", "Third ."]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_txt_one_document_per_nonblank_line(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text(f"{DOCS[0]}\n\n \n{DOCS[1]}\n{DOCS[2]}", encoding="utf-8")
    assert list(iter_texts(str(path))) == DOCS


def test_jsonl_field_and_gzip(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"body": d, "id": i} for i, d in enumerate(DOCS)])
    assert list(iter_texts(str(path), text_field="body")) == DOCS
    gz = tmp_path / "a.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert list(iter_texts(str(gz), text_field="body")) == DOCS
    with pytest.raises(DataError, match="no field 'text'.*body, id"):
        list(iter_texts(str(path)))


def test_jsonl_chat_messages_go_through_the_chat_template(tmp_path, tiny_tokenizer):
    chat = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello"}]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": chat}])
    (text,) = iter_texts(str(path), tokenizer=tiny_tokenizer)
    assert text == tiny_tokenizer.apply_chat_template(chat, tokenize=False)
    assert text == "<s>user: Hi there</s>\n<s>assistant: Hello</s>\n"


@pytest.mark.parametrize("suffix,delim", [(".csv", ","), (".tsv", "\t")])
def test_csv_tsv_column(tmp_path, suffix, delim):
    path = tmp_path / f"a{suffix}"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=delim)
        writer.writerow(["ID", "Text"])
        writer.writerows([[i, d] for i, d in enumerate(DOCS)])
    assert list(iter_texts(str(path), text_field="Text")) == DOCS
    with pytest.raises(DataError, match="no column 'text'; columns are ID, Text"):
        list(iter_texts(str(path)))


def test_hf_source_from_a_local_dataset_folder(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"text": d} for d in DOCS])
    assert list(iter_texts(f"hf:{folder}")) == DOCS


def test_hf_source_name_config_split_and_errors(monkeypatch):
    seen = {}

    def load_dataset(name, config, split, streaming):
        seen.update(name=name, config=config, split=split, streaming=streaming)
        if name == "missing/ds":
            raise ConnectionError("offline")
        return iter([{"content": d} for d in DOCS])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert list(iter_texts("hf:org/ds:wiki:validation", text_field="content")) == DOCS
    assert seen == {"name": "org/ds", "config": "wiki", "split": "validation", "streaming": True}
    list(iter_texts("hf:org/ds", text_field="content"))
    assert (seen["config"], seen["split"]) == (None, "train")
    list(iter_texts("hf:org/ds::test", text_field="content"))
    assert (seen["config"], seen["split"]) == (None, "test")
    with pytest.raises(DataError, match="Could not stream dataset 'missing/ds'.*offline"):
        list(iter_texts("hf:missing/ds"))


def test_missing_empty_and_unknown_sources(tmp_path, tiny_tokenizer):
    with pytest.raises(DataError, match="does not exist"):
        pack_blocks(str(tmp_path / "nope.txt"), tiny_tokenizer, 16, 10)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="holds no text"):
        pack_blocks(str(empty), tiny_tokenizer, 16, 10)
    odd = tmp_path / "a.parquet"
    odd.write_bytes(b"x")
    with pytest.raises(DataError, match="use .txt"):
        list(iter_texts(str(odd)))


def test_pack_blocks_bos_per_block(tiny_corpus, tiny_tokenizer):
    tok = tiny_tokenizer
    blocks = pack_blocks(str(tiny_corpus), tok, context=16, n_tokens=100)
    n_blocks = -(-100 // 15)
    assert blocks.tokens_NT.shape == (n_blocks, 16)
    assert blocks.n_rows == 100
    assert (blocks.tokens_NT[:, 0] == tok.bos_token_id).all()
    assert not blocks.keep_NT[:, 0].any()
    # The stream is the documents' tokens joined with EOS, cut into 15-token bodies.
    stream = []
    for line in iter_texts(str(tiny_corpus)):
        stream += tok(line, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        if len(stream) >= 100:
            break
    assert blocks.tokens_NT[blocks.keep_NT].tolist() == stream[:100]
    # The last block is padded; pads carry no rows.
    assert blocks.keep_NT[-1].sum() == 100 - 15 * (n_blocks - 1)
    assert (blocks.tokens_NT[-1][~blocks.keep_NT[-1]][1:] == tok.pad_token_id).all()


def test_pack_blocks_without_bos(tiny_corpus, tiny_tokenizer):
    blocks = pack_blocks(str(tiny_corpus), tiny_tokenizer, context=16, n_tokens=64, bos="none")
    assert blocks.tokens_NT.shape == (4, 16)
    assert blocks.keep_NT.all()
    with pytest.raises(DataError, match="bos must be one of block, none"):
        pack_blocks(str(tiny_corpus), tiny_tokenizer, context=16, n_tokens=64, bos="doc")


def test_too_many_tokens_says_how_many_the_source_holds(tiny_corpus, tiny_tokenizer):
    held = sum(len(tiny_tokenizer(line, add_special_tokens=False)["input_ids"]) + 1
               for line in iter_texts(str(tiny_corpus)))
    blocks = pack_blocks(str(tiny_corpus), tiny_tokenizer, context=32, n_tokens=held)
    assert blocks.n_rows == held
    with pytest.raises(DataError, match=f"holds {held:,} tokens.*at most {held:,}"):
        pack_blocks(str(tiny_corpus), tiny_tokenizer, context=32, n_tokens=held + 1)


def test_blocks_are_deterministic(tiny_corpus, tiny_tokenizer):
    a = pack_blocks(str(tiny_corpus), tiny_tokenizer, context=32, n_tokens=500)
    b = pack_blocks(str(tiny_corpus), tiny_tokenizer, context=32, n_tokens=500)
    assert torch.equal(a.tokens_NT, b.tokens_NT) and torch.equal(a.keep_NT, b.keep_NT)
