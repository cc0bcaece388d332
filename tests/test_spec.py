"""One definition per setting: lca.spec.Spec checks every value with one sentence, and the CLI
flags of ``python -m lca train`` are built from RunConfig's field Specs."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

import data
import techniques
from lca import cli, models
from lca.config import ConfigError, RunConfig
from lca.spec import Spec, SpecError, setting


@pytest.mark.parametrize(
    ("spec", "value", "message"),
    [
        (Spec(kind=float, above=0), 0.0, "x must be greater than 0, not 0.0."),
        (Spec(kind=float, above=0), True, "x must be a finite number, not True."),
        (Spec(kind=float), float("nan"), "x must be a finite number, not nan."),
        (Spec(kind=float), "0.5", "x must be a finite number, not '0.5'."),
        (Spec(kind=float, minimum=0, below=1), 1.0, "x must be less than 1, not 1.0."),
        (Spec(kind=float, minimum=0), -2.0, "x must be 0 or more, not -2.0."),
        (Spec(kind=int, minimum=1), 0, "x must be a positive integer, not 0."),
        (Spec(kind=int, minimum=1), 2.0, "x must be a positive integer, not 2.0."),
        (Spec(kind=int, minimum=0), -1, "x must be a non-negative integer, not -1."),
        (Spec(kind=int, minimum=2, maximum=9), 10, "x must be at most 9, not 10."),
        (Spec(kind=str, choices=("a", "b")), "c", "x = 'c' is not allowed; choose one of: a, b."),
        (Spec(kind=int, choices=(0, 1)), True, "x = True is not allowed; choose one of: 0, 1."),
        (Spec(kind=dict), [1], "x must be a table of key = value, not [1]."),
        (
            Spec(kind=int, minimum=1, keywords=("auto",)),
            "x",
            "x must be auto or a positive integer, not 'x'.",
        ),
        (
            Spec(kind=tuple, item=int, minimum=1, length=2, from_text=True),
            "8",
            "x must be exactly two positive integers, not '8'.",
        ),
    ],
)
def test_a_bad_value_is_one_sentence(spec: Spec, value: object, message: str) -> None:
    with pytest.raises(SpecError) as info:
        spec.parse(value, "x")
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("spec", "text", "value"),
    [
        (Spec(kind=float, from_text=True), " 0.25", 0.25),
        (Spec(kind=int, from_text=True), "3", 3),
        (Spec(kind=int, from_text=True), 3.0, 3),
        (Spec(kind=bool, from_text=True), "yes", True),
        (Spec(kind=bool, from_text=True), "0", False),
        (Spec(kind=list, from_text=True), "fc1+out", ["fc1", "out"]),
        (Spec(kind=list, from_text=True), "fc1|out", ["fc1", "out"]),
        (Spec(kind=tuple, item=int, minimum=1, from_text=True), "(64, 32)", (64, 32)),
        (Spec(kind=tuple, item=int, minimum=1), 64, (64,)),
        (Spec(kind=int, minimum=1, keywords=("auto",)), "Auto", "auto"),
        (Spec(kind=int, optional=True), None, None),
    ],
)
def test_text_from_the_cli_and_the_form_is_converted(spec: Spec, text: object, value) -> None:
    assert spec.parse(text) == value


def test_the_same_spec_checks_config_techniques_data_and_models() -> None:
    with pytest.raises(ConfigError, match=r"^steps must be a positive integer, not 0\.$"):
        RunConfig(steps=0)
    assert isinstance(techniques.get("prune-magnitude").options["sparsity"], Spec)
    with pytest.raises(techniques.TechniqueError) as info:
        techniques.create({"name": "prune-magnitude", "sparsity": "2"})  # text, as from the CLI
    assert str(info.value) == (
        "option 'sparsity' of technique 'prune-magnitude' must be at most 0.99, not 2.0."
    )
    with pytest.raises(data.DataError, match=r"^Option 'n' must be at least 2, not 1\.$"):
        data.load("gauss", n=1)
    with pytest.raises(
        models.ModelError,
        match="^Option 'width' of model 'resnet20' must be a "
        r"positive integer, not 0\.$",
    ):
        models.build("resnet20", (3, 8, 8), 10, width=0)


def test_defaults_come_from_the_one_definition() -> None:
    config = RunConfig()
    for name, spec in RunConfig.specs().items():
        assert getattr(config, name) == spec.default, name
    assert RunConfig().techniques is not RunConfig().techniques  # no shared mutable default


def _train_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli._train_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["train", *argv])


def _other_value(spec: Spec):
    """A valid value other than the default, typed as on the command line."""
    allowed = spec.allowed()
    if allowed:
        return next(v for v in allowed if v != spec.default)
    if spec.kind is int:  # e.g. 7 steps more; 3 where the default is a word ("auto")
        return 3 if spec.default in spec.keywords else (spec.default or 0) + 7
    if spec.kind is float:
        return spec.default / 2
    if spec.kind is str:
        return "somewhere"
    raise AssertionError(spec)


def test_every_config_field_is_a_flag_that_sets_it() -> None:
    specs = RunConfig.specs()
    # Stanza's fields refuse pack, techniques and most models: set on their own below.
    parallel = ("stanza", "staleness", "data_parallel")
    scalar = {n: s for n, s in specs.items() if s.kind in (int, float, str) and n not in parallel}
    assert {"lr", "steps", "measure_size", "method", "dataset", "data_dir", "out"} <= set(scalar)
    stanza = cli.build_config(_train_args("--model", "lenet", "--stanza", "3", "--staleness", "2"))
    assert (stanza.stanza, stanza.staleness) == (3, 2)
    parallel_dp = cli.build_config(_train_args("--model", "lenet", "--data-parallel", "4"))
    assert parallel_dp.data_parallel == 4
    argv, expected = [], {}
    for name, spec in scalar.items():
        expected[name] = _other_value(spec)
        argv += ["--" + name.replace("_", "-"), str(expected[name])]
    config = cli.build_config(
        _train_args(
            *argv, "--save-weights", "--model-option", "hidden=[3]", "--technique", "freeze:start=2"
        )
    )
    for name, value in expected.items():
        assert getattr(config, name) == value, name
    assert config.save_weights is True and config.model_options == {"hidden": [3]}
    assert config.techniques == [{"name": "freeze", "start": "2"}]


def test_zero_means_all_for_the_counted_fields() -> None:
    config = cli.build_config(_train_args("--measure-size", "0", "--subset", "0"))
    assert config.measure_size is None and config.subset is None
    assert cli.build_config(_train_args()).to_dict() == RunConfig().to_dict()


def test_a_new_field_is_one_line() -> None:
    """A dataclass field made by ``setting`` is a flag, a default and a check, nothing more."""

    @dataclasses.dataclass
    class Mini:
        warmup: int = setting(5, int, "steps before anything happens", minimum=0)

    spec = Mini.__dataclass_fields__["warmup"].metadata["spec"]
    parser = argparse.ArgumentParser()
    cli._add_config_flag(parser, "warmup", spec)
    assert parser.parse_args(["--warmup", "3"]).warmup == 3
    assert "steps before anything happens" in parser.format_help()
    assert Mini().warmup == 5
    with pytest.raises(SpecError, match="warmup must be a non-negative integer, not -1."):
        spec.parse(-1, "warmup")
