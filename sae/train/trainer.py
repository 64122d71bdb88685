"""The training loop: a few named steps per batch, for one or several SAEs sharing one stream.

Per run:
  1. build the source and the SAEs; initialise b_dec at the geometric median of a sample
     (Weiszfeld iterations) and W_enc = W_dec^T, or restore the latest checkpoint;
  2. for each batch: drop non-finite rows (or stop), then per SAE: forward (with the AuxK
     selection among latents dead for `dead_tokens` tokens), loss, backward, decoder-gradient
     projection, Adam step, decoder renormalisation, firing bookkeeping;
  3. every `log_every` steps: metrics to the sinks; every `checkpoint_every` steps: a checkpoint;
  4. at the end: each SAE saved as a folder SAELens can read, held-out evals, report.html.

Data parallel runs (`torchrun`): each rank takes every world-th batch, gradients and firing
counts are all-reduced, and only rank 0 logs and writes files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sae_kernels
import torch

from ..config import SAEConfig, to_dict
from ..model import SparseAutoencoder
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .losses import LossParts, compute_loss
from .run_config import RunConfig, resolve_sae_config
from .schedule import lr_at, penalty_at
from .sinks import make_sinks
from .source import make_source

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training had to stop; the message says why and what was kept."""


@dataclass
class Member:
    """One SAE being trained, with its optimiser and bookkeeping."""

    name: str
    hook: str
    sae: SparseAutoencoder
    optim: torch.optim.Optimizer
    since_fired_F: torch.Tensor
    """Tokens since each latent last fired (int64)."""
    last: LossParts | None = None
    l0_sum: torch.Tensor | None = None

    @property
    def param_names(self) -> list[str]:
        return [n for n, _ in self.sae.named_parameters()]

    def ckpt_entry(self) -> dict[str, Any]:
        return {"module": self.sae, "optim": self.optim, "param_names": self.param_names,
                "extra": {"since_fired_F": self.since_fired_F}}


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    steps: int
    tokens: int
    seconds: float
    saes: dict[str, Path] = field(default_factory=dict)
    evals: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped_rows: int = 0
    report: Path | None = None

    def summary(self) -> dict[str, Any]:
        one = next(iter(self.evals.values()), {})
        out = {"run": str(self.run_dir), "steps": self.steps, "tokens": self.tokens,
               "seconds": round(self.seconds, 2), "tokens_per_s": round(self.tokens / max(self.seconds, 1e-9), 1),
               "skipped_rows": self.skipped_rows, "saes": {k: str(v) for k, v in self.saes.items()},
               "report": str(self.report) if self.report else None}
        if len(self.evals) == 1:
            out.update(one)
        else:
            out["evals"] = self.evals
        return out


def _device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(name)


def init_distributed() -> None:
    """Join the process group that `torchrun` describes (NCCL on GPUs, Gloo on CPUs), once."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not torch.distributed.is_available():
        return
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend)


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def geometric_median(points_ND: torch.Tensor, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances."""
    points_ND = points_ND.double()
    median_D = points_ND.mean(0)
    for _ in range(iters):
        dist_N = (points_ND - median_D).norm(dim=1).clamp_min(1e-8)
        w_N = 1.0 / dist_N
        new_D = (w_N[:, None] * points_ND).sum(0) / w_N.sum()
        if (new_D - median_D).norm() <= tol * median_D.norm().clamp_min(1e-8):
            median_D = new_D
            break
        median_D = new_D
    return median_D.float()


class Trainer:
    """Trains the SAEs of a RunConfig (see the module docstring)."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.tc = cfg.train
        self.rank, self.world = _dist()
        self.device = _device(self.tc.device)
        self.run_dir = Path(self.tc.out)
        self.ckpt_dir = self.run_dir / "checkpoints"
        hooks = self._hooks()
        self.total_steps = self.tc.tokens // (self.tc.batch_size * self.world)
        self.source = make_source(cfg.data, hooks, self.tc.batch_size, self.tc.seed, self.tc.tokens,
                                  self.tc.shuffle_buffer, pin_memory=self.device.type == "cuda")
        model_name = self._model_name()
        self.sae_cfgs = [resolve_sae_config(s, hooks[0], self.source.d_in, model_name) for s in cfg.saes]
        self.members = [self._member(i, c) for i, c in enumerate(self.sae_cfgs)]
        if len({m.name for m in self.members}) != len(self.members):
            raise TrainingError("Two SAEs have the same name; give each a distinct `name`.")
        self.step = 0
        self.skipped_rows = 0

    # -- setup -----------------------------------------------------------------------------------

    def _hooks(self) -> list[str]:
        if self.cfg.data.cache:
            from ..activations import open_cache

            cache_hooks = open_cache(self.cfg.data.cache, verify=False).hooks
        else:
            cache_hooks = list(self.cfg.data.hooks)
            if not cache_hooks:
                raise TrainingError("data.hooks must name at least one hook when streaming from the model.")
        wanted = [s.fields.get("hook_name") or cache_hooks[0] for s in self.cfg.saes]
        for hook in wanted:
            if hook not in cache_hooks:
                raise TrainingError(f"An SAE asks for hook {hook!r}, but the data has {', '.join(cache_hooks)}.")
        return list(dict.fromkeys(wanted))

    def _model_name(self) -> str:
        if self.cfg.data.cache:
            return str(self.source.cache.manifest.get("model", ""))
        return self.cfg.data.model

    def _member(self, i: int, cfg: SAEConfig) -> Member:
        sae = SparseAutoencoder(cfg, device=self.device, seed=self.tc.seed + i)
        fused = self.device.type in ("cuda", "cpu")
        kw = {"lr": self.tc.lr, "betas": self.tc.adam_betas, "fused": fused}
        if self.tc.normalize_decoder:
            # Projection, Adam and renormalisation of the decoder rows in one pass.
            optim = sae_kernels.UnitRowAdam(sae.parameters(), unit_rows=sae.W_dec, **kw)
        else:
            optim = torch.optim.Adam(sae.parameters(), **kw)
        same_hook = sum(c.hook_name == cfg.hook_name for c in self.sae_cfgs)
        name = self.cfg.saes[i].name or (cfg.hook_name if same_hook == 1 else
                                         f"{cfg.hook_name}.{cfg.activation}.k{cfg.k}.d{cfg.d_sae}")
        since = torch.zeros(cfg.d_sae, dtype=torch.int64, device=self.device)
        return Member(name=name, hook=cfg.hook_name, sae=sae, optim=optim, since_fired_F=since)

    @torch.no_grad()
    def _initialise(self) -> None:
        sample = self.source.sample(8192)
        for m in self.members:
            x_ND = sample[m.hook].to(self.device, torch.float32)
            x_ND = x_ND[torch.isfinite(x_ND).all(-1)]
            if m.sae.cfg.normalize_input == "expected_norm":
                m.sae.input_scale.fill_(math.sqrt(m.sae.d_in) / x_ND.norm(dim=1).mean().item())
            x_ND = x_ND * m.sae.input_scale
            if self.tc.init_b_dec == "geometric_median":
                m.sae.b_dec.copy_(geometric_median(x_ND))
            elif self.tc.init_b_dec == "mean":
                m.sae.b_dec.copy_(x_ND.mean(0))

    def _write_config(self) -> None:
        resolved = {"run": self.cfg.raw, "saes": {m.name: to_dict(m.sae.cfg) for m in self.members}}
        path = self.run_dir / "config.json"
        if path.is_file() and latest_checkpoint(self.ckpt_dir):
            previous = json.loads(path.read_text())
            if previous.get("saes") != resolved["saes"] or _train_key(previous) != _train_key(resolved):
                raise TrainingError(
                    f"{self.run_dir} holds a checkpoint of a different run (other SAE or training "
                    f"settings). Use another train.out, or delete the folder to start over."
                )
        path.write_text(json.dumps(resolved, indent=1))

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_config()
        resumed = self._maybe_resume()
        if not resumed:
            self._initialise()
        sinks = make_sinks(self.run_dir, self.tc.sinks, self.cfg.raw, self.step if resumed else 0) \
            if self.rank == 0 else None
        batches = self.source.batches(skip=self.step * self.world + self.rank)
        bar = self._progress()
        t0, tokens_at_t0 = time.perf_counter(), self.step * self.tc.batch_size * self.world
        try:
            while self.step < self.total_steps:
                batch = next(batches)
                for _ in range(self.world - 1):  # other ranks' batches
                    next(batches)
                self._train_step(batch)
                self.step += 1
                self._after_step(sinks, bar, t0, tokens_at_t0)
        finally:
            bar.close()
            if sinks:
                sinks.close()
        seconds = time.perf_counter() - t0
        return self._finish(seconds)

    def _train_step(self, batch: dict[str, torch.Tensor]) -> None:
        for m in self.members:
            x_BD = batch[m.hook]
            if x_BD.device.type == "cpu":  # check on the host, before the copy: no device sync
                x_BD = self._clean(x_BD).to(self.device, torch.float32, non_blocking=True)
            else:
                x_BD = self._clean(x_BD.to(self.device, torch.float32))
            self._step_member(m, x_BD)

    def _clean(self, x_BD: torch.Tensor) -> torch.Tensor:
        # Any NaN or inf in a row makes its sum non-finite: one cheap reduction clears almost
        # every batch; the exact per-element check runs only when it fails.
        if bool(torch.isfinite(x_BD.sum(-1, dtype=torch.float32)).all()):
            return x_BD
        finite_B = torch.isfinite(x_BD).all(-1)
        if bool(finite_B.all()):
            return x_BD  # finite rows whose sums overflowed
        bad = int((~finite_B).sum())
        if self.tc.nonfinite == "stop":
            raise TrainingError(
                f"Step {self.step}: {bad} activation rows hold NaN or inf. Set train.nonfinite=skip to "
                f"drop such rows (they are counted), or fix the activations."
            )
        self.skipped_rows += bad
        return x_BD[finite_B]

    def _step_member(self, m: Member, x_BD: torch.Tensor) -> None:
        tc, cfg = self.tc, m.sae.cfg
        lr = lr_at(self.step, self.total_steps, tc.lr, tc.warmup_steps, tc.decay_start)
        for group in m.optim.param_groups:
            group["lr"] = lr
        topk_family = cfg.activation in ("topk", "batchtopk")
        dead_F = m.since_fired_F >= tc.dead_tokens if topk_family and tc.aux_k > 0 else None
        aux_active = None
        if dead_F is not None:
            if self.device.type == "cpu":
                if not bool(dead_F.any()):
                    dead_F = None  # no dead latents: skip the second selection and the AuxK term
            else:
                # On a GPU a host sync per step stalls the queue; the selection over an all-False
                # mask yields zero values (no gradient) and the term is switched off on device.
                aux_active = dead_F.any().to(x_BD.dtype)
        out = m.sae(x_BD, dead_F, tc.aux_k if dead_F is not None else 0, getattr(torch, tc.encoder_dtype))
        coef = penalty_at(self.step, tc.sparsity_coef, tc.sparsity_warmup_steps)
        parts = compute_loss(m.sae, x_BD, out, tc.aux_coef, coef, aux_active)
        parts.total.backward()
        self._all_reduce_grads(m)
        m.optim.step()  # with normalize_decoder, UnitRowAdam also keeps the decoder rows unit-norm
        m.optim.zero_grad(set_to_none=True)
        self._track_firing(m, out, x_BD.shape[0])
        m.last = parts
        m.l0_sum = out.l0_B.float().mean().detach()

    def _all_reduce_grads(self, m: Member) -> None:
        if self.world == 1:
            return
        for p in m.sae.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(self.world)

    @torch.no_grad()
    def _track_firing(self, m: Member, out: Any, n_rows: int) -> None:
        if out.idx_BK is not None:
            fired_F = torch.zeros_like(m.since_fired_F)
            fired_F.index_add_(0, out.idx_BK.reshape(-1), (out.vals_BK > 0).reshape(-1).long())
            if m.sae.cfg.activation == "batchtopk":
                # Running estimate of the smallest kept activation: the inference threshold.
                # Masked with where/min, not boolean indexing, so a GPU never syncs here.
                low = torch.where(out.vals_BK > 0, out.vals_BK, torch.inf).min().to(m.sae.threshold.dtype)
                th = m.sae.threshold
                new = torch.where(th > 0, 0.99 * th + 0.01 * low, low)
                m.sae.threshold.copy_(torch.where(torch.isfinite(low), new, th))
        else:
            fired_F = (out.latents_BF > 0).sum(0)
        if self.world > 1:
            torch.distributed.all_reduce(fired_F)
        m.since_fired_F.add_(n_rows * self.world)
        m.since_fired_F.masked_fill_(fired_F > 0, 0)

    def _after_step(self, sinks: Any, bar: Any, t0: float, tokens_at_t0: int) -> None:
        tc = self.tc
        tokens = self.step * tc.batch_size * self.world
        last = self.step == self.total_steps
        if self.step % tc.log_every == 0 or last:
            metrics = self._metrics(tokens, (tokens - tokens_at_t0) / max(time.perf_counter() - t0, 1e-9))
            if sinks:
                sinks.log(self.step, metrics)
            bar.set_postfix_str(self._postfix(metrics), refresh=False)
        bar.update(tc.batch_size * self.world)
        due = tc.checkpoint_every and self.step % tc.checkpoint_every == 0
        if (due or last) and self.rank == 0:
            self._check_finite()
            self._checkpoint()

    def _metrics(self, tokens: int, tokens_per_s: float) -> dict[str, Any]:
        self._check_finite()
        out: dict[str, Any] = {"tokens": tokens, "tokens_per_s": round(tokens_per_s, 1),
                               "skipped_rows": self.skipped_rows}
        for m in self.members:
            prefix = "" if len(self.members) == 1 else f"{m.name}/"
            p = m.last
            out.update({
                f"{prefix}loss": p.total.item(), f"{prefix}mse": p.mse.item(), f"{prefix}fvu": p.fvu.item(),
                f"{prefix}aux": p.aux.item(), f"{prefix}sparsity": p.sparsity.item(),
                f"{prefix}l0": m.l0_sum.item(),
                f"{prefix}dead_frac": (m.since_fired_F >= self.tc.dead_tokens).float().mean().item(),
                f"{prefix}lr": m.optim.param_groups[0]["lr"],
            })
        return out

    def _postfix(self, metrics: dict[str, Any]) -> str:
        m = self.members[0]
        prefix = "" if len(self.members) == 1 else f"{m.name}/"
        return (f"loss={metrics[prefix + 'loss']:.4g} L0={metrics[prefix + 'l0']:.1f} "
                f"FVU={metrics[prefix + 'fvu']:.3f} dead={100 * metrics[prefix + 'dead_frac']:.1f}% "
                f"{metrics['tokens_per_s']:.0f} tok/s")

    def _check_finite(self) -> None:
        for m in self.members:
            if m.last is not None and not bool(torch.isfinite(m.last.total)):
                good = latest_checkpoint(self.ckpt_dir)
                kept = f"The last good checkpoint is {good}." if good else "No checkpoint was written yet."
                raise TrainingError(
                    f"The loss of {m.name} became {m.last.total.item()} at step {self.step}; training "
                    f"stopped. {kept} Lower train.lr or check the activations."
                )

    def _checkpoint(self) -> None:
        state = {"tokens": self.step * self.tc.batch_size * self.world, "skipped_rows": self.skipped_rows}
        members = {m.name.replace("/", "_"): m.ckpt_entry() for m in self.members}
        try:
            save_checkpoint(self.ckpt_dir, self.step, state, members)
        except OSError as err:
            previous = latest_checkpoint(self.ckpt_dir)
            log.warning("Checkpoint at step %d failed (%s); the previous one (%s) is intact. "
                        "Training goes on.", self.step, err, previous)

    def _maybe_resume(self) -> bool:
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:
            return False
        members = {m.name.replace("/", "_"): m.ckpt_entry() for m in self.members}
        state = load_checkpoint(path, members)
        for m in self.members:
            m.since_fired_F = members[m.name.replace("/", "_")]["extra"]["since_fired_F"].to(self.device)
        self.step = int(state["step"])
        self.skipped_rows = int(state.get("skipped_rows", 0))
        log.info("Resuming from %s (step %d)", path, self.step)
        return True

    def _progress(self) -> Any:
        from tqdm.auto import tqdm

        total = self.total_steps * self.tc.batch_size * self.world
        return tqdm(total=total, initial=self.step * self.tc.batch_size * self.world, unit="tok",
                    unit_scale=True, desc="train", disable=not self.tc.progress or self.rank != 0)

    # -- the end ---------------------------------------------------------------------------------

    def _calibrate_thresholds(self) -> None:
        """BatchTopK: replace the running threshold estimate by an exact one on 16k training rows."""
        members = [m for m in self.members if m.sae.cfg.activation == "batchtopk"]
        if not members:
            return
        sample = self.source.sample(16_384)
        for m in members:
            x_ND = sample[m.hook].to(self.device, torch.float32)
            m.sae.calibrate_threshold_(x_ND[torch.isfinite(x_ND).all(-1)])

    def _finish(self, seconds: float) -> TrainResult:
        result = TrainResult(run_dir=self.run_dir, steps=self.step,
                             tokens=self.step * self.tc.batch_size * self.world, seconds=seconds,
                             skipped_rows=self.skipped_rows)
        if self.rank != 0:
            return result
        from ..evals import sparsity_metrics
        from ..formats import save

        holdout = self.source.holdout(max_rows=65_536)
        self._calibrate_thresholds()
        for m in self.members:
            folder = self.run_dir / "saes" / m.name.replace("/", "_")
            evals: dict[str, Any] = {}
            if holdout:
                stats = sparsity_metrics(m.sae, holdout[m.hook])
                evals = stats.summary()
                stats.save_density(self.run_dir / f"density.{m.name.replace('/', '_')}.json")
            save(m.sae, folder, extra={"training": {"steps": self.step, "tokens": result.tokens,
                                                    "evals": evals}})
            result.saes[m.name], result.evals[m.name] = folder, evals
        from ..dashboard.report import write_report

        result.report = self.run_dir / "report.html"
        (self.run_dir / "result.json").write_text(json.dumps(result.summary(), indent=1))
        write_report(self.run_dir)
        return result


def _train_key(resolved: dict[str, Any]) -> Any:
    train = dict((resolved.get("run") or {}).get("train") or {})
    for volatile in ("progress", "log_every", "checkpoint_every", "sinks", "device"):
        train.pop(volatile, None)
    return train, (resolved.get("run") or {}).get("data")


def train(cfg: RunConfig) -> TrainResult:
    """Train every SAE of `cfg`; resumes from the run folder's latest checkpoint when there is one."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    init_distributed()
    return Trainer(cfg).run()
