"""The fused decoder step: parity of the Triton kernel with its eager twin and a float64
reference, and of UnitRowAdam with the three-pass sequence it replaces (projection, torch Adam,
renormalisation), including its state layout for checkpoints."""

from __future__ import annotations

import pytest
import torch
from kernel_refs import close
from sae_kernels import UnitRowAdam, eager, triton_ops


def _rows(gen, n, d):
    W = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return W / W.norm(dim=1, keepdim=True)


def _reference_step(W, g, m, v, step, lr, b1, b2, eps, project):
    """Float64 Adam on projected gradients, then unit rows (written out, no torch.optim)."""
    if project:
        g = g - (g * W).sum(1, keepdim=True) * W
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    W = W - lr / (1 - b1**step) * m / ((v / (1 - b2**step)).sqrt() + eps)
    return W / W.norm(dim=1, keepdim=True), m, v


@pytest.mark.parametrize("backend", ["eager", "triton"])
@pytest.mark.parametrize(("n", "d", "project"), [(37, 13, True), (5, 300, True), (64, 24, False)])
def test_decoder_adam_step_matches_float64(device, gen, backend, n, d, project):
    ops = eager if backend == "eager" else triton_ops
    if backend == "eager" and device == "cuda":
        pytest.skip("the eager twin is checked on the CPU")
    W64 = _rows(gen, n, d)
    m64, v64 = torch.zeros_like(W64), torch.zeros_like(W64)
    W, m, v = (t.float().to(device) for t in (W64, m64, v64))
    for step in range(1, 5):
        g64 = torch.randn(n, d, generator=gen, dtype=torch.float64)
        W64, m64, v64 = _reference_step(W64, g64, m64, v64, step, 1e-2, 0.9, 0.999, 1e-8, project)
        ops.decoder_adam_step_(W, g64.float().to(device), m, v, torch.tensor(float(step), device=device),
                               1e-2, 0.9, 0.999, 1e-8, project)
    close(W, W64, rtol=1e-5, atol=1e-6)
    close(m, m64, rtol=1e-5, atol=1e-6)
    close(v, v64, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_unit_row_adam_equals_project_adam_renormalise(device, gen, monkeypatch, backend):
    monkeypatch.setenv("SAE_KERNELS", backend)
    W0 = _rows(gen, 50, 19).float()
    other0 = torch.randn(19, 50, generator=gen)
    grads = [(torch.randn(50, 19, generator=gen), torch.randn(19, 50, generator=gen)) for _ in range(4)]

    def params():
        return [t.clone().to(device).requires_grad_() for t in (other0, W0)]

    other_a, W_a = params()
    plain = torch.optim.Adam([other_a, W_a], lr=3e-3, betas=(0.9, 0.99), fused=True)
    other_b, W_b = params()
    fused = UnitRowAdam([other_b, W_b], unit_rows=W_b, lr=3e-3, betas=(0.9, 0.99), fused=True)
    for g_W, g_other in grads:
        W_a.grad, other_a.grad = g_W.clone().to(device), g_other.clone().to(device)
        eager.remove_parallel_grad_(W_a.detach(), W_a.grad)
        plain.step()
        with torch.no_grad():
            eager.normalize_rows_(W_a)
        W_b.grad, other_b.grad = g_W.clone().to(device), g_other.clone().to(device)
        fused.step()
    close(W_b, W_a, rtol=1e-5, atol=1e-6)
    close(other_b, other_a, rtol=0, atol=0)
    for key in ("exp_avg", "exp_avg_sq", "step"):
        close(fused.state[W_b][key], plain.state[W_a][key], rtol=1e-4, atol=1e-7)
    assert set(fused.state[W_b]) == set(plain.state[W_a])
    assert fused.state[W_b]["step"].device == plain.state[W_a]["step"].device


def test_unit_row_adam_refuses_what_it_cannot_fuse():
    W = torch.zeros(4, 3, requires_grad=True)
    with pytest.raises(ValueError, match="plain Adam only"):
        UnitRowAdam([W], unit_rows=W, lr=1e-3, weight_decay=0.1)
    with pytest.raises(ValueError, match="one of the optimised parameters"):
        UnitRowAdam([torch.zeros(2, requires_grad=True)], unit_rows=W, lr=1e-3)
