"""Command line: ``python -m lca train | inspect | recover | allocate | experiment``.

Every failure a user can cause (a bad flag value, a missing data folder, a foreign file) ends
with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import signal
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

import data
import techniques

from . import models
from .config import DEVICES, RECORD_MODES, ConfigError, RunConfig
from .cost import CostProbe
from .distributed import env_rank
from .experiments import add_parser, cmd_experiment
from .integrate import METHODS
from .posthoc import allocate_run
from .serve import add_parser as add_serve_parser
from .serve import cmd_serve
from .spec import Spec
from .store import DiskFullError, open_run, recover
from .train import RunNotice, TrainingError, run

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM


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
    "exit status: 0 run complete; 1 run failed (the loss became NaN or infinite, or the disk "
    "filled up; the steps before it are kept); 2 bad input (one line on stderr starting "
    "'error:'); 130 interrupted by Ctrl-C (SIGINT), 143 stopped by SIGTERM (kill, docker stop, "
    "systemd): both end the run with status 'interrupted' and keep every whole step. Settings "
    "adjusted to the data are said in one line starting 'notice:'."
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
    first = f"  {head:<{indent - 3}} "
    lines.append(
        textwrap.fill(body, width=96, initial_indent=first, subsequent_indent=" " * (indent + hang))
    )


def _train_epilog() -> str:
    """What the names after --dataset, --model and --technique may be, with their options."""
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
    lines += [
        "",
        "techniques (--technique NAME[:KEY=VALUE,...], repeatable; list values joined by +):",
    ]
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
    return textwrap.wrap(text, width=96)


def _train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model and record its LCA to a run file",
        description="\n".join(
            _paragraph(
                "Train a model and record every step's Loss Change Allocation to HDF5. Flags "
                "override values from --config; a flag's default is the RunConfig default."
            )
        ),
        formatter_class=_TrainHelpFormatter,
        epilog=_train_epilog(),
    )
    p.add_argument("--config", help="TOML (or JSON) file with RunConfig fields (flags override it)")
    for name, spec in RunConfig.specs().items():
        _add_config_flag(p, name, spec)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it exists (never while another run writes it)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _flag(name: str, spec: Spec) -> str:
    return spec.flag or "--" + name.replace("_", "-")


def _add_config_flag(p: argparse.ArgumentParser, name: str, spec: Spec) -> None:
    """The flag of RunConfig field ``name``, from its Spec (the one definition of the field).

    Every flag defaults to None, so only the flags a user types override --config.
    """
    flag, text = _flag(name, spec), spec.help
    if spec.kind is dict:  # --dataset-option KEY=VALUE, repeatable, merged over the file's
        p.add_argument(
            flag, dest=name, action="append", type=_kv, default=[], metavar="KEY=VALUE", help=text
        )
    elif name == "techniques":  # --technique NAME[:KEY=VALUE,...], repeatable
        p.add_argument(
            flag,
            dest=name,
            action="append",
            default=[],
            metavar="NAME[:KEY=VALUE,...]",
            help=f"{text}; one of: {', '.join(techniques.names())}",
        )
    elif spec.kind is bool:
        p.add_argument(flag, dest=name, action="store_true", default=None, help=text)
    elif callable(spec.choices):  # names found at run time: listed, checked by RunConfig
        listed = f"one of: {', '.join(spec.allowed() or ())}"
        p.add_argument(flag, dest=name, help=f"{text}; {listed}" if text else listed)
    elif spec.keywords:  # e.g. --threads auto | 4: the word, else the number (checked later)
        p.add_argument(flag, dest=name, type=_word_or(spec), help=text)
    else:
        p.add_argument(flag, dest=name, type=spec.kind, choices=spec.choices, help=text)


def _word_or(spec: Spec):
    """argparse type of a flag that takes one of ``spec.keywords`` or a value of ``spec.kind``."""

    def convert(text: str) -> Any:
        word = text.strip().lower()
        return word if word in spec.keywords else spec.kind(text)

    convert.__name__ = " or ".join([*spec.keywords, spec.kind.__name__])  # in argparse's error
    return convert


def build_config(args: argparse.Namespace) -> RunConfig:
    """The config from --config, then every flag given on the command line on top."""
    base = RunConfig.from_file(args.config) if args.config else RunConfig()
    values = base.to_dict()
    if args.dataset not in (None, base.dataset) and not args.dataset_options:
        values["dataset_options"] = {}  # options of the file's dataset need not fit the new one
    for name, spec in RunConfig.specs().items():
        given = getattr(args, name, None)
        if given is None or given == []:
            continue
        if spec.kind is dict:  # KEY=VALUE flags add to (and override) the file's options
            values[name] = {**values[name], **dict(given)}
        elif name == "techniques":
            try:
                values[name] = [techniques.parse_spec(t) for t in given]
            except ValueError as e:
                raise ConfigError(str(e)) from None
        elif spec.widget.get("zero_is_none") and given == 0:
            values[name] = None  # e.g. --measure-size 0: the whole training split
        else:
            values[name] = given
    return RunConfig.from_dict(values)


def check_out(out: str | os.PathLike[str], *, overwrite: bool, flag: str = "--out") -> Path:
    """Refuse, before anything is computed, an output that would lose a run or cannot be a run
    file: not ending in .h5, a folder, an existing run without ``--overwrite``, or a run that
    another process is writing (even with ``--overwrite``)."""
    from .store.lock import busy_sentence, holder

    path = Path(out)
    if path.suffix != ".h5":
        raise ValueError(
            f"{flag} {out} does not end in .h5; name the run file like {path.stem or 'run'}.h5."
        )
    if path.is_dir():
        raise ValueError(f"{flag} {out} is a folder; name a run file inside it, e.g. {out}/run.h5.")
    who = holder(path)
    if who is not None:
        raise ValueError(busy_sentence(path, who))
    if path.exists() and not overwrite:
        raise ValueError(
            f"{out} already exists; choose another {flag}, or add --overwrite to replace it."
        )
    return path


def _fresh_default_out(config: RunConfig) -> str:
    """runs/<dataset>-<model>-<time>.h5, with -2, -3, … when that name is taken."""
    stem = f"{config.dataset}-{config.model}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    path, k = Path("runs") / f"{stem}.h5", 2
    while path.exists():
        path, k = Path("runs") / f"{stem}-{k}.h5", k + 1
    return str(path)


def _raise_terminated(signum: int, frame: object) -> None:
    """SIGTERM: end the run like Ctrl-C. Once: a second SIGTERM while the run is already ending
    would only cut short the ending (what SIGKILL is for, and what jobs.stop sends next)."""
    from .train import Terminated

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated


def _notices(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """warnings.showwarning for the CLI: a RunNotice is one 'notice:' line, others as usual."""
    from .store.schema import LargeRunNotice
    from .train import RunNotice

    if issubclass(category, RunNotice | LargeRunNotice):
        print(f"notice: {message}", file=sys.stderr)
        return
    _SHOW_WARNING(message, category, filename, lineno, file, line)


class StepBar:
    """The CLI's progress over a run's steps: one tqdm bar, made at the first report (so a run
    refused at setup shows only its sentence), silent when ``quiet``; with ``cost`` it also says
    what a long run will cost (steps × seconds per tracked step) after a few steps."""

    def __init__(self, quiet: bool, *, postfix: str = "loss", cost: bool = False) -> None:
        self.quiet = quiet
        self.postfix = postfix
        self.bar = None
        self.probe = CostProbe(lambda line: tqdm.write(line, file=sys.stderr)) if cost else None

    def __call__(self, step: int, total: int, loss: float | None = None) -> None:
        if self.quiet:
            return
        if self.bar is None:
            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True)
        self.bar.update(step - self.bar.n)
        if loss is not None:
            self.bar.set_postfix({self.postfix: f"{loss:.4f}"})
        if self.probe is not None:
            self.probe.update(step, total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_train(args: argparse.Namespace) -> int:
    config = build_config(args)
    out = config.out or _fresh_default_out(config)
    if config.pack > 1:
        return _train_pack(config, out, args)
    if config.stanza or config.data_parallel or config.staleness:
        return _train_parallel(config, out, args)
    main = env_rank() == 0  # under torchrun only rank 0 shows progress and writes the file
    if main:
        check_out(out, overwrite=args.overwrite)
    progress = StepBar(args.quiet or not main, cost=True)

    if not main:
        warnings.simplefilter("ignore", RunNotice)  # rank 0 says it once
    try:
        result = run(config, out=out, progress=progress, overwrite=args.overwrite)
    except DiskFullError as e:
        progress.close()
        print(f"error: {e}", file=sys.stderr)
        if not e.clean:  # HDF5 holds writes it cannot make: leave before its clean-up crashes
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_FAILED)
        return EXIT_FAILED
    except TrainingError as e:
        progress.close()
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    progress.close()
    acc = "" if result.test_acc is None else f", test accuracy {result.test_acc:.3f}"
    if not main:
        return 0 if result.status == "complete" else 1
    # stdout keeps its one summary line (scripts read it); the conservation note goes to stderr.
    if result.tracker is not None:  # steps over the paper's 1e-3, and the cost of fixing them
        from .conservation import advice

        errors = [h["error"] for h in result.tracker.history if h["kind"] == 0]
        note = advice(errors, config.method)
        if note:
            print(f"conservation: {note}", file=sys.stderr)
    print(
        f"{result.status}: {result.message} Loss {result.loss0:.4f} -> "
        f"{result.loss_final:.4f}{acc}. Run file: {out}"
    )
    if result.status == "failed":
        return EXIT_FAILED
    if result.status == "interrupted":
        return (
            EXIT_TERMINATED
            if result.message.startswith("Stopped by SIGTERM")
            else (EXIT_INTERRUPTED)
        )
    return 0


def _train_pack(config, out: str, args: argparse.Namespace) -> int:
    """``--pack N``: the N models in one process, one line (and run file) per model."""
    from .pack import pack_path, run_pack

    if env_rank() != 0 or os.environ.get("WORLD_SIZE", "1") != "1":
        print("error: --pack trains in one process; run it without torchrun.", file=sys.stderr)
        return EXIT_USAGE
    for i in range(config.pack):
        check_out(str(pack_path(out, i)), overwrite=args.overwrite)
    progress = StepBar(args.quiet, postfix="mean_loss", cost=True)

    try:
        results = run_pack(config, out=out, progress=progress, overwrite=args.overwrite)
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        progress.close()
    for i, result in enumerate(results):
        acc = "" if result.test_acc is None else f", test accuracy {result.test_acc:.3f}"
        print(
            f"[{i}] seed {config.seed + i} {result.status}: {result.message} Loss "
            f"{result.loss0:.4f} -> {result.loss_final:.4f}{acc}. Run file: {result.path}"
        )
    statuses = {r.status for r in results}
    if "interrupted" in statuses:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if "failed" in statuses else 0


def _train_parallel(config, out: str, args: argparse.Namespace) -> int:
    """``--stanza K`` / ``--data-parallel K`` (lca/stanza.py): under torchrun this process's
    rank; without torchrun the run's processes are spawned here. The writing rank reports."""
    from .distributed import launched
    from .stanza import Launch, StanzaError, check, run_rank, writer_rank

    try:
        check(config, int(os.environ["WORLD_SIZE"]) if launched() else None)
    except StanzaError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    main = not launched() or env_rank() == writer_rank(config)
    if main:
        check_out(out, overwrite=args.overwrite)
    progress = StepBar(args.quiet, cost=True)

    try:
        if launched():
            result = run_rank(config, out, overwrite=args.overwrite, progress=progress)
        else:
            with Launch(config, out, overwrite=args.overwrite) as launch:
                results = launch.wait()
            result = next(r for r in results if r.rank == writer_rank(config))
    except (StanzaError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        progress.close()
    if not main:
        return 0 if result.status == "complete" else EXIT_FAILED
    sent = "" if result.step_bytes is None else f" {result.step_bytes[0]:,.0f} bytes sent per step."
    acc = "" if result.test_acc is None else f", test accuracy {result.test_acc:.3f}"
    loss = " ".join(
        "n/a" if v is None else f"{v:.4f}" for v in (result.loss0, result.loss_final)
    ).replace(" ", " -> ")
    print(f"{result.status}: {result.message} Loss {loss}{acc}.{sent} Run file: {out}")
    if result.status == "failed":
        return EXIT_FAILED
    return EXIT_INTERRUPTED if result.status == "interrupted" else 0


def cmd_inspect(args: argparse.Namespace) -> int:
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
    if s.get("val_loss0") is not None:
        lines.append(
            f"held-out loss  {num(s.get('val_loss0'))} -> {num(s.get('val_loss_final'))}, "
            f"Σ(ΔL − ΣA) = {num(s.get('val_conservation_error'), '.3e')}"
        )
    if s.get("panel_error_median") is not None:
        lines.append(
            f"per weight     1- vs 2-panel Simpson differ by {num(s['panel_error_median'], '.2e')}"
            f" (median), {num(s.get('panel_error_worst'), '.2e')} (worst step); signs agree "
            f"≥ {100 * s['panel_sign_agreement_worst']:.2f}%"
        )
    for title, key in (("top helping", "top_helping"), ("top hurting", "top_hurting")):
        items = s.get(key) or []
        lines.append(f"{title:<15}" + (", ".join(f"{n} ({v:+.3e})" for n, v in items) or "none"))
    return "\n".join(lines)


def cmd_recover(args: argparse.Namespace) -> int:
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
    main = env_rank() == 0
    if main and args.out is not None:
        check_out(args.out, overwrite=args.overwrite)
    progress = StepBar(args.quiet or not main)

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
        progress.close()
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
        help="repair a file that was open without SWMR and so cannot be checked first (only "
        "when you are sure nothing writes it any more); a run another process is writing is "
        "refused even so",
    )
    _allocate_parser(sub)
    add_parser(sub)
    add_serve_parser(sub)
    args = parser.parse_args(argv)
    handlers = {
        "train": cmd_train,
        "inspect": cmd_inspect,
        "recover": cmd_recover,
        "allocate": cmd_allocate,
        "experiment": cmd_experiment,
        "serve": cmd_serve,
    }
    with _train_signals(args.command == "train"):
        return _run(handlers[args.command], args)


@contextlib.contextmanager
def _train_signals(active: bool) -> Iterator[None]:
    """While ``train`` runs: SIGTERM (kill, docker stop, systemd) ends the run like Ctrl-C does,
    and settings adjusted to the data are said as 'notice:' lines. Restored afterwards, so
    calling ``main`` from Python leaves the caller's handlers as they were."""
    if not active:
        yield
        return
    previous = None
    with contextlib.suppress(ValueError):  # only the main thread may set handlers
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    shown, warnings.showwarning = warnings.showwarning, _notices
    try:
        yield
    finally:
        warnings.showwarning = shown
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(handler, args: argparse.Namespace) -> int:  # noqa: ANN001
    try:
        return handler(args)
    except BrokenPipeError:  # `python -m lca inspect x.h5 | head`: the reader left early
        sys.stderr.close()  # nothing more can be said; keep Python from complaining at exit
        return 0
    except (ValueError, OSError) as e:  # ConfigError, RunFileError, DataError, …: one sentence
        print(f"error: {error_sentence(e, args)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:  # before or after the run itself (which keeps its steps)
        from .train import Terminated

        print("interrupted", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED


_SHOW_WARNING = warnings.showwarning
_TMP_NAME = re.compile(r"\.([^/\s'\"]+?)\.\d+(?:\.recover)?\.tmp")
_ERRNO_PREFIX = re.compile(r"\[Errno \d+\]\s*")
_HDF5_OS_ERROR = re.compile(r"Unable to [^(]*\([^)]*?errno = \d+, error message = '([^']*)'[^)]*\)")


def error_sentence(e: BaseException, args: argparse.Namespace | None = None) -> str:
    """The error as one sentence about the user's input: no raw errno text, no hidden temporary
    file names, no HDF5 internals ("unable to lock file, errno = 11" names who has the file)."""
    from .store.lock import is_hdf5_lock_error, open_elsewhere_sentence

    text = str(e).strip()
    text = text.splitlines()[0] if text else type(e).__name__
    target = getattr(args, "run", None) or getattr(args, "out", None)
    if is_hdf5_lock_error(e) and target:
        doing = {"recover": "recover", "allocate": "read", "inspect": "read"}.get(
            getattr(args, "command", ""), "use"
        )
        return open_elsewhere_sentence(target, doing)
    if (
        type(e)
        in (
            OSError,
            PermissionError,
            FileNotFoundError,
            IsADirectoryError,
            NotADirectoryError,
            FileExistsError,
        )
        and e.strerror
    ):
        where = e.filename or target or "the file"
        where = _TMP_NAME.sub(r"\1", str(where))
        return (
            f"Cannot use {where}: {e.strerror[:1].lower()}{e.strerror[1:]}; check the path "
            "and that you may read and write there."
        )
    text = _TMP_NAME.sub(r"\1", _ERRNO_PREFIX.sub("", text))
    # An HDF5 message with the OS error inside: keep the OS error's words only.
    return _HDF5_OS_ERROR.sub(lambda m: m[1].lower(), text)
