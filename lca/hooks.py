"""The run's techniques called as one: each hook of ``techniques/base.py`` over every technique.

The training loop calls ``hooks.before_step(ctx)`` once instead of looping over techniques at
thirteen places; the order of the techniques is the config's, and a hook that answers (who ran
the backward, who stepped the optimizer) is answered by the first technique that says so,
exactly as the loop did inline.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

import techniques as techniques_registry
from techniques import Context, Technique

from .setup import TrainingError


class Hooks:
    """The techniques of one run, in config order."""

    def __init__(self, plugins: list[Technique]) -> None:
        self.plugins = plugins

    @classmethod
    def from_specs(cls, specs: list[dict]) -> Hooks:
        try:
            techniques_registry.validate_all(specs)  # compose or refuse, before anything runs
            return cls([techniques_registry.create(spec) for spec in specs])
        except ValueError as e:  # TechniqueError: one sentence
            raise TrainingError(str(e)) from None

    def __bool__(self) -> bool:
        return bool(self.plugins)

    def __iter__(self) -> Iterator[Technique]:
        return iter(self.plugins)

    def setup(self, ctx: Context) -> None:
        try:
            for p in self.plugins:
                p.setup(ctx)
        except ValueError as e:  # TechniqueError: e.g. a layer name the model does not have
            raise TrainingError(str(e)) from None

    def begin(self, ctx: Context) -> None:
        for p in self.plugins:
            p.begin(ctx)

    def intervene(self, ctx: Context, tracker) -> None:
        """Weight moves outside the optimizer (a prune): each is its own LCA segment, handed
        back to its technique once measured."""
        for p in self.plugins:
            if p.wants_intervention(ctx):
                with tracker.intervention(p.name) as row:
                    p.intervene(ctx, row)
                p.after_intervention(ctx, tracker.last)

    def before_forward(self, ctx: Context) -> None:
        for p in self.plugins:
            p.before_forward(ctx)

    def forward_params(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for p in self.plugins:
            params = p.forward_params(params)
        return params

    def effective(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for p in self.plugins:
            params = p.effective(params)
        return params

    @contextlib.contextmanager
    def autocast(self, ctx: Context) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for p in self.plugins:
                cm = p.autocast(ctx)
                if cm is not None:
                    stack.enter_context(cm)
            yield

    def add_loss_terms(
        self, ctx: Context, params: dict[str, torch.Tensor], loss: torch.Tensor
    ) -> torch.Tensor:
        for p in self.plugins:
            term = p.loss_term(ctx, params)
            if term is not None:
                loss = loss + term
        return loss

    def backward(self, ctx: Context, loss: torch.Tensor) -> None:
        if not any(p.backward(ctx, loss) for p in self.plugins):
            loss.backward()

    def before_step(self, ctx: Context) -> None:
        for p in self.plugins:
            p.before_step(ctx)

    def optimizer_step(self, ctx: Context) -> None:
        if not any(p.optimizer_step(ctx) for p in self.plugins):
            ctx.optimizer.step()

    def after_step(self, ctx: Context, row: dict[str, object]) -> None:
        for p in self.plugins:
            p.after_step(ctx, row)

    def summaries(self) -> dict[str, dict]:
        return {p.name: p.summary() for p in self.plugins}
