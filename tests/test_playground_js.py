"""The browser Playground's numbers are the engine's numbers.

components/playground/engine.js trains the small MLP and allocates each step by LCA in the
student's browser. These tests run that very file in Chromium on fixed weights, data and batches
and compare what it computes with ``lca.allocate`` (float64) on the equivalent torch model: the
SGD step itself, every parameter's LCA (Simpson 1-4-1, full-batch on the training points) for
classification and regression, and Σ LCA = ΔL over a played session. The last test opens the
component's page from disk and checks it fetches nothing from any other host.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from torch import nn

from lca import allocate
from lca.models import MLP
from lca.serve import app_command, free_port

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
COMPONENT = ROOT / "components" / "playground"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking"]

if shutil.which(CHROMIUM) is None:
    pytest.skip("chromium is not installed at /usr/bin/chromium", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

# The features the engine offers, as the same formulas in numpy (the test's own copy).
FEATURES = {
    "x1": lambda a, b: a,
    "x2": lambda a, b: b,
    "x1sq": lambda a, b: a * a,
    "x2sq": lambda a, b: b * b,
    "x1x2": lambda a, b: a * b,
    "sin1": lambda a, b: np.sin(np.pi * a),
    "sin2": lambda a, b: np.sin(np.pi * b),
}


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def engine_page(browser):
    page = browser.new_page()
    page.set_content("<html><body></body></html>")
    page.add_script_tag(content=(COMPONENT / "engine.js").read_text())
    assert page.evaluate("typeof PGEngine.Session") == "function"
    yield page
    page.close()


def _points(n: int, task: str, seed: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-1, 1, (n, 2))
    if task == "regression":
        y = np.sin(2 * xy[:, 0]) * xy[:, 1]
    else:
        y = (xy[:, 0] ** 2 + xy[:, 1] ** 2 < 0.45).astype(float)
    return [[float(a), float(b), float(c)] for (a, b), c in zip(xy, y, strict=True)]


def _torch_model(features, hidden, activation, task, params_flat):
    """lca.models.MLP in float64 holding the engine's flat parameter vector (torch order)."""
    linear = activation == "linear"  # the Playground's extra: no activation at all
    model = MLP(
        len(features), hidden, 1 if task == "regression" else 2, "relu" if linear else activation
    ).double()
    if linear:
        model.act = nn.Identity()
    at = 0
    with torch.no_grad():
        for p in model.parameters():
            k = p.numel()
            p.copy_(torch.tensor(params_flat[at : at + k], dtype=torch.float64).view_as(p))
            at += k
    assert at == len(params_flat)
    return model


def _inputs(points, features, task):
    pts = np.asarray(points, dtype=np.float64)
    x = np.stack([FEATURES[f](pts[:, 0], pts[:, 1]) for f in features], axis=1)
    if task == "regression":
        return torch.tensor(x), torch.tensor(pts[:, 2:3])
    return torch.tensor(x), torch.tensor(pts[:, 2], dtype=torch.long)


def _play(page, cfg: dict, inject: dict, steps: int) -> dict:
    return page.evaluate(
        """([cfg, inject, steps]) => {
            const s = new PGEngine.Session(cfg, inject);
            const start = Array.from(s.params);
            for (let i = 0; i < steps; i++) s.step();
            return {start, end: Array.from(s.params), last: Array.from(s.last),
                    cum: Array.from(s.cum), trainLoss: s.history.trainLoss,
                    lca: s.history.lca};
        }""",
        [cfg, inject, steps],
    )


CASES = [
    # (task, activation, hidden, features, L2 rate: 0 = regularization off)
    ("classification", "tanh", [4, 3], ["x1", "x2"], 0.0),
    ("classification", "relu", [5], ["x1", "x2", "x1sq", "x2sq", "x1x2", "sin1", "sin2"], 0.0),
    ("classification", "gelu", [3, 3], ["x1", "x2", "x1x2"], 0.0),
    ("classification", "linear", [3], ["x1", "x2", "x1x2"], 0.0),
    ("regression", "tanh", [4, 4], ["x1", "x2"], 0.0),
    ("regression", "sigmoid", [6], ["x1", "x2", "sin1", "x2sq"], 0.0),
    ("regression", "tanh", [3], ["x1", "x2"], 0.3),
]


@pytest.mark.parametrize(("task", "activation", "hidden", "features", "l2"), CASES)
def test_one_step_lca_matches_lca_allocate(engine_page, task, activation, hidden, features, l2):
    """One SGD step on fixed weights, data and minibatch: the step is torch's, and every
    parameter's LCA is lca.allocate's (rk4, float64). With L2 on, the step adds rate·w to each
    weight's gradient (not the biases') while LCA still allocates the data loss."""
    train = _points(40, task, seed=1)
    batch = [3, 17, 5, 22, 9, 30, 11, 0]
    sizes = [len(features), *hidden, 1 if task == "regression" else 2]
    torch.manual_seed(7)
    init = MLP(sizes[0], hidden, sizes[-1], "tanh").double()  # any fixed starting weights
    params0 = torch.cat([p.detach().reshape(-1) for p in init.parameters()]).tolist()
    cfg = {
        "task": task,
        "hidden": hidden,
        "activation": activation,
        "features": features,
        "lr": 0.1,
        "batch": len(batch),
        "reg": "L2" if l2 else "none",
        "regRate": l2,
        "seed": 0,
    }
    out = _play(
        engine_page, cfg, {"train": train, "test": [], "params": params0, "batches": [batch]}, 1
    )
    assert out["start"] == pytest.approx(params0, abs=0)

    x, y = _inputs(train, features, task)
    model = _torch_model(features, hidden, activation, task, params0)
    loss_fn = nn.MSELoss() if task == "regression" else nn.CrossEntropyLoss()

    # The step: plain SGD on the minibatch, as torch does it.
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    penalty = sum((p**2).sum() for n, p in model.named_parameters() if n.endswith("weight"))
    (loss_fn(model(x[batch]), y[batch]) + 0.5 * l2 * penalty).backward()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    end = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch_end = torch.cat([v.reshape(-1) for v in end.values()]).numpy()
    np.testing.assert_allclose(out["end"], torch_end, rtol=1e-12, atol=1e-14)

    # Its LCA, parameter by parameter.
    ref = allocate(model, loss_fn, (x, y), start, end, method="rk4", dtype=torch.float64)
    ref_flat = torch.cat([ref.per_param[n].reshape(-1) for n in start]).numpy()
    js = np.asarray(out["last"])
    assert np.abs(ref_flat).max() > 0
    scale = np.abs(ref_flat).max()
    np.testing.assert_allclose(js, ref_flat, rtol=1e-5, atol=1e-9 * scale)
    assert float(js.sum()) == pytest.approx(ref.total, rel=1e-9)
    assert out["trainLoss"][0] == pytest.approx(ref.loss_start, rel=1e-12)
    assert out["trainLoss"][1] == pytest.approx(ref.loss_end, rel=1e-12)


def test_session_lca_adds_up_to_the_loss_change(engine_page):
    """A played session (generated data, seeded init, minibatches): Σ LCA tracks ΔL."""
    result = engine_page.evaluate(
        """() => {
            const s = new PGEngine.Session({task: "classification", dataset: "circles",
                points: 300, noise: 0.05, trainFraction: 0.5, seed: 4, hidden: [6, 4],
                activation: "tanh", features: ["x1", "x2"], lr: 0.1, batch: 10,
                reg: "none", regRate: 0});
            for (let i = 0; i < 400; i++) s.step();
            let cum = 0; for (const v of s.cum) cum += v;
            return {loss: s.history.trainLoss, lca: s.history.lca, cum,
                    acc: s.history.trainAcc.at(-1), steps: s.steps};
        }"""
    )
    loss, lca = np.asarray(result["loss"]), np.asarray(result["lca"])
    assert result["steps"] == 400 and len(loss) == 401
    change = loss[-1] - loss[0]
    assert change < -0.1  # it learned
    assert abs(lca.sum() - change) <= 1e-3 * abs(change)
    assert result["cum"] == pytest.approx(lca.sum(), rel=1e-9)
    per_step = np.diff(loss)
    assert np.max(np.abs(lca[1:] - per_step)) <= 1e-3 * np.max(np.abs(per_step))
    assert result["acc"] > 0.9


def test_regularization_changes_the_step_not_the_measured_loss(engine_page):
    """With L2 the weights shrink toward zero; LCA still allocates the data loss change."""
    result = engine_page.evaluate(
        """() => {
            const base = {task: "classification", dataset: "xor", points: 200, noise: 0,
                trainFraction: 0.5, seed: 1, hidden: [4], activation: "tanh",
                features: ["x1", "x2"], lr: 0.1, batch: 10, reg: "none", regRate: 0};
            const plain = new PGEngine.Session(base);
            const l2 = new PGEngine.Session(Object.assign({}, base, {reg: "L2", regRate: 0.3}));
            const l1 = new PGEngine.Session(Object.assign({}, base, {reg: "L1", regRate: 0.03}));
            for (let i = 0; i < 200; i++) { plain.step(); l2.step(); l1.step(); }
            const norm = (s) => s.net.lay.layers.reduce((acc, L) => {
                for (let i = 0; i < L.nIn * L.nOut; i++) acc += s.params[L.w + i] ** 2;
                return acc; }, 0);
            const zeros = (s) => s.net.lay.layers.reduce((acc, L) => {
                for (let i = 0; i < L.nIn * L.nOut; i++) acc += s.params[L.w + i] === 0;
                return acc; }, 0);
            const sum = (a) => a.reduce((x, y) => x + y, 0);
            return {plain: norm(plain), l2: norm(l2), l1zeros: zeros(l1),
                    l2lca: sum(l2.history.lca),
                    l2change: l2.history.trainLoss.at(-1) - l2.history.trainLoss[0]};
        }"""
    )
    assert result["l2"] < 0.8 * result["plain"]
    assert result["l1zeros"] >= 1  # L1 stops weights at exactly zero
    assert result["l2lca"] == pytest.approx(result["l2change"], rel=1e-3, abs=1e-6)


def test_same_seed_same_session(engine_page):
    result = engine_page.evaluate(
        """() => {
            const cfg = {task: "classification", dataset: "spiral", points: 200, noise: 0.1,
                trainFraction: 0.6, seed: 9, hidden: [5, 5], activation: "relu",
                features: ["x1", "x2", "sin1"], lr: 0.03, batch: 7, reg: "none", regRate: 0};
            const a = new PGEngine.Session(cfg), b = new PGEngine.Session(cfg);
            const c = new PGEngine.Session(Object.assign({}, cfg, {seed: 10}));
            for (let i = 0; i < 30; i++) { a.step(); b.step(); c.step(); }
            return {a: a.history.trainLoss, b: b.history.trainLoss, c: c.history.trainLoss,
                    train: a.data.train.length, test: a.data.test.length};
        }"""
    )
    assert result["a"] == result["b"]
    assert result["a"] != result["c"]
    assert (result["train"], result["test"]) == (120, 80)


def test_data_sets_follow_the_toy_conventions(engine_page):
    """Same shapes as data/toy.py: points within [-1, 1] without noise, classes balanced."""
    stats = engine_page.evaluate(
        """() => {
            const out = {};
            for (const name of [...PGEngine.CLASSIFICATION_SETS, ...PGEngine.REGRESSION_SETS]) {
                const d = PGEngine.makeData(name, {points: 400, noise: 0, trainFraction: 0.5,
                                                   seed: 3});
                const all = [...d.train, ...d.test];
                out[name] = {n: all.length, ones: all.filter((p) => p[2] === 1).length,
                    maxAbs: Math.max(...all.map((p) => Math.max(Math.abs(p[0]), Math.abs(p[1])))),
                    yMin: Math.min(...all.map((p) => p[2])),
                    yMax: Math.max(...all.map((p) => p[2]))};
            }
            return out;
        }"""
    )
    for name in ("circles", "gauss", "spiral", "moons"):
        assert stats[name]["n"] == 400 and stats[name]["ones"] == 200
    assert 150 < stats["xor"]["ones"] < 250
    for name in ("circles", "xor", "spiral", "moons", "plane", "multigauss"):
        assert stats[name]["maxAbs"] <= 1.0 + 1e-12
    for name in ("plane", "multigauss"):
        assert -1 <= stats[name]["yMin"] < 0 < stats[name]["yMax"] <= 1


def test_erf_is_double_precision(engine_page):
    xs = [-7.0, -3.2, -2.5, -1.0, -0.3, 0.0, 1e-4, 0.7, 2.4999, 2.5, 3.1, 5.9]
    got = engine_page.evaluate("(xs) => xs.map(PGEngine.erf)", xs)
    for x, v in zip(xs, got, strict=True):
        assert v == pytest.approx(math.erf(x), rel=2e-15, abs=1e-16)


def test_component_page_requests_nothing_from_other_hosts(browser):
    """Opened from disk, the component loads its own files only and starts drawing."""
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((COMPONENT / "index.html").as_uri())
    page.wait_for_function("window.PG && window.PG.ready === true")
    page.click("#pg-play")
    page.wait_for_function("window.PG.session.steps >= 5")
    page.click("#pg-play")
    page.close()
    assert not errors
    assert requests and all(u.startswith("file://") or u.startswith("data:") for u in requests), [
        u for u in requests if not u.startswith(("file://", "data:"))
    ]


# -- in the app ----------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path):
    """``streamlit run app.py`` on a free port with an empty runs folder; ended in teardown."""
    port = free_port()
    runs = tmp_path / "runs"
    runs.mkdir()
    env = {**os.environ, "LCA_RUNS_DIR": str(runs), "PYTHONPATH": str(ROOT)}
    log_path = tmp_path / "streamlit.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            app_command(port),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        while proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        assert proc.poll() is None, log_path.read_text()[-2000:]
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _component(page):
    """The Playground's iframe once its engine has its settings (waits on the page's progress;
    the deadline only turns a component that never starts into a failure instead of a hang)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        for frame in page.frames:
            if "lca_playground" in frame.url:
                try:
                    if frame.evaluate("Boolean(window.PG && window.PG.ready)"):
                        return frame
                except sync_api.Error:
                    pass  # still loading
        page.wait_for_timeout(200)
    pytest.fail("the Playground component never reported ready in the app")


@pytest.mark.slow
def test_playground_in_the_app_trains_in_the_browser_and_keeps_the_url(browser, server):
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    component_requests: list[str] = []

    def record(request) -> None:
        try:
            frame_url = request.frame.url
        except Exception:  # noqa: BLE001 - a request without a frame
            frame_url = ""
        if "lca_playground" in frame_url:
            component_requests.append(request.url)

    page.on("request", record)
    page.set_default_timeout(180_000)  # a loaded CI machine is slow; progress is what we wait on
    page.goto(f"{server}/playground?dataset=xor&lr=0.1&hide=noise&batch=lots")
    frame = _component(page)
    assert "batch size 'lots' is not offered" in page.inner_text("body")
    settings = frame.evaluate("PG.state.s")
    assert settings["dataset"] == "xor" and settings["lr"] == "0.1"
    assert not frame.is_visible("#pg-noise")  # ?hide=noise reached the component
    assert frame.is_visible("#pg-batch")

    frame.click("#pg-play")
    frame.wait_for_function("PG.session.steps >= 20")
    frame.click("#pg-play")
    steps = frame.evaluate("PG.session.steps")
    frame.wait_for_function("PG.stats.drawn > 0 && !PG.state.dirty")
    # Every panel shows the same step: the counter, the loss curve's axis, the LCA sentence.
    assert frame.inner_text("#pg-stepno") == f"{steps:,}"
    assert f"all {steps:,} steps".replace(",", "") in frame.inner_text("#pg-sum").replace(",", "")

    # A setting changed in the browser lands in the address (and only settings travel); the
    # page reruns without the warning, and the component keeps its session (same iframe).
    frame.select_option("#pg-speed", "max")
    page.wait_for_url("**speed=max**")
    page.get_by_text("is not offered").wait_for(state="detached")
    assert frame.evaluate("PG.session.steps") == steps
    frame.select_option("#pg-activation", "relu")
    page.wait_for_url("**activation=relu**")
    assert "dataset=xor" in page.url and "lr=0.1" in page.url
    assert frame.evaluate("PG.session.steps") == 0  # a new network starts at step 0
    page.close()

    own = urlparse(server).netloc
    assert component_requests
    assert all(urlparse(u).netloc == own for u in component_requests), component_requests


def test_recent_view_is_the_last_steps_and_neurons_sum_their_weights(engine_page):
    result = engine_page.evaluate(
        """() => {
            const s = new PGEngine.Session({task: "classification", dataset: "moons",
                points: 200, noise: 0.05, trainFraction: 0.5, seed: 2, hidden: [3, 2],
                activation: "tanh", features: ["x1", "x2", "x1x2"], lr: 0.1, batch: 5,
                reg: "none", regRate: 0});
            const perStep = [];
            for (let i = 0; i < 33; i++) { s.step(); perStep.push(Array.from(s.last)); }
            const recent = Array.from(s.lcaVector("recent"));
            const neurons = s.neuronLca(s.cum).map((a) => Array.from(a));
            return {perStep, recent, cum: Array.from(s.cum), neurons, window: s.window,
                    recentSteps: s.recentSteps()};
        }"""
    )
    per_step = np.asarray(result["perStep"])
    window = result["window"]
    assert window == 20 and result["recentSteps"] == 20
    np.testing.assert_allclose(
        result["recent"], per_step[-window:].sum(axis=0), rtol=1e-12, atol=1e-15
    )
    np.testing.assert_allclose(result["cum"], per_step.sum(axis=0), rtol=1e-9, atol=1e-15)
    # Layout [3 inputs, 3, 2, 2 outputs]: fc1.weight (3x3), fc1.bias, fc2.weight (2x3), …
    cum = np.asarray(result["cum"])
    at, sizes = 0, [3, 3, 2, 2]
    for layer, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = cum[at : at + n_in * n_out].reshape(n_out, n_in)
        b = cum[at + n_in * n_out : at + n_in * n_out + n_out]
        np.testing.assert_allclose(result["neurons"][layer], w.sum(axis=1) + b, rtol=1e-12)
        at += n_in * n_out + n_out
    assert at == len(cum)


def test_a_diverging_network_stops_with_one_sentence(browser):
    """Learning rate 3 on ReLU regression blows up: play stops, one sentence says why and what
    to do, and picking a smaller learning rate starts a fresh network."""
    page = browser.new_page(viewport={"width": 700, "height": 760})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(
        (COMPONENT / "index.html").as_uri()
        + "?dataset=plane&activation=relu&lr=3&hidden=8,8,8&speed=max"
    )
    page.wait_for_function("window.PG && window.PG.ready === true")
    page.keyboard.press(" ")  # space plays, as on a presenter's clicker
    page.wait_for_function("PG.session.steps > 0 && !PG.state.playing")
    steps = page.evaluate("PG.session.steps")
    loss = page.evaluate("PG.session.history.trainLoss")
    assert all(math.isfinite(v) for v in loss[:-1]) and not math.isfinite(loss[-1])
    text = page.inner_text("#pg-sum")
    assert f"step {steps}" in text and "learning rate 3" in text and "smaller" in text
    assert page.is_disabled("#pg-play")
    page.select_option("#pg-lr", "0.03")
    assert page.evaluate("PG.session.steps") == 0
    assert page.is_enabled("#pg-play")
    page.close()
    assert not errors
