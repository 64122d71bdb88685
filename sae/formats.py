"""Save and load SAE folders: ours (a SAELens 6 folder plus one file), SAELens, sparsify.

Our folder is one that SAELens 6 (`SAE.load_from_disk`) loads as its own:

    cfg.json                  SAELens fields: architecture, d_in, d_sae, dtype, device,
                              apply_b_dec_to_input, normalize_activations, reshape_activations,
                              k and rescale_acts_by_decoder_norm (topk), and metadata
                              {sae_lens_version, model_name, hook_name, hook_head_index}
    sae_weights.safetensors   W_enc [D, F], b_enc [F], W_dec [F, D], b_dec [D], threshold [F]
    sae_toolkit.json          every SAEConfig field, the caller's `extra` dict, the input scale
                              that was folded into the weights

Save:
1. Take `folded_state()`, so the input scale lives in the weights and SAELens needs no
   normalisation (normalize_activations "none").
2. Map the activation to a SAELens architecture: topk -> topk (k); batchtopk -> jumprelu with
   every latent's threshold set to the estimated BatchTopK threshold (what SAELens itself
   writes for a BatchTopK SAE, whose inference is relu(pre) * (pre > theta)); jumprelu ->
   jumprelu; relu -> standard.
3. Write the files into a hidden sibling folder, fsync them, and rename it into place, so a
   crash leaves either the old folder or the new one, never a mix.

Load (the format is told by the files, never by the folder's name):
1. `sae_toolkit.json`                      -> ours: the exact SAEConfig (batchtopk included).
2. `cfg.json` + `sae_weights.safetensors`  -> SAELens (architectures standard, topk, jumprelu,
   and the batchtopk of a training checkpoint; 6.x configs and the older flat ones).
3. `cfg.json` + `sae.safetensors`          -> sparsify (`encoder.weight [F, D]`, `encoder.bias`,
   `W_dec [F, D]`, `b_dec`; cfg.json holds d_in, k, num_latents or expansion_factor). Its
   encode is topk(relu((x - b_dec) W_enc^T + b_enc)), which is our topk.
4. None of these but subfolders that hold one (sparsify writes `<run>/layers.6/`): load the
   only one, or name them all when there are several.
What SAELens or sparsify compute at run time and our model computes differently is folded
into the weights (in float64): decoder-norm rescaling (TopK/BatchTopK with
rescale_acts_by_decoder_norm: W_enc, b_enc times ||W_dec_i||, W_dec divided by it), and
b_dec not subtracted from the input (b_enc += b_dec W_enc). What cannot be folded (per-token
normalisation, hook_z reshaping, per-head SAEs, gated and other architectures, sparsify
groupmax, transcoders and skip connections) is rejected with a ValueError. Pickles
(.pt, .pth, .bin, .pkl) are never opened: safetensors and JSON only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from ._io import fsync_path
from .config import SAEConfig, build, to_dict
from .model import SparseAutoencoder

OURS_FILE = "sae_toolkit.json"
CFG_FILE = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
SAELENS_SCALER = "activation_scaler.json"
FORMAT_VERSION = 1
# The oldest SAELens whose cfg.json layout (metadata dict) we write; SAELens reads anything at or
# above 6.0.0-rc.0 as-is and rewrites older, flat configs.
SAELENS_FORMAT_VERSION = "6.0.0"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")

_ARCHITECTURE = {"topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu",
                 "relu": "standard"}
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
                torch.float64: "float64"}


# -- save --------------------------------------------------------------------------------------


def save(sae: SparseAutoencoder, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `sae` as a folder SAELens 6 loads as its own, plus `sae_toolkit.json` for `load`.

    `extra` (JSON-ready, e.g. training metadata) goes into sae_toolkit.json; read it back with
    `read_extra`. An existing SAE folder at `path` is replaced whole. Returns the folder.
    """
    path = Path(path)
    cfg = sae.cfg
    state = {name: t.detach().cpu().contiguous() for name, t in sae.folded_state().items()}
    ours = {
        "format": "sae_toolkit",
        "format_version": FORMAT_VERSION,
        "sae": to_dict(cfg),
        "input_scale_folded": float(sae.input_scale),
        "extra": extra or {},
    }
    try:
        ours_json = json.dumps(ours, indent=2)
    except (TypeError, ValueError) as err:
        raise ValueError("save: `extra` must hold only JSON values (str, numbers, lists, "
                         f"dicts): {err}") from err
    files = {
        CFG_FILE: json.dumps(_saelens_cfg(sae), indent=2).encode(),
        SAELENS_WEIGHTS: safetensors_bytes(state, metadata={"format": "pt"}),
        OURS_FILE: ours_json.encode(),
    }
    _write_folder_atomically(path, files)
    return path


def _saelens_cfg(sae: SparseAutoencoder) -> dict[str, Any]:
    """cfg.json in SAELens 6's layout (`SAEConfig.to_dict` of its inference config classes)."""
    from . import __version__

    cfg = sae.cfg
    out: dict[str, Any] = {
        "architecture": _ARCHITECTURE[cfg.activation],
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": _DTYPE_NAMES.get(sae.W_enc.dtype, "float32"),
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": SAELENS_FORMAT_VERSION,
            "model_name": cfg.model_name or None,
            "hook_name": cfg.hook_name or None,
            "hook_head_index": None,
            "sae_toolkit_version": __version__,
            "sae_toolkit_activation": cfg.activation,
        },
    }
    if cfg.activation == "topk":
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = False
    return out


def _write_folder_atomically(path: Path, files: dict[str, bytes]) -> None:
    """Write `files` into a hidden sibling folder, fsync, then rename it to `path`.

    A folder already at `path` is first renamed aside (`.NAME.old-*`) and removed after the new
    one is in place; an error between the two renames puts it back, and a crash there leaves it
    whole under the aside name.
    """
    if path.exists() and not path.is_dir():
        raise ValueError(f"save: {path} is a file; give a folder path.")
    if path.is_dir() and any(path.iterdir()) and not _is_sae_folder(path):
        raise ValueError(f"save: {path} holds files but no SAE ({CFG_FILE} or {OURS_FILE}); "
                         "refusing to replace it. Choose an empty or new folder.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = path.parent / f".{path.name}.tmp-{tag}"
    tmp.mkdir()
    old = None
    try:
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        if path.exists():
            old = path.parent / f".{path.name}.old-{tag}"
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not path.exists():
            os.replace(old, path)
        raise
    fsync_path(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- load --------------------------------------------------------------------------------------


def load(path: str | Path, device: torch.device | str | None = None,
         dtype: torch.dtype = torch.float32) -> SparseAutoencoder:
    """Load an SAE folder written by `save`, SAELens 6 or EleutherAI sparsify (see module doc).

    A folder holding exactly one SAE subfolder (a sparsify run with one hookpoint) loads that
    one. Raises ValueError for folders it cannot read, naming what it looked for.
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"load: {path} is not a folder. Give the folder that holds "
                         f"{CFG_FILE} and the weights (or {OURS_FILE}).")
    folder = _find_sae_folder(path)
    if (folder / OURS_FILE).is_file():
        cfg, tensors = _read_ours(folder)
    elif (folder / SAELENS_WEIGHTS).is_file():
        cfg, tensors = _read_saelens(folder)
    else:
        cfg, tensors = _read_sparsify(folder)
    return _build(cfg, tensors, device, dtype)


def read_extra(path: str | Path) -> dict[str, Any]:
    """The `extra` dict that `save` stored in a folder of ours."""
    return _read_json(_find_sae_folder(Path(path)) / OURS_FILE).get("extra", {})


def _is_sae_folder(folder: Path) -> bool:
    return (folder / OURS_FILE).is_file() or (folder / CFG_FILE).is_file()


def _find_sae_folder(path: Path) -> Path:
    """`path` itself when it holds an SAE, else its only SAE subfolder; errors name the options."""
    if _is_sae_folder(path):
        _require_weights(path)
        return path
    subfolders = sorted(p for p in path.iterdir() if p.is_dir() and _is_sae_folder(p))
    if len(subfolders) == 1:
        _require_weights(subfolders[0])
        return subfolders[0]
    if subfolders:
        names = ", ".join(p.name for p in subfolders)
        raise ValueError(f"load: {path} holds {len(subfolders)} SAEs, one per hook: {names}. "
                         f"Load one of them, e.g. {subfolders[0]}.")
    found = sorted(p.name for p in path.iterdir())
    listing = ", ".join(found[:12]) + (", ..." if len(found) > 12 else "") if found else "nothing"
    raise ValueError(
        f"load: {path} is not an SAE folder. Looked for {OURS_FILE} (ours), {CFG_FILE} + "
        f"{SAELENS_WEIGHTS} (SAELens), {CFG_FILE} + {SPARSIFY_WEIGHTS} (sparsify), or a "
        f"subfolder holding one of these; found {listing}.{_pickle_hint(path)}"
    )


def _require_weights(folder: Path) -> None:
    if (folder / SAELENS_WEIGHTS).is_file():
        return
    if (folder / SPARSIFY_WEIGHTS).is_file() and not (folder / OURS_FILE).is_file():
        return
    raise ValueError(f"load: {folder} has {CFG_FILE} but no weights: expected {SAELENS_WEIGHTS} "
                     f"(ours, SAELens) or {SPARSIFY_WEIGHTS} (sparsify).{_pickle_hint(folder)}")


def _pickle_hint(folder: Path) -> str:
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not pickles:
        return ""
    return (f" It holds {', '.join(pickles)}: pickled files are never loaded (unpickling runs "
            "arbitrary code); convert them to safetensors first.")


def _read_json(file: Path) -> dict[str, Any]:
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"load: {file} is not valid JSON: {err}") from err


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(file), framework="pt", device="cpu") as f:
        return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118


def _expect(tensors: dict[str, torch.Tensor], names: tuple[str, ...], file: Path,
            optional: tuple[str, ...] = ()) -> None:
    """Raise, naming missing and unexpected tensors, unless `tensors` holds exactly `names`
    (plus any of `optional`)."""
    missing = [n for n in names if n not in tensors]
    unknown = [n for n in tensors if n not in names and n not in optional]
    if missing or unknown:
        raise ValueError(f"load: {file} has tensors {sorted(tensors)}; expected {list(names)}"
                         + (f" (missing {missing})" if missing else "")
                         + (f" (cannot represent {unknown})" if unknown else "") + ".")


def _float64(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies in float64, where the folds below lose nothing that float32 would keep."""
    return {name: t.to(torch.float64) for name, t in tensors.items()}


def _check_shapes(t: dict[str, torch.Tensor], d_in: int, d_sae: int, file: Path) -> None:
    want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    for name, shape in want.items():
        if tuple(t[name].shape) != shape:
            raise ValueError(f"load: {file}: {name} has shape {tuple(t[name].shape)}, expected "
                             f"{shape} for d_in={d_in}, d_sae={d_sae}.")


def _build(cfg: SAEConfig, t: dict[str, torch.Tensor], device, dtype) -> SparseAutoencoder:
    """A SparseAutoencoder holding tensors `t` (W_enc, b_enc, W_dec, b_dec, optional
    log_threshold, threshold, input_scale), built on the meta device so nothing is initialised."""
    with torch.device("meta"):
        sae = SparseAutoencoder(cfg, device="meta", dtype=dtype, seed=None)
    state = {name: t[name] for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if cfg.activation == "jumprelu":
        state["log_threshold"] = t["log_threshold"]
    state["threshold"] = t.get("threshold", torch.zeros(()))
    state["input_scale"] = t.get("input_scale", torch.ones(()))
    device = torch.device(device) if device is not None else torch.device("cpu")
    state = {n: v.to(device=device, dtype=dtype).contiguous() for n, v in state.items()}
    sae.load_state_dict(state, assign=True)
    for param in sae.parameters():
        param.requires_grad_(True)
    return sae


# -- ours --------------------------------------------------------------------------------------


def _read_ours(folder: Path) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    meta = _read_json(folder / OURS_FILE)
    if meta.get("format") != "sae_toolkit" or meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"load: {folder / OURS_FILE} is format {meta.get('format')!r} version "
                         f"{meta.get('format_version')!r}; this sae_toolkit reads sae_toolkit "
                         f"version <= {FORMAT_VERSION}. Upgrade sae_toolkit.")
    cfg = build(SAEConfig, meta["sae"], "sae")
    file = folder / SAELENS_WEIGHTS
    raw = _read_tensors(file)
    needs_threshold = cfg.activation in ("jumprelu", "batchtopk")
    names = ("W_enc", "b_enc", "W_dec", "b_dec") + (("threshold",) if needs_threshold else ())
    _expect(raw, names, file)
    t = dict(raw)  # no folds here, so the stored bits come back unchanged
    _check_shapes(t, cfg.d_in, cfg.d_sae, file)
    if cfg.activation == "jumprelu":
        t["log_threshold"] = t.pop("threshold").clamp_min(0).log()
    elif cfg.activation == "batchtopk":
        thr_F = t.pop("threshold")
        if not bool((thr_F == thr_F[0]).all()):
            raise ValueError(f"load: {file}: a batchtopk SAE has one threshold for all "
                             f"latents, this file has several; delete {OURS_FILE} to load it "
                             "as the jumprelu SAE SAELens sees.")
        t["threshold"] = thr_F[0]
    return cfg, t


# -- SAELens -----------------------------------------------------------------------------------

# SAELens architecture -> our activation and the tensors its weights file holds besides
# W_enc, b_enc, W_dec, b_dec (batchtopk: a training checkpoint, before SAELens turns it into
# jumprelu; log_threshold: older JumpReLU training checkpoints).
_SAELENS_ARCHS = {
    "standard": ("relu", (), ()),
    "topk": ("topk", (), ()),
    "jumprelu": ("jumprelu", (), ("threshold", "log_threshold")),
    "batchtopk": ("batchtopk", ("topk_threshold",), ()),
}
_BASE = ("W_enc", "b_enc", "W_dec", "b_dec")


def _read_saelens(folder: Path) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    raw_cfg = _read_json(folder / CFG_FILE)
    arch, k = _saelens_architecture(raw_cfg, folder)
    _check_saelens_representable(raw_cfg, folder)
    d_in, d_sae = int(raw_cfg["d_in"]), int(raw_cfg["d_sae"])
    t = _saelens_tensors(folder / SAELENS_WEIGHTS, arch, d_in, d_sae)
    # TopK training configs default to rescaling, inference configs do not.
    if arch in ("topk", "batchtopk") and raw_cfg.get("rescale_acts_by_decoder_norm",
                                                     arch == "batchtopk"):
        _fold_decoder_norm_(t)
    if not raw_cfg.get("apply_b_dec_to_input", True):
        t["b_enc"] = t["b_enc"] + t["b_dec"] @ t["W_enc"]
    scale = _saelens_input_scale(raw_cfg, folder)
    t["input_scale"] = torch.tensor(scale, dtype=torch.float64)
    model_name, hook_name = _saelens_names(raw_cfg)
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, activation=_SAELENS_ARCHS[arch][0], k=k,
                    normalize_input="expected_norm" if scale != 1.0 else "none",
                    hook_name=hook_name, model_name=model_name)
    return cfg, t


def _saelens_tensors(file: Path, arch: str, d_in: int, d_sae: int) -> dict[str, torch.Tensor]:
    """The weights in float64 under our names: threshold [F] becomes log_threshold (jumprelu),
    topk_threshold the scalar threshold (batchtopk)."""
    raw = _read_tensors(file)
    _drop_unit_scaling_factor(raw, file)
    _, required, optional = _SAELENS_ARCHS[arch]
    _expect(raw, (*_BASE, *required), file, optional)
    if arch == "jumprelu" and not set(optional) & set(raw):
        raise ValueError(f"load: {file} is a jumprelu SAE without a `threshold` tensor.")
    t = _float64(raw)
    _check_shapes(t, d_in, d_sae, file)
    if "log_threshold" in t:
        t["threshold"] = t.pop("log_threshold").exp()
    if arch == "jumprelu":
        # SAELens computes relu(pre) * (pre > theta); a negative theta gates like 0.
        t["log_threshold"] = t.pop("threshold").clamp_min(0).log()
    elif arch == "batchtopk":
        t["threshold"] = t.pop("topk_threshold").reshape(())
    return t


def _saelens_architecture(raw_cfg: dict[str, Any], folder: Path) -> tuple[str, int]:
    """(architecture, k) of a SAELens cfg.json, 6.x or the older flat layout."""
    arch = raw_cfg.get("architecture", "standard")
    activation_fn = raw_cfg.get("activation_fn", raw_cfg.get("activation_fn_str", "relu"))
    k = raw_cfg.get("k")
    if arch == "standard" and activation_fn == "topk":  # SAELens < 6 kept topk under standard
        arch, k = "topk", (raw_cfg.get("activation_fn_kwargs") or {}).get("k")
    elif arch == "standard" and activation_fn not in (None, "relu"):
        raise ValueError(f"load: {folder / CFG_FILE}: activation_fn {activation_fn!r} is not "
                         "supported; our SAEs read topk, batchtopk, jumprelu and relu.")
    if arch not in _SAELENS_ARCHS:
        raise ValueError(f"load: {folder / CFG_FILE} has SAELens architecture {arch!r}; "
                         f"supported: {', '.join(_SAELENS_ARCHS)}.")
    if arch in ("topk", "batchtopk"):
        if k is None:
            raise ValueError(f"load: {folder / CFG_FILE}: architecture {arch} without `k`.")
        # BatchTopK's k is a float (a batch average); it only matters for training.
        return arch, max(1, round(float(k)))
    return arch, SAEConfig.k


def _check_saelens_representable(raw_cfg: dict[str, Any], folder: Path) -> None:
    where = folder / CFG_FILE
    norm = raw_cfg.get("normalize_activations", "none")
    if norm not in (None, False, True, "none", "expected_average_only_in"):
        raise ValueError(f"load: {where}: normalize_activations={norm!r} normalises each token "
                         "at run time, which our SAE cannot represent; only none and "
                         "expected_average_only_in (a constant scale) are supported.")
    if raw_cfg.get("reshape_activations", "none") != "none":
        raise ValueError(f"load: {where}: reshape_activations="
                         f"{raw_cfg['reshape_activations']!r} (per-head hook_z input) is not "
                         "supported; our SAEs read flat [.., d_in] vectors.")
    meta = {**raw_cfg, **(raw_cfg.get("metadata") or {})}
    if meta.get("hook_head_index") is not None:
        raise ValueError(f"load: {where}: an SAE on one attention head (hook_head_index="
                         f"{meta['hook_head_index']}) is not supported.")


def _drop_unit_scaling_factor(raw: dict[str, torch.Tensor], file: Path) -> None:
    """SAELens < 6 stored a `scaling_factor` (fine-tuning); all-ones means none."""
    for name in ("scaling_factor", "finetuning_scaling_factor"):
        if name in raw:
            if not bool((raw[name] == 1).all()):
                raise ValueError(f"load: {file}: a fine-tuning `{name}` other than 1 is not "
                                 "supported.")
            del raw[name]


def _saelens_input_scale(raw_cfg: dict[str, Any], folder: Path) -> float:
    """The constant input scale of an unfolded expected_average_only_in SAE, else 1.

    SAELens's trainer keeps it in activation_scaler.json beside checkpoints and folds it into the
    final weights (then writing normalize_activations "none").
    """
    norm = raw_cfg.get("normalize_activations", "none")
    if norm not in (True, "expected_average_only_in"):
        return 1.0
    scaler = folder / SAELENS_SCALER
    factor = _read_json(scaler).get("scaling_factor") if scaler.is_file() else None
    if factor is None:
        warnings.warn(f"{folder}: normalize_activations is expected_average_only_in but no "
                      f"scaling factor was found ({SAELENS_SCALER}); loading it unscaled, as "
                      "SAELens's load_from_disk does.", stacklevel=3)
        return 1.0
    return float(factor)


def _saelens_names(raw_cfg: dict[str, Any]) -> tuple[str, str]:
    """(model_name, hook_name): in `metadata` since SAELens 6, top level before."""
    meta = {**raw_cfg, **(raw_cfg.get("metadata") or {})}
    hook = meta.get("hook_name") or meta.get("hook_point") or ""
    return meta.get("model_name") or "", hook


def _fold_decoder_norm_(t: dict[str, torch.Tensor]) -> None:
    """pre * ||W_dec_i|| then acts / ||W_dec_i|| @ W_dec == folded weights (SAELens TopK)."""
    norm_F = t["W_dec"].norm(dim=-1)
    t["W_enc"] = t["W_enc"] * norm_F
    t["b_enc"] = t["b_enc"] * norm_F
    t["W_dec"] = t["W_dec"] / norm_F[:, None]


# -- sparsify ----------------------------------------------------------------------------------


def _read_sparsify(folder: Path) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    raw_cfg = _read_json(folder / CFG_FILE)
    where = folder / CFG_FILE
    if raw_cfg.get("activation", "topk") != "topk":
        raise ValueError(f"load: {where}: sparsify activation {raw_cfg['activation']!r} is not "
                         "supported (only topk).")
    for flag in ("transcode", "skip_connection"):
        if raw_cfg.get(flag):
            raise ValueError(f"load: {where}: sparsify {flag}=true is not supported (our SAEs "
                             "reconstruct their own input without a skip connection).")
    d_in = int(raw_cfg["d_in"])
    d_sae = int(raw_cfg.get("num_latents") or d_in * int(raw_cfg.get("expansion_factor", 32)))
    file = folder / SPARSIFY_WEIGHTS
    raw = _read_tensors(file)
    _expect(raw, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"), file)
    raw = _float64(raw)
    t = {"W_enc": raw["encoder.weight"].T, "b_enc": raw["encoder.bias"],
         "W_dec": raw["W_dec"], "b_dec": raw["b_dec"]}
    _check_shapes(t, d_in, d_sae, file)
    k = int(raw_cfg.get("k", 32))
    if not 1 <= k <= d_sae:
        raise ValueError(f"load: {where}: k={k} is outside [1, {d_sae}].")
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, activation="topk", k=k,
                    hook_name=_sparsify_hook_name(folder.name),
                    model_name=_sparsify_model_name(folder))
    return cfg, t


def _sparsify_hook_name(hookpoint: str) -> str:
    """sparsify names SAEs by Hugging Face module; `layers.N` outputs the residual stream after
    block N, TransformerLens's blocks.N.hook_resid_post (SAELens maps it the same way)."""
    match = re.fullmatch(r"(?:model\.)?layers[._](\d+)", hookpoint)
    return f"blocks.{match.group(1)}.hook_resid_post" if match else ""


def _sparsify_model_name(folder: Path) -> str:
    """The `model` of the run's config.json beside the hookpoint folders, if any."""
    run_cfg = folder.parent / "config.json"
    if not run_cfg.is_file():
        return ""
    model = _read_json(run_cfg).get("model", "")
    return model if isinstance(model, str) else ""

