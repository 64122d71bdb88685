"""Harvester: several hooks from one forward, equal to the bridge's own run_with_cache."""

from __future__ import annotations

import pytest
import torch

from sae.activations import Harvester, HookError
from sae.activations.harvest import stop_layer, validate_hooks
from sae.lm import load_model

RESID = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]
BRIDGE_ONLY = ["blocks.0.mlp.hook_post", "blocks.1.attn.hook_z", "blocks.0.hook_resid_mid"]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def reference(model, tokens_NT, hooks):
    """What the bridge itself gives for the same tokens (whole model, no stopping)."""
    with torch.inference_mode():
        _, cache = model.bridge.run_with_cache(tokens_NT, names_filter=list(hooks))
    return {h: cache[h] for h in hooks}


@pytest.fixture(scope="module")
def tokens_NT():
    return torch.randint(3, 500, (3, 24), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "bridge"])
def test_resid_hooks_equal_run_with_cache(tiny_model, tokens_NT, fast):
    harvester = Harvester(tiny_model, RESID, fast=fast)
    assert harvester.fast is fast
    got, ref = harvester.run(tokens_NT), reference(tiny_model, tokens_NT, RESID)
    for hook in RESID:
        assert got[hook].shape == ref[hook].shape == (3, 24, 64)
        assert rel_err(got[hook], ref[hook]) <= 1e-5, hook


def test_fast_path_is_picked_and_uses_sdpa_without_touching_the_bridge(tiny_model):
    harvester = Harvester(tiny_model, RESID)
    assert harvester.fast
    assert harvester._base.config._attn_implementation == "sdpa"
    # The bridge keeps its eager attention (hook_pattern needs it) and its wrappers.
    assert tiny_model.hf_model.config._attn_implementation == "eager"
    assert type(tiny_model.hf_model.model.layers[0]).__name__ == "BlockBridge"
    assert type(harvester._layers[0]).__name__ == "LlamaDecoderLayer"
    # Parameters are shared, not copied.
    assert harvester._layers[0].mlp.up_proj.weight is \
        tiny_model.hf_model.model.layers[0].original_component.mlp.up_proj.original_component.weight


def test_bridge_only_hooks_equal_run_with_cache(tiny_model, tokens_NT):
    hooks = BRIDGE_ONLY + ["blocks.0.hook_resid_post"]
    harvester = Harvester(tiny_model, hooks)
    assert not harvester.fast
    with pytest.raises(HookError, match="fast path"):
        Harvester(tiny_model, hooks, fast=True)
    got, ref = harvester.run(tokens_NT), reference(tiny_model, tokens_NT, hooks)
    for hook in hooks:
        assert rel_err(got[hook], ref[hook]) <= 1e-5, hook
    assert got["blocks.1.attn.hook_z"].shape == (3, 24, 4, 16)
    assert harvester.d_in()["blocks.1.attn.hook_z"] == 64
    assert harvester.d_in()["blocks.0.mlp.hook_post"] == 128


def test_native_bridge_model(tiny_native_model, tokens_NT):
    hooks = ["blocks.0.hook_resid_post", "blocks.1.mlp.hook_post"]
    harvester = Harvester(tiny_native_model, hooks)
    assert not harvester.fast  # no HF model behind a native bridge
    got, ref = harvester.run(tokens_NT), reference(tiny_native_model, tokens_NT, hooks)
    for hook in hooks:
        assert rel_err(got[hook], ref[hook]) <= 1e-5, hook


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "bridge"])
def test_forward_stops_after_last_layer_needed(tiny_model, tokens_NT, fast):
    """Hooks at layers 0 and 1 of 3 never run layer 2; resid_pre of layer 1 never runs layer 1."""

    def layers_run(hooks):
        harvester = Harvester(tiny_model, hooks, fast=fast)
        layers = harvester._layers if fast else list(tiny_model.bridge.blocks)
        calls = []
        handles = [layer.register_forward_hook(lambda *_, i=i: calls.append(i))
                   for i, layer in enumerate(layers)]
        try:
            harvester.run(tokens_NT)
        finally:
            for handle in handles:
                handle.remove()
        return sorted(set(calls))

    assert layers_run(["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]) == [0, 1]
    # The fast path stops on entering layer 1; run_with_cache(stop_at_layer=2) runs it.
    assert layers_run(["blocks.1.hook_resid_pre"]) == ([0] if fast else [0, 1])


def test_stop_layer():
    assert stop_layer(None, ["blocks.3.hook_resid_post", "blocks.1.attn.hook_z"]) == 4
    assert stop_layer(None, ["hook_embed", "blocks.0.hook_resid_pre"]) == 1
    assert stop_layer(None, ["ln_final.hook_normalized"]) is None


def test_iter_rows_drops_masked_positions_and_casts(tiny_model, tokens_NT):
    keep = torch.ones_like(tokens_NT, dtype=torch.bool)
    keep[:, 0] = False
    keep[2, 20:] = False
    harvester = Harvester(tiny_model, ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"])
    parts = list(harvester.iter_rows(tokens_NT, keep, batch=2, dtype=torch.bfloat16))
    assert len(parts) == 2
    rows = torch.cat([p["blocks.0.hook_resid_post"] for p in parts])
    assert rows.dtype == torch.bfloat16 and rows.shape == (int(keep.sum()), 64)
    full = harvester.run(tokens_NT)["blocks.0.hook_resid_post"]
    assert torch.equal(rows, full[keep].to(torch.bfloat16))
    assert torch.cat([p["blocks.1.attn.hook_z"] for p in parts]).shape == (int(keep.sum()), 64)


def test_bf16_model_fast_and_bridge_agree(tiny_model_dir, tokens_NT):
    model = load_model(str(tiny_model_dir), dtype="bf16")
    fast = Harvester(model, RESID, fast=True).run(tokens_NT)
    slow = Harvester(model, RESID, fast=False).run(tokens_NT)
    for hook in RESID:
        assert fast[hook].dtype == torch.bfloat16
        assert rel_err(fast[hook], slow[hook]) <= 2e-2, hook


def test_unknown_hook_suggests_close_names(tiny_model):
    with pytest.raises(HookError) as err:
        validate_hooks(tiny_model, ["blocks.0.hook_resid_pots"])
    assert "blocks.0.hook_resid_post" in str(err.value)
    assert "0 <= L < 3" in str(err.value)
    with pytest.raises(HookError, match="at least one"):
        validate_hooks(tiny_model, [])
    with pytest.raises(HookError, match="repeated"):
        validate_hooks(tiny_model, ["blocks.0.hook_resid_post"] * 2)


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory, tiny_tokenizer):
    """A random 2-layer GPT-2 (learned positions, Conv1D, joint QKV) as a HF folder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tiny_tokenizer), n_embd=64, n_layer=2, n_head=4,
                     n_positions=128, bos_token_id=tiny_tokenizer.bos_token_id,
                     eos_token_id=tiny_tokenizer.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return load_model(str(folder))


def test_fast_path_on_gpt2_layout(tiny_gpt2, tokens_NT):
    """GPT-2 keeps its layers under `transformer.h`, not `model.layers`."""
    hooks = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"]
    harvester = Harvester(tiny_gpt2, hooks)
    assert harvester.fast
    got, ref = harvester.run(tokens_NT), reference(tiny_gpt2, tokens_NT, hooks)
    for hook in hooks:
        assert rel_err(got[hook], ref[hook]) <= 1e-5, hook
