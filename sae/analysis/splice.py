"""SAEs spliced into a model with their error terms kept, so the output is unchanged until a
latent is edited.

At each spliced hook with activation x [N, T, D]:
    f = sae.encode(x)               latents [N, T, F]
    e = x - sae.decode(f)           error term [N, T, D]
    x' = sae.decode(edit(f)) + e    what the rest of the model sees
With no edit, x' = x up to float rounding, so every downstream quantity is the clean model's.
Editing f (zeroing a latent, clamping it, adding to it) changes x' by exactly the decoder rows of
the change, and nothing else (Marks et al. 2024, "Sparse Feature Circuits"). Latents and errors
are returned, and with `grad=True` they are leaves of the autograd graph (or, with
`through=True`, intermediate nodes through which gradients reach earlier layers) for
attribution. Positions where `mask_NT` is False (BOS, padding) pass through untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..activations import validate_hooks
from ..lm import LoadedModel
from ..model import SparseAutoencoder

LatentEdit = Callable[[torch.Tensor], torch.Tensor]
"""Takes latents [N, T, F] and returns edited latents of the same shape."""

ErrorEdit = Callable[[torch.Tensor], torch.Tensor]
"""Takes the error term [N, T, D] and returns an edited one of the same shape."""


@dataclass
class SpliceRun:
    """What one spliced forward pass produced."""

    logits_NTV: torch.Tensor
    latents: dict[str, torch.Tensor] = field(default_factory=dict)
    """hook -> latents [N, T, F] before any edit (the autograd nodes when grad=True)."""
    errors: dict[str, torch.Tensor] = field(default_factory=dict)
    """hook -> error term [N, T, D]."""


def add_to_latent(latent: int, amount: float) -> LatentEdit:
    """Edit: add `amount` to one latent at every position (steering along its decoder row)."""
    def edit(f_NTF: torch.Tensor) -> torch.Tensor:
        f_NTF = f_NTF.clone()
        f_NTF[..., latent] += amount
        return f_NTF
    return edit


def set_latents(latents: list[int], value: float | torch.Tensor = 0.0) -> LatentEdit:
    """Edit: clamp latents to `value` at every position (0 ablates them)."""
    idx = torch.as_tensor(latents, dtype=torch.long)

    def edit(f_NTF: torch.Tensor) -> torch.Tensor:
        f_NTF = f_NTF.clone()
        f_NTF[..., idx.to(f_NTF.device)] = value
        return f_NTF
    return edit


class SplicedModel:
    """A model with SAEs at some hooks (see the module docstring)."""

    def __init__(self, model: LoadedModel, saes: dict[str, SparseAutoencoder]):
        validate_hooks(model, list(saes))
        for hook, sae in saes.items():
            if sae.d_in != _hook_width(model, hook):
                raise ValueError(f"The SAE for {hook} has d_in {sae.d_in}, but the model's activations there "
                                 f"have width {_hook_width(model, hook)}.")
        self.model = model
        self.saes = saes

    def run(self, tokens_NT: torch.Tensor, edits: dict[str, LatentEdit] | None = None,
            mask_NT: torch.Tensor | None = None, grad: bool = False, through: bool = False,
            keep_error: bool = True, error_edits: dict[str, ErrorEdit] | None = None) -> SpliceRun:
        """One forward pass with every SAE spliced in.

        `edits[hook]` changes that hook's latents. `grad=True` records latents and errors as
        leaves requiring grad (attribution w.r.t. them); `through=True` additionally lets
        gradients flow through them into earlier layers (for edges between spliced layers).
        `keep_error=False` drops the error term (the SAE-only model). `error_edits[hook]` replaces
        that hook's error term (patching or ablating the error node).
        """
        tokens_NT = tokens_NT.to(self.model.device)
        mask = None if mask_NT is None else mask_NT.to(self.model.device)
        out = SpliceRun(logits_NTV=torch.empty(0))
        edits, error_edits = edits or {}, error_edits or {}
        hooks = [(hook, self._hook_fn(hook, (edits.get(hook), error_edits.get(hook)), mask, grad, through,
                                      keep_error, out))
                 for hook in self.saes]
        with torch.set_grad_enabled(grad or through):
            out.logits_NTV = self.model.bridge.run_with_hooks(tokens_NT, fwd_hooks=hooks)
        return out

    def _hook_fn(self, name: str, edits: tuple[LatentEdit | None, ErrorEdit | None],
                 mask: torch.Tensor | None, grad: bool, through: bool, keep_error: bool, out: SpliceRun):
        sae = self.saes[name]
        edit, error_edit = edits

        def fn(x_NTD: torch.Tensor, hook=None) -> torch.Tensor:  # `hook` is TransformerLens's HookPoint
            x_in = x_NTD if through else x_NTD.detach()
            f_NTF = sae.encode(x_in.float())
            err_NTD = (x_in.float() - sae.decode(f_NTF))
            if grad and not through:
                f_NTF = f_NTF.detach().requires_grad_(True)
                err_NTD = err_NTD.detach().requires_grad_(True)
            elif grad and through:
                # The error was computed from f, so f's own gradient would cancel to zero
                # (decode(f) + x - decode(f)); a copy that feeds only the decoder carries the partial
                # derivative dm/df = W_dec dm/dx' while x keeps its exact total derivative.
                f_NTF = f_NTF.clone()
                f_NTF.retain_grad()
                err_NTD.retain_grad()
            out.latents[name], out.errors[name] = f_NTF, err_NTD
            f_used = edit(f_NTF) if edit is not None else f_NTF
            err_used = error_edit(err_NTD) if error_edit is not None else err_NTD
            new_NTD = sae.decode(f_used) + (err_used if keep_error else 0.0)
            if mask is not None:
                new_NTD = torch.where(mask[..., None], new_NTD, x_NTD.float())
            return new_NTD.to(x_NTD.dtype)
        return fn


def _hook_width(model: LoadedModel, hook: str) -> int:
    from ..activations import Harvester

    return Harvester(model, [hook]).d_in()[hook]
