"""What each efficiency technique wrote in a run file, read into plain numpy data.

What a technique records is read from the file itself (series ``techniques/<name>/<field>``, one
value per segment; event tables; fixed arrays such as ``pruned_at/<param>``), so a technique is
recognised by what it wrote, and one this module does not know still shows its series.
``gather`` gives where each technique acted (what the Techniques page marks); works on live
and finished runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lca.store import Reader

__all__ = ["NO_TECHNIQUE", "RunTechniques", "gather", "no_technique_sentence", "technique_names"]


NO_TECHNIQUE = (
    "This run used no efficiency technique. Start one on the Train page (choose a technique "
    "such as prune-magnitude), or from a terminal: "
    "python -m lca train --technique prune-magnitude:sparsity=0.5 --out runs/pruned.h5"
)


def no_technique_sentence() -> str:
    """The one sentence shown for a run without techniques: how to start one."""
    return NO_TECHNIQUE


def _spec_names(spec: Any) -> list[str]:
    if spec is None:
        return []
    if isinstance(spec, str):
        return [spec.partition(":")[0]] if spec else []
    if isinstance(spec, dict):
        return [str(spec["name"])] if spec.get("name") else []
    if isinstance(spec, list | tuple):
        return [n for s in spec for n in _spec_names(s)]
    return []


def technique_names(r: Reader) -> list[str]:
    """Techniques of a run: the config's, then any that wrote under /techniques/ only."""
    names = _spec_names(r.config.get("techniques"))
    for path in [*r.series_layout, *r.event_layout, *r.array_layout]:
        parts = path.split("/")
        if len(parts) >= 3 and parts[0] == "techniques" and parts[1] not in names:
            names.append(parts[1])
    return names


def _spec(r: Reader, name: str) -> dict[str, Any]:
    for s in r.config.get("techniques") or []:
        if isinstance(s, dict) and s.get("name") == name:
            return s
    return {}


def _series(r: Reader, name: str, field_: str) -> np.ndarray | None:
    path = f"techniques/{name}/{field_}"
    if path not in r.series_layout:
        return None
    try:
        return np.asarray(r.series(path))
    except KeyError:
        return None


def _events(r: Reader, name: str, table: str) -> dict[str, np.ndarray] | None:
    path = f"techniques/{name}/{table}"
    if path not in r.event_layout:
        return None
    try:
        return r.events(path)
    except KeyError:
        return None


def _pruned_at(r: Reader, name: str) -> dict[str, np.ndarray]:
    """Tensor name -> step each weight was pruned (−1 never), for a pruning technique."""
    out = {}
    prefix = f"techniques/{name}/pruned_at/"
    for path in r.array_layout:
        if path.startswith(prefix):
            tensor = path[len(prefix) :].replace(":", ".")
            try:
                out[tensor] = np.asarray(r.array(path))
            except KeyError:
                continue
    return out


def _frozen_tensors(r: Reader, name: str) -> list[int]:
    spec = _spec(r, name)
    layers = spec.get("layers", ["out"])
    if isinstance(layers, str):
        layers = [p for p in layers.replace("|", "+").split("+") if p]
    chosen = []
    for i, n in enumerate(r.names):
        if any(n == p or n.startswith(str(p) + ".") for p in layers):
            chosen.append(i)
    return chosen


@dataclass
class RunTechniques:
    """Everything the Techniques page marks, as per-segment numpy arrays (T segments)."""

    names: list[str]
    loss: np.ndarray  # (T+1,)
    kind: np.ndarray  # (T,) 0 optimizer step, 1 intervention
    train_step: np.ndarray  # (T,)
    labels: np.ndarray  # (T,) str
    tensor_names: list[str]
    layer_lca: np.ndarray  # (T, L)
    skipping: dict[str, np.ndarray] = field(default_factory=dict)  # technique -> (T,) bool
    skip_rows: list[int] = field(default_factory=list)  # tensors skipping stops (weights)
    prune: dict[str, list[int]] = field(default_factory=dict)  # technique -> event segments
    prune_rows: dict[str, list[int]] = field(default_factory=dict)  # technique -> pruned tensors
    frozen: dict[str, tuple[list[int], np.ndarray]] = field(default_factory=dict)  # rows, (T,)
    scaler_skipped: np.ndarray | None = None  # (T,) bool: AMP steps the scaler skipped

    @property
    def segments(self) -> int:
        return len(self.kind)

    @property
    def skip_mask(self) -> np.ndarray:
        m = np.zeros(self.segments, dtype=bool)
        for v in self.skipping.values():
            m |= v
        return m

    def prune_marks(self) -> list[tuple[int, str]]:
        """(segment, technique) of every prune event, in time order."""
        return sorted((s, n) for n, segs in self.prune.items() for s in segs)

    def heatmap_prune_marks(self) -> list[tuple[int, list[int], str]]:
        """(segment, pruned tensor rows, technique) for the heatmap's crosses."""
        rows_all = list(range(len(self.tensor_names)))
        return sorted(
            (s, self.prune_rows.get(n) or rows_all, n)
            for n, segs in self.prune.items()
            for s in segs
        )

    def frozen_marks(self) -> list[tuple[list[int], np.ndarray]]:
        return list(self.frozen.values())


def gather(r: Reader) -> RunTechniques:
    """Read where every technique of run ``r`` acted (works on live and finished runs)."""
    t = r.num_steps
    names = technique_names(r)
    kind = np.asarray(r.steps("kind"))
    labels = np.asarray(r.steps("label"), dtype=object)
    out = RunTechniques(
        names=names,
        loss=np.asarray(r.steps("loss"), dtype=np.float64),
        kind=kind,
        train_step=np.asarray(r.steps("train_step")),
        labels=labels,
        tensor_names=list(r.names),
        layer_lca=np.asarray(r.layer_lca(), dtype=np.float64).reshape(t, len(r.names)),
    )
    weights = [i for i, n in enumerate(r.names) if len(r.shapes.get(n, ())) >= 2]
    for name in names:
        skipping = _series(r, name, "skipping")
        if skipping is not None and skipping.ndim == 1:
            out.skipping[name] = (skipping[:t] != 0) & (kind == 0)
            out.skip_rows = weights
        pruned_at = _pruned_at(r, name)
        if name.startswith("prune") or pruned_at:
            out.prune[name] = [int(i) for i in np.flatnonzero((kind == 1) & (labels == name))]
            out.prune_rows[name] = [r.names.index(n) for n in pruned_at if n in r.names]
        frozen = _series(r, name, "frozen")
        if frozen is not None and frozen.ndim == 1:
            out.frozen[name] = (_frozen_tensors(r, name), (frozen[:t] > 0) & (kind == 0))
        skipped = _series(r, name, "skipped")
        if skipped is not None and skipped.ndim == 1 and _series(r, name, "scale") is not None:
            m = (skipped[:t] != 0) & (kind == 0)
            out.scaler_skipped = m if out.scaler_skipped is None else out.scaler_skipped | m
    return out
