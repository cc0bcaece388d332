"""The demo's first chart as soon as the first step exists."""

from __future__ import annotations


def test_the_first_step_is_readable_at_once(tmp_path):
    """A live view (the demo) draws its first chart as soon as one step exists: the writer sends
    the first row out without waiting for its flush interval or a full chunk."""
    import torch
    from torch import nn

    import lca
    from lca.store import Reader

    torch.manual_seed(0)
    x, y = torch.randn(40, 4), torch.randint(0, 2, (40,))
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "live.h5"
    writer = lca.Writer(path, record="full", chunk_rows=64, flush_seconds=1e9)
    tracker = lca.Tracker(model, nn.functional.cross_entropy, (x, y), writer=writer)
    try:
        for _ in range(2):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            with tracker.step():
                opt.step()
        with Reader(path) as r:
            assert r.num_steps == 1  # the first step at once; the second waits for its chunk
    finally:
        tracker.close()
