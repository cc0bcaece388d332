"""Train: set up a run, start it in the background, and watch it learn live.

Every RunConfig option has a widget with a sensible default; a bad value is refused with the
config's one sentence before anything starts, and so is a run that would not fit on disk (the
size is estimated first). Training runs in a subprocess (lca.jobs); this page only reads the
run file it writes, every second, and can stop it (the run keeps every step).

The live panel (``live_panel``) is shared with the Home page's demo; the page itself runs only
when Streamlit executes this file.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from lca import jobs, runs
from lca.figures import live_layer_bars, live_layer_lines, live_loss_figure
from lca.store import Reader, RunFileError, human_bytes
from pages.shared import RUN_KEY, plot

log = logging.getLogger("lca.app")
LIVE_KEY = "live_job"  # session: the run name of the job this session watches
SELECT_KEY = "_select_when_ready"  # app.py selects this run in the sidebar once it exists
FOLDER_DATASETS = ("mnist", "fashion-mnist", "cifar10")
PAGE_AFTER_RUN = ("pages/loss.py", "pages/layers.py", "pages/runs.py")
ROOT = Path(__file__).resolve().parent.parent
LIVE_SECONDS = 1.0  # the live panel re-reads the run file this often (a short run is quick)


# ---------------------------------------------------------------------------------------------
# Live panel (also used by the Home page).


def first_existing_page(candidates: tuple[str, ...] = PAGE_AFTER_RUN) -> str:
    """The first page of ``candidates`` whose file exists (pages are added as they are built)."""
    for p in candidates:
        if (ROOT / p).exists():
            return p
    return "pages/runs.py"


def _select(name: str) -> None:
    # A widget callback runs before the sidebar's run picker is drawn, so it may set it.
    st.session_state[RUN_KEY] = name


def switch_page(page: str) -> None:
    """st.switch_page that keeps the sidebar's selection.

    The run picker is bound to ``?run=``; a plain ``st.switch_page(page)`` tries to clear the
    query string and Streamlit refuses because of that binding. An empty mapping replaces the
    query string instead, and the picker writes ``?run=`` back on the new page.
    """
    st.switch_page(page, query_params={})


def open_run_button(name: str, *, label: str, page: str, key: str, **kwargs: Any) -> None:
    """A button that selects run ``name`` in the sidebar and opens ``page``."""
    if st.button(label, key=key, on_click=_select, args=(name,), **kwargs):
        switch_page(page)


def read_snapshot(path: Path) -> dict[str, Any] | None:
    """What the live charts need from a run file (None while the file does not exist yet)."""
    if not path.exists():
        return None
    with Reader(path) as r:
        kind = r.steps("kind")
        snap: dict[str, Any] = {
            "status": r.status,
            "segments": r.num_steps,
            "steps": int((kind == 0).sum()),
            "kind": kind,
            "total": int(r.config.get("steps") or 0) or None,
            "loss": r.steps("loss"),
            "helped": r.steps("helped"),
            "cumulative": r.layer_lca(cumulative=True),
            "names": list(r.names),
            "wall": float(r.steps("wall")[-1]) if r.num_steps else 0.0,
            "test_acc": None,
            "train_loss": None,
        }
        if "steps/train_loss" in getattr(r, "series_layout", {}):
            snap["train_loss"] = r.series("steps/train_loss")
        if r.has("eval"):
            try:
                acc = r.events("eval").get("test_acc")
            except KeyError:
                acc = None
            if acc is not None and len(acc) and np.isfinite(acc[-1]):
                snap["test_acc"] = float(acc[-1])
    return snap


def _draw_snapshot(snap: dict[str, Any], key: str) -> None:
    total = snap["total"]
    done = snap["steps"]
    loss = snap["loss"]
    frac = min(1.0, done / total) if total else 0.0
    st.progress(frac, text=f"Step {done} of {total or '?'}")
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Steps done", f"{done} / {total or '?'}")
    c2.metric(
        "Loss now", f"{loss[-1]:.3f}",
        delta=f"{loss[-1] - loss[0]:+.3f} since start" if len(loss) > 1 else None,
        delta_color="inverse",
    )
    c3.metric("Test accuracy", "—" if snap["test_acc"] is None else f"{snap['test_acc']:.1%}")
    helped = snap["helped"]
    c4.metric(
        "Weights that helped (last step)", "—" if not len(helped) else f"{helped[-1]:.0%}",
        help="Share of all weights whose LCA was negative on the latest step.",
    )
    left, right = st.columns([3, 2])
    with left:
        plot(live_loss_figure(loss, total_steps=total, train_loss=snap["train_loss"],
                              kind=snap["kind"]),
             key=f"{key}-loss")
        st.caption("The loss on the fixed measurement set after each step; falling = learning.")
    with right:
        cum = snap["cumulative"]
        totals = cum[-1] if len(cum) else np.zeros(0)
        plot(live_layer_bars(totals, snap["names"]), key=f"{key}-bars")
        st.caption(":green[Green bar]: the layer lowered the loss so far; :red[red]: it raised it.")
    plot(live_layer_lines(snap["cumulative"], snap["names"], total_steps=total,
                          kind=snap["kind"]),
         key=f"{key}-lines")
    st.caption(
        "Each line adds up one layer's LCA step by step: the further it sinks into the green "
        "band, the more of the learning that layer did."
    )


def _ended_sentence(job: jobs.Job, snap: dict[str, Any] | None) -> None:
    state = job.state
    if snap is not None:
        state = snap["status"] if snap["status"] != "running" else state
    if state == "complete" and snap is not None:
        loss = snap["loss"]
        acc = "" if snap["test_acc"] is None else f", test accuracy {snap['test_acc']:.1%}"
        st.success(
            f"{job.name} finished {snap['steps']} steps in {job.seconds:.0f} s: loss "
            f"{loss[0]:.3f} → {loss[-1]:.3f}{acc}."
        )
    elif state == "interrupted":
        kept = f" after {snap['steps']} steps" if snap else ""
        st.warning(f"{job.name} was stopped{kept}; every recorded step is kept.")
    else:
        st.error(jobs.last_error(job) or f"{job.name} ended without finishing.")


def _panel_body(name: str, key: str) -> bool:
    """Draw the job's state once; returns whether it is still running."""
    job = jobs.find(name)
    if job is None:
        st.info(f"No training job for {name} is known on this server.")
        return False
    job = jobs.poll(job)
    path = Path(job.path)
    try:
        snap = read_snapshot(path)
    except (RunFileError, OSError, KeyError, ValueError) as e:
        if job.alive:
            snap = None  # the file is being created; next tick will read it
        else:
            st.error(str(e).splitlines()[0] if str(e) else f"{name} cannot be read.")
            return False
    head, stop_col = st.columns([5, 1])
    with head:
        if job.alive:
            st.markdown(f"**Training {name}** · {job.seconds:.0f} s")
        else:
            _ended_sentence(job, snap)
    with stop_col:
        if job.alive and st.button(
            "Stop", key=f"{key}-stop", icon=":material/stop_circle:",
            help="Stop as Ctrl-C would: the run ends 'interrupted' and keeps every step.",
        ):
            jobs.stop(job)
            st.toast(f"Stopping {name}…")
    if snap is None:
        if job.alive:
            st.info("Starting: loading the data, building the model and measuring the first "
                    "loss…")
        return job.alive
    if snap["segments"] == 0 and job.alive:
        st.info("The first step is being measured…")
    _draw_snapshot(snap, key)
    if not job.alive and path.exists():
        page = first_existing_page()
        open_run_button(name, label="Open this run", page=page, key=f"{key}-open",
                        type="primary", icon=":material/open_in_new:")
    return job.alive


@st.fragment(run_every=LIVE_SECONDS)
def _live_fragment(name: str, key: str) -> None:
    try:
        running = _panel_body(name, key)
        ready = (runs.runs_dir() / name).exists()
    except Exception as e:  # noqa: BLE001 - a live panel must never show a traceback
        log.exception("live panel failed")
        st.error(f"The live view could not read {name} ({type(e).__name__}); it will retry.")
        running, ready = True, False
    if ready and st.session_state.get(SELECT_KEY) == name:
        st.rerun()  # the file exists now: app.py selects it in the sidebar
    if not running:  # the job ended: redraw the whole page once, without polling
        st.rerun()


def still_there(name: str) -> bool:
    """Whether a watched run is worth showing: its job still runs or its file still exists."""
    job = jobs.find(name)
    return (job is not None and job.alive) or (runs.runs_dir() / name).exists()


def live_panel(name: str, key: str = "live") -> None:
    """Progress, loss curve and per-layer LCA of the job writing ``name``; live while it runs.

    The whole page reruns once when the run file appears (so the sidebar can select it) and
    once when the job ends (so the panel stops polling).
    """
    job = jobs.find(name)
    if job is not None and jobs.poll(job).alive:
        _live_fragment(name, key)
    else:
        try:
            _panel_body(name, key)
        except Exception as e:  # noqa: BLE001
            log.exception("live panel failed")
            st.error(f"{name} could not be shown ({type(e).__name__}: {e}).")


# ---------------------------------------------------------------------------------------------
# The form.


def _option_widget(label: str, default: Any, key: str, help: str | None = None,
                   choices: tuple | None = None, minimum: float | None = None,
                   maximum: float | None = None, kind: type | None = None) -> Any:
    """One widget for one option, chosen from its type; lists are typed as 'a+b' or '32, 32'."""
    kind = kind or type(default)
    label = label.replace("_", " ")
    if choices:
        opts = list(choices)
        return st.selectbox(label, opts, index=opts.index(default) if default in opts else 0,
                            key=key, help=help)
    if kind is bool:
        return st.checkbox(label, value=bool(default), key=key, help=help)
    if kind is int:
        return st.number_input(
            label, value=int(default), step=1, key=key, help=help,
            min_value=None if minimum is None else int(minimum),
            max_value=None if maximum is None else int(maximum),
        )
    if kind is float:
        return st.number_input(
            label, value=float(default), key=key, help=help, format="%.6g",
            min_value=None if minimum is None else float(minimum),
            max_value=None if maximum is None else float(maximum),
        )
    if kind in (list, tuple):
        return st.text_input(label, value="+".join(map(str, default or [])), key=key,
                             help=(help or "") + " (several values: join them with +)")
    return st.text_input(label, value="" if default is None else str(default), key=key, help=help)


def _model_option_widget(model: str, opt: str, default: Any) -> Any:
    key = f"train_model_{model}_{opt}"
    if isinstance(default, tuple | list):
        text = st.text_input(
            f"{opt} (comma-separated)", value=", ".join(map(str, default)), key=key,
            help=f"Option {opt!r} of model {model!r}, e.g. 64, 32.",
        )
        parts = [p.strip() for p in text.strip().strip("[]()").split(",") if p.strip()]
        return [int(p) if p.lstrip("-").isdigit() else p for p in parts]
    if opt == "activation":
        from lca import models

        acts = list(getattr(models, "_ACTIVATIONS", {}) or [default])
        return st.selectbox(opt, acts, index=acts.index(default) if default in acts else 0,
                            key=key)
    return _option_widget(opt, default, key, help=f"Option {opt!r} of model {model!r}.")


def _technique_widgets(chosen: list[str]) -> list[dict[str, Any]]:
    import techniques

    specs = []
    for name in chosen:
        cls = techniques.get(name)
        with st.expander(f"{name}: {techniques.describe(name)}", expanded=True):
            spec: dict[str, Any] = {"name": name}
            cols = st.columns(3)
            for i, (opt, o) in enumerate(cls.options.items()):
                with cols[i % 3]:
                    value = _option_widget(
                        opt, o.default, f"train_tech_{name}_{opt}", help=o.help,
                        choices=o.choices, minimum=o.minimum, maximum=o.maximum, kind=o.kind,
                    )
                if o.kind in (list, tuple) and isinstance(value, str):
                    value = [v for v in value.replace("|", "+").split("+") if v.strip()]
                if value != o.default:
                    spec[opt] = value
            specs.append(spec)
    return specs


def config_form() -> tuple[dict[str, Any], str]:
    """Every RunConfig option as a widget; returns (config values, requested run name)."""
    import data
    import techniques
    from lca import models
    from lca.config import DEVICES, DTYPES, OPTIMIZERS, RECORD_MODES, SCHEDULES
    from lca.integrate import METHOD_HELP, METHODS

    values: dict[str, Any] = {}
    st.subheader("Data and model")
    c1, c2 = st.columns(2)
    with c1:
        names = data.names()
        values["dataset"] = st.selectbox(
            "Dataset", names, index=names.index("digits") if "digits" in names else 0,
            key="train_dataset", format_func=lambda n: n,
            help="Toy 2-D sets and scikit-learn sets are built in; MNIST, Fashion-MNIST and "
            "CIFAR-10 are read from your data folder.",
        )
        st.caption(data.describe(values["dataset"]))
        if values["dataset"] not in FOLDER_DATASETS and data.locate("fashion-mnist"):
            st.caption("Fashion-MNIST is installed: choose `fashion-mnist` for real 28×28 images.")
        ds_opts = {}
        for opt, default in data.default_options(values["dataset"]).items():
            ds_opts[opt] = _option_widget(opt, default, f"train_ds_{values['dataset']}_{opt}",
                                          help=f"Option {opt!r} of dataset {values['dataset']}.")
        values["dataset_options"] = {
            k: v for k, v in ds_opts.items()
            if v != data.default_options(values["dataset"]).get(k)
        }
        if values["dataset"] in FOLDER_DATASETS:
            values["data_dir"] = st.text_input(
                "Data folder", value=os.environ.get("LCA_DATA_DIR", ""), key="train_data_dir",
                help="Folder with the dataset's files (torchvision's layout works); empty: "
                "LCA_DATA_DIR, /usr/share/datasets/<name>, ./data/<name>.",
            ).strip() or None
            found = data.locate(values["dataset"], values["data_dir"])
            if found is not None:
                st.caption(f"Files found in {found}.")
        subset = st.number_input(
            "Training examples to use (0 = all)", min_value=0, value=0, step=100,
            key="train_subset", help="A seeded random subset makes big datasets quick.",
        )
        values["subset"] = int(subset) or None
    with c2:
        try:
            fitting = jobs.compatible_models(values["dataset"], values["dataset_options"])
        except (ValueError, OSError):
            fitting = models.names()
        fitting = fitting or models.names()
        values["model"] = st.selectbox(
            "Model", fitting, index=fitting.index("mlp") if "mlp" in fitting else 0,
            key="train_model", help="Only models that accept this dataset's input are listed.",
        )
        st.caption(models.describe(values["model"]))
        m_opts = {}
        for opt, default in models.defaults(values["model"]).items():
            m_opts[opt] = _model_option_widget(values["model"], opt, default)
        values["model_options"] = m_opts

    st.subheader("Optimizer")
    c1, c2, c3, c4 = st.columns(4)
    with c1:
        values["optimizer"] = st.selectbox("Optimizer", OPTIMIZERS,
                                           index=OPTIMIZERS.index("momentum"),
                                           key="train_optimizer")
        values["lr"] = st.number_input("Learning rate", value=0.05, min_value=0.0,
                                       format="%.6g", key="train_lr")
    with c2:
        values["momentum"] = st.number_input(
            "Momentum", value=0.9, min_value=0.0, max_value=0.999, format="%.4g",
            key="train_momentum", disabled=values["optimizer"] != "momentum",
            help="Used by the momentum optimizer.",
        )
        values["weight_decay"] = st.number_input("Weight decay", value=0.0, min_value=0.0,
                                                 format="%.6g", key="train_wd")
    with c3:
        values["schedule"] = st.selectbox("Learning-rate schedule", SCHEDULES,
                                          key="train_schedule")
        values["batch_size"] = int(st.number_input("Batch size", value=64, min_value=1,
                                                   step=1, key="train_batch"))
    with c4:
        values["steps"] = int(st.number_input("Steps", value=200, min_value=1, step=10,
                                              key="train_steps"))
        values["seed"] = int(st.number_input("Seed", value=0, min_value=0, step=1,
                                             key="train_seed"))

    st.subheader("LCA measurement")
    c1, c2, c3, c4 = st.columns(4)
    with c1:
        ms = st.number_input(
            "Measurement-set size (0 = whole training split)", value=2000, min_value=0,
            step=100, key="train_measure_size",
            help="LCA measures the loss on this fixed set of training examples every step.",
        )
        values["measure_size"] = int(ms) or None
        values["measure_batch"] = int(st.number_input(
            "Measurement chunk", value=2048, min_value=1, step=256, key="train_measure_batch",
            help="Examples per forward pass while measuring (memory vs speed).",
        ))
    with c2:
        values["method"] = st.selectbox(
            "LCA method", METHODS, index=list(METHODS).index("rk4"), key="train_method",
            help="How the gradient is integrated along each step: "
            + "; ".join(f"{k}: {v}" for k, v in METHOD_HELP.items()),
        )
        st.caption(METHOD_HELP.get(values["method"], ""))
        values["tolerance"] = st.number_input(
            "Tolerance", value=1e-3, min_value=0.0, format="%.2e", key="train_tolerance",
            help="rk4-adaptive: the allowed |ΔL − ΣA| per step (loss units).",
            disabled=values["method"] not in ("rk4-adaptive", "rk4-paper"),
        )
    with c3:
        values["measure_dtype"] = st.selectbox("Measurement precision", DTYPES,
                                               key="train_dtype")
        values["record"] = st.selectbox(
            "Record", RECORD_MODES, key="train_record",
            help="full: every weight every step (needed for the weights views); units: per "
            "neuron/channel; layers: per tensor (smallest files).",
        )
    with c4:
        values["device"] = st.selectbox("Device", DEVICES, key="train_device")
        values["eval_every"] = int(st.number_input(
            "Accuracy check every (steps)", value=20, min_value=1, step=5, key="train_eval",
        ))

    st.subheader("Efficiency techniques")
    tech_names = techniques.names()
    chosen = st.multiselect(
        "Techniques (optional)", tech_names, key="train_techniques",
        help="Each acts during training; LCA shows what it changed.",
        format_func=lambda n: n,
    )
    values["techniques"] = _technique_widgets(chosen)

    st.subheader("Run name")
    name = st.text_input(
        "File name in the runs folder", value="", key="train_name",
        placeholder="automatic: dataset-model-date.h5",
    ).strip()
    return values, name


def _clean_name(name: str, dataset: str, model: str) -> str:
    """A new, safe file name: the one typed (cleaned, made unique) or dataset-model-time."""
    if not name:
        name = f"{dataset}-{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    return runs.safe_name(name.removesuffix(runs.SUFFIX))


def start_section(values: dict[str, Any], name: str) -> None:
    """Validate, size, then start; every refusal is one sentence."""
    from lca.config import ConfigError, RunConfig

    try:
        config = RunConfig.from_dict(values)
    except ConfigError as e:
        st.error(str(e))
        return
    try:
        est, params = jobs.check_size(config)
    except (jobs.JobError, ValueError, OSError) as e:
        st.error(str(e))
        return
    st.info(
        f"This run will write about **{human_bytes(est)}** ({params:,} parameters, "
        f"{config.steps} steps, record={config.record})."
    )
    cols = st.columns([1, 4])
    with cols[0]:
        clicked = st.button("Start training", type="primary", key="train_start",
                            icon=":material/play_arrow:")
    if clicked:
        run_name = _clean_name(name, config.dataset, config.model)
        try:
            job = jobs.start(config, run_name)
        except (jobs.JobError, ValueError, OSError) as e:
            st.error(str(e))
            return
        st.session_state[LIVE_KEY] = job.name
        st.session_state[SELECT_KEY] = job.name
        st.rerun()


def other_jobs(watching: str | None) -> None:
    """Runs training on this server right now, to watch or stop."""
    live = [j for j in jobs.active() if j.name != watching]
    if not live:
        return
    st.markdown(f"**Also training on this server** (at most {jobs.max_jobs()} at once):")
    for j in live:
        c1, c2, c3 = st.columns([4, 1, 1])
        c1.write(f"{j.name} · {j.seconds:.0f} s")
        if c2.button("Watch", key=f"train_watch_{j.pid}"):
            st.session_state[LIVE_KEY] = j.name
            st.rerun()
        if c3.button("Stop", key=f"train_stopother_{j.pid}"):
            jobs.stop(j)
            st.rerun()


def main() -> None:
    st.title("Train a model")
    st.caption(
        "Pick data, a model and how to train it; LCA Lab trains it in the background and "
        "records which weights helped (lowered the loss) at every step."
    )
    watching = st.session_state.get(LIVE_KEY)
    if watching and not still_there(watching):  # deleted meanwhile: nothing to watch
        del st.session_state[LIVE_KEY]
        watching = None
    if watching:
        st.header("Live")
        live_panel(watching, key="train-live")
        job = jobs.find(watching)
        if job is None or not job.alive:
            if st.button("Close the live view", key="train_close"):
                del st.session_state[LIVE_KEY]
                st.rerun()
    other_jobs(watching)
    st.header("New run")
    values, name = config_form()
    st.divider()
    start_section(values, name)


if __name__ == "__main__":
    main()
