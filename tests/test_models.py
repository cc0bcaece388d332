"""Tests for the model zoo (lca.models).

The zoo's contract matters downstream: LCA is aggregated per unit using parameter
names and standard weight layouts, and it is computed through
``torch.func.functional_call`` (often in float64).  These tests pin that contract and
the paper's parameter counts.  Everything runs on tiny batches in a few seconds.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lca import models
from lca.models import ModelError

IMAGE_MODELS = ["cnn-small", "lenet", "resnet20"]
FLAT_MODELS = ["fc-mnist", "mlp"]
SHAPES = [(2,), (64,), (1, 8, 8), (1, 28, 28), (3, 32, 32)]


def _cases() -> list[tuple[str, tuple[int, ...]]]:
    """(model, shape) pairs the model accepts: flat models take all, CNNs only images."""
    cases = []
    for name in models.names():
        for shape in SHAPES:
            if name in IMAGE_MODELS and len(shape) != 3:
                continue
            cases.append((name, shape))
    return cases


def _small_options(name: str) -> dict[str, object]:
    """Options that keep the heavy models quick where the count is not under test."""
    return {"resnet20": {"width": 4}, "lenet": {"channels": (4, 8), "hidden": 16}}.get(name, {})


def _build(name: str, shape: tuple[int, ...], k: int = 3, seed: int = 0, **opts) -> nn.Module:
    torch.manual_seed(seed)
    return models.build(name, shape, k, **opts)


# --------------------------------------------------------------------------- registry


def test_names_sorted_and_complete() -> None:
    assert models.names() == sorted(["mlp", "fc-mnist", "lenet", "cnn-small", "resnet20"])


@pytest.mark.parametrize("name", models.names())
def test_describe_is_one_line(name: str) -> None:
    text = models.describe(name)
    assert text and "\n" not in text


def test_defaults_are_copies() -> None:
    d = models.defaults("mlp")
    assert d == {"hidden": (32, 32), "activation": "relu"}
    d["hidden"] = (1,)
    assert models.defaults("mlp")["hidden"] == (32, 32)


# --------------------------------------------------------------------------- shapes/forward


@pytest.mark.parametrize(("name", "shape"), _cases())
def test_output_shape(name: str, shape: tuple[int, ...]) -> None:
    model = _build(name, shape, k=7, **_small_options(name))
    out = model(torch.randn(5, *shape))
    assert out.shape == (5, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", IMAGE_MODELS)
@pytest.mark.parametrize("shape", [(2,), (64,), (13,), (28, 28)])
def test_image_models_refuse_non_image_input(name: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(ModelError) as info:
        models.build(name, shape, 10)
    msg = str(info.value)
    assert "\n" not in msg
    assert "(C, H, W)" in msg and "mlp" in msg and str(shape) in msg


@pytest.mark.parametrize("name", ["lenet", "cnn-small"])
def test_pooling_models_refuse_too_small_images(name: str) -> None:
    with pytest.raises(ModelError, match="at least 4x4"):
        models.build(name, (1, 3, 3), 2)
    assert models.build(name, (1, 4, 4), 2)(torch.randn(2, 1, 4, 4)).shape == (2, 2)


def test_odd_image_sizes_work() -> None:
    for name in IMAGE_MODELS:
        model = _build(name, (3, 13, 9), k=4, **_small_options(name))
        assert model(torch.randn(2, 3, 13, 9)).shape == (2, 4)


# --------------------------------------------------------------------------- counts


def test_fc_mnist_count() -> None:
    model = _build("fc-mnist", (1, 28, 28), k=10)
    assert models.parameter_count(model) == 84_060


def test_lenet_count() -> None:
    model = _build("lenet", (1, 28, 28), k=10)
    assert models.parameter_count(model) == 808_970


def test_resnet20_count() -> None:
    model = _build("resnet20", (3, 32, 32), k=10)
    assert models.parameter_count(model) == 273_066
    # 9 blocks x 2 BN + stem BN; two 1x1 projection shortcuts, no BN on them.
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(bns) == 19
    assert len(convs) == 21 and all(c.bias is not None for c in convs)
    assert sum(c.kernel_size == (1, 1) for c in convs) == 2


def test_cnn_small_is_small_on_digits() -> None:
    model = _build("cnn-small", (1, 8, 8), k=10)
    assert models.parameter_count(model) == 1_898


def test_parameter_count_ignores_buffers() -> None:
    model = _build("resnet20", (3, 8, 8), width=2)
    n_params = sum(p.numel() for p in model.parameters())
    assert models.parameter_count(model) == n_params
    assert sum(b.numel() for b in model.buffers()) > 0


# --------------------------------------------------------------------------- names/structure


def test_mlp_parameter_names_are_stable() -> None:
    model = _build("mlp", (2,), k=3, hidden=(4, 3))
    assert [n for n, _ in model.named_parameters()] == [
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
        "out.weight",
        "out.bias",
    ]
    assert model.fc1.weight.shape == (4, 2)
    assert model.fc2.weight.shape == (3, 4)
    assert model.out.weight.shape == (3, 3)


def test_fc_mnist_and_cnn_names() -> None:
    fc = _build("fc-mnist", (1, 28, 28), k=10)
    assert [n for n, _ in fc.named_parameters()] == [
        f"{layer}.{kind}" for layer in ("fc1", "fc2", "out") for kind in ("weight", "bias")
    ]
    cnn = _build("cnn-small", (1, 8, 8), k=10)
    assert [n for n, _ in cnn.named_parameters()] == [
        f"{layer}.{kind}" for layer in ("conv1", "conv2", "out") for kind in ("weight", "bias")
    ]
    lenet = _build("lenet", (1, 8, 8), k=10)
    assert [n for n, _ in lenet.named_parameters()] == [
        f"{layer}.{kind}"
        for layer in ("conv1", "conv2", "fc1", "out")
        for kind in ("weight", "bias")
    ]


def test_resnet_names() -> None:
    names = [n for n, _ in _build("resnet20", (3, 8, 8), width=2).named_parameters()]
    assert names[:4] == ["conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias"]
    assert "layer1.0.conv1.weight" in names and "layer3.2.bn2.bias" in names
    assert "layer2.0.shortcut.weight" in names and "layer3.0.shortcut.bias" in names
    assert "layer1.0.shortcut.weight" not in names
    assert names[-2:] == ["out.weight", "out.bias"]


@pytest.mark.parametrize(("name", "shape"), _cases())
def test_only_standard_layers_own_parameters(name: str, shape: tuple[int, ...]) -> None:
    """Per-unit LCA assumes weights live in Linear/Conv2d/BatchNorm2d with standard shapes."""
    model = _build(name, shape, **_small_options(name))
    owned = 0
    for module in model.modules():
        direct = list(module.parameters(recurse=False))
        if not direct:
            continue
        assert isinstance(module, (nn.Linear, nn.Conv2d, nn.BatchNorm2d))
        if isinstance(module, nn.Linear):
            assert module.weight.shape == (module.out_features, module.in_features)
        if isinstance(module, nn.Conv2d):
            assert module.weight.shape[:2] == (module.out_channels, module.in_channels)
        owned += sum(p.numel() for p in direct)
    assert owned == models.parameter_count(model)
    # No parameter is shared between two names.
    ptrs = [p.data_ptr() for p in model.parameters()]
    assert len(ptrs) == len(set(ptrs)) == len(list(model.named_parameters()))


def test_no_inplace_activations() -> None:
    for name, shape in _cases():
        model = _build(name, shape, **_small_options(name))
        for m in model.modules():
            assert not getattr(m, "inplace", False), (name, m)


# --------------------------------------------------------------------------- init


def test_init_is_deterministic_given_caller_seed() -> None:
    for name, shape in [("mlp", (2,)), ("lenet", (1, 8, 8)), ("resnet20", (3, 8, 8))]:
        opts = _small_options(name)
        a = _build(name, shape, seed=5, **opts).state_dict()
        b = _build(name, shape, seed=5, **opts).state_dict()
        c = _build(name, shape, seed=6, **opts).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert any(not torch.equal(a[k], c[k]) for k in a)


def test_he_normal_weights_and_zero_biases() -> None:
    model = _build("fc-mnist", (1, 28, 28), k=10)
    w = model.fc1.weight
    expected = (2.0 / 784) ** 0.5
    assert abs(w.std().item() / expected - 1) < 0.03
    assert abs(w.mean().item()) < 0.01 * expected * 10
    for name, shape in _cases():
        m = _build(name, shape, **_small_options(name))
        for mod in m.modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d)) and mod.bias is not None:
                assert torch.count_nonzero(mod.bias) == 0
            if isinstance(mod, nn.BatchNorm2d):
                assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0)


def test_conv_init_uses_fan_in() -> None:
    model = _build("lenet", (1, 28, 28), k=10)
    w = model.conv2.weight  # fan_in = 20 * 5 * 5
    assert abs(w.std().item() / (2.0 / 500) ** 0.5 - 1) < 0.05


# --------------------------------------------------------------------------- training


def _sgd_cases() -> list:
    """Every case and two activations; ResNet-20's SGD steps take seconds each, so its cases are
    marked slow."""
    cases = [*_cases(), ("mlp-tanh", (2,)), ("mlp-gelu", (64,))]
    return [
        pytest.param(n, s, marks=pytest.mark.slow) if n == "resnet20" else (n, s) for n, s in cases
    ]


@pytest.mark.parametrize(("name", "shape"), _sgd_cases())
def test_sgd_changes_parameters_and_lowers_loss(name: str, shape: tuple[int, ...]) -> None:
    opts: dict[str, object] = dict(_small_options(name))
    if name.startswith("mlp-"):
        opts["activation"] = name.split("-")[1]
        name = "mlp"
    model = _build(name, shape, k=3, seed=1, **opts)
    torch.manual_seed(2)
    x = torch.randn(12, *shape)
    y = torch.arange(12) % 3
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def loss_now() -> torch.Tensor:
        return nn.functional.cross_entropy(model(x), y)

    first = loss_now()
    opt.zero_grad()
    first.backward()
    opt.step()
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert changed, "one SGD step changed no parameter"
    assert any(n.startswith("out.") for n in changed)
    for _ in range(9):
        opt.zero_grad()
        loss = loss_now()
        loss.backward()
        opt.step()
    assert loss_now().item() < first.item()


# --------------------------------------------------------------------------- functional / dtype


@pytest.mark.parametrize(("name", "shape"), _cases())
def test_functional_call_matches_module(name: str, shape: tuple[int, ...]) -> None:
    model = _build(name, shape, **_small_options(name))
    x = torch.randn(4, *shape)
    for train in (True, False):
        model.train(train)
        state = dict(model.named_parameters()) | dict(model.named_buffers())
        got = torch.func.functional_call(model, state, (x,))
        torch.testing.assert_close(got, model(x), rtol=0, atol=0)


def test_functional_call_with_replaced_params_uses_them() -> None:
    model = _build("mlp", (2,), hidden=(4,))
    params = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    out = torch.func.functional_call(model, params, (torch.randn(3, 2),))
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize(("name", "shape"), _cases())
def test_float64_forward(name: str, shape: tuple[int, ...]) -> None:
    model = _build(name, shape, **_small_options(name)).double()
    out = model(torch.randn(3, *shape, dtype=torch.float64))
    assert out.dtype == torch.float64 and out.shape == (3, 3)
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    out_f = torch.func.functional_call(model, params, (torch.randn(3, *shape).double(),))
    assert out_f.dtype == torch.float64


# --------------------------------------------------------------------------- options/errors


def test_mlp_hidden_forms() -> None:
    assert _build("mlp", (2,), hidden="64,32").fc2.weight.shape == (32, 64)
    assert _build("mlp", (2,), hidden=" 5 ").fc1.weight.shape == (5, 2)
    assert _build("mlp", (2,), hidden=[6]).fc1.weight.shape == (6, 2)
    assert _build("mlp", (2,), hidden=7).fc1.weight.shape == (7, 2)
    linear = _build("mlp", (2,), hidden=())
    assert [n for n, _ in linear.named_parameters()] == ["out.weight", "out.bias"]
    default = _build("mlp", (1, 8, 8), k=10)
    assert default.fc1.weight.shape == (32, 64) and default.fc2.weight.shape == (32, 32)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "gelu", "TanH"])
def test_mlp_activations(activation: str) -> None:
    model = _build("mlp", (2,), activation=activation)
    assert model(torch.randn(2, 2)).shape == (2, 3)


def test_option_values_adapt() -> None:
    assert _build("cnn-small", (1, 8, 8), channels="4,6").conv2.weight.shape == (6, 4, 3, 3)
    assert _build("lenet", (1, 8, 8), channels=(2, 3), hidden=5).fc1.weight.shape == (5, 12)
    tiny = _build("resnet20", (3, 8, 8), width="2")
    assert tiny.out.weight.shape == (3, 8)


def _one_line_error(name: str, shape: tuple[int, ...] = (1, 8, 8), **opts) -> str:
    with pytest.raises(ModelError) as info:
        models.build(name, shape, 3, **opts)
    msg = str(info.value)
    assert "\n" not in msg and msg.endswith(".")
    return msg


def test_unknown_model_lists_allowed_names() -> None:
    msg = _one_line_error("vgg16")
    assert "'vgg16'" in msg
    for name in models.names():
        assert name in msg
    with pytest.raises(ModelError):
        models.describe("vgg16")
    with pytest.raises(ModelError):
        models.defaults("vgg16")
    assert issubclass(ModelError, ValueError)


@pytest.mark.parametrize(
    ("name", "opts", "must_mention"),
    [
        ("mlp", {"width": 3}, ["'width'", "activation", "hidden"]),
        ("mlp", {"activation": "swish"}, ["'swish'", "relu", "tanh", "sigmoid", "gelu"]),
        ("mlp", {"hidden": "a,b"}, ["'a,b'", "positive integers"]),
        ("mlp", {"hidden": [4, 0]}, ["[4, 0]", "positive integers"]),
        ("mlp", {"hidden": [4, True]}, ["positive integers"]),
        ("mlp", {"hidden": 2.5}, ["2.5", "positive integers"]),
        ("fc-mnist", {"hidden": (3,)}, ["'fc-mnist'", "no options", "'hidden'"]),
        ("cnn-small", {"channels": (8,)}, ["(8,)", "exactly two"]),
        ("lenet", {"hidden": -1}, ["-1", "positive integer"]),
        ("resnet20", {"width": 0}, ["'width'", "positive integer"]),
        ("resnet20", {"depth": 32}, ["'depth'", "width"]),
    ],
)
def test_bad_options(name: str, opts: dict[str, object], must_mention: list[str]) -> None:
    msg = _one_line_error(name, **opts)
    for part in must_mention:
        assert part in msg, (part, msg)


def test_bad_shape_and_class_count() -> None:
    for shape in [(), (0,), (2, -1), "abc"]:
        _one_line_error("mlp", shape)  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="positive integer"):
        models.build("mlp", (2,), 0)
    # torch.Size and lists are fine as shapes.
    assert models.build("mlp", torch.Size([1, 8, 8]), 2)(torch.randn(1, 1, 8, 8)).shape == (1, 2)
