"""Channels-last convolutions in the measurement gradient (the fast layout on the CPU): the
gradient must be the NCHW one to float32 rounding, the convs must really run channels-last
(also with one input channel, where ``contiguous(memory_format=...)`` silently keeps NCHW),
and the model must come back exactly as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lca import models
from lca.measure import Measurer, channels_last_pays


class BatchNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.out = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.bn(self.conv(x))).flatten(1))


class TiedConv(nn.Module):
    """One conv weight used twice (and a Linear reading a conv output)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 3, 3, padding=1)
        self.b = nn.Conv2d(3, 3, 3, padding=1)
        self.b.weight = self.a.weight
        self.out = nn.Linear(3 * 6 * 6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.b(torch.tanh(self.a(x)))).flatten(1))


def residual() -> nn.Module:
    """ResNet-20's block with its projection shortcut, BatchNorm and residual add."""
    return nn.Sequential(models.BasicBlock(2, 4, 2), nn.Flatten(), nn.Linear(4 * 3 * 3, 4))


CASES = {
    "lenet": (lambda: models.build("lenet", (1, 8, 8), 4, channels=(3, 4), hidden=8), (1, 8, 8)),
    "cnn-small": (lambda: models.build("cnn-small", (1, 8, 8), 4), (1, 8, 8)),
    "residual": (residual, (2, 6, 6)),
    "batchnorm": (BatchNormNet, (2, 6, 6)),
    "tied": (TiedConv, (3, 6, 6)),
}


def _measurers(case: str, dtype=torch.float32) -> tuple[nn.Module, Measurer, Measurer]:
    torch.manual_seed(0)
    build, shape = CASES[case]
    model = build()
    data = (torch.randn(40, *shape), torch.randint(0, 4, (40,)))
    kw = {"chunk_size": 15, "dtype": dtype}  # uneven chunks: weights and accumulation
    cl = Measurer(model, nn.CrossEntropyLoss(), data, channels_last=True, **kw)
    nchw = Measurer(model, nn.CrossEntropyLoss(), data, channels_last=False, **kw)
    return model, cl, nchw


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channels_last_gradient_is_the_nchw_gradient(case: str, dtype) -> None:
    model, cl, nchw = _measurers(case, dtype)
    point = cl.flatten(dict(model.named_parameters())) * 1.1
    loss_cl, grad_cl = cl.flat_loss_and_grad(point)
    loss_nchw, grad_nchw = nchw.flat_loss_and_grad(point)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    assert loss_cl == pytest.approx(loss_nchw, rel=rtol)
    scale = grad_nchw.abs().max()
    assert scale > 0 and grad_cl.dtype == dtype and grad_cl.shape == grad_nchw.shape
    torch.testing.assert_close(grad_cl, grad_nchw, rtol=rtol, atol=rtol * scale)
    assert torch.equal(cl.flat_grad(point), grad_cl)  # the gradient-only node: same values


def _conv_layouts(model: nn.Module, measurer: Measurer, point: torch.Tensor) -> list[bool]:
    """Whether each conv ran with a channels-last weight (by its strides, as oneDNN reads
    them: channel stride 1)."""
    seen: list[bool] = []

    def hook(module: nn.Conv2d, inputs, output) -> None:
        w = module.weight
        seen.append(w.stride(1) == 1 and w.is_contiguous(memory_format=torch.channels_last))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        measurer.flat_grad(point)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_convs_run_channels_last_even_with_one_input_channel() -> None:
    model, cl, nchw = _measurers("lenet")  # conv1 has one input channel
    point = cl.flatten(dict(model.named_parameters()))
    assert _conv_layouts(model, cl, point) == [True, True] * cl.num_chunks
    assert _conv_layouts(model, nchw, point) == [False, False] * nchw.num_chunks


def test_the_layout_is_chosen_where_it_was_measured_faster() -> None:
    lenet = models.build("lenet", (1, 12, 12), 4)
    mlp = models.build("mlp", (8,), 4)
    cpu = torch.device("cpu")
    expected = torch.backends.mkldnn.is_available()
    assert channels_last_pays(lenet, cpu, torch.float32) is expected
    assert not channels_last_pays(lenet, cpu, torch.float64)
    assert not channels_last_pays(mlp, cpu, torch.float32)
    assert not channels_last_pays(lenet, torch.device("cuda"), torch.float32)
    data = (torch.randn(4, 1, 12, 12), torch.randint(0, 4, (4,)))
    assert Measurer(lenet, nn.CrossEntropyLoss(), data).channels_last is expected
    assert not Measurer(lenet, nn.CrossEntropyLoss(), data, dtype=torch.float64).channels_last


def test_model_keeps_its_nchw_parameters_and_gradients() -> None:
    model, cl, _ = _measurers("batchnorm")
    x = torch.randn(5, 2, 6, 6)
    model(x).sum().backward()
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    objects = dict(model.named_parameters())
    cl.flat_grad(cl.flatten(objects) * 0.9)
    for n, p in model.named_parameters():
        assert p is objects[n] and isinstance(p, nn.Parameter)
        assert p.is_contiguous() and torch.equal(p, before[n]) and torch.equal(p.grad, grads[n])
    assert all(torch.equal(t, before[n]) for n, t in model.state_dict().items())
    assert model.training and model.bn.training  # as the training loop left it
