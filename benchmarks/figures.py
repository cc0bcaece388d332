"""Time to build each page's figures, with plotly_white assigned cheaply and the plotly way.

Every LCA figure goes through ``lca.figures.common.base_layout``, which gives it the
"plotly_white" template. ``update_layout(template="plotly_white")`` validates a deep copy of
the whole template for every figure; ``white_template`` assigns the already-validated template
the way plotly assigns its default one. This prints, for a set of figures of a mid-sized run
(2,000 steps, 12 tensors, 64 units), the median CPU milliseconds of this process (steady on a
shared, loaded machine, unlike wall time) to build one figure and turn it into the JSON the
browser gets, both ways, and checks the two JSONs are the same.

    python benchmarks/figures.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import plotly.graph_objects as go  # noqa: E402

from lca import figures as F  # noqa: E402
from lca.figures import common  # noqa: E402


def cases() -> dict[str, Callable[[], go.Figure]]:
    rng = np.random.default_rng(0)
    t, nl, units = 2000, 12, 64
    kind = np.zeros(t, dtype=np.int8)
    kind[999] = 1
    loss = 2.3 * np.exp(-np.arange(t + 1) / 400) + 0.1
    lca = np.diff(loss)
    layer = rng.normal(size=(t, nl)) * 1e-3
    names = [f"layer{i}.weight" for i in range(nl)]
    helped = rng.uniform(0.4, 0.6, t)
    error = rng.normal(size=t) * 1e-6
    unit = rng.normal(size=(t, units))
    values = rng.normal(size=200_000)
    return {
        "loss_conservation": lambda: F.loss_conservation(loss, lca, kind=kind),
        "step_error": lambda: F.step_error(error, kind=kind),
        "helped_fractions": lambda: F.helped_fractions(helped, 1 - helped, kind=kind),
        "layer_totals": lambda: F.layer_totals(names, layer.sum(0)),
        "layer_step_heatmap": lambda: F.layer_step_heatmap(layer, names, kind=kind),
        "cumulative_layers": lambda: F.cumulative_layers(np.cumsum(layer, 0), names, kind=kind),
        "unit_heatmap": lambda: F.unit_heatmap(unit),
        "lca_histogram": lambda: F.lca_histogram(values),
        "param_trace": lambda: F.param_trace(layer[:, 0]),
        "compare_layers": lambda: F.compare_layers(names, {"a": layer.sum(0), "b": -layer.sum(0)}),
        "technique_loss_figure": lambda: F.technique_loss_figure(loss, skip_bands=[(100, 300)]),
        "empty_figure": lambda: F.empty_figure("Nothing yet."),
    }


def median_ms(build: Callable[[], go.Figure], repeats: int) -> tuple[float, str]:
    build().to_json()  # warm
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        spec = build().to_json()
        times.append(time.process_time() - t0)
    return 1000 * statistics.median(times), spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    cheap = common.white_template

    def named(fig: go.Figure) -> go.Figure:
        return fig.update_layout(template="plotly_white")

    print("CPU ms per figure (build + JSON), median")
    print(f"{'figure':<24}{'cheap template':>16}{'named template':>16}{'same JSON':>11}")
    totals = [0.0, 0.0]
    for name, build in cases().items():
        common.white_template = cheap
        fast, spec_fast = median_ms(build, args.repeats)
        common.white_template = named
        slow, spec_slow = median_ms(build, args.repeats)
        common.white_template = cheap
        totals[0] += fast
        totals[1] += slow
        same = json.loads(spec_fast) == json.loads(spec_slow)
        print(f"{name:<24}{fast:>13.1f} ms{slow:>13.1f} ms{str(same):>11}")
    print(f"{'all of them':<24}{totals[0]:>13.1f} ms{totals[1]:>13.1f} ms")


if __name__ == "__main__":
    main()
