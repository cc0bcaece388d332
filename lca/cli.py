"""Command line: ``python -m lca train | inspect | recover | allocate | experiment``.

Every failure a user can cause (a bad flag value, a missing data folder, a foreign file) ends
with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from .config import DEVICES, DTYPES, OPTIMIZERS, RECORD_MODES, SCHEDULES, ConfigError, RunConfig
from .integrate import METHOD_HELP, METHODS

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _kv(text: str) -> tuple[str, Any]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        parsed: Any = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip().replace("-", "_"), parsed


EXIT_CODES = (
    "exit status: 0 run complete; 1 run failed (the loss became NaN or infinite; the steps before "
    "it are kept); 2 bad input (one line on stderr starting 'error:'); 130 interrupted by Ctrl-C "
    "(the steps so far are kept)."
)


class _TrainHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each flag's effective default, RunConfig's, and keeps the epilog's layout.

    The flags themselves default to None so that only the flags a user types override --config;
    argparse's ArgumentDefaultsHelpFormatter would therefore print "(default: None)" everywhere.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        value = _config_defaults().get(action.dest)
        if "default" in text or value is None or value is False or value in ([], {}):
            return text
        return f"{text} (default: {str(value).replace('%', '%%')})"


def _config_defaults() -> dict[str, Any]:
    return RunConfig().to_dict()


def _wrap(lines: list[str], head: str, body: str, indent: int = 20, hang: int = 0) -> None:
    """One epilog entry: ``head`` in a column, ``body`` wrapped beside it (continuation lines
    ``hang`` further in). Pre-wrapped because the epilog keeps its layout."""
    import textwrap

    first = f"  {head:<{indent - 3}} "
    lines.append(
        textwrap.fill(body, width=96, initial_indent=first, subsequent_indent=" " * (indent + hang))
    )


def _train_epilog() -> str:
    """What the names after --dataset, --model and --technique may be, with their options."""
    import data
    import techniques

    from . import models

    lines = [
        "config file (--config RUN.toml): RunConfig fields at the top level, e.g.",
        '  dataset = "digits"',
        '  model = "mlp"',
        "  steps = 500",
        "  [model_options]",
        "  hidden = [64, 32]",
        "  [[technique]]",
        '  name = "prune-magnitude"',
        "  sparsity = 0.8",
        "",
        "datasets (--dataset NAME; options: --dataset-option KEY=VALUE):",
    ]
    for name in data.names():
        opts = ", ".join(f"{k}={v}" for k, v in data.default_options(name).items())
        _wrap(lines, name, data.describe(name) + (f" Options: {opts}." if opts else ""))
    lines += ["", "models (--model NAME; options: --model-option KEY=VALUE, values as JSON):"]
    for name in models.names():
        opts = ", ".join(f"{k}={json.dumps(v)}" for k, v in models.defaults(name).items())
        _wrap(lines, name, models.describe(name) + (f" Options: {opts}." if opts else ""))
    lines += ["", "techniques (--technique NAME[:KEY=VALUE,...], repeatable; list values "
              "joined by +):"]
    for name in techniques.names():
        _wrap(lines, name, techniques.describe(name))
        for key, opt in techniques.get(name).options.items():
            default = opt.default
            if isinstance(default, list | tuple):
                default = "+".join(default) or "(none)"
            _wrap(lines, "", f"{key}={default}: {opt.help}", indent=22, hang=4)
    lines += ["", *_paragraph(EXIT_CODES)]
    return "\n".join(lines)


def _paragraph(text: str) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width=96)


def _train_parser(sub) -> None:
    import data
    import techniques

    from . import models

    p = sub.add_parser(
        "train",
        help="train a model and record its LCA to a run file",
        description="\n".join(_paragraph(
            "Train a model and record every step's Loss Change Allocation to HDF5. Flags "
            "override values from --config; a flag's default is the RunConfig default."
        )),
        formatter_class=_TrainHelpFormatter,
        epilog=_train_epilog(),
    )
    p.add_argument("--config", help="TOML file with RunConfig fields (flags override it)")
    p.add_argument("--dataset", help=f"one of: {', '.join(data.names())}")
    p.add_argument(
        "--dataset-option",
        action="append",
        type=_kv,
        default=[],
        metavar="KEY=VALUE",
        help="dataset option, e.g. noise=0.2 (repeatable)",
    )
    p.add_argument(
        "--data-dir",
        help="folder with MNIST / Fashion-MNIST / CIFAR-10 files (default: $LCA_DATA_DIR)",
    )
    p.add_argument("--subset", type=int, help="keep this many training examples (default: all)")
    p.add_argument("--model", help=f"one of: {', '.join(models.names())}")
    p.add_argument(
        "--model-option",
        action="append",
        type=_kv,
        default=[],
        metavar="KEY=VALUE",
        help="model option, e.g. hidden=[64,32] (repeatable)",
    )
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="training optimizer")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--momentum", type=float, help="momentum of --optimizer momentum")
    p.add_argument("--weight-decay", type=float, help="L2 weight decay of the optimizer")
    p.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule")
    p.add_argument("--batch-size", type=int, help="training minibatch size")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--seed", type=int, help="seed of the data split, init and batches")
    p.add_argument(
        "--measure-size",
        type=int,
        help="examples in the measurement set (0 = the whole training split)",
    )
    p.add_argument("--measure-batch", type=int, help="chunk size of the measurement set")
    p.add_argument(
        "--method",
        choices=METHODS,
        help="LCA integrator: " + "; ".join(f"{k}: {v}" for k, v in METHOD_HELP.items()),
    )
    p.add_argument("--tolerance", type=float, help="rk4-adaptive: |ΔL − ΣA| allowed per step")
    p.add_argument("--measure-dtype", choices=DTYPES, help="precision LCA is measured in")
    p.add_argument(
        "--error-every",
        type=int,
        help="every K-th step also estimate the per-parameter error (1- vs 2-panel Simpson, "
        "2 more gradients on those steps; 0 = off)",
    )
    p.add_argument(
        "--threads",
        type=_threads_arg,
        help="CPU threads (default auto: the cores available, shared by running app jobs)",
    )
    p.add_argument(
        "--technique",
        action="append",
        default=[],
        metavar="NAME[:KEY=VALUE,...]",
        help="efficiency technique (repeatable); one of: " + ", ".join(techniques.names()),
    )
    p.add_argument(
        "--record",
        choices=RECORD_MODES,
        help="full: every parameter; units: per neuron/channel; layers: per tensor",
    )
    p.add_argument(
        "--device", choices=DEVICES, help="auto: CUDA when available, else CPU"
    )
    p.add_argument(
        "--save-weights",
        action="store_true",
        default=None,
        help="also save θ at every step, so `python -m lca allocate` can recompute the LCA",
    )
    p.add_argument("--eval-every", type=int, help="steps between train/test accuracy checks")
    p.add_argument(
        "--max-bytes",
        type=int,
        help="refuse, before it starts, a run whose file would exceed this many bytes "
        "(the free disk space is always checked)",
    )
    p.add_argument("--out", help="run file to write (default runs/<dataset>-<model>-<time>.h5)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _threads_arg(text: str) -> int | str:
    """--threads: ``auto`` or a whole number (checked further by RunConfig)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not auto or a whole number") from None


def build_config(args: argparse.Namespace) -> RunConfig:
    """The config from --config, then every flag given on the command line on top."""
    import techniques

    base = RunConfig.from_toml(args.config) if args.config else RunConfig()
    changes: dict[str, Any] = {
        k: getattr(args, k)
        for k in (
            "dataset",
            "data_dir",
            "subset",
            "model",
            "optimizer",
            "lr",
            "momentum",
            "weight_decay",
            "schedule",
            "batch_size",
            "steps",
            "seed",
            "measure_batch",
            "method",
            "tolerance",
            "measure_dtype",
            "record",
            "device",
            "eval_every",
            "max_bytes",
            "save_weights",
            "out",
            "threads",
            "error_every",
        )
    }
    if args.measure_size == 0:  # the whole training split
        base = RunConfig.from_dict({**base.to_dict(), "measure_size": None})
    elif args.measure_size is not None:
        changes["measure_size"] = args.measure_size
    if args.dataset_option:
        changes["dataset_options"] = {**base.dataset_options, **dict(args.dataset_option)}
    if args.model_option:
        changes["model_options"] = {**base.model_options, **dict(args.model_option)}
    if args.technique:
        try:
            changes["techniques"] = [techniques.parse_spec(t) for t in args.technique]
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if changes.get("dataset") and changes["dataset"] != base.dataset and not args.dataset_option:
        base.dataset_options = {}  # options of the file's dataset need not fit the new one
    return base.replace(**changes)


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .distributed import env_rank
    from .train import TrainingError, run

    config = build_config(args)
    out = config.out or str(
        Path("runs") / f"{config.dataset}-{config.model}-{dt.datetime.now():%Y%m%d-%H%M%S}.h5"
    )
    main = env_rank() == 0  # under torchrun only rank 0 shows progress and writes the file
    quiet = args.quiet or not main
    bar = None  # made at the first step, so a run refused at setup shows only its sentence

    def progress(step: int, total: int, loss: float) -> None:
        nonlocal bar
        if quiet:
            return
        if bar is None:
            bar = tqdm(total=total, unit="step", dynamic_ncols=True)
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.4f}")

    try:
        result = run(config, out=out, progress=progress)
    except TrainingError as e:
        if bar is not None:
            bar.close()
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if bar is not None:
        bar.close()
    acc = "" if result.test_acc is None else f", test accuracy {result.test_acc:.3f}"
    if not main:
        return 0 if result.status == "complete" else 1
    print(
        f"{result.status}: {result.message} Loss {result.loss0:.4f} -> "
        f"{result.loss_final:.4f}{acc}. Run file: {out}"
    )
    if result.status == "failed":
        return 1
    if result.status == "interrupted":
        return EXIT_INTERRUPTED
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .store import open_run

    with open_run(args.run) as r:
        s = r.summary()
    if args.json:
        print(json.dumps(s, indent=2, default=str))
        return 0
    print(format_summary(s, args.run))
    return 0


def format_summary(s: dict[str, Any], path: str) -> str:
    """The ``inspect`` report: what ran, how long, how it ended, where learning happened."""

    def num(v: Any, fmt: str = ".4f") -> str:
        return "n/a" if v is None else format(v, fmt)

    helped = None if s.get("mean_helped") is None else 100 * s["mean_helped"]
    lines = [
        f"run            {path}",
        f"status         {s.get('status')}",
        f"dataset/model  {s.get('dataset')} / {s.get('model')}  ({s.get('num_params'):,} params)",
        f"techniques     {', '.join(s.get('techniques') or []) or 'none'}",
        f"steps          {s.get('steps')} optimizer steps, {s.get('segments')} segments, "
        f"record={s.get('record')}, method={s.get('method')}",
        f"duration       {num(s.get('duration_s'), '.1f')} s",
        f"loss           {num(s.get('loss0'))} -> {num(s.get('loss_final'))}",
        f"accuracy       train {num(s.get('train_acc'), '.3f')}, "
        f"test {num(s.get('test_acc'), '.3f')}",
        f"conservation   Σ(ΔL − ΣA) = {num(s.get('conservation_error'), '.3e')} "
        f"({num(s.get('relative_error'), '.2e')} of |L_T − L_0|), "
        f"worst step {num(s.get('max_step_error'), '.2e')}",
        f"helped         {num(helped, '.1f')}% of parameters on an average step",
    ]
    for title, key in (("top helping", "top_helping"), ("top hurting", "top_hurting")):
        items = s.get(key) or []
        lines.append(f"{title:<15}" + (", ".join(f"{n} ({v:+.3e})" for n, v in items) or "none"))
    return "\n".join(lines)


def cmd_recover(args: argparse.Namespace) -> int:
    from .store import recover

    print(recover(args.run, force=args.force))
    return 0


def _allocate_parser(sub) -> None:
    p = sub.add_parser(
        "allocate",
        help="recompute the LCA of a run recorded with --save-weights",
        description="Recompute every step's LCA from the weights a run saved (--save-weights), "
        "with the same or another integrator, into a new run file and/or compared with the "
        "file's own numbers. Under `torchrun --nproc-per-node N -m lca allocate ...` the steps "
        "are split into N contiguous ranges; rank 0 writes.",
    )
    p.add_argument("run", help="run file (.h5) recorded with --save-weights")
    p.add_argument(
        "--method", choices=METHODS, help="LCA integrator (default: the run's own method)"
    )
    p.add_argument(
        "--out", help="new run file (default RUN.posthoc-METHOD.h5; none with --compare alone)"
    )
    p.add_argument(
        "--record", choices=RECORD_MODES, help="what the new file keeps (default: the run's)"
    )
    p.add_argument("--compare", action="store_true", help="report the difference to the run's LCA")
    p.add_argument(
        "--device", choices=DEVICES, default="auto", help="where to measure (default: auto)"
    )
    p.add_argument("--data-dir", help="folder with the run's dataset files, if it moved")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_allocate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .distributed import env_rank
    from .posthoc import allocate_run
    from .train import TrainingError

    main = env_rank() == 0
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if args.quiet or not main:
            return
        if bar is None:
            bar = tqdm(total=total, unit="step", dynamic_ncols=True)
        bar.update(done - bar.n)

    try:
        result = allocate_run(
            args.run,
            out=args.out,
            method=args.method,
            record=args.record,
            device=args.device,
            data_dir=args.data_dir,
            compare=args.compare,
            overwrite=args.overwrite,
            progress=progress,
        )
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if bar is not None:
            bar.close()
    if not main:
        return 0
    where = f" Run file: {result.path}." if result.path else ""
    print(
        f"{result.status}: recomputed {result.segments} segments with {result.method} on "
        f"{result.ranks} process{'es' if result.ranks > 1 else ''} in {result.seconds:.1f} s."
        + where
    )
    if result.comparison is not None:
        print(result.comparison.format())
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one ``error:`` line (with where to look), not the usage."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"error: {message}; see `{self.prog} --help`.\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="python -m lca",
        description="LCA Lab: record and inspect Loss Change Allocation of training runs. "
        "`python -m lca COMMAND --help` documents each command.",
        epilog=EXIT_CODES,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    p = sub.add_parser(
        "inspect",
        help="print a summary of a run file",
        description="Print a run at a glance: status, steps, loss, accuracy, conservation "
        "(Σ(ΔL − ΣA)), how many parameters helped, and the layers that helped and hurt most. "
        "Works on a run that is still being written.",
    )
    p.add_argument("run", help="run file (.h5)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser(
        "recover",
        help="repair a run file whose writer was killed",
        description="Make a run file whose writer was killed (SIGKILL, a crash, a full disk) "
        "clean: keep the last whole step, trim the rest, mark it 'interrupted' and close it. "
        "A clean file is left as it is; prints one line saying what was done.",
    )
    p.add_argument("run", help="run file (.h5)")
    p.add_argument(
        "--force",
        action="store_true",
        help="repair even if the file's writer process still seems alive or the file cannot "
        "be checked first (only when you are sure nothing writes it any more)",
    )
    _allocate_parser(sub)
    from .experiments import add_parser, cmd_experiment

    add_parser(sub)
    args = parser.parse_args(argv)
    handlers = {
        "train": cmd_train,
        "inspect": cmd_inspect,
        "recover": cmd_recover,
        "allocate": cmd_allocate,
        "experiment": cmd_experiment,
    }
    try:
        return handlers[args.command](args)
    except BrokenPipeError:  # `python -m lca inspect x.h5 | head`: the reader left early
        sys.stderr.close()  # nothing more can be said; keep Python from complaining at exit
        return 0
    except (ValueError, OSError) as e:  # ConfigError, RunFileError, DataError, …: one sentence
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
