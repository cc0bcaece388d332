"""Training-step time with and without each technique (LCA time excluded), on one machine.

Every run trains the same model on the same data from the same seed; the training step's time
(forward, backward, optimizer step and the technique's hooks — not the LCA measurement) comes
from the run file's ``steps/seconds_train`` series. Prints, per technique: mean step time, the
saving against the baseline, and what the technique reports it did (its summary in the file).
Then, per technique, what it saves in bits per weight (training / deployed), per weight of
optimizer state and per activation (``techniques.savings``); techniques whose numerics are
simulated in float32 are marked so, and their step time is a cost, never a saving.

    python benchmarks/techniques.py [--model cnn-small] [--steps 200] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import lca  # noqa: E402
from lca.config import RunConfig  # noqa: E402
from lca.train import run  # noqa: E402
from techniques.savings import saving  # noqa: E402

# Settings that make each technique act within a short benchmark run.
CASES: list[tuple[str, list[dict]]] = [
    ("baseline", []),
    ("wus", [{"name": "wus", "warmup": 20, "window": 10, "threshold": 0.02, "skip_windows": 4}]),
    (
        "wus-lr",
        [{"name": "wus-lr", "warmup": 20, "window": 10, "threshold": 0.02, "skip_windows": 4}],
    ),
    ("freeze", [{"name": "freeze", "layers": ["out"], "start": 0}]),
    ("prune-magnitude", [{"name": "prune-magnitude", "sparsity": 0.8, "start": 20}]),
    ("prune-lobs", [{"name": "prune-lobs", "sparsity": 0.8, "start": 20}]),
    ("prune-lca", [{"name": "prune-lca", "sparsity": 0.8, "start": 20}]),
    ("amp", [{"name": "amp"}]),
    ("quantize", [{"name": "quantize", "bits": 8}]),
    ("binary", [{"name": "binary"}]),
    ("ternary", [{"name": "ternary"}]),
    ("compress", [{"name": "compress"}]),
    ("fp8", [{"name": "fp8", "loss_scale": 256}]),
    # chunk-based accumulation of every GEMM (forward, grad_input, grad_weight), simulated
    ("fp8-chunk64", [{"name": "fp8", "loss_scale": 256, "chunk": 64}]),
    ("fixed-point", [{"name": "fixed-point"}]),
    ("adaptive-loss-scaling", [{"name": "adaptive-loss-scaling"}]),
    ("bnn", [{"name": "bnn", "residual": False}]),
    ("conntra", [{"name": "conntra"}]),
]
# Config changes a case needs (fp8 performs the SGD update itself).
OVERRIDES: dict[str, dict] = {
    "fp8": {"optimizer": "momentum"},
    "fp8-chunk64": {"optimizer": "momentum"},
}
# (case, the case it is a cost over): printed as a time ratio after the table.
RATIOS = (("fp8-chunk64", "fp8"),)

# Summary entries worth printing: what the technique did or saved.
SAVED_KEYS = (
    "fraction_updates_skipped",
    "steps_skipped",
    "sparsity",
    "bits",
    "params_frozen",
    "steps_skipped_by_scaler",
    "dtype",
    "compression_vs_float32",
    "final",
)


def describe_saving(summary: dict) -> str:
    parts = []
    for key in SAVED_KEYS:
        value = summary.get(key)
        if value is None or isinstance(value, dict | list):
            continue
        parts.append(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}")
    return ", ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mlp")
    ap.add_argument(
        "--hidden",
        default="1024,1024",
        help="mlp hidden sizes: wide enough that compute, not Python, dominates",
    )
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", nargs="*", help="technique names to run (default: all)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 keeps timings steady on a shared machine)",
    )
    ap.add_argument("--repeats", type=int, default=2, help="runs per technique; fastest kept")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    cases = [c for c in CASES if not args.only or c[0] in args.only or c[0] == "baseline"]
    label = f"mlp {args.hidden}" if args.model == "mlp" else args.model
    print(
        f"{label} on {args.dataset}, {args.steps} steps, device {args.device}, "
        f"{args.threads} thread(s), fastest of {args.repeats}; "
        "train step = forward + backward + optimizer + technique hooks (no LCA)"
    )
    print(f"{'technique':<23}{'step ms':>9}{'vs baseline':>13}  what it did")
    baseline = None
    times: dict[str, float] = {}
    bits_rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, specs in cases:
            options = (
                {"hidden": [int(h) for h in args.hidden.split(",")]}
                if (args.model == "mlp")
                else {}
            )
            config = RunConfig(
                dataset=args.dataset,
                model=args.model,
                model_options=options,
                steps=args.steps,
                measure_size=200,
                record="layers",
                device=args.device,
                eval_every=10,
                techniques=specs,
                **OVERRIDES.get(name, {}),
            )
            step_ms = float("inf")
            for k in range(args.repeats):  # other load only adds time: keep the fastest run
                path = Path(tmp) / f"{name}-{k}.h5"
                run(config, out=path)
                with lca.open_run(path) as r:
                    seconds = r.series("steps/seconds_train")
                    kind = r.steps("kind")
                    summaries = r.technique_summaries()
                # mean over optimizer steps (skipped steps are cheaper: the mean shows it)
                step_ms = min(step_ms, 1e3 * float(np.mean(seconds[kind == 0][5:])))
            if baseline is None:
                baseline = step_ms
            times[name] = step_ms
            saved = 100 * (baseline - step_ms) / baseline
            what = "; ".join(describe_saving(s) for s in summaries.values())
            sims = [saving(t, s).simulated for t, s in summaries.items()]
            versus = "simulated" if any(sims) else f"{saved:+.1f}%"
            print(f"{name:<23}{step_ms:>9.2f}{versus:>13}  {what}")
            for t, s in summaries.items():
                v = saving(t, s)
                bits_rows.append(
                    f"{t:<23}{v.weight_bits_training:>7.3g}/{v.weight_bits_deployed:<7.3g}"
                    f"{v.optimizer_state_bits:>8.3g}{v.activation_bits:>8.3g}"
                    f"  {'simulated' if v.simulated else 'real':<10}{v.time:<9}{v.note}"
                )
    for case, over in RATIOS:
        if case in times and over in times:
            print(
                f"{case} / {over} train-step time: {times[case] / times[over]:.2f}x "
                f"({times[case]:.2f} ms vs {times[over]:.2f} ms)"
            )
    print(
        "\nbits per value vs float32 (32): weights training/deployed, optimizer state per "
        "weight, activations"
    )
    print(
        f"{'technique':<23}{'weights':>15}{'optim':>8}{'acts':>8}  {'numerics':<10}{'time':<9}what"
    )
    for row in bits_rows:
        print(row)


if __name__ == "__main__":
    main()
