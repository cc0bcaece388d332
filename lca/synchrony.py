"""Is learning synchronized across layers? Peak coincidence against a circular-shift null.

The LCA paper (Lan et al. 2019) observed that the per-layer LCA of a network peaks on the same
iterations ("learning is synchronized across layers") but did not publish the statistic behind
that sentence. This module defines one (ours), simple enough to explain in class:

1. **Series.** For each layer (parameter tensor) l take its per-step LCA a_l(t), t = 0..T-1, over
   optimizer steps only (the caller drops intervention segments such as prune events, which move
   every layer at once by construction).
2. **Score.** s_l(t) = |a_l(t)|. With ``window`` > 1 the score is divided by the layer's local
   level, the centred moving mean of |a_l| over ``window`` steps. Every layer learns most early in
   training; without this, that shared slow trend alone would make peaks coincide. Detrended,
   a peak means "a big step *for this layer at this time*".
3. **Peaks.** P_l = the n = max(1, round(q·T)) steps with the largest score (q =
   ``top_fraction``, e.g. the top 5 %; ties go to the earlier step). Layers whose series has fewer
   than n non-zero steps (frozen or never moved) are left out: their "peaks" would be arbitrary.
4. **Coincidence.** C = mean over all pairs of layers (l, m) of |P_l ∩ P_m| / n, the fraction
   of one layer's peak steps that are also peak steps of the other. Every layer has n peaks, so
   the measure is symmetric; C = 1 when all layers peak on exactly the same steps. With c(t) the
   number of layers peaking at step t, Σ_pairs |P_l ∩ P_m| = Σ_t c(t)(c(t) − 1)/2, which makes
   the null cheap.
5. **Null.** Shift each layer's peak set by its own independent, uniformly random circular offset
   (mod T), ``shifts`` times with a seeded generator. A shift keeps each layer's number and
   spacing of peaks and destroys only their alignment across layers. Under the null, E[C] ≈ n/T.
6. **Report.** The observed C, the null mean and standard deviation, z = (C − mean)/sd, and the
   one-sided p-value p = (1 + #{null ≥ C}) / (1 + shifts) (never 0: with 1000 shifts the
   smallest possible p is about 0.001).

No Streamlit here: pages, notebooks and tests call :func:`synchrony`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SynchronyError",
    "SynchronyResult",
    "coincidence",
    "local_level",
    "peak_steps",
    "synchrony",
]

MIN_STEPS = 8  # fewer steps than this cannot say anything about coincidence


class SynchronyError(ValueError):
    """The series cannot be tested (too short, fewer than two usable layers); one sentence."""


@dataclass(frozen=True)
class SynchronyResult:
    """The synchrony test of one run (see the module docstring for the definitions)."""

    observed: float  # C: mean pairwise fraction of coinciding peak steps
    null_mean: float
    null_sd: float
    z: float  # (observed − null_mean) / null_sd (inf when the null has no spread)
    p: float  # one-sided, (1 + #{null ≥ observed}) / (1 + shifts)
    expected: float  # n / T, the chance level
    null: np.ndarray  # (shifts,) C under independent circular shifts
    peaks: np.ndarray  # (L_used, T) bool, each row has exactly n True
    layers: np.ndarray  # (L_used,) indices of the layers used, into the input's columns
    pairwise: np.ndarray  # (L_used, L_used) |P_l ∩ P_m| / n (diagonal 1)
    peaks_per_layer: int  # n
    num_steps: int  # T
    top_fraction: float
    window: int
    shifts: int


def local_level(abs_series: np.ndarray, window: int) -> np.ndarray:
    """Centred moving mean of each column over ``window`` steps (shorter windows at the ends)."""
    a = np.asarray(abs_series, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    t = a.shape[0]
    w = max(1, int(window))
    half = w // 2
    c = np.concatenate([np.zeros((1, a.shape[1])), np.cumsum(a, axis=0)], axis=0)
    lo = np.clip(np.arange(t) - half, 0, t)
    hi = np.clip(np.arange(t) + (w - half), 0, t)
    return (c[hi] - c[lo]) / (hi - lo)[:, None]


def peak_steps(
    series: np.ndarray, top_fraction: float = 0.05, window: int = 0
) -> tuple[np.ndarray, np.ndarray, int]:
    """Peak steps of each layer: ``(peaks (L_used, T) bool, used layer indices, n)``.

    ``series`` is (T, L) per-step LCA. Each used layer gets exactly n = max(1, round(q·T))
    peaks, the steps with the largest (optionally detrended) |LCA|.
    """
    a = np.asarray(series, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise SynchronyError(f"The series must be steps × layers, not an array of shape {a.shape}.")
    if not 0 < top_fraction < 1:
        raise SynchronyError(f"top_fraction must be between 0 and 1, not {top_fraction}.")
    t, nl = a.shape
    n = max(1, int(round(top_fraction * t)))
    score = np.abs(np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0))
    if window and window > 1:
        level = local_level(score, window)
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where(level > 0, score / level, 0.0)
    used = np.flatnonzero((score > 0).sum(axis=0) >= n)
    peaks = np.zeros((len(used), t), dtype=bool)
    for row, col in enumerate(used):
        # Stable sort on -score: ties go to the earlier step, so results are reproducible.
        order = np.argsort(-score[:, col], kind="stable")[:n]
        peaks[row, order] = True
    return peaks, used, n


def coincidence(peaks: np.ndarray) -> float:
    """C: mean over pairs of layers of the fraction of peak steps they share (rows: layers)."""
    p = np.asarray(peaks, dtype=bool)
    nl = p.shape[0]
    n = int(p[0].sum()) if nl else 0
    if nl < 2 or n == 0:
        return float("nan")
    c = p.sum(axis=0).astype(np.int64)
    pairs = nl * (nl - 1) / 2
    return float((c * (c - 1) // 2).sum() / (pairs * n))


def _null(positions: np.ndarray, t: int, shifts: int, rng: np.random.Generator) -> np.ndarray:
    """C for ``shifts`` independent random circular shifts of each layer's peak positions."""
    nl, n = positions.shape
    pairs = nl * (nl - 1) / 2
    out = np.empty(shifts, dtype=np.float64)
    batch = max(1, min(shifts, 4_000_000 // max(t, 1)))
    done = 0
    while done < shifts:
        b = min(batch, shifts - done)
        off = rng.integers(0, t, size=(b, nl, 1))
        shifted = (positions[None, :, :] + off) % t  # (b, L, n)
        flat = shifted + (np.arange(b, dtype=np.int64) * t)[:, None, None]
        counts = np.bincount(flat.ravel(), minlength=b * t).reshape(b, t)
        out[done : done + b] = (counts * (counts - 1) // 2).sum(axis=1) / (pairs * n)
        done += b
    return out


def synchrony(
    series: np.ndarray,
    *,
    top_fraction: float = 0.05,
    window: int = 25,
    shifts: int = 1000,
    seed: int = 0,
) -> SynchronyResult:
    """Test whether the layers' LCA peaks coincide more often than chance (see module doc).

    ``series``: (T, L) per-step LCA per layer (optimizer steps only). Raises SynchronyError with
    one sentence when the run is too short or fewer than two layers ever moved.
    """
    a = np.asarray(series, dtype=np.float64)
    if a.ndim != 2:
        raise SynchronyError(f"The series must be steps × layers, not an array of shape {a.shape}.")
    t = a.shape[0]
    if t < MIN_STEPS:
        raise SynchronyError(
            f"Synchrony needs at least {MIN_STEPS} optimizer steps; this run has {t} so far."
        )
    if shifts < 1:
        raise SynchronyError(f"shifts must be at least 1, not {shifts}.")
    peaks, used, n = peak_steps(a, top_fraction, window)
    if len(used) < 2:
        raise SynchronyError(
            "Synchrony compares layers, but fewer than two layers changed on enough steps "
            f"({n} needed) to have peaks."
        )
    positions = np.stack([np.flatnonzero(row) for row in peaks])  # (L, n), each row n long
    observed = coincidence(peaks)
    null = _null(positions, t, int(shifts), np.random.default_rng(seed))
    mean = float(null.mean())
    sd = float(null.std(ddof=1)) if shifts > 1 else 0.0
    if sd > 0:
        z = (observed - mean) / sd
    else:
        z = 0.0 if math.isclose(observed, mean) else math.copysign(math.inf, observed - mean)
    p = float((1 + np.count_nonzero(null >= observed - 1e-12)) / (1 + shifts))
    pf = peaks.astype(np.float64)
    pairwise = (pf @ pf.T) / n
    return SynchronyResult(
        observed=observed,
        null_mean=mean,
        null_sd=sd,
        z=float(z),
        p=p,
        expected=n / t,
        null=null,
        peaks=peaks,
        layers=used,
        pairwise=pairwise,
        peaks_per_layer=n,
        num_steps=t,
        top_fraction=float(top_fraction),
        window=int(window),
        shifts=int(shifts),
    )
