"""Layer-wise Optimal Brain Surgeon (L-OBS; Dong, Chen, Pan, NeurIPS 2017): the maths only.

For one layer with augmented input x̃ = [x; 1] (the 1 carries the bias), the layer-wise error of
changing a row w_c (one output's incoming weights and its bias) by δ is
(1/n) Σ ((w_c + δ)ᵀ x̃ − w_cᵀ x̃)² = δᵀ H δ with H = (1/n) Σ x̃ x̃ᵀ, the same H for every output.
Removing weight q of that row at least cost gives (Optimal Brain Surgeon, Hassibi & Stork 1993)

    L_q = w_q² / (2 [H⁻¹]_qq)        δ = −(w_q / [H⁻¹]_qq) · H⁻¹[:, q]

so the row's survivors (bias included) compensate for the removed weight. Two ways to remove many:

- ``prune_rank_once``: the published procedure: score every weight once with one H⁻¹, remove the
  lowest-scoring set, apply each removal's compensation with that same H⁻¹ (never updated), then
  zero the removed weights. Cheap, but the compensations ignore one another.
- ``prune_obs_update``: after each removal, H⁻¹ ← H⁻¹ − H⁻¹[:, q] H⁻¹[q, :] / [H⁻¹]_qq (the inverse
  Hessian of the surviving coordinates, as in Optimal Brain Compression, Frantar & Alistarh
  2022), rescore, repeat: exact greedy OBS per row. Which rows lose how many weights is chosen as
  in OBC: every row is traced greedily to the end, and the layer's k smallest removal costs
  decide each row's count; the rows are then replayed to their counts.

Everything here works on a layer matrix ``W`` of shape (rows, m) whose last column may be the
bias; ``candidates`` says which entries may be removed (never the bias, never a weight already
pruned). Computations run in float64: H⁻¹ of correlated inputs is ill-conditioned.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

_TINY = 1e-300
_CHUNK_ELEMENTS = 1 << 23  # per-row inverse Hessians held at once in obs-update (64 MiB)


class LOBSError(ValueError):
    """A layer L-OBS cannot handle (grouped or non-2-D convolutions, string padding)."""


def supports(module: nn.Module) -> str | None:
    """None if L-OBS can prune ``module``'s weight, else one sentence saying why not."""
    if isinstance(module, nn.Linear):
        return None
    if isinstance(module, nn.Conv2d) and not isinstance(module, nn.modules.conv._ConvTransposeNd):
        if module.groups != 1:
            return "grouped convolutions are not supported"
        if module.padding_mode != "zeros":
            return f"padding_mode {module.padding_mode!r} is not supported"
        if isinstance(module.padding, str) and module.padding != "valid":
            return f"padding {module.padding!r} is not supported"
        return None
    return f"{type(module).__name__} layers are not supported (only Linear and Conv2d)"


def layer_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows x̃ the layer's weight multiplies: inputs (Linear) or im2col patches (Conv2d).

    Augmented with a trailing 1 when the layer has a bias, so row c of [W, b] times x̃ is the
    layer's output c.
    """
    if isinstance(module, nn.Linear):
        rows = x.reshape(-1, module.in_features)
    else:
        padding = 0 if isinstance(module.padding, str) else module.padding
        patches = F.unfold(
            x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride
        )  # (N, C·kh·kw, L), channel-major like weight.reshape(out, -1)
        rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    rows = rows.double()
    if module.bias is not None:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    return rows


def layer_matrix(module: nn.Module) -> torch.Tensor:
    """[W, b] as (out, m) float64: one row per output unit, the bias as the last column."""
    w = module.weight.detach().reshape(module.weight.shape[0], -1).double()
    if module.bias is not None:
        w = torch.cat([w, module.bias.detach().double().reshape(-1, 1)], dim=1)
    return w


class HessianAccumulator:
    """H = (1/n) Σ x̃ x̃ᵀ accumulated over batches of rows, in float64."""

    def __init__(self, dim: int, device: torch.device | str | None = None) -> None:
        self.sum = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.to(self.sum.device, torch.float64)
        self.sum.addmm_(rows.T, rows)
        self.count += rows.shape[0]

    def value(self) -> torch.Tensor:
        return self.sum / max(1, self.count)


def damped(h: torch.Tensor, damp: float) -> torch.Tensor:
    """H + λI with λ = damp · mean(diag H): makes H invertible when inputs are (near) dependent.

    Constant-zero inputs (the border pixels of digits) make H singular; their [H⁻¹]_qq becomes
    1/λ, so their weights score ~0 and go first, which is right: they never affect the output.
    """
    scale = float(h.diagonal().mean())
    lam = damp * scale if scale > 0 else damp
    return h + lam * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)


def spd_inverse(h: torch.Tensor) -> torch.Tensor:
    """Inverse of a (batch of) symmetric positive-definite matrices by Cholesky."""
    chol, info = torch.linalg.cholesky_ex(h)
    if bool((info != 0).any()):  # not numerically SPD: add a little more damping, once
        eye = torch.eye(h.shape[-1], dtype=h.dtype, device=h.device)
        scale = h.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1.0)[..., None, None]
        chol = torch.linalg.cholesky(h + 1e-6 * scale * eye)
    inv = torch.cholesky_inverse(chol)
    return 0.5 * (inv + inv.transpose(-1, -2))


def scores(w: torch.Tensor, hinv_diag: torch.Tensor) -> torch.Tensor:
    """L-OBS removal cost L_q = w_q² / (2 [H⁻¹]_qq) for every entry of ``w`` (rows, m)."""
    return w * w / (2 * hinv_diag.clamp_min(_TINY))


def _smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the k smallest entries; ties broken by position (deterministic)."""
    order = torch.sort(values.flatten(), stable=True).indices
    return order[:k]


def prune_rank_once(
    w: torch.Tensor, hinv: torch.Tensor, candidates: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank once, compensate with the one H⁻¹: the official L-OBS procedure.

    Returns (new [W, b], removed mask). Removals are applied in ascending score order, each with
    the row's current value of w_q; removed entries are set to exactly 0 at the end (a later
    compensation would otherwise make an earlier removed weight non-zero again).
    """
    w = w.clone()
    rows, m = w.shape
    s = scores(w, hinv.diagonal()).masked_fill(~candidates, float("inf"))
    k = min(k, int(candidates.sum()))
    removed = torch.zeros_like(candidates)
    if k <= 0:
        return w, removed
    flat = _smallest(s, k)  # in ascending score order
    r, q = flat // m, flat % m
    removed[r, q] = True
    # Per row, its removals in score order: a stable sort by row keeps the score order inside.
    by_row = torch.sort(r, stable=True).indices
    r, q = r[by_row], q[by_row]
    counts = torch.bincount(r, minlength=rows)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(r), device=w.device) - starts[r]
    table = torch.full((rows, int(counts.max())), -1, dtype=torch.long, device=w.device)
    table[r, rank] = q
    hdiag = hinv.diagonal()
    for j in range(table.shape[1]):
        act = table[:, j] >= 0
        rr, qq = act.nonzero().flatten(), table[act, j]
        coef = w[rr, qq] / hdiag[qq].clamp_min(_TINY)
        w[rr] -= coef[:, None] * hinv[qq]  # H⁻¹ is symmetric: row q = column q
    w[removed] = 0.0
    return w, removed


def _row_inverses(h: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """Per row, the inverse of H restricted to its alive coordinates (0 at the dead ones)."""
    if bool((alive == alive[:1]).all()):  # one pattern (the usual first event): invert once
        a = alive[0].double()
        outer = a[:, None] * a[None, :]
        inv = spd_inverse(h * outer + torch.diag(1.0 - a)) * outer
        return inv.expand(alive.shape[0], -1, -1).clone()
    a = alive.double()
    outer = a[:, :, None] * a[:, None, :]
    hb = h * outer + torch.diag_embed(1.0 - a)  # dead coordinates decoupled, unit diagonal
    return spd_inverse(hb) * outer


def _greedy(
    w: torch.Tensor, hinv: torch.Tensor, candidates: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy OBS per row with H⁻¹ downdates, row c stopping after counts[c] removals.

    ``w`` (B, m), ``hinv`` (B, m, m) and ``candidates`` (B, m) are modified in place.
    Returns (w, removed mask, cost of each removal (B, steps), inf where none).
    """
    b, m = w.shape
    steps = int(counts.max()) if b else 0
    ar = torch.arange(b, device=w.device)
    removed = torch.zeros_like(candidates)
    costs = torch.full((b, steps), float("inf"), dtype=w.dtype, device=w.device)
    for j in range(steps):
        d = hinv.diagonal(dim1=1, dim2=2)
        s = (w * w / d.clamp_min(_TINY)).masked_fill(~candidates, float("inf"))
        q = s.argmin(1)
        sq = s[ar, q]
        act = (counts > j) & torch.isfinite(sq)
        if not bool(act.any()):
            break
        hqq = torch.where(act, hinv[ar, q, q], torch.ones_like(sq)).clamp_min(_TINY)
        col = hinv[ar, :, q] * act[:, None]  # (B, m); zero for rows that are done
        coef = w[ar, q] / hqq
        w -= coef[:, None] * col
        hinv -= col[:, :, None] * col[:, None, :] / hqq[:, None, None]
        ra, qa = ar[act], q[act]
        w[ra, qa] = 0.0
        hinv[ra, qa, :] = 0.0
        hinv[ra, :, qa] = 0.0
        candidates[ra, qa] = False
        removed[ra, qa] = True
        costs[ra, j] = sq[act] / 2
    return w, removed, costs


def prune_obs_update(
    w: torch.Tensor, h: torch.Tensor, alive: torch.Tensor, candidates: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy OBS with H⁻¹ updated after every removal (Optimal Brain Compression's order).

    ``h`` is the damped Hessian (m, m); ``alive`` (rows, m) marks coordinates not already pruned
    (the bias column is alive and not a candidate). Each row starts from the inverse of H over its
    alive coordinates, so compensation never revives an earlier-pruned weight. Returns
    (new [W, b], removed mask).
    """
    rows, m = w.shape
    k = min(k, int(candidates.sum()))
    out, removed = w.clone(), torch.zeros_like(candidates)
    if k <= 0:
        return out, removed
    chunk = max(1, _CHUNK_ELEMENTS // (m * m))
    # Pass 1: trace every row to the end to learn the cost of each successive removal.
    traces = []
    for lo in range(0, rows, chunk):
        sl = slice(lo, lo + chunk)
        cand = candidates[sl].clone()
        _, _, costs = _greedy(
            w[sl].clone(), _row_inverses(h, alive[sl]), cand, candidates[sl].sum(1)
        )
        traces.append(costs)
    width = max(t.shape[1] for t in traces)
    costs = torch.cat(
        [F.pad(t, (0, width - t.shape[1]), value=float("inf")) for t in traces], dim=0
    )
    per_row = torch.bincount(_smallest(costs, k) // max(1, width), minlength=rows)
    # Pass 2: replay each row to its count (the same deterministic greedy path).
    for lo in range(0, rows, chunk):
        sl = slice(lo, lo + chunk)
        wr, rem, _ = _greedy(
            w[sl].clone(), _row_inverses(h, alive[sl]), candidates[sl].clone(), per_row[sl]
        )
        out[sl], removed[sl] = wr, rem
    out[removed] = 0.0
    return out, removed


def reconstruction_error(w_old: torch.Tensor, w_new: torch.Tensor, h: torch.Tensor) -> float:
    """Σ_c δ_cᵀ H δ_c = mean over samples of ‖[W, b] x̃ − [W', b'] x̃‖² (undamped ``h``)."""
    d = (w_new - w_old).double()
    return float(torch.einsum("ci,ij,cj->", d, h.double(), d))
