"""Shared fixtures: small real runs made by the real training loop, cached per test session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lca.config import RunConfig


@pytest.fixture(scope="session")
def run_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs-cache")


@pytest.fixture(scope="session")
def make_run(run_cache):
    """make_run(name="x.h5", folder=None, **config) -> path of a finished run file.

    Runs are made once per session per (config, name) and copied into ``folder`` if given.
    Defaults: digits, mlp with hidden (16,), 30 steps, measurement set of 300, record full.
    """
    import shutil

    from lca.train import run

    made: dict[str, Path] = {}

    def factory(name: str = "run.h5", folder: Path | None = None, **overrides) -> Path:
        values = {
            "dataset": "digits",
            "model": "mlp",
            "model_options": {"hidden": [16]},
            "steps": 30,
            "measure_size": 300,
            "eval_every": 10,
            "record": "full",
            "device": "cpu",
            **overrides,
        }
        key = json.dumps(values, sort_keys=True, default=str) + name
        if key not in made:
            path = run_cache / f"{len(made)}-{name}"
            run(RunConfig.from_dict(values), out=path)
            made[key] = path
        if folder is None:
            return made[key]
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        shutil.copy(made[key], target)
        return target

    return factory


@pytest.fixture
def runs_folder(tmp_path, monkeypatch) -> Path:
    """An empty runs folder the app and lca.runs use (via LCA_RUNS_DIR)."""
    folder = tmp_path / "runs"
    folder.mkdir()
    monkeypatch.setenv("LCA_RUNS_DIR", str(folder))
    return folder
