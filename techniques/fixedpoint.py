"""Per-tensor fixed-point training with analytic precision assignment (Sakr & Shanbhag, ICLR
2019), simulated exactly. The rules come from the official code (``charbel-sakr/Fixed-Point-
Training``), see SEED-TECHNIQUES §4.1; the paper's theorem names were not read.

Five tensor classes per Linear/Conv layer l, each on its own B-bit grid of range [−DR, DR):

* W (forward weights): B_W bits over DR_W = the power of two covering max|w| at the start,
  straight-through gradient;
* A (the layer's input activations): B_A bits over DR_A (a power of two covering the probe's
  max|a|), straight-through gradient, applied by a forward pre-hook;
* G_A (the error dL/dy at the layer's output): nearest rounding, clipped at DR_GA, applied in
  backward by a forward hook;
* G_W (the weight gradient): nearest, clipped at DR_GW, applied in ``before_step``;
* ACC (the stored weight, the accumulator the optimizer writes to): after every optimizer step
  the weight is rounded to B_acc bits over DR_W, stochastically by default.

Analytic precisions (``assign = "analytic"``):

* feedforward (EFQN, ``precision_offset.py``/``FFAnalysis.py``): for each W and A tensor the
  noise gain E = mean over examples of Σ_{i≠ŷ} ‖∂(z_i − z_ŷ)/∂(a/DR)‖² / (z_i − z_ŷ)² / 24
  (gradient with respect to the tensor normalized by its range, as the code's [−1, 1) tensors
  are), and B = bits + round(log2 √(E / E_min)): equal quantization noise contributions,
  the least sensitive tensor getting ``bits``. Computed on the initial model (the paper analyses
  a trained float network; before training there is none);
* gradients, from a short float probe (``probe_steps`` of the same optimizer on a copy, the
  model itself untouched) recording per-tensor gradient std σ each step:
  DR_GW = 2^⌈log2(2·σ_max/√(1 − 0.9))⌉, LSB_GW = 2^⌊log2(σ_min/4)⌋,
  DR_GA = 2^⌈log2(8·σ_max/√(1 − 0.9))⌉, LSB_GA = 2^⌊log2(LSB_GW/√λ_max)⌋ with λ_max the
  largest eigenvalue of AᵀA of the layer's input batch (our reading of ``computeSVDssimplified``:
  the weight gradient is G_Aᵀ·A, so noise of one LSB_GA in G_A reaches G_W as at most
  LSB_GA·√λ_max), and B = log2(DR/LSB) + 1;
* accumulator: LSB_acc = 2^⌊log2(lr_min·DR_GW·2^(1−B_GW))⌋, at most the smallest update, and
  B_acc = log2(DR_W/LSB_acc) + 1.

With ``rounding_segment`` the accumulator rounding of step t is applied just before step t + 1
as an intervention segment (label ``fixed-point``): each update then follows the two-leg path of
SEED-TECHNIQUES §7.5, θ → θ + Δθ (the float update) → round(θ + Δθ), and the LCA of the second
leg is the loss the rounding cost, per weight and layer. (The last step's rounding is never
applied: the run ends first.) The path split is exact for the total and changes only how the
step's LCA is split, not the trajectory.

``assign = "uniform"`` gives every class ``bits`` bits over the same ranges (the comparison the
paper makes against). Biases stay float32. Activations get a *clipped* straight-through
gradient (0 where the activation was clipped to its range). LCA is measured in float32 on the
quantized weights with the gradient hooks off and the activations clipped to their ranges but
not rounded: rounded activations make the loss piecewise constant in the weights, so LCA sees
the STE's surrogate, and the clipping, which training sees, stays in it.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, vmap

from . import register
from .base import Context, Declarations, Option, Technique
from .lowbit import (
    ROUNDINGS,
    Hooks,
    fixed_quantize,
    full_name,
    layers,
    pow2_ceil,
    pow2_floor,
    quant,
)

CLASSES = ("weights", "activations", "act_grads", "weight_grads", "accumulator")
MOMENTUM_CORRECTION = 0.9  # the code's √(1 − 0.9) in the gradient ranges


def noise_gains(
    model: nn.Module, x: torch.Tensor, layer_names: list[str], dr_w: list[float], dr_a: list[float]
) -> tuple[list[float], list[float]]:
    """EFQN noise gains (E_W, E_A) per layer on examples ``x``, for range-normalized tensors.

    Per example, the Jacobians of the logits with respect to each layer's input a and output y
    (zero perturbations added by hooks, differentiated with ``jacrev`` under ``vmap``). For a
    Linear layer the weight Jacobian of z_i − z_ŷ is the outer product δ·aᵀ with
    δ = ∂(z_i − z_ŷ)/∂y, so its squared norm is ‖δ‖²·‖a‖²: no per-example weight Jacobian is
    ever built. Conv weights (shared over positions) get their per-example Jacobian directly.
    """
    mods = dict(model.named_modules())
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    shapes_in: dict[str, tuple[int, ...]] = {}
    shapes_out: dict[str, tuple[int, ...]] = {}
    acts: dict[str, torch.Tensor] = {}
    handles = []
    for n in layer_names:

        def grab(mod, args, out, n=n):  # noqa: ANN001, ANN202
            shapes_in[n] = tuple(args[0].shape[1:])
            shapes_out[n] = tuple(out.shape[1:])
            acts[n] = args[0].detach()

        handles.append(mods[n].register_forward_hook(grab))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            z_all = functional_call(model, {**params, **buffers}, (x,))
    finally:
        for h in handles:
            h.remove()
    conv = [n for n in layer_names if not isinstance(mods[n], nn.Linear)]
    state_in: dict[str, torch.Tensor] = {}
    state_out: dict[str, torch.Tensor] = {}
    handles = []
    for n in layer_names:

        def add_in(mod, args, n=n):  # noqa: ANN001, ANN202
            return (args[0] + state_in[n], *args[1:])

        def add_out(mod, args, out, n=n):  # noqa: ANN001, ANN202
            return out + state_out[n]

        handles.append(mods[n].register_forward_pre_hook(add_in))
        handles.append(mods[n].register_forward_hook(add_out))

    def logits(
        ws: dict[str, torch.Tensor],
        d_in: dict[str, torch.Tensor],
        d_out: dict[str, torch.Tensor],
        xi: torch.Tensor,
    ) -> torch.Tensor:
        state_in.update({n: d.unsqueeze(0) for n, d in d_in.items()})
        state_out.update({n: d.unsqueeze(0) for n, d in d_out.items()})
        return functional_call(model, {**params, **ws, **buffers}, (xi.unsqueeze(0),))[0]

    ws = {full_name(n, "weight"): params[full_name(n, "weight")] for n in conv}
    z_in = {n: torch.zeros(shapes_in[n], dtype=x.dtype) for n in layer_names}
    z_out = {n: torch.zeros(shapes_out[n], dtype=x.dtype) for n in layer_names}
    try:
        jw, ja, jy = vmap(jacrev(logits, argnums=(0, 1, 2)), in_dims=(None, None, None, 0))(
            ws, z_in, z_out, x
        )
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    pred = z_all.argmax(1)
    c = z_all.shape[1]
    rows = torch.arange(len(x))
    others = torch.arange(c).unsqueeze(0) != pred.unsqueeze(1)  # (n, c): i ≠ ŷ
    gap2 = (z_all - z_all.gather(1, pred[:, None])) ** 2  # (z_i − z_ŷ)²

    def sq_norm_diff(j: torch.Tensor) -> torch.Tensor:
        """(n, c): ‖∂(z_i − z_ŷ)/∂t‖² for a per-example Jacobian j of shape (n, c, ...)."""
        j = j.reshape(j.shape[0], c, -1)
        return ((j - j[rows, pred].unsqueeze(1)) ** 2).sum(-1)

    def gain(sq: torch.Tensor, dr: float) -> float:
        s = sq * dr**2 / gap2.clamp(min=1e-30) / 24
        return float((s * others).sum(1).mean())

    e_w, e_a = [], []
    for n, dw, da in zip(layer_names, dr_w, dr_a, strict=True):
        if n in conv:
            sq_w = sq_norm_diff(jw[full_name(n, "weight")])
        else:  # ‖δ aᵀ‖² = ‖δ‖²‖a‖²
            a2 = (acts[n].reshape(len(x), -1) ** 2).sum(1, keepdim=True)
            sq_w = sq_norm_diff(jy[n]) * a2
        e_w.append(gain(sq_w, dw))
        e_a.append(gain(sq_norm_diff(ja[n]), da))
    return e_w, e_a


def lambda_max(mod: nn.Module, a: torch.Tensor) -> float:
    """Largest eigenvalue of AᵀA for the layer's input batch (Conv: its im2col patches)."""
    if isinstance(mod, nn.Conv2d):
        a = F.unfold(a, mod.kernel_size, mod.dilation, mod.padding, mod.stride)
        a = a.transpose(1, 2).reshape(-1, a.shape[1])
    else:
        a = a.reshape(-1, a.shape[-1])
    return float(torch.linalg.matrix_norm(a.double(), ord=2) ** 2)


@register
class SakrFixedPoint(Technique):
    """Sakr & Shanbhag 2019: every tensor class in per-tensor fixed point, analytic precisions."""

    name = "fixed-point"
    roles = ("weight-format", "arithmetic")
    description = (
        "Per-tensor fixed point for weights, activations, activation gradients, weight "
        "gradients and the weight accumulator (Sakr & Shanbhag 2019), with the analytic "
        "precision assignment or fixed bits; simulated."
    )
    options: dict[str, Option] = {
        "assign": Option(
            "analytic",
            "analytic (the method's precisions) or uniform (every class gets 'bits')",
            str,
            choices=("analytic", "uniform"),
        ),
        "bits": Option(
            8,
            "uniform bits, or the least sensitive feedforward tensor's bits",
            int,
            minimum=2,
            maximum=24,
        ),
        "probe_steps": Option(
            10,
            "float steps on a copy of the model to measure gradient statistics",
            int,
            minimum=1,
            maximum=1000,
        ),
        "probe_examples": Option(
            64, "examples for the noise gains and the probe batch", int, minimum=2, maximum=4096
        ),
        "lr_min": Option(
            0.0,
            "smallest learning rate the accumulator must resolve (0: the configured rate)",
            float,
            minimum=0.0,
        ),
        "rounding": Option(
            "stochastic", "rounding of the weight accumulator", str, choices=ROUNDINGS
        ),
        "seed": Option(
            0, "seed of the probe's batches and the stochastic rounding", int, minimum=0
        ),
        "rounding_segment": Option(
            False,
            "round the accumulator as its own LCA segment before "
            "the next step, so its loss cost ('hurt due to rounding') "
            "is allocated separately",
            bool,
        ),
    }

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self._layers: list[tuple[str, nn.Module]] = []
        self._order: list[str] = []
        self.bits: dict[str, list[int]] = {c: [] for c in CLASSES}
        self.ranges: dict[str, list[float]] = {c: [] for c in CLASSES}
        self.gains: dict[str, list[float]] = {"weights": [], "activations": []}
        self.sigma: dict[str, list[tuple[float, float]]] = {"weight_grads": [], "act_grads": []}
        self.lam: list[float] = []
        self.lr_min = 0.0
        self._hooks = Hooks()
        self._gen: torch.Generator | None = None
        self._written = False
        self._lost: list[float] = []
        self._before: dict[str, torch.Tensor] = {}
        self._pending: bool | None = None

    # -- analysis ------------------------------------------------------------------------------
    def lsb(self, cls: str, i: int) -> float:
        return self.ranges[cls][i] * 2.0 ** (1 - self.bits[cls][i])

    def setup(self, ctx: Context) -> None:
        self._layers = layers(ctx.model)
        self._order = list(ctx.params())
        names = [n for n, _ in self._layers]
        n_ex = min(self.opts["probe_examples"], len(ctx.train_x))
        x = ctx.train_x[:n_ex]
        self._gen = torch.Generator().manual_seed(self.opts["seed"])
        dr_w = [pow2_ceil(float(m.weight.detach().abs().max())) for _, m in self._layers]
        sig_w, sig_a, amax, lam = self._probe(ctx)
        dr_a = [pow2_ceil(a) for a in amax]
        self.lam = lam
        self.sigma = {"weight_grads": sig_w, "act_grads": sig_a}
        lr_min = self.opts["lr_min"] or min(g["lr"] for g in ctx.optimizer.param_groups)
        self.lr_min = lr_min
        b = self.opts["bits"]
        dr_gw = [pow2_ceil(2 * hi / math.sqrt(1 - MOMENTUM_CORRECTION)) for _, hi in sig_w]
        dr_ga = [pow2_ceil(8 * hi / math.sqrt(1 - MOMENTUM_CORRECTION)) for _, hi in sig_a]
        self.ranges = {
            "weights": dr_w,
            "activations": dr_a,
            "act_grads": dr_ga,
            "weight_grads": dr_gw,
            "accumulator": dr_w,
        }
        if self.opts["assign"] == "uniform":
            self.bits = {c: [b] * len(names) for c in CLASSES}
        else:
            e_w, e_a = noise_gains(ctx.model, x, names, dr_w, dr_a)
            self.gains = {"weights": e_w, "activations": e_a}
            e_min = min(v for v in e_w + e_a if v > 0)
            offset = [b + round(math.log2(math.sqrt(max(v, e_min) / e_min))) for v in e_w + e_a]
            lsb_gw = [pow2_floor(lo / 4) for lo, _ in sig_w]
            lsb_ga = [pow2_floor(lw / math.sqrt(la)) for lw, la in zip(lsb_gw, lam, strict=True)]
            bits_gw = [round(math.log2(d / s)) + 1 for d, s in zip(dr_gw, lsb_gw, strict=True)]
            bits_ga = [round(math.log2(d / s)) + 1 for d, s in zip(dr_ga, lsb_ga, strict=True)]
            lsb_acc = [
                pow2_floor(lr_min * d * 2.0 ** (1 - bg))
                for d, bg in zip(dr_gw, bits_gw, strict=True)
            ]
            bits_acc = [round(math.log2(d / s)) + 1 for d, s in zip(dr_w, lsb_acc, strict=True)]
            self.bits = {
                "weights": offset[: len(names)],
                "activations": offset[len(names) :],
                "act_grads": bits_ga,
                "weight_grads": bits_gw,
                "accumulator": bits_acc,
            }
        with torch.no_grad():  # the stored weights start on the accumulator grid
            for i, (_, m) in enumerate(self._layers):
                m.weight.copy_(fixed_quantize(m.weight, self.bits["accumulator"][i], dr_w[i]))
        for i, (_, m) in enumerate(self._layers):
            self._hooks.input(
                m, lambda a, i=i: self._act(i, a), surrogate=lambda a, i=i: self._clip_act(i, a)
            )
            self._hooks.output(
                m, lambda mod, a, y, i=i: quant(y, None, lambda g: self._q("act_grads", i, g))
            )

    def _clip_act(self, i: int, a: torch.Tensor) -> torch.Tensor:
        """The activation clipped to its range: the quantizer without the rounding (the STE's
        surrogate, what LCA measures on; its gradient is 0 where the value is clipped)."""
        dr = self.ranges["activations"][i]
        return a.clamp(-dr, dr - self.lsb("activations", i))

    def _act(self, i: int, a: torch.Tensor) -> torch.Tensor:
        """Quantized activation with a clipped straight-through gradient."""
        return quant(self._clip_act(i, a), lambda t: self._q("activations", i, t), None)

    def _q(self, cls: str, i: int, t: torch.Tensor, rounding: str = "nearest") -> torch.Tensor:
        return fixed_quantize(
            t, self.bits[cls][i], self.ranges[cls][i], rounding, generator=self._gen
        )

    def _probe(self, ctx: Context):  # noqa: ANN202
        """Float training of a copy: per-layer (σ_min, σ_max) of G_W and G_A, max|A|, λ_max."""
        model = copy.deepcopy(ctx.model)
        opt = type(ctx.optimizer)(model.parameters(), **ctx.optimizer.defaults)
        mods = [m for n, m in layers(model)]
        acts: list[torch.Tensor] = [torch.empty(0)] * len(mods)
        outs: list[torch.Tensor] = [torch.empty(0)] * len(mods)
        handles = []
        for i, m in enumerate(mods):

            def keep(mod, args, out, i=i):  # noqa: ANN001, ANN202
                acts[i] = args[0].detach()
                out.retain_grad()
                outs[i] = out

            handles.append(m.register_forward_hook(keep))
        sw: list[list[float]] = [[] for _ in mods]
        sa: list[list[float]] = [[] for _ in mods]
        amax = [0.0] * len(mods)
        lam = [0.0] * len(mods)
        g = torch.Generator().manual_seed(self.opts["seed"])
        n = len(ctx.train_x)
        batch = min(self.opts["probe_examples"], n)
        model.train()
        try:
            for _ in range(self.opts["probe_steps"]):
                idx = torch.randperm(n, generator=g)[:batch].to(ctx.train_x.device)
                loss = ctx.loss_fn(model(ctx.train_x[idx]), ctx.train_y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for i, m in enumerate(mods):
                    sw[i].append(float(m.weight.grad.std()))
                    sa[i].append(float(outs[i].grad.std()))
                    amax[i] = max(amax[i], float(acts[i].abs().max()))
                    lam[i] = max(lam[i], lambda_max(m, acts[i]))
                opt.step()
        finally:
            for h in handles:
                h.remove()
        tiny = 2.0**-40  # a dead tensor still gets a finite grid

        def lohi(s: list[float]) -> tuple[float, float]:
            return max(min(s), tiny), max(max(s), tiny)

        return [lohi(s) for s in sw], [lohi(s) for s in sa], amax, [max(v, 1.0) for v in lam]

    # -- records -------------------------------------------------------------------------------
    def declare(self, ctx: Context) -> Declarations:
        n = len(ctx.params())
        arrays = {f"bits_{c}": ("f8", (n,), math.nan) for c in CLASSES}
        arrays.update({f"lsb_{c}": ("f8", (n,), math.nan) for c in CLASSES})
        return Declarations(series={"updates_lost": ("f8", ())}, arrays=arrays)

    def per_param(self, cls: str, values: list[float]) -> list[float]:
        """A per-layer list laid out like /layers/names (the layer's weight row; NaN else)."""
        where = {full_name(n, "weight"): i for i, (n, _) in enumerate(self._layers)}
        return [values[where[p]] if p in where else math.nan for p in self._order]

    def _write_arrays(self, ctx: Context) -> None:
        if not self._written:  # the run file is open now: write the assignment once
            self._written = True
            for c in CLASSES:
                ctx.set_array(
                    self, f"bits_{c}", self.per_param(c, [float(b) for b in self.bits[c]])
                )
                ctx.set_array(
                    self,
                    f"lsb_{c}",
                    self.per_param(c, [self.lsb(c, i) for i in range(len(self._layers))]),
                )

    # -- training ------------------------------------------------------------------------------
    def _wnames(self) -> dict[str, int]:
        return {full_name(n, "weight"): i for i, (n, _) in enumerate(self._layers)}

    def forward_params(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(params)
        for n, i in self._wnames().items():
            if n in out:
                w = out[n]
                out[n] = self._q("weights", i, w) + (w - w.detach())
        return out

    def effective(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {k: v.detach() for k, v in params.items()}
        for n, i in self._wnames().items():
            if n in out:
                out[n] = self._q("weights", i, out[n])
        return out

    def before_step(self, ctx: Context) -> None:
        params = ctx.params()
        self._before = {}
        for n, i in self._wnames().items():
            p = params[n]
            if p.grad is not None:
                p.grad = self._q("weight_grads", i, p.grad)
            self._before[n] = p.detach().clone()

    def begin(self, ctx: Context) -> None:
        self._write_arrays(ctx)

    def wants_intervention(self, ctx: Context) -> bool:
        return self._pending is not None

    def intervene(self, ctx: Context, row: dict[str, object]) -> None:
        row_ = self._round(ctx)
        self._lost.append(row_)
        row[self.path("updates_lost")] = row_

    def after_step(self, ctx: Context, row: dict[str, object]) -> None:
        if self.opts["rounding_segment"]:
            self._pending = True
            row[self.path("updates_lost")] = math.nan  # counted on the rounding segment
            return
        frac = self._round(ctx)
        self._lost.append(frac)
        row[self.path("updates_lost")] = frac

    def _round(self, ctx: Context) -> float:
        """Put the stored weights on the accumulator grid; the fraction of moves undone."""
        self._pending = None
        params = ctx.params()
        moved = lost = 0
        with torch.no_grad():
            for n, i in self._wnames().items():
                p = params[n]
                q = self._q("accumulator", i, p, self.opts["rounding"])
                before = self._before.get(n)
                if before is not None:
                    m = p != before
                    moved += int(m.sum())
                    lost += int((m & (q == before)).sum())
                p.copy_(q)
        return lost / moved if moved else 0.0

    def summary(self) -> dict[str, Any]:
        names = [n for n, _ in self._layers]
        n_w = sum(m.weight.numel() for _, m in self._layers)
        w_bits = (
            sum(self.bits["weights"][i] * m.weight.numel() for i, (_, m) in enumerate(self._layers))
            / n_w
            if n_w
            else 32.0
        )
        acc_bits = (
            sum(
                self.bits["accumulator"][i] * m.weight.numel()
                for i, (_, m) in enumerate(self._layers)
            )
            / n_w
            if n_w
            else 32.0
        )
        a_bits = self.bits["activations"]
        out: dict[str, Any] = {
            "simulated": True,
            "speed": "not claimed: fixed point is simulated in float32",
            "assign": self.opts["assign"],
            "layers": names,
            "bits": {c: list(self.bits[c]) for c in CLASSES},
            "lsb": {c: [self.lsb(c, i) for i in range(len(names))] for c in CLASSES},
            "noise_gains": self.gains,
            "lr_min": self.lr_min,
            "weight_bits_mean": w_bits,
            "accumulator_bits_mean": acc_bits,
            "activation_bits_mean": sum(a_bits) / len(a_bits) if a_bits else 32.0,
            # What storage would need on fixed-point hardware, against float32 (weights are
            # stored as the accumulator; the forward copy is narrower).
            "weight_bits_stored": acc_bits,
            "compression_vs_float32": 32.0 / acc_bits if acc_bits else 1.0,
            "mean_updates_lost": sum(self._lost) / len(self._lost) if self._lost else 0.0,
            "rounding_segment": self.opts["rounding_segment"],
        }
        return out
