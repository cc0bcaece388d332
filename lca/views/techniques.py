"""Everything the Techniques page draws, read from a run file in one go (``technique_view``).

Built from ``records`` (where each technique acted), ``prune`` (what pruning cost and removed)
and ``summaries`` (what each technique did and saved, worded for a table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lca.store import Reader

from .prune import PruneEvent, PruneSplit, prune_events, prune_split
from .records import RunTechniques, gather
from .summaries import technique_summaries

__all__ = ["TechniqueView", "technique_view"]


@dataclass
class TechniqueView:
    """Everything the Techniques page draws except per-weight histories (``pruned_history``)."""

    data: RunTechniques
    summaries: list[dict[str, str]]  # ``technique_summaries``: computed from the file
    reported: dict[str, dict[str, Any]]  # what each technique reported when the run ended
    events: dict[str, list[PruneEvent]]  # pruning technique -> its prune events
    splits: dict[tuple[str, int], PruneSplit]  # (technique, segment) -> the event's split
    series: dict[str, dict[str, np.ndarray]]  # technique -> field -> its per-segment series
    layer_events: dict[str, dict[str, np.ndarray]]  # pruning technique -> per-layer event rows
    bits: dict[str, np.ndarray]  # quantizing technique -> bits per tensor
    record: str
    status: str
    shapes: dict[str, tuple[int, ...]]


def technique_view(r: Reader) -> TechniqueView:
    """Read where every technique of run ``r`` acted, what it cost and what it recorded."""
    data = gather(r)
    events = {n: prune_events(r, n, data) for n in data.prune}
    series = {}
    for name in data.names:
        prefix = f"techniques/{name}/"
        series[name] = {
            p[len(prefix) :]: np.asarray(r.series(p))
            for p in r.series_layout
            if p.startswith(prefix)
        }
    return TechniqueView(
        data=data,
        summaries=technique_summaries(r, data),
        reported=r.technique_summaries(),
        events=events,
        splits={
            (e.technique, e.segment): prune_split(r, e) for evs in events.values() for e in evs
        },
        series=series,
        layer_events={
            n: r.events(f"techniques/{n}/events")
            for n in data.prune
            if f"techniques/{n}/events" in r.event_layout
        },
        bits={
            n: np.asarray(r.array(f"techniques/{n}/bits"), dtype=np.float64)
            for n in data.names
            if f"techniques/{n}/bits" in r.array_layout
        },
        record=r.record,
        status=r.status,
        shapes=dict(r.shapes),
    )
