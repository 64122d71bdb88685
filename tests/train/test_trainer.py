"""The trainer on synthetic caches: every activation learns, resume is exact, bad input is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sae.config import ConfigError
from sae.formats import load
from sae.train import TrainingError, load_run_config, train
from tests._synthetic import sparse_data, write_cache

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    acts = sparse_data(4096, 24, seed=1)
    return write_cache(tmp_path_factory.mktemp("cache") / "c", {HOOK: acts})


def _raw(cache: Path, out: Path, **train) -> dict:
    return {
        "data": {"cache": str(cache), "holdout_frac": 0.125},
        "sae": {"d_sae": 96, "activation": "topk", "k": 4},
        "train": {"tokens": 256 * 40, "batch_size": 256, "lr": 3e-3, "warmup_steps": 5,
                  "dead_tokens": 2048, "aux_k": 16, "log_every": 5, "checkpoint_every": 10,
                  "progress": False, "out": str(out), "shuffle_buffer": 1024, **train},
    }


def _fvu_at(run: Path, step: int) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return next(r["fvu"] for r in rows if r["step"] == step)


@pytest.mark.parametrize("activation", ["topk", "batchtopk", "jumprelu", "relu"])
def test_each_activation_learns(cache_dir, tmp_path, activation):
    raw = _raw(cache_dir, tmp_path / "run", tokens=256 * 250, lr=1e-2, sparsity_coef=0.05,
               sparsity_warmup_steps=10, checkpoint_every=0)
    raw["sae"]["activation"] = activation
    result = train(load_run_config(raw=raw))
    ev = result.evals[HOOK]
    assert _fvu_at(tmp_path / "run", 250) < 0.4 * _fvu_at(tmp_path / "run", 5)
    assert ev["fvu"] < 0.25, ev
    sae = load(result.saes[HOOK])
    assert sae.cfg.activation == activation
    norms = sae.W_dec.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)
    if activation == "topk":
        assert ev["l0"] == pytest.approx(4.0, abs=1e-6)
    elif activation == "batchtopk":
        # the inference threshold is calibrated so that rows keep k latents on average
        assert 3.0 < ev["l0"] < 5.5
    else:
        assert ev["l0"] < 96


@pytest.mark.parametrize("activation", ["topk", "relu"])
def test_bf16_encoder_trains_to_the_fp32_fvu(cache_dir, tmp_path, activation):
    """train.encoder_dtype=bfloat16 (the fast GPU setting) from the same seed reaches the fp32
    run's FVU, keeps fp32 master weights, and its encoder really ran in bf16 (results differ)."""
    results = {}
    for dtype in ("float32", "bfloat16"):
        raw = _raw(cache_dir, tmp_path / dtype, tokens=256 * 150, lr=1e-2, sparsity_coef=0.05,
                   sparsity_warmup_steps=10, checkpoint_every=0, encoder_dtype=dtype)
        raw["sae"]["activation"] = activation
        result = train(load_run_config(raw=raw))
        results[dtype] = (result.evals[HOOK]["fvu"], load(result.saes[HOOK]))
    (fvu32, sae32), (fvu16, sae16) = results["float32"], results["bfloat16"]
    assert fvu16 < 0.25 and abs(fvu16 - fvu32) < 0.1 * fvu32 + 0.005, (fvu32, fvu16)
    assert sae16.W_enc.dtype == torch.float32
    assert not torch.equal(sae16.W_enc, sae32.W_enc)


def test_resume_after_interruption_is_bit_exact(cache_dir, tmp_path, monkeypatch):
    full = train(load_run_config(raw=_raw(cache_dir, tmp_path / "full")))
    from sae.train import trainer as trainer_mod

    original = trainer_mod.Trainer._after_step

    def interrupt(self, *args):
        original(self, *args)
        if self.step == 27:  # past the step-20 checkpoint: steps 21-27 are lost and redone
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod.Trainer, "_after_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(load_run_config(raw=_raw(cache_dir, tmp_path / "split")))
    monkeypatch.setattr(trainer_mod.Trainer, "_after_step", original)
    resumed = train(load_run_config(raw=_raw(cache_dir, tmp_path / "split")))
    a = load_file(str(full.saes[HOOK] / "sae_weights.safetensors"))
    b = load_file(str(resumed.saes[HOOK] / "sae_weights.safetensors"))
    for name in a:
        assert torch.equal(a[name], b[name]), name
    steps = [json.loads(x)["step"] for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), "metrics.jsonl repeats steps after the resume"


@pytest.mark.slow
def test_sigkill_and_resume_matches_uninterrupted(cache_dir, tmp_path):
    """A real `sae train` process killed with SIGKILL, rerun, ends with the same weights."""
    def config(out: Path) -> Path:
        raw = _raw(cache_dir, out, tokens=256 * 400, checkpoint_every=20)
        path = tmp_path / f"{out.name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    cmd = [sys.executable, "-m", "sae", "train", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd + [str(config(tmp_path / "full"))], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(cmd + [str(config(tmp_path / "killed"))], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and not (latest.exists() and latest.read_text() >= "step_000000060"):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "result.json").exists(), "the run finished before it was killed"
    subprocess.run(cmd + [str(config(tmp_path / "killed"))], check=True, env=env, capture_output=True)
    a = load_file(str(tmp_path / "full" / "saes" / HOOK / "sae_weights.safetensors"))
    b = load_file(str(tmp_path / "killed" / "saes" / HOOK / "sae_weights.safetensors"))
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_several_saes_share_one_stream(tmp_path):
    acts = {HOOK: sparse_data(2048, 16, seed=2), "blocks.1.hook_resid_post": sparse_data(2048, 20, seed=3)}
    cache = write_cache(tmp_path / "c", acts)
    raw = _raw(cache, tmp_path / "run", tokens=256 * 10)
    raw["sae"] = {"d_sae": 64, "activation": "topk"}
    raw["saes"] = [{"k": 2}, {"k": 6}, {"k": 3, "hook_name": "blocks.1.hook_resid_post", "name": "l1"}]
    from sae.activations.store import ActivationCache

    calls = []
    original = ActivationCache.gather

    def counting(self, rows, hooks, *args, **kwargs):
        calls.append(tuple(hooks))
        return original(self, rows, hooks, *args, **kwargs)

    ActivationCache.gather = counting
    try:
        result = train(load_run_config(raw=raw))
    finally:
        ActivationCache.gather = original
    assert set(result.saes) == {f"{HOOK}.topk.k2.d64", f"{HOOK}.topk.k6.d64", "l1"}
    assert result.evals[f"{HOOK}.topk.k2.d64"]["l0"] == pytest.approx(2)
    assert result.evals[f"{HOOK}.topk.k6.d64"]["l0"] == pytest.approx(6)
    assert load(result.saes["l1"]).cfg.d_in == 20
    # one gather of both hooks per training step (plus the init sample and the holdout)
    per_step = [c for c in calls if len(c) == 2]
    assert len(per_step) >= 10 and all(set(c) == set(acts) for c in per_step)
    # 3 SAEs reading separately would make 30 step gathers; prefetching reads up to 4 batches ahead
    assert len(calls) <= 10 + 2 + 4


def test_unknown_config_key_is_named_with_suggestion(cache_dir, tmp_path):
    raw = _raw(cache_dir, tmp_path / "run")
    raw["train"]["learning_rate"] = 1e-3
    with pytest.raises(ConfigError, match=r"train\.learning_rate.*Did you mean 'lr'"):
        load_run_config(raw=raw)
    raw = _raw(cache_dir, tmp_path / "run")
    raw["sae"]["actvation"] = "topk"
    with pytest.raises(ConfigError, match=r"sae\.actvation.*'activation'"):
        load_run_config(raw=raw)
    with pytest.raises(ConfigError, match="Unknown section 'trian'.*'train'"):
        load_run_config(raw={**_raw(cache_dir, tmp_path), "trian": {}})


def test_set_overrides_and_yaml_number_strings(cache_dir, tmp_path):
    cfg = load_run_config(raw=_raw(cache_dir, tmp_path), overrides=["train.lr=4e-4", "sae.k=7"])
    assert cfg.train.lr == pytest.approx(4e-4) and cfg.saes[0].fields["k"] == 7
    with pytest.raises(ConfigError, match="train.lr must be a number"):
        load_run_config(raw=_raw(cache_dir, tmp_path), overrides=["train.lr=fast"])


def test_d_in_mismatch_is_refused(cache_dir, tmp_path):
    raw = _raw(cache_dir, tmp_path / "run")
    raw["sae"]["d_in"] = 25
    with pytest.raises(ConfigError, match="sae.d_in is 25 but the activations at .* have width 24"):
        train(load_run_config(raw=raw))


def _cache_with_nan(tmp_path: Path) -> Path:
    acts = sparse_data(2048, 16, seed=4)
    acts[[3, 700, 1500]] = float("nan")
    acts[900, 2] = float("inf")
    return write_cache(tmp_path / "nan", {HOOK: acts})


def test_nonfinite_rows_are_skipped_and_counted(tmp_path):
    cache = _cache_with_nan(tmp_path)
    raw = _raw(cache, tmp_path / "run", tokens=256 * 8, checkpoint_every=0)
    raw["data"]["holdout_frac"] = 0.0
    result = train(load_run_config(raw=raw))
    assert result.skipped_rows == 4  # every row seen once in 8 steps of 256 out of 2048
    assert all(torch.isfinite(t).all() for t in load_file(str(result.saes[HOOK] / "sae_weights.safetensors")).values())


def test_nonfinite_check_is_exact_behind_its_cheap_first_pass():
    """The trainer first checks row sums (one reduction, on the host before the copy to a GPU);
    rows with +inf and -inf (sum NaN) still go, finite rows whose sum overflows still stay."""
    from sae.config import TrainConfig
    from sae.train.trainer import Trainer

    trainer = Trainer.__new__(Trainer)
    trainer.tc, trainer.step, trainer.skipped_rows = TrainConfig(tokens=256, batch_size=256), 0, 0
    x = torch.randn(6, 4)
    x[1, 0] = float("nan")
    x[2, 1] = float("inf")
    x[3, 0], x[3, 1] = float("inf"), float("-inf")
    x[4, :2] = 3e38  # finite, but the row sum overflows to inf
    kept = trainer._clean(x)
    assert trainer.skipped_rows == 3
    assert torch.equal(kept, x[[0, 4, 5]])
    big = torch.full((3, 4), 3e38)
    assert trainer._clean(big) is big and trainer.skipped_rows == 3


def test_batchtopk_threshold_update(tmp_path):
    """The running inference threshold: the smallest positive value kept, averaged 0.99/0.01;
    a batch with nothing kept leaves it alone (computed without boolean indexing: no GPU sync)."""
    from types import SimpleNamespace

    from sae.config import SAEConfig
    from sae.model import SparseAutoencoder
    from sae.train.trainer import Member, Trainer

    sae = SparseAutoencoder(SAEConfig(d_in=4, d_sae=8, k=2, activation="batchtopk", hook_name=HOOK))
    member = Member("m", HOOK, sae, torch.optim.Adam(sae.parameters()), torch.zeros(8, dtype=torch.long))
    trainer = Trainer.__new__(Trainer)
    trainer.world = 1
    idx = torch.tensor([[1, 2], [3, 0]])
    trainer._track_firing(member, SimpleNamespace(idx_BK=idx, vals_BK=torch.tensor([[0.5, 0.2], [0.0, 0.0]])), 2)
    assert float(sae.threshold) == pytest.approx(0.2)
    trainer._track_firing(member, SimpleNamespace(idx_BK=idx, vals_BK=torch.tensor([[0.4, 0.3], [1.0, 0.0]])), 2)
    assert float(sae.threshold) == pytest.approx(0.99 * 0.2 + 0.01 * 0.3)
    trainer._track_firing(member, SimpleNamespace(idx_BK=idx, vals_BK=torch.zeros(2, 2)), 2)
    assert float(sae.threshold) == pytest.approx(0.99 * 0.2 + 0.01 * 0.3)
    assert member.since_fired_F.tolist() == [6, 2, 2, 2, 6, 6, 6, 6]  # 1-3 fired in the second batch


def test_nonfinite_rows_stop_when_configured(tmp_path):
    cache = _cache_with_nan(tmp_path)
    raw = _raw(cache, tmp_path / "run", tokens=256 * 8, nonfinite="stop")
    with pytest.raises(TrainingError, match="hold NaN or inf"):
        train(load_run_config(raw=raw))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(cache_dir, tmp_path, monkeypatch):
    from sae.train import trainer as trainer_mod

    original = trainer_mod.compute_loss

    def poisoned(sae, x, out, *args):
        parts = original(sae, x, out, *args)
        if poisoned.calls >= 23:
            return parts._replace(total=parts.total * float("nan"))
        poisoned.calls += 1
        return parts

    poisoned.calls = 0
    monkeypatch.setattr(trainer_mod, "compute_loss", poisoned)
    with pytest.raises(TrainingError, match=r"became nan at step 25.*last good checkpoint is .*step_000000020"):
        train(load_run_config(raw=_raw(cache_dir, tmp_path / "run")))
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text()
    assert latest == "step_000000020"
    state = load_file(str(tmp_path / "run" / "checkpoints" / latest / f"{HOOK}.model.safetensors"))
    assert all(torch.isfinite(t).all() for t in state.values())


def test_failed_checkpoint_write_keeps_previous(cache_dir, tmp_path, monkeypatch):
    from sae.train import checkpoint as ckpt_mod

    original = ckpt_mod.save_file
    calls = {"n": 0}

    def flaky(tensors, path):
        calls["n"] += 1
        if calls["n"] == 4:  # the first file of the second checkpoint (step 20)
            raise OSError(28, "No space left on device")
        return original(tensors, path)

    monkeypatch.setattr(ckpt_mod, "save_file", flaky)
    raw = _raw(cache_dir, tmp_path / "run", tokens=256 * 25)
    result = train(load_run_config(raw=raw))
    ckpts = tmp_path / "run" / "checkpoints"
    assert not list(ckpts.glob(".tmp-*")), "a failed write left a temporary folder"
    assert (ckpts / "step_000000010").is_dir() and not (ckpts / "step_000000020").exists()
    assert (ckpts / "latest").read_text() == "step_000000025"
    assert result.steps == 25


def test_resume_refuses_a_different_run(cache_dir, tmp_path):
    train(load_run_config(raw=_raw(cache_dir, tmp_path / "run", tokens=256 * 10)))
    raw = _raw(cache_dir, tmp_path / "run", tokens=256 * 10)
    raw["sae"]["k"] = 5
    with pytest.raises(TrainingError, match="holds a checkpoint of a different run"):
        train(load_run_config(raw=raw))
