"""Tests for the pruning techniques (techniques/prune.py) and the L-OBS maths (techniques/lobs.py).

Most tests drive the plugin hooks in a small hand-written loop that calls them in the order
``lca/train.py`` does (wants_intervention/intervene inside ``tracker.intervention`` and then
after_intervention before the step, before_forward, before_step after backward, after_step inside
``tracker.step``), so they can look at the
optimizer state and at what the technique writes through a fake writer. Two tests run the real
loop. Everything is small: digits, an MLP, ~300 measurement examples.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import data
import techniques
from lca import models
from lca.allocate import KIND_INTERVENTION, Tracker
from lca.config import RunConfig
from lca.train import run
from techniques import Context, TechniqueError, lobs, prune

# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    ds = data.load("digits")
    return ds.x_train[:600], ds.y_train[:600]


class FakeWriter:
    """In-memory stand-in for lca.Writer: keeps what the tracker and techniques send."""

    def __init__(self) -> None:
        self.layout = None
        self.records: list = []
        self.events: dict[str, list[list[float]]] = {}
        self.arrays: dict[str, np.ndarray] = {}
        self.status = None

    def begin(self, layout, loss0: float) -> None:
        self.layout = layout

    def append(self, record) -> None:
        self.records.append(record)

    def close(self, status: str) -> None:
        self.status = status

    def add_event(self, path: str, row: list[float]) -> None:
        self.events.setdefault(path, []).append(list(row))

    def set_array(self, path: str, value) -> None:
        self.arrays[path] = np.array(value, copy=True)


def make_model(seed: int = 0, hidden=(32, 32)) -> nn.Module:
    torch.manual_seed(seed)
    return models.build("mlp", (1, 8, 8), 10, hidden=hidden)


def make_optimizer(kind: str, model: nn.Module) -> torch.optim.Optimizer:
    if kind == "momentum":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-2)
    if kind == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-1)
    return torch.optim.SGD(model.parameters(), lr=0.05)


def loop(
    tech: techniques.Technique,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    *,
    tracker: Tracker | None = None,
    writer: FakeWriter | None = None,
    on_event=None,
) -> Context:
    """The hook order of lca/train.py, without the parts a technique cannot see."""
    loss_fn = nn.CrossEntropyLoss()
    ctx = Context(
        model=model,
        optimizer=opt,
        loss_fn=loss_fn,
        device=torch.device("cpu"),
        total_steps=steps,
        train_x=x,
        train_y=y,
        test_x=x[:50],
        test_y=y[:50],
    )
    tech.setup(ctx)
    decl = tech.declare(ctx)
    if tracker is not None:
        tracker.layout.series.update({tech.path(k): v for k, v in decl.series.items()})
        tracker.layout.events.update({tech.path(k): v for k, v in decl.events.items()})
        tracker.layout.arrays.update({tech.path(k): v for k, v in decl.arrays.items()})
        tracker.start()
    ctx.tracker, ctx.writer = tracker, writer
    g = torch.Generator().manual_seed(3)
    for step in range(steps):
        ctx.step = step
        if tech.wants_intervention(ctx):
            if on_event is not None:
                on_event(ctx, "before")
            if tracker is not None:
                with tracker.intervention(tech.name) as row:
                    tech.intervene(ctx, row)
                tech.after_intervention(ctx, tracker.last)
            else:
                tech.intervene(ctx, {})
            if on_event is not None:
                on_event(ctx, "after")
        tech.before_forward(ctx)
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        tech.before_step(ctx)
        if tracker is not None:
            with tracker.step() as row:
                opt.step()
                tech.after_step(ctx, row)
        else:
            opt.step()
            tech.after_step(ctx, {})
        ctx.step = step + 1
    return ctx


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if n.endswith("weight")}


# --------------------------------------------------------------------------- registry, options


def test_registered_with_one_line_descriptions() -> None:
    for name in ("prune-magnitude", "prune-lobs", "prune-lca"):
        assert name in techniques.names()
        text = techniques.describe(name)
        assert text and "\n" not in text


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "prune-magnitude", "sparsity": 1.5},
        {"name": "prune-magnitude", "sparsity": "half"},
        {"name": "prune-magnitude", "schedule": "cubic"},
        {"name": "prune-magnitude", "start": -1},
        {"name": "prune-magnitude", "scope": "model"},
        {"name": "prune-magnitude", "every": 0},
        {"name": "prune-magnitude", "frobnicate": 1},
        {
            "name": "prune-magnitude",
            "schedule": "gradual",
            "initial_sparsity": 0.6,
            "sparsity": 0.5,
        },
        {"name": "prune-lobs", "variant": "fast"},
        {"name": "prune-lobs", "samples": 0},
        {"name": "prune-lobs", "scope": "global"},
        {"name": "prune-lca", "start": 0},
    ],
)
def test_bad_options_are_one_sentence(spec: dict) -> None:
    with pytest.raises(TechniqueError) as err:
        techniques.create(spec)
    _one_sentence(str(err.value))


def _one_sentence(msg: str) -> None:
    assert msg.endswith(".") and "\n" not in msg
    assert ". " not in msg[:-1], msg


@pytest.mark.slow
def test_bad_layers_and_unsupported_layers_fail_at_setup(digits) -> None:
    x, y = digits
    model = make_model()
    with pytest.raises(TechniqueError) as err:
        loop(
            techniques.create({"name": "prune-magnitude", "layers": ["fc9"]}),
            model,
            make_optimizer("sgd", model),
            x,
            y,
            1,
        )
    _one_sentence(str(err.value))
    assert "fc1" in str(err.value)

    conv1d = nn.Sequential(
        nn.Unflatten(1, (1, 64)), nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(124, 10)
    )
    with pytest.raises(TechniqueError) as err:
        loop(
            techniques.create({"name": "prune-lobs"}),
            conv1d,
            make_optimizer("sgd", conv1d),
            x.flatten(1),
            y,
            1,
        )
    _one_sentence(str(err.value))


def test_parse_spec_layers_and_selection(digits) -> None:
    spec = techniques.parse_spec("prune-magnitude:layers=fc1+out,sparsity=0.25,start=0")
    tech = techniques.create(spec)
    x, y = digits
    model = make_model()
    loop(tech, model, make_optimizer("sgd", model), x, y, 2)
    assert [lay.name for lay in tech.layers] == ["fc1.weight", "out.weight"]
    assert (model.fc2.weight == 0).sum() == 0
    tech2 = techniques.create({"name": "prune-magnitude", "skip_last": True, "start": 0})
    loop(tech2, make_model(), make_optimizer("sgd", make_model()), x, y, 1)
    assert [lay.name for lay in tech2.layers] == ["fc1.weight", "fc2.weight"]


# --------------------------------------------------------------------------- masks stay zero


@pytest.mark.parametrize("opt_kind", ["momentum", "adam", "adamw"])
def test_pruned_weights_stay_exactly_zero(digits, opt_kind: str) -> None:
    x, y = digits
    model = make_model()
    opt = make_optimizer(opt_kind, model)
    tech = techniques.create({"name": "prune-magnitude", "sparsity": 0.6, "start": 5})
    seen: list[dict[str, torch.Tensor]] = []

    def snap(ctx, when):
        if when == "after":
            seen.append({n: w.detach().clone() for n, w in weights(model).items()})

    ctx = loop(tech, model, opt, x, y, 25, on_event=snap)
    assert len(seen) == 1
    for name, w in weights(model).items():
        mask = tech.masks[name]
        assert int((~mask).sum()) == prune.pruned_count(w.numel(), 0.6)
        assert torch.all(w[~mask] == 0.0)
        assert torch.all(seen[0][name][~mask] == 0.0)
        # the survivors kept training
        assert not torch.equal(w[mask], seen[0][name][mask])
        state = ctx.optimizer.state[w]
        keys = [k for k, v in state.items() if torch.is_tensor(v) and v.shape == w.shape]
        expected = {
            "momentum": {"momentum_buffer"},
            "adam": {"exp_avg", "exp_avg_sq"},
            "adamw": {"exp_avg", "exp_avg_sq"},
        }[opt_kind]
        assert expected <= set(keys)
        for k in keys:
            assert torch.all(state[k][~mask] == 0.0), k
            assert torch.any(state[k][mask] != 0.0), k


def test_amsgrad_state_is_zeroed(digits) -> None:
    x, y = digits
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, amsgrad=True, weight_decay=1e-2)
    tech = techniques.create({"name": "prune-magnitude", "start": 3})
    loop(tech, model, opt, x, y, 10)
    w = model.fc1.weight
    mask = tech.masks["fc1.weight"]
    assert torch.all(opt.state[w]["max_exp_avg_sq"][~mask] == 0.0)
    assert torch.all(w[~mask] == 0.0)


# --------------------------------------------------------------------------- schedules


def _zhu_gupta(t: int, s_i: float, s_f: float, t0: int, span: int) -> float:
    return s_f + (s_i - s_f) * (1 - (t - t0) / span) ** 3


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_gradual_schedule_counts(digits, scope: str) -> None:
    x, y = digits
    model = make_model()
    s_i, s_f, t0, span, every = 0.1, 0.8, 4, 23, 5
    tech = techniques.create(
        {
            "name": "prune-magnitude",
            "schedule": "gradual",
            "initial_sparsity": s_i,
            "sparsity": s_f,
            "start": t0,
            "span": span,
            "every": every,
            "scope": scope,
        }
    )
    counts: dict[int, dict[str, int]] = {}

    def count(ctx, when):
        if when == "after":
            counts[ctx.step] = {n: int((w == 0).sum()) for n, w in weights(model).items()}

    writer = FakeWriter()
    loop(tech, model, make_optimizer("momentum", model), x, y, 40, writer=writer, on_event=count)
    # events at t0, t0+every, …, and at t0+span when span is not a multiple of every
    assert sorted(counts) == [4, 9, 14, 19, 24, 27]
    sizes = {n: w.numel() for n, w in weights(model).items()}
    for t, got in counts.items():
        s_t = _zhu_gupta(t, s_i, s_f, t0, span)
        if scope == "layer":
            for n, c in got.items():
                assert c == math.floor(s_t * sizes[n] + 0.5), (t, n)
        else:
            assert sum(got.values()) == math.floor(s_t * sum(sizes.values()) + 0.5), t
    rows = writer.events[tech.path("events")]
    assert len(rows) == 6 * 3
    col = {c: i for i, c in enumerate(prune.EVENT_COLUMNS)}
    for r in rows:
        t = int(r[col["step"]])
        name = list(sizes)[[0, 2, 4].index(int(r[col["layer"]]))]
        assert r[col["pruned"]] == counts[t][name]
    removed = sum(r[col["removed"]] for r in rows)
    assert removed == sum(counts[27].values())
    totals = writer.events[tech.path("event_totals")]
    assert [int(r[0]) for r in totals] == sorted(counts)
    assert tech.summary()["events"] == 6


def test_no_event_when_nothing_to_prune(digits) -> None:
    x, y = digits
    model = make_model()
    tech = techniques.create(
        {"name": "prune-magnitude", "schedule": "gradual", "start": 2, "span": 10, "every": 5}
    )
    events: list[int] = []
    loop(
        tech,
        model,
        make_optimizer("sgd", model),
        x,
        y,
        14,
        on_event=lambda ctx, w: events.append(ctx.step) if w == "after" else None,
    )
    assert events == [7, 12]  # s_i = 0: the event at t0 would remove nothing
    assert tech.global_sparsity() == prune.pruned_count(3392, 0.5) / 3392


def test_start_after_the_run_prunes_nothing(digits) -> None:
    x, y = digits
    model = make_model()
    tech = techniques.create({"name": "prune-magnitude", "start": 100})
    loop(tech, model, make_optimizer("sgd", model), x, y, 5)
    summary = tech.summary()
    assert summary["events"] == 0 and summary["sparsity"] == 0.0 and "note" in summary


# --------------------------------------------------------------------------- L-OBS maths


def _correlated(n: int = 400, d: int = 24, rank: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, rank, generator=g)
    a = torch.randn(rank, d, generator=g)
    return z @ a + 0.05 * torch.randn(n, d, generator=g)


class _OneLayer(nn.Module):
    def __init__(self, d: int, out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _prune_once(spec: dict, x: torch.Tensor, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    before = _OneLayer(x.shape[1], 12)
    nn.init.normal_(before.fc.bias)
    after = copy.deepcopy(before)
    tech = techniques.create({"start": 0, "sparsity": 0.5, **spec})
    y = torch.zeros(len(x), dtype=torch.long)
    ctx = Context(
        model=after,
        optimizer=torch.optim.SGD(after.parameters(), lr=0.1),
        loss_fn=nn.CrossEntropyLoss(),
        device=torch.device("cpu"),
        total_steps=1,
        train_x=x,
        train_y=y,
        test_x=x,
        test_y=y,
    )
    tech.setup(ctx)
    assert tech.wants_intervention(ctx)
    tech.intervene(ctx, {})
    assert int((after.fc.weight == 0).sum()) == prune.pruned_count(after.fc.weight.numel(), 0.5)
    return before, after


def _output_error(before: nn.Module, after: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(((before(x) - after(x)).double() ** 2).sum())


def test_lobs_reconstructs_better_than_magnitude() -> None:
    x = _correlated()
    errors = {}
    for label, spec in [
        ("magnitude", {"name": "prune-magnitude"}),
        ("rank-once", {"name": "prune-lobs", "variant": "rank-once", "samples": len(x)}),
        ("obs-update", {"name": "prune-lobs", "variant": "obs-update", "samples": len(x)}),
    ]:
        errors[label] = _output_error(*_prune_once(spec, x), x)
    assert errors["rank-once"] < errors["magnitude"]
    assert errors["obs-update"] < errors["magnitude"]
    assert errors["obs-update"] <= errors["rank-once"]
    # On these inputs the difference is large, not a rounding accident.
    assert errors["obs-update"] < 0.5 * errors["rank-once"] < 0.5 * errors["magnitude"]


def test_obs_update_is_the_constrained_least_squares_optimum() -> None:
    """Sequential OBS with exact H⁻¹ downdates ends at argmin δᵀHδ with the removed set at 0."""
    x = _correlated(d=10)
    lin = nn.Linear(10, 4)
    rows = lobs.layer_rows(lin, x)
    acc = lobs.HessianAccumulator(rows.shape[1])
    acc.add(rows)
    h = lobs.damped(acc.value(), 1e-4)
    w = lobs.layer_matrix(lin)
    alive = torch.ones_like(w, dtype=torch.bool)
    alive[0, 2] = alive[3, 5] = False  # already pruned before this event
    w[~alive] = 0.0
    cand = alive.clone()
    cand[:, -1] = False
    new, removed = lobs.prune_obs_update(w, h, alive, cand, 15)
    assert int(removed.sum()) == 15 and not bool((removed & ~cand).any())
    assert new[0, 2] == 0.0 and new[3, 5] == 0.0  # compensation never revives a pruned weight
    for c in range(w.shape[0]):
        zero = removed[c] | ~alive[c]
        keep = ~zero
        # optimum: w'_keep = w_keep + H_kk⁻¹ H_kz w_z, w'_z = 0
        exp = w[c].clone()
        exp[keep] = w[c, keep] + torch.linalg.solve(h[keep][:, keep], h[keep][:, zero] @ w[c, zero])
        exp[zero] = 0.0
        torch.testing.assert_close(new[c], exp, rtol=1e-6, atol=1e-8)


def test_single_removal_matches_obs_formula() -> None:
    x = _correlated(d=6)
    lin = nn.Linear(6, 1)
    rows = lobs.layer_rows(lin, x)
    acc = lobs.HessianAccumulator(rows.shape[1])
    acc.add(rows)
    h = lobs.damped(acc.value(), 1e-4)
    hinv = lobs.spd_inverse(h)
    w = lobs.layer_matrix(lin)
    cand = torch.ones_like(w, dtype=torch.bool)
    cand[:, -1] = False
    s = lobs.scores(w, hinv.diagonal()).masked_fill(~cand, math.inf)
    q = int(s.argmin())
    for new, _ in (
        lobs.prune_rank_once(w, hinv, cand, 1),
        lobs.prune_obs_update(w, h, torch.ones_like(cand), cand, 1),
    ):
        exp = w[0] - w[0, q] / hinv[q, q] * hinv[:, q]
        exp[q] = 0.0
        torch.testing.assert_close(new[0], exp)
        # its layer-wise error is the predicted score: δᵀHδ = 2·L_q
        assert lobs.reconstruction_error(w, new, h) == pytest.approx(2 * float(s.min()))


def test_conv_im2col_rows_reproduce_the_convolution() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1, stride=2)
    x = torch.randn(4, 3, 9, 9)
    rows = lobs.layer_rows(conv, x)
    out = (rows @ lobs.layer_matrix(conv).T).reshape(4, -1, 5).permute(0, 2, 1)
    torch.testing.assert_close(out.float(), conv(x).flatten(2), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_lobs_prunes_conv_layers(digits) -> None:
    x, y = digits
    torch.manual_seed(0)
    model = models.build("cnn-small", (1, 8, 8), 10)
    for variant in ("rank-once", "obs-update"):
        m = copy.deepcopy(model)
        tech = techniques.create(
            {"name": "prune-lobs", "variant": variant, "start": 0, "samples": 128}
        )
        loop(tech, m, make_optimizer("sgd", m), x, y, 2)
        for name, w in weights(m).items():
            assert int((w == 0).sum()) == prune.pruned_count(w.numel(), 0.5), name


# --------------------------------------------------------------------------- LCA segments


def _capture_event_records(monkeypatch, cls) -> list:
    """Per prune event: (tracker record of its segment, params before, params after).

    The record is the segment ``after_intervention`` receives.
    """
    seen: list = []
    original_intervene, original_after = cls.intervene, cls.after_intervention

    def params(ctx):
        return {n: p.detach().clone() for n, p in ctx.model.named_parameters()}

    def intervene(self, ctx, row):
        before = params(ctx)
        original_intervene(self, ctx, row)
        seen.append([None, before, params(ctx)])

    def after_intervention(self, ctx, measured):
        assert measured is ctx.last_segment and measured.kind == KIND_INTERVENTION
        seen[-1][0] = measured
        original_after(self, ctx, measured)

    monkeypatch.setattr(cls, "intervene", intervene)
    monkeypatch.setattr(cls, "after_intervention", after_intervention)
    return seen


def test_prune_event_is_its_own_lca_segment(monkeypatch) -> None:
    seen = _capture_event_records(monkeypatch, prune.PruneMagnitude)
    config = RunConfig(
        steps=25,
        measure_size=300,
        method="rk4-adaptive",
        optimizer="momentum",
        techniques=[{"name": "prune-magnitude", "sparsity": 0.5, "start": 10}],
    )
    r = run(config, out=None)
    hist = r.tracker.history
    assert len(hist) == 26
    assert [i for i, h in enumerate(hist) if h["kind"] == KIND_INTERVENTION] == [10]
    tol = config.tolerance
    assert all(abs(h["error"]) <= tol for h in hist)
    total = math.fsum(h["lca"] for h in hist)
    assert abs(total - (r.loss_final - r.loss0)) <= tol * len(hist)
    assert hist[10]["lca"] > 0  # pruning half the weights costs loss

    ((rec, before, after),) = seen
    model = r.tracker.model
    tech_summary = r.summaries["prune-magnitude"]
    assert tech_summary["cost_total"] == pytest.approx(rec.total)
    assert tech_summary["cost_removed"] == pytest.approx(rec.total)
    assert tech_summary["sparsity"] == pytest.approx(0.5, abs=1e-3)
    for name, a in rec.per_param.items():
        if name.endswith("weight"):
            w = dict(model.named_parameters())[name]
            moved = before[name] != after[name]
            assert torch.all(after[name][moved] == 0.0)  # magnitude only removes
            # A ≠ 0 only where a weight was removed, and those weights are still exactly 0
            assert not bool(((a != 0) & ~moved).any())
            assert torch.all(w.detach()[a != 0] == 0.0)
            assert int((a != 0).sum()) <= prune.pruned_count(w.numel(), 0.5)
            # (not all of them: digits has always-blank pixels, whose weights get no gradient)
            assert int((a != 0).sum()) > 0.5 * prune.pruned_count(w.numel(), 0.5)
        else:
            assert torch.all(a == 0)


@pytest.mark.slow
def test_lobs_event_moves_only_its_layer(monkeypatch) -> None:
    seen = _capture_event_records(monkeypatch, prune.PruneLOBS)
    config = RunConfig(
        steps=12,
        measure_size=300,
        techniques=[
            {"name": "prune-lobs", "start": 8, "layers": ["fc2"], "variant": "obs-update"},
        ],
    )
    r = run(config, out=None)
    ((rec, before, after),) = seen
    for name, a in rec.per_param.items():
        moved = before[name] != after[name]
        assert not bool(((a != 0) & ~moved).any()), name  # A ≠ 0 only where weights moved
        if name.startswith("fc2."):
            survivors = moved & (after[name] != 0)  # compensating survivors (and the bias)
            assert int(survivors.sum()) > 0.4 * a.numel()
            assert bool((a[survivors] != 0).any())
        else:
            assert not bool(moved.any()) and torch.all(a == 0), name
    s = r.summaries["prune-lobs"]
    assert s["cost_removed"] + s["cost_compensated"] == pytest.approx(rec.total)
    assert s["sparsity_per_layer"] == {"fc2.weight": 0.5}


# --------------------------------------------------------------------------- records


def test_records_match_the_weights(digits) -> None:
    x, y = digits
    model = make_model()
    writer = FakeWriter()
    tracker = Tracker(model, nn.CrossEntropyLoss(), (x[:300], y[:300]), writer=writer)
    tech = techniques.create(
        {
            "name": "prune-magnitude",
            "schedule": "gradual",
            "start": 3,
            "span": 8,
            "every": 4,
            "initial_sparsity": 0.2,
            "sparsity": 0.6,
        }
    )
    loop(tech, model, make_optimizer("momentum", model), x, y, 14, tracker=tracker, writer=writer)
    tracker.close()
    steps = [3, 7, 11]
    layout = writer.layout
    assert layout.series[tech.path("sparsity")] == ("f8", ())
    assert layout.events[tech.path("events")] == prune.EVENT_COLUMNS
    assert layout.events[tech.path("event_totals")] == prune.TOTAL_COLUMNS
    for name, w in weights(model).items():
        path = tech.path(prune.array_name(name))
        assert layout.arrays[path] == ("i4", tuple(w.shape), -1.0)
        arr = writer.arrays[path]
        assert arr.dtype == np.int32 and arr.shape == tuple(w.shape)
        np.testing.assert_array_equal(arr >= 0, (w == 0).numpy())
        assert set(np.unique(arr[arr >= 0])) <= set(steps)
        assert ":" in path.rsplit("/", 1)[1] and "." not in path.rsplit("/", 1)[1]

    # segments: 14 steps + 3 events; the sparsity series is filled on every one of them
    kinds = [rec.kind for rec in writer.records]
    event_rows = [i for i, k in enumerate(kinds) if k == KIND_INTERVENTION]
    assert len(kinds) == 17 and len(event_rows) == 3
    sparsity = [rec.series[tech.path("sparsity")] for rec in writer.records]
    assert sparsity[0] == 0.0 and sparsity[-1] == pytest.approx(0.6, abs=1e-3)
    assert all(b >= a for a, b in zip(sparsity, sparsity[1:], strict=False))

    rows = writer.events[tech.path("events")]
    col = {c: i for i, c in enumerate(prune.EVENT_COLUMNS)}
    assert len(rows) == 3 * 3
    for name, w in weights(model).items():
        idx = [i for i, (n, _) in enumerate(model.named_parameters()) if n == name][0]
        mine = [r for r in rows if r[col["layer"]] == idx]
        arr = writer.arrays[tech.path(prune.array_name(name))]
        assert [r[col["removed"]] for r in mine] == [float((arr == s).sum()) for s in steps]
        assert mine[-1][col["pruned"]] == float((w == 0).sum())
        assert mine[-1][col["sparsity_after"]] == pytest.approx(float((w == 0).sum()) / w.numel())
    totals = writer.events[tech.path("event_totals")]
    tcol = {c: i for i, c in enumerate(prune.TOTAL_COLUMNS)}
    for row, seg in zip(totals, event_rows, strict=True):
        rec = writer.records[seg]
        assert row[tcol["segment"]] == seg
        assert row[tcol["cost"]] == pytest.approx(rec.total)
        assert row[tcol["loss_after"]] == pytest.approx(rec.loss_end)
        assert row[tcol["cost_removed"]] == pytest.approx(rec.total)
        assert row[tcol["cost_compensated"]] == 0.0
        assert row[tcol["cost_rest"]] == pytest.approx(0.0, abs=1e-9)
        assert not math.isnan(row[tcol["helper_removal_ratio"]])
    summary = tech.summary()
    assert summary["events"] == 3
    assert summary["cost_total"] == pytest.approx(sum(writer.records[i].total for i in event_rows))


# --------------------------------------------------------------------------- prune-lca


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_prune_lca_removes_the_highest_cumulative_lca(digits, scope: str) -> None:
    x, y = digits
    model = make_model()
    tracker = Tracker(model, nn.CrossEntropyLoss(), (x[:300], y[:300]))
    writer = FakeWriter()
    tech = techniques.create({"name": "prune-lca", "start": 8, "sparsity": 0.3, "scope": scope})
    snap: dict[str, torch.Tensor] = {}

    def grab(ctx, when):
        if when == "before":
            snap.update({n: c.clone() for n, c in ctx.tracker.cumulative.items()})

    loop(
        tech,
        model,
        make_optimizer("momentum", model),
        x,
        y,
        10,
        tracker=tracker,
        writer=writer,
        on_event=grab,
    )
    names = list(weights(model))
    removed = {n: torch.from_numpy(tech.pruned_at[n] == 8) for n in names}
    if scope == "layer":
        for n in names:
            c = snap[n].flatten()
            k = prune.pruned_count(c.numel(), 0.3)
            top = torch.zeros(c.numel(), dtype=torch.bool)
            top[torch.argsort(c, descending=True, stable=True)[:k]] = True
            assert torch.equal(removed[n].flatten(), top), n
            assert c[top].min() >= c[~top].max()
    else:
        c = torch.cat([snap[n].flatten() for n in names])
        k = prune.pruned_count(c.numel(), 0.3)
        r = torch.cat([removed[n].flatten() for n in names])
        assert int(r.sum()) == k
        assert c[r].min() >= c[~r].max()
    # the event columns report the cumulative LCA of what was removed vs what survived
    col = {c: i for i, c in enumerate(prune.EVENT_COLUMNS)}
    for row in writer.events[tech.path("events")]:
        n = names[[0, 2, 4].index(int(row[col["layer"]]))]
        c, rem = snap[n], removed[n]
        if rem.any():
            assert row[col["cum_lca_removed_mean"]] == pytest.approx(float(c[rem].double().mean()))
        assert row[col["cum_lca_survivors_mean"]] == pytest.approx(float(c[~rem].double().mean()))


# --------------------------------------------------------------------------- defaults work


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("prune-magnitude", "mlp"),
        ("prune-lca", "mlp"),
        ("prune-lobs", "mlp"),
        ("prune-lobs", "cnn-small"),
    ],
)
def test_defaults_work(name: str, model: str) -> None:
    r = run(
        RunConfig(steps=42, model=model, measure_size=64, techniques=[{"name": name}]), out=None
    )
    assert r.status == "complete"
    s = r.summaries[name]
    assert s["events"] == 1 and s["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert math.isfinite(s["cost_total"]) and math.isfinite(s["helper_removal_ratio"])


@pytest.mark.parametrize(
    "name", ["prune-magnitude", pytest.param("prune-lobs", marks=pytest.mark.slow)]
)
def test_batchnorm_statistics(digits, name: str) -> None:
    """L-OBS's input pass never touches running statistics; ``recalibrate_bn`` re-estimates them."""
    x, y = digits
    torch.manual_seed(0)
    model = models.build("resnet20", (1, 8, 8), 10, width=2)
    stats = {}
    for recal in (False, True):
        m = copy.deepcopy(model)
        spec = {"name": name, "start": 0, "recalibrate_bn": recal}
        tech = techniques.create({**spec, "samples": 64} if name == "prune-lobs" else spec)
        ctx = Context(
            model=m,
            optimizer=torch.optim.SGD(m.parameters(), lr=0.1),
            loss_fn=nn.CrossEntropyLoss(),
            device=torch.device("cpu"),
            total_steps=1,
            train_x=x,
            train_y=y,
            test_x=x,
            test_y=y,
        )
        tech.setup(ctx)
        assert tech.wants_intervention(ctx)
        tech.intervene(ctx, {})
        stats[recal] = m.bn1.running_mean.clone()
        assert tech.global_sparsity() == pytest.approx(0.5, abs=1e-3)
    assert torch.equal(stats[False], model.bn1.running_mean)
    assert not torch.equal(stats[True], model.bn1.running_mean)
