"""The run's CPU thread count (``threads``) and the per-parameter error option (``error_every``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch

from lca import cli, threads
from lca.config import ConfigError, RunConfig


def test_available_cores_follow_the_affinity() -> None:
    cores = threads.available_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        assert cores == min(os.cpu_count() or 1, len(os.sched_getaffinity(0)))


def test_auto_shares_the_cores_among_running_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [threads.auto_threads(n) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # an explicit OpenMP setting caps it
    assert [threads.auto_threads(n) for n in (1, 2, 4)] == [3, 1, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "many")  # not a number: ignored
    assert threads.auto_threads(2) == 4
    assert threads.resolve(5) == 5


def test_no_app_jobs_without_a_registry_and_nothing_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "runs"
    monkeypatch.setenv("LCA_RUNS_DIR", str(folder))
    assert threads.app_jobs_running() == 1
    assert not folder.exists()


def test_config_threads_apply_while_training_and_are_restored() -> None:
    seen = []

    @threads.using_config_threads
    def train(config: RunConfig) -> str:
        seen.append(torch.get_num_threads())
        return "done"

    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    assert train(RunConfig(threads=target)) == "done"
    assert seen == [target] and torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("threads", 0),
        ("threads", "many"),
        ("threads", True),
        ("error_every", -1),
        ("error_every", 1.5),
    ],
)
def test_bad_values_are_one_sentence(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field) as excinfo:
        RunConfig(**{field: value})
    assert "\n" not in str(excinfo.value)


def test_cli_flags() -> None:
    parser = argparse.ArgumentParser()
    cli._train_parser(parser.add_subparsers())
    config = cli.build_config(parser.parse_args(["train", "--threads", "1", "--error-every", "4"]))
    assert (config.threads, config.error_every) == (1, 4)
    config = cli.build_config(parser.parse_args(["train", "--threads", "auto"]))
    assert (config.threads, config.error_every) == ("auto", 0)
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--threads", "two"])


def test_a_capped_block_bounds_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with threads.capped(2):
        assert threads.auto_threads(1) == 2
        with threads.capped(1):
            assert threads.auto_threads(1) == 1
        assert threads.auto_threads(1) == 2
    assert threads.auto_threads(1) == 8
