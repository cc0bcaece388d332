"""The Playground's Python reference engine: a tiny MLP on a 2-D toy set, trained step by step.

TensorFlow Playground shows a network learning live; this engine adds *who did the learning*:
every optimizer step is allocated by Loss Change Allocation (``lca.Tracker``, the measurement set
is the training points), and the credit is accumulated per neuron (incoming weights plus bias)
and per edge (one weight), both over the whole session (cumulative) and over the last ``window``
steps (recent). The app's Playground runs the same definitions in the student's browser
(``components/playground/engine.js``, tested against ``lca.allocate``), so the server does no
training; this engine is for notebooks and scripts (call ``step(n)``), and its settings checks
(``parse_hidden``, the data sets, the activations) are the ones the page uses.

Toy nets are a few hundred parameters (a few milliseconds per step). Everything is deterministic
for a seed: the data, the initial weights (built under a forked, seeded RNG so concurrent
sessions do not disturb one another) and the minibatch order (a private ``torch.Generator``).
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

import data

from . import models
from .allocate import Tracker
from .spec import Spec

__all__ = [
    "ACTIVATIONS",
    "DATASETS",
    "MAX_LAYERS",
    "MAX_NEURONS",
    "Playground",
    "PlaygroundError",
    "Settings",
    "parse_hidden",
]

DATASETS = ("circles", "xor", "gauss", "spiral", "moons")
ACTIVATIONS = ("tanh", "relu", "sigmoid", "gelu")
MAX_LAYERS = 6  # as in TensorFlow Playground
MAX_NEURONS = 8
MAX_STEPS_PER_CALL = 10_000

_RNG_LOCK = threading.Lock()  # seeding the global RNG to build a model is a critical section


class PlaygroundError(ValueError):
    """A playground setting is not allowed; one sentence naming the setting and the range."""


def parse_hidden(text: str | list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """``"4,4"`` (or a list) -> (4, 4); empty means no hidden layer (logistic regression)."""
    if isinstance(text, list | tuple):
        parts = [str(v) for v in text]
    else:
        parts = [p.strip() for p in str(text).strip().strip("()[]").split(",") if p.strip()]
    sizes: list[int] = []
    for p in parts:
        if not p.isdigit() or int(p) < 1:
            raise PlaygroundError(
                f"Hidden layers {text!r} must be whole numbers separated by commas, e.g. 4,4."
            )
        sizes.append(int(p))
    if len(sizes) > MAX_LAYERS:
        raise PlaygroundError(
            f"At most {MAX_LAYERS} hidden layers fit the picture; got {len(sizes)}."
        )
    if any(s > MAX_NEURONS for s in sizes):
        raise PlaygroundError(
            f"At most {MAX_NEURONS} neurons per hidden layer fit the picture; got {max(sizes)}."
        )
    return tuple(sizes)


@dataclass(frozen=True)
class Settings:
    """Everything that defines a playground session (each one is a URL parameter in the app)."""

    dataset: str = "circles"
    noise: float = 0.05
    train_fraction: float = 0.5
    hidden: tuple[int, ...] = (4, 4)
    activation: str = "tanh"
    lr: float = 0.03
    batch_size: int = 10
    seed: int = 0
    points: int = 400

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise PlaygroundError(
                f"Dataset {self.dataset!r} is not a playground set; choose one of: "
                f"{', '.join(DATASETS)}."
            )
        if self.activation not in ACTIVATIONS:
            raise PlaygroundError(
                f"Activation {self.activation!r} is not offered; choose one of: "
                f"{', '.join(ACTIVATIONS)}."
            )
        object.__setattr__(self, "hidden", parse_hidden(self.hidden))
        _check("noise", self.noise, 0.0, 0.5)
        _check("train_fraction", self.train_fraction, 0.1, 0.9)
        _check("lr", self.lr, 1e-5, 10.0)
        _check("batch_size", self.batch_size, 1, 1000, integer=True)
        _check("seed", self.seed, 0, 2**31 - 1, integer=True)
        _check("points", self.points, 20, 5000, integer=True)

    def structure(self) -> tuple:
        """The settings whose change needs a fresh network (lr and batch size apply live)."""
        return (
            self.dataset,
            self.noise,
            self.train_fraction,
            self.hidden,
            self.activation,
            self.seed,
            self.points,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = ",".join(map(str, self.hidden))
        return d


def _check(name: str, value: Any, lo: float, hi: float, *, integer: bool = False) -> None:
    """The setting checked by the one Spec every setting uses (a bool is not a number)."""
    spec = Spec(kind=int if integer else float, minimum=lo, maximum=hi)
    spec.parse(value, f"Setting {name}", PlaygroundError)


@dataclass
class History:
    """One entry per optimizer step (entry 0 is the untrained network)."""

    step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)  # the measurement loss L(θ_t)
    test_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    lca: list[float] = field(default_factory=list)  # ΣA of the step that ended here (0 at t=0)
    error: list[float] = field(default_factory=list)  # ΔL − ΣA of that step


class Playground:
    """A live toy-training session with play / pause / step / reset semantics.

    ``step(n)`` runs n optimizer steps; ``reset()`` rebuilds everything from the settings, so the
    same settings always replay the same session. ``playing`` is a flag for the caller's timer.
    """

    def __init__(self, settings: Settings | None = None, *, window: int = 20) -> None:
        self.settings = settings or Settings()
        if window < 1:
            raise PlaygroundError(f"The recent window is {window} steps; it must be at least 1.")
        self.window = int(window)
        self.playing = False
        self.reset()

    # -- lifecycle ------------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to step 0: same data, same initial weights, same minibatch order."""
        s = self.settings
        self.data = data.load(
            s.dataset, seed=s.seed, noise=s.noise, train_fraction=s.train_fraction, n=s.points
        )
        with _RNG_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(s.seed)
            self.model: nn.Module = models.build(
                "mlp", (2,), 2, hidden=list(s.hidden), activation=s.activation
            )
        self.loss_fn = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=s.lr)
        self._gen = torch.Generator().manual_seed(s.seed + 2)
        self._perm = torch.randperm(self.data.num_train, generator=self._gen)
        self._cursor = 0
        self.tracker = Tracker(
            self.model,
            self.loss_fn,
            (self.data.x_train, self.data.y_train),
            method="rk4",
            keep_cumulative=False,
        )
        self.tracker.start()
        self.layer_names = [f"fc{i}" for i in range(1, len(s.hidden) + 1)] + ["out"]
        self.layer_sizes = [2, *s.hidden, 2]
        self._shapes = {n: tuple(p.shape) for n, p in self.model.named_parameters()}
        self._names = list(self._shapes)
        sizes = [math.prod(v) for v in self._shapes.values()]
        self._offsets = dict(zip(self._names, np.cumsum([0, *sizes[:-1]]).tolist(), strict=True))
        self.num_params = int(sum(sizes))
        self._cum = np.zeros(self.num_params)  # Σ over all steps of A, per parameter
        self._ring = np.zeros((self.window, self.num_params))  # the last `window` steps
        self._cum_units = {
            n: np.zeros(k) for n, k in zip(self.layer_names, s.hidden + (2,), strict=True)
        }
        self.steps = 0
        self.history = History()
        self._log(self.tracker.loss0, 0.0, 0.0)

    def configure(self, settings: Settings) -> bool:
        """Adopt new settings; True if the network had to be rebuilt (structure changed).

        Learning rate and batch size apply from the next step on, like in TensorFlow Playground;
        anything else (data, architecture, seed) starts a fresh session.
        """
        rebuild = settings.structure() != self.settings.structure()
        self.settings = settings
        if rebuild:
            self.reset()
        else:
            for g in self.optimizer.param_groups:
                g["lr"] = settings.lr
        return rebuild

    def set_window(self, window: int) -> None:
        """Change the recent window; its sums restart (the older per-step rows were not kept)."""
        window = max(1, int(window))
        if window != self.window:
            self.window = window
            self._ring = np.zeros((window, self.num_params))

    # -- training -------------------------------------------------------------------------------
    def _next_batch(self) -> torch.Tensor:
        n = self.data.num_train
        b = min(self.settings.batch_size, n)
        if self._cursor + b > n:  # a new epoch: reshuffle (the short tail is dropped)
            self._perm = torch.randperm(n, generator=self._gen)
            self._cursor = 0
        idx = self._perm[self._cursor : self._cursor + b]
        self._cursor += b
        return idx

    def step(self, n: int = 1) -> int:
        """Run ``n`` optimizer steps (each one allocated by LCA); return the step count."""
        n = int(n)
        if not 0 <= n <= MAX_STEPS_PER_CALL:
            raise PlaygroundError(f"step(n) takes 0 to {MAX_STEPS_PER_CALL} steps; got {n}.")
        x, y = self.data.x_train, self.data.y_train
        for _ in range(n):
            idx = self._next_batch()
            self.model.train()
            loss = self.loss_fn(self.model(x[idx]), y[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            with self.tracker.step():
                self.optimizer.step()
            rec = self.tracker.last
            flat = np.concatenate(
                [rec.per_param[k].detach().double().cpu().numpy().ravel() for k in self._names]
            )
            self._cum += flat
            self._ring[self.steps % self.window] = flat
            for name, u in rec.per_unit.items():
                self._cum_units[name] += u
            self.steps += 1
            self._log(rec.loss_end, rec.total, rec.error)
        return self.steps

    @torch.no_grad()
    def _log(self, train_loss: float, lca: float, error: float) -> None:
        h = self.history
        was = self.model.training
        self.model.eval()
        out_tr = self.model(self.data.x_train)
        out_te = self.model(self.data.x_test)
        self.model.train(was)
        h.step.append(self.steps)
        h.train_loss.append(float(train_loss))
        h.test_loss.append(float(self.loss_fn(out_te, self.data.y_test)))
        h.train_acc.append(float((out_tr.argmax(1) == self.data.y_train).double().mean()))
        h.test_acc.append(float((out_te.argmax(1) == self.data.y_test).double().mean()))
        h.lca.append(float(lca))
        h.error.append(float(error))

    # -- LCA views ------------------------------------------------------------------------------
    def _vector(self, window: str) -> np.ndarray:
        if window == "cumulative":
            return self._cum
        if window == "recent":
            return self._ring.sum(axis=0)
        raise PlaygroundError(f"window is {window!r}; choose cumulative or recent.")

    def param_lca(self, window: str = "cumulative") -> dict[str, np.ndarray]:
        """Per-parameter LCA (float64) over the whole session or the recent window."""
        v = self._vector(window)
        return {
            n: v[self._offsets[n] : self._offsets[n] + math.prod(s)].reshape(s)
            for n, s in self._shapes.items()
        }

    def edge_lca(self, window: str = "cumulative") -> list[np.ndarray]:
        """Per layer, the (out, in) LCA of each weight: one value per edge of the graph."""
        p = self.param_lca(window)
        return [p[f"{layer}.weight"] for layer in self.layer_names]

    def bias_lca(self, window: str = "cumulative") -> list[np.ndarray]:
        p = self.param_lca(window)
        return [p[f"{layer}.bias"] for layer in self.layer_names]

    def neuron_lca(self, window: str = "cumulative") -> list[np.ndarray]:
        """Per layer (hidden layers and the output), each neuron's LCA: incoming edges + bias.

        The cumulative values are the tracker's own per-unit sums, accumulated step by step.
        """
        if window == "cumulative":
            return [self._cum_units[layer].copy() for layer in self.layer_names]
        return [
            e.sum(axis=1) + b
            for e, b in zip(self.edge_lca(window), self.bias_lca(window), strict=True)
        ]

    def weights(self) -> list[np.ndarray]:
        """Per layer, the current (out, in) weight matrix (for hover text)."""
        return [
            getattr(self.model, layer).weight.detach().double().numpy().copy()
            for layer in self.layer_names
        ]

    def recent_steps(self) -> int:
        """How many steps the recent window covers right now."""
        return min(self.steps, self.window)

    # -- pictures of the input plane ------------------------------------------------------------
    def extent(self) -> float:
        """Half-width of the square shown: every point fits, with a small margin."""
        pts = torch.cat([self.data.x_train, self.data.x_test])
        return max(1.2, float(pts.abs().max()) + 0.05)

    def grid(self, size: int = 80) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        e = self.extent()
        xs = np.linspace(-e, e, size)
        gx, gy = np.meshgrid(xs, xs)  # gx[i, j] = xs[j], gy[i, j] = xs[i]
        pts = torch.tensor(np.stack([gx.ravel(), gy.ravel()], axis=1), dtype=torch.float32)
        return xs, xs.copy(), pts

    @torch.no_grad()
    def boundary(self, size: int = 80) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(xs, ys, p): p[i, j] = probability of class 1 (orange) at (xs[j], ys[i])."""
        xs, ys, pts = self.grid(size)
        was = self.model.training
        self.model.eval()
        prob = torch.softmax(self.model(pts), dim=1)[:, 1]
        self.model.train(was)
        return xs, ys, prob.double().numpy().reshape(size, size)

    @torch.no_grad()
    def neuron_outputs(self, size: int = 32) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """(xs, ys, outs): outs[l] is (units, size, size), hidden layer l's activations."""
        xs, ys, h = self.grid(size)
        outs = []
        for layer in self.layer_names[:-1]:
            h = self.model.act(getattr(self.model, layer)(h))
            outs.append(h.double().numpy().T.reshape(-1, size, size))
        return xs, ys, outs

    def points(self) -> dict[str, np.ndarray]:
        """The training and test points with their labels, as numpy arrays."""
        d = self.data
        return {
            "x_train": d.x_train.numpy(),
            "y_train": d.y_train.numpy(),
            "x_test": d.x_test.numpy(),
            "y_test": d.y_test.numpy(),
        }

    def with_settings(self, **changes: Any) -> Settings:
        """The current settings with some fields changed (validated)."""
        return replace(self.settings, **changes)
