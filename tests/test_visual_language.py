"""One visual language: green only for helped, red only for hurt, robust heatmap colour ranges."""

from __future__ import annotations

import numpy as np

from lca import figures as F
from lca.figures.common import HELPED, HURT, robust_limit


def test_difference_chart_never_uses_helped_or_hurt_colours():
    """B − A < 0 (B lowered the loss more) is blue, > 0 orange: a layer that helped in both runs
    must not be painted red just because it helped less in B."""
    fig = F.compare_layer_difference(
        ["x", "y", "z"], np.array([-2.0, -1.0, 0.5]), np.array([-1.0, -3.0, 0.5]), "A", "B"
    )
    colors = list(fig.data[0].marker.color)
    assert colors[0] == F.B_LESS and colors[1] == F.B_MORE
    assert not {HELPED, HURT} & set(colors)
    assert "blue" in fig.layout.title.text and "orange" in fig.layout.title.text


def test_robust_limit_caps_one_outlier_and_names_it():
    z = np.linspace(-1.0, 1.0, 2001)
    z[1000] = -500.0  # one prune segment, 500× any ordinary step
    limit, largest = robust_limit(z)
    assert limit == np.percentile(np.abs(z), 99) and limit < 1.0
    assert largest == -500.0
    # Without an outlier the range is the plain largest |value| and nothing is said.
    assert robust_limit(np.array([-1.0, 0.5, 2.0])) == (2.0, None)
    assert robust_limit(np.zeros(3)) == (1.0, None)
    assert robust_limit(np.array([np.nan])) == (1.0, None)


def test_layer_heatmap_is_not_washed_out_by_an_outlier_segment():
    rng = np.random.default_rng(0)
    a = rng.normal(scale=1e-3, size=(400, 3))
    a[200, 1] = 0.5  # the outlier
    fig = F.layer_step_heatmap(a, ["a", "b", "c"], clickable=False)
    heat = fig.data[0]
    assert heat.zmax < 0.05 and heat.zmin == -heat.zmax  # ordinary steps keep their colour
    assert "+5.00e-01" in heat.colorbar.title.text  # the outlier's value is stated
    assert np.asarray(heat.z).max() == 0.5  # and kept in the data (hover reads it)
    plain = F.lca_heatmap(np.array([[1.0, -2.0]]))
    assert plain.data[0].zmax == 2.0 and plain.data[0].colorbar.title.text == "LCA"


def test_long_titles_wrap_to_fit_a_projector():
    """Plotly never wraps a title; a long one ran past a 1024-px screen's chart edge."""
    from lca.figures.common import TITLE_CHARS, wrap_title

    text, lines = wrap_title(
        "Shared peak steps: 10.0% vs 5.3% ± 4.1% by chance (z = 1.1, p = 0.219)"
    )
    assert lines == 2 and all(len(line) <= TITLE_CHARS for line in text.split("<br>"))
    assert "z = 1.1" in text  # never broken inside "z = …"
    assert wrap_title("Short") == ("Short", 1)
    fig = F.loss_conservation(np.array([2.0, 1.0]), np.array([-1.0]))
    assert fig.layout.title.text.count("<br>") == 1
    assert (
        fig.layout.margin.t
        > F.loss_conservation(np.array([2.0, 1.0]), np.array([-1.0]), title="Loss").layout.margin.t
    )
