"""Pull activations at several hooks from one forward pass, stopping after the last layer needed.

Two paths give the same numbers (tests check it, fp32 rel. error <= 1e-5):
  1. fast: for `blocks.L.hook_resid_pre` / `blocks.L.hook_resid_post` on a bridge over a Hugging
     Face model. TransformerBridge wraps every HF submodule in place (BlockBridge, LinearBridge,
     an attention bridge that re-implements attention eagerly so that patterns can be hooked) and
     forces `attn_implementation="eager"`. So the fast path
       a. builds a view of the HF base model with every bridge wrapper replaced by the module it
          wraps (shallow copies: parameters and buffers are shared, nothing is duplicated),
       b. gives that view a config copy whose attention is SDPA (when the architecture has it),
       c. captures decoder-layer inputs / outputs with forward hooks and raises out of the forward
          right after the last one needed.
     No attention pattern is requested here, so SDPA is safe; this is what reaches plain-HF speed
     on a GPU, where the bridge's Python hook points and eager attention dominate.
  2. general: `bridge.run_with_cache(names_filter=hooks, stop_at_layer=L+1)` for any other hook.
Rows at BOS and pad positions are dropped.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..lm import LoadedModel

_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.")
_FAST_HOOKS = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")


class HookError(ValueError):
    """An unknown hook name; the message lists close valid names."""


def validate_hooks(model: LoadedModel, hooks: list[str]) -> None:
    """Raise HookError for any name the bridge does not have, suggesting close ones."""
    if not hooks:
        raise HookError("Name at least one hook, e.g. blocks.6.hook_resid_post.")
    valid = list(model.bridge.hook_dict.keys())
    for hook in hooks:
        if hook not in model.bridge.hook_dict:
            close = difflib.get_close_matches(hook, valid, n=5, cutoff=0.6)
            hint = f" Close names: {', '.join(close)}." if close else ""
            raise HookError(
                f"Unknown hook {hook!r} for model {model.name} ({model.n_layers} layers).{hint} "
                f"Residual-stream hooks look like blocks.L.hook_resid_post with "
                f"0 <= L < {model.n_layers}."
            )
    if len(set(hooks)) != len(hooks):
        raise HookError(f"Hooks are repeated: {hooks}.")


def stop_layer(model: LoadedModel, hooks: list[str]) -> int | None:
    """The `stop_at_layer` that still computes every hook (None: run the whole model)."""
    last = -1
    for hook in hooks:
        match = _BLOCK_HOOK.match(hook)
        if match is None:
            if hook.startswith(("hook_embed", "embed.", "hook_pos_embed", "pos_embed.")):
                continue
            return None
        last = max(last, int(match.group(1)))
    return last + 1


class _Stop(Exception):
    pass


def unwrap_bridge(root: torch.nn.Module, attn_implementation: str | None = "sdpa"
                  ) -> tuple[torch.nn.Module, dict[int, torch.nn.Module]]:
    """`root` with every TransformerBridge wrapper inside it replaced by the module it wraps.

    Modules whose subtree holds no wrapper are shared as they are; the others are shallow copies
    (parameters and buffers shared). Modules that point at `root.config` get a copy of it whose
    attention implementation is `attn_implementation` (None keeps it). Returns the view and a map
    from id(original module) to its copy in the view.
    """
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    old_cfg = root.config
    new_cfg = copy.copy(old_cfg)
    if attn_implementation is not None:
        new_cfg._attn_implementation = attn_implementation
    copies: dict[int, torch.nn.Module] = {}

    def visit(module: torch.nn.Module) -> torch.nn.Module:
        while isinstance(module, GeneralizedComponent):
            module = module.original_component
        if id(module) in copies:
            return copies[id(module)]
        children = {n: None if c is None else visit(c) for n, c in module._modules.items()}
        same = all(children[n] is c for n, c in module._modules.items())
        if same and getattr(module, "config", None) is not old_cfg:
            copies[id(module)] = module
            return module
        clone = copy.copy(module)
        clone._modules = children
        if getattr(module, "config", None) is old_cfg:
            clone.config = new_cfg
        copies[id(module)] = clone
        return clone

    return visit(root), copies


def _sdpa_or_none(hf_model: torch.nn.Module) -> str | None:
    """'sdpa' where the architecture supports it, else None (keep the bridge's eager attention)."""
    return "sdpa" if getattr(hf_model, "_supports_sdpa", False) else None


@dataclass
class Harvester:
    """Runs a model over token blocks and returns the activations of `hooks`."""

    model: LoadedModel
    hooks: list[str]
    fast: bool | None = None
    """Use the HF-hook path; None picks it whenever every hook allows it."""

    def __post_init__(self) -> None:
        validate_hooks(self.model, self.hooks)
        can_fast = self.model.hf_model is not None and all(_FAST_HOOKS.match(h) for h in self.hooks)
        if self.fast is None:
            self.fast = can_fast
        elif self.fast and not can_fast:
            raise HookError(
                "The fast path needs a Hugging Face model and only resid_pre/resid_post hooks."
            )
        self.stop_at = stop_layer(self.model, self.hooks)
        if self.fast:
            self._base, copies = unwrap_bridge(self.model.hf_model.base_model,
                                               _sdpa_or_none(self.model.hf_model))
            self._layers = [copies[id(b.original_component)] for b in self.model.bridge.blocks]

    def d_in(self) -> dict[str, int]:
        """Width of each hook's rows, from one tiny forward (per-head hooks such as
        `attn.hook_z` [N, T, H, d_head] give rows of H * d_head)."""
        toks = torch.zeros(1, 2, dtype=torch.long, device=self.model.device)
        return {h: int(a[0, 0].numel()) for h, a in self.run(toks).items()}

    @torch.inference_mode()
    def run(self, tokens_NT: torch.Tensor) -> dict[str, torch.Tensor]:
        """Activations [N, T, D] of every hook for a batch of token blocks."""
        tokens_NT = tokens_NT.to(self.model.device)
        if self.fast:
            return self._run_hf(tokens_NT)
        _, cache = self.model.bridge.run_with_cache(
            tokens_NT, names_filter=list(self.hooks), stop_at_layer=self.stop_at
        )
        return {h: cache[h] for h in self.hooks}

    def _run_hf(self, tokens_NT: torch.Tensor) -> dict[str, torch.Tensor]:
        wanted = [(name, int(m.group(1)), m.group(2)) for name, m in
                  ((h, _FAST_HOOKS.match(h)) for h in self.hooks)]
        # The forward stops at the latest point needed: after layer L for resid_post, before it
        # for resid_pre.
        stop = max((layer, kind == "post") for _, layer, kind in wanted)
        out: dict[str, torch.Tensor] = {}

        def on_input(layer: int):
            def hook(_mod, args, kwargs):
                x = args[0] if args else kwargs["hidden_states"]
                for name, lay, kind in wanted:
                    if lay == layer and kind == "pre":
                        out[name] = x
                if stop == (layer, False):
                    raise _Stop
            return hook

        def on_output(layer: int):
            def hook(_mod, _args, output):
                x = output[0] if isinstance(output, tuple) else output
                for name, lay, kind in wanted:
                    if lay == layer and kind == "post":
                        out[name] = x
                if stop == (layer, True):
                    raise _Stop
            return hook

        handles = []
        try:
            for layer in sorted({lay for _, lay, _ in wanted}):
                mod = self._layers[layer]
                handles.append(mod.register_forward_pre_hook(on_input(layer), with_kwargs=True))
                handles.append(mod.register_forward_hook(on_output(layer)))
            try:
                self._base(input_ids=tokens_NT, use_cache=False)
            except _Stop:
                pass
        finally:
            for handle in handles:
                handle.remove()
        return {h: out[h] for h in self.hooks}

    def iter_rows(self, tokens_NT: torch.Tensor, keep_NT: torch.Tensor, batch: int,
                  dtype: torch.dtype | None = None, to_host: bool = True) -> Iterator[dict[str, torch.Tensor]]:
        """For each batch of blocks, the kept rows [n, D] of every hook, on the CPU (or, without
        `to_host`, where the model runs); per-head activations are flattened to D = H * d_head.

        Kept positions are found on the host, so picking rows never syncs a GPU. On a GPU each
        batch's rows are copied to page-locked memory on a side stream while the next batch's
        forward runs; a batch is yielded once its copy has landed.
        """
        keep_NT = keep_NT.cpu()
        on_gpu = self.model.device.type == "cuda"
        copy_stream = torch.cuda.Stream() if on_gpu and to_host else None
        pending: tuple[dict[str, torch.Tensor], Any] | None = None
        for start in range(0, tokens_NT.shape[0], batch):
            acts = self.run(tokens_NT[start:start + batch])
            sel = keep_NT[start:start + batch].reshape(-1).nonzero().squeeze(1)
            rows = {h: _pick_rows(a, sel, dtype) for h, a in acts.items()}
            if copy_stream is None:
                yield rows
                continue
            copied = _copy_to_host(rows, copy_stream)
            if pending is not None:
                pending[1].synchronize()
                yield pending[0]
            pending = copied
        if pending is not None:
            pending[1].synchronize()
            yield pending[0]


def _pick_rows(acts_NT: torch.Tensor, sel: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Rows `sel` (flat block x position indices, on the host) of [N, T, ...] activations, as
    [n, D] in `dtype`; index_select with host-made indices needs no sync, a boolean mask would."""
    flat = acts_NT.reshape(acts_NT.shape[0] * acts_NT.shape[1], -1)
    return flat.index_select(0, sel.to(flat.device, non_blocking=True)).to(dtype or acts_NT.dtype)


def _copy_to_host(rows: dict[str, torch.Tensor], stream: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Queue copies of GPU `rows` into fresh page-locked host tensors on `stream`, after the work
    that made them; returns the host tensors and the event that marks the copies done."""
    ready = torch.cuda.current_stream().record_event()
    host: dict[str, torch.Tensor] = {}
    with torch.cuda.stream(stream):
        stream.wait_event(ready)
        for h, r in rows.items():
            host[h] = torch.empty(r.shape, dtype=r.dtype, pin_memory=True)
            host[h].copy_(r, non_blocking=True)
            r.record_stream(stream)  # keep the allocator from reusing r before the copy
        done = stream.record_event()
    return host, done
