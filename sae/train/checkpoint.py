"""Atomic checkpoints: a step folder written under a temporary name, then renamed, then named in
`checkpoints/latest` (also by rename). A failed write removes its temporary folder and leaves the
previous checkpoint as it was.

A checkpoint holds, per SAE: parameters and buffers, Adam's state, and the trainer's per-latent
counters; plus `state.json` with the step and token count. Safetensors and JSON only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

KEEP = 2


def _optim_tensors(opt: torch.optim.Optimizer, names: list[str]) -> dict[str, torch.Tensor]:
    out = {}
    params = [p for group in opt.param_groups for p in group["params"]]
    for name, p in zip(names, params, strict=True):
        for key, value in opt.state.get(p, {}).items():
            out[f"{name}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def _load_optim(opt: torch.optim.Optimizer, names: list[str], tensors: dict[str, torch.Tensor]) -> None:
    params = [p for group in opt.param_groups for p in group["params"]]
    for name, p in zip(names, params, strict=True):
        state = {key.split(".", 1)[1]: value.to(p.device) for key, value in tensors.items()
                 if key.split(".", 1)[0] == name}
        if "step" in state:
            state["step"] = state["step"].to("cpu") if not opt.defaults.get("fused") else state["step"]
        if state:
            opt.state[p] = state


def save_checkpoint(ckpt_dir: Path, step: int, state: dict[str, Any],
                    members: dict[str, dict[str, Any]]) -> Path:
    """Write checkpoint `step`. `members[name]` has `module`, `optim`, `param_names`, `extra`."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{step:09d}"
    tmp = Path(tempfile.mkdtemp(dir=ckpt_dir, prefix=".tmp-"))
    try:
        for name, m in members.items():
            tensors = {k: v.detach().cpu().contiguous() for k, v in m["module"].state_dict().items()}
            save_file(tensors, str(tmp / f"{name}.model.safetensors"))
            save_file({k: v.cpu().contiguous() for k, v in _optim_tensors(m["optim"], m["param_names"]).items()},
                      str(tmp / f"{name}.optim.safetensors"))
            save_file({k: v.cpu().contiguous() for k, v in m["extra"].items()},
                      str(tmp / f"{name}.extra.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer = ckpt_dir / ".tmp-latest"
    pointer.write_text(final.name)
    os.replace(pointer, ckpt_dir / "latest")
    _prune(ckpt_dir, final.name)
    return final


def _prune(ckpt_dir: Path, newest: str) -> None:
    steps = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir())
    for old in steps[:-KEEP]:
        if old.name != newest:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    pointer = ckpt_dir / "latest"
    if not pointer.is_file():
        return None
    path = ckpt_dir / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load_checkpoint(path: Path, members: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Restore every member in place; returns state.json's content. `extra` dicts are filled."""
    for name, m in members.items():
        m["module"].load_state_dict(load_file(str(path / f"{name}.model.safetensors")))
        _load_optim(m["optim"], m["param_names"], load_file(str(path / f"{name}.optim.safetensors")))
        m["extra"].update(load_file(str(path / f"{name}.extra.safetensors")))
    return json.loads((path / "state.json").read_text())
