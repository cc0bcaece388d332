"""Efficiency techniques inside the real training loop, and their hooks on a tiny model.

The loop is ``lca.train.run``; records are caught by an in-memory writer that also checks that
every series, event and array a technique writes was declared up front (SWMR cannot add datasets
later). Weights and optimizer state are observed by a ``probe`` technique that runs last.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch import nn

import techniques
from lca.config import ConfigError, RunConfig
from lca.train import TrainingError, run
from techniques import Context, Technique, TechniqueError

BASE = dict(dataset="digits", model="mlp", measure_size=300, eval_every=10, batch_size=64)
TOL = 1e-3  # the adaptive integrator's per-segment tolerance (absolute loss units)


def config(techs: list[dict], steps: int = 40, **kw) -> RunConfig:
    return RunConfig(**{**BASE, "steps": steps, **kw, "techniques": techs})


# ---------------------------------------------------------------------------------------------
# In-memory writer and probe.


class FakeWriter:
    """Implements the writer interface the tracker and techniques use, in memory, strictly."""

    def __init__(self, *args, **kwargs) -> None:
        self.records: list = []
        self.events: dict[str, list[list[float]]] = {}
        self.arrays: dict[str, np.ndarray] = {}
        self.layout = None
        self.status: str | None = None

    def begin(self, layout, loss0: float) -> None:
        self.layout = layout
        self.loss0 = loss0

    def append(self, record) -> None:
        declared = self.layout.series
        for key, value in record.series.items():
            assert key in declared, f"series {key!r} was written but not declared"
            assert np.shape(value) == tuple(declared[key][1]), key
        if record.kind == 0:  # an optimizer step: every declared technique series is filled
            missing = [
                k for k in declared if k.startswith("techniques/") and k not in record.series
            ]
            assert not missing, f"step row lacks {missing}"
        self.records.append(record)

    def add_event(self, path: str, row) -> None:
        assert self.layout is not None, "event written before the run file began"
        assert path in self.layout.events, f"event table {path!r} not declared"
        assert len(row) == len(self.layout.events[path]), path
        self.events.setdefault(path, []).append([float(x) for x in row])

    def set_array(self, path: str, value) -> None:
        assert self.layout is not None, "array written before the run file began"
        assert path in self.layout.arrays, f"array {path!r} not declared"
        dtype, shape, _ = self.layout.arrays[path]
        self.arrays[path] = np.broadcast_to(np.asarray(value, dtype=dtype), shape)

    def close(self, status: str) -> None:
        self.status = status

    def series(self, key: str) -> np.ndarray:
        return np.array([r.series[key] for r in self.records if r.kind == 0])


class Probe(Technique):
    """Test-only technique: snapshots weights and optimizer state after every step."""

    name = "probe"
    description = "Test probe."
    instances: list[Probe] = []

    def __init__(self, **values) -> None:
        super().__init__(**values)
        self.params: list[dict[str, torch.Tensor]] = []
        self.state: list[dict[str, dict[str, torch.Tensor]]] = []
        self.requires_grad: dict[str, bool] = {}
        self.model: nn.Module | None = None
        Probe.instances.append(self)

    def setup(self, ctx: Context) -> None:
        self.model = ctx.model
        self.params.append({n: p.detach().clone() for n, p in ctx.model.named_parameters()})
        self.state.append({})

    def after_step(self, ctx: Context, row: dict[str, object]) -> None:
        self.params.append({n: p.detach().clone() for n, p in ctx.model.named_parameters()})
        self.state.append(
            {
                n: {k: v.clone() for k, v in ctx.optimizer.state[p].items() if torch.is_tensor(v)}
                for n, p in ctx.model.named_parameters()
            }
        )


@pytest.fixture
def train(monkeypatch, tmp_path):
    """``train(config) -> (RunResult, FakeWriter, Probe)``; add {"name": "probe"} to see state."""
    techniques.names()  # load the registry before adding the probe to it
    monkeypatch.setitem(techniques._REGISTRY, "probe", Probe)
    writers: list[FakeWriter] = []

    class Writer(FakeWriter):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            writers.append(self)

    import lca.store

    monkeypatch.setattr(lca.store, "Writer", Writer)  # the loop imports it from lca.store

    def go(cfg: RunConfig):
        Probe.instances.clear()
        result = run(cfg, out=tmp_path / "run.h5")
        assert result.status == "complete", result.message
        return result, writers[-1], (Probe.instances[-1] if Probe.instances else None)

    return go


def conservation_gap(writer: FakeWriter) -> tuple[float, float, float]:
    """(Σ_t ΣA − (L_T − L_0), L_T − L_0, max per-segment |error|)."""
    total = math.fsum(r.total for r in writer.records)
    delta = writer.records[-1].loss_end - writer.loss0
    return total - delta, delta, max(abs(r.error) for r in writer.records)


def tiny_ctx(seed: int = 0) -> Context:
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(6, 5))
    model.add_module("act", nn.ReLU())
    model.add_module("fc2", nn.Linear(5, 4))
    model.add_module("out", nn.Linear(4, 3))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    return Context(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss_fn=nn.CrossEntropyLoss(),
        device=torch.device("cpu"),
        total_steps=10,
        train_x=x,
        train_y=y,
        test_x=x,
        test_y=y,
    )


def one_sentence(message: str) -> bool:
    return (
        "\n" not in message and message.endswith(".") and not re.search(r"[.!?]\s+[A-Z]", message)
    )


# ---------------------------------------------------------------------------------------------
# Weight update skipping.

WUS_FORCED = {
    "name": "wus",
    "window": 5,
    "warmup": 0,
    "threshold": 10.0,
    "patience": 1,
    "skip_windows": 2,
}
# With these options every check is a "plateau": baseline at step 0, skip windows [5, 15),
# [20, 30) and [35, 40) (the run ends inside the third).
SKIPPED = set(range(5, 15)) | set(range(20, 30)) | set(range(35, 40))


@pytest.mark.slow
@pytest.mark.parametrize(("optimizer", "no_grad"), [("momentum", True), ("adam", False)])
def test_wus_skips_weights_bit_for_bit(train, optimizer, no_grad):
    result, w, probe = train(
        config(
            [{**WUS_FORCED, "no_grad": no_grad}, {"name": "probe"}],
            optimizer=optimizer,
            weight_decay=1e-3,
            lr=0.01 if optimizer == "adam" else 0.05,
        )
    )
    skipping = w.series("techniques/wus/skipping")
    assert {t for t, s in enumerate(skipping) if s} == SKIPPED
    weights = Technique.weight_names(probe.model)
    biases = [n for n in probe.params[0] if n not in weights]
    for t in sorted(SKIPPED):
        before, after = probe.params[t], probe.params[t + 1]  # θ_t and θ_{t+1}
        for n in weights:
            assert torch.equal(before[n], after[n]), (t, n)
            # LCA of a weight that did not move is exactly 0 (Δ = 0), not merely small.
            assert torch.count_nonzero(w.records[t].per_param[n]) == 0, (t, n)
        assert any(not torch.equal(before[n], after[n]) for n in biases), t
        if t - 1 in SKIPPED:  # optimizer state of skipped weights is frozen as well
            for n in weights:
                s0, s1 = probe.state[t][n], probe.state[t + 1][n]
                assert s0.keys() == s1.keys() and s0
                assert all(torch.equal(s0[k], s1[k]) for k in s0), (t, n)
    # Why this would fail with zeroed gradients instead of dropped ones: SGD-momentum computes
    # buf = 0.9·buf + 0 and still subtracts lr·buf, and weight decay adds λ·w to a zero gradient;
    # Adam's exp_avg decays towards 0 but is non-zero, so its update m̂/(√v̂+ε) stays non-zero.
    # Either way the weights move (torch.equal fails, LCA ≠ 0) and the state changes.
    normal = [t for t in range(40) if t not in SKIPPED]
    assert all(any(torch.count_nonzero(w.records[t].per_param[n]) for n in weights) for t in normal)
    assert w.events["techniques/wus/windows"] == [[5, 15], [20, 30], [35, 40]]
    assert [e[0] for e in w.events["techniques/wus/accuracy"]] == [0, 5, 15, 20, 30, 35]
    assert all(p.requires_grad for p in probe.model.parameters())  # restored after the run
    s = result.summaries["wus"]
    assert s["steps_skipped"] == len(SKIPPED) and s["windows"] == 3
    assert s["fraction_steps_skipped"] == pytest.approx(len(SKIPPED) / 40)
    assert s["seconds_step_normal"] > 0 and s["seconds_step_skipped"] > 0


def test_wus_waits_for_warmup_and_patience(train):
    _, w, _ = train(config([{**WUS_FORCED, "warmup": 12, "patience": 2}], steps=30))
    skipping = w.series("techniques/wus/skipping")
    # Checks at 5, 10 fall before the warm-up; 15 and 20 are two calm windows -> skip from 20.
    assert {t for t, s in enumerate(skipping) if s} == set(range(20, 30))


@pytest.mark.slow
def test_wus_lr_lowers_the_learning_rate_on_a_plateau(train):
    result, w, _ = train(
        config(
            [{**WUS_FORCED, "name": "wus-lr", "lr_patience": 1, "factor": 0.5, "min_factor": 0.25}]
        )
    )
    lr = w.series("steps/lr")
    assert lr[0] == pytest.approx(0.05)
    assert np.all(np.diff(lr) <= 0) and lr[-1] == pytest.approx(0.05 * 0.25)
    factors = w.series("techniques/wus-lr/lr_factor")
    assert np.allclose(lr, 0.05 * factors)
    assert [e[1] for e in w.events["techniques/wus-lr/lr"]] == [0.5, 0.25]
    assert result.summaries["wus-lr"]["final_lr_factor"] == 0.25
    assert result.summaries["wus-lr"]["lr_reductions"] == 2


# ---------------------------------------------------------------------------------------------
# Freezing.


def test_freeze_keeps_the_layer_bit_for_bit_from_start(train):
    result, w, probe = train(
        config(
            [{"name": "freeze", "layers": "out", "start": 10}, {"name": "probe"}],
            steps=25,
            weight_decay=1e-3,
        )
    )
    frozen = w.series("techniques/freeze/frozen")
    assert list(frozen) == [0] * 10 + [330] * 15  # out: 32·10 weights + 10 biases
    for t in range(10, 25):
        for n in ("out.weight", "out.bias"):
            assert torch.equal(probe.params[t][n], probe.params[t + 1][n])
            assert torch.count_nonzero(w.records[t].per_param[n]) == 0
        assert not torch.equal(probe.params[t]["fc1.weight"], probe.params[t + 1]["fc1.weight"])
    assert not torch.equal(probe.params[0]["out.weight"], probe.params[10]["out.weight"])
    s = result.summaries["freeze"]
    assert s["params_frozen"] == 330 and s["start"] == 10 and s["steps_frozen"] == 15


def test_freeze_unknown_layer_names_the_layers():
    ctx = tiny_ctx()
    with pytest.raises(TechniqueError) as e:
        techniques.create({"name": "freeze", "layers": "out+nope"}).setup(ctx)
    assert "'nope'" in str(e.value) and "fc1, fc2, out" in str(e.value)
    assert one_sentence(str(e.value))
    with pytest.raises(TechniqueError, match="every parameter"):
        techniques.create({"name": "freeze", "layers": "fc1+fc2+out"}).setup(ctx)
    # A prefix matches whole names only: "fc" is not a layer.
    with pytest.raises(TechniqueError, match="'fc'"):
        techniques.create({"name": "freeze", "layers": "fc"}).setup(ctx)
    # Through the loop the same sentence reaches the caller.
    with pytest.raises((TechniqueError, TrainingError), match="cannot find layer 'nope'"):
        run(config([{"name": "freeze", "layers": "nope"}], steps=2), out=None)


# ---------------------------------------------------------------------------------------------
# Mixed precision.


@pytest.mark.slow
def test_amp_bf16_on_cpu_records_and_conserves(train):
    result, w, _ = train(config([{"name": "amp"}], steps=30, method="rk4-adaptive"))
    assert result.summaries["amp"]["dtype"] == "bf16"
    assert result.summaries["amp"]["grad_scaler"] is False
    assert np.all(w.series("techniques/amp/scale") == 1.0)
    assert np.all(w.series("techniques/amp/skipped") == 0)
    gap, delta, worst = conservation_gap(w)
    assert delta < -0.5 and worst <= TOL * 1.01 and abs(gap) <= 0.01 * abs(delta)
    # The training forward really ran in bf16: the minibatch losses differ from float32's.
    _, w32, _ = train(config([], steps=30, method="rk4-adaptive"))
    assert not np.allclose(
        w.series("steps/train_loss"), w32.series("steps/train_loss"), rtol=0, atol=1e-6
    )


@pytest.mark.slow
def test_amp_fp16_grad_scaler_skips_overflowing_steps(train):
    # A huge initial scale makes the fp16 gradients overflow: the scaler skips those steps and
    # halves the scale until they fit (fp16 autocast and GradScaler("cpu") work on CPU too).
    result, w, probe = train(
        config(
            [{"name": "amp", "dtype": "fp16", "init_scale": 2.0**30}, {"name": "probe"}],
            steps=30,
        )
    )
    skipped = w.series("techniques/amp/skipped")
    scale = w.series("techniques/amp/scale")
    assert skipped[0] == 1 and 0 < skipped.sum() < 20 and skipped[-1] == 0
    for t in np.flatnonzero(skipped):
        assert scale[t + 1] == scale[t] / 2  # the drop of get_scale() that marks a skip
        assert all(torch.equal(probe.params[t][n], probe.params[t + 1][n]) for n in probe.params[t])
        assert all(torch.count_nonzero(a) == 0 for a in w.records[t].per_param.values())
    s = result.summaries["amp"]
    assert s["grad_scaler"] is True and s["steps_skipped_by_scaler"] == skipped.sum()
    assert result.loss_final < result.loss0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_amp_on_cuda_uses_fp16_and_a_grad_scaler(train):
    result, w, _ = train(config([{"name": "amp"}], steps=30, device="cuda", method="rk4-adaptive"))
    s = result.summaries["amp"]
    assert s["dtype"] == "fp16" and s["grad_scaler"] is True and s["device"] == "cuda"
    gap, delta, _ = conservation_gap(w)
    assert delta < -0.5 and abs(gap) <= 0.01 * abs(delta)


# ---------------------------------------------------------------------------------------------
# Low-bit weights.


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("scale", ["pow2", "max"])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_fixed_point_weights_lie_on_their_grid(bits, scale, rounding):
    ctx = tiny_ctx()
    q = techniques.create({"name": "quantize", "bits": bits, "scale": scale, "rounding": rounding})
    q.setup(ctx)
    params = ctx.params()
    eff = q.effective(params)
    assert q.targets == ["fc1.weight", "fc2.weight", "out.weight"]
    for n, w in params.items():
        if n not in q.targets:
            assert torch.equal(eff[n], w.detach())  # biases stay real by default
            continue
        levels = eff[n] / q.step_size(w.detach())
        if scale == "pow2":  # a power-of-two step: exactly on the grid
            assert torch.equal(levels, levels.round())
        else:
            assert torch.allclose(levels, levels.round(), atol=1e-4)
        assert levels.abs().max() <= 2 ** (bits - 1)
        assert (eff[n] - w).abs().max() <= q.step_size(w.detach()) * (1 + 1e-6)
    # The training forward uses exactly the effective weights; its gradient reaches w unchanged.
    fwd = q.forward_params(params)
    assert all(torch.equal(fwd[n].detach(), eff[n]) for n in params)
    c = torch.randn_like(params["fc2.weight"])
    (fwd["fc2.weight"] * c).sum().backward()
    assert torch.equal(params["fc2.weight"].grad, c)
    # Deterministic between steps (LCA needs it), even with stochastic rounding.
    assert all(torch.equal(eff[n], q.effective(params)[n]) for n in params)


def test_quantize_biases_option_adds_the_biases():
    ctx = tiny_ctx()
    q = techniques.create({"name": "quantize", "bits": 4, "biases": True})
    q.setup(ctx)
    assert q.targets == [
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
        "out.weight",
        "out.bias",
    ]
    eff = q.effective(ctx.params())
    for n in q.targets:
        levels = eff[n] / q.step_size(ctx.params()[n].detach())
        assert torch.equal(levels, levels.round())
    assert q.summary()["values"] == 15 and q.summary()["tensors_quantized"] == 6


def test_stochastic_rounding_is_redrawn_each_step_and_unbiased():
    ctx = tiny_ctx()
    q = techniques.create({"name": "quantize", "bits": 3, "rounding": "stochastic", "seed": 1})
    q.setup(ctx)
    w = ctx.params()["fc1.weight"]
    draws = []
    for _ in range(400):
        draws.append(q.effective(ctx.params())["fc1.weight"])
        q.after_step(ctx, {})
    assert not torch.equal(draws[0], draws[1])
    step = q.step_size(w.detach())
    assert (torch.stack(draws).mean(0) - w).abs().max() < 0.2 * step


def test_binary_and_ternary_take_two_and_three_values():
    ctx = tiny_ctx()
    with torch.no_grad():
        ctx.params()["fc2.weight"][0, 0] = 3.0  # outside [-1, 1]: clipped at setup
    b = techniques.create({"name": "binary"})
    b.setup(ctx)
    params = ctx.params()
    assert params["fc2.weight"][0, 0] == 1.0
    assert b.targets == ["fc2.weight", "out.weight"]  # keep_first leaves fc1 real
    eff = b.effective(params)
    assert torch.equal(eff["fc1.weight"], params["fc1.weight"].detach())
    for n in b.targets:
        alpha = params[n].detach().abs().mean()
        assert set(eff[n].unique().tolist()) == {-float(alpha), float(alpha)}
    with torch.no_grad():
        params["out.weight"][0, 0] = -5.0
    b.after_step(ctx, {})
    assert params["out.weight"][0, 0] == -1.0

    ctx = tiny_ctx()
    t = techniques.create({"name": "ternary", "keep_first": False})
    t.setup(ctx)
    params = ctx.params()
    eff = t.effective(params)
    assert t.targets == ["fc1.weight", "fc2.weight", "out.weight"]
    for n in t.targets:
        a = params[n].detach().abs()
        keep = a > 0.7 * a.mean()
        low, zero, high = eff[n].unique().tolist()  # exactly three values: -α, 0, α
        assert zero == 0.0 and low == -high and high == pytest.approx(float(a[keep].mean()))
        assert torch.equal(eff[n] != 0, keep)


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec",
    [
        {"name": "quantize"},
        {"name": "quantize", "rounding": "stochastic"},  # 4-bit stochastic needs up to 16 panels
        {"name": "binary"},
        {"name": "ternary"},
    ],
)
def test_quantized_training_learns_and_conserves(train, spec):
    result, w, _ = train(config([spec], steps=50, method="rk4-adaptive"))
    assert result.loss_final < 0.5 * result.loss0
    gap, delta, worst = conservation_gap(w)
    # LCA runs along the straight path between effective weights: Σ ΣA = ΔL up to the
    # integrator, whose per-segment error the adaptive rule keeps within its tolerance.
    assert worst <= TOL * 1.01 and abs(gap) <= 0.01 * abs(delta)
    name = spec["name"]
    bits = w.arrays[f"techniques/{name}/bits"]
    names = list(w.layout.names)
    quantized = [n for n in names if not math.isnan(bits[names.index(n)])]
    assert "out.weight" in quantized and "out.bias" not in quantized
    scale = w.series(f"techniques/{name}/scale")
    assert scale.shape == (50, len(names)) and np.all(scale[:, names.index("out.weight")] > 0)
    changed = w.series(f"techniques/{name}/changed")
    assert np.all((changed >= 0) & (changed <= 1)) and changed.max() > 0


# ---------------------------------------------------------------------------------------------
# Compressibility loss.


def test_compress_loss_term_matches_an_independent_sum():
    ctx = tiny_ctx()
    c = techniques.create({"name": "compress", "strength": 0.01})
    c.setup(ctx)
    params = ctx.params()
    expected = 0.0
    for m in ctx.model.modules():
        if isinstance(m, nn.Linear):
            w = m.weight.detach().double()
            expected += float(w.abs().sum() / torch.linalg.vector_norm(w))
    term = c.loss_term(ctx, params)
    assert float(term.detach()) == pytest.approx(0.01 * expected, rel=1e-6)
    term.backward()
    assert params["fc1.weight"].grad is not None and params["fc1.bias"].grad is None


@pytest.mark.slow
def test_compress_lowers_the_regularizer_relative_to_baseline(train):
    result, w, _ = train(config([{"name": "compress", "strength": 0.05}], steps=50))
    base, _, _ = train(config([], steps=50))

    def value(model: nn.Module) -> float:
        return sum(
            float(m.weight.detach().abs().sum() / m.weight.detach().norm())
            for m in model.modules()
            if isinstance(m, nn.Linear)
        )

    s = result.summaries["compress"]
    assert s["value_final"] == pytest.approx(value(result.tracker.model), rel=1e-5)
    assert value(result.tracker.model) < value(base.tracker.model)
    series = w.series("techniques/compress/value")
    assert series[-1] < series[0] and series[0] == pytest.approx(s["value_initial"], rel=1e-5)
    assert result.loss_final < 0.5 * result.loss0


# ---------------------------------------------------------------------------------------------
# Everything together, options, registry.


@pytest.mark.slow
def test_techniques_combine(train):
    techs = [
        {"name": "freeze", "layers": "out", "start": 5},
        {"name": "quantize", "bits": 6},
        {"name": "amp"},
        {"name": "wus", "window": 5, "warmup": 10, "threshold": 10.0, "patience": 1},
        {"name": "compress"},
        {"name": "probe"},
    ]
    result, w, probe = train(config(techs, steps=40, method="rk4-adaptive"))
    assert set(result.summaries) == {"freeze", "quantize", "amp", "wus", "compress", "probe"}
    assert result.summaries["wus"]["steps_skipped"] > 0
    for t in range(5, 40):
        assert torch.equal(probe.params[t]["out.weight"], probe.params[t + 1]["out.weight"])
    gap, delta, _ = conservation_gap(w)
    assert delta < 0 and abs(gap) <= 0.01 * abs(delta)
    for summary in result.summaries.values():
        assert all(isinstance(v, int | float | str | bool) for v in summary.values())


BAD_OPTIONS = [
    {"name": "wus", "window": 0},
    {"name": "wus", "threshold": -0.1},
    {"name": "wus", "accuracy": "validation"},
    {"name": "wus", "no_grad": "maybe"},
    {"name": "wus", "windw": 5},
    {"name": "wus-lr", "factor": 0},
    {"name": "wus-lr", "min_factor": 2},
    {"name": "freeze", "start": -1},
    {"name": "freeze", "layers": ""},
    {"name": "amp", "dtype": "fp8"},
    {"name": "quantize", "bits": 1},
    {"name": "quantize", "bits": 4.5},
    {"name": "quantize", "rounding": "up"},
    {"name": "binary", "alpha": "two"},
    {"name": "ternary", "threshold": -1},
    {"name": "compress", "strength": -1},
    {"name": "compress", "strength": "nan"},
]


@pytest.mark.parametrize("spec", BAD_OPTIONS, ids=lambda s: "-".join(map(str, s.values())))
def test_bad_options_give_one_sentence(spec):
    with pytest.raises(TechniqueError) as e:
        techniques.create(spec)
    assert one_sentence(str(e.value)), str(e.value)
    with pytest.raises(ConfigError):
        config([spec])


def test_parse_spec_round_trips():
    spec = techniques.parse_spec("wus:window=5,threshold=0.01")
    assert spec == {"name": "wus", "window": "5", "threshold": "0.01"}
    text = spec["name"] + ":" + ",".join(f"{k}={v}" for k, v in spec.items() if k != "name")
    assert techniques.parse_spec(text) == spec
    t = techniques.create(spec)
    assert t.opts["window"] == 5 and t.opts["threshold"] == 0.01
    f = techniques.create(techniques.parse_spec("freeze:layers=out+fc2,start=3"))
    assert f.opts == {"layers": ["out", "fc2"], "start": 3}
    q = techniques.create(techniques.parse_spec("quantize:bits=4,rounding=stochastic"))
    assert q.opts["bits"] == 4 and q.opts["rounding"] == "stochastic"


MINE = ("wus", "wus-lr", "freeze", "amp", "quantize", "binary", "ternary", "compress")


@pytest.mark.parametrize("name", MINE)
def test_registered_with_documented_options(name):
    assert name in techniques.names()
    cls = techniques.get(name)
    assert cls.description and "\n" not in cls.description
    for key, opt in cls.options.items():
        assert opt.help, key
        assert opt.parse(name, key, opt.default) == opt.default  # defaults are valid values
    assert ("reconstructed" in techniques.describe(name)) == name.startswith("wus")
