"""Leaf tensors shaped like a model's parameters that are views of one flat point buffer, with
their gradients views of one flat gradient buffer: made once, refilled per evaluation.

Why: the measurement gradient of a small model is ~1 ms, and every per-parameter operation
(a view, a ``.data`` or ``.grad`` set, a ``cat`` input) costs a few µs there: making views and
concatenating the gradients per evaluation was ~5% of the digits MLP's gradient. Here an
evaluation copies the point into its buffer (one ``copy_``), zeroes the gradient buffer (one
``zero_``), and autograd accumulates each leaf's gradient straight into its view of it; the flat
gradient is then one ``clone``.

Between evaluations the buffers hold no memory: their storages are resized to 0 bytes, so a
Measurer keeps nothing parameter-sized alive (the tracker's memory budget, issue 15 item 8).
A tensor on a shrunk storage would read freed memory (PyTorch does not check, the process
crashes), so the storages are only shrunk while nothing but this object refers to them or to
the leaves: if anything else kept one (a user's module that caches ``self.weight`` or
``self.weight.t()``, an autograd graph kept alive), the buffers are left to it, whole, and fresh
ones are made for the next evaluation.
"""

from __future__ import annotations

import sys

import torch

_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)


class FlatLeaves:
    """``leaves[i]``: a leaf (requires grad) shaped ``shapes[i]``, viewing its slice of the
    point buffer, its ``.grad`` the same slice of the gradient buffer; except the indices in
    ``apart``, whose leaves are empty and bound by the caller (a channels-last copy of
    ``point_views[i]``, say) and whose gradients the caller copies into ``grad_views[i]``."""

    def __init__(
        self,
        sizes: list[int],
        shapes: list[tuple[int, ...]],
        dtype: torch.dtype,
        device: torch.device,
        apart: set[int] = frozenset(),  # type: ignore[assignment]
    ) -> None:
        self._sizes, self._shapes, self._apart = sizes, shapes, set(apart)
        self._dtype, self._device = dtype, device
        self._make()

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [
            v.view(shape)
            for v, shape in zip(flat.split_with_sizes(self._sizes), self._shapes, strict=True)
        ]

    def _make(self) -> None:
        n = sum(self._sizes)
        self.point = torch.empty(n, dtype=self._dtype, device=self._device)
        self.grad = torch.empty(n, dtype=self._dtype, device=self._device)
        self.point_views, self.grad_views = self._views(self.point), self._views(self.grad)
        self.leaves = [self._leaf(i) for i in range(len(self._sizes))]
        self._storages = [self.point.untyped_storage(), self.grad.untyped_storage()]
        self._nbytes = self._storages[0].nbytes()
        self._own = self._references()
        for s in self._storages:
            s.resize_(0)

    def _leaf(self, i: int) -> torch.Tensor:
        if i in self._apart:
            return self.point.new_empty(0).requires_grad_(True)
        # its own leaf (not an autograd view of the buffer), sharing the buffer's memory
        leaf = self.point_views[i].detach().requires_grad_(True)
        leaf.grad = self.grad_views[i]
        return leaf

    def _references(self) -> list[int] | None:
        """Who refers to the buffers: each storage's owners and each leaf's owners (C++ and
        Python); None where this PyTorch cannot say."""
        if _storage_use_count is None or not hasattr(torch.Tensor, "_use_count"):
            return None
        return [
            *(_storage_use_count(s._cdata) for s in self._storages),
            *map(torch.Tensor._use_count, self.leaves),
            *map(sys.getrefcount, self.leaves),
        ]

    def fill(self, values: torch.Tensor, need_grad: bool) -> None:
        """The point buffer holds a copy of ``values`` (in its dtype and device), and the
        gradient buffer, where asked for, zeros."""
        self._storages[0].resize_(self._nbytes)
        self.point.copy_(values.detach() if values.requires_grad else values)
        if need_grad:
            self._storages[1].resize_(self._nbytes)
            self.grad.zero_()

    def _unshared(self) -> bool:
        own = self._own
        return own is not None and self._references() == own

    def release(self) -> None:
        """Give the memory back, once the caller let go of everything it bound."""
        if self._unshared():
            for s in self._storages:
                s.resize_(0)
        else:  # referred to from outside (or unknowable): leave them whole, start afresh
            self._make()

    def take_grad(self) -> torch.Tensor:
        """The flat gradient as a tensor of its own, and the memory given back (the point's
        first, so that at most two parameter-sized buffers are alive at once)."""
        if self._unshared():
            self._storages[0].resize_(0)
            grad = self.grad.clone()
            self._storages[1].resize_(0)
            return grad
        grad = self.grad  # left to whoever refers to it anyway
        self._make()
        return grad

    @property
    def holds_memory(self) -> bool:
        return any(s.nbytes() > 0 for s in self._storages)
