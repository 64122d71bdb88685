"""The autograd wrappers (topk_encode, sparse_decode) on each backend: forward values and every
gradient against a dense float64 model that uses the same selected latents; gradcheck on eager."""

from __future__ import annotations

import pytest
import sae_kernels
import torch
from kernel_refs import close
from sae_kernels import backend_name, sparse_decode, topk_encode

D_IN, D_SAE, K, K_AUX, N_ROWS = 13, 90, 5, 7, 11


def _params(gen, device, dtype=torch.float32):
    """(x, W_enc, b_enc, W_dec, b_dec, dead) with grads on the float tensors."""
    x = torch.randn(N_ROWS, D_IN, generator=gen)
    W_enc = torch.randn(D_IN, D_SAE, generator=gen) / D_IN**0.5
    b_enc = torch.randn(D_SAE, generator=gen) * 0.1
    W_dec = torch.randn(D_SAE, D_IN, generator=gen)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    b_dec = torch.randn(D_IN, generator=gen) * 0.1
    dead = torch.rand(D_SAE, generator=gen) < 0.4
    leaves = [t.to(device=device, dtype=dtype).requires_grad_() for t in (x, W_enc, b_enc, W_dec, b_dec)]
    return (*leaves, dead.to(device))


def _loss(x, recon, aux_recon):
    loss = (recon - x).pow(2).sum()
    if aux_recon is not None:
        loss = loss + (aux_recon - (x - recon).detach()).pow(2).sum()
    return loss


def _mask(vals_BK, idx_BK, like_BF):
    """1 at the selected latents that carry a value (padding and zero values pass nothing)."""
    taken = (vals_BK.detach().cpu() > 0).double()
    return torch.zeros_like(like_BF).scatter_add(1, idx_BK.cpu(), taken).clamp(max=1.0)


def _dense_reference(leaves, code, centre=False):
    """Loss and grads of the same SAE with dense float64 tensors and the kernel's selection;
    `centre` subtracts b_dec from the encoder input too."""
    x, W_enc, b_enc, W_dec, b_dec = [t.detach().cpu().double().requires_grad_() for t in leaves]
    acts = ((x - b_dec if centre else x) @ W_enc + b_enc).relu()
    dense_code = _mask(code.vals_BK, code.idx_BK, acts) * acts
    recon = dense_code @ W_dec + b_dec
    aux_recon = None
    if code.aux_idx_BK.shape[1]:
        aux_recon = (_mask(code.aux_vals_BK, code.aux_idx_BK, acts) * acts) @ W_dec
    loss = _loss(x, recon, aux_recon)
    loss.backward()
    return dense_code, loss, [t.grad for t in (x, W_enc, b_enc, W_dec, b_dec)]


@pytest.mark.parametrize("backend", ["eager", "triton"])
@pytest.mark.parametrize("mode", ["topk", "topk+aux", "batchtopk+aux", "topk+aux centred",
                                  "batchtopk+aux zeros-inactive"])
def test_grads_match_dense_reference(device, gen, monkeypatch, backend, mode):
    monkeypatch.setenv("SAE_KERNELS", backend)
    x, W_enc, b_enc, W_dec, b_dec, dead = _params(gen, device)
    assert backend_name(x) == backend
    with_aux = "aux" in mode
    centre = mode.endswith("centred")
    inactive = mode.endswith("zeros-inactive")  # exact here: the values come out of a ReLU
    code = topk_encode(
        x, W_enc, b_enc, K, dead if with_aux else None, K_AUX if with_aux else 0,
        per_batch=mode.startswith("batch"), b_dec_D=b_dec if centre else None,
    )
    recon = sparse_decode(code.vals_BK, code.idx_BK, W_dec, b_dec, zero_is_inactive=inactive)
    aux_recon = None
    if with_aux:
        aux_recon = sparse_decode(code.aux_vals_BK, code.aux_idx_BK, W_dec, torch.zeros_like(b_dec),
                                  zero_is_inactive=inactive)
        assert bool(dead.cpu()[code.aux_idx_BK.cpu()[code.aux_vals_BK.cpu() > 0]].all())
    loss = _loss(x, recon, aux_recon)
    loss.backward()
    leaves = (x, W_enc, b_enc, W_dec, b_dec)
    ref_code, ref_loss, ref_grads = _dense_reference(leaves, code, centre)
    tol = {"rtol": 2e-3, "atol": 2e-3} if device == "cuda" else {"rtol": 1e-4, "atol": 1e-4}
    close(code.vals_BK, ref_code.gather(1, code.idx_BK.cpu()), **tol)
    close(loss, ref_loss, **tol)
    for name, leaf, ref in zip(("x", "W_enc", "b_enc", "W_dec", "b_dec"), leaves, ref_grads, strict=True):
        assert leaf.grad is not None and leaf.grad.dtype == leaf.dtype, name
        close(leaf.grad, ref, **tol)


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_centred_encoder_on_data_skips_the_input_gradient(device, gen, monkeypatch, backend):
    """Training on data (x needs no gradient): b_dec's encoder-side gradient comes from
    -W_enc @ grad b_enc, equal to summing the [B, D] input gradient, which is never computed."""
    monkeypatch.setenv("SAE_KERNELS", backend)
    x, W_enc, b_enc, _, b_dec, _ = _params(gen, device)
    x = x.detach()
    ops = sae_kernels.ops_for(x)
    vals = topk_encode(x, W_enc, b_enc, K, b_dec_D=b_dec).vals_BK
    weights = torch.linspace(-1, 2, vals.numel()).view_as(vals).to(device)
    with monkeypatch.context() as m:
        m.setattr(ops, "sparse_input_grad", lambda *a: pytest.fail("input gradient computed"))
        (vals * weights).sum().backward()
    xc = (x - b_dec).detach().requires_grad_()
    (topk_encode(xc, W_enc, b_enc, K).vals_BK * weights).sum().backward()
    tol = {"rtol": 2e-3, "atol": 2e-3} if device == "cuda" else {"rtol": 1e-5, "atol": 1e-5}
    close(b_dec.grad, -xc.grad.sum(0), **tol)


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_encoder_grad_in_the_weights_dtype(device, gen, monkeypatch, backend):
    """bf16 inputs, fp32 weights: the weight gradient comes out fp32, accumulated in fp32, not
    rounded to bf16 on the way (its error stays far below bf16's 2^-9 relative step)."""
    monkeypatch.setenv("SAE_KERNELS", backend)
    x, W_enc, b_enc, *_ = _params(gen, device)
    x16 = x.detach().bfloat16()
    vals = topk_encode(x16, W_enc, b_enc, K).vals_BK
    weights = torch.linspace(-1, 2, vals.numel()).view_as(vals).to(device)
    (vals.float() * weights).sum().backward()
    assert W_enc.grad.dtype == torch.float32 and b_enc.grad.dtype == torch.float32
    # Autograd hands the bf16 values their gradient in bf16: the reference rounds it alike.
    g_ref = torch.where(vals > 0, weights.bfloat16(), 0).cpu().double()
    ref_W, ref_b = sae_kernels.eager.sparse_encoder_grad(
        x16.cpu().double(), g_ref,
        topk_encode(x16, W_enc, b_enc, K).idx_BK.cpu(), D_SAE)
    close(W_enc.grad, ref_W, rtol=1e-5, atol=1e-5)
    close(b_enc.grad, ref_b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_decode_reads_rows_from_a_bf16_copy(device, gen, monkeypatch, backend):
    """W_gather_FD: the forward and the values' gradient use the bf16 copy's (rounded) rows,
    accumulated in fp32 and returned in W_dec's dtype; W_dec's and b_dec's gradients are the
    ones without the copy."""
    monkeypatch.setenv("SAE_KERNELS", backend)
    *_, W_dec, b_dec, _ = _params(gen, device)
    idx = torch.randint(0, D_SAE, (N_ROWS, K), generator=gen).to(device)
    vals = torch.rand(N_ROWS, K, generator=gen).to(device).requires_grad_()
    vals_ref = vals.detach().clone().requires_grad_()
    W16 = W_dec.detach().bfloat16()
    weights = torch.randn(N_ROWS, D_IN, generator=gen).to(device)
    out = sparse_decode(vals, idx, W_dec, b_dec, W16)
    assert out.dtype == torch.float32
    (out * weights).sum().backward()
    grads_with = (vals.grad, W_dec.grad.clone(), b_dec.grad.clone())
    W_dec.grad = b_dec.grad = None
    (sparse_decode(vals_ref, idx, W_dec, b_dec) * weights).sum().backward()
    W16_64 = W16.cpu().double()
    ref_out = (vals.detach().cpu().double()[:, :, None] * W16_64[idx.cpu()]).sum(1) + b_dec.detach().cpu().double()
    close(out, ref_out, rtol=1e-5, atol=1e-5)
    close(grads_with[0], torch.einsum("bkd,bd->bk", W16_64[idx.cpu()], weights.cpu().double()), rtol=1e-5, atol=1e-5)
    close(grads_with[1], W_dec.grad, rtol=0, atol=0)
    close(grads_with[2], b_dec.grad, rtol=0, atol=0)


def test_batchtopk_total_count(device, gen, monkeypatch):
    monkeypatch.setenv("SAE_KERNELS", "triton")
    x, W_enc, b_enc, *_ = _params(gen, device)
    code = topk_encode(x, W_enc, b_enc, K, per_batch=True)
    assert int((code.vals_BK > 0).sum()) <= N_ROWS * K
    assert code.vals_BK.shape[1] >= 1


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_row_maintenance_dispatch(device, gen, monkeypatch, backend):
    monkeypatch.setenv("SAE_KERNELS", backend)
    W = torch.randn(20, 9, generator=gen).to(device) * 3
    sae_kernels.normalize_rows_(W)
    close(W.norm(dim=1), torch.ones(20))
    grad = torch.randn(20, 9, generator=gen).to(device)
    sae_kernels.remove_parallel_grad_(W, grad)
    close((grad * W).sum(1), torch.zeros(20), atol=1e-5, rtol=0)


def test_gradcheck_eager_float64(gen, monkeypatch):
    """torch.autograd.gradcheck of both wrappers on the eager twin in float64 (CPU)."""
    monkeypatch.setenv("SAE_KERNELS", "eager")
    x, W_enc, b_enc, W_dec, b_dec, dead = _params(gen, "cpu", torch.float64)
    idx = topk_encode(x, W_enc, b_enc, K).idx_BK

    def encode(x, W_enc, b_enc):
        code = topk_encode(x, W_enc, b_enc, K, dead, K_AUX)
        return code.vals_BK, code.aux_vals_BK

    assert torch.autograd.gradcheck(encode, (x, W_enc, b_enc))

    def encode_centred(x, W_enc, b_enc, b_dec):
        code = topk_encode(x, W_enc, b_enc, K, dead, K_AUX, b_dec_D=b_dec)
        return code.vals_BK, code.aux_vals_BK

    assert torch.autograd.gradcheck(encode_centred, (x, W_enc, b_enc, b_dec))
    vals = torch.rand(N_ROWS, K, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda v, W, b: sparse_decode(v, idx, W, b), (vals, W_dec, b_dec))
