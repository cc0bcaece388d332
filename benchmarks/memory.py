"""How much memory LCA tracking adds, against the state it must hold.

The tracker must hold, per parameter: θ at the last step's end, ∇L there (the next step's start
gradient), the running ΣA and the last step's A (float32: 16 B), and per-tensor / per-unit index
vectors for its bookkeeping; ``state`` below is the bytes of every tensor the tracker and its
writer hold after the run (counted once per storage). ``added RSS`` is the process's resident
memory after the tracked steps minus before the tracker was made (same model, optimizer and data,
warmed up by plain training steps); ``peak`` is the high-water mark of the tracked steps over the
same baseline (Linux: VmHWM reset through /proc/self/clear_refs). Each record mode runs in a
fresh process so the baselines do not mix.

    python benchmarks/memory.py [--steps 40] [--hidden 1024,256] [--measure 512]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODES = ("none", "layers", "units", "full")


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def child(mode: str, steps: int, hidden: list[int], measure: int) -> dict:
    import torch
    from torch import nn

    import lca
    from lca import models
    from lca.store import Writer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2048, 784, generator=g)
    y = torch.randint(0, 10, (2048,), generator=g)
    model = models.build("mlp", (784,), 10, hidden=hidden)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train_step(i: int) -> None:
        idx = torch.arange(i * 64, (i + 1) * 64) % len(x)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()

    for i in range(5):  # warm-up: gradients, momentum buffers, allocator pools
        train_step(i)
        opt.step()
    params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        rss0 = _status("VmRSS")
        _reset_peak()
        writer = None
        if mode != "none":
            writer = Writer(Path(tmp) / "run.h5", record=mode, expected_steps=steps)
        tracker = lca.Tracker(
            model,
            nn.functional.cross_entropy,
            (x[:measure], y[:measure]),
            writer=writer,
            chunk_size=256,
        )
        rss_mid = None
        for i in range(steps):
            train_step(i)
            with tracker.step():
                opt.step()
            if i == steps // 2:
                rss_mid = _status("VmRSS")
        rss1, peak = _status("VmRSS"), _status("VmHWM")
        from lca.memory import held_tensor_bytes

        held = held_tensor_bytes(tracker, writer) if writer else held_tensor_bytes(tracker)
        tracker.close()
    return {
        "mode": mode,
        "params": params,
        "held": held,
        "added": rss1 - rss0,
        "growth_2nd_half": rss1 - (rss_mid or rss1),
        "peak": peak - rss0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--hidden", default="1024,256", help="MLP hidden sizes (784-…-10)")
    ap.add_argument("--measure", type=int, default=512, help="measurement-set size")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    hidden = [int(h) for h in args.hidden.split(",")]
    if args.child:
        print(json.dumps(child(args.child, args.steps, hidden, args.measure)))
        return
    rows = []
    for mode in MODES:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                mode,
                "--steps",
                str(args.steps),
                "--hidden",
                args.hidden,
                "--measure",
                str(args.measure),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    p = rows[0]["params"]
    print(
        f"MLP 784-{'-'.join(map(str, hidden))}-10, {p:,} parameters, rk4, measurement set "
        f"{args.measure} in chunks of 256, {args.steps} tracked steps, 1 thread"
    )
    print(
        "| record | state held (B/param) | added RSS (B/param) | added ÷ state | "
        "peak over baseline (B/param) | RSS growth, 2nd half (B/param) |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['held'] / p:.1f} | {r['added'] / p:.1f} | "
            f"{r['added'] / r['held']:.2f} | {r['peak'] / p:.1f} | "
            f"{r['growth_2nd_half'] / p:.1f} |"
        )


if __name__ == "__main__":
    main()
