"""A training run's YAML file -> RunConfig (data, train, eval sections and one or more SAEs).

    data:  {cache: runs/x/cache}          # or {source: corpus.txt, model: ..., hooks: [...]}
    sae:   {d_sae: 4608, activation: topk, k: 32}
    saes:  [{k: 16}, {k: 64, hook_name: blocks.3.hook_resid_post}]   # optional; each entry
                                                                     # overrides `sae`
    train: {tokens: 2_000_000, batch_size: 4096, lr: 2e-4}
    eval:  {tokens: 8192, source: heldout.txt}

`d_in` is read from the data, `hook_name` defaults to the first hook of the data.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, DataConfig, EvalConfig, SAEConfig, TrainConfig, build, closest_key

SECTIONS = ("data", "sae", "saes", "train", "eval")


@dataclass
class SAESpec:
    """One SAE to train: its (partial) SAEConfig fields and an output name."""

    fields: dict[str, Any]
    name: str = ""


@dataclass
class RunConfig:
    data: DataConfig
    train: TrainConfig
    eval: EvalConfig
    saes: list[SAESpec] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    """The merged YAML (after --set overrides), written to the run folder."""


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text) if text.strip() else ""


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply `section.key=value` (or `saes.0.k=8`) to the raw YAML dict in place."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects KEY=VALUE, got {assignment!r}.")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    if parts[0] not in SECTIONS:
        raise ConfigError(f"Unknown section {parts[0]!r} in --set {key}.{closest_key(parts[0], list(SECTIONS))}")
    node: Any = raw
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = _parse_value(value)
    else:
        node[last] = _parse_value(value)


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None,
                    raw: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML file (or a dict), apply `--set` overrides, and validate every section."""
    if raw is None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file {path} does not exist.")
        raw = yaml.safe_load(path.read_text()) or {}
    raw = copy.deepcopy(raw)
    for assignment in overrides or []:
        apply_override(raw, assignment)
    for key in raw:
        if key not in SECTIONS:
            raise ConfigError(f"Unknown section {key!r}.{closest_key(key, list(SECTIONS))} "
                              f"Sections: {', '.join(SECTIONS)}.")
    data = build(DataConfig, raw.get("data") or {}, "data")
    train = build(TrainConfig, raw.get("train") or {}, "train")
    evalc = build(EvalConfig, raw.get("eval") or {}, "eval")
    return RunConfig(data=data, train=train, eval=evalc, saes=_sae_specs(raw), raw=raw)


def _sae_specs(raw: dict[str, Any]) -> list[SAESpec]:
    base = dict(raw.get("sae") or {})
    entries = raw.get("saes") or [{}]
    if not isinstance(entries, list):
        raise ConfigError("`saes` must be a list of SAE settings.")
    valid = [f for f in SAEConfig.__dataclass_fields__] + ["name"]
    specs = []
    for i, entry in enumerate(entries):
        merged = {**base, **(entry or {})}
        for key in merged:
            if key not in valid:
                where = "sae" if key in base else f"saes.{i}"
                raise ConfigError(f"Unknown key {where}.{key}.{closest_key(key, valid)} "
                                  f"Valid keys: {', '.join(valid)}.")
        name = str(merged.pop("name", ""))
        specs.append(SAESpec(fields=merged, name=name))
    return specs


def resolve_sae_config(spec: SAESpec, default_hook: str, d_in_of: Any, model_name: str) -> SAEConfig:
    """The full SAEConfig of a spec, with d_in and hook_name filled from the data."""
    fields = dict(spec.fields)
    fields.setdefault("hook_name", default_hook)
    d_in = d_in_of(fields["hook_name"])
    if "d_in" in fields and fields["d_in"] != d_in:
        raise ConfigError(
            f"sae.d_in is {fields['d_in']} but the activations at {fields['hook_name']} have width "
            f"{d_in}. Remove sae.d_in (it is read from the data) or pick the matching hook."
        )
    fields["d_in"] = d_in
    fields.setdefault("model_name", model_name)
    if "d_sae" not in fields:
        raise ConfigError("sae.d_sae is required (the number of latents).")
    return build(SAEConfig, fields, "sae")
