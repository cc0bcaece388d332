"""CoNNTrA-style discrete coordinate descent for ternary weights (Date, Carothers, Mitchell,
Hendler, Magdon-Ismail; arXiv 2009.00540), **reconstructed from the abstract**: the paper body
was not available, so the rules below are ours (SEED-TECHNIQUES §4.4).

Every Linear/Conv weight lives in {−α, 0, +α}·(one α per tensor): ``setup`` ternarizes the
initial weights (threshold 0.7·mean|w|, α = mean |w| over the kept entries) and the stored
weights stay on that set; there is no real-valued latent copy. Each step:

1. the loop's backward gives ∇L on the minibatch;
2. candidates are the coordinates where one level in −sign(g) stays inside {−1, 0, +1};
   the ``moves`` candidates with the largest |g| are taken, in ``blocks`` groups by |g|;
3. each group is applied and kept only if the minibatch loss drops, else undone.

Biases (and any other parameters) are trained by the configured optimizer. The weight moves are
ordinary weight changes for LCA (the loss is smooth along each straight segment between ternary
points). Per step the accepted and rejected moves are recorded; ``summary`` gives the memory of
the ternary model (2 bits per weight plus one float32 α per tensor) against float32.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from . import register
from .base import Context, Declarations, Option, Technique
from .lowbit import full_name, layers


@register
class CoNNTrA(Technique):
    """Ternary weights trained by accepted one-level coordinate moves."""

    name = "conntra"
    roles = ("weight-format",)
    reconstructed = True
    description = (
        "CoNNTrA-style ternary training: weights in {-a, 0, +a} per tensor move one level at "
        "a time along the gradient, each block of moves kept only if the batch loss drops."
    )
    options: dict[str, Option] = {
        "moves": Option(
            64, "coordinates tried per step (largest |gradient| first)", int, minimum=1
        ),
        "blocks": Option(
            4,
            "groups the moves are tried in (one loss evaluation each)",
            int,
            minimum=1,
            maximum=1024,
        ),
        "threshold": Option(
            0.7,
            "initial ternarization: |w| <= threshold·mean|w| becomes 0",
            float,
            minimum=0.0,
            maximum=10.0,
        ),
    }

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self.targets: list[str] = []
        self.alpha: dict[str, float] = {}
        self._accepted: list[int] = []
        self._rejected: list[int] = []
        self._row = (0, 0)
        self._n_weights = 0
        self._n_other = 0

    def declare(self, ctx: Context) -> Declarations:
        return Declarations(series={"accepted": ("i8", ()), "rejected": ("i8", ())})

    def setup(self, ctx: Context) -> None:
        params = ctx.params()
        self.targets = [
            n for n in (full_name(m, "weight") for m, _ in layers(ctx.model)) if n in params
        ]
        with torch.no_grad():
            for n in self.targets:
                w = params[n]
                a = w.abs()
                keep = a > self.opts["threshold"] * a.mean()
                alpha = float((a * keep).sum() / keep.sum().clamp(min=1))
                self.alpha[n] = alpha if alpha > 0 else 1.0
                w.copy_(torch.sign(w) * keep * self.alpha[n])
        self._n_weights = sum(params[n].numel() for n in self.targets)
        self._n_other = sum(p.numel() for p in params.values()) - self._n_weights

    def codes(self, name: str, w: torch.Tensor) -> torch.Tensor:
        return torch.round(w.detach() / self.alpha[name])

    def _batch_loss(self, ctx: Context) -> float:
        assert ctx.batch is not None
        xb, yb = ctx.batch
        with torch.no_grad():
            return float(ctx.loss_fn(ctx.model(xb), yb))

    @torch.no_grad()
    def optimizer_step(self, ctx: Context) -> bool:
        params = ctx.params()
        # Candidates: (|g|, tensor, flat index, new code), one level against the gradient.
        scores, owners, index, new_codes = [], [], [], []
        for t, n in enumerate(self.targets):
            p = params[n]
            if p.grad is None:
                continue
            g = p.grad.reshape(-1)
            c = self.codes(n, p).reshape(-1)
            nxt = c - torch.sign(g)
            ok = (g != 0) & (nxt.abs() <= 1)
            idx = ok.nonzero().squeeze(1)
            scores.append(g.abs()[idx])
            owners.append(torch.full_like(idx, t))
            index.append(idx)
            new_codes.append(nxt[idx])
        accepted = rejected = 0
        if scores:
            s, own, ix, nc = (torch.cat(v) for v in (scores, owners, index, new_codes))
            order = s.argsort(descending=True)[: self.opts["moves"]]
            if len(order):
                base = self._batch_loss(ctx)
                for block in order.chunk(min(self.opts["blocks"], len(order))):
                    undo = []
                    for t in own[block].unique().tolist():
                        n = self.targets[t]
                        flat = params[n].data.view(-1)
                        sel = block[own[block] == t]
                        undo.append((flat, ix[sel], flat[ix[sel]].clone()))
                        flat[ix[sel]] = nc[sel] * self.alpha[n]
                    loss = self._batch_loss(ctx)
                    if loss < base:
                        base = loss
                        accepted += len(block)
                    else:
                        for flat, where, old in undo:
                            flat[where] = old
                        rejected += len(block)
        for n in self.targets:  # the optimizer steps everything else
            params[n].grad = None
        ctx.optimizer.step()
        self._row = (accepted, rejected)
        return True

    def after_step(self, ctx: Context, row: dict[str, object]) -> None:
        a, r = self._row
        self._accepted.append(a)
        self._rejected.append(r)
        row[self.path("accepted")] = a
        row[self.path("rejected")] = r
        self._row = (0, 0)

    def memory(self) -> dict[str, float]:
        """Bytes of the ternary model (2 bits per weight, float32 α and other parameters)."""
        ternary = math.ceil(2 * self._n_weights / 8) + 4 * len(self.targets) + 4 * self._n_other
        full = 4 * (self._n_weights + self._n_other)
        return {
            "bytes_ternary": ternary,
            "bytes_float32": full,
            "compression_vs_float32": full / ternary if ternary else 1.0,
        }

    def summary(self) -> dict[str, Any]:
        total = sum(self._accepted) + sum(self._rejected)
        return {
            "reconstructed": True,
            "bits": 2,
            "values": 3,
            "alpha": dict(self.alpha),
            "moves_accepted": sum(self._accepted),
            "moves_rejected": sum(self._rejected),
            "fraction_accepted": sum(self._accepted) / total if total else 0.0,
            "weight_bits_stored": 2,
            "optimizer_state_bits": 0,  # no latent weights, no momentum for the weights
            "speed": "not claimed: each block costs one extra forward pass of the batch",
            **self.memory(),
        }
