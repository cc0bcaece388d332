"""How much memory LCA tracking adds, against the state it must hold.

The tracker must hold, per parameter: θ at the last step's end, ∇L there (the next step's start
gradient), the running ΣA and the last step's A (float32: 16 B); the writer adds its float64
per-weight totals and int32 helped counts (12 B) and, with ``--record full``, its row buffer.
``state held`` is the bytes of every tensor the tracker and its writer hold after the run (each
storage once, the measurement set left out: it is the caller's data). ``added RSS`` is the
highest resident memory sampled in the second half of the run (after each training step and
after each tracked step) minus the baseline: the same model, optimizer and data, warmed up by
plain training steps, freed memory handed back to the OS, one more training step. ``peak`` is
the high-water mark of the tracked steps over the same baseline (Linux: VmHWM reset through
/proc/self/clear_refs). Each record mode runs in a fresh process so the baselines do not mix.

Variants (``--variants``): ``release`` is the tracker as it ships (it hands the pages a step
freed back to the OS, ``lca.memory.release_free_memory``); ``keep`` turns that off (glibc keeps
them); ``mmap`` turns it off and pins glibc's mmap threshold at 1 MiB instead (every larger block
its own mapping, unmapped when freed, for the whole process). ``step ms`` is the median time of
a tracked step, ``release ms`` the median time of the release call inside it.

    python benchmarks/memory.py [--steps 20] [--hidden 1024,256] [--measure 512]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODES = ("none", "layers", "units", "full")
VARIANTS = ("release", "keep", "mmap")
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD = 1 << 20


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _pin_mmap_threshold(nbytes: int) -> None:
    import ctypes

    if ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, nbytes) != 1:
        raise RuntimeError("mallopt(M_MMAP_THRESHOLD) failed (glibc only)")


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] if values else float("nan")


def child(mode: str, steps: int, hidden: list[int], measure: int, variant: str = "release") -> dict:
    """One record mode in this process: the figures of one row, in bytes and seconds."""
    import torch
    from torch import nn

    import lca
    from lca import memory, models
    from lca.store import Writer

    allocate = sys.modules["lca.allocate"]  # the module (``lca.allocate`` is also a function)

    if variant == "mmap":
        _pin_mmap_threshold(MMAP_THRESHOLD)
    release_times: list[float] = []

    def timed_release() -> bool:
        t0 = time.perf_counter()
        done = memory.release_free_memory()
        release_times.append(time.perf_counter() - t0)
        return done

    allocate.release_free_memory = timed_release
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
    memory.release_free_memory()  # the same start whatever the variant ...
    train_step(5)  # ... with the training loop's own working set resident
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
        if variant in ("keep", "mmap"):
            tracker.release_memory = False
        rss_high, step_times, cpu = 0, [], {True: [], False: []}
        for i in range(steps):
            train_step(i)
            if i >= steps // 2:
                rss_high = max(rss_high, _status("VmRSS"))
            if variant == "paired":  # blocks of 3 steps with and without the release
                tracker.release_memory = (i // 3) % 2 == 0
            t0, c0 = time.perf_counter(), time.process_time()
            with tracker.step():
                opt.step()
            step_times.append(time.perf_counter() - t0)
            if i % 3:  # the first step of a block still pays for the previous block's choice
                cpu[tracker.release_memory].append(time.process_time() - c0)
            if i >= steps // 2:
                rss_high = max(rss_high, _status("VmRSS"))
        peak = _status("VmHWM")
        held = memory.held_tensor_bytes(tracker, writer, skip=("_chunks",))
        tracker.close()
    return {
        "mode": mode,
        "variant": variant,
        "params": params,
        "held": held,
        "added": rss_high - rss0,
        "peak": peak - rss0,
        "step_s": _median(step_times),
        "release_s": _median(release_times),
        "cpu_s": _median(cpu[True] + cpu[False]),
        "cpu_release_s": _median(cpu[True]),
        "cpu_keep_s": _median(cpu[False]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--hidden", default="1024,256", help="MLP hidden sizes (784-…-10)")
    ap.add_argument("--measure", type=int, default=512, help="measurement-set size")
    ap.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}"
    )
    ap.add_argument(
        "--paired", action="store_true", help="also time steps with and without the release"
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="release", help=argparse.SUPPRESS)
    args = ap.parse_args()
    hidden = [int(h) for h in args.hidden.split(",")]
    if args.child:
        print(json.dumps(child(args.child, args.steps, hidden, args.measure, args.variant)))
        return
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")

    def run(mode: str, variant: str) -> dict:
        cmd = [sys.executable, __file__, "--child", mode, "--variant", variant]
        cmd += ["--steps", str(args.steps), "--hidden", args.hidden]
        cmd += ["--measure", str(args.measure)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    rows = [run(mode, variant) for variant in variants for mode in MODES]
    paired = [run(mode, "paired") for mode in MODES] if args.paired else []
    p = (rows or paired)[0]["params"]
    print(
        f"MLP 784-{'-'.join(map(str, hidden))}-10, {p:,} parameters, rk4, measurement set "
        f"{args.measure} in chunks of 256, {args.steps} tracked steps, 1 thread"
    )
    if rows:
        print(
            "| variant | record | state held (B/param) | added RSS (B/param) | added ÷ state | "
            "peak (B/param) | CPU ms per tracked step | release ms |"
        )
        print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['mode']} | {r['held'] / p:.1f} | {r['added'] / p:.1f} | "
            f"{r['added'] / r['held']:.2f} | {r['peak'] / p:.1f} | {1000 * r['cpu_s']:.0f} | "
            f"{1000 * r['release_s']:.1f} |"
        )
    if paired:
        print(
            "\nPaired in one process (blocks of 3 tracked steps with and without the release, "
            "each block's first step left out), CPU ms per tracked step (median):"
        )
        print("| record | with release | without | ratio | release call ms |")
        print("|---|---|---|---|---|")
    for r in paired:
        print(
            f"| {r['mode']} | {1000 * r['cpu_release_s']:.0f} | {1000 * r['cpu_keep_s']:.0f} | "
            f"{r['cpu_release_s'] / r['cpu_keep_s']:.3f} | {1000 * r['release_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
