"""Stanza (layer separation) against plain data parallel, on gloo with spawned CPU processes.

The slow tests start real processes (torch.multiprocessing, a free local port) through
``lca.stanza.Launch``, whose ``with`` block ends every process on the way out, pass or fail;
the join timeout is only a guard against a hung peer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lca.cli import main
from lca.config import ConfigError, RunConfig
from lca.models import build
from lca.stanza import (
    BYTES_RECEIVED,
    BYTES_SENT,
    INFO,
    Launch,
    StanzaError,
    check,
    split_model,
    writer_rank,
)
from lca.store import Reader

K, BATCH, STEPS, TOL = 2, 8, 6, 1e-4
CHANNELS = (2, 4)  # conv: 2·1·9+2 + 4·2·9+4 = 96 parameters; features 4·2·2 = 16 per example
CONV_PARAMS, FC_PARAMS, FEATURES = 96, 16 * 10 + 10, 16
GUARD_S = 300  # join timeout: only a guard against a hung rank
APP = str(Path(__file__).resolve().parents[1] / "app.py")


def _config(**kw) -> RunConfig:
    base = dict(
        dataset="digits",
        model="cnn-small",
        model_options={"channels": list(CHANNELS)},
        subset=120,
        measure_size=48,
        steps=STEPS,
        batch_size=BATCH,
        eval_every=3,
        lr=0.1,
        optimizer="momentum",
        method="rk4-adaptive",
        tolerance=TOL,
        seed=5,
    )
    return RunConfig(**{**base, **kw})


# ---------------------------------------------------------------------------------------------
# Fast: the split and the refusals.


@pytest.mark.parametrize("name", ["cnn-small", "lenet"])
def test_conv_part_then_fc_part_is_the_whole_model(name):
    torch.manual_seed(0)
    model = build(name, (1, 8, 8), 10)
    conv, fc = split_model(model)
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(fc(conv(x)), model(x), rtol=0, atol=0)
    names = [n for n, _ in model.named_parameters()]
    parts = [n for n, _ in conv.named_parameters()] + [n for n, _ in fc.named_parameters()]
    assert parts == names  # every parameter in exactly one part, under the model's own name
    assert all(n.startswith("conv") for n, _ in conv.named_parameters())


def test_a_model_without_a_conv_fc_split_is_refused():
    with pytest.raises(StanzaError, match="use --model cnn-small or lenet"):
        split_model(build("mlp", (1, 8, 8), 10))


@pytest.mark.parametrize(
    "changes, world, words",
    [
        ({"stanza": 2, "data_parallel": 2}, None, "choose one of them"),
        ({"staleness": 1}, None, "--staleness applies to Stanza only"),
        ({"stanza": 2, "model": "mlp"}, None, "use --model cnn-small or lenet, not mlp"),
        ({"stanza": 2, "pack": 2}, None, "drop --pack"),
        ({"stanza": 2, "techniques": [{"name": "freeze"}]}, None, "drop --technique"),
        ({"data_parallel": 2, "save_weights": True}, None, "drop --save-weights"),
        ({"stanza": 2}, 2, "needs 3 processes (2 conv ranks and 1 FC rank) but 2 were started"),
        ({"data_parallel": 3}, 2, "torchrun --nproc-per-node 3"),
    ],
)
def test_what_cannot_run_is_refused_in_one_sentence(changes, world, words):
    pattern = words.replace("(", r"\(").replace(")", r"\)")
    if world is None:  # the config itself refuses it (CLI, TOML, the Train page alike)
        with pytest.raises(ConfigError, match=pattern):
            _config(**changes)
    else:  # a launch with the wrong number of processes
        with pytest.raises(StanzaError, match=pattern):
            check(_config(**changes), world)


def test_the_writer_is_the_fc_rank_in_stanza_and_rank_0_in_data_parallel():
    assert writer_rank(_config(stanza=3)) == 3
    assert writer_rank(_config(data_parallel=3)) == 0


# ---------------------------------------------------------------------------------------------
# Slow: three real runs (data parallel, Stanza τ = 0, Stanza τ = 2), each 2-3 processes.


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stanza")
    out = {}
    for key, changes in {
        "dp": {"data_parallel": K},
        "stanza": {"stanza": K},
        "stale": {"stanza": K, "staleness": 2},
    }.items():
        path = folder / f"{key}.h5"
        with Launch(_config(**changes), path) as launch:
            out[key] = (launch.wait(GUARD_S), path)
    return out


def _trained(results) -> dict[str, torch.Tensor]:
    """The final model: each parameter from the rank that trains it (conv rank 0, FC rank)."""
    params: dict[str, torch.Tensor] = {}
    for r in sorted(results, key=lambda r: r.rank):
        for n, p in r.params.items():
            params.setdefault(n, p)
    return params


@pytest.mark.slow
def test_stanza_without_staleness_equals_data_parallel(runs):
    dp, stanza = _trained(runs["dp"][0]), _trained(runs["stanza"][0])
    assert list(dp) == list(stanza)
    for n in dp:
        torch.testing.assert_close(stanza[n], dp[n], rtol=1e-5, atol=1e-6, msg=n)
    # the conv ranks stay identical (their gradients are all-reduced), and they moved
    conv = [r for r in runs["stanza"][0] if r.role == "conv"]
    for n in conv[0].params:
        torch.testing.assert_close(conv[1].params[n], conv[0].params[n], rtol=0, atol=0)
    torch.manual_seed(5)
    first = build("cnn-small", (1, 8, 8), 10, channels=CHANNELS)
    assert not torch.equal(first.conv1.weight, stanza["conv1.weight"])


@pytest.mark.slow
def test_staleness_changes_the_trained_model(runs):
    dp, stale = _trained(runs["dp"][0]), _trained(runs["stale"][0])
    worst = max(float((stale[n] - dp[n]).abs().max()) for n in dp)
    assert worst > 1e-3  # 100 x the float tolerance of the τ = 0 comparison
    assert all(math.isfinite(float(p.abs().sum())) for p in stale.values())


def _stale_reference(config: RunConfig) -> dict[str, torch.Tensor]:
    """Stanza with staleness τ in one process, written out plainly: the whole global minibatch
    at once; FC weights step on the current weights' gradient, conv weights on the gradient
    that the FC weights of step t − τ send back."""
    import collections

    from torch.func import functional_call

    from lca.setup import build_data_and_model, seed_everything
    from lca.train import build_optimizer, minibatches, schedule_factor

    seed_everything(config.seed)
    ds, model = build_data_and_model(config)
    conv, fc = split_model(model)
    optimizer = build_optimizer(config, model)
    batches = minibatches(ds.num_train, K * config.batch_size, config.seed + 2)

    def weights() -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in fc.named_parameters()}

    old = collections.deque([weights()], maxlen=config.staleness + 1)  # [0]: θ_FC(t − τ)
    loss_fn = torch.nn.CrossEntropyLoss()
    for step in range(config.steps):
        for g in optimizer.param_groups:
            g["lr"] = config.lr * schedule_factor(config, step)
        idx = next(batches)
        x, y = ds.x_train[idx], ds.y_train[idx]
        optimizer.zero_grad()
        feats = conv(x)
        f = feats.detach().requires_grad_(True)
        (grad_f,) = torch.autograd.grad(loss_fn(functional_call(fc, old[0], (f,)), y), f)
        loss_fn(fc(f), y).backward()  # the FC weights' gradient, current weights
        feats.backward(grad_f)  # the conv weights' gradient, through the stale FC weights
        optimizer.step()
        old.append(weights())
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.slow
def test_stale_stanza_equals_its_one_process_reference(runs):
    reference = _stale_reference(_config(stanza=K, staleness=2))
    stale = _trained(runs["stale"][0])
    for n in reference:
        torch.testing.assert_close(stale[n], reference[n], rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.slow
def test_bytes_exchanged_are_measured_and_recorded(runs):
    feats = BATCH * FEATURES * 4  # one conv rank's float32 features (and their gradient)
    labels = BATCH * 8  # its int64 labels
    expected = {
        # conv rank: features + labels out, activation gradient in, conv all-reduce both ways
        "stanza": [
            (feats + labels + 4 * CONV_PARAMS, feats + 4 * CONV_PARAMS),
            (feats + labels + 4 * CONV_PARAMS, feats + 4 * CONV_PARAMS),
            (K * feats, K * (feats + labels)),  # FC rank
        ],
        # every rank: the all-reduce of every gradient
        "dp": [(4 * (CONV_PARAMS + FC_PARAMS),) * 2] * K,
    }
    for key, per_rank in expected.items():
        results, path = runs[key]
        for r in results:
            assert r.bytes_per_step == [per_rank[r.rank]] * STEPS
        with Reader(path) as f:
            sent, received = f.array(BYTES_SENT), f.array(BYTES_RECEIVED)
            info = json.loads(f.array(INFO).item().decode())
        assert sent.shape == (STEPS, len(per_rank))
        np.testing.assert_array_equal(sent, [[s for s, _ in per_rank]] * STEPS)
        np.testing.assert_array_equal(received, [[r for _, r in per_rank]] * STEPS)
        assert info["bytes_sent_per_step"] == sum(s for s, _ in per_rank)
        assert info["world"] == len(per_rank)
    # on this tiny CNN Stanza moves more than data parallel: its features outweigh its FC layer
    with Reader(runs["stanza"][1]) as a, Reader(runs["dp"][1]) as b:
        stanza_info = json.loads(a.array(INFO).item().decode())
        dp_info = json.loads(b.array(INFO).item().decode())
    assert stanza_info["mode"] == "stanza" and dp_info["mode"] == "data-parallel"
    assert stanza_info["bytes_sent_per_step"] > dp_info["bytes_sent_per_step"]


@pytest.mark.slow
def test_run_files_open_and_conserve_lca(runs):
    layers = {}
    for key in ("dp", "stanza", "stale"):
        results, path = runs[key]
        with Reader(path) as r:
            assert r.status == "complete" and r.num_steps == STEPS
            assert r.names == [
                "conv1.weight",
                "conv1.bias",
                "conv2.weight",
                "conv2.bias",
                "out.weight",
                "out.bias",
            ]
            loss, lca, error = r.steps("loss"), r.steps("lca"), r.steps("error")
            change = loss[-1] - loss[0]
            assert math.isclose(float(np.sum(lca + error)), change, rel_tol=1e-9, abs_tol=1e-12)
            # ReLU and max-pooling kinks keep rk4-adaptive near 1e-4 per step, not below TOL
            assert abs(lca.sum() - change) <= 0.01 * abs(change)
            per_layer = r.layer_lca()
            np.testing.assert_allclose(per_layer.sum(axis=1), lca, rtol=1e-6, atol=1e-9)
            assert loss[-1] < loss[0]
            assert len(r.series("steps/train_loss")) == STEPS
            assert r.events("eval")["train_step"].tolist() == [0, 3, 6]
            layers[key] = per_layer
    np.testing.assert_allclose(layers["stanza"], layers["dp"], rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_cli_spawns_the_ranks_and_reports_the_bytes(tmp_path, capsys):
    out = tmp_path / "cli.h5"
    args = ["train", "--dataset", "digits", "--model", "cnn-small", "--stanza", "1"]
    args += ["--model-option", "channels=[2,4]", "--subset", "80", "--measure-size", "32"]
    args += ["--steps", "2", "--batch-size", "8", "--out", str(out), "--quiet"]
    assert main(args) == 0
    said = capsys.readouterr().out
    feats = 8 * FEATURES * 4
    assert f"{(feats + 64 + 4 * CONV_PARAMS) + feats:,} bytes sent per step" in said
    with Reader(out) as r:
        assert r.status == "complete" and r.config["stanza"] == 1


@pytest.mark.slow
def test_leaving_the_launch_ends_every_rank(tmp_path):
    launch = Launch(_config(stanza=1, steps=10**6), tmp_path / "long.h5")
    with launch:
        assert all(p.pid is not None for p in launch.processes)
    assert [p.is_alive() for p in launch.processes] == [False, False]
    assert all(p.exitcode is not None for p in launch.processes)


def test_the_train_page_refuses_stanza_on_a_model_without_conv_layers(runs_folder):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=GUARD_S)
    at.switch_page("pages/train.py").run()
    at.number_input(key="train_stanza").set_value(2).run()
    errors = [e.value for e in at.error]
    assert any("use --model cnn-small or lenet, not mlp" in e for e in errors), errors
    assert "Start training" not in [b.label for b in at.button]


@pytest.mark.slow  # a training job that spawns two ranks
def test_the_train_page_starts_a_stanza_job(runs_folder):
    from streamlit.testing.v1 import AppTest

    from lca import jobs

    at = AppTest.from_file(APP, default_timeout=GUARD_S)
    at.switch_page("pages/train.py").run()
    at.selectbox(key="train_dataset").set_value("digits").run()
    at.selectbox(key="train_model").set_value("cnn-small").run()
    at.number_input(key="train_steps").set_value(3).run()
    at.number_input(key="train_batch_size").set_value(8).run()
    at.number_input(key="train_stanza").set_value(1).run()
    at.text_input(key="train_name").set_value("stanza").run()
    at.button(key="train_start").click().run()
    assert not at.exception and [e.value for e in at.error] == []
    job = jobs.find("stanza.h5")
    try:
        job = jobs.wait(job, GUARD_S)
    finally:
        if job.alive:  # only when the guard ran out: the job and its ranks end here
            jobs.stop(job, wait_s=GUARD_S)
    assert not job.alive and job.state == "complete", jobs.last_error(job)
    with Reader(job.path) as r:
        assert r.status == "complete" and r.num_steps == 3 and r.config["stanza"] == 1
        assert json.loads(r.array(INFO).item().decode())["roles"] == ["conv", "fc"]


@pytest.mark.slow
def test_the_two_runs_open_side_by_side_on_the_compare_page(runs, runs_folder):
    import shutil

    from streamlit.testing.v1 import AppTest

    shutil.copy(runs["dp"][1], runs_folder / "dp.h5")
    shutil.copy(runs["stanza"][1], runs_folder / "stanza.h5")
    page = str(Path(APP).parent / "pages" / "compare.py")
    at = AppTest.from_file(page, default_timeout=GUARD_S)
    at.session_state["compare_runs"] = ["dp.h5", "stanza.h5"]
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert [e.value for e in at.error] == []
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    layers = [
        s
        for s in specs
        if s["data"]
        and s["data"][0].get("x")
        == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "out.weight", "out.bias"]
    ]
    assert layers, "no per-layer chart of the two runs"
    # the measured bytes of both runs, Stanza's as a multiple of data parallel's
    assert "Bytes exchanged between processes" in [h.value for h in at.subheader]
    table = at.dataframe[-1].value
    assert list(table["run"]) == ["dp.h5", "stanza.h5"]
    with Reader(runs["stanza"][1]) as a, Reader(runs["dp"][1]) as b:
        ratio = (
            json.loads(a.array(INFO).item().decode())["bytes_sent_per_step"]
            / json.loads(b.array(INFO).item().decode())["bytes_sent_per_step"]
        )
    assert list(table["× data parallel"]) == [1.0, pytest.approx(ratio)]
