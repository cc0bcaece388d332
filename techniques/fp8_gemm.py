"""The GEMMs of Linear and Conv layers as 2-D matrix products, with the accumulation the fp8
technique asks for: chunk-based accumulation simulated exactly (Wang et al. 2018), or real
float8 matrix products through ``torch._scaled_mm`` on a CUDA device that has them.

Every Linear layer is ``y = x·Wᵀ + b`` over rows of x; every Conv1d/Conv2d layer is the same
product over the im2col rows of its input (``F.unfold``: one row per output position, the
K = C/groups·kh·kw inputs it sees in the weight's (c, u, v) order), one product per group.
A ``Matmul`` (an autograd Function) computes ``a @ b`` for (M, K) × (K, N) and both backward
GEMMs of it: ``grad_a = g @ bᵀ`` (contraction over N) and ``grad_b = aᵀ @ g`` (contraction over
M); so forward, grad_input and grad_weight all accumulate the same way.

**Chunked accumulation** (``chunked_mm``): the contraction is cut into chunks of ``chunk``
products; each chunk's sum is computed in float64 (exact for 1-5-2 operands short of a 2^47
magnitude spread), rounded once to the accumulation format (nearest), and added to the running
sum, which is rounded to the format after every chunk. The bias is added and rounded the same
way, and its gradient is the chunked column sum of g (a product with a row of ones). A
convolution's grad_input sums the im2col column gradients of the overlapping patches (col2im,
at most kh·kw terms per input, in float64) and rounds that sum once to the format. Cost: K/chunk
small matmuls and 2·K/chunk roundings per GEMM instead of one GEMM, three GEMMs per layer
per step; ``benchmarks/techniques.py`` prints the time ratio.

**float8 on CUDA** (``Float8Matmul``): the operands are cast to float8 and multiplied by
``torch._scaled_mm`` (float32 accumulation, float32 output; compute capability ≥ 8.9, the first
operand row-major, the second column-major, sizes padded with zeros to multiples of 16, scales
float32 scalars). cuBLASLt multiplies no two e5m2 matrices, so the first operand (activations,
errors) is e5m2 with scale 1 (exact: it already holds 1-5-2 values) and the second (weights,
and the activations in grad_weight = errorᵀ·x) is e4m3fn with a power-of-two per-tensor scale
that maps its largest magnitude into e4m3fn's range: 1-5-2 values within 2^17 of the tensor's
largest are exact there, smaller ones are rounded by the cast.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .lowbit import FloatFormat, float_quantize, quant

# (a (M, K), b (K, N)) -> a @ b (M, N), differentiable in both.
MatmulFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

CHUNKABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def chunked_mm(a: torch.Tensor, b: torch.Tensor, fmt: FloatFormat, chunk: int) -> torch.Tensor:
    """a @ b with the contraction cut in chunks of ``chunk``, each chunk sum (float64) rounded
    to ``fmt`` and accumulated in ``fmt`` (nearest). Returns a's dtype."""
    a64, b64 = a.detach().double(), b.detach().double()
    acc = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float64, device=a.device)
    for k in range(0, a.shape[1], chunk):
        part = float_quantize(a64[:, k : k + chunk] @ b64[k : k + chunk], fmt)
        acc = float_quantize(acc + part, fmt)
    return acc.to(a.dtype)


class _ChunkedMatmul(torch.autograd.Function):
    """a @ b, chunked in forward and in both backward GEMMs."""

    @staticmethod
    def forward(ctx, a, b, fmt, chunk):  # noqa: ANN001, ANN205
        ctx.save_for_backward(a, b)
        ctx.fmt, ctx.chunk = fmt, chunk
        return chunked_mm(a, b, fmt, chunk)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        a, b = ctx.saved_tensors
        ga = chunked_mm(g, b.T, ctx.fmt, ctx.chunk) if ctx.needs_input_grad[0] else None
        gb = chunked_mm(a.T, g, ctx.fmt, ctx.chunk) if ctx.needs_input_grad[1] else None
        return ga, gb, None, None


class _ChunkedBias(torch.autograd.Function):
    """round(acc + bias) per row; the bias gradient is the chunked column sum of g."""

    @staticmethod
    def forward(ctx, acc, bias, fmt, chunk):  # noqa: ANN001, ANN205
        ctx.fmt, ctx.chunk, ctx.rows = fmt, chunk, acc.shape[0]
        return float_quantize(acc.double() + bias.double(), fmt).to(acc.dtype)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        ones = torch.ones(1, ctx.rows, dtype=g.dtype, device=g.device)
        gb = chunked_mm(ones, g, ctx.fmt, ctx.chunk)[0] if ctx.needs_input_grad[1] else None
        return g, gb, None, None


def chunked_matmul(fmt: FloatFormat, chunk: int) -> tuple[MatmulFn, Callable]:
    """(matmul, add_bias) with chunk-based accumulation in ``fmt``."""

    def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _ChunkedMatmul.apply(a, b, fmt, chunk)

    def add_bias(acc: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return _ChunkedBias.apply(acc, bias, fmt, chunk)

    return mm, add_bias


# ---------------------------------------------------------------------------------------------
# float8 matrix products (torch._scaled_mm).


def float8_supported(device: torch.device | str) -> bool:
    """Whether ``device`` is a CUDA device with float8 matrix products (compute capability
    8.9 or newer) in this torch build."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def _pad16(t: torch.Tensor) -> torch.Tensor:
    rows, cols = (-t.shape[0]) % 16, (-t.shape[1]) % 16
    return F.pad(t, (0, cols, 0, rows)) if rows or cols else t


def _e4m3_scale(t: torch.Tensor) -> torch.Tensor:
    """A power-of-two scale s with max|t|/s within e4m3fn's largest value (448)."""
    amax = float(t.detach().abs().max()) if t.numel() else 0.0
    if not math.isfinite(amax) or amax == 0.0:
        return torch.ones((), dtype=torch.float32, device=t.device)
    return torch.tensor(
        2.0 ** math.ceil(math.log2(amax / 448.0)), dtype=torch.float32, device=t.device
    )


def float8_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with a in e5m2 (scale 1) and b in e4m3fn (power-of-two scale) by
    ``torch._scaled_mm``, float32 accumulation; zero-padded to multiples of 16."""
    m, n = a.shape[0], b.shape[1]
    a8 = _pad16(a.detach().float()).to(torch.float8_e5m2).contiguous()  # row-major
    scale_b = _e4m3_scale(b)
    b8 = _pad16(b.detach().float() / scale_b).to(torch.float8_e4m3fn)
    b8 = b8.T.contiguous().T  # column-major
    one = torch.ones((), dtype=torch.float32, device=a.device)
    out = torch._scaled_mm(a8, b8, one, scale_b, out_dtype=torch.float32)
    return out[:m, :n].to(a.dtype)


class _Float8Matmul(torch.autograd.Function):
    """a @ b in float8; backward grad_a = g·bᵀ (g e5m2, b e4m3fn) and grad_b = (gᵀ·a)ᵀ
    (g e5m2, a e4m3fn), each through ``float8_mm``."""

    @staticmethod
    def forward(ctx, a, b):  # noqa: ANN001, ANN205
        ctx.save_for_backward(a, b)
        return float8_mm(a, b)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        a, b = ctx.saved_tensors
        ga = float8_mm(g, b.T) if ctx.needs_input_grad[0] else None
        gb = float8_mm(g.T, a).T if ctx.needs_input_grad[1] else None
        return ga, gb


def float8_matmul() -> tuple[MatmulFn, Callable]:
    """(matmul, add_bias) with float8 operands; the bias is added in float32."""

    def add_bias(acc: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return acc + bias

    return _Float8Matmul.apply, add_bias


# ---------------------------------------------------------------------------------------------
# Layers as GEMMs.


def linear_gemm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mm: MatmulFn,
    add_bias: Callable,
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` through ``mm`` (x of any leading shape)."""
    rows = x.reshape(-1, x.shape[-1])
    y = mm(rows, weight.T)
    if bias is not None:
        y = add_bias(y, bias)
    return y.reshape(*x.shape[:-1], weight.shape[0])


def _conv_padding(module: nn.Module, x: torch.Tensor, kernel: tuple[int, ...]):
    """(x padded where Conv pads it itself, the padding left for unfold)."""
    dims = len(kernel)
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return x, (0,) * dims
        pads = []  # "same" (stride 1): total dilation·(k−1), the extra one on the right
        for d, k in zip(reversed(module.dilation), reversed(kernel), strict=True):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        return F.pad(x, pads, mode=mode), (0,) * dims
    if module.padding_mode != "zeros":
        return F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode), (
            0,
        ) * dims
    return x, tuple(module.padding)


def conv_gemm(
    module: nn.Conv1d | nn.Conv2d,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mm: MatmulFn,
    add_bias: Callable,
    unfold_dtype: torch.dtype | None = None,
    round_input_grad: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``module``'s convolution of x through im2col and ``mm``, one product per group.

    ``unfold_dtype``: the dtype the im2col (and, in backward, col2im) runs in;
    ``round_input_grad``: applied to x's gradient after col2im has summed it.
    """
    dtype = x.dtype
    kernel = tuple(weight.shape[2:])
    if unfold_dtype is not None:  # before the rounding: col2im's sum is rounded once, from it
        x = x.to(unfold_dtype)
    if round_input_grad is not None:
        x = quant(x, None, round_input_grad)
    x, padding = _conv_padding(module, x, kernel)
    dilation, stride = tuple(module.dilation), tuple(module.stride)
    one_d = isinstance(module, nn.Conv1d)
    if one_d:  # a Conv1d is a Conv2d of height 1
        x, weight = x.unsqueeze(-2), weight.unsqueeze(-2)
        kernel, padding = (1, *kernel), (0, *padding)
        dilation, stride = (1, *dilation), (1, *stride)
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    n, _, positions = cols.shape
    rows = cols.transpose(1, 2).reshape(n * positions, -1)
    groups, out_ch = module.groups, weight.shape[0]
    k_group, o_group = rows.shape[1] // groups, out_ch // groups
    w2 = weight.reshape(out_ch, -1).to(rows.dtype)
    parts = [
        mm(rows[:, i * k_group : (i + 1) * k_group], w2[i * o_group : (i + 1) * o_group].T)
        for i in range(groups)
    ]
    y = parts[0] if groups == 1 else torch.cat(parts, dim=1)
    if bias is not None:
        y = add_bias(y, bias.to(y.dtype))
    size = [
        (x.shape[2 + i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
        for i in range(2)
    ]
    y = y.reshape(n, positions, out_ch).transpose(1, 2).reshape(n, out_ch, *size)
    return (y.squeeze(-2) if one_d else y).to(dtype)
