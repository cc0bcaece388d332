"""Figures: see lca/figures/__init__.py."""

__all__: list[str] = []
