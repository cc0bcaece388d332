"""The plugin interface of ``techniques/base.py`` as the training loop honours it.

A technique written from ``techniques/base.py`` alone (``HookLog`` below imports nothing else)
sees its hooks in the documented order, reads the LCA measured so far through the typed
read-only views of ``Context``, and every registered technique answers ``wants_intervention``
without changing anything.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import techniques
from lca.config import RunConfig
from lca.train import run
from techniques.base import (
    Context,
    Declarations,
    LCAResults,
    MeasuredSegment,
    RunFileWriter,
    Technique,
)

EVENT_STEP = 2  # HookLog nudges the weights once, before this step


class HookLog(Technique):
    """Logs each hook as (hook, ctx.step); nudges one weight at ``EVENT_STEP`` (an intervention)."""

    name = "hook-log"
    description = "Test-only: logs its hooks."
    last: HookLog | None = None

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self.calls: list[tuple[str, int]] = []
        self.measured: list[tuple[int, int, str, float]] = []  # index, kind, label, total
        self.segments_before: list[int] = []
        self.nudged: float | None = None
        HookLog.last = self

    def declare(self, ctx: Context) -> Declarations:
        self.calls.append(("declare", ctx.step))
        return Declarations()

    def setup(self, ctx: Context) -> None:
        self.calls.append(("setup", ctx.step))

    def begin(self, ctx: Context) -> None:
        self.calls.append(("begin", ctx.step))
        assert ctx.tracker is not None and ctx.last_segment is None

    def wants_intervention(self, ctx: Context) -> bool:
        self.calls.append(("wants_intervention", ctx.step))
        return ctx.step == EVENT_STEP

    def intervene(self, ctx: Context, row: dict[str, object]) -> None:
        self.calls.append(("intervene", ctx.step))
        self.segments_before.append(ctx.segments_measured)
        w = ctx.model.get_parameter("out.weight")
        with torch.no_grad():
            self.nudged = float(w[0, 0])
            w[0, 0] = 0.0

    def after_intervention(self, ctx: Context, measured: MeasuredSegment) -> None:
        self.calls.append(("after_intervention", ctx.step))
        assert measured is ctx.last_segment
        self.measured.append((measured.index, measured.kind, measured.label, measured.total))

    def before_forward(self, ctx: Context) -> None:
        self.calls.append(("before_forward", ctx.step))

    def autocast(self, ctx: Context):
        self.calls.append(("autocast", ctx.step))
        return None

    def loss_term(self, ctx: Context, params: dict[str, torch.Tensor]) -> torch.Tensor | None:
        self.calls.append(("loss_term", ctx.step))
        return None

    def backward(self, ctx: Context, loss: torch.Tensor) -> bool:
        self.calls.append(("backward", ctx.step))
        return False

    def before_step(self, ctx: Context) -> None:
        self.calls.append(("before_step", ctx.step))

    def optimizer_step(self, ctx: Context) -> bool:
        self.calls.append(("optimizer_step", ctx.step))
        return False

    def after_step(self, ctx: Context, row: dict[str, object]) -> None:
        self.calls.append(("after_step", ctx.step))

    def summary(self) -> dict[str, Any]:
        self.calls.append(("summary", -1))
        return {}


STEP_HOOKS = [
    "wants_intervention",
    "before_forward",
    "autocast",
    "loss_term",
    "backward",
    "before_step",
    "optimizer_step",
    "after_step",
]


@pytest.fixture(scope="module")
def hook_log():
    """One 4-step run of ``HookLog`` in the real loop (shared by the tests that read it)."""
    techniques.names()  # load the registry before adding the test technique to it
    HookLog.last = None
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(techniques._REGISTRY, HookLog.name, HookLog)
        cfg = RunConfig(
            dataset="digits",
            model="mlp",
            steps=4,
            measure_size=200,
            eval_every=10,
            batch_size=32,
            techniques=[{"name": HookLog.name}],
        )
        result = run(cfg, out=None)
    assert result.status == "complete", result.message
    return result, HookLog.last


def test_hooks_are_called_in_the_documented_order(hook_log) -> None:
    _, tech = hook_log
    expected = [("setup", 0), ("declare", 0), ("begin", 0)]
    for step in range(4):
        hooks = list(STEP_HOOKS)
        if step == EVENT_STEP:
            hooks[1:1] = ["intervene", "after_intervention"]
        expected += [(h, step) for h in hooks]
    expected.append(("summary", -1))
    assert tech.calls == expected


def test_after_intervention_gets_the_measured_segment(hook_log) -> None:
    result, tech = hook_log
    history = result.tracker.history
    # Steps 0 and 1 made segments 0 and 1; the intervention before step 2 is segment 2.
    assert tech.segments_before == [EVENT_STEP]
    ((index, kind, label, total),) = tech.measured
    assert (index, kind, label) == (EVENT_STEP, 1, HookLog.name)
    assert history[index]["kind"] == 1 and total == history[index]["lca"]
    assert len(history) == 4 + 1


def test_context_views_are_the_tracker_results(hook_log) -> None:
    result, _ = hook_log
    tracker = result.tracker
    assert isinstance(tracker, LCAResults) and isinstance(tracker.last, MeasuredSegment)
    model = tracker.model
    ctx = Context(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss_fn=nn.CrossEntropyLoss(),
        device=torch.device("cpu"),
        total_steps=1,
        train_x=torch.zeros(1),
        train_y=torch.zeros(1),
        test_x=torch.zeros(1),
        test_y=torch.zeros(1),
        tracker=tracker,
    )
    assert ctx.last_segment is tracker.last and ctx.segments_measured == len(tracker.history)
    # ΣA per parameter over all segments, summed, is the sum of the segment totals.
    cumulative = math.fsum(float(c.double().sum()) for c in ctx.cumulative_lca.values())
    assert cumulative == pytest.approx(math.fsum(h["lca"] for h in tracker.history), abs=1e-6)
    assert set(ctx.cumulative_lca) == {n for n, _ in model.named_parameters()}


def test_context_views_without_a_tracker() -> None:
    model = nn.Linear(2, 2)
    ctx = Context(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss_fn=nn.CrossEntropyLoss(),
        device=torch.device("cpu"),
        total_steps=1,
        train_x=torch.zeros(1),
        train_y=torch.zeros(1),
        test_x=torch.zeros(1),
        test_y=torch.zeros(1),
    )
    assert dict(ctx.cumulative_lca) == {} and ctx.last_segment is None
    assert ctx.segments_measured == 0


def test_the_run_file_writer_is_a_run_file_writer(tmp_path) -> None:
    from lca.store import Writer

    assert isinstance(Writer(tmp_path / "w.h5"), RunFileWriter)


# ---------------------------------------------------------------------------------------------
# wants_intervention is a question: asking it changes nothing, for every registered technique.


def _fingerprint(value: Any, depth: int = 0) -> Any:
    """A comparable copy of a technique's state: tensors and arrays by value, plain data as is,
    other objects (the model, the Context) by identity."""
    if torch.is_tensor(value):
        return ("tensor", tuple(value.shape), value.detach().cpu().double().flatten().tolist())
    if isinstance(value, np.ndarray):
        return ("array", value.shape, value.tolist())
    if isinstance(value, dict) and depth < 6:
        return {k: _fingerprint(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple) and depth < 6:
        return [_fingerprint(v, depth + 1) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return ("object", id(value))


def _tiny_context() -> Context:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(6, 5))
    model.add_module("act", nn.ReLU())
    model.add_module("fc2", nn.Linear(5, 4))
    model.add_module("out", nn.Linear(4, 3))
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    return Context(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        loss_fn=nn.CrossEntropyLoss(),
        device=torch.device("cpu"),
        total_steps=80,
        train_x=x,
        train_y=y,
        test_x=x,
        test_y=y,
    )


@pytest.mark.parametrize("name", techniques.names())
def test_wants_intervention_changes_nothing(name: str) -> None:
    ctx = _tiny_context()
    tech = techniques.create({"name": name})
    if name == "prune-lca":  # scores need a cumulative LCA; none is measured here
        tech = techniques.create({"name": "prune-magnitude"})
    if name == "symmetry":  # needs a square layer: fc2 becomes 5×5
        ctx.model.fc2, ctx.model.out = nn.Linear(5, 5), nn.Linear(5, 3)
    tech.setup(ctx)
    for step in range(80):
        ctx.step = step
        model_before = copy.deepcopy(ctx.model.state_dict())
        grads_on = [p.requires_grad for p in ctx.model.parameters()]
        state = _fingerprint(vars(tech))
        answers = {tech.wants_intervention(ctx) for _ in range(3)}
        assert len(answers) == 1, f"{name} changed its answer at step {step}"
        assert _fingerprint(vars(tech)) == state, f"{name} changed its state at step {step}"
        assert [p.requires_grad for p in ctx.model.parameters()] == grads_on, name
        after = ctx.model.state_dict()
        assert all(torch.equal(after[k], v) for k, v in model_before.items()), name
        tech.before_forward(ctx)


def test_freeze_acts_in_before_forward_not_in_the_question() -> None:
    ctx = _tiny_context()
    tech = techniques.create({"name": "freeze", "layers": "out", "start": 3})
    tech.setup(ctx)
    ctx.step = 3
    assert not tech.wants_intervention(ctx)
    assert ctx.model.get_parameter("out.weight").requires_grad
    tech.before_forward(ctx)
    assert not ctx.model.get_parameter("out.weight").requires_grad
    assert ctx.model.get_parameter("fc2.weight").requires_grad
