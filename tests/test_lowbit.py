"""Low-precision training techniques (fp8, fixed-point, adaptive-loss-scaling, bnn, conntra):
their number formats against exact oracles, and what each method promises on tiny models.

``drive`` runs a technique's hooks in the loop's order (``lca/train.py``) without LCA, for
tests of the numerics; tests marked with the ``train`` fixture run the real loop.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from test_techniques_train import FakeWriter, Probe, config, train  # noqa: F401
from torch import nn
from torch.func import functional_call

import techniques
from techniques import Context, TechniqueError
from techniques.fixedpoint import lambda_max
from techniques.lowbit import FloatFormat, fixed_quantize, float_quantize

E5M2 = FloatFormat(5, 2)
E6M9 = FloatFormat(6, 9)


def ctx_for(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, momentum: float = 0.0
) -> Context:
    return Context(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum),
        loss_fn=nn.CrossEntropyLoss(),
        device=torch.device("cpu"),
        total_steps=100,
        train_x=x,
        train_y=y,
        test_x=x,
        test_y=y,
    )


def drive(tech, ctx: Context, steps: int, batch: int | None = None) -> list[float]:
    """The loop's hook order for ``steps`` steps; the float32 loss of the weights before each
    step and after the last (measured on ``effective`` with hooks off, like LCA)."""
    tech.setup(ctx)
    x, y = ctx.train_x, ctx.train_y
    g = torch.Generator().manual_seed(0)
    losses = [measured_loss(tech, ctx)]
    for step in range(steps):
        ctx.step = step
        idx = torch.randperm(len(x), generator=g)[:batch] if batch else torch.arange(len(x))
        ctx.batch = (x[idx], y[idx])
        params = tech.forward_params(dict(ctx.model.named_parameters()))
        loss = ctx.loss_fn(functional_call(ctx.model, params, (x[idx],)), y[idx])
        ctx.optimizer.zero_grad(set_to_none=True)
        if not tech.backward(ctx, loss):
            loss.backward()
        tech.before_step(ctx)
        if not tech.optimizer_step(ctx):
            ctx.optimizer.step()
        tech.after_step(ctx, {})
        losses.append(measured_loss(tech, ctx))
    return losses


def measured_loss(tech, ctx: Context) -> float:
    with torch.no_grad(), techniques.measuring():
        params = tech.effective(dict(ctx.model.named_parameters()))
        return float(ctx.loss_fn(functional_call(ctx.model, params, (ctx.train_x,)), ctx.train_y))


# ---------------------------------------------------------------------------------------------
# The float quantizer.


def test_every_1_5_2_value_is_on_the_grid_and_matches_float8_e5m2():
    # Every finite bit pattern of torch's e5m2 (the same IEEE layout as 1-5-2).
    allv = torch.arange(256, dtype=torch.uint8).view(torch.float8_e5m2).double()
    finite = allv[torch.isfinite(allv)]
    grid = torch.cat([-E5M2.values().flip(0), E5M2.values()]).unique()
    assert torch.equal(finite.unique(), grid)
    assert len(E5M2.values()) == 124  # 0, 3 subnormals, 30 binades × 4
    assert E5M2.max == 57344.0 and E5M2.min_subnormal == 2.0**-16
    assert torch.equal(float_quantize(finite, E5M2), finite)  # grid values are fixed points
    # Any value in range rounds exactly like torch's round-to-nearest-even cast.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20000, generator=g, dtype=torch.float64)
    x = x * torch.exp2(torch.randint(-22, 16, (20000,), generator=g).double())
    x = x.clamp(-E5M2.max, E5M2.max)
    mids = (E5M2.values()[1:] + E5M2.values()[:-1]) / 2  # the exact ties: to even
    x = torch.cat([x, mids, -mids])
    assert torch.equal(float_quantize(x, E5M2), x.to(torch.float8_e5m2).double())


def test_float_quantizer_saturates_and_underflows():
    big = torch.tensor([60000.0, 1e9, math.inf, -math.inf])
    assert float_quantize(big, E5M2).tolist() == [57344.0, 57344.0, 57344.0, -57344.0]
    tiny = torch.tensor([2.0**-17, 2.0**-17 * 1.01, 2.0**-16, 2.0**-15 * 1.5, 2.0**-18])
    # Half the smallest subnormal ties to 0 (even); just above it rounds up; subnormals exist.
    assert float_quantize(tiny, E5M2).tolist() == [0.0, 2.0**-16, 2.0**-16, 2.0**-14 * 0.75, 0.0]
    # Without subnormals everything below the smallest normal 2^-14 flushes to zero.
    assert float_quantize(tiny, E5M2, subnormals=False).tolist() == [0.0] * 5
    assert float_quantize(torch.tensor([math.nan]), E5M2).isnan().all()
    # 1-6-9: 10 significant bits, exponent range 2^-30 .. 2^31.
    assert E6M9.max == (2 - 2.0**-9) * 2.0**31 and E6M9.min_subnormal == 2.0**-39
    assert float_quantize(torch.tensor([1 + 2.0**-10, 1 + 3 * 2.0**-10]), E6M9).tolist() == [
        1.0,
        1 + 2.0**-8,
    ]


def test_stochastic_rounding_is_unbiased():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    for value, fmt in [(1.0625, E5M2), (0.3 * 2.0**-16, E5M2), (1 + 2.0**-12, E6M9), (-3.3, E5M2)]:
        x = torch.full((n,), value, dtype=torch.float64)
        q = float_quantize(x, fmt, "stochastic", generator=g)
        lo, hi = q.min().item(), q.max().item()
        assert {lo, hi} == set(q.unique().tolist())  # only the two neighbours appear
        # Each draw is a Bernoulli between the neighbours: the mean is within 5 standard errors.
        se = (hi - lo) / 2 / math.sqrt(n)
        assert abs(q.mean().item() - value) < 5 * se, value


def test_fixed_quantize_grid_and_clip():
    x = torch.tensor([-2.0, -1.0, -0.26, 0.1, 0.124, 0.126, 0.99, 5.0])
    q = fixed_quantize(x, bits=4, dr=1.0)  # LSB 1/8, range [-1, 7/8]
    assert q.tolist() == [-1.0, -1.0, -0.25, 0.125, 0.125, 0.125, 0.875, 0.875]


def test_bad_formats_are_one_sentence():
    for spec in (
        {"name": "fp8", "forward": "e5m2"},
        {"name": "fp8", "update": "1-9-2"},
        {"name": "fp8", "loss_scale": 3},
    ):
        with pytest.raises(TechniqueError) as e:
            techniques.create(spec)
        assert str(e.value).endswith(".") and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# fp8 technique.


def logistic_problem(seed: int = 0):
    """Logistic regression without bias, weights in [4, 6): 1-6-9 spacing there is 2^-7."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 8, generator=g)
    w_true = torch.randn(2, 8, generator=g)
    y = (x @ w_true.T).argmax(1)
    model = nn.Sequential()
    model.add_module("out", nn.Linear(8, 2, bias=False))
    with torch.no_grad():
        model.out.weight.copy_(4.0 + 2.0 * torch.rand(2, 8, generator=g))
    return model, x, y


def test_fp8_stored_weights_stay_1_6_9_and_forward_uses_1_5_2():
    model, x, y = logistic_problem()
    tech = techniques.create({"name": "fp8"})
    ctx = ctx_for(model, x, y, lr=0.05, momentum=0.9)
    drive(tech, ctx, steps=5)
    w = model.out.weight.detach()
    assert torch.equal(float_quantize(w, E6M9), w)  # no float32 master: the weight is 1-6-9
    buf = ctx.optimizer.state[model.out.weight]["momentum_buffer"]
    assert torch.equal(float_quantize(buf, E6M9), buf)
    eff = tech.effective(dict(model.named_parameters()))["out.weight"]
    assert torch.equal(eff, float_quantize(w, E5M2))


def test_fp8_activation_hooks_quantize_in_training_and_step_aside_when_measuring():
    model, x, _ = logistic_problem()
    tech = techniques.create({"name": "fp8"})
    tech.setup(ctx_for(model, x, torch.zeros(len(x), dtype=torch.long), lr=0.1))
    w = model.out.weight.detach()
    with torch.no_grad():
        trained = model(x)
        with techniques.measuring():
            measured = model(x)
    assert torch.allclose(measured, x @ w.T, rtol=0, atol=1e-6)  # plain float32
    assert torch.allclose(trained, float_quantize(x, E5M2) @ w.T, rtol=0, atol=1e-5)
    # The error dL/dy arriving at the layer output is rounded to 1-5-2 in backward.
    xr = x.clone().requires_grad_(True)
    y = model(xr)
    seed_grad = torch.randn_like(y) * 1e-3
    y.backward(seed_grad)
    assert torch.allclose(xr.grad, float_quantize(seed_grad, E5M2) @ w, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_fp8_stochastic_updates_track_fp32_where_nearest_stalls(rounding):
    """The paper's headline (Fig. 'SR vs nearest'): with updates far below half a 1-6-9
    spacing, nearest rounding loses every one and training stalls; stochastic rounding keeps
    them in expectation and tracks float32. The forward runs in 1-5-10 here so that the loss
    resolves the small weight moves; the update path is the paper's."""
    steps, lr = 80, 0.006  # |lr·g| < 2^-8, half the spacing
    model, x, y = logistic_problem()
    fp32 = drive(
        techniques.create({"name": "fp8", "forward": "1-8-23", "update": "1-8-23"}),
        ctx_for(model, x, y, lr),
        steps,
    )
    model, x, y = logistic_problem()
    w0 = model.out.weight.detach().clone()
    tech = techniques.create({"name": "fp8", "forward": "1-5-10", "update_rounding": rounding})
    ctx = ctx_for(model, x, y, lr)
    low = drive(tech, ctx, steps)
    drop32, drop = fp32[0] - fp32[-1], low[0] - low[-1]
    assert drop32 > 0.02  # float32 training makes progress
    if rounding == "nearest":
        assert torch.equal(model.out.weight.detach(), float_quantize(w0, E6M9))  # stalled
        assert drop == 0.0 and tech.summary()["mean_updates_lost"] == 1.0
    else:
        assert abs(drop - drop32) < 0.15 * drop32  # tracks float32 within 15%


def _q(v: float, fmt: FloatFormat = E6M9) -> float:
    return float(float_quantize(torch.tensor(v, dtype=torch.float64), fmt))


def chunked_dot(terms: list[float], chunk: int) -> float:
    """The oracle: each chunk's exact sum (math.fsum) rounded to 1-6-9, then added to the
    running sum, which is rounded to 1-6-9 after every chunk."""
    acc = 0.0
    for k in range(0, len(terms), chunk):
        acc = _q(acc + _q(math.fsum(terms[k : k + chunk])))
    return acc


def _e5m2(*shape: int, seed: int) -> torch.Tensor:
    """1-5-2 values (the operands every fp8 GEMM sees), so each product and chunk sum is exact."""
    g = torch.Generator().manual_seed(seed)
    return float_quantize(torch.randn(*shape, generator=g), E5M2)


def _gemm_with_grads(tech, layer: nn.Module, x: torch.Tensor, g: torch.Tensor):
    x = x.clone().requires_grad_(True)
    y = tech.gemm(layer, x)
    y.backward(g)
    return y.detach(), x.grad, layer.weight.grad, layer.bias.grad


def test_fp8_chunked_linear_forward_and_backward_equal_the_chunked_dot_oracle():
    chunk = 4
    tech = techniques.create({"name": "fp8", "chunk": chunk})
    layer = nn.Linear(10, 7)
    with torch.no_grad():
        layer.weight.copy_(_e5m2(7, 10, seed=1))
        layer.bias.copy_(_e5m2(7, seed=2))
    x, g = _e5m2(5, 10, seed=3), _e5m2(5, 7, seed=4)
    y, gx, gw, gb = _gemm_with_grads(tech, layer, x, g)
    w, b = layer.weight.detach().double(), layer.bias.detach().double()
    xd, gd = x.double(), g.double()
    for m in range(5):
        for o in range(7):
            dot = chunked_dot([float(xd[m, k] * w[o, k]) for k in range(10)], chunk)
            assert float(y[m, o]) == _q(dot + float(b[o]))
        for k in range(10):
            assert float(gx[m, k]) == chunked_dot([float(gd[m, o] * w[o, k]) for o in range(7)], 4)
    for o in range(7):
        for k in range(10):
            assert float(gw[o, k]) == chunked_dot([float(gd[m, o] * xd[m, k]) for m in range(5)], 4)
        assert float(gb[o]) == chunked_dot([float(gd[m, o]) for m in range(5)], chunk)
    # the rounding really acts: chunked differs from the float32 GEMM somewhere
    assert not torch.equal(y, (x @ layer.weight.T + layer.bias).detach())
    assert torch.equal(float_quantize(y, E6M9), y)


def test_fp8_chunked_conv2d_forward_and_backward_equal_the_chunked_dot_oracle():
    chunk, stride, pad = 4, 2, 1
    tech = techniques.create({"name": "fp8", "chunk": chunk})
    conv = nn.Conv2d(3, 6, 3, stride=stride, padding=pad)
    with torch.no_grad():
        conv.weight.copy_(_e5m2(6, 3, 3, 3, seed=5))
        conv.bias.copy_(_e5m2(6, seed=6))
    x, g = _e5m2(2, 3, 5, 5, seed=7), _e5m2(2, 6, 3, 3, seed=8)
    y, gx, gw, gb = _gemm_with_grads(tech, conv, x, g)
    w, b = conv.weight.detach().double(), conv.bias.detach().double()
    xp = torch.nn.functional.pad(x.double(), (pad,) * 4)
    gd = g.double()
    kidx = [(c, u, v) for c in range(3) for u in range(3) for v in range(3)]  # the weight's order
    rows = [(n, i, j) for n in range(2) for i in range(3) for j in range(3)]
    gxp: dict[tuple[int, int, int, int], list[float]] = {}
    for n, i, j in rows:
        for o in range(6):
            terms = [
                float(xp[n, c, i * stride + u, j * stride + v] * w[o, c, u, v]) for c, u, v in kidx
            ]
            assert float(y[n, o, i, j]) == _q(chunked_dot(terms, chunk) + float(b[o]))
        for c, u, v in kidx:  # the column gradient, contraction over the output channels
            col = chunked_dot([float(gd[n, o, i, j] * w[o, c, u, v]) for o in range(6)], chunk)
            gxp.setdefault((n, c, i * stride + u, j * stride + v), []).append(col)
    for o in range(6):
        for c, u, v in kidx:
            terms = [
                float(gd[n, o, i, j] * xp[n, c, i * stride + u, j * stride + v]) for n, i, j in rows
            ]
            assert float(gw[o, c, u, v]) == chunked_dot(terms, chunk)
        assert float(gb[o]) == chunked_dot([float(gd[n, o, i, j]) for n, i, j in rows], chunk)
    for n in range(2):  # col2im: the overlapping patches' column gradients, summed, rounded once
        for c in range(3):
            for p in range(5):
                for q in range(5):
                    parts = gxp.get((n, c, p + pad, q + pad), [])
                    assert float(gx[n, c, p, q]) == _q(math.fsum(parts))
    plain = torch.nn.functional.conv2d(x, conv.weight, conv.bias, stride, pad).detach()
    assert not torch.equal(y, plain) and (y - plain).abs().max() < 0.02 * plain.abs().max()


def test_fp8_chunked_conv1d_and_grouped_conv_match_plain_convolution_at_float_precision():
    # 1-8-23 accumulation rounds like float32, so the im2col plumbing (Conv1d, groups,
    # dilation, 'same' and reflect padding) must give the convolution itself.
    tech = techniques.create({"name": "fp8", "chunk": 5, "update": "1-8-23"})
    torch.manual_seed(0)
    cases = [
        (nn.Conv1d(3, 4, 3, stride=2, padding=2), torch.randn(2, 3, 9)),
        (nn.Conv2d(4, 6, 3, padding=1, groups=2), torch.randn(2, 4, 5, 5)),
        (nn.Conv2d(3, 5, (3, 2), padding="same", dilation=2), torch.randn(2, 3, 6, 5)),
        (nn.Conv2d(3, 5, 3, padding=1, padding_mode="reflect"), torch.randn(2, 3, 6, 5)),
    ]
    for conv, x in cases:
        y = tech.gemm(conv, x)
        torch.testing.assert_close(y, conv(x), rtol=1e-5, atol=1e-5)


def test_fp8_chunk_in_a_model_runs_every_gemm_chunked_and_steps_aside_when_measuring():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4))
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 4, (8,))
    tech = techniques.create({"name": "fp8", "chunk": 8})
    tech.setup(ctx_for(model, x, y, 0.1))
    calls = {"n": 0}
    gemm = tech.gemm

    def counted(module, inp):
        calls["n"] += 1
        return gemm(module, inp)

    tech.gemm = counted
    out = model(x)
    assert calls["n"] == 2 and torch.equal(float_quantize(out, E6M9), out.detach())
    with techniques.measuring():
        model(x)
    assert calls["n"] == 2  # LCA measures the plain float32 layers
    assert "chunk_cost" in tech.summary()


def _scaled_mm_runs_here() -> bool:
    try:
        e = torch.zeros(16, 16).to(torch.float8_e4m3fn)
        one = torch.ones(())
        torch._scaled_mm(e, e.T.contiguous().T, one, one, out_dtype=torch.float32)
        return True
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


@pytest.mark.skipif(not _scaled_mm_runs_here(), reason="torch._scaled_mm does not run on CPU")
def test_float8_gemm_plumbing_equals_float32_on_1_5_2_operands():
    # torch._scaled_mm runs on CPU in this torch build, so the cuda-float8 path's padding to
    # multiples of 16, layouts, e4m3fn scales and the three GEMMs are checked here: on 1-5-2
    # operands float8 is exact and the products accumulate in float32, so they equal the
    # float32 GEMMs up to summation order.
    from techniques.fp8_gemm import conv_gemm, float8_matmul, linear_gemm

    mm, add_bias = float8_matmul()
    layer = nn.Linear(10, 7)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    with torch.no_grad():
        layer.weight.copy_(_e5m2(7, 10, seed=1) * 64)  # beyond e4m3fn's 448: the scale acts
        conv.weight.copy_(_e5m2(5, 3, 3, 3, seed=2))

    def lin(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return linear_gemm(x, m.weight, m.bias, mm, add_bias)

    def cnv(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return conv_gemm(m, x, m.weight, m.bias, mm, add_bias)

    cases = ((layer, _e5m2(5, 10, seed=3), lin), (conv, _e5m2(2, 3, 4, 4, seed=4), cnv))
    for module, x, fn in cases:
        x8 = x.clone().requires_grad_(True)
        y8 = fn(module, x8)
        g = _e5m2(*y8.shape, seed=5)
        y8.backward(g)
        grads8 = (x8.grad, module.weight.grad.clone(), module.bias.grad.clone())
        module.zero_grad()
        x32 = x.clone().requires_grad_(True)
        y32 = module(x32)
        y32.backward(g)
        torch.testing.assert_close(y8, y32, rtol=1e-5, atol=1e-5)
        for a, b in zip(grads8, (x32.grad, module.weight.grad, module.bias.grad), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        module.zero_grad()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_fp8_cuda_float8_is_refused_without_cuda_in_one_sentence():
    from lca.config import ConfigError, RunConfig

    with pytest.raises(TechniqueError) as e:
        techniques.create({"name": "fp8", "backend": "cuda-float8"})
    text = str(e.value)
    assert "needs a CUDA GPU" in text and "backend = simulated" in text
    assert text.endswith(".") and text.count(". ") == 0 and "\n" not in text
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        RunConfig(techniques=[{"name": "fp8", "backend": "cuda-float8"}], optimizer="momentum")


def test_fp8_cuda_float8_refuses_chunk_and_other_forward_formats():
    with pytest.raises(TechniqueError, match="chunk = 0"):
        techniques.create({"name": "fp8", "backend": "cuda-float8", "chunk": 64})
    with pytest.raises(TechniqueError, match="must be 1-5-2"):
        techniques.create({"name": "fp8", "backend": "cuda-float8", "forward": "1-4-3"})


def _cuda_float8() -> bool:
    from techniques.fp8_gemm import float8_supported

    return torch.cuda.is_available() and float8_supported("cuda")


@pytest.mark.skipif(not _cuda_float8(), reason="needs a CUDA GPU with float8 (capability ≥ 8.9)")
def test_fp8_cuda_float8_matches_the_simulated_path_on_the_gpu():
    # Same weights, same 1-5-2 inputs: the float8 products are exact on 1-5-2 operands and
    # accumulate in float32, so outputs and gradients agree with the simulated float32 GEMMs
    # to 1e-4 relative (summation order and TF32-free cuBLAS vs cuBLASLt rounding).
    torch.manual_seed(0)
    dev = torch.device("cuda")
    base = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 10))
    x = torch.randn(32, 1, 8, 8, device=dev)
    y = torch.randint(0, 10, (32,), device=dev)
    results = []
    for backend in ("simulated", "cuda-float8"):
        model = copy.deepcopy(base).to(dev)
        tech = techniques.create({"name": "fp8", "backend": backend})
        ctx = ctx_for(model, x, y, 0.1)
        ctx.device = dev
        tech.setup(ctx)
        params = tech.forward_params(dict(model.named_parameters()))
        loss = ctx.loss_fn(functional_call(model, params, (x,)), y)
        loss.backward()
        results.append((float(loss), [p.grad.clone() for p in model.parameters()]))
    (l_sim, g_sim), (l_f8, g_f8) = results
    assert abs(l_sim - l_f8) <= 1e-4 * abs(l_sim)
    for a, b in zip(g_sim, g_f8, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


def test_fp8_keep_first_last_leaves_them_float32():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    tech = techniques.create({"name": "fp8", "keep_first_last": True})
    tech.setup(ctx_for(model, x, y, 0.1))
    assert tech.targets == ["2.weight", "2.bias"]


def test_fp8_needs_sgd():
    model, x, y = logistic_problem()
    ctx = ctx_for(model, x, y, 0.1)
    ctx.optimizer = torch.optim.Adam(model.parameters())
    with pytest.raises(TechniqueError, match="optimizer sgd or momentum"):
        techniques.create({"name": "fp8"}).setup(ctx)


@pytest.mark.slow
def test_fp8_in_the_loop_learns_records_and_conserves(train):  # noqa: F811
    result, w, _ = train(
        config(
            [{"name": "fp8", "loss_scale": 256}],
            steps=20,
            optimizer="momentum",
            lr=0.05,
            measure_size=200,
        )
    )
    assert result.loss_final < result.loss0
    total = math.fsum(r.total for r in w.records)
    assert abs(total - (w.records[-1].loss_end - w.loss0)) < 0.05 * (
        result.loss0 - result.loss_final
    )
    lost = w.series("techniques/fp8/updates_lost")
    assert len(lost) == 20 and ((lost >= 0) & (lost <= 1)).all()
    s = result.summaries["fp8"]
    assert s["simulated"] and s["activation_bits"] == 8 and s["compression_vs_float32"] > 1.9


# ---------------------------------------------------------------------------------------------
# fixed-point (Sakr & Shanbhag).


def two_layer(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(4, 5))
    model.add_module("act", nn.ReLU())
    model.add_module("out", nn.Linear(5, 3))
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(96, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return model, x, y


def test_fixed_point_precisions_follow_the_formulas_on_a_two_layer_net():
    model, x, y = two_layer()
    w1, b1 = model.fc1.weight.detach().clone(), model.fc1.bias.detach().clone()
    w2, b2 = model.out.weight.detach().clone(), model.out.bias.detach().clone()
    tech = techniques.create(
        {"name": "fixed-point", "bits": 6, "probe_examples": 32, "probe_steps": 5}
    )
    ctx = ctx_for(model, x, y, lr=0.05)
    tech.setup(ctx)
    # The noise gains by hand: z = W2·h + b2, h = relu(W1·x + b1).
    xs = x[:32].double()
    h = torch.relu(xs @ w1.double().T + b1.double())
    z = h @ w2.double().T + b2.double()
    r = (xs @ w1.double().T + b1.double() > 0).double()
    dr_w1, dr_w2 = [2.0 ** math.ceil(math.log2(w.abs().max())) for w in (w1, w2)]
    dr_x, dr_h = [2.0 ** math.ceil(math.log2(a.abs().max())) for a in (xs, h)]
    e = {"w1": 0.0, "w2": 0.0, "x": 0.0, "h": 0.0}
    for n in range(32):
        k = int(z[n].argmax())
        for i in range(3):
            if i == k:
                continue
            gap2 = float(z[n, i] - z[n, k]) ** 2
            v = (w2[i] - w2[k]).double()
            e["w2"] += 2 * float(h[n] @ h[n]) * dr_w2**2 / gap2 / 24
            e["h"] += float(v @ v) * dr_h**2 / gap2 / 24
            vr = v * r[n]
            e["w1"] += float(vr @ vr) * float(xs[n] @ xs[n]) * dr_w1**2 / gap2 / 24
            gx = w1.double().T @ vr
            e["x"] += float(gx @ gx) * dr_x**2 / gap2 / 24
    e = {k: v / 32 for k, v in e.items()}
    assert tech.gains["weights"] == pytest.approx([e["w1"], e["w2"]], rel=1e-4)
    assert tech.gains["activations"] == pytest.approx([e["x"], e["h"]], rel=1e-4)
    e_min = min(e.values())
    expect = [6 + round(math.log2(math.sqrt(e[k] / e_min))) for k in ("w1", "w2", "x", "h")]
    assert tech.bits["weights"] + tech.bits["activations"] == expect
    assert min(expect) == 6
    # Gradient classes: ranges and LSBs are powers of two from the probe's σ, B = log2(DR/LSB)+1.
    for i in range(2):
        lo, hi = tech.sigma["weight_grads"][i]
        dr = 2.0 ** math.ceil(math.log2(2 * hi / math.sqrt(0.1)))
        lsb = 2.0 ** math.floor(math.log2(lo / 4))
        assert tech.ranges["weight_grads"][i] == dr
        assert tech.bits["weight_grads"][i] == round(math.log2(dr / lsb)) + 1
        assert tech.lsb("weight_grads", i) == lsb
        lo_a, hi_a = tech.sigma["act_grads"][i]
        assert tech.ranges["act_grads"][i] == 2.0 ** math.ceil(math.log2(8 * hi_a / math.sqrt(0.1)))
        lsb_a = 2.0 ** math.floor(math.log2(lsb / math.sqrt(tech.lam[i])))
        assert tech.lsb("act_grads", i) == lsb_a
        # The accumulator resolves the smallest update lr_min·LSB_GW.
        assert tech.lsb("accumulator", i) == 2.0 ** math.floor(math.log2(0.05 * lsb))
    # λ_max is the largest eigenvalue of AᵀA (Linear) / of the im2col patch matrix (Conv).
    a = torch.randn(20, 4)
    assert lambda_max(model.fc1, a) == pytest.approx(
        float(np.linalg.eigvalsh((a.T @ a).double().numpy()).max()), rel=1e-6
    )
    conv = nn.Conv2d(2, 3, 3)
    img = torch.randn(2, 2, 5, 5)
    patches = torch.nn.functional.unfold(img, 3).transpose(1, 2).reshape(-1, 18).double()
    assert lambda_max(conv, img) == pytest.approx(
        float(np.linalg.eigvalsh((patches.T @ patches).numpy()).max()), rel=1e-6
    )


def test_fixed_point_tensors_lie_on_their_grids():
    model, x, y = two_layer()
    tech = techniques.create({"name": "fixed-point", "probe_steps": 3})
    ctx = ctx_for(model, x, y, lr=0.05)
    drive(tech, ctx, steps=3, batch=32)
    for i, name in enumerate(["fc1.weight", "out.weight"]):
        w = dict(model.named_parameters())[name].detach()
        lsb = tech.lsb("accumulator", i)
        assert torch.equal(torch.round(w.double() / lsb) * lsb, w.double())  # stored on ACC grid
        q = tech.effective(dict(model.named_parameters()))[name].double()
        lsb_w = tech.lsb("weights", i)
        assert torch.equal(torch.round(q / lsb_w) * lsb_w, q)
        assert tech.bits["accumulator"][i] > tech.bits["weights"][i]


@pytest.mark.slow
def test_fixed_point_training_tracks_float(train):  # noqa: F811
    """Stated margin: after 30 steps (same seed, same batches) the analytic fixed-point run's
    measured loss is at most 30% above the float run's and its test accuracy within 5 points
    (over 300 steps, `lca experiment precision`: 0.036 vs 0.025, 96.9% vs 97.2%)."""
    cfg = dict(steps=30, optimizer="momentum", lr=0.05, measure_size=200)
    base, _, _ = train(config([], **cfg))
    fx, w, _ = train(config([{"name": "fixed-point"}], **cfg))
    assert fx.loss_final < 1.3 * base.loss_final
    assert abs(fx.test_acc - base.test_acc) < 0.05
    assert base.loss_final < 0.8 * base.loss0
    bits = w.arrays["techniques/fixed-point/bits_accumulator"]
    assert np.isfinite(bits).sum() == 3 and (bits[np.isfinite(bits)] >= 8).all()
    assert len(w.series("techniques/fixed-point/updates_lost")) == 30


# ---------------------------------------------------------------------------------------------
# adaptive-loss-scaling.


def chain(tiny: float, seed: int = 0):
    """fc1 → fc2 → fc3 → out; fc2 and fc3 scaled by ``tiny`` so the lower errors are tiny."""
    torch.manual_seed(seed)
    m = nn.Sequential()
    for i, (a, b) in enumerate([(8, 16), (16, 16), (16, 16)], start=1):
        m.add_module(f"fc{i}", nn.Linear(a, b))
        m.add_module(f"a{i}", nn.ReLU())
    m.add_module("out", nn.Linear(16, 3))
    with torch.no_grad():
        for layer in (m.fc2, m.fc3):
            layer.weight.mul_(tiny)
            layer.bias.fill_(0.1)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    return m, x, y


def test_als_underflows_less_than_one_global_scale_with_tiny_gradients():
    model, x, y = chain(1e-3)
    tech = techniques.create({"name": "adaptive-loss-scaling", "global_scale": 1.0})
    drive(tech, ctx_for(model, x, y, 0.01), steps=5)
    s = tech.summary()
    # The same loss scale (1) for both: one global scale flushes ~20% of the gradient values to
    # zero in float16; ALS's per-layer scales (powers of two, growing down the chain) ~3%.
    assert s["mean_underflow_global"] > 0.1
    assert s["mean_underflow"] < 0.5 * s["mean_underflow_global"]
    scales = [tech.scales[n] for n in ("out", "fc3", "fc2", "fc1")]
    assert scales == sorted(scales) and scales[-1] > 1
    assert all(2.0 ** round(math.log2(v)) == v for v in scales)
    assert scales[-1] <= 1024  # the accumulated bound


def test_als_unscales_weight_gradients_exactly():
    model, x, y = chain(1.0)
    ctx = ctx_for(model, x, y, 0.01)
    tech = techniques.create({"name": "adaptive-loss-scaling", "loss_scale": 8.0})
    tech.setup(ctx)
    with techniques.measuring():  # hooks off: the float32 gradients
        ctx.loss_fn(model(x), y).backward()
    g32 = {n: p.grad.clone() for n, p in model.named_parameters()}
    ctx.optimizer.zero_grad(set_to_none=True)
    tech.backward(ctx, ctx.loss_fn(model(x), y))
    scaled = {n: p.grad.clone() for n, p in model.named_parameters()}
    tech.before_step(ctx)
    for n, p in model.named_parameters():
        scale = tech.scales[n.split(".")[0]]
        assert scale >= 8.0
        assert torch.equal(p.grad * scale, scaled[n].half().float())  # exact unscaling
        # ... of a float16 gradient: equal to float32's up to float16 rounding along the chain.
        assert (p.grad - g32[n]).abs().max() <= 2.0**-8 * g32[n].abs().max()


def test_als_in_the_loop_records_scales_per_layer(train):  # noqa: F811
    result, w, _ = train(config([{"name": "adaptive-loss-scaling"}], steps=6, measure_size=100))
    scale = w.series("techniques/adaptive-loss-scaling/scale")
    assert scale.shape == (6, 6)  # mlp (32, 32): three layers, weight and bias each
    assert np.isfinite(scale).all() and (scale >= 1).all()
    under = w.series("techniques/adaptive-loss-scaling/underflow")
    assert ((under >= 0) & (under <= 1)).all()
    assert result.loss_final < result.loss0


# ---------------------------------------------------------------------------------------------
# bnn.


def test_bnn_binarizes_weights_and_hidden_activations_but_measures_the_surrogate():
    model, x, y = chain(1.0)
    tech = techniques.create({"name": "bnn"})
    ctx = ctx_for(model, x, y, 0.5)
    tech.setup(ctx)
    assert tech.swapped == 3 and isinstance(model.a1, nn.Hardtanh)
    seen: dict[str, list[torch.Tensor]] = {"fc1": [], "fc2": []}
    for name in seen:
        getattr(model, name).register_forward_pre_hook(
            lambda m, a, name=name: seen[name].append(a[0].detach())
        )
    params = tech.forward_params(dict(model.named_parameters()))
    functional_call(model, params, (x,))
    with techniques.measuring():
        functional_call(model, tech.effective(dict(model.named_parameters())), (x,))
    (first_train, first_meas), (hidden_train, hidden_meas) = seen["fc1"], seen["fc2"]
    assert torch.equal(first_train, x) and torch.equal(first_meas, x)  # the data stays real
    assert set(hidden_train.unique().tolist()) == {-1.0, 1.0}  # sign of the Hardtanh output
    assert hidden_meas.abs().max() <= 1 and len(hidden_meas.unique()) > 10  # surrogate
    assert torch.equal(torch.sign(hidden_meas) + (hidden_meas == 0), hidden_train)
    for n in tech.targets:
        assert set(params[n].detach().unique().tolist()) <= {-1.0, 1.0}
    # Latent weights are clipped to [-1, 1] after a (large) step.
    drive(tech, ctx, steps=2)
    assert (
        max(float(dict(model.named_parameters())[n].detach().abs().max()) for n in tech.targets)
        <= 1
    )


@pytest.mark.slow
def test_bnn_records_the_discretization_residual(train):  # noqa: F811
    result, w, _ = train(
        config([{"name": "bnn"}], steps=12, optimizer="adam", lr=0.01, measure_size=200)
    )
    binary = w.series("techniques/bnn/loss_binary")
    residual = w.series("techniques/bnn/residual")
    steps = [r for r in w.records if r.kind == 0]
    assert np.isfinite(binary).all() and np.isfinite(residual).all()
    for t in range(1, len(steps)):  # residual = ΔL_binary − ΔL_surrogate, per step
        d_surr = steps[t].loss_end - steps[t].loss_start
        assert residual[t] == pytest.approx(binary[t] - binary[t - 1] - d_surr, abs=1e-5)
    assert np.abs(residual).max() > 1e-4  # the binary network's loss moves differently
    assert binary[-1] < binary[0]
    s = result.summaries["bnn"]
    assert "surrogate" in s["lca_measured_on"] and s["activation_bits"] == 1


# ---------------------------------------------------------------------------------------------
# conntra.


def no_bias_mlp(seed: int = 0):
    torch.manual_seed(seed)
    m = nn.Sequential()
    m.add_module("fc1", nn.Linear(8, 16, bias=False))
    m.add_module("a1", nn.ReLU())
    m.add_module("out", nn.Linear(16, 3, bias=False))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(128, 8, generator=g)
    y = (x[:, :3]).argmax(1)
    return m, x, y


def test_conntra_keeps_weights_ternary_and_accepts_only_loss_drops():
    model, x, y = no_bias_mlp()
    tech = techniques.create({"name": "conntra", "moves": 16, "blocks": 4})
    ctx = ctx_for(model, x, y, lr=0.1)
    losses = drive(tech, ctx, steps=25)  # full batch: the measured loss is the batch loss
    assert all(b <= a for a, b in zip(losses, losses[1:], strict=False))  # never goes up
    assert losses[-1] < losses[0] - 0.05
    for n in tech.targets:
        w = dict(model.named_parameters())[n].detach()
        alpha = tech.alpha[n]
        assert set((w / alpha).unique().tolist()) <= {-1.0, 0.0, 1.0}
    s = tech.summary()
    assert s["moves_accepted"] > 0 and s["moves_accepted"] + s["moves_rejected"] <= 25 * 16
    assert s["moves_accepted"] % 4 == 0  # whole blocks of 16/4 are accepted or undone
    # 2 bits per weight + one float32 α per tensor, against 4 bytes per weight.
    assert s["bytes_float32"] == 4 * (8 * 16 + 16 * 3)
    assert s["bytes_ternary"] == math.ceil(2 * (8 * 16 + 16 * 3) / 8) + 2 * 4
    assert "reconstructed" in techniques.describe("conntra")


def test_conntra_in_the_loop_records_moves(train):  # noqa: F811
    result, w, _ = train(config([{"name": "conntra"}], steps=8, measure_size=100))
    acc = w.series("techniques/conntra/accepted")
    rej = w.series("techniques/conntra/rejected")
    assert len(acc) == 8 and ((acc + rej) <= 64).all() and acc.sum() > 0


# ---------------------------------------------------------------------------------------------
# Registration, CLI specs, bad options, savings.

NEW = ("fp8", "fixed-point", "adaptive-loss-scaling", "bnn", "conntra")


@pytest.mark.parametrize("name", NEW)
def test_registered_with_documented_options_and_cli_specs(name):
    assert name in techniques.names()
    cls = techniques.get(name)
    assert cls.description and "\n" not in cls.description
    for key, opt in cls.options.items():
        assert opt.help, key
        assert opt.parse(name, key, opt.default) == opt.default
    assert ("reconstructed" in techniques.describe(name)) == (name == "conntra")
    config([{"name": name}])  # a config accepts it


def test_cli_specs_parse_to_options():
    t = techniques.create(
        techniques.parse_spec(
            "fp8:update_rounding=nearest,chunk=64,keep_first_last=true,forward=1-4-3"
        )
    )
    assert t.opts["update_rounding"] == "nearest" and t.opts["chunk"] == 64
    assert t.opts["keep_first_last"] is True and t.fwd == FloatFormat(4, 3)
    f = techniques.create(techniques.parse_spec("fixed-point:assign=uniform,bits=8"))
    assert f.opts == {**f.opts, "assign": "uniform", "bits": 8}


BAD = [
    {"name": "fp8", "update_rounding": "up"},
    {"name": "fp8", "chunk": -1},
    {"name": "fixed-point", "assign": "magic"},
    {"name": "fixed-point", "bits": 1},
    {"name": "adaptive-loss-scaling", "scale_bound": 0.5},
    {"name": "bnn", "alpha": "two"},
    {"name": "conntra", "moves": 0},
]


@pytest.mark.parametrize("spec", BAD, ids=lambda s: "-".join(map(str, s.values())))
def test_bad_options_are_one_sentence(spec):
    with pytest.raises(TechniqueError) as e:
        techniques.create(spec)
    msg = str(e.value)
    assert "\n" not in msg and msg.endswith(".")


def test_every_technique_states_what_it_saves():
    from techniques.savings import saving

    for name in techniques.names():
        s = saving(name, {})
        assert s.note, name
        if name in NEW or name in ("quantize", "binary", "ternary") or name.startswith("prune"):
            assert s.simulated and s.time == "none", name  # simulated numerics claim no speed
    assert saving("fp8", {"weight_bits_stored": 16}).weight_bits_training == 16
    assert saving("bnn").activation_bits == 1
    assert saving("freeze", {"fraction_params_frozen": 0.25}).optimizer_state_bits == 24


# ---------------------------------------------------------------------------------------------
# The rounding leg as its own segment, and `lca experiment precision`.


@pytest.mark.slow
def test_rounding_segment_allocates_the_rounding_and_the_report_reads_it(tmp_path):
    from lca.experiments import run_one
    from lca.store import Reader

    md = run_one(
        "precision", tmp_path, tiny=True, runs_dir=tmp_path / "runs", log=lambda _m: None
    ).read_text()
    files = {
        line.split(" | ")[0].strip("| "): line.split(" | ")[-1].strip(" |")
        for line in md.splitlines()
        if line.startswith("| digits-mlp32")
    }
    rows = [
        line.split(" | ")
        for line in md.splitlines()
        if line.startswith("| uniform 8 bits, stochastic |")
    ]  # the Runs table comes first
    path = tmp_path / "runs" / files["digits-mlp32-fx-uniform-8-bits-stochastic"]
    with Reader(path) as r:
        kind = r.steps("kind")
        labels = r.steps("label")
        lca = r.layer_lca().sum(1)
        loss = r.steps("loss")
    assert (kind == 1).sum() == (kind == 0).sum() - 1  # one rounding segment between steps
    assert all(str(lab) in ("fixed-point", "b'fixed-point'") for lab in labels[kind == 1])
    rounding = float(lca[kind == 1].sum())
    assert float(rows[0][5]) == pytest.approx(rounding, rel=2e-3)
    per_layer = [float(row[6].strip(" |")) for row in rows[1:]]  # the Per layer table
    assert sum(per_layer) == pytest.approx(rounding, rel=1e-2, abs=1e-5)
    # update legs + rounding legs together still telescope to the loss change
    assert abs(lca.sum() - (loss[-1] - loss[0])) < 0.02 * abs(loss[-1] - loss[0]) + 1e-3


def test_fixed_point_activations_are_rounded_in_training_and_only_clipped_when_measured():
    model, x, y = two_layer()
    tech = techniques.create({"name": "fixed-point", "probe_steps": 3})
    tech.setup(ctx_for(model, x, y, lr=0.05))
    seen: list[torch.Tensor] = []
    model.out.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    big = x * 100  # beyond the probe's activation range: clipped
    model(big)
    with techniques.measuring():
        model(big)
    trained, measured = seen
    dr, lsb = tech.ranges["activations"][1], tech.lsb("activations", 1)
    assert torch.equal(torch.round(trained.double() / lsb) * lsb, trained.double())
    assert measured.max() == dr - lsb and (measured < dr).all()
    assert len(measured.unique()) > len(trained.unique())  # not rounded
    # The clipped straight-through gradient: zero where the activation was clipped.
    a = (torch.randn(16, 5) * 4 * dr).requires_grad_(True)
    tech._act(1, a).sum().backward()
    inside = (a >= -dr) & (a <= dr - lsb)
    assert torch.equal(a.grad, inside.float())
