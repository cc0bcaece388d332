"""The leaves a Measurer puts into a model's parameter slots, shaped like its parameters, and
the flat gradient autograd leaves on them.

Why two ways: a small model's measurement gradient is ~1 ms, and every per-parameter operation
(a view, a ``cat`` input) costs a few µs there, so making views and concatenating gradients
per evaluation was ~5% of the digits MLP's gradient. For such a model (parameters of at most
``KEEP_MAX_BYTES``) the leaves are made once, as views of one point buffer, with their
``.grad`` views of one gradient buffer: an evaluation copies the point in (one ``copy_``),
zeroes the gradient buffer (one ``zero_``), autograd accumulates each leaf's gradient straight
into its view of it, and the flat gradient is one ``clone``. For a bigger model those copies
cost more than the views they save (LeNet on 200 images: 2–3% of its gradient, mostly pages
faulted in for the buffers), so each evaluation binds the leaves to views of the point itself
and lays the gradients out with one ``cat``, as before.

Between evaluations nothing parameter-sized is held: the kept buffers' storages are resized to
0 bytes (the tracker's memory budget, issue 15 item 8). A tensor on a shrunk storage would read
freed memory (PyTorch does not check: the process crashes), so the storages are only shrunk
while nothing but this object refers to them or to the leaves: if anything else kept one (a
user's module that caches ``self.weight`` or ``self.weight.t()``, an autograd graph kept
alive), the buffers are left to it, whole, and fresh ones are made for the next evaluation.
"""

from __future__ import annotations

import sys

import torch

# Measured on the 2-core CPU (benchmarks/gradient.py): kept buffers win for the digits MLP
# (14 KB of float32 parameters), per-evaluation views for LeNet (3.2 MB); fc-mnist (336 KB)
# measured the same either way.
KEEP_MAX_BYTES = 64 * 1024

_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)


class FlatLeaves:
    """``leaves[i]``: the leaf (requires grad) for parameter ``i``, shaped ``shapes[i]``, bound
    to its slice of the point by :meth:`fill`; ``point_views[i]``: that slice. The caller may
    rebind the leaves in ``apart`` (to a channels-last copy of their slice, say); their
    gradients are laid out flat all the same. :meth:`take_grad` or :meth:`release` ends an
    evaluation and unbinds every leaf."""

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
        self._nothing = torch.empty(0, dtype=dtype, device=device)
        self.kept = sum(sizes) * self._nothing.element_size() <= KEEP_MAX_BYTES
        if self.kept:
            self._make()
        else:
            self.leaves = [self._nothing.clone().requires_grad_(True) for _ in sizes]
            self.point_views: list[torch.Tensor] = []

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [
            v.view(shape)
            for v, shape in zip(flat.split_with_sizes(self._sizes), self._shapes, strict=True)
        ]

    # ------------------------------------------------------------------ kept buffers

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
            return self._nothing.clone().requires_grad_(True)
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

    def _unshared(self) -> bool:
        own = self._own
        return own is not None and self._references() == own

    # ------------------------------------------------------------------ an evaluation

    def fill(self, values: torch.Tensor, need_grad: bool) -> None:
        """Bind the leaves to ``values`` (converted to the dtype and device), with zero
        gradients where asked for."""
        if values.requires_grad:
            values = values.detach()
        if not self.kept:
            point = values.to(self._device, self._dtype).contiguous()
            self.point_views = self._views(point)
            for leaf, view in zip(self.leaves, self.point_views, strict=True):
                leaf.data = view
            return
        self._storages[0].resize_(self._nbytes)
        self.point.copy_(values)
        if need_grad:
            self._storages[1].resize_(self._nbytes)
            self.grad.zero_()

    def _unbind_apart(self) -> None:
        for i in self._apart:
            self.leaves[i].grad = None
            self.leaves[i].data = self._nothing

    def take_grad(self) -> torch.Tensor:
        """The flat gradient as a tensor of its own, the leaves unbound and the memory given
        back (a kept point buffer's first, so that at most two parameter-sized buffers are
        alive at once)."""
        leaves = self.leaves
        if not self.kept:
            grads = [
                (t.grad if t.grad is not None else torch.zeros_like(t)).reshape(-1) for t in leaves
            ]
            grad = torch.cat(grads) if grads else self._nothing.clone()
            del grads
            self.release()
            return grad
        for i in self._apart:  # accumulated in their own layout: laid out flat here
            if leaves[i].grad is not None:
                self.grad_views[i].copy_(leaves[i].grad)
        self._unbind_apart()
        del leaves
        if self._unshared():
            self._storages[0].resize_(0)
            grad = self.grad.clone()
            self._storages[1].resize_(0)
            return grad
        grad = self.grad  # left to whoever refers to it anyway
        self._make()
        return grad

    def release(self) -> None:
        """End an evaluation without a gradient: unbind the leaves, give the memory back."""
        if not self.kept:
            for leaf in self.leaves:
                leaf.grad = None
                leaf.data = self._nothing
            self.point_views = []
            return
        self._unbind_apart()
        if self._unshared():
            for s in self._storages:
                s.resize_(0)
        else:  # referred to from outside (or unknowable): leave them whole, start afresh
            self._make()

    @property
    def holds_memory(self) -> bool:
        """Whether anything parameter-sized is held (only ever during an evaluation)."""
        if not self.kept:
            return bool(self.point_views) or any(t.numel() for t in self.leaves)
        return any(s.nbytes() > 0 for s in self._storages)
