"""Train: set up a run, start it in the background, and watch it learn live.

Every RunConfig option has a widget with a sensible default; a bad value is refused with the
config's one sentence before anything starts, and so is a run that would not fit on disk (the
size is estimated first). Training runs in a subprocess (lca.jobs); this page only reads the
run file it writes, every second, and can stop it (the run keeps every step).

The live panel is in pages/live_panel.py (shared with the Home page's demo); the page runs only
when Streamlit executes this file.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import streamlit as st

from lca import jobs, runs
from lca.store import human_bytes
from pages.live_panel import LIVE_KEY, SELECT_KEY, live_panel, still_there
from pages.shared import literal

log = logging.getLogger("lca.app")
FOLDER_DATASETS = ("mnist", "fashion-mnist", "cifar10")
ROOT = Path(__file__).resolve().parent.parent


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
                help="Folder with the dataset's files (torchvision's layout works).",
            ).strip() or None
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
            disabled=values["method"] != "rk4-adaptive",
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
        st.error(literal(e))
        return
    try:
        est, params = jobs.check_size(config)
    except (jobs.JobError, ValueError, OSError) as e:
        st.error(literal(e))
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
            st.error(literal(e))
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
        c1.write(f"{literal(j.name)} · {j.seconds:.0f} s")
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
