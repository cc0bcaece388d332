"""Direct Feedback Alignment (Nøkland 2016) and its binary variant (BDFA): no backpropagation.

Each hidden layer l learns from a fixed random projection of the output error instead of the
error backpropagated through the layers above it: δa_l = (B_l e) ⊙ f'(a_l), with
e = ∂L/∂ŷ (softmax-CE: probabilities minus one-hot, over the batch) and B_l drawn once. The
output layer keeps its true gradient. ``bdfa`` draws B_l from {−1, +1} (same variance as
``dfa``'s standard normal), as in the binary-feedback papers; both are scaled by 1/√(features)
as TinyDFA does (a constant factor, the same for every entry).

How it is simulated (as TinyDFA does): B_l e is injected at the input of the *next* weight
layer, i.e. after layer l's nonlinearity, and autograd takes it through f' and the local
weight gradient. The technique runs the backward itself so that it also has the true gradient
of every parameter: LCA always scores the DFA update against the true gradient, and the cosine
between the two (per layer, per step) is the "alignment" series. Nothing is saved in compute;
this shows where DFA trains a layer and where it pushes it uphill.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from . import register
from .base import Context, Declarations, Option, Technique, TechniqueError


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Linear and Conv layers, in model order (the order a chain-like forward uses them)."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)
    ]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """cos(a, b) in float64; NaN when either is all zeros (no direction to compare)."""
    a, b = a.double().flatten(), b.double().flatten()
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return math.nan
    return float(a @ b / (na * nb))


class _FeedbackAlignment(Technique):
    """Shared by ``dfa`` and ``bdfa``; subclasses say how B_l is drawn."""

    roles = ("feedback", "backward")
    conflicts = {
        "compress": "the DFA-trained layers take only the projected output error, so "
        "a loss term's gradient would never reach them"
    }
    options: dict[str, Option] = {
        "bp_layers": Option(
            [],
            "layers that keep backpropagation (the output layer always "
            "does), joined by +, e.g. fc1",
            list,
        ),
        "seed": Option(0, "seed of the fixed random feedback matrices", int, minimum=0),
    }

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self._layers: list[str] = []  # modules trained by DFA, in model order
        self._bp: list[str] = []  # modules that keep backpropagation (the output layer last)
        self._taps: dict[str, str] = {}  # DFA module -> the module whose input is its output
        self._inputs: dict[str, torch.Tensor] = {}  # module -> its input in this forward
        self._output: torch.Tensor | None = None
        self._armed = False
        self._feedback: dict[str, torch.Tensor] = {}  # module -> B_l (classes × features)
        self._align: list[list[float]] = []  # per step, per DFA layer
        self._helped: dict[str, float] = {}
        self._handles: list = []

    def draw(self, shape: tuple[int, int], g: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def declare(self, ctx: Context) -> Declarations:
        return Declarations(series={"alignment": ("f8", (len(self._layers),))})

    def setup(self, ctx: Context) -> None:
        layers = weight_layers(ctx.model)
        owners = {id(p) for _, m in layers for p in m.parameters(recurse=False)}
        if len(layers) < 2 or any(id(p) not in owners for p in ctx.model.parameters()):
            raise TechniqueError(
                f"Technique {self.name!r} needs a model whose parameters all sit in two or more "
                "Linear/Conv layers used in a chain (mlp, fc-mnist, lenet, cnn-small); choose "
                "one of those models."
            )
        names = [n for n, _ in layers]
        unknown = [n for n in self.opts["bp_layers"] if n not in names]
        if unknown:
            raise TechniqueError(
                f"Technique {self.name!r} cannot find layer {unknown[0]!r} for bp_layers; this "
                f"model's layers are: {', '.join(names)}."
            )
        self._layers = [n for n in names[:-1] if n not in self.opts["bp_layers"]]
        if not self._layers:
            raise TechniqueError(
                f"Technique {self.name!r} has no hidden layer left to train by feedback "
                "alignment; name fewer layers in bp_layers."
            )
        self._bp = [n for n in names if n not in self._layers]
        self._taps = {n: names[i + 1] for i, n in enumerate(names[:-1]) if n in self._layers}
        modules = dict(layers)
        for n in {*self._taps.values()}:
            self._handles.append(modules[n].register_forward_pre_hook(self._keep_input(n)))
        self._handles.append(modules[names[-1]].register_forward_hook(self._keep_output))
        self._modules = modules
        self._classes = modules[names[-1]].weight.shape[0]

    def _keep_input(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if self._armed and torch.is_grad_enabled():
                self._inputs[name] = args[0]

        return hook

    def _keep_output(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if self._armed and torch.is_grad_enabled():
            self._output = output

    def before_forward(self, ctx: Context) -> None:
        """Catch this step's training forward only (not LCA's measurements or evaluations)."""
        self._inputs, self._output, self._armed = {}, None, True

    def _b(self, name: str, features: int, device: torch.device) -> torch.Tensor:
        b = self._feedback.get(name)
        if b is None or b.shape[1] != features:
            g = torch.Generator().manual_seed(self.opts["seed"] * 1000 + len(self._feedback))
            # 1/√features, as TinyDFA: the feedback signal then has backprop's magnitude
            # (W_outᵀe with He-initialized W_out) and the hidden weights do not blow up.
            b = self.draw((self._classes, features), g) / math.sqrt(features)
            self._feedback[name] = b
        return b.to(device)

    def backward(self, ctx: Context, loss: torch.Tensor) -> bool:
        """True gradients into ``.grad`` (for the alignment), then DFA's in place of the
        hidden layers' ones; every later hook (masks, freezing) sees DFA's gradient."""
        self._armed = False
        out = self._output
        if out is None or any(self._taps[n] not in self._inputs for n in self._layers):
            raise RuntimeError(f"Technique {self.name!r} did not see the training forward pass.")
        (e,) = torch.autograd.grad(loss, out, retain_graph=True)
        dfa: dict[int, torch.Tensor] = {}
        for n in self._layers:
            h = self._inputs[self._taps[n]]
            signal = (e.flatten(1) @ self._b(n, h[0].numel(), e.device)).view_as(h)
            params = [p for p in self._modules[n].parameters(recurse=False) if p.requires_grad]
            if not params:
                continue
            grads = torch.autograd.grad(
                h, params, grad_outputs=signal.to(h.dtype), retain_graph=True, allow_unused=True
            )
            for p, g in zip(params, grads, strict=True):
                dfa[id(p)] = torch.zeros_like(p) if g is None else g
        loss.backward()
        row = []
        for n in self._layers:
            w = self._modules[n].weight
            true, mine = w.grad, dfa.get(id(w))
            row.append(cosine(mine, true) if true is not None and mine is not None else math.nan)
            for p in self._modules[n].parameters(recurse=False):
                if id(p) in dfa:
                    p.grad = dfa[id(p)]
        self._align.append(row)
        self._inputs, self._output = {}, None
        return True

    def after_step(self, ctx: Context, row: dict[str, object]) -> None:
        row[self.path("alignment")] = (
            self._align[-1] if self._align else ([math.nan] * len(self._layers))
        )
        cum = ctx.cumulative_lca
        if cum:
            self._helped = {
                n: float((cum[f"{n}.weight"] < 0).double().mean())
                for n in [*self._layers, *self._bp]
                if f"{n}.weight" in cum
            }

    def summary(self) -> dict[str, Any]:
        a = torch.tensor(self._align, dtype=torch.float64) if self._align else None
        k = max(1, len(self._align) // 5)
        first = float(a[:k].nanmean()) if a is not None else math.nan
        last = float(a[-k:].nanmean()) if a is not None else math.nan
        out: dict[str, Any] = {
            "dfa_layers": "+".join(self._layers),
            "bp_layers": "+".join(self._bp),
            "alignment_first": first,
            "alignment_last": last,
        }
        # Cumulative LCA is read after each step, so this is "helped over the whole run".
        out.update({f"helped_{n}": v for n, v in self._helped.items()})
        return out


@register
class DirectFeedbackAlignment(_FeedbackAlignment):
    """Hidden layers learn from a fixed Gaussian projection of the output error."""

    name = "dfa"
    description = (
        "Direct feedback alignment: hidden layers learn from a fixed random "
        "projection of the output error instead of backpropagation."
    )

    def draw(self, shape: tuple[int, int], g: torch.Generator) -> torch.Tensor:
        return torch.randn(shape, generator=g)


@register
class BinaryDirectFeedbackAlignment(_FeedbackAlignment):
    """DFA with feedback weights ±1."""

    name = "bdfa"
    description = "Binary direct feedback alignment: DFA with fixed random feedback weights of ±1."

    def draw(self, shape: tuple[int, int], g: torch.Generator) -> torch.Tensor:
        return torch.randint(0, 2, shape, generator=g).float() * 2 - 1
