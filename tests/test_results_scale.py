"""RESULTS.md's generated parts for issue 15: the default-method paragraph is worded from the
conservation table, and the per-scale section appears only with paper-scale runs."""

from __future__ import annotations

from lca.experiments.results import conservation_choice, scale_section

TABLE = """## Conservation per step

**{model} on fashion-mnist** (84,060 parameters): 60 steps, measurement set 2,000

{header}
|---|---|---|---|---|---|---|---|
| rk4 | 2.00 | 1.00 | 4.49e-04 | 3.48e-03 | 5 of 60 | 0.454 | 3.7 |
| rk4-paper | 2.17 | {cost} | 2.90e-04 | 8.79e-04 | {over} of 60 | 0.393 | 5.2 |
| gauss3 | 3.00 | 1.50 | 1.87e-04 | 1.05e-03 | 1 of 60 | 0.231 | 7.8 |
"""


HEADER = (
    "| method | evals/step | × rk4 | mean abs err | worst abs err | steps > 1e-3 | "
    "median rel. err % | LCA s |"
)


def test_the_default_follows_the_numbers() -> None:
    text = conservation_choice(TABLE.format(model="fc-mnist", cost="1.08", over=0, header=HEADER))
    assert text is not None
    assert "rk4 left 5 of 60 steps over 1e-3 (worst 3.48e-03)" in text
    assert "rk4-paper 0 at 1.08×" in text and "gauss3 1 at 1.50×" in text
    assert "**Default: rk4-paper.**" in text
    costly = conservation_choice(TABLE.format(model="fc-mnist", cost="2.40", over=0, header=HEADER))
    assert costly is not None and "**Default: rk4**" in costly
    assert conservation_choice("no table here") is None


def test_no_scale_section_without_paper_runs() -> None:
    helped = {"findings": {"runs": {"digits-fc-mnist": {}}}}
    assert scale_section({"helped": helped}) is None
