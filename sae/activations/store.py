"""An on-disk activation cache: sharded safetensors per hook, a manifest, and a row index.

Layout of a cache folder:
    manifest.json                        what made it, per-shard row counts and sha256 of each file
    index/shard_00000.safetensors        token_id, block, pos per row; the token ids of its blocks
    acts/<hook>/shard_00000.safetensors  acts [rows, d_in]

Writing (`CacheWriter`): a shard holds whole blocks; each file is written under a temporary name
and renamed, and the manifest is rewritten (also by rename) only after all files of a shard
exist, so a crash never leaves a torn shard listed. Rerunning with the same settings continues
after the last listed shard.

Reading (`open_cache`): tensors are memory-mapped straight out of the safetensors files; each
shard's checksum is verified the first time it is read. `batches` shuffles rows across shards
with a bounded buffer of row indices (deterministic for a seed, so a training run can skip to
any batch without reading data), gathers them from the maps, and prefetches in a thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import struct
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from .._io import fsync_path, write_json_atomic

FORMAT_VERSION = 1
_ST_DTYPES = {"F32": (np.float32, torch.float32), "BF16": (np.int16, torch.bfloat16),
              "F16": (np.float16, torch.float16), "I32": (np.int32, torch.int32),
              "I64": (np.int64, torch.int64), "I16": (np.int16, torch.int16)}


class CacheError(ValueError):
    """A cache folder that cannot be used as asked; the message says why and what to do."""


# -- files ----------------------------------------------------------------------------------------

def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> str:
    """Write a safetensors file by temp-file-and-rename; returns its sha256."""
    tmp = path.with_name(f".tmp-{path.name}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    digest = sha256_file(tmp)
    fsync_path(tmp)
    os.replace(tmp, path)
    return digest


def _header(path: Path) -> tuple[int, dict[str, Any]]:
    with path.open("rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(header_len))
    header.pop("__metadata__", None)
    return 8 + header_len, header


def read_into(path: Path, name: str, out: torch.Tensor) -> None:
    """Read tensor `name` of a safetensors file straight into the contiguous CPU tensor `out`.

    One sequential read with no intermediate copy: several times faster than touching a fresh
    memory map page by page when the whole tensor is wanted.
    """
    data_start, header = _header(path)
    start, stop = header[name]["data_offsets"]
    target = out.view(-1).view(torch.uint8).numpy()
    if target.nbytes != stop - start:
        raise CacheError(f"{path}: tensor {name} holds {stop - start} bytes, expected {target.nbytes}.")
    with path.open("rb", buffering=0) as fh:
        fh.seek(data_start + start)
        view = memoryview(target)
        done = 0
        while done < len(view):
            n = fh.readinto(view[done:])
            if not n:
                raise CacheError(f"{path} is shorter than its header says; rebuild the cache.")
            done += n


def mmap_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file as a read-only memory map (no copy)."""
    data_start, header = _header(path)
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start)
    out = {}
    for name, info in header.items():
        np_dtype, torch_dtype = _ST_DTYPES[info["dtype"]]
        start, stop = info["data_offsets"]
        arr = raw[start:stop].view(np_dtype).reshape(info["shape"])
        with warnings.catch_warnings():
            # The map is read-only and torch warns about that; nothing here writes to it.
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(arr)
        out[name] = tensor.view(torch_dtype) if torch_dtype == torch.bfloat16 else tensor
    return out


# -- writing --------------------------------------------------------------------------------------

class CacheWriter:
    """Appends shards to a cache folder; resumes an unfinished one made with the same settings."""

    def __init__(self, out: str | Path, settings: dict[str, Any]):
        self.root = Path(out)
        self.settings = settings
        self.manifest = self._open_or_create()

    def _open_or_create(self) -> dict[str, Any]:
        path = self.root / "manifest.json"
        if path.is_file():
            manifest = json.loads(path.read_text())
            self._check_resumable(manifest)
            self._remove_temp_files()
            return manifest
        if self.root.exists() and not self.root.is_dir():
            raise CacheError(f"Output path {self.root} is a file, not a folder. Choose a new folder.")
        if self.root.exists() and any(self.root.iterdir()):
            raise CacheError(
                f"Output folder {self.root} exists, is not empty and is not an activation cache "
                f"(no manifest.json). Choose a new folder or empty it."
            )
        self.root.mkdir(parents=True, exist_ok=True)
        manifest = {"format_version": FORMAT_VERSION, "status": "in_progress", **self.settings,
                    "shards": [], "n_rows": 0, "n_blocks": 0}
        write_json_atomic(manifest, path)
        return manifest

    def _check_resumable(self, manifest: dict[str, Any]) -> None:
        for key, value in self.settings.items():
            if key in ("d_in",):
                continue
            if manifest.get(key) != value:
                raise CacheError(
                    f"{self.root} holds a cache made with {key}={manifest.get(key)!r}, but this run "
                    f"asks for {key}={value!r}. Use another --out folder, or delete this one to start over."
                )

    def _remove_temp_files(self) -> None:
        for tmp in self.root.rglob(".tmp-*"):
            tmp.unlink()

    @property
    def done_blocks(self) -> int:
        return int(self.manifest["n_blocks"])

    @property
    def complete(self) -> bool:
        return self.manifest["status"] == "complete"

    def add_shard(self, acts: dict[str, torch.Tensor], index: dict[str, torch.Tensor],
                  block_tokens_NT: torch.Tensor) -> None:
        """Write one shard (whole blocks): per-hook rows, row index, and the blocks' tokens."""
        i = len(self.manifest["shards"])
        name = f"shard_{i:05d}.safetensors"
        files = {}
        for hook, rows in acts.items():
            folder = self.root / "acts" / hook
            folder.mkdir(parents=True, exist_ok=True)
            files[f"acts/{hook}/{name}"] = _atomic_save({"acts": rows}, folder / name)
        (self.root / "index").mkdir(exist_ok=True)
        index = {**index, "block_tokens": block_tokens_NT.to(torch.int32)}
        files[f"index/{name}"] = _atomic_save(index, self.root / "index" / name)
        n_rows = int(next(iter(acts.values())).shape[0])
        b0 = self.done_blocks
        self.manifest["shards"].append({"name": name, "rows": n_rows, "blocks": [b0, b0 + block_tokens_NT.shape[0]],
                                        "sha256": files})
        self.manifest["n_rows"] += n_rows
        self.manifest["n_blocks"] = b0 + int(block_tokens_NT.shape[0])
        write_json_atomic(self.manifest, self.root / "manifest.json")

    def finish(self, **extra: Any) -> None:
        self.manifest.update(extra, status="complete")
        write_json_atomic(self.manifest, self.root / "manifest.json")


# -- reading --------------------------------------------------------------------------------------

@dataclass
class _Shard:
    name: str
    rows: int
    start: int
    blocks: tuple[int, int]


class ActivationCache:
    """Read access to a cache folder (see the module docstring)."""

    def __init__(self, root: str | Path, verify: bool = True):
        self.root = Path(root)
        path = self.root / "manifest.json"
        if not path.is_file():
            raise CacheError(f"{self.root} is not an activation cache (no manifest.json). Make one with `sae cache`.")
        self.manifest: dict[str, Any] = json.loads(path.read_text())
        if self.manifest.get("status") != "complete":
            raise CacheError(
                f"The cache in {self.root} is unfinished ({self.manifest.get('n_rows', 0):,} rows so far). "
                f"Rerun the same `sae cache` command to complete it."
            )
        self.verify = verify
        self._verified: set[str] = set()
        self._maps: dict[str, dict[str, torch.Tensor]] = {}
        self._lock = threading.Lock()
        start, self.shards = 0, []
        for entry in self.manifest["shards"]:
            self.shards.append(_Shard(entry["name"], entry["rows"], start, tuple(entry["blocks"])))
            start += entry["rows"]
        self.shard_starts = torch.tensor([s.start for s in self.shards] + [start])

    # metadata
    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["hooks"])

    @property
    def n_rows(self) -> int:
        return int(self.manifest["n_rows"])

    def d_in(self, hook: str | None = None) -> int:
        return int(self.manifest["d_in"][hook or self.hooks[0]])

    def _file(self, rel: str) -> dict[str, torch.Tensor]:
        with self._lock:
            if rel not in self._maps:
                path = self.root / rel
                if not path.is_file():
                    raise CacheError(f"Cache file {path} is missing; rebuild the cache with `sae cache`.")
                if self.verify and rel not in self._verified:
                    expected = self._expected_sha(rel)
                    if sha256_file(path) != expected:
                        raise CacheError(
                            f"Checksum mismatch in {path}: the file is corrupt or was changed after "
                            f"writing. Delete the cache and rebuild it with `sae cache`."
                        )
                    self._verified.add(rel)
                self._maps[rel] = mmap_safetensors(path)
            return self._maps[rel]

    def _expected_sha(self, rel: str) -> str:
        for entry in self.manifest["shards"]:
            if rel in entry["sha256"]:
                return entry["sha256"][rel]
        raise CacheError(f"{rel} is not listed in {self.root / 'manifest.json'}.")

    def _check_hook(self, hook: str) -> None:
        if hook not in self.hooks:
            raise CacheError(f"The cache has no hook {hook!r}; it holds {', '.join(self.hooks)}.")

    def shard_acts(self, hook: str, i: int) -> torch.Tensor:
        """Memory-mapped activations [rows, D] of shard i."""
        self._check_hook(hook)
        return self._file(f"acts/{hook}/{self.shards[i].name}")["acts"]

    def _index(self, i: int) -> dict[str, torch.Tensor]:
        return self._file(f"index/{self.shards[i].name}")

    # whole-cache views, in harvest order
    def activations(self, hook: str | None = None) -> torch.Tensor:
        """All rows [N, D] of one hook (the first by default), in harvest order."""
        hook = hook or self.hooks[0]
        self._check_hook(hook)
        out = torch.empty(self.n_rows, self.d_in(hook), dtype=self._dtype())
        for shard in self.shards:
            rel = f"acts/{hook}/{shard.name}"
            self._file(rel)  # verifies the checksum on first use
            read_into(self.root / rel, "acts", out[shard.start:shard.start + shard.rows])
        return out

    def tokens(self) -> torch.Tensor:
        """Token id of every row [N]."""
        return torch.cat([self._index(i)["token_id"] for i in range(len(self.shards))])

    def positions(self) -> torch.Tensor:
        """Position of every row inside its block [N]."""
        return torch.cat([self._index(i)["pos"] for i in range(len(self.shards))])

    def blocks(self) -> torch.Tensor:
        """Block index of every row [N]."""
        return torch.cat([self._index(i)["block"] for i in range(len(self.shards))])

    def block_tokens(self, block: int) -> torch.Tensor:
        """Token ids [context] of one block (BOS and padding included)."""
        for i, shard in enumerate(self.shards):
            if shard.blocks[0] <= block < shard.blocks[1]:
                return self._index(i)["block_tokens"][block - shard.blocks[0]]
        raise IndexError(f"block {block} out of range (the cache has {self.manifest['n_blocks']} blocks).")

    def gather(self, rows: torch.Tensor, hooks: list[str], pin_memory: bool = False) -> dict[str, torch.Tensor]:
        """Rows (global indices) of each hook, as fresh float tensors [len(rows), D]; in page-locked
        memory with `pin_memory` (needs CUDA), so a copy to the GPU runs asynchronously."""
        rows = rows.to(torch.int64)
        shard_of = torch.searchsorted(self.shard_starts, rows, right=True) - 1
        out = {h: torch.empty(len(rows), self.d_in(h), dtype=self._dtype(), pin_memory=pin_memory) for h in hooks}
        for i in shard_of.unique().tolist():
            sel = (shard_of == i).nonzero().squeeze(1)
            local = rows[sel] - self.shards[i].start
            for h in hooks:
                out[h][sel] = self.shard_acts(h, i)[local]
        return out

    def _dtype(self) -> torch.dtype:
        return getattr(torch, self.manifest["dtype"])

    def batches(self, batch_size: int, shuffle: bool = True, seed: int = 0,
                hooks: list[str] | str | None = None, row_range: tuple[int, int] | None = None,
                buffer_rows: int = 262_144, epochs: int | None = 1, skip_batches: int = 0,
                prefetch: int = 2, drop_last: bool = True, pin_memory: bool = False) -> Iterator[Any]:
        """Batches of rows: a tensor [B, D] for one hook, a dict hook -> tensor for several.

        Rows within `row_range` are shuffled across shards through a buffer of `buffer_rows`
        indices (deterministic for `seed`; epoch e uses seed + e). `epochs=None` repeats forever.
        `skip_batches` starts later in the same sequence without reading the skipped rows.
        `pin_memory` (for training on a GPU) gathers into page-locked memory, in the prefetch
        thread.
        """
        single = isinstance(hooks, str) or hooks is None
        hook_list = [hooks or self.hooks[0]] if single else list(hooks)
        for h in hook_list:
            self._check_hook(h)
        index_iter = self.index_batches(batch_size, shuffle, seed, row_range, buffer_rows, epochs, drop_last)
        for _ in range(skip_batches):
            next(index_iter, None)
        for batch in _prefetch((self.gather(rows, hook_list, pin_memory) for rows in index_iter), prefetch):
            yield batch[hook_list[0]] if single else batch

    def index_batches(self, batch_size: int, shuffle: bool = True, seed: int = 0,
                      row_range: tuple[int, int] | None = None, buffer_rows: int = 262_144,
                      epochs: int | None = 1, drop_last: bool = True) -> Iterator[torch.Tensor]:
        """The global row indices of each batch (see `batches`)."""
        lo, hi = row_range or (0, self.n_rows)
        if not 0 <= lo < hi <= self.n_rows:
            raise CacheError(f"row_range {row_range} is outside [0, {self.n_rows}].")
        if hi - lo < batch_size and drop_last:
            raise CacheError(f"The cache range holds {hi - lo} rows, fewer than one batch of {batch_size}.")
        epoch = 0
        while epochs is None or epoch < epochs:
            yield from _epoch_indices(self.shards, lo, hi, batch_size, shuffle, seed + epoch,
                                      buffer_rows, drop_last)
            epoch += 1


def _epoch_indices(shards: list[_Shard], lo: int, hi: int, batch_size: int, shuffle: bool, seed: int,
                   buffer_rows: int, drop_last: bool) -> Iterator[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(shards), generator=gen).tolist() if shuffle else range(len(shards))
    pool = torch.empty(0, dtype=torch.int64)
    for i in order:
        s0 = max(shards[i].start, lo)
        s1 = min(shards[i].start + shards[i].rows, hi)
        if s1 <= s0:
            continue
        pool = torch.cat([pool, torch.arange(s0, s1)])
        if shuffle:
            pool = pool[torch.randperm(len(pool), generator=gen)]
        # Emit while the pool holds more than a buffer's worth; the rest mixes with later shards.
        n_emit = max(0, (len(pool) - buffer_rows) // batch_size) if shuffle else len(pool) // batch_size
        for b in range(n_emit):
            yield pool[b * batch_size:(b + 1) * batch_size]
        pool = pool[n_emit * batch_size:]
    if shuffle:
        pool = pool[torch.randperm(len(pool), generator=gen)]
    n_full = len(pool) // batch_size
    for b in range(n_full):
        yield pool[b * batch_size:(b + 1) * batch_size]
    if not drop_last and len(pool) % batch_size:
        yield pool[n_full * batch_size:]


def _prefetch(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run `items` in a background thread, `depth` ahead of the consumer."""
    if depth <= 0:
        yield from items
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work():
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as err:  # re-raised in the consumer
            q.put(err)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def open_cache(path: str | Path, verify: bool = True) -> ActivationCache:
    """Open a cache folder written by `sae cache` (see `ActivationCache`)."""
    return ActivationCache(path, verify=verify)
