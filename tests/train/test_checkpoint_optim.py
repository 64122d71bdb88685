"""A checkpoint written with torch's Adam (before the fused decoder step) resumes into
UnitRowAdam: same state keys, and the next step equals projection + Adam + renormalisation."""

from __future__ import annotations

import sae_kernels
import torch

from sae.config import SAEConfig
from sae.model import SparseAutoencoder
from sae.train.checkpoint import load_checkpoint, save_checkpoint


def _sae() -> SparseAutoencoder:
    return SparseAutoencoder(SAEConfig(d_in=12, d_sae=40, k=3, activation="topk", hook_name="h"), seed=3)


def _grads(sae: SparseAutoencoder, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in sae.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


def test_torch_adam_checkpoint_resumes_into_unit_row_adam(tmp_path):
    old = _sae()
    old_opt = torch.optim.Adam(old.parameters(), lr=1e-2, fused=True)
    for step in range(3):  # the former trainer step: project, Adam, renormalise
        _grads(old, step)
        sae_kernels.remove_parallel_grad_(old.W_dec.data, old.W_dec.grad)
        old_opt.step()
        sae_kernels.normalize_rows_(old.W_dec.data)
    names = [n for n, _ in old.named_parameters()]
    save_checkpoint(tmp_path, 3, {}, {"m": {"module": old, "optim": old_opt, "param_names": names, "extra": {}}})

    new = _sae()
    new_opt = sae_kernels.UnitRowAdam(new.parameters(), unit_rows=new.W_dec, lr=1e-2, fused=True)
    load_checkpoint(tmp_path / "step_000000003", {"m": {"module": new, "optim": new_opt, "param_names": names,
                                                        "extra": {}}})
    assert new_opt.state[new.W_dec]["step"].item() == 3.0
    _grads(old, 99)
    _grads(new, 99)
    sae_kernels.remove_parallel_grad_(old.W_dec.data, old.W_dec.grad)
    old_opt.step()
    sae_kernels.normalize_rows_(old.W_dec.data)
    new_opt.step()
    for (name, a), b in zip(old.named_parameters(), new.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
    for key in ("exp_avg", "exp_avg_sq", "step"):
        torch.testing.assert_close(new_opt.state[new.W_dec][key], old_opt.state[old.W_dec][key], rtol=1e-4, atol=1e-7)
