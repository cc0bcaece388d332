"""Reproducible experiments: the LCA paper's findings (and our own tables) on our small models.

``python -m lca experiment NAME [--tiny] [--data-dir DIR] [--out docs/results]
[--scale paper --dataset fashion-mnist]`` trains the runs
an experiment needs from a fixed seed (or reuses them from the runs folder), computes every table
from the run files and writes ``<out>/<NAME>.md`` with HTML figures under ``<out>/figures/``, and a
``<out>/<NAME>.json`` of its key numbers, from which ``docs/RESULTS.md`` is written (our number
beside the paper's). ``python -m lca experiment all`` runs them all; ``--list`` names them.

Why a package of small modules rather than notebooks: the numbers in the docs must be regenerated
by one command and checked by tests, never typed by hand.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import ExperimentContext, ExperimentError, one_thread

__all__ = [
    "EXPERIMENTS",
    "ExperimentError",
    "add_parser",
    "cmd_experiment",
    "default_results_path",
    "names",
    "run_all",
    "run_one",
]

#: name -> one-line description, in the order ``all`` runs them.
EXPERIMENTS: dict[str, str] = {
    "integrators": "error and cost of each LCA integrator (euler … rk4-adaptive, gauss) on an "
    "MLP and a small CNN (our table; the paper published none)",
    "helped": "% of parameters that help per step, how often each parameter helps, and the "
    "histogram of all LCA values (fc-mnist, LeNet)",
    "layers": "per-layer LCA totals vs layer size (fc-mnist, LeNet) and ResNet-20's first and "
    "last layers",
    "freeze": "freezing the last layer: per-layer LCA and final loss with and without",
    "synchrony": "do layers' LCA peaks fall on the same steps? (peak coincidence vs a "
    "circular-shift null)",
    "techniques": "weight update skipping vs baseline (time, accuracy) and magnitude vs L-OBS "
    "vs LCA-guided pruning at equal sparsity",
    "methods": "backprop vs DFA vs BDFA vs weight symmetry: accuracy, % helped, alignment with "
    "the true gradient, parameters saved",
    "precision": "per-tensor fixed point: the loss cost of rounding (LCA of the rounding leg) "
    "per layer, stochastic vs nearest, analytic precisions vs uniform 8 bits",
}
SCALES = ("quick", "paper")  # paper: also the LCA paper's MNIST protocol on 28×28 images
DEFAULT_OUT = Path("docs/results")
DEFAULT_RUNS = Path("artifacts/experiment-runs")  # gitignored: run files are never committed


def names() -> list[str]:
    return list(EXPERIMENTS)


def _check(name: str) -> None:
    if name not in EXPERIMENTS:
        raise ExperimentError(
            f"Unknown experiment {name!r}; choose one of: {', '.join(EXPERIMENTS)} or all "
            "(python -m lca experiment --list)."
        )


def _context(
    out_dir: str | Path,
    tiny: bool,
    data_dir: str | None,
    runs_dir: str | Path | None,
    retrain: bool,
    log: Callable[[str], None],
    scale: str = "quick",
    dataset: str | None = None,
    paper_steps: int | dict[str, int] | None = None,
    paper_measure: int | dict[str, int] | None = None,
) -> ExperimentContext:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExperimentError(f"The output {out} exists and is not a folder; choose a folder.")
    runs = Path(runs_dir) if runs_dir is not None else out / "runs"
    if scale not in SCALES:
        raise ExperimentError(f"Unknown scale {scale!r}; choose one of: {', '.join(SCALES)}.")
    if scale == "paper":
        dataset = _paper_dataset(dataset, data_dir)
    return ExperimentContext(
        out,
        runs,
        tiny=tiny,
        data_dir=data_dir,
        retrain=retrain,
        log=log,
        scale=scale,
        dataset=dataset,
        paper_steps=paper_steps,
        paper_measure=paper_measure,
    )


def _paper_dataset(dataset: str | None, data_dir: str | None) -> str:
    """The 28×28 dataset of a paper-scale run, checked to be readable before anything trains."""
    import data

    from .setups import PAPER_DATASETS

    name = (dataset or "fashion-mnist").strip().lower().replace("_", "-")
    if name not in PAPER_DATASETS:
        raise ExperimentError(
            f"--scale paper runs on 28×28 images; --dataset {dataset!r} is not one of "
            f"{', '.join(PAPER_DATASETS)}."
        )
    if data.locate(name, data_dir) is None:
        try:
            data.load(name, subset=1, data_dir=data_dir)
        except data.DataError as e:
            raise ExperimentError(str(e)) from None
    return name


def _build(name: str, ctx: ExperimentContext) -> Path:
    module = importlib.import_module(f"{__name__}.{name}")
    ctx.log(f"experiment {name}: {EXPERIMENTS[name]}")
    t0 = time.perf_counter()
    path = module.build(ctx)
    ctx.log(f"experiment {name}: wrote {path} ({time.perf_counter() - t0:.0f} s)")
    return path


def run_one(
    name: str,
    out_dir: str | Path,
    *,
    tiny: bool = False,
    data_dir: str | None = None,
    runs_dir: str | Path | None = None,
    retrain: bool = False,
    threads: int | None = 1,
    log: Callable[[str], None] = print,
    **scale: Any,
) -> Path:
    """Run experiment ``name``; return the report's path (``out_dir/<name>.md``).

    Runs go to ``runs_dir`` (default ``out_dir/runs``) and are reused when a complete run with the
    same config is there. ``threads``: torch threads while it runs (1 is fastest for these small
    models on a shared machine; None leaves torch's setting).
    """
    _check(name)
    ctx = _context(out_dir, tiny, data_dir, runs_dir, retrain, log, **scale)
    with one_thread(threads):
        return _build(name, ctx)


def run_all(
    out_dir: str | Path,
    *,
    tiny: bool = False,
    data_dir: str | None = None,
    runs_dir: str | Path | None = None,
    retrain: bool = False,
    threads: int | None = 1,
    results: str | Path | None = None,
    log: Callable[[str], None] = print,
    **scale: Any,
) -> list[Path]:
    """Run every experiment (sharing runs between them), then write the results summary
    (``results``, default :func:`default_results_path`); return the report paths."""
    from .results import write_results

    ctx = _context(out_dir, tiny, data_dir, runs_dir, retrain, log, **scale)
    paths = []
    with one_thread(threads):
        for name in EXPERIMENTS:
            paths.append(_build(name, ctx))
    target = Path(results) if results is not None else default_results_path(ctx.out_dir)
    write_results(ctx.out_dir, target)
    log(f"wrote {target}")
    return paths


def default_results_path(out_dir: str | Path) -> Path:
    """``docs/RESULTS.md`` for the default ``docs/results`` folder, else ``<out>/RESULTS.md``."""
    out = Path(out_dir)
    if out.name == "results" and out.parent.name == "docs":
        return out.parent / "RESULTS.md"
    return out / "RESULTS.md"


# ---------------------------------------------------------------------------------------------
# Command line (wired into ``python -m lca`` by lca/cli.py).


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``experiment`` subcommand."""
    p = sub.add_parser(
        "experiment",
        help="run a reproducible experiment and write its report (--list to see them)",
        description="Train an experiment's runs from a fixed seed (or reuse them from the runs "
        "folder), compute its tables from the run files and write OUT/NAME.md with HTML "
        "figures; 'all' runs every experiment and writes the results summary (docs/RESULTS.md "
        "for the default --out). Experiments: "
        + "; ".join(f"{k}: {v}" for k, v in EXPERIMENTS.items()),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("name", nargs="?", help=f"one of: {', '.join(EXPERIMENTS)}, all")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="shrink every run to seconds (smoke test; numbers not meaningful)",
    )
    p.add_argument(
        "--data-dir",
        help="folder with MNIST / CIFAR-10 files: adds runs on them (never downloaded)",
    )
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the reports and figures")
    p.add_argument(
        "--runs-dir",
        default=str(DEFAULT_RUNS),
        help="folder for the run files (reused when the config matches)",
    )
    p.add_argument("--retrain", action="store_true", help="train every run again")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (0: leave torch's default)"
    )
    p.add_argument(
        "--results",
        help="results summary to write with 'all' (default: "
        "docs/RESULTS.md for --out docs/results, else OUT/RESULTS.md)",
    )
    p.add_argument(
        "--scale",
        choices=SCALES,
        default="quick",
        help="paper: also run fc-mnist and LeNet at the LCA paper's MNIST protocol "
        "(55,000 training images, all of them the measurement set, rk4-paper at "
        "1e-3) on --dataset; hours per run on a small CPU",
    )
    p.add_argument(
        "--dataset",
        help="28×28 dataset of --scale paper: fashion-mnist (default; "
        "apt-get install dataset-fashion-mnist) or mnist",
    )
    p.add_argument(
        "--paper-steps",
        type=per_model_count,
        help="reduce the paper-scale runs to this many steps (labelled 'reduced'): N for both "
        "models or per model, e.g. fc-mnist=300,lenet=60",
    )
    p.add_argument(
        "--paper-measure",
        type=per_model_count,
        help="reduce the paper-scale measurement set to this many examples: N or per model, "
        "e.g. fc-mnist=10000,lenet=2000",
    )


def per_model_count(text: str) -> int | dict[str, int]:
    """``N`` (both paper-scale models) or ``MODEL=N,MODEL=N`` (argparse type)."""
    from .setups import PAPER_STEPS

    def count(value: str) -> int:
        n = int(value)
        if n < 1:
            raise ValueError(value)
        return n

    try:
        if "=" not in text:
            return count(text)
        pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
        out = {k.strip().lower(): count(v) for k, v in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a positive count; give N or MODEL=N pairs, e.g. "
            "fc-mnist=300,lenet=60."
        ) from None
    unknown = sorted(set(out) - set(PAPER_STEPS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"{', '.join(unknown)} is not a paper-scale model; use {' or '.join(PAPER_STEPS)}."
        )
    return out


def cmd_experiment(args: argparse.Namespace) -> int:
    if args.list:
        width = max(len(n) for n in EXPERIMENTS)
        for n, d in EXPERIMENTS.items():
            print(f"{n:<{width}}  {d}")
        print(f"{'all':<{width}}  every experiment above, then the results summary")
        return 0
    if not args.name:
        raise ExperimentError(
            f"Name an experiment ({', '.join(EXPERIMENTS)} or all), or use --list."
        )

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    common = {
        "tiny": args.tiny,
        "data_dir": args.data_dir,
        "runs_dir": args.runs_dir,
        "retrain": args.retrain,
        "threads": args.threads or None,
        "log": log,
        "scale": args.scale,
        "dataset": args.dataset,
        "paper_steps": args.paper_steps,
        "paper_measure": args.paper_measure,
    }
    if args.name == "all":
        paths = run_all(args.out, results=args.results, **common)
    else:
        paths = [run_one(args.name, args.out, **common)]
        target = Path(args.results) if args.results else default_results_path(args.out)
        if target.exists():  # keep the summary in step with the report just rewritten
            from .results import write_results

            write_results(Path(args.out), target)
            log(f"updated {target}")
    for p in paths:
        print(p)
    return 0
