"""Held-out LCA, the per-parameter error estimate and structurally-zero parameters, as the run
file, the views, the experiments and the pages see them."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import lca
from lca import views
from lca.config import ConfigError, RunConfig
from lca.experiments.helped import param_stats
from lca.store import Reader, RunFileError, Writer

F64 = torch.float64


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out.squeeze(-1) - y) ** 2).mean()


def _linear_run(path, val: bool = True, error_every: int = 0, steps: int = 5):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Linear(4, 1).double()
    train = (torch.randn(40, 4, generator=g, dtype=F64), torch.randn(40, generator=g, dtype=F64))
    held = (torch.randn(30, 4, generator=g, dtype=F64), torch.randn(30, generator=g, dtype=F64))
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    thetas = [torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()]
    tracker = lca.Tracker(
        model,
        mse,
        train,
        dtype=F64,
        writer=Writer(path),
        val_data=held if val else None,
        error_every=error_every,
        chunk_size=7,
    )
    with tracker:
        for t in range(steps):
            opt.zero_grad()
            idx = torch.arange(t * 8, t * 8 + 8)
            mse(model(train[0][idx]), train[1][idx]).backward()
            with tracker.step():
                opt.step()
            thetas.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone())
    return model, held, thetas


def test_held_out_lca_in_the_file_is_the_exact_integral(tmp_path):
    path = tmp_path / "val.h5"
    model, held, thetas = _linear_run(path)
    m = lca.Measurer(model, mse, held, dtype=F64)
    # Exact LCA of a quadratic loss: Δ ⊙ ∇L(midpoint), step by step.
    exact = [(b - a) * m.flat_grad((a + b) / 2) for a, b in zip(thetas, thetas[1:], strict=False)]
    losses = [m.flat_loss_and_grad(th, need_grad=False)[0] for th in thetas]
    with Reader(path) as r:
        assert r.has_val
        loss = r.val_steps("loss")
        assert np.allclose(loss, losses, rtol=1e-12)
        assert np.allclose(r.val_steps("lca"), [float(e.sum()) for e in exact], atol=1e-13)
        assert np.allclose(np.diff(loss), r.val_steps("lca") + r.val_steps("error"), atol=1e-15)
        assert np.abs(r.val_steps("error")).max() < 1e-12  # conserved: ΣA_val = ΔL_val
        layers = r.val_layer_lca()
        assert np.allclose(layers[:, 0], [float(e[:4].sum()) for e in exact], atol=1e-13)
        total = torch.stack(exact).sum(0).numpy()
        assert np.allclose(r.val_param_totals("weight").ravel(), total[:4], atol=1e-13)
        assert np.allclose(r.val_param_totals("bias"), total[4:], atol=1e-13)
        g = views.generalization_view(r)
        s = r.summary()
    assert np.allclose([s["val_loss0"], s["val_loss_final"]], [losses[0], losses[-1]], rtol=1e-12)
    assert abs(s["val_conservation_error"]) < 1e-12 and s["panel_error_median"] is None
    assert g.recorded and g.names == ["weight", "bias"]
    assert np.allclose(g.val_totals, [total[:4].sum(), total[4:].sum()], atol=1e-13)
    assert abs(g.val_conservation_error) < 1e-12
    # Every moving weight is in exactly one of the four groups, by its two totals' signs.
    with Reader(path) as r:
        a = np.concatenate([np.ravel(r.param_totals(n)) for n in r.names])
    b = total
    assert int(g.train_only.sum()) == int(((a < 0) & (b > 0)).sum())
    assert int((g.helped_both + g.train_only + g.val_only + g.hurt_both).sum()) == 5


def test_files_without_held_out_lca_still_open_and_say_so(tmp_path):
    path = tmp_path / "plain.h5"
    _linear_run(path, val=False)
    with h5py.File(path, "r") as f:
        assert "lca_val" not in f and "series/lca_val" not in f
    with Reader(path) as r:
        assert not r.has_val
        assert not views.generalization_view(r).recorded
        assert not views.param_error_view(r).recorded
        with pytest.raises(RunFileError, match="--measure-val"):
            r.val_steps("lca")


def test_param_error_view_summarises_the_sampled_steps(tmp_path):
    path = tmp_path / "err.h5"
    _linear_run(path, val=False, error_every=2)
    with Reader(path) as r:
        rel = r.series("lca/panel_error_rel")
        signs = r.series("lca/panel_sign_agreement")
        e = views.param_error_view(r)
        s = r.summary()
    assert s["panel_error_worst"] == e.worst_rel and s["val_loss0"] is None
    assert list(e.steps) == [0, 2, 4] and np.isnan(rel[[1, 3]]).all()
    # A quadratic loss: Simpson with 1 and 2 panels are both exact, so they agree.
    assert e.worst_rel < 1e-12 and e.worst_signs == 1.0
    assert e.median_rel == float(np.median(rel[[0, 2, 4]])) and signs[0] == 1.0


def test_adapt_on_and_measure_val_are_settings():
    with pytest.raises(ConfigError, match="adapt_on"):
        RunConfig(adapt_on="signs", method="rk4-paper")
    assert RunConfig(adapt_on="parameters", method="rk4-paper").param_tolerance == 1e-2
    assert RunConfig().measure_val is False


# --- structurally-zero parameters ----------------------------------------------------------------
def _bn_run(path):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(96, 1, 6, 6, generator=g), torch.randint(0, 3, (96,), generator=g))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    with lca.Tracker(model, nn.CrossEntropyLoss(), data, writer=Writer(path)) as tracker:
        for t in range(6):
            idx = torch.arange(t * 16, t * 16 + 16)
            opt.zero_grad()
            nn.functional.cross_entropy(model(data[0][idx]), data[1][idx]).backward()
            with tracker.step():
                opt.step()


def test_conv_bias_before_batchnorm_is_left_out_of_per_weight_helped_fractions(tmp_path):
    from lca import figures as F

    path = tmp_path / "bn.h5"
    _bn_run(path)
    with Reader(path) as r:
        mask = views.rounding_mask(r)
        assert [n for n, z in zip(r.names, mask, strict=True) if z] == ["0.bias"]
        bias_total = r.param_totals("0.bias")
        assert (bias_total != 0).all()  # it moved (Adam), by rounding noise only
        stats, hs, tot = param_stats(r)
        w = views.weight_stats(r)
        t = r.num_steps
        others = [n for n in r.names if n != "0.bias"]
        kept_hs = np.concatenate([np.ravel(r.param_helped_steps(n)) for n in others])
        kept_tot = np.concatenate([np.ravel(r.param_totals(n)) for n in others])
    assert stats["structural_zero"] == 4
    moved = kept_tot != 0
    assert stats["never_moved"] == int((~moved).sum())
    assert math.isclose(stats["frac_mean"], float((kept_hs[moved] / t).mean()))
    assert w.rounding["0.bias"] and not w.rounding["0.weight"]
    assert int(w.left_out().sum()) == 4
    fig = F.helped_fraction_histogram(hs, t, totals=tot, left_out=w.left_out())
    note = fig.layout.annotations[0].text
    assert "4 with a structurally zero gradient left out" in note
    assert f"{int(moved.sum()):,} parameters" in note


def test_rounding_rule_needs_every_step_and_a_move():
    layer = np.array([[1e-2, 1e-9, 0.0, 1e-9], [2e-2, 1e-10, 0.0, 1e-3]])
    kind = np.array([0, 0])
    # Tensor 1 is rounding level on both steps; 2 never moved; 3 is real on step 2.
    assert views.rounding_tensors(layer, kind, "float32").tolist() == [False, True, False, False]
    # An intervention row does not count against it.
    assert views.rounding_tensors(layer, np.array([0, 1]), "float32")[3]
    # float64 rounds 10⁸ times finer: √eps = 1.5e-8, so 1e-9 of 1e-2 is no longer noise.
    assert not views.rounding_tensors(layer, kind, "float64").any()


# --- the pages ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_layers_and_loss_pages_show_held_out_lca_and_the_error_estimate(make_run, runs_folder):
    from lca.figures.common import HELPED, HURT
    from tests.test_pages_analysis import charts, ok, page, titles

    make_run("val.h5", runs_folder, **VAL_RUN)
    at = ok(page("layers", "val.h5").run())
    t = [x.replace("<br>", " ") for x in titles(at)]
    both = [i for i, x in enumerate(t) if "training (solid) vs held-out" in x]
    assert both and any("held-out loss" in x for x in t[both[0] + 1 :])
    bars = charts(at)[both[0]]["data"]
    assert [b["name"] for b in bars] == ["training loss", "held-out loss (hatched)"]
    assert {HELPED, HURT} >= {c for b in bars for c in b["marker"]["color"]}
    assert any("lowered the training loss but raised the held-out" in c.value for c in at.caption)
    at = ok(page("loss", "val.h5").run())
    labels = [m.label for m in at.metric]
    assert "Per-weight error (median)" in labels and "Signs that agree (worst step)" in labels
    assert any("sampled steps" in c.value for c in at.caption)
    assert any("steps this adaptive method split further" in c.value for c in at.caption)
    make_run("plain.h5", runs_folder, steps=12)
    at = ok(page("layers", "plain.h5").run())
    assert any("--measure-val" in i.value for i in at.info)


VAL_RUN = {"measure_val": True, "error_every": 3, "method": "rk4-paper", "steps": 12}


def test_trained_run_with_measure_val_and_the_helped_experiments_held_out_table(make_run):
    from lca.experiments.helped import heldout_stats

    path = make_run("val.h5", **VAL_RUN)
    with Reader(path) as r:
        assert r.config["measure_val"] is True and r.has_val
        kind = r.steps("kind")
        loss = r.val_steps("loss")
        err = r.val_steps("error")
        # The paper's rule on both sets: every step within the tolerance or at 16 panels.
        splits = r.steps("splits")
        assert ((np.abs(err) <= 1e-3) | (splits == 16)).all()
        assert ((np.abs(r.steps("error")) <= 1e-3) | (splits == 16)).all()
        assert np.allclose(np.diff(loss), r.val_steps("lca") + err, atol=1e-12)
        a = np.concatenate([np.ravel(r.param_totals(n)) for n in r.names])
        b = np.concatenate([np.ravel(r.val_param_totals(n)) for n in r.names])
        ho = heldout_stats(r)
        assert ho is not None
        moved = (a != 0) & (b != 0)
        assert math.isclose(ho["train_only"], float(((a < 0) & (b > 0)).sum() / moved.sum()))
        assert math.isclose(ho["val_helped_mean"], float(r.val_steps("helped")[kind == 0].mean()))


@pytest.mark.slow
def test_pages_say_how_many_weights_were_left_out(runs_folder):
    from tests.test_pages_analysis import ok, page

    _bn_run(runs_folder / "bn.h5")
    with Reader(runs_folder / "bn.h5") as r:
        assert views.structural_zeros(r) == (["0.bias"], 4)
    at = ok(page("loss", "bn.h5").run())
    assert any(r"4 weights (0\.bias) count as neither" in c.value for c in at.caption)
    at = ok(page("neurons", "bn.h5").run())
    notes = [
        a["text"]
        for spec in (json.loads(c.proto.spec) for c in at.get("plotly_chart"))
        for a in spec["layout"].get("annotations", [])
        if "text" in a
    ]
    assert any("4 with a structurally zero gradient left out" in n for n in notes)


@pytest.mark.slow
def test_train_form_offers_held_out_lca_and_the_per_weight_criterion(runs_folder):
    from tests.test_app_core import app

    at = app()
    at.switch_page("pages/train.py").run()
    assert not at.exception
    assert at.checkbox(key="train_measure_val").value is False
    assert at.selectbox(key="train_adapt_on").disabled  # rk4: nothing to refine
    at.selectbox(key="train_method").set_value("rk4-paper").run()
    assert not at.selectbox(key="train_adapt_on").disabled
    assert not at.number_input(key="train_param_tolerance").disabled
