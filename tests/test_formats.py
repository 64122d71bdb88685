"""sae.formats: our folders round-trip, the libraries' folders load with the libraries' numbers.

The fixtures in tests/fixtures/ were written by SAELens 6.54 and sparsify 1.3.3 themselves
(scripts/fixtures/make_*_fixtures.py, each in its own venv); ours_read_by_saelens/ holds
folders that `save` wrote together with SAELens's encode of them, so these tests need neither
library.
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae.config import SAEConfig
from sae.formats import load, read_extra, save
from sae.model import SparseAutoencoder

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
ACTIVATIONS = ("topk", "batchtopk", "jumprelu", "relu")
ATOL = 1e-5


@torch.no_grad()
def random_sae(activation: str, input_scale: float = 2.5, seed: int = 0) -> SparseAutoencoder:
    cfg = SAEConfig(d_in=12, d_sae=40, activation=activation, k=5, normalize_input="expected_norm",
                    hook_name="blocks.2.hook_resid_post", model_name="tiny")
    sae = SparseAutoencoder(cfg, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    sae.W_enc.copy_(torch.randn(12, 40, generator=gen) * 0.3)
    sae.b_enc.copy_(torch.randn(40, generator=gen) * 0.2)
    sae.b_dec.copy_(torch.randn(12, generator=gen) * 0.5)
    sae.input_scale.fill_(input_scale)
    if activation == "jumprelu":
        sae.log_threshold.copy_((torch.rand(40, generator=gen) * 0.5 + 0.05).log())
    if activation == "batchtopk":
        sae.threshold.fill_(0.4)
    return sae


def inputs(n: int = 64, d: int = 12) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(7))


def copy_fixture(name: str, tmp_path: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def edit_json(file: pathlib.Path, **changes) -> None:
    cfg = json.loads(file.read_text())
    cfg.update(changes)
    file.write_text(json.dumps(cfg))


# -- our round trip ----------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_round_trip_keeps_encode_decode_and_config(activation, tmp_path):
    sae = random_sae(activation)
    x_BD = inputs()
    save(sae, tmp_path / "sae", extra={"tokens": 123, "run": "r1"})
    loaded = load(tmp_path / "sae")

    assert loaded.cfg == sae.cfg
    assert read_extra(tmp_path / "sae") == {"tokens": 123, "run": "r1"}
    assert float(loaded.input_scale) == 1.0  # the scale now lives in the weights
    lat_BF = sae.encode(x_BD)
    assert (lat_BF > 0).sum(-1).float().mean() > 1
    torch.testing.assert_close(loaded.encode(x_BD), lat_BF, atol=ATOL, rtol=0)
    torch.testing.assert_close(loaded.decode(lat_BF), sae.decode(lat_BF), atol=ATOL, rtol=0)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_round_trip_weights_are_the_folded_weights(activation, tmp_path):
    sae = random_sae(activation)
    save(sae, tmp_path / "sae")
    before, after = sae.folded_state(), load(tmp_path / "sae").folded_state()
    assert before.keys() == after.keys()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(before[name], after[name]), name
    if activation == "batchtopk":
        assert torch.equal(before["threshold"], after["threshold"])
    if activation == "jumprelu":  # stored as threshold, held as log_threshold: one rounding
        torch.testing.assert_close(after["threshold"], before["threshold"], rtol=1e-6, atol=0)


@pytest.mark.parametrize("activation", ("topk", "batchtopk", "relu"))
def test_round_trip_is_exact_without_input_scale(activation, tmp_path):
    sae = random_sae(activation, input_scale=1.0)
    save(sae, tmp_path / "sae")
    x_BD = inputs()
    assert torch.equal(load(tmp_path / "sae").encode(x_BD), sae.encode(x_BD))


def test_saved_folder_is_a_saelens_folder(tmp_path):
    save(random_sae("topk"), tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 5
    assert cfg["normalize_activations"] == "none" and cfg["apply_b_dec_to_input"] is True
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post"
    assert cfg["metadata"]["model_name"] == "tiny"
    weights = load_file(tmp_path / "sae" / "sae_weights.safetensors")
    assert sorted(weights) == ["W_dec", "W_enc", "b_dec", "b_enc"]
    assert weights["W_enc"].shape == (12, 40) and weights["W_dec"].shape == (40, 12)


def test_batchtopk_is_saved_as_jumprelu_with_its_threshold(tmp_path):
    save(random_sae("batchtopk"), tmp_path / "sae")
    assert json.loads((tmp_path / "sae" / "cfg.json").read_text())["architecture"] == "jumprelu"
    threshold_F = load_file(tmp_path / "sae" / "sae_weights.safetensors")["threshold"]
    assert torch.equal(threshold_F, torch.full((40,), 0.4))


# -- folders made by SAELens and sparsify ------------------------------------------------------


@pytest.mark.parametrize("name, activation", [
    ("saelens_topk", "topk"), ("saelens_jumprelu", "jumprelu"), ("saelens_standard", "relu"),
    ("saelens_batchtopk", "batchtopk"), ("sparsify", "topk"),
])
def test_library_folder_encodes_like_the_library(name, activation):
    folder = FIXTURES / name
    x_BD = load_file(folder / "inputs.safetensors")["x"]
    expected = load_file(folder / "expected_latents.safetensors")
    sae = load(folder)
    assert sae.cfg.activation == activation
    assert sae.cfg.model_name == "tiny-model"
    assert sae.cfg.hook_name.endswith(".hook_resid_post")
    torch.testing.assert_close(sae.encode(x_BD), expected["latents"], atol=ATOL, rtol=0)
    torch.testing.assert_close(sae.decode(expected["latents"]), expected["recon"], atol=ATOL,
                               rtol=0)


def test_sparsify_run_folder_with_one_hookpoint_loads_it():
    assert load(FIXTURES / "sparsify").cfg.hook_name == "blocks.3.hook_resid_post"
    sae = load(FIXTURES / "sparsify" / "layers.3")
    assert (sae.d_in, sae.d_sae, sae.cfg.k) == (16, 64, 8)


def test_sparsify_run_folder_with_several_hookpoints_names_them():
    with pytest.raises(ValueError, match=r"2 SAEs.*layers\.2, layers\.4"):
        load(FIXTURES / "sparsify_multi")
    sae = load(FIXTURES / "sparsify_multi" / "layers.4")
    assert sae.cfg.hook_name == "blocks.4.hook_resid_post"


def test_saelens_pre_6_flat_config_loads(tmp_path):
    folder = copy_fixture("saelens_standard", tmp_path)
    cfg = json.loads((folder / "cfg.json").read_text())
    flat = {"d_in": cfg["d_in"], "d_sae": cfg["d_sae"], "dtype": "torch.float32",
            "hook_point": "blocks.1.hook_resid_post", "model_name": "tiny-model",
            "activation_fn_str": "relu", "normalize_activations": False}
    (folder / "cfg.json").write_text(json.dumps(flat))
    sae = load(folder)
    assert sae.cfg.hook_name == "blocks.1.hook_resid_post"
    x_BD = load_file(folder / "inputs.safetensors")["x"]
    expected_BF = load_file(folder / "expected_latents.safetensors")["latents"]
    torch.testing.assert_close(sae.encode(x_BD), expected_BF, atol=ATOL, rtol=0)


def test_saelens_expected_norm_folds_its_scaling_factor(tmp_path):
    folder = copy_fixture("saelens_standard", tmp_path)
    edit_json(folder / "cfg.json", normalize_activations="expected_average_only_in")
    with pytest.warns(UserWarning, match="no scaling factor"):
        load(folder)
    (folder / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 0.5}))
    sae = load(folder)
    assert float(sae.input_scale) == 0.5 and sae.cfg.normalize_input == "expected_norm"
    x_BD = load_file(folder / "inputs.safetensors")["x"]
    unscaled = load(FIXTURES / "saelens_standard")
    torch.testing.assert_close(sae.encode(x_BD), unscaled.encode(x_BD * 0.5))


@pytest.mark.parametrize("changes, message", [
    ({"normalize_activations": "layer_norm"}, "normalises each token"),
    ({"reshape_activations": "hook_z"}, "hook_z"),
    ({"architecture": "gated"}, "architecture 'gated'"),
    ({"metadata": {"sae_lens_version": "6.1.0", "hook_head_index": 3}}, "one attention head"),
])
def test_saelens_features_we_cannot_represent_are_rejected(changes, message, tmp_path):
    folder = copy_fixture("saelens_topk", tmp_path)
    edit_json(folder / "cfg.json", **changes)
    with pytest.raises(ValueError, match=message):
        load(folder)


def test_sparsify_groupmax_is_rejected(tmp_path):
    folder = copy_fixture("sparsify", tmp_path) / "layers.3"
    edit_json(folder / "cfg.json", activation="groupmax")
    with pytest.raises(ValueError, match="groupmax"):
        load(folder)


# -- SAELens reading our folders ---------------------------------------------------------------


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_saelens_reading_of_our_folder_equals_our_encode(activation):
    folder = FIXTURES / "ours_read_by_saelens" / activation
    x_BD = load_file(folder / "inputs.safetensors")["x"]
    saelens = load_file(folder / "saelens_latents.safetensors")
    sae = load(folder)
    assert sae.cfg.activation == activation
    torch.testing.assert_close(sae.encode(x_BD), saelens["latents"], atol=ATOL, rtol=0)
    torch.testing.assert_close(sae.decode(saelens["latents"]), saelens["recon"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_save_still_writes_the_cfg_json_saelens_was_checked_on(activation, tmp_path):
    folder = FIXTURES / "ours_read_by_saelens" / activation
    save(load(folder), tmp_path / "again")
    checked = json.loads((folder / "cfg.json").read_text())
    written = json.loads((tmp_path / "again" / "cfg.json").read_text())
    checked["metadata"].pop("sae_toolkit_version")
    written["metadata"].pop("sae_toolkit_version")
    assert written == checked


# -- errors ------------------------------------------------------------------------------------


def test_unknown_folder_names_what_was_looked_for(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"sae_toolkit\.json.*cfg\.json.*sae\.safetensors.*notes"):
        load(tmp_path)
    with pytest.raises(ValueError, match="not a folder"):
        load(tmp_path / "notes.txt")


def test_missing_weights_file(tmp_path):
    folder = copy_fixture("saelens_topk", tmp_path)
    (folder / "sae_weights.safetensors").unlink()
    with pytest.raises(ValueError, match=r"no weights: expected sae_weights\.safetensors"):
        load(folder)


def test_unexpected_tensor_is_rejected(tmp_path):
    folder = copy_fixture("saelens_standard", tmp_path)
    weights = load_file(folder / "sae_weights.safetensors")
    weights["W_skip"] = torch.zeros(16, 16)
    save_file(weights, folder / "sae_weights.safetensors")
    with pytest.raises(ValueError, match="cannot represent.*W_skip"):
        load(folder)


class _Trap:
    """Unpickling this touches a marker file: proof that a pickle was opened."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.parametrize("weights_name", ("sae_weights.pt", "sae.pt", "model.bin"))
def test_pickles_are_never_loaded(weights_name, tmp_path, monkeypatch):
    folder = tmp_path / "sae"
    folder.mkdir()
    marker = tmp_path / "unpickled"
    (folder / weights_name).write_bytes(pickle.dumps(_Trap(marker)))
    shutil.copy(FIXTURES / "saelens_topk" / "cfg.json", folder / "cfg.json")

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle loader was called")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    with pytest.raises(ValueError, match="never loaded"):
        load(folder)
    (folder / "cfg.json").unlink()
    with pytest.raises(ValueError, match="never loaded"):
        load(folder)
    assert not marker.exists()


def test_save_replaces_an_sae_folder_and_leaves_no_temp_folders(tmp_path):
    save(random_sae("topk"), tmp_path / "sae")
    save(random_sae("relu", seed=3), tmp_path / "sae", extra={"v": 2})
    assert load(tmp_path / "sae").cfg.activation == "relu"
    assert read_extra(tmp_path / "sae") == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]


def test_crash_during_save_leaves_the_old_folder_whole(tmp_path, monkeypatch):
    save(random_sae("topk"), tmp_path / "sae")
    real_replace = os.replace

    def crash(src, dst):
        if pathlib.Path(src).name.startswith(".sae.tmp-"):
            raise OSError("simulated crash")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        save(random_sae("relu"), tmp_path / "sae")
    monkeypatch.setattr(os, "replace", real_replace)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]
    assert load(tmp_path / "sae").cfg.activation == "topk"


def test_save_refuses_to_replace_a_folder_without_an_sae(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "acts.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="refusing to replace"):
        save(random_sae("topk"), tmp_path / "data")
    assert (tmp_path / "data" / "acts.bin").exists()


def test_extra_must_be_json(tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        save(random_sae("topk"), tmp_path / "sae", extra={"t": torch.zeros(1)})
    assert not (tmp_path / "sae").exists()
