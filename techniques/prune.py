"""Weight pruning: magnitude (Zhu & Gupta), layer-wise OBS (Dong et al.), and by cumulative LCA.

All three share one machinery (``_Pruner``):

- **Masks on stable names.** A boolean mask per pruned weight, keyed by its name in
  ``model.named_parameters()``. ``torch.nn.utils.prune`` is not used: it renames ``weight`` to
  ``weight_orig`` and LCA's per-parameter names would break.
- **Pruned weights stay exactly 0.** ``before_step`` masks the gradient; ``after_step`` zeroes the
  weight and every optimizer-state tensor of the weight's shape (``momentum_buffer``,
  ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``, …) at pruned positions. A masked gradient alone
  is not enough: momentum, Adam's moments and weight decay would still move the weight.
- **A prune event is an intervention.** ``wants_intervention`` is True at the scheduled steps;
  ``intervene`` zeroes the chosen weights (L-OBS also moves the survivors to compensate) inside
  ``tracker.intervention``, so the loss change of the event is allocated as its own LCA segment:
  the cost of pruning, per layer and per weight (removed weights vs compensating survivors),
  recorded by ``after_intervention`` from the measured segment.
- **Before each event** the candidates' cumulative LCA (``ctx.cumulative_lca``) is recorded:
  did the method remove helpers (cumulative LCA < 0) or hurters, compared with the survivors?

Schedules (``schedule`` option): ``oneshot`` prunes to ``sparsity`` at step ``start``;
``gradual`` follows Zhu & Gupta (2017): s_t = s_f + (s_i − s_f)(1 − (t − t_0)/span)³ at
t = t_0, t_0 + every, …, and at t_0 + span, never un-pruning. Steps count optimizer steps
completed, so an event at step t happens after t steps, before step t + 1's update.
Counting rule: a layer of n prunable weights has floor(s·n + 0.5) pruned weights after an event
with sparsity s (round half up); with ``scope = "global"`` the rule applies to the total over all
pruned layers.

Written under ``/techniques/<name>/`` (declared up front; see ``declare``):

- series ``sparsity`` (f8): fraction of the prunable weights that are pruned, after each segment;
- event table ``events``: one row per pruned layer per event, columns ``EVENT_COLUMNS``;
- event table ``event_totals``: one row per event, columns ``TOTAL_COLUMNS``;
- arrays ``pruned_at/<param name, '.' → ':'>`` (i4, the weight's shape, fill −1): the step at
  which each weight was pruned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from techniques import register

from . import lobs
from .base import Context, Declarations, MeasuredSegment, Option, Technique, TechniqueError

EVENT_COLUMNS = (
    "step",  # optimizer steps completed when the event happened
    "layer",  # index of the weight in model.named_parameters() order (= /layers/names)
    "removed",  # weights pruned in this layer by this event
    "pruned",  # weights pruned in this layer after the event (all events so far)
    "sparsity_after",  # pruned / prunable weights of the layer after the event
    "cum_lca_removed_mean",  # mean cumulative LCA, before the event, of the weights it removed
    "cum_lca_survivors_mean",  # the same for the layer's weights that stay alive
    "helped_removed",  # fraction of removed weights whose cumulative LCA was < 0 (helpers)
    "helped_survivors",  # the same for the survivors
    "cost",  # ΣA of the event's segment over the layer (weight and bias)
    "cost_removed",  # … over the removed weights
    "cost_compensated",  # … over the layer's other moved parameters (L-OBS survivors, bias)
)
TOTAL_COLUMNS = (
    "step",
    "segment",  # row of the event's segment in the run (steps/…, kind = intervention)
    "removed",  # weights pruned by this event, all layers
    "sparsity_after",  # global sparsity of the prunable weights after the event
    "loss_before",  # measurement-set loss before and after the event
    "loss_after",
    "cost",  # ΣA of the event's segment (≈ loss_after − loss_before)
    "cost_removed",  # part of it on the removed weights
    "cost_compensated",  # on the pruned layers' other moved parameters (L-OBS compensation)
    "cost_rest",  # on everything else (0 unless another technique changes what is measured)
    "error",  # ΔL − ΣA of the segment: what the integrator failed to allocate
    "cum_lca_removed_mean",  # mean cumulative LCA of the removed weights before the event
    "cum_lca_survivors_mean",  # the same for the surviving prunable weights
    "helper_removal_ratio",  # cum_lca_removed_mean / cum_lca_survivors_mean
)

_COMMON: dict[str, Option] = {
    "sparsity": Option(
        0.5, "fraction of the prunable weights pruned at the end (s_f)", float, None, 0.0, 0.99
    ),
    "start": Option(40, "optimizer step of the (first) prune event (t_0)", int, None, 0),
    "schedule": Option(
        "oneshot",
        "oneshot: prune once at start; gradual: Zhu & Gupta's cubic schedule",
        str,
        ("oneshot", "gradual"),
    ),
    "initial_sparsity": Option(
        0.0, "gradual: sparsity of the first event (s_i)", float, None, 0.0, 0.99
    ),
    "span": Option(40, "gradual: steps from the first to the last event", int, None, 1),
    "every": Option(10, "gradual: steps between events (masks recomputed)", int, None, 1),
    "layers": Option(
        (),
        "prune only weights of these modules (name prefixes, '+'-separated); empty: all "
        "Linear and Conv layers",
        list,
    ),
    "skip_last": Option(False, "leave the last Linear/Conv layer (the classifier) dense", bool),
    "recalibrate_bn": Option(
        True, "re-estimate BatchNorm running statistics after each event", bool
    ),
}
_SCOPE = Option(
    "layer",
    "layer: each layer reaches the sparsity; global: the total over pruned layers does",
    str,
    ("layer", "global"),
)
_BN_SAMPLES = 1024  # examples used to re-estimate BatchNorm statistics


def array_name(param: str) -> str:
    """``pruned_at/<name>``: HDF5 path of a weight's prune-step array ('.' becomes ':')."""
    return "pruned_at/" + param.replace(".", ":")


def pruned_count(n: int, sparsity: float) -> int:
    """Weights pruned out of n at ``sparsity``: round half up, floor(s·n + 0.5)."""
    return int(math.floor(sparsity * n + 0.5))


def cubic_sparsity(step: int, s_i: float, s_f: float, t0: int, span: int) -> float:
    """Zhu & Gupta's s_t = s_f + (s_i − s_f)(1 − (t − t0)/span)³, clamped to [t0, t0 + span]."""
    frac = min(1.0, max(0.0, (step - t0) / span))
    return s_f + (s_i - s_f) * (1.0 - frac) ** 3


@dataclass
class _Layer:
    """One prunable weight: its name, index in parameter order, module and bias name."""

    name: str
    index: int
    module: nn.Module
    bias: str | None
    numel: int


@dataclass
class _Pending:
    """An event whose LCA segment is not computed yet (costs are filled in the next hook)."""

    step: int
    segment: int | None
    removed: dict[str, torch.Tensor]
    stats: dict[str, tuple[float, float, float, float, int, int, float, float]]


class _Pruner(Technique):
    """Shared pruning machinery: layer selection, schedules, masks, records, summary.

    Subclasses define ``_scores`` (lower score = pruned first) or override ``_prune``.
    """

    options: ClassVar[dict[str, Option]] = _COMMON
    scoped: ClassVar[bool] = True

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        o = self.opts
        if o["schedule"] == "gradual" and o["initial_sparsity"] > o["sparsity"]:
            raise TechniqueError(
                f"Option 'initial_sparsity' of technique {self.name!r} is "
                f"{o['initial_sparsity']}; it must not exceed sparsity {o['sparsity']}."
            )
        self.layers: list[_Layer] = []
        self.masks: dict[str, torch.Tensor] = {}  # True = alive
        self.pruned_at: dict[str, np.ndarray] = {}
        self.event_steps: list[int] = []
        self._ctx: Context | None = None
        self._pending: _Pending | None = None
        self._log: list[dict[str, float]] = []  # one dict per event (TOTAL_COLUMNS)
        self._pooled = [0.0, 0, 0.0, 0]  # Σ cum LCA removed, n removed, Σ survivors, n survivors
        self._sparsity = 0.0

    # -- layers and schedule -----------------------------------------------------------------
    def _select_layers(self, model: nn.Module) -> list[_Layer]:
        index = {n: i for i, (n, _) in enumerate(model.named_parameters())}
        found: list[_Layer] = []
        for mod_name, m in model.named_modules():
            if isinstance(m, nn.Linear | nn.modules.conv._ConvNd):
                name = f"{mod_name}.weight" if mod_name else "weight"
                bias = None
                if m.bias is not None:
                    bias = f"{mod_name}.bias" if mod_name else "bias"
                if name in index:
                    found.append(_Layer(name, index[name], m, bias, m.weight.numel()))
        found.sort(key=lambda layer: layer.index)
        if self.opts["skip_last"] and found:
            found = found[:-1]
        prefixes = [p.rstrip(".") for p in self.opts["layers"]]
        if prefixes:
            unmatched = [p for p in prefixes if not any(_matches(lay.name, p) for lay in found)]
            if unmatched:
                allowed = ", ".join(lay.name.rsplit(".", 1)[0] for lay in found) or "none"
                raise TechniqueError(
                    f"Option 'layers' of technique {self.name!r} names {unmatched[0]!r}, which "
                    f"matches no prunable Linear or Conv layer; choose from: {allowed}."
                )
            found = [lay for lay in found if any(_matches(lay.name, p) for p in prefixes)]
        if not found:
            raise TechniqueError(
                f"Technique {self.name!r} found no Linear or Conv weight to prune in this model; "
                "check the options 'layers' and 'skip_last'."
            )
        return found

    def _schedule(self, total_steps: int) -> list[int]:
        o = self.opts
        if o["schedule"] == "oneshot":
            steps = [o["start"]]
        else:
            steps = list(range(o["start"], o["start"] + o["span"] + 1, o["every"]))
            if steps[-1] != o["start"] + o["span"]:
                steps.append(o["start"] + o["span"])
        return [s for s in steps if s < total_steps]

    def target_sparsity(self, step: int) -> float | None:
        """The sparsity an event at ``step`` prunes to, or None when no event is scheduled."""
        o = self.opts
        if o["schedule"] == "oneshot":
            return o["sparsity"] if step == o["start"] else None
        t0, span, every = o["start"], o["span"], o["every"]
        if step < t0 or step > t0 + span or ((step - t0) % every and step != t0 + span):
            return None
        return cubic_sparsity(step, o["initial_sparsity"], o["sparsity"], t0, span)

    def _target_counts(self, sparsity: float) -> dict[str, int]:
        """Pruned-weight count per layer after an event at ``sparsity`` (never fewer than now)."""
        now = {lay.name: int((~self.masks[lay.name]).sum()) for lay in self.layers}
        if self.scoped and self.opts.get("scope") == "global":
            total = sum(lay.numel for lay in self.layers)
            extra = max(0, pruned_count(total, sparsity) - sum(now.values()))
            # "*": one total for all layers; the scores decide how it splits among them.
            return {"*": sum(now.values()) + extra}
        return {
            lay.name: max(now[lay.name], pruned_count(lay.numel, sparsity)) for lay in self.layers
        }

    def _needs_event(self, counts: dict[str, int]) -> bool:
        now = {lay.name: int((~self.masks[lay.name]).sum()) for lay in self.layers}
        if "*" in counts:
            return counts["*"] > sum(now.values())
        return any(counts[n] > now[n] for n in counts)

    # -- declarations and setup --------------------------------------------------------------
    def declare(self, ctx: Context) -> Declarations:
        layers = self.layers or self._select_layers(ctx.model)
        return Declarations(
            series={"sparsity": ("f8", ())},
            events={"events": EVENT_COLUMNS, "event_totals": TOTAL_COLUMNS},
            arrays={
                array_name(lay.name): ("i4", tuple(lay.module.weight.shape), -1.0) for lay in layers
            },
        )

    def setup(self, ctx: Context) -> None:
        self._ctx = ctx
        self.layers = self._select_layers(ctx.model)
        self.masks = {
            lay.name: torch.ones_like(lay.module.weight, dtype=torch.bool) for lay in self.layers
        }
        # The masks as 1/0 in the weight's dtype: multiplying is about twice as fast on CPU as
        # masked_fill, and these run on every step (gradient, weight, optimizer state).
        self._keep = {
            lay.name: self.masks[lay.name].to(lay.module.weight.dtype) for lay in self.layers
        }
        self.pruned_at = {
            lay.name: np.full(tuple(lay.module.weight.shape), -1, dtype=np.int32)
            for lay in self.layers
        }
        self.event_steps = self._schedule(ctx.total_steps)

    # -- hooks -------------------------------------------------------------------------------
    def wants_intervention(self, ctx: Context) -> bool:
        """True at a scheduled step when some layer is below its target count (no side effect)."""
        s = self.target_sparsity(ctx.step)
        return s is not None and bool(self.layers) and self._needs_event(self._target_counts(s))

    def intervene(self, ctx: Context, row: dict[str, object]) -> None:
        self._finish(ctx, None)  # an earlier event whose segment never came back
        s = self.target_sparsity(ctx.step)  # None: called off schedule (a notebook, a test)
        counts = self._target_counts(self.opts["sparsity"] if s is None else s)
        params = ctx.params()
        removed = self._prune(ctx, counts)  # moves the weights; returns newly pruned masks
        stats = self._helper_stats(ctx, removed)
        with torch.no_grad():
            for lay in self.layers:
                self.masks[lay.name] &= ~removed[lay.name]
                self._keep[lay.name] = self.masks[lay.name].to(params[lay.name].dtype)
                params[lay.name].masked_fill_(~self.masks[lay.name], 0.0)
                self.pruned_at[lay.name][removed[lay.name].cpu().numpy()] = ctx.step
                ctx.set_array(self, array_name(lay.name), self.pruned_at[lay.name])
        self._zero_state(ctx)
        self._sparsity = self._count_sparsity()
        segment = ctx.segments_measured if ctx.tracker is not None else None
        self._pending = _Pending(ctx.step, segment, removed, stats)
        row[self.path("sparsity")] = self.global_sparsity()
        if self.opts["recalibrate_bn"]:
            _recalibrate_bn(ctx)
        if ctx.tracker is None:  # no segment will measure the event: record it now, cost NaN
            self._finish(ctx, None)

    def after_intervention(self, ctx: Context, measured: MeasuredSegment) -> None:
        self._finish(ctx, measured)  # the event's segment exists now: record its cost

    def before_step(self, ctx: Context) -> None:
        for lay in self.layers:
            g = lay.module.weight.grad
            if g is not None:
                g.mul_(self._keep[lay.name])

    def after_step(self, ctx: Context, row: dict[str, object]) -> None:
        self._enforce(ctx)
        row[self.path("sparsity")] = self.global_sparsity()

    def summary(self) -> dict[str, Any]:
        if self._ctx is not None:
            self._finish(self._ctx, None)
        pruned = {lay.name: int((~self.masks[lay.name]).sum()) for lay in self.layers}
        costs = [e["cost"] for e in self._log]
        removed_mean = self._pooled[0] / self._pooled[1] if self._pooled[1] else math.nan
        surv_mean = self._pooled[2] / self._pooled[3] if self._pooled[3] else math.nan
        out: dict[str, Any] = {
            "sparsity": self.global_sparsity(),
            "sparsity_per_layer": {lay.name: pruned[lay.name] / lay.numel for lay in self.layers},
            "pruned": sum(pruned.values()),
            "prunable": sum(lay.numel for lay in self.layers),
            "events": len(self._log),
            "event_steps": [int(e["step"]) for e in self._log],
            "cost_total": math.fsum(costs) if costs else 0.0,
            "cost_removed": math.fsum(e["cost_removed"] for e in self._log),
            "cost_compensated": math.fsum(e["cost_compensated"] for e in self._log),
            "cost_per_event": costs,
            "cum_lca_removed_mean": removed_mean,
            "cum_lca_survivors_mean": surv_mean,
            "helper_removal_ratio": _ratio(removed_mean, surv_mean),
        }
        missed = [s for s in self.event_steps if s not in out["event_steps"]]
        if self._ctx is not None and not self.event_steps:
            out["note"] = (
                f"The schedule starts at step {self.opts['start']}, after the run's last step: "
                "nothing was pruned."
            )
        elif missed and self._ctx is not None and self._ctx.step > max(missed):
            out["note"] = f"No weight needed pruning at steps {missed}."
        return out

    # -- machinery ---------------------------------------------------------------------------
    def global_sparsity(self) -> float:
        """Fraction of the prunable weights that are pruned now (cached between events)."""
        return self._sparsity

    def _count_sparsity(self) -> float:
        total = sum(lay.numel for lay in self.layers)
        pruned = sum(int((~m).sum()) for m in self.masks.values())
        return pruned / total if total else 0.0

    def _enforce(self, ctx: Context) -> None:
        """Pruned weights and their optimizer state back to exactly 0."""
        with torch.no_grad():
            for lay in self.layers:
                lay.module.weight.mul_(self._keep[lay.name])
        self._zero_state(ctx)

    def _zero_state(self, ctx: Context) -> None:
        for lay in self.layers:
            w = lay.module.weight
            state = ctx.optimizer.state.get(w) if ctx.optimizer is not None else None
            if not state:
                continue
            for v in state.values():
                if torch.is_tensor(v) and v.shape == w.shape:
                    v.mul_(self._keep[lay.name].to(v.dtype))

    def _scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        """Per layer, a score per weight: the lowest scores are pruned first."""
        raise NotImplementedError

    def _prune(self, ctx: Context, counts: dict[str, int]) -> dict[str, torch.Tensor]:
        """Choose the weights to remove (scores, alive weights only); returns the new removals.

        The weights themselves are zeroed by ``intervene``; ties go to the lower flat index.
        """
        scores = self._scores(ctx)
        removed: dict[str, torch.Tensor] = {}
        if "*" in counts:
            alive = {n: self.masks[n] for n in scores}
            flat = torch.cat(
                [
                    scores[lay.name]
                    .flatten()
                    .double()
                    .masked_fill(~alive[lay.name].flatten(), math.inf)
                    for lay in self.layers
                ]
            )
            k = counts["*"] - sum(int((~m).sum()) for m in self.masks.values())
            chosen = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
            chosen[torch.sort(flat, stable=True).indices[: max(0, k)]] = True
            lo = 0
            for lay in self.layers:
                removed[lay.name] = chosen[lo : lo + lay.numel].view_as(self.masks[lay.name])
                lo += lay.numel
            return removed
        for lay in self.layers:
            mask = self.masks[lay.name]
            k = counts[lay.name] - int((~mask).sum())
            s = scores[lay.name].flatten().double().masked_fill(~mask.flatten(), math.inf)
            chosen = torch.zeros(s.shape, dtype=torch.bool, device=s.device)
            chosen[torch.sort(s, stable=True).indices[: max(0, k)]] = True
            removed[lay.name] = chosen.view_as(mask)
        return removed

    def _helper_stats(
        self, ctx: Context, removed: dict[str, torch.Tensor]
    ) -> dict[str, tuple[float, float, float, float, int, int, float, float]]:
        """Per layer: cumulative-LCA means and helper fractions of removed and surviving weights.

        Read before the event's own segment exists, so it is the weights' history up to now.
        """
        cumulative = ctx.cumulative_lca
        out = {}
        for lay in self.layers:
            rem = removed[lay.name]
            surv = self.masks[lay.name] & ~rem
            c = cumulative.get(lay.name)
            n_rem, n_surv = int(rem.sum()), int(surv.sum())
            if c is None:
                out[lay.name] = (
                    math.nan,
                    math.nan,
                    math.nan,
                    math.nan,
                    n_rem,
                    n_surv,
                    math.nan,
                    math.nan,
                )
                continue
            c = c.detach().to(rem.device, torch.float64)
            s_rem, s_surv = float(c[rem].sum()), float(c[surv].sum())
            out[lay.name] = (
                s_rem / n_rem if n_rem else math.nan,
                s_surv / n_surv if n_surv else math.nan,
                float((c[rem] < 0).double().mean()) if n_rem else math.nan,
                float((c[surv] < 0).double().mean()) if n_surv else math.nan,
                n_rem,
                n_surv,
                s_rem,
                s_surv,
            )
        return out

    def _finish(self, ctx: Context, measured: MeasuredSegment | None) -> None:
        """Record the last event: its LCA segment's cost per layer, then the event rows.

        ``measured`` is the event's segment; None when nobody measured it (no tracker), and the
        costs are then NaN.
        """
        p = self._pending
        if p is None:
            return
        self._pending = None
        rec = measured
        ok = (
            rec is not None
            and p.segment is not None
            and rec.index == p.segment
            and rec.kind == 1
            and rec.label == self.name
        )
        nan = math.nan
        seg = (nan, nan, nan, nan)  # loss before, loss after, ΣA, error
        if ok:
            seg = (rec.loss_start, rec.loss_end, rec.total, rec.error)
        total_removed = sum(int(r.sum()) for r in p.removed.values())
        layer_cost = {}
        for lay in self.layers:
            if ok:
                a_w = rec.per_param[lay.name].double()
                rem = p.removed[lay.name].to(a_w.device)
                c_rem = float(a_w[rem].sum())
                c_comp = float(a_w[~rem].sum())  # exactly 0 where nothing moved
                if lay.bias is not None:
                    c_comp += float(rec.per_param[lay.bias].double().sum())
                layer_cost[lay.name] = (c_rem + c_comp, c_rem, c_comp)
            else:
                layer_cost[lay.name] = (nan, nan, nan)
        sum_rem = sum(st[6] for st in p.stats.values() if st[4])
        sum_surv = sum(st[7] for st in p.stats.values() if st[5])
        n_rem = sum(st[4] for st in p.stats.values())
        n_surv = sum(st[5] for st in p.stats.values())
        have_cum = not any(math.isnan(st[6]) for st in p.stats.values())
        rem_mean = sum_rem / n_rem if n_rem and have_cum else nan
        surv_mean = sum_surv / n_surv if n_surv and have_cum else nan
        if have_cum:
            self._pooled[0] += sum_rem
            self._pooled[1] += n_rem
            self._pooled[2] += sum_surv
            self._pooled[3] += n_surv
        cost_layers = math.fsum(c[0] for c in layer_cost.values())
        totals = {
            "step": float(p.step),
            "segment": float(p.segment) if p.segment is not None else nan,
            "removed": float(total_removed),
            "sparsity_after": self.global_sparsity(),
            "loss_before": seg[0],
            "loss_after": seg[1],
            "cost": seg[2],
            "cost_removed": math.fsum(c[1] for c in layer_cost.values()),
            "cost_compensated": math.fsum(c[2] for c in layer_cost.values()),
            "cost_rest": seg[2] - cost_layers,
            "error": seg[3],
            "cum_lca_removed_mean": rem_mean,
            "cum_lca_survivors_mean": surv_mean,
            "helper_removal_ratio": _ratio(rem_mean, surv_mean),
        }
        self._log.append(totals)
        for lay in self.layers:
            st = p.stats[lay.name]
            pruned = int((~self.masks[lay.name]).sum())  # no event can happen in between
            ctx.event(
                self,
                "events",
                [
                    float(p.step),
                    float(lay.index),
                    float(st[4]),
                    float(pruned),
                    pruned / lay.numel,
                    st[0],
                    st[1],
                    st[2],
                    st[3],
                    *layer_cost[lay.name],
                ],
            )
        ctx.event(self, "event_totals", [totals[c] for c in TOTAL_COLUMNS])


def _matches(param: str, prefix: str) -> bool:
    return param == prefix or param.startswith(prefix + ".")


def _ratio(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b) or b == 0:
        return math.nan
    return a / b


def _forward_batches(ctx: Context, samples: int, chunk: int = 256):
    """Feed ``samples`` training examples (a fixed seeded subset) through the model.

    Like LCA's measurement: dropout off, BatchNorm on each chunk's own statistics with scratch
    buffers, so the model's running statistics are untouched. Yields after each chunk.
    """
    n = len(ctx.train_x)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(n, generator=g)[: min(samples, n)].sort().values
    model = ctx.model
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
    params = dict(model.named_parameters())
    try:
        with torch.no_grad():
            for lo in range(0, len(idx), chunk):
                buffers = {k: b.clone() for k, b in model.named_buffers()}
                x = ctx.train_x[idx[lo : lo + chunk].to(ctx.train_x.device)]
                functional_call(model, {**params, **buffers}, (x,))
                yield
    finally:
        for m, was in modes:
            m.training = was


def _recalibrate_bn(ctx: Context) -> None:
    """Re-estimate BatchNorm running statistics on training examples (pruning shifts them)."""
    bns = [m for m in ctx.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    bns = [m for m in bns if m.track_running_stats]
    if not bns:
        return
    modes = [(m, m.training) for m in ctx.model.modules()]
    momenta = [m.momentum for m in bns]
    n = len(ctx.train_x)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(1))[: min(_BN_SAMPLES, n)]
    try:
        ctx.model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the chunks
            m.train()
        with torch.no_grad():
            for lo in range(0, len(idx), 256):
                chunk = idx[lo : lo + 256]
                if len(chunk) > 1:
                    ctx.model(ctx.train_x[chunk.to(ctx.train_x.device)])
    finally:
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
        for m, was in modes:
            m.training = was


# -------------------------------------------------------------------------------------------
# The techniques.


@register
class PruneMagnitude(_Pruner):
    """Remove the alive weights of smallest |w| (Zhu & Gupta 2017 when gradual)."""

    name = "prune-magnitude"
    description = (
        "Prune the smallest-magnitude weights, once or gradually (Zhu & Gupta's cubic schedule); "
        "pruned weights stay zero."
    )
    options: ClassVar[dict[str, Option]] = {**_COMMON, "scope": _SCOPE}

    def _scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        return {lay.name: lay.module.weight.detach().abs() for lay in self.layers}


@register
class PruneLCA(_Pruner):
    """Remove the weights whose cumulative LCA so far is highest: the most harmful first.

    Order: cumulative LCA descending. Weights that hurt overall (A > 0, largest first) go
    first, then those that did nothing (A = 0), then the weakest helpers (A < 0 closest to 0);
    the strongest helpers (most negative A) go last. This is the comparison no paper made.
    """

    name = "prune-lca"
    description = (
        "Prune the weights with the highest cumulative LCA (those that hurt most, then the "
        "weakest helpers), once or gradually."
    )
    options: ClassVar[dict[str, Option]] = {
        **_COMMON,
        "start": Option(40, "optimizer step of the (first) prune event (t_0)", int, None, 1),
        "scope": _SCOPE,
    }

    def _scores(self, ctx: Context) -> dict[str, torch.Tensor]:
        cumulative = ctx.cumulative_lca
        out = {}
        for lay in self.layers:
            c = cumulative.get(lay.name)
            if c is None:
                raise TechniqueError(
                    f"Technique {self.name!r} needs the tracker's cumulative LCA of "
                    f"{lay.name!r}, which is not available; run it inside the LCA training loop."
                )
            out[lay.name] = -c.detach().to(lay.module.weight.device, torch.float64)
        return out


@register
class PruneLOBS(_Pruner):
    """Layer-wise Optimal Brain Surgeon (Dong, Chen & Pan 2017) for Linear and Conv2d layers."""

    name = "prune-lobs"
    description = (
        "Layer-wise Optimal Brain Surgeon (L-OBS): prune the weights whose removal changes "
        "each layer's output least and let the survivors compensate (Linear and Conv2d)."
    )
    options: ClassVar[dict[str, Option]] = {
        **_COMMON,
        "variant": Option(
            "rank-once",
            "rank-once: the published procedure (one H⁻¹); obs-update: update H⁻¹ "
            "after each removal and rescore (Optimal Brain Compression)",
            str,
            ("rank-once", "obs-update"),
        ),
        "samples": Option(
            256, "training examples used to estimate each layer's Hessian", int, None, 1
        ),
        "damp": Option(
            1e-4, "H⁻¹ damping, relative to the mean of diag H", float, None, 1e-12, 1.0
        ),
    }
    scoped = False

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        for lay in self.layers:
            why = lobs.supports(lay.module)
            if why is not None:
                raise TechniqueError(
                    f"Technique 'prune-lobs' cannot prune {lay.name!r}: {why}; restrict the "
                    "option 'layers' to Linear and Conv2d layers."
                )

    def hessians(self, ctx: Context) -> dict[str, torch.Tensor]:
        """H = (1/n) Σ x̃ x̃ᵀ per layer, from one pass of ``samples`` training examples."""
        acc: dict[str, lobs.HessianAccumulator] = {}
        handles = []

        def hook(lay: _Layer):
            def fn(module: nn.Module, args: tuple) -> None:
                rows = lobs.layer_rows(module, args[0].detach())
                if lay.name not in acc:
                    acc[lay.name] = lobs.HessianAccumulator(rows.shape[1], rows.device)
                acc[lay.name].add(rows)

            return fn

        for lay in self.layers:
            handles.append(lay.module.register_forward_pre_hook(hook(lay)))
        try:
            for _ in _forward_batches(ctx, self.opts["samples"]):
                pass
        finally:
            for h in handles:
                h.remove()
        return {n: a.value() for n, a in acc.items()}

    def _prune(self, ctx: Context, counts: dict[str, int]) -> dict[str, torch.Tensor]:
        """Remove and compensate per layer; the weights (and biases) are moved here."""
        hs = self.hessians(ctx)
        removed = {}
        for lay in self.layers:
            mask = self.masks[lay.name]
            w = lay.module.weight
            k = counts[lay.name] - int((~mask).sum())
            if k <= 0 or lay.name not in hs:
                removed[lay.name] = torch.zeros_like(mask)
                continue
            mat = lobs.layer_matrix(lay.module)
            rows, m = mat.shape
            alive = torch.ones(rows, m, dtype=torch.bool, device=mat.device)
            alive[:, : mask[0].numel()] = mask.reshape(rows, -1)
            cand = alive.clone()
            if lay.bias is not None:
                cand[:, -1] = False
            h = lobs.damped(hs[lay.name].to(mat.device), self.opts["damp"])
            if self.opts["variant"] == "rank-once":
                new, rem = lobs.prune_rank_once(mat, lobs.spd_inverse(h), cand, k)
            else:
                new, rem = lobs.prune_obs_update(mat, h, alive, cand, k)
            d = mask[0].numel()
            with torch.no_grad():
                w.copy_(new[:, :d].reshape(w.shape).to(w.dtype))
                if lay.bias is not None:
                    lay.module.bias.copy_(new[:, d].to(lay.module.bias.dtype))
            removed[lay.name] = rem[:, :d].reshape(mask.shape).to(mask.device)
        return removed
