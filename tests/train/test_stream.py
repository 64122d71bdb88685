"""Training straight from the model (no cache): several hooks from one stream, exact resume."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from sae.train import load_run_config, train


def _raw(model_dir, corpus, out, **train_kw):
    return {
        "data": {"model": str(model_dir), "source": str(corpus), "context": 32, "harvest_batch": 8,
                 "hooks": ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"], "holdout_frac": 0.1},
        "sae": {"d_sae": 64, "activation": "topk", "k": 4},
        "saes": [{"hook_name": "blocks.0.hook_resid_post", "name": "l0"},
                 {"hook_name": "blocks.2.hook_resid_post", "name": "l2"}],
        "train": {"tokens": 128 * 24, "batch_size": 128, "lr": 3e-3, "warmup_steps": 2, "log_every": 4,
                  "checkpoint_every": 8, "progress": False, "out": str(out), **train_kw},
    }


def test_stream_trains_two_hooks_and_resumes_exactly(tiny_model_dir, tiny_corpus, tmp_path, monkeypatch):
    from sae.train import source as source_mod
    from sae.train import trainer as trainer_mod

    harvests = []
    original_harvest = source_mod.StreamSource._harvest

    def counting(self, blocks, *args, **kwargs):
        harvests.append(blocks.tokens_NT.shape[0])
        return original_harvest(self, blocks, *args, **kwargs)

    monkeypatch.setattr(source_mod.StreamSource, "_harvest", counting)
    monkeypatch.setattr(source_mod.StreamSource, "__init__",
                        _small_chunks(source_mod.StreamSource.__init__))
    full = train(load_run_config(raw=_raw(tiny_model_dir, tiny_corpus, tmp_path / "full")))
    assert set(full.saes) == {"l0", "l2"}
    assert full.evals["l0"]["l0"] == pytest.approx(4) and full.evals["l2"]["fvu"] < 1.0
    # 24 steps of 128 rows from chunks of 6 blocks (~186 rows, one batch each): the model runs once
    # per chunk for both SAEs (plus the init sample and the held-out chunk), never once per SAE.
    assert len(harvests) <= 24 + 3 and all(n <= 6 for n in harvests)

    original = trainer_mod.Trainer._after_step

    def interrupt(self, *args):
        original(self, *args)
        if self.step == 19:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod.Trainer, "_after_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(load_run_config(raw=_raw(tiny_model_dir, tiny_corpus, tmp_path / "split")))
    monkeypatch.setattr(trainer_mod.Trainer, "_after_step", original)
    resumed = train(load_run_config(raw=_raw(tiny_model_dir, tiny_corpus, tmp_path / "split")))
    for name in ("l0", "l2"):
        a = load_file(str(full.saes[name] / "sae_weights.safetensors"))
        b = load_file(str(resumed.saes[name] / "sae_weights.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), name


def _small_chunks(init):
    def wrapped(self, *args, **kwargs):
        kwargs["chunk_blocks"] = 6
        init(self, *args, **kwargs)
    return wrapped
