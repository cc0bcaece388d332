"""The model zoo: small, named networks that adapt to any dataset's input shape.

Why a zoo rather than free-form model code: Loss Change Allocation (LCA) is reported
per parameter and aggregated per *unit* (a Linear row / Conv output channel together
with its bias, or one channel of a norm layer).  The UI, the analysis code and saved
runs therefore rely on three guarantees that every model here keeps:

* **Stable, readable parameter names** - hidden layers are ``fc1``, ``fc2``, ...
  (or ``conv1``, ``conv2``, ...) and the classifier is always ``out``, so a name seen in
  a plot means the same thing across runs.
* **Standard weight layouts only** - ``nn.Linear`` weight is ``(out, in)``, ``nn.Conv2d``
  weight is ``(out, in, kh, kw)``; no parameter sharing and no free ``nn.Parameter``.
* **Pure, functional-friendly forward passes** - non-inplace activations and no hidden
  state besides BatchNorm buffers, so ``torch.func.functional_call`` with a params dict
  gives exactly ``model(x)``, in float32 or float64.

Weights of Linear/Conv layers are He-normal (``kaiming_normal_``, fan-in, ReLU gain) and
biases are zero, as in the LCA paper (Lan et al., 2019).  Models never seed the RNG
themselves: the caller sets ``torch.manual_seed`` and ``build`` is then deterministic.

Public API::

    names() -> list[str]
    build(name, input_shape, num_classes, **options) -> nn.Module
    describe(name) -> str
    defaults(name) -> dict[str, object]
    parameter_count(model) -> int
    ModelError
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .spec import Spec

__all__ = [
    "ModelError",
    "build",
    "defaults",
    "describe",
    "names",
    "parameter_count",
]


class ModelError(ValueError):
    """A model name, input shape or option is not usable.

    The message is one plain sentence naming the problem, the offending value and what
    is allowed, so the UI can show it to a student verbatim.
    """


# --------------------------------------------------------------------------- helpers

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
}

# Gain used for He-normal init of the layers *feeding* each activation.  ReLU (and the
# ReLU-like GELU) use the paper's He gain; saturating activations use their own gain so
# that a tanh/sigmoid MLP does not start saturated.
_INIT_NONLINEARITY = {"relu": "relu", "gelu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}


def _he_init(module: nn.Module, nonlinearity: str = "relu") -> None:
    """He-normal (fan-in) weights and zero biases for every Linear/Conv2d under ``module``.

    BatchNorm layers keep PyTorch's defaults (gamma=1, beta=0), which is what the
    paper's "BN gamma/beta" refers to.
    """
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity=nonlinearity)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _is_int(value: object) -> bool:
    """True for Python/NumPy integers but not bools (``True`` is not a layer size)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# Model options, checked by the one Spec every setting uses. Text is accepted because UI text
# boxes and CLI flags deliver it ("64,32", "2").
_SIZES = Spec(
    kind=tuple, item=int, minimum=1, from_text=True, example="(64, 32) or the string '64,32'"
)
_PAIR = Spec(
    kind=tuple,
    item=int,
    minimum=1,
    length=2,
    from_text=True,
    example="(8, 16) or the string '8,16'",
)
_POSITIVE = Spec(kind=int, minimum=1, from_text=True)
_ACTIVATION = Spec(kind=str, choices=tuple(_ACTIVATIONS))


def _option(model: str, option: str, spec: Spec, value: object) -> Any:
    return spec.parse(value, f"Option '{option}' of model '{model}'", ModelError)


def _parse_activation(model: str, value: object) -> str:
    key = value.strip().lower() if isinstance(value, str) else value
    return _option(model, "activation", _ACTIVATION, key)


def _image_shape(model: str, input_shape: tuple[int, ...], min_side: int) -> tuple[int, int, int]:
    """Return (C, H, W) or explain, in one sentence, why this model cannot take the input."""
    if len(input_shape) != 3:
        raise ModelError(
            f"Model '{model}' needs image-shaped input (C, H, W) but the dataset gives "
            f"{input_shape}; use 'mlp' for flat or tabular data."
        )
    c, h, w = input_shape
    if h < min_side or w < min_side:
        raise ModelError(
            f"Model '{model}' needs images at least {min_side}x{min_side} pixels but the "
            f"dataset gives {h}x{w}; use 'mlp' or 'resnet20' for tiny images."
        )
    return c, h, w


# --------------------------------------------------------------------------- models


class MLP(nn.Module):
    """Fully connected net: flatten -> (fc_i -> activation)* -> out.

    Submodules are registered as ``fc1``, ``fc2``, ..., ``out`` (in that order) so that
    parameter names read ``fc1.weight``, ``fc1.bias``, ..., ``out.weight``, ``out.bias``.
    A single parameter-free activation module ``act`` is shared (it has no state, so
    sharing it does not share parameters).
    """

    def __init__(
        self, in_features: int, hidden: Sequence[int], num_classes: int, activation: str = "relu"
    ) -> None:
        super().__init__()
        self.hidden_sizes = tuple(hidden)
        self.activation = activation
        width = in_features
        for i, h in enumerate(self.hidden_sizes, start=1):
            self.add_module(f"fc{i}", nn.Linear(width, h))
            width = h
        self.out = nn.Linear(width, num_classes)
        self.act = _ACTIVATIONS[activation]()
        _he_init(self, _INIT_NONLINEARITY[activation])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i in range(1, len(self.hidden_sizes) + 1):
            x = self.act(getattr(self, f"fc{i}")(x))
        return self.out(x)


class LeNet(nn.Module):
    """The LCA paper's LeNet variant: two 5x5 'same' convs with max-pooling, then a dense layer.

    conv1(5x5, c1, pad 2) -> ReLU -> maxpool2 -> conv2(5x5, c2, pad 2) -> ReLU -> maxpool2
    -> flatten -> fc1(hidden) -> ReLU -> out.

    'Same' padding is what reproduces the paper's 808,970 parameters on MNIST:
    conv1 1*20*25+20 = 520; conv2 20*40*25+40 = 20,040; 28->14->7 so flatten is
    40*7*7 = 1,960; fc1 1,960*400+400 = 784,400; out 400*10+10 = 4,010;
    total 808,970.  (With 'valid' convs it would be only 280,970.)
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        channels: tuple[int, int] = (20, 40),
        hidden: int = 400,
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        c1, c2 = channels
        self.conv1 = nn.Conv2d(c, c1, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=5, padding=2)
        flat = c2 * (h // 2 // 2) * (w // 2 // 2)
        self.fc1 = nn.Linear(flat, hidden)
        self.out = nn.Linear(hidden, num_classes)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        _he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        x = self.act(self.fc1(x.flatten(1)))
        return self.out(x)


class SmallCNN(nn.Module):
    """A fast classroom CNN: conv3x3 -> ReLU -> maxpool2 -> conv3x3 -> ReLU -> maxpool2 -> out.

    Convs use padding 1 so the spatial size only changes at the pools; the classifier
    sees the flattened c2 x H/4 x W/4 map (keeping where-in-the-image information, which
    matters on 8x8 digits).  On digits (1, 8, 8) with 10 classes and the default
    channels (8, 16): 80 + 1,168 + 650 = 1,898 parameters.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        channels: tuple[int, int] = (8, 16),
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        c1, c2 = channels
        self.conv1 = nn.Conv2d(c, c1, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, padding=1)
        self.out = nn.Linear(c2 * (h // 2 // 2) * (w // 2 // 2), num_classes)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        _he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        return self.out(x.flatten(1))


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU.

    The shortcut is the identity when shape is preserved and a 1x1 strided conv (with
    bias, without BN) when the stage changes width/resolution - the variant that matches
    the LCA paper's ResNet-20 parameter count (see :class:`ResNet20`).  Names:
    ``conv1``, ``bn1``, ``conv2``, ``bn2``, and ``shortcut`` (only when projecting).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride)
        else:
            self.shortcut = nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act(y + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20 (He et al., 2016) in the variant used by the LCA paper.

    Layout: conv1(3x3, w)-bn1-ReLU; layer1 = 3 blocks at w channels; layer2 = 3 blocks at
    2w (first block stride 2); layer3 = 3 blocks at 4w (first stride 2); global average
    pool; ``out`` linear.  Every conv has a bias, every 3x3 conv is followed by BatchNorm
    (gamma/beta), and the two down-sampling shortcuts are 1x1 convs with bias (no BN).

    Why this variant: the paper reports 273,066 parameters "with conv biases and BN
    gamma/beta".  On (3, 32, 32), 10 classes, w = 16:

    * option-A ResNet-20 without conv biases .......... 269,722
    * + biases of the 19 3x3 convs: 16 + 6*16 + 6*32 + 6*64 = 688
    * + 1x1 projection shortcuts 16->32, 32->64: weights 512 + 2,048 = 2,560,
      biases 32 + 64 = 96
    * total 269,722 + 688 + 2,560 + 96 = **273,066** (exact match).

    (Option B *with* BN on the projections and no conv biases gives the often-quoted
    272,474; adding all biases to that gives 273,258 - neither matches.)

    Global average pooling makes the net work for any image size, so no minimum size.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, width: int = 16):
        super().__init__()
        c = input_shape[0]
        self.conv1 = nn.Conv2d(c, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.act = nn.ReLU()
        self.layer1 = self._stage(width, width, stride=1)
        self.layer2 = self._stage(width, 2 * width, stride=2)
        self.layer3 = self._stage(2 * width, 4 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out = nn.Linear(4 * width, num_classes)
        _he_init(self)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            BasicBlock(in_channels, out_channels, stride),
            BasicBlock(out_channels, out_channels, 1),
            BasicBlock(out_channels, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.out(self.pool(x).flatten(1))


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class _Spec:
    description: str
    defaults: dict[str, Any]
    factory: Callable[[tuple[int, ...], int, dict[str, Any]], nn.Module]


def _build_mlp(shape: tuple[int, ...], k: int, opts: dict[str, Any]) -> nn.Module:
    hidden = _option("mlp", "hidden", _SIZES, opts["hidden"])
    activation = _parse_activation("mlp", opts["activation"])
    return MLP(math.prod(shape), hidden, k, activation)


def _build_fc_mnist(shape: tuple[int, ...], k: int, opts: dict[str, Any]) -> nn.Module:
    return MLP(math.prod(shape), (100, 50), k, "relu")


def _build_lenet(shape: tuple[int, ...], k: int, opts: dict[str, Any]) -> nn.Module:
    chw = _image_shape("lenet", shape, min_side=4)
    channels = _option("lenet", "channels", _PAIR, opts["channels"])
    hidden = _option("lenet", "hidden", _POSITIVE, opts["hidden"])
    return LeNet(chw, k, channels, hidden)


def _build_cnn_small(shape: tuple[int, ...], k: int, opts: dict[str, Any]) -> nn.Module:
    chw = _image_shape("cnn-small", shape, min_side=4)
    channels = _option("cnn-small", "channels", _PAIR, opts["channels"])
    return SmallCNN(chw, k, channels)


def _build_resnet20(shape: tuple[int, ...], k: int, opts: dict[str, Any]) -> nn.Module:
    chw = _image_shape("resnet20", shape, min_side=1)
    width = _option("resnet20", "width", _POSITIVE, opts["width"])
    return ResNet20(chw, k, width)


_REGISTRY: dict[str, _Spec] = {
    "mlp": _Spec(
        "Fully connected net on the flattened input; choose hidden sizes and activation.",
        {"hidden": (32, 32), "activation": "relu"},
        _build_mlp,
    ),
    "fc-mnist": _Spec(
        "The LCA paper's 784-100-50-10 ReLU net (84,060 parameters on MNIST).",
        {},
        _build_fc_mnist,
    ),
    "lenet": _Spec(
        "The LCA paper's LeNet: two 5x5 conv+pool layers and a 400-unit dense layer "
        "(808,970 parameters on MNIST).",
        {"channels": (20, 40), "hidden": 400},
        _build_lenet,
    ),
    "cnn-small": _Spec(
        "A tiny, fast CNN (two 3x3 conv+pool layers, about 1.9k parameters on digits).",
        {"channels": (8, 16)},
        _build_cnn_small,
    ),
    "resnet20": _Spec(
        "CIFAR ResNet-20 with BatchNorm, as in the LCA paper (273,066 parameters on CIFAR-10).",
        {"width": 16},
        _build_resnet20,
    ),
}


def _spec(name: object) -> _Spec:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ModelError(f"Unknown model {name!r}; choose one of {', '.join(names())}.")
    return _REGISTRY[name]


def names() -> list[str]:
    """All model names, sorted, for menus and validation."""
    return sorted(_REGISTRY)


def describe(name: str) -> str:
    """A one-line, student-facing description of model ``name``."""
    return _spec(name).description


def defaults(name: str) -> dict[str, Any]:
    """The options model ``name`` accepts, with their default values (a fresh copy)."""
    return dict(_spec(name).defaults)


def build(name: str, input_shape: tuple[int, ...], num_classes: int, **options: Any) -> nn.Module:
    """Build model ``name`` for per-example inputs of ``input_shape`` and ``num_classes``.

    The model is in train mode and float32; call ``.double()`` for float64.  Building
    is deterministic given the caller's ``torch.manual_seed`` (nothing is seeded here).
    Raises :class:`ModelError` for an unknown name, an unknown or invalid option, or an
    input shape the model cannot take (e.g. a CNN on tabular data).
    """
    spec = _spec(name)
    try:
        shape = tuple(int(d) for d in input_shape)
        ok_shape = len(shape) > 0 and all(d > 0 for d in shape)
    except (TypeError, ValueError):
        ok_shape = False
    if not ok_shape:
        raise ModelError(
            f"Input shape {input_shape!r} is not usable; it must be a non-empty tuple of "
            f"positive integers such as (64,) or (1, 28, 28)."
        )
    if not _is_int(num_classes) or num_classes < 1:
        raise ModelError(
            f"Number of classes {num_classes!r} is not usable; it must be a positive integer."
        )
    unknown = sorted(set(options) - set(spec.defaults))
    if unknown:
        if not spec.defaults:
            raise ModelError(f"Model '{name}' takes no options but got {unknown[0]!r}.")
        raise ModelError(
            f"Model '{name}' has no option {unknown[0]!r}; allowed options are: "
            f"{', '.join(sorted(spec.defaults))}."
        )
    return spec.factory(shape, int(num_classes), {**spec.defaults, **options})


def parameter_count(model: nn.Module) -> int:
    """Total number of parameter scalars (BatchNorm running stats are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())
