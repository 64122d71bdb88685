"""Causal checks of behaviour latents: steering, ablation, capability cost, greedy removal.

All interventions run through `SplicedModel` with the error term kept, so an edit moves the
residual stream by exactly the decoder rows of the latent change and nothing else.

1. Steering (dose-response): at every non-BOS position, add s * u * W_dec[j] (mode `add`, i.e.
   add s * u to latent j) or set latent j to s * u (mode `clamp`), where u is the latent's
   typical activation (its mean on the behaviour side of the train split where it fires) so
   that s = 1 is one ordinary firing. The behaviour value (mean metric) is measured at each s.
2. Ablation: latents set to 0 at every non-BOS position (zero ablation; Marks et al. 2024).
3. Capability cost: next-token cross-entropy on ordinary text (WikiText-2) under the same edit,
   minus the spliced model's unedited CE (equal to the clean model's, error term kept).
4. Removal (greedy): from candidate latents (the top ones by attribution and by AUROC), add
   at each step the latent whose ablation, together with those chosen so far, gives the largest
   behaviour drop per nat of extra CE (the extra CE floored at `cost_floor` so that free
   ablations compete on their drop alone); stop when the chosen one lowers the behaviour by
   less than `min_drop`. The
   trade-off curve is (CE cost, behaviour) after each step, on the selection items and on the
   held-out items.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from ...activations import pack_blocks
from ...activations.tokens import TokenBlocks
from ..splice import LatentEdit, SplicedModel, add_to_latent, set_latents
from .metrics import EncodedSet, LogitsFn, metric_values

MODES = ("add", "clamp")


@dataclass
class CausalConfig:
    """Settings of the causal checks."""

    scales: tuple[float, ...] = (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0)
    """Steering strengths, in units of the latent's typical activation."""
    mode: str = "add"
    """add: add s*u to the latent; clamp: set it to s*u (see the module docstring)."""
    n_steer: int = 3
    """Top latents (of the ranking) whose steering curve is measured."""
    ce_tokens: int = 2048
    """Tokens of ordinary text for the CE cost (0 skips it)."""
    ce_context: int = 128
    """Tokens per CE block."""
    removal_candidates: int = 6
    """Latents the greedy removal chooses from."""
    removal_steps: int = 3
    """At most this many latents are removed."""
    cost_floor: float = 0.01
    """Extra CE (nats) below this counts as this in the drop-per-cost ratio."""
    min_drop: float = 0.01
    """A step must lower the behaviour by at least this much (metric units) or removal stops."""
    batch: int = 8
    """Sequences per forward pass."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"CausalConfig.mode must be one of {', '.join(MODES)}, got {self.mode!r}.")
        if not self.scales:
            raise ValueError("CausalConfig.scales must hold at least one strength.")
        for name in ("n_steer", "ce_tokens", "removal_candidates", "removal_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"CausalConfig.{name} must be >= 0, got {getattr(self, name)}.")
        if self.cost_floor <= 0 or self.min_drop < 0:
            raise ValueError(f"CausalConfig.cost_floor must be > 0 and min_drop >= 0, got {self.cost_floor}, "
                             f"{self.min_drop}.")
        if self.ce_context < 2 or self.batch < 1:
            raise ValueError("CausalConfig.ce_context must be >= 2 and batch >= 1.")


def edited_logits(spliced: SplicedModel, hook: str, edit: LatentEdit | None = None) -> LogitsFn:
    """A LogitsFn running the spliced model with `edit` at `hook` (none: the unedited model)."""
    def fn(tokens_NT: torch.Tensor, mask_NT: torch.Tensor) -> torch.Tensor:
        return spliced.run(tokens_NT, edits={hook: edit} if edit else None, mask_NT=mask_NT).logits_NTV
    return fn


def steer_edit(latent: int, value: float, mode: str) -> LatentEdit:
    """Step 1's edit: add `value` to the latent, or clamp it to `value`."""
    return add_to_latent(latent, value) if mode == "add" else set_latents([latent], value)


# -- capability cost ---------------------------------------------------------------------------


def ce_blocks(source: str, tokenizer, n_tokens: int, context: int = 128) -> TokenBlocks | None:
    """Token blocks of ordinary text for the CE cost (None when n_tokens is 0)."""
    return pack_blocks(source, tokenizer, context, n_tokens) if n_tokens else None


@torch.no_grad()
def ce_loss(logits_fn: LogitsFn, blocks: TokenBlocks | None, batch: int = 8) -> float:
    """Mean next-token CE (nats) over the blocks' text positions (NaN without blocks)."""
    if blocks is None:
        return float("nan")
    total, count = 0.0, 0
    for b0 in range(0, blocks.tokens_NT.shape[0], batch):
        tokens_NT, keep_NT = blocks.tokens_NT[b0:b0 + batch], blocks.keep_NT[b0:b0 + batch]
        logits_NTV = logits_fn(tokens_NT, keep_NT)
        logp = logits_NTV[:, :-1].float().log_softmax(-1)
        tgt_NT = keep_NT[:, 1:].to(logp.device)
        nll = -logp.gather(-1, tokens_NT[:, 1:, None].to(logp.device)).squeeze(-1)
        total += float(nll[tgt_NT].sum())
        count += int(tgt_NT.sum())
    return total / max(count, 1)


# -- steering ----------------------------------------------------------------------------------


@dataclass
class SteeringCurve:
    """Behaviour (and CE cost) against steering strength for one latent."""

    latent: int
    unit: float
    """The latent's typical activation u; strength s adds / clamps s * u."""
    mode: str
    scales: list[float]
    behaviour: list[float]
    """Mean metric over the behaviour items at each strength."""
    ce_delta: list[float]
    """CE on ordinary text minus the unedited CE at each strength (NaN when not measured)."""

    def to_dict(self) -> dict:
        return asdict(self)

    def is_monotonic(self, tol: float = 0.0) -> bool:
        """True when behaviour never decreases (or never increases) by more than tol as s grows."""
        b = self.behaviour
        steps = [b2 - b1 for b1, b2 in zip(b, b[1:], strict=False)]
        return all(s >= -tol for s in steps) or all(s <= tol for s in steps)


def typical_activation(fire_mean_F: torch.Tensor, latent: int) -> float:
    """The latent's mean per-token activation where it fires on the behaviour side (from
    `SideFeatures.fire_mean_F`); 1.0 when it never fires there."""
    value = float(fire_mean_F[latent])
    return value if value > 0 else 1.0


def steering_curve(spliced: SplicedModel, hook: str, enc: EncodedSet, latent: int, unit: float,
                   cfg: CausalConfig, blocks: TokenBlocks | None = None, base_ce: float | None = None,
                   idx: list[int] | None = None) -> SteeringCurve:
    """Step 1 of the module docstring, on the behaviour items of `enc` (or `idx`)."""
    idx = enc.behaviour_idx() if idx is None else idx
    scales = sorted(cfg.scales)
    if base_ce is None and blocks is not None:
        base_ce = ce_loss(edited_logits(spliced, hook), blocks, cfg.batch)
    behaviour, ce_delta = [], []
    for s in scales:
        edit = None if s == 0 and cfg.mode == "add" else steer_edit(latent, s * unit, cfg.mode)
        fn = edited_logits(spliced, hook, edit)
        behaviour.append(float(metric_values(fn, enc, idx, cfg.batch).double().mean()))
        ce_delta.append(ce_loss(fn, blocks, cfg.batch) - base_ce if blocks is not None else float("nan"))
    return SteeringCurve(latent, unit, cfg.mode, scales, behaviour, ce_delta)


# -- ablation and removal ----------------------------------------------------------------------


@dataclass
class AblationPoint:
    """Behaviour and CE cost with a set of latents zero-ablated."""

    latents: list[int]
    behaviour: float
    """Mean metric on the selection items."""
    ce_delta: float
    behaviour_test: float | None = None
    """Mean metric on the held-out items."""


@dataclass
class RemovalResult:
    """The greedy removal of step 4 and its trade-off curve."""

    base_behaviour: float
    base_behaviour_test: float | None
    base_ce: float
    single: list[AblationPoint]
    """Each candidate ablated alone (the first greedy step)."""
    curve: list[AblationPoint] = field(default_factory=list)
    """After 0, 1, 2, ... chosen latents."""

    @property
    def chosen(self) -> list[int]:
        return self.curve[-1].latents if self.curve else []

    def to_dict(self) -> dict:
        return {"base_behaviour": self.base_behaviour, "base_behaviour_test": self.base_behaviour_test,
                "base_ce": self.base_ce, "chosen": self.chosen,
                "single": [asdict(p) for p in self.single], "curve": [asdict(p) for p in self.curve]}


def _ablated(spliced: SplicedModel, hook: str, enc: EncodedSet, latents: list[int], idx: list[int],
             blocks: TokenBlocks | None, base_ce: float, batch: int) -> AblationPoint:
    fn = edited_logits(spliced, hook, set_latents(latents, 0.0) if latents else None)
    value = float(metric_values(fn, enc, idx, batch).double().mean())
    ce = ce_loss(fn, blocks, batch) - base_ce if blocks is not None else 0.0
    return AblationPoint(list(latents), value, ce)


def greedy_removal(spliced: SplicedModel, hook: str, enc: EncodedSet, candidates: list[int],
                   cfg: CausalConfig, blocks: TokenBlocks | None, select_idx: list[int],
                   test: EncodedSet | None = None) -> RemovalResult:
    """Step 4 of the module docstring. `select_idx` are the items of `enc` the choice is made on;
    `test` (optional) is re-measured along the curve."""
    base_ce = ce_loss(edited_logits(spliced, hook), blocks, cfg.batch) if blocks is not None else float("nan")
    start = _ablated(spliced, hook, enc, [], select_idx, None, 0.0, cfg.batch)
    start.ce_delta = 0.0
    result = RemovalResult(start.behaviour, None, base_ce, [], [start])
    current, remaining = start, list(candidates)
    for step in range(cfg.removal_steps):
        trials = [_ablated(spliced, hook, enc, current.latents + [c], select_idx, blocks, base_ce, cfg.batch)
                  for c in remaining]
        if step == 0:
            result.single = trials
        gains = [(current.behaviour - t.behaviour) / max(t.ce_delta - current.ce_delta, cfg.cost_floor)
                 for t in trials]
        best = max(range(len(trials)), key=lambda i: gains[i]) if trials else -1
        if best < 0 or current.behaviour - trials[best].behaviour < cfg.min_drop:
            break
        current = trials[best]
        remaining.pop(best)
        result.curve.append(current)
    if test is not None:
        for point in result.curve:
            fn = edited_logits(spliced, hook, set_latents(point.latents, 0.0) if point.latents else None)
            point.behaviour_test = float(metric_values(fn, test, test.behaviour_idx(), cfg.batch).double().mean())
        result.base_behaviour_test = result.curve[0].behaviour_test
    return result


def removal_candidates(attribution_F: torch.Tensor | None, order: torch.Tensor, n: int) -> list[int]:
    """Up to n latents alternating between the top by attribution and the top of the ranking."""
    by_attr = attribution_F.argsort(descending=True).tolist() if attribution_F is not None else []
    by_rank = order.tolist()
    out: list[int] = []
    for a, r in zip(by_attr or by_rank, by_rank, strict=False):
        for lat in (a, r):
            if lat not in out and len(out) < n:
                out.append(lat)
        if len(out) >= n:
            break
    return out
