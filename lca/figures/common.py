"""Colours and building blocks shared by every LCA figure.

One diverging scale for every view: helped (LCA < 0) green, hurt (LCA > 0) red, 0 white,
always centred at 0 so a pale cell means "little" whatever the run.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

__all__ = [
    "DIVERGING",
    "HELPED",
    "HURT",
    "NOT_HELPED",
    "NEUTRAL",
    "STILL",
    "base_layout",
    "block_heatmap",
    "empty_figure",
    "lca_heatmap",
    "robust_limit",
    "robust_colorbar_title",
    "series_color",
    "sign_colors",
    "white_template",
    "wrap_title",
]

HELPED = "#1a9850"  # green: the parameter lowered the loss
HURT = "#d73027"  # red: the parameter raised the loss
NEUTRAL = "#f7f7f7"
STILL = "#9e9e9e"  # did not move
NOT_HELPED = "#c6c6c6"  # "did not help", where hurt and did-not-move are not told apart
DIVERGING = [
    [0.0, HELPED],
    [0.25, "#91cf60"],
    [0.5, NEUTRAL],
    [0.75, "#fc8d59"],
    [1.0, HURT],
]

# Lines and bars that name layers or runs: no green and no red, which mean helped and hurt.
# A layer's colour comes from its place in the model, so it is the same on every page.
SERIES_COLORS = [
    "#1f77b4",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#393b79",
    "#aec7e8",
    "#c5b0d5",
    "#c49c94",
    "#e6550d",
    "#5254a3",
    "#bd9e39",
    "#7b4173",
]


def series_color(index: int) -> str:
    """The colour of the ``index``-th layer (in model order) or run."""
    return SERIES_COLORS[index % len(SERIES_COLORS)]


TITLE_CHARS = 52  # a title line longer than this is cut off on a 1024-px projector: wrap it
TITLE_LINE_PX = 22  # the height one more title line needs


def wrap_title(title: str, width: int = TITLE_CHARS) -> tuple[str, int]:
    """``title`` broken at spaces into lines of at most ``width`` characters (plotly never wraps
    a title; it runs past the chart's edge), and how many lines it takes."""
    if "<br>" in title or len(title) <= width:
        return title, title.count("<br>") + 1
    lines: list[str] = []
    glue = "\x00"  # "z = 1.1" and "a – b" stay on one line
    for word in title.replace(" = ", f"{glue}={glue}").replace(" – ", f"{glue}–{glue}").split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "<br>".join(lines).replace(glue, " "), len(lines)


@contextlib.contextmanager
def trusted_layout(fig: go.Figure) -> Iterator[go.Figure]:
    """Within the block, ``fig.update_layout`` sets what it is given without plotly checking it
    again: for the fixed layouts written here (titles, margins, fonts, legends), whose checked
    form the tests compare figure by figure. plotly's check of them was more than half of the
    time a figure takes to build (~25 ms of ~45; a class's live charts are built again every
    refresh interval). Same switch as ``white_template``; a plotly without it checks."""
    layout = fig.layout
    if not hasattr(layout, "_validate"):
        yield fig
        return
    before = layout._validate
    layout._validate = False
    try:
        yield fig
    finally:
        layout._validate = before


def base_layout(fig: go.Figure, title: str | None = None, *, height: int = 380) -> go.Figure:
    """A readable, projector-friendly layout: white background, large font, tight margins.

    A long title is wrapped (``wrap_title``) and the top margin grows by a line for each extra
    line, so the title fits a projector's width."""
    white_template(fig)  # its own switch; outside: a checked template never goes in unchecked
    with trusted_layout(fig):
        _base_layout(fig, title, height=height)
    if not title:
        fig.update_layout(title=None)  # checked: plotly's form of "no title" ({})
    return fig


def _base_layout(fig: go.Figure, title: str | None, *, height: int) -> go.Figure:
    extra = 0
    if title:
        title, lines = wrap_title(title)
        extra = TITLE_LINE_PX * (lines - 1)
    # The title is pinned to the top of the figure and a horizontal legend sits just above the
    # plot area; the top margin leaves room for both so they never overlap.
    fig.update_layout(
        **(
            {
                "title": {
                    "text": title,
                    "y": 1.0,
                    "yref": "container",
                    "yanchor": "top",
                    "pad": {"t": 14},
                    "x": 0.01,
                    "xanchor": "left",
                }
            }
            if title
            else {}
        ),
        height=height,
        margin={"l": 60, "r": 20, "t": (96 + extra) if title else 40, "b": 50},
        font={"size": 14},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.01, "x": 0},
    )
    return fig


# plotly_white as plain data, validated once by plotly when it registered the template.
_WHITE = pio.templates["plotly_white"].to_plotly_json()


def white_template(fig: go.Figure) -> go.Figure:
    """Give ``fig`` plotly's "plotly_white" template, cheaply.

    ``update_layout(template="plotly_white")`` validates a deep copy of the whole template
    again for every figure: 15-25 ms, most of the time a figure takes to build
    (``benchmarks/figures.py``). plotly assigns its own default template without that second
    validation (``BaseFigure._initialize_layout_template`` switches the layout's ``_validate``
    off); this does the same with a copy of the already-validated template, ~1 ms, and gives
    the same figure (a test compares the JSON). The look cannot come from a few explicit
    properties instead: once Streamlit is imported its own template is plotly's default, and
    setting plotly_white's ~40 properties one by one costs as much as the template.
    """
    layout = fig.layout
    if not hasattr(layout, "_validate"):  # a plotly without the switch: the public, slow way
        return fig.update_layout(template="plotly_white")
    before = layout._validate
    layout._validate = False
    try:
        layout.template = copy.deepcopy(_WHITE)
    finally:
        layout._validate = before
    return fig


def sign_colors(values: np.ndarray) -> list[str]:
    """Green for helped (< 0), red for hurt (> 0), grey for exactly 0."""
    v = np.asarray(values)
    return [HELPED if x < 0 else HURT if x > 0 else STILL for x in v.ravel()]


def symmetric_limit(z: np.ndarray) -> float:
    finite = np.abs(z[np.isfinite(z)]) if np.size(z) else np.array([])
    m = float(finite.max()) if finite.size else 0.0
    return m if m > 0 else 1.0


ROBUST_PERCENTILE = 99.0  # colour range: this percentile of |value| ...
OUTLIER_FACTOR = 2.0  # ... used only when the largest |value| is this many times larger


def robust_limit(z: np.ndarray) -> tuple[float, float | None]:
    """A symmetric colour limit that one outlier cell cannot wash out, and the outlier.

    Returns ``(limit, largest)``: ``limit`` is the 99th percentile of |z| when the largest |z|
    is more than twice that (e.g. one prune segment among thousands of ordinary steps), so
    every ordinary cell keeps a visible colour and the outlier is drawn at full saturation;
    ``largest`` is then the signed value of the largest cell (to state in the colour bar and
    the hover), else ``None`` and ``limit`` is the plain max |z|.
    """
    a = np.asarray(z, dtype=np.float64)
    finite = a[np.isfinite(a)]
    if not finite.size:
        return 1.0, None
    mag = np.abs(finite)
    top = float(mag.max())
    if top == 0:
        return 1.0, None
    q = float(np.percentile(mag, ROBUST_PERCENTILE))
    if q > 0 and top > OUTLIER_FACTOR * q:
        return q, float(finite[int(np.argmax(mag))])
    return top, None


def robust_colorbar_title(label: str, largest: float | None) -> str:
    """The colour bar's title; says when colours are capped and what the largest cell holds."""
    if largest is None:
        return label
    # No <sub>: pages show figure text literally (lca.figures.literal keeps only <br>), so a
    # tag would be drawn as text on the colour bar.
    return f"{label}<br>colours capped;<br>largest cell<br>{largest:+.2e}"


def lca_heatmap(
    z: np.ndarray,
    *,
    x: np.ndarray | list | None = None,
    y: np.ndarray | list | None = None,
    title: str | None = None,
    x_title: str = "step",
    y_title: str = "",
    colorbar_title: str = "LCA",
    height: int = 420,
    hover: str = "LCA",
) -> go.Figure:
    """A heatmap on the diverging LCA scale, centred at 0 (green helped, red hurt).

    The colour range is ``robust_limit``: one outlier cell is capped (its value is in the hover
    and the colour bar) instead of washing every other cell out.
    """
    z = np.asarray(z, dtype=np.float64)
    m, largest = robust_limit(z)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=x,
            y=y,
            colorscale=DIVERGING,
            zmid=0,
            zmin=-m,
            zmax=m,
            colorbar={"title": {"text": robust_colorbar_title(colorbar_title, largest)}},
            hovertemplate=(
                f"{x_title} %{{x}}<br>{y_title} %{{y}}<br>{hover} %{{z:.3e}}<extra></extra>"
            ),
        )
    )
    base_layout(fig, title, height=height)
    fig.update_xaxes(title=x_title)
    fig.update_yaxes(title=y_title)
    return fig


def block_heatmap(
    z: np.ndarray,
    row_starts: np.ndarray,
    col_labels: list[str] | None = None,
    **kwargs,
) -> go.Figure:
    """A heatmap of block-summed rows (e.g. steps): x shows each block's first step."""
    return lca_heatmap(np.asarray(z).T, x=np.asarray(row_starts), y=col_labels, **kwargs)


def empty_figure(message: str, *, height: int = 240) -> go.Figure:
    """A figure that says in words why there is nothing to draw (never an empty chart)."""
    fig = go.Figure()
    fig.add_annotation(
        text=message, showarrow=False, font={"size": 16}, x=0.5, y=0.5, xref="paper", yref="paper"
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return base_layout(fig, None, height=height)
