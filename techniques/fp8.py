"""8-bit floating-point training (Wang, Choi, Brand, Chen, Gopalakrishnan, NeurIPS 2018),
simulated exactly in float32/float64.

The paper's data flow, with the formats verified through QPyTorch's IBM8 example:

* **GEMM operands in 1-5-2, round to nearest**: the weights the forward uses (q(w) with a
  straight-through gradient), every Linear/Conv input (a forward pre-hook), the error dL/dy
  arriving at every Linear/Conv output (a forward hook whose autograd backward rounds it), and
  the weight gradients (rounded in ``before_step``).
* **Weight update, momentum and the weight itself in 1-6-9, stochastic rounding**: there is no
  float32 master copy. ``setup`` rounds the initial weights onto 1-6-9 and ``optimizer_step``
  does the SGD(-momentum) arithmetic itself, rounding the momentum buffer, the update lr·v and
  the new weight w − lr·v to 1-6-9 with stochastic rounding: the stored weight is a 1-6-9 value
  after every step. With nearest rounding an update below half a 1-6-9 spacing of its weight is
  lost (``updates_lost``); stochastic rounding keeps it in expectation.
* **Chunk-based accumulation** (option ``chunk``, simulated, every GEMM): forward, grad_input
  and grad_weight of every Linear, Conv1d and Conv2d layer are computed as 2-D products
  (``techniques/fp8_gemm.py``: im2col for convolutions) whose K-long dot products are cut into
  chunks of ``chunk``; each chunk's sum is rounded to 1-6-9 and the chunk sums are accumulated
  in 1-6-9 (nearest). Cost: K/chunk small products and roundings per GEMM instead of one GEMM;
  ``benchmarks/techniques.py`` prints the time ratio. Meant for small models.
* **Real float8 matrix products** (option ``backend = "cuda-float8"``): on a CUDA device with
  compute capability ≥ 8.9 the same three GEMMs per layer run through ``torch._scaled_mm`` on
  float8 tensors (float32 accumulation), see ``techniques/fp8_gemm.py`` for the formats;
  refused, in one sentence, where there is no such device.
* **First and last layer** can stay in float32 (an option; which layers the paper kept in
  higher precision is not verified).
* **Loss scaling** (an option, static, a power of two): 1-5-2's smallest subnormal is 2^−16, so
  small gradients underflow; the paper's loss-scaling scheme is not verified.

LCA is measured in float32 on ``effective(params)``: the 1-5-2 weights the forward uses, with
the activation and gradient hooks switched off (``is_measuring``). Everything here is simulated:
it saves no time (it costs time) and the memory figures in ``summary`` are what the formats
would use on hardware with FP8/FP16 storage.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from . import register
from .base import Context, Declarations, Option, Technique, TechniqueError, is_measuring
from .fp8_gemm import (
    CHUNKABLE,
    chunked_matmul,
    conv_gemm,
    float8_matmul,
    float8_supported,
    linear_gemm,
)
from .lowbit import (
    ROUNDINGS,
    FloatFormat,
    Hooks,
    float_quantize,
    full_name,
    layers,
    parse_format,
    quant,
)

BACKENDS = ("simulated", "cuda-float8")


@register
class FP8(Technique):
    """Wang et al. 2018: 1-5-2 GEMM operands, 1-6-9 stochastic-rounded updates, no fp32 copy."""

    name = "fp8"
    roles = ("weight-format", "arithmetic")
    description = (
        "8-bit floating-point training (Wang et al. 2018, simulated): weights, activations and "
        "gradients in 1-5-2, weight update, momentum and the weights themselves in 1-6-9 with "
        "stochastic rounding, no float32 master copy."
    )
    options: dict[str, Option] = {
        "forward": Option(
            "1-5-2",
            "format of weights, activations, errors and weight gradients (sign-exponent-mantissa)",
            str,
        ),
        "update": Option("1-6-9", "format of the weight update, momentum and stored weights", str),
        "update_rounding": Option(
            "stochastic", "rounding of the 1-6-9 update arithmetic", str, choices=ROUNDINGS
        ),
        "chunk": Option(
            0,
            "chunk-based accumulation of every GEMM (forward, grad_input, grad_weight of "
            "Linear and Conv1d/2d) with this chunk length (0: off; the paper's idea, e.g. 64; "
            "simulated, slow)",
            int,
            minimum=0,
            maximum=4096,
        ),
        "backend": Option(
            "simulated",
            "simulated: every format simulated in float32/64 (any device); cuda-float8: the "
            "Linear/Conv GEMMs as real float8 products (torch._scaled_mm, CUDA compute "
            "capability 8.9 or newer)",
            str,
            choices=BACKENDS,
        ),
        "keep_first_last": Option(False, "keep the first and last layer in float32", bool),
        "loss_scale": Option(
            1.0,
            "static loss scale, a power of two (gradients are unscaled exactly before the update)",
            float,
            minimum=2.0**-24,
            maximum=2.0**24,
        ),
        "subnormals": Option(
            True, "gradual underflow (off: flush below the smallest normal)", bool
        ),
        "seed": Option(0, "seed of the stochastic-rounding noise", int, minimum=0),
    }

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self.fwd: FloatFormat = parse_format(self.opts["forward"], self.name, "forward")
        self.upd: FloatFormat = parse_format(self.opts["update"], self.name, "update")
        scale = self.opts["loss_scale"]
        if 2.0 ** round(math.log2(scale)) != scale:
            raise TechniqueError(
                f"Option 'loss_scale' of technique 'fp8' is {scale!r}; use a power of two "
                "(e.g. 1024) so unscaling is exact."
            )
        if self.opts["backend"] == "cuda-float8":
            if self.opts["chunk"]:
                raise TechniqueError(
                    "Technique 'fp8' with backend cuda-float8 accumulates in float32 on the "
                    "device, so it cannot also simulate chunked accumulation; set chunk = 0 "
                    "or backend = simulated."
                )
            if self.fwd != FloatFormat(5, 2):
                raise TechniqueError(
                    "Technique 'fp8' with backend cuda-float8 multiplies float8_e5m2 "
                    f"operands, so option 'forward' must be 1-5-2, not {self.fwd.name}."
                )
            if not torch.cuda.is_available():
                raise TechniqueError(
                    "Technique 'fp8' with backend cuda-float8 needs a CUDA GPU with float8 "
                    "matrix products and none is available here; use backend = simulated."
                )
        self.targets: list[str] = []  # parameter names of the low-precision layers
        self._layer_names: list[str] = []
        self._hooks = Hooks()
        self._gen: torch.Generator | None = None
        self._numel = 0
        self._total = 0
        self._counts = self._zero_counts()
        self._totals = {"updates_lost": [], "grad_underflow": [], "act_grad_underflow": []}
        self._gemm_chunks = 0
        self._patched: list[nn.Module] = []  # layers whose forward is one of the GEMMs here

    @staticmethod
    def _zero_counts() -> dict[str, int]:
        return {
            "moved": 0,
            "lost": 0,
            "g_nonzero": 0,
            "g_flushed": 0,
            "a_nonzero": 0,
            "a_flushed": 0,
        }

    # -- declarations --------------------------------------------------------------------------
    def declare(self, ctx: Context) -> Declarations:
        return Declarations(
            series={
                "updates_lost": ("f8", ()),
                "grad_underflow": ("f8", ()),
                "act_grad_underflow": ("f8", ()),
            }
        )

    # -- setup ---------------------------------------------------------------------------------
    def setup(self, ctx: Context) -> None:
        if not isinstance(ctx.optimizer, torch.optim.SGD):
            raise TechniqueError(
                "Technique 'fp8' performs the paper's SGD update in 1-6-9 itself, so it needs "
                "optimizer sgd or momentum, not " + type(ctx.optimizer).__name__ + "."
            )
        found = layers(ctx.model)
        if self.opts["keep_first_last"]:
            found = found[1:-1]
        self._layer_names = [n for n, _ in found]
        params = ctx.params()
        self.targets = [
            full_name(n, leaf)
            for n, m in found
            for leaf in ("weight", "bias")
            if getattr(m, leaf, None) is not None
        ]
        self.targets = [n for n in self.targets if n in params]
        self._numel = sum(params[n].numel() for n in self.targets)
        self._total = sum(p.numel() for p in params.values())
        self._gen = torch.Generator().manual_seed(self.opts["seed"])
        with torch.no_grad():  # the stored weights are 1-6-9 from the start: no float32 master
            for n in self.targets:
                params[n].copy_(
                    float_quantize(
                        params[n], self.upd, "nearest", subnormals=self.opts["subnormals"]
                    )
                )
        backend = self.opts["backend"]
        own_gemm = bool(self.opts["chunk"]) or backend == "cuda-float8"
        if backend == "cuda-float8" and not float8_supported(ctx.device):
            raise TechniqueError(
                f"Technique 'fp8' with backend cuda-float8 needs a CUDA device of compute "
                f"capability 8.9 or newer, and this run's device is {ctx.device}; set device "
                "= cuda on such a GPU or use backend = simulated."
            )
        if own_gemm:
            odd = [n for n, m in found if not isinstance(m, CHUNKABLE)]
            if odd:
                what = "chunk" if self.opts["chunk"] else "backend cuda-float8"
                raise TechniqueError(
                    f"Technique 'fp8' with {what} computes Linear, Conv1d and Conv2d layers "
                    f"only, and layer {odd[0]!r} is another kind; set keep_first_last or use "
                    "chunk = 0 and backend = simulated."
                )
        for _, m in found:
            self._hooks.input(m, self._quantize_input)
            self._hooks.output(m, self._output)
            if own_gemm:
                self._install_gemm(m)
            if self.opts["chunk"]:
                k = m.in_features if isinstance(m, nn.Linear) else m.weight[0].numel()
                self._gemm_chunks += math.ceil(k / self.opts["chunk"])

    # -- forward -------------------------------------------------------------------------------
    def q_fwd(self, x: torch.Tensor) -> torch.Tensor:
        return float_quantize(x, self.fwd, "nearest", subnormals=self.opts["subnormals"])

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return quant(x, self.q_fwd, None)  # 1-5-2 value, straight-through gradient

    def _quantize_error(self, g: torch.Tensor) -> torch.Tensor:
        q = self.q_fwd(g)
        self._counts["a_nonzero"] += int((g != 0).sum())
        self._counts["a_flushed"] += int(((g != 0) & (q == 0)).sum())
        return q

    def _output(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return quant(y, None, self._quantize_error)  # the error dL/dy is rounded to 1-5-2

    def _install_gemm(self, module: nn.Module) -> None:
        """The layer's forward becomes ``self.gemm`` outside measurements (an instance
        attribute: the class's forward, with the pre- and post-hooks around it, is kept)."""
        plain = type(module).forward

        def forward(x: torch.Tensor, module: nn.Module = module) -> torch.Tensor:
            if is_measuring():
                return plain(module, x)
            return self.gemm(module, x)

        module.forward = forward
        self._patched.append(module)

    def gemm(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The layer's output with this technique's accumulation: chunked in 1-6-9 (forward
        and both backward GEMMs) or float8 on CUDA."""
        w, b = module.weight, module.bias
        if self.opts["backend"] == "cuda-float8":
            mm, add_bias = float8_matmul()
            if isinstance(module, nn.Linear):
                return linear_gemm(x, w, b, mm, add_bias)
            return conv_gemm(module, x, w, b, mm, add_bias)
        mm, add_bias = chunked_matmul(self.upd, self.opts["chunk"])
        if isinstance(module, nn.Linear):
            return linear_gemm(x, w, b, mm, add_bias)
        return conv_gemm(
            module,
            x,
            w,
            b,
            mm,
            add_bias,
            unfold_dtype=torch.float64,
            round_input_grad=lambda g: float_quantize(g, self.upd),
        )

    def chunked_linear(
        self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None
    ) -> torch.Tensor:
        """x·wᵀ (+ b) with chunk sums rounded to 1-6-9 and accumulated in 1-6-9 (nearest)."""
        mm, add_bias = chunked_matmul(self.upd, self.opts["chunk"])
        return linear_gemm(x, w, b, mm, add_bias)

    def forward_params(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(params)
        for n in self.targets:
            if n in out:
                w = out[n]
                out[n] = self.q_fwd(w) + (w - w.detach())  # value q(w) exactly, gradient → w
        return out

    def effective(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {k: v.detach() for k, v in params.items()}
        for n in self.targets:
            if n in out:
                out[n] = self.q_fwd(out[n])
        return out

    # -- backward and update -------------------------------------------------------------------
    def backward(self, ctx: Context, loss: torch.Tensor) -> bool:
        (loss * self.opts["loss_scale"]).backward()
        return True

    def before_step(self, ctx: Context) -> None:
        targets = set(self.targets)
        inv = 1.0 / self.opts["loss_scale"]
        for n, p in ctx.model.named_parameters():
            if p.grad is None:
                continue
            g = p.grad
            if n in targets:
                q = self.q_fwd(g)
                self._counts["g_nonzero"] += int((g != 0).sum())
                self._counts["g_flushed"] += int(((g != 0) & (q == 0)).sum())
                g = q
            p.grad = g * inv  # a power of two: exact

    def _round_upd(self, x: torch.Tensor) -> torch.Tensor:
        rounding = self.opts["update_rounding"]
        noise = None
        if rounding == "stochastic":
            noise = torch.rand(x.shape, generator=self._gen, dtype=torch.float64)
        return float_quantize(
            x, self.upd, rounding, noise=noise, subnormals=self.opts["subnormals"]
        )

    @torch.no_grad()
    def optimizer_step(self, ctx: Context) -> bool:
        """torch.optim.SGD's arithmetic, with every 1-6-9 quantity rounded as the paper does."""
        names = {id(p): n for n, p in ctx.model.named_parameters()}
        targets = set(self.targets)
        for group in ctx.optimizer.param_groups:
            lr, mom = group["lr"], group.get("momentum", 0.0)
            wd, damp = group.get("weight_decay", 0.0), group.get("dampening", 0.0)
            nesterov = group.get("nesterov", False)
            for p in group["params"]:
                if p.grad is None:
                    continue
                low = names.get(id(p)) in targets
                rnd = self._round_upd if low else (lambda t: t)
                g = p.grad
                if wd:
                    g = rnd(g + wd * p)
                if mom:
                    state = ctx.optimizer.state[p]
                    buf = state.get("momentum_buffer")
                    buf = rnd(g.clone()) if buf is None else rnd(mom * buf + (1 - damp) * g)
                    state["momentum_buffer"] = buf
                    g = rnd(g + mom * buf) if nesterov else buf
                step = rnd(lr * g)
                new = rnd(p - step)
                if low:
                    moving = step != 0
                    self._counts["moved"] += int(moving.sum())
                    self._counts["lost"] += int((moving & (new == p)).sum())
                p.copy_(new)
        return True

    def after_step(self, ctx: Context, row: dict[str, object]) -> None:
        c = self._counts
        values = {
            "updates_lost": c["lost"] / c["moved"] if c["moved"] else 0.0,
            "grad_underflow": c["g_flushed"] / c["g_nonzero"] if c["g_nonzero"] else 0.0,
            "act_grad_underflow": c["a_flushed"] / c["a_nonzero"] if c["a_nonzero"] else 0.0,
        }
        for k, v in values.items():
            row[self.path(k)] = v
            self._totals[k].append(v)
        self._counts = self._zero_counts()

    # -- report --------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        frac = self._numel / self._total if self._total else 0.0

        def mean(k: str) -> float:
            return sum(self._totals[k]) / len(self._totals[k]) if self._totals[k] else 0.0

        stored_bits = self.upd.bits * frac + 32 * (1 - frac)
        out: dict[str, Any] = {
            "simulated": True,
            "speed": "not claimed: the formats are simulated in float32, which is slower",
            "forward_format": self.fwd.name,
            "update_format": self.upd.name,
            "update_rounding": self.opts["update_rounding"],
            "params_low_precision": self._numel,
            "fraction_params_low_precision": frac,
            "bits": self.fwd.bits,
            # What the formats would store on hardware, per parameter / activation, vs float32.
            "weight_bits_stored": stored_bits,
            "optimizer_state_bits": stored_bits,  # the momentum buffer, in the update format
            "activation_bits": self.fwd.bits,
            "compression_vs_float32": 32.0 / stored_bits if stored_bits else 1.0,
            "mean_updates_lost": mean("updates_lost"),
            "mean_grad_underflow": mean("grad_underflow"),
            "mean_act_grad_underflow": mean("act_grad_underflow"),
            "loss_scale": self.opts["loss_scale"],
        }
        if self.opts["chunk"]:
            out["chunk"] = self.opts["chunk"]
            out["chunk_cost"] = (
                f"every GEMM (forward, grad_input, grad_weight) of the fp8 layers accumulates "
                f"in chunks of {self.opts['chunk']} rounded to {self.upd.name}: "
                f"{self._gemm_chunks} chunk sums per output value per forward pass; simulated "
                "in float64, so it costs time (benchmarks/techniques.py: fp8-chunk64)"
            )
        out["backend"] = self.opts["backend"]
        if self.opts["backend"] == "cuda-float8":
            out["speed"] = (
                "real float8 matrix products (torch._scaled_mm); the other formats are still "
                "simulated, so the step is not faster overall"
            )
        return out
