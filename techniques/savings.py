"""What each technique saves, honestly: bits per weight (while training and as deployed), bits of
optimizer state per weight, bits per activation, and whether any time saving is real.

One table for every registered technique, read from the technique's name and its run summary
(``summary()`` as stored in the run file), so the benchmark and the Techniques page say the
same thing. The numbers are per parameter or activation *value* relative to float32 (32 bits);
techniques whose numerics are simulated in float32 are marked ``simulated`` and claim no speed:
their memory figures are what the format would use on hardware that stores it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

FLOAT32 = 32.0


@dataclass(frozen=True)
class Saving:
    """Bits per value; ``time`` says whether a time saving is real ('measured') or not."""

    weight_bits_training: float = FLOAT32
    weight_bits_deployed: float = FLOAT32
    optimizer_state_bits: float = FLOAT32  # per weight, per state tensor (momentum, Adam m/v)
    activation_bits: float = FLOAT32
    simulated: bool = False
    time: str = "none"  # 'measured': real, see the benchmark; 'none': no time saving claimed
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _num(summary: dict[str, Any], key: str, default: float) -> float:
    value = summary.get(key)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return default
    return value if math.isfinite(value) else default


def saving(name: str, summary: dict[str, Any] | None = None) -> Saving:
    """The saving of technique ``name`` given its run summary (defaults where absent)."""
    s = summary or {}
    if name in ("wus", "wus-lr"):
        frac = _num(s, "fraction_updates_skipped", 0.0)
        return Saving(
            time="measured",
            note=f"skips {frac:.0%} of weight updates; with no_grad "
            "the skipped weight gradients are not computed (real time)",
        )
    if name == "freeze":
        frac = _num(s, "fraction_params_frozen", 0.0)
        return Saving(
            optimizer_state_bits=FLOAT32 * (1 - frac),
            time="measured",
            note=f"{frac:.0%} of parameters frozen: no gradient, no optimizer state",
        )
    if name.startswith("prune"):
        sp = _num(s, "sparsity", 0.0)
        return Saving(
            weight_bits_deployed=FLOAT32 * (1 - sp),
            simulated=True,
            note=f"{sp:.0%} sparse; masks are dense while training, so only a "
            "sparse format after training saves memory (indices not counted)",
        )
    if name == "compress":
        return Saving(note="a regularizer: saves nothing by itself, it makes pruning cheaper")
    if name == "amp":
        return Saving(
            activation_bits=16.0,
            time="measured",
            note="autocast keeps float32 weights and optimizer state; activations "
            "and matmuls in 16 bits (real on GPUs with tensor cores)",
        )
    if name in ("quantize", "binary", "ternary"):
        bits = _num(s, "bits", {"binary": 1.0, "ternary": 2.0}.get(name, 8.0))
        return Saving(
            weight_bits_deployed=bits,
            simulated=True,
            note="float32 latent weights while training (STE); the deployed "
            f"weights need {bits:g} bit(s)",
        )
    if name == "fp8":
        stored = _num(s, "weight_bits_stored", 16.0)
        act = _num(s, "activation_bits", 8.0)
        return Saving(
            weight_bits_training=stored,
            weight_bits_deployed=act,
            optimizer_state_bits=_num(s, "optimizer_state_bits", 16.0),
            activation_bits=act,
            simulated=True,
            note="weights stored in 1-6-9 (no float32 master), momentum in 1-6-9, "
            "GEMM operands in 1-5-2",
        )
    if name == "fixed-point":
        acc = _num(s, "accumulator_bits_mean", FLOAT32)
        return Saving(
            weight_bits_training=acc,
            weight_bits_deployed=_num(s, "weight_bits_mean", FLOAT32),
            activation_bits=_num(s, "activation_bits_mean", FLOAT32),
            simulated=True,
            note="per-tensor fixed point; momentum kept in float32",
        )
    if name == "adaptive-loss-scaling":
        return Saving(
            simulated=True,
            note="float16 gradients (simulated by casting); weights, "
            "optimizer state and activations stay float32",
        )
    if name == "bnn":
        return Saving(
            weight_bits_deployed=1.0,
            activation_bits=1.0,
            simulated=True,
            note="float32 latent weights while training; 1-bit weights and hidden "
            "activations in the forward pass",
        )
    if name == "conntra":
        return Saving(
            weight_bits_training=2.0,
            weight_bits_deployed=2.0,
            optimizer_state_bits=0.0,
            simulated=True,
            note="ternary weights are the only copy (stored here in float32 tensors); "
            "no optimizer state for the weights; biases float32",
        )
    return Saving(note="no saving recorded for this technique")


def savings_rows(names: list[str], reported: dict[str, dict[str, Any]] | None) -> list[dict]:
    """One table row per technique of a run: its saving, from its reported summary."""
    rows = []
    for name in names:
        v = saving(name, (reported or {}).get(name))
        rows.append(
            {
                "technique": name,
                "weight bits (training)": v.weight_bits_training,
                "weight bits (deployed)": v.weight_bits_deployed,
                "optimizer state bits": v.optimizer_state_bits,
                "activation bits": v.activation_bits,
                "numerics": "simulated" if v.simulated else "real",
                "time saving": "measured (see benchmarks)"
                if v.time == "measured"
                else "none claimed",
                "what": v.note,
            }
        )
    return rows
