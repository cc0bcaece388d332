"""Train: set up a run, start it in the background, and watch it learn live.

Every RunConfig option has a widget with a sensible default; a bad value is refused with the
config's one sentence before anything starts, and so is a run that would not fit on disk (the
size is estimated first). Training runs in a subprocess (lca.jobs); this page only reads the
run file it writes, every second, and can stop it (the run keeps every step).

The live panel is in pages/live_panel.py (shared with the Home page's demo); the page runs only
when Streamlit executes this file.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import streamlit as st

from lca import jobs, runs
from lca.config import ConfigError, RunConfig
from lca.spec import Spec
from lca.store import human_bytes
from pages import through_app
from pages.live_panel import LIVE_KEY, SELECT_KEY, live_panel, still_there
from pages.shared import literal, locked_help, may, refuse_unless

through_app()  # a bare page run on a fresh server: rerun through app.py

log = logging.getLogger("lca.app")
FOLDER_DATASETS = ("mnist", "fashion-mnist", "cifar10")
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# The form.


def _spec_widget(
    label: str, spec: Spec, key: str, default: Any = None, disabled: bool = False
) -> Any:
    """One widget for one setting, chosen from its Spec (a RunConfig field or a technique
    option); lists are typed as 'a+b'. The value is checked by the Spec, not by the widget."""
    hints = spec.widget
    default = spec.default if default is None else default
    label = label.replace("_", " ")
    common = {"key": key, "help": spec.help or None, "disabled": disabled}
    low = hints.get("min", spec.minimum if spec.minimum is not None else spec.above)
    high = hints.get("max", spec.maximum)
    allowed = spec.allowed()
    if allowed:
        opts = list(allowed)
        return st.selectbox(
            label, opts, index=opts.index(default) if default in opts else 0, **common
        )
    if spec.kind is bool:
        return st.checkbox(label, value=bool(default), **common)
    if spec.keywords:  # a number or a word such as "auto": typed, then checked by the Spec
        text = st.text_input(label, value=str(default), **common).strip()
        return int(text) if spec.kind is int and text.isdigit() else text
    if spec.kind is int:
        return int(
            st.number_input(
                label,
                value=int(default),
                step=int(hints.get("step", 1)),
                min_value=None if low is None else int(low),
                max_value=None if high is None else int(high),
                **common,
            )
        )
    if spec.kind is float:
        return st.number_input(
            label,
            value=float(default),
            format=hints.get("format", "%.6g"),
            min_value=None if low is None else float(low),
            max_value=None if high is None else float(high),
            **common,
        )
    if spec.kind in (list, tuple):
        text = st.text_input(
            label,
            value="+".join(map(str, default or [])),
            key=key,
            help=(spec.help or "") + " (several values: join them with +)",
            disabled=disabled,
        )
        return [v for v in text.replace("|", "+").split("+") if v.strip()]
    return st.text_input(label, value="" if default is None else str(default), **common)


def _field_widget(name: str, values: dict[str, Any], default: Any = None) -> Any:
    """The widget of RunConfig field ``name``, built from its Spec (label, range, hints)."""
    spec = RunConfig.specs()[name]
    hints = spec.widget
    when = hints.get("when")  # (field, value or values): the field matters only then
    if when is not None:
        wanted = when[1] if isinstance(when[1], tuple | list) else (when[1],)
        disabled = values.get(when[0]) not in wanted
    else:
        disabled = False
    if hints.get("zero_is_none"):  # 0 stands for None ("all", "the whole split")
        spec = dataclasses.replace(spec, minimum=0)
        default = (spec.default or 0) if default is None else default
    value = _spec_widget(spec.label or name, spec, f"train_{name}", default, disabled)
    if hints.get("zero_is_none"):
        value = int(value) or None
    if "caption" in hints:
        st.caption(hints["caption"].get(value, ""))
    return value


def _section(title: str, values: dict[str, Any]) -> None:
    """Every RunConfig field of form section ``title``: four columns, two fields each."""
    st.subheader(title)
    names = [n for n, s in RunConfig.specs().items() if s.widget.get("section") == title]
    cols = st.columns(4)
    for i, name in enumerate(names):
        with cols[min(i // 2, 3)]:
            values[name] = _field_widget(name, values)


def _model_option_widget(model: str, opt: str, default: Any) -> Any:
    key = f"train_model_{model}_{opt}"
    if isinstance(default, tuple | list):
        text = st.text_input(
            f"{opt} (comma-separated)",
            value=", ".join(map(str, default)),
            key=key,
            help=f"Option {opt!r} of model {model!r}, e.g. 64, 32.",
        )
        parts = [p.strip() for p in text.strip().strip("[]()").split(",") if p.strip()]
        return [int(p) if p.lstrip("-").isdigit() else p for p in parts]
    if opt == "activation":
        from lca import models

        acts = list(getattr(models, "_ACTIVATIONS", {}) or [default])
        return st.selectbox(opt, acts, index=acts.index(default) if default in acts else 0, key=key)
    return _spec_widget(
        opt, Spec(default, f"Option {opt!r} of model {model!r}.", type(default)), key
    )


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
                    value = _spec_widget(opt, o, f"train_tech_{name}_{opt}")
                if value != o.default:
                    spec[opt] = value
            specs.append(spec)
    return specs


def config_form() -> tuple[dict[str, Any], str]:
    """Every RunConfig option as a widget; returns (config values, requested run name)."""
    import data
    import techniques
    from lca import models

    values: dict[str, Any] = {}
    st.subheader("Data and model")
    c1, c2 = st.columns(2)
    with c1:
        values["dataset"] = _field_widget("dataset", values)
        st.caption(data.describe(values["dataset"]))
        if values["dataset"] not in FOLDER_DATASETS and data.locate("fashion-mnist"):
            st.caption("Fashion-MNIST is installed: choose `fashion-mnist` for real 28×28 images.")
        defaults = data.default_options(values["dataset"])
        ds_opts = {
            opt: _spec_widget(
                opt,
                Spec(default, f"Option {opt!r} of dataset {values['dataset']}.", type(default)),
                f"train_ds_{values['dataset']}_{opt}",
            )
            for opt, default in defaults.items()
        }
        values["dataset_options"] = {k: v for k, v in ds_opts.items() if v != defaults.get(k)}
        if values["dataset"] in FOLDER_DATASETS:
            values["data_dir"] = (
                _field_widget(
                    "data_dir", values, default=os.environ.get("LCA_DATA_DIR", "")
                ).strip()
                or None
            )
            found = data.locate(values["dataset"], values["data_dir"])
            if found is not None:
                st.caption(f"Files found in {found}.")
        values["subset"] = _field_widget("subset", values)
    with c2:
        try:
            fitting = jobs.compatible_models(values["dataset"], values["dataset_options"])
        except (ValueError, OSError):
            fitting = models.names()
        fitting = fitting or models.names()
        default = RunConfig().model
        values["model"] = st.selectbox(
            RunConfig.specs()["model"].label,
            fitting,
            index=fitting.index(default) if default in fitting else 0,
            key="train_model",
            help="Only models that accept this dataset's input are listed.",
        )
        st.caption(models.describe(values["model"]))
        values["model_options"] = {
            opt: _model_option_widget(values["model"], opt, default)
            for opt, default in models.defaults(values["model"]).items()
        }

    _section("Optimizer", values)
    _section("LCA measurement", values)
    _section("Distributed training", values)  # Stanza / data parallel: spawned processes

    st.subheader("Efficiency techniques")
    tech_names = techniques.names()
    chosen = st.multiselect(
        "Techniques (optional)",
        tech_names,
        key="train_techniques",
        help="Each acts during training; LCA shows what it changed.",
        format_func=lambda n: n,
    )
    values["techniques"] = _technique_widgets(chosen)

    st.subheader("Run name")
    name = st.text_input(
        "File name in the runs folder",
        value="",
        key="train_name",
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
    if config.pack > 1:  # one job, N run files: NAME-0 … NAME-(N-1)
        st.info(
            f"This pack of {config.pack} models (seeds {config.seed} … "
            f"{config.seed + config.pack - 1}, trained together in one job) will write about "
            f"**{human_bytes(est)}** per model, {human_bytes(est * config.pack)} in all "
            f"({params:,} parameters, {config.steps} steps, record={config.record}), as runs "
            f"NAME-0 … NAME-{config.pack - 1}."
        )
    else:
        st.info(
            f"This run will write about **{human_bytes(est)}** ({params:,} parameters, "
            f"{config.steps} steps, record={config.record})."
        )
    large = jobs.large_run_notice(config)  # fits, but large: the smaller record modes' sizes
    if large:
        st.warning(literal(large))
    cols = st.columns([1, 4])
    with cols[0]:
        clicked = st.button(
            "Start training",
            type="primary",
            key="train_start",
            icon=":material/play_arrow:",
            disabled=not may("train"),
            help=locked_help("train"),
        )
    if clicked and refuse_unless("train"):
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
        if c3.button(
            "Stop",
            key=f"train_stopother_{j.pid}",
            disabled=not may("stop"),
            help=locked_help("stop"),
        ) and refuse_unless("stop"):
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
