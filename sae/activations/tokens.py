"""Text sources -> documents -> fixed-length token blocks.

Sources: `.txt` (one document per non-blank line), `.jsonl` / `.jsonl.gz` (a text field, or a
chat `messages` list rendered through the tokenizer's chat template), `.csv` / `.tsv` (a column),
and `hf:NAME[:config][:split]` streamed with `datasets`.

Packing (`pack_blocks`): documents are tokenised without special tokens and joined into one
stream, an EOS token between documents where the tokenizer has one. The stream is cut into blocks
of `context` tokens. BOS policy:
  - `block` (default): every block starts with BOS, followed by context-1 stream tokens;
  - `none`: no BOS is added.
The last block is padded with the pad token. BOS and pad positions carry no activation rows.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

BOS_POLICIES = ("block", "none")


class DataError(ValueError):
    """A text source that cannot be read as asked; the message says what to fix."""


@dataclass
class TokenBlocks:
    """Packed token blocks ready for harvesting."""

    tokens_NT: torch.Tensor
    """int64 [n_blocks, context] token ids."""
    keep_NT: torch.Tensor
    """bool [n_blocks, context]: positions that become activation rows (not BOS, not pad)."""
    available: int
    """Row-producing tokens the source holds in total (at least the number packed)."""

    @property
    def n_rows(self) -> int:
        return int(self.keep_NT.sum())


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8", newline="")


def _jsonl_records(path: Path) -> Iterator[dict[str, Any]]:
    with _open_text(path) as fh:
        for line_no, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}: line {line_no} is not valid JSON ({err.msg}).") from None


def _render_record(record: dict[str, Any], field: str, tokenizer: Any, path: str) -> str:
    if field in record:
        value = record[field]
        if isinstance(value, list):
            return render_chat(value, tokenizer)
        return str(value)
    if "messages" in record:
        return render_chat(record["messages"], tokenizer)
    raise DataError(
        f"{path}: record has no field {field!r} (fields: {', '.join(record)}). "
        f"Pass the right one with --text-field."
    )


def render_chat(messages: list[dict[str, str]], tokenizer: Any) -> str:
    """A chat (list of {role, content}) as text through the tokenizer's chat template."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _csv_texts(path: Path, column: str) -> Iterator[str]:
    delim = "\t" if ".tsv" in path.suffixes else ","
    csv.field_size_limit(1 << 28)
    with _open_text(path) as fh:
        reader = csv.DictReader(fh, delimiter=delim)
        if reader.fieldnames is None:
            return
        if column not in reader.fieldnames:
            raise DataError(
                f"{path}: no column {column!r}; columns are {', '.join(reader.fieldnames)}. "
                f"Pass the right one with --text-field."
            )
        for row in reader:
            yield row[column] or ""


def _hf_texts(spec: str, field: str, tokenizer: Any) -> Iterator[str]:
    parts = spec.removeprefix("hf:").split(":")
    name, config = parts[0], (parts[1] or None) if len(parts) > 1 else None
    split = parts[2] if len(parts) > 2 else "train"
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as err:  # datasets raises many types for offline / missing data
        raise DataError(
            f"Could not stream dataset {name!r} (config {config}, split {split}) from the hub: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. Use a local file instead."
        ) from None
    for record in ds:
        yield _render_record(record, field, tokenizer, spec)


def iter_texts(source: str, text_field: str = "text", tokenizer: Any = None) -> Iterator[str]:
    """Documents of a source, in file order (see the module docstring for the formats)."""
    if source.startswith("hf:"):
        yield from _hf_texts(source, text_field, tokenizer)
        return
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"Data file {source!r} does not exist.")
    suffixes = [s.lower() for s in path.suffixes]
    if ".jsonl" in suffixes or ".json" in suffixes and suffixes[-1] != ".json":
        for record in _jsonl_records(path):
            yield _render_record(record, text_field, tokenizer, source)
    elif ".csv" in suffixes or ".tsv" in suffixes:
        yield from _csv_texts(path, text_field)
    elif suffixes[-1:] in ([".txt"], [".md"], [".gz"]) or not suffixes:
        with _open_text(path) as fh:
            for line in fh:
                if line.strip():
                    yield line.rstrip("\n")
    else:
        raise DataError(
            f"Cannot read {source!r}: use .txt, .jsonl(.gz), .csv, .tsv or hf:NAME[:config][:split]."
        )


def _token_stream(texts: Iterator[str], tokenizer: Any, batch_docs: int = 256) -> Iterator[list[int]]:
    """Token ids of each document (no special tokens), EOS appended where the tokenizer has one."""
    eos = tokenizer.eos_token_id
    batch: list[str] = []

    def flush():
        ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
        for doc in ids:
            yield doc + [eos] if eos is not None else doc

    for text in texts:
        batch.append(text)
        if len(batch) == batch_docs:
            yield from flush()
            batch = []
    if batch:
        yield from flush()


def _check_packing(tokenizer: Any, context: int, bos: str) -> tuple[int, int | None]:
    """(stream tokens per block, BOS id or None) after validating the packing settings."""
    if bos not in BOS_POLICIES:
        raise DataError(f"bos must be one of {', '.join(BOS_POLICIES)}, got {bos!r}.")
    bos_id = tokenizer.bos_token_id
    if bos == "block" and bos_id is None:
        raise DataError("The tokenizer has no BOS token; use bos='none'.")
    if context < 2:
        raise DataError(f"context must be at least 2, got {context}.")
    return (context - 1, bos_id) if bos == "block" else (context, None)


def pack_blocks(source: str, tokenizer: Any, context: int, n_tokens: int,
                bos: str = "block", text_field: str = "text") -> TokenBlocks:
    """Tokenise `source` and pack exactly `n_tokens` activation rows into blocks of `context`.

    Raises DataError when the source holds fewer row-producing tokens than asked (naming how
    many it holds) or none at all.
    """
    per_block, bos_id = _check_packing(tokenizer, context, bos)
    stream: list[int] = []
    for doc in _token_stream(iter_texts(source, text_field, tokenizer), tokenizer):
        stream.extend(doc)
        if len(stream) >= n_tokens:
            break
    if not stream:
        raise DataError(f"Data source {source!r} holds no text.")
    if len(stream) < n_tokens:
        raise DataError(
            f"Data source {source!r} holds {len(stream):,} tokens (with context {context}), "
            f"fewer than the {n_tokens:,} asked for. Lower --tokens to at most {len(stream):,}."
        )
    return _blocks_from_stream(stream[:n_tokens], context, per_block, bos_id, tokenizer.pad_token_id, len(stream))


def iter_block_chunks(source: str, tokenizer: Any, context: int, chunk_blocks: int, bos: str = "block",
                      text_field: str = "text") -> Iterator[TokenBlocks]:
    """The same packing as `pack_blocks`, lazily: chunks of `chunk_blocks` blocks until the source
    ends (the last chunk may be shorter and padded). Memory stays bounded for endless sources."""
    per_block, bos_id = _check_packing(tokenizer, context, bos)
    want = chunk_blocks * per_block
    stream: list[int] = []
    produced = 0
    for doc in _token_stream(iter_texts(source, text_field, tokenizer), tokenizer):
        stream.extend(doc)
        while len(stream) >= want:
            chunk, stream = stream[:want], stream[want:]
            produced += len(chunk)
            yield _blocks_from_stream(chunk, context, per_block, bos_id, tokenizer.pad_token_id, produced)
    if stream:
        yield _blocks_from_stream(stream, context, per_block, bos_id, tokenizer.pad_token_id, produced + len(stream))
    elif produced == 0:
        raise DataError(f"Data source {source!r} holds no text.")


def _blocks_from_stream(stream: list[int], context: int, per_block: int, bos_id: int | None,
                        pad_id: int | None, available: int) -> TokenBlocks:
    n_blocks = -(-len(stream) // per_block)
    body = torch.full((n_blocks * per_block,), -1, dtype=torch.int64)
    body[: len(stream)] = torch.tensor(stream, dtype=torch.int64)
    body = body.view(n_blocks, per_block)
    keep = body >= 0
    if bos_id is not None:
        body = torch.cat([torch.full((n_blocks, 1), bos_id, dtype=torch.int64), body], 1)
        keep = torch.cat([torch.zeros(n_blocks, 1, dtype=torch.bool), keep], 1)
    fill = pad_id if pad_id is not None else 0
    body = torch.where(keep | (body >= 0), body, fill)
    return TokenBlocks(tokens_NT=body, keep_NT=keep, available=available)
