"""The measurement gradient's leaves are made once (views of one point buffer, their gradients
views of one gradient buffer, lca.flatviews): the gradient must be autograd's exactly, the
leaves must never be the model's parameters or the caller's point, and a module that keeps a
reference to its weight must still read it safely after the buffers are given back."""

from __future__ import annotations

import copy
import operator

import pytest
import torch
from torch import nn

import lca.flatviews
from lca import models
from lca.measure import Measurer
from lca.memory import held_tensor_bytes


@pytest.fixture(params=["kept", "per-evaluation"])
def way(request, monkeypatch) -> str:
    """Both ways of binding the leaves (lca.flatviews): buffers kept for small models, views
    made per evaluation for bigger ones; the tests' models are small, so the limit moves."""
    limit = 1 << 40 if request.param == "kept" else 0
    monkeypatch.setattr(lca.flatviews, "KEEP_MAX_BYTES", limit)
    return request.param


def _oracle(model: nn.Module, point: torch.Tensor, x, y, chunk: int) -> torch.Tensor:
    """torch.autograd.grad of each chunk's weighted mean loss on a copy of the model holding
    ``point``, added chunk by chunk in order (the Measurer's own order of additions)."""
    twin = copy.deepcopy(model).to(point.dtype)
    nn.utils.vector_to_parameters(point, twin.parameters())
    total = None
    for i in range(0, len(x), chunk):
        cx, cy = x[i : i + chunk], y[i : i + chunk]
        loss = nn.functional.cross_entropy(twin(cx.to(point.dtype)), cy)
        if len(cx) != len(x):
            loss = loss * (len(cx) / len(x))
        grads = torch.autograd.grad(loss, list(twin.parameters()))
        flat = torch.cat([g.reshape(-1) for g in grads])
        total = flat if total is None else total + flat
    assert total is not None
    return total


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk", [7, 64])
def test_gradient_is_autograds_bit_for_bit(way: str, dtype, chunk: int) -> None:
    torch.manual_seed(0)
    model = models.build("mlp", (6,), 3)
    x, y = torch.randn(30, 6), torch.randint(0, 3, (30,))
    m = Measurer(model, nn.CrossEntropyLoss(), (x, y), chunk_size=chunk, dtype=dtype)
    assert m._flat.kept == (way == "kept")
    point = m.flatten(dict(model.named_parameters()))
    for step in range(3):  # fresh points: nothing of the last evaluation leaks into the next
        point = point + 0.05 * torch.randn_like(point)
        grad = m.flat_grad(point)
        assert grad.dtype == dtype
        assert torch.equal(grad, _oracle(model, point, x, y, chunk)), step
        loss, grad_too = m.flat_loss_and_grad(point)
        assert torch.equal(grad_too, grad)
        assert grad_too.data_ptr() != grad.data_ptr()  # each a tensor of its own
        assert held_tensor_bytes(m, skip=("_chunks",)) == 0 and not m._flat.holds_memory


def test_leaves_are_never_the_models_parameters_nor_the_callers_point(way: str) -> None:
    torch.manual_seed(0)
    model = models.build("mlp", (6,), 3)
    x, y = torch.randn(12, 6), torch.randint(0, 3, (12,))
    m = Measurer(model, nn.CrossEntropyLoss(), (x, y), chunk_size=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    seen: list[torch.Tensor] = []
    model.fc1.register_forward_hook(lambda mod, inputs, out: seen.append(mod.weight))
    for _ in range(3):  # training steps between evaluations, as the tracker interleaves them
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        point = m.flatten(dict(model.named_parameters()))
        seen.clear()
        grad = m.flat_grad(point)
        weight = seen[0]
        assert weight is not model.fc1.weight and not isinstance(weight, nn.Parameter)
        own = {p.untyped_storage().data_ptr() for p in model.parameters()}
        assert weight.untyped_storage().data_ptr() not in own | {point.data_ptr()}
        assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())
        expected = _oracle(model, point, x, y, 5)
        point.add_(1.0)  # the caller reuses its buffer: the gradient it was given is its own
        assert torch.equal(grad, expected)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


class Keeper(nn.Module):
    """Keeps its weight and a view of it from the last forward (as a caching module might)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.keep = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.keep:
            self.kept, self.kept_t = self.fc.weight, self.fc.weight.t()
        return self.fc(x)


def test_a_module_that_keeps_its_weight_still_reads_it_after_the_evaluation(way: str) -> None:
    torch.manual_seed(0)
    model = Keeper()
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    m = Measurer(model, nn.CrossEntropyLoss(), (x, y), chunk_size=4)
    pristine = copy.deepcopy(model)  # for the oracle (a kept view cannot be deep-copied)
    a = m.flatten(dict(model.named_parameters()))
    b = a + 1.0
    m.flat_grad(a)
    kept, kept_t = model.kept, model.kept_t
    grad_b = m.flat_grad(b)  # the buffers that `kept` views were left to it, whole
    if way == "kept":  # the leaf itself: its buffer left whole
        assert torch.equal(kept.detach(), a[:12].view(3, 4))
    else:  # unbound after each evaluation: empty, nothing freed under it
        assert kept.numel() == 0
    assert torch.equal(kept_t.detach(), a[:12].view(3, 4).t())
    assert torch.equal(grad_b, _oracle(pristine, b, x, y, 4))
    del kept, kept_t
    model.keep = False
    del model.kept, model.kept_t
    m.flat_grad(a)  # the last buffers let go of by the module: kept ones reused from now on
    storages = list(m._flat._storages) if way == "kept" else None  # (no reference to them)
    for _ in range(3):
        assert torch.equal(m.flat_grad(b), grad_b)
        assert storages is None or all(map(operator.is_, storages, m._flat._storages))
        assert not m._flat.holds_memory


class TiedConv(nn.Module):
    """A conv weight used twice, BatchNorm (scratch buffers) and a Linear after them."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 2, 3, padding=1)
        self.b = nn.Conv2d(2, 2, 3, padding=1)
        self.b.weight = self.a.weight
        self.bn = nn.BatchNorm2d(2)
        self.out = nn.Linear(2 * 5 * 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.bn(self.b(torch.tanh(self.a(x))))).flatten(1))


@pytest.mark.parametrize("channels_last", [False, True])
def test_both_ways_give_the_functional_paths_values_bit_for_bit(way: str, channels_last) -> None:
    torch.manual_seed(0)
    model = TiedConv()
    x, y = torch.randn(23, 2, 5, 5), torch.randint(0, 3, (23,))
    kw = {"chunk_size": 7, "channels_last": channels_last}
    fast = Measurer(model, nn.CrossEntropyLoss(), (x, y), **kw)
    functional = Measurer(model, nn.CrossEntropyLoss(), (x, y), **kw)
    base = functional.chunk_loss
    functional.chunk_loss = lambda tensors, cx, cy: base(tensors, cx, cy)  # forces functional
    point = fast.flatten(dict(model.named_parameters())) + 0.01
    for _ in range(2):
        loss, grad = fast.flat_loss_and_grad(point)
        functional_loss, functional_grad = functional.flat_loss_and_grad(point)
        assert loss == functional_loss and torch.equal(grad, functional_grad)
        assert torch.equal(fast.flat_grad(point), grad)
        assert (
            fast.loss_and_grad(dict(model.named_parameters()), need_grad=False)[0]
            == (functional.loss_and_grad(dict(model.named_parameters()), need_grad=False)[0])
        )
        assert not fast._flat.holds_memory
