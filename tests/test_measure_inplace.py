"""The measurement gradient runs the module itself (not functional_call) for speed: it must give
bit-for-bit the values of the functional path and leave the model exactly as it found it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lca import models
from lca.measure import Measurer
from lca.memory import held_tensor_bytes


def _pair(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype=torch.float32, channels_last=None
):
    kw = {"chunk_size": 7, "dtype": dtype, "channels_last": channels_last}
    fast = Measurer(model, nn.CrossEntropyLoss(), (x, y), **kw)
    functional = Measurer(model, nn.CrossEntropyLoss(), (x, y), **kw)
    base = functional.chunk_loss
    functional.chunk_loss = lambda tensors, cx, cy: base(tensors, cx, cy)  # forces functional
    return fast, functional


class BatchNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.out = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.bn(self.conv(x))).flatten(1))


class Tied(nn.Module):
    """The same weight used by two layers (as in a tied autoencoder)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 5)
        self.b = nn.Linear(5, 5)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


CASES = {
    "mlp": (lambda: models.build("mlp", (8,), 4), (8,)),
    "lenet": (lambda: models.build("lenet", (1, 12, 12), 4), (1, 12, 12)),
    "batchnorm": (BatchNormNet, (1, 6, 6)),
    "tied": (Tied, (5,)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [None, False, True])
def test_in_place_gradient_equals_functional_bit_for_bit(case: str, dtype, channels_last) -> None:
    torch.manual_seed(0)
    build, shape = CASES[case]
    model = build()
    x, y = torch.randn(30, *shape), torch.randint(0, 4, (30,))
    fast, functional = _pair(model, x, y, dtype, channels_last)
    point = fast.flatten(dict(model.named_parameters())) + 0.01
    loss_a, grad_a = fast.flat_loss_and_grad(point)
    loss_b, grad_b = functional.flat_loss_and_grad(point)
    assert loss_a == loss_b
    assert torch.equal(grad_a, grad_b)
    assert grad_a.dtype == dtype and grad_a.abs().sum() > 0
    assert fast.flat_loss_and_grad(point, need_grad=False)[0] == loss_a


def test_model_is_left_exactly_as_it_was() -> None:
    torch.manual_seed(0)
    model = BatchNormNet()
    x, y = torch.randn(30, 1, 6, 6), torch.randint(0, 4, (30,))
    model(x).sum().backward()  # the training loop's gradients, which must survive
    model.eval()
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    objects = {n: p for n, p in model.named_parameters()}
    m = Measurer(model, nn.CrossEntropyLoss(), (x, y), chunk_size=8)
    m.flat_grad(m.flatten(dict(model.named_parameters())) * 1.5)
    assert all(torch.equal(t, before[n]) for n, t in model.state_dict().items())
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())
    assert all(p is objects[n] for n, p in model.named_parameters())
    assert not model.training and not model.bn.training


def test_model_is_restored_when_the_forward_fails() -> None:
    model = models.build("mlp", (8,), 4)
    objects = {n: p for n, p in model.named_parameters()}
    m = Measurer(model, nn.CrossEntropyLoss(), (torch.randn(6, 8), torch.randint(0, 4, (6,))))
    m.loss_fn = lambda out, y: out[:, 99].sum()  # index error inside the swapped block
    with pytest.raises(IndexError):
        m.flat_grad(m.flatten(dict(model.named_parameters())))
    assert all(p is objects[n] for n, p in model.named_parameters())
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())


class Recorder(nn.Module):
    """A module whose ``train()`` does more than set flags: it must be switched through it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[bool] = []

    def train(self, mode: bool = True) -> Recorder:
        self.calls.append(mode)
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.parametrize("overridden", [False, True])
def test_dropout_is_off_and_every_mode_comes_back(overridden: bool) -> None:
    torch.manual_seed(0)
    layers = [nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 3)]
    model = nn.Sequential(*layers, *([Recorder()] if overridden else []))
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    m = Measurer(model, nn.CrossEntropyLoss(), (x, y), chunk_size=7)
    model.train()
    point = m.flatten(dict(model.named_parameters()))
    calls = len(model[-1].calls) if overridden else 0
    grad = m.flat_grad(point)
    if overridden:  # switched through its own train(), as measurement_mode does
        assert model[-1].calls[calls:] == [False]
    assert torch.equal(m.flat_grad(point), grad)  # no dropout mask: the same gradient twice
    assert all(module.training for module in model.modules())
    model.eval()  # the plain gradient with dropout off
    model.zero_grad()
    sum(
        nn.functional.cross_entropy(model(x[i : i + 7]), y[i : i + 7]) * len(x[i : i + 7]) / 20
        for i in range(0, 20, 7)
    ).backward()
    plain = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(grad, plain, rtol=1e-6, atol=1e-7)
    assert not any(module.training for module in model.modules())
    assert torch.equal(m.flat_grad(point), grad)  # from eval mode too
    assert not any(module.training for module in model.modules())


def test_nothing_is_held_between_evaluations() -> None:
    """The Measurer's point and gradient buffers hold memory only during an evaluation (a
    quadrature node's point would otherwise stay alive, and the tracker's memory budget counts
    every parameter-sized buffer), even when the forward fails."""
    model = models.build("lenet", (1, 8, 8), 4, channels=(2, 3), hidden=5)
    x, y = torch.randn(9, 1, 8, 8), torch.randint(0, 4, (9,))
    m = Measurer(model, nn.CrossEntropyLoss(), (x, y), chunk_size=4)
    point = m.flatten(dict(model.named_parameters()))
    grad = m.flat_grad(point)
    assert grad.shape == point.shape and grad.abs().sum() > 0
    assert held_tensor_bytes(m, skip=("_chunks",)) == 0
    assert all(t.untyped_storage().nbytes() == 0 for t in m._flat.leaves)
    m.loss_fn = lambda out, target: out[:, 99].sum()
    with pytest.raises(IndexError):
        m.flat_grad(point)
    assert held_tensor_bytes(m, skip=("_chunks",)) == 0
    assert all(t.untyped_storage().nbytes() == 0 for t in m._flat.leaves)
