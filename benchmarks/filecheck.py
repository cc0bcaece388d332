"""What the pre-open file check costs: a normal run, a big run's structure, the crafted files.

Makes a small real run (digits MLP, 30 steps, record full) and the crafted files of issue 12
from it (external storage to /proc/self/environ and to a FIFO, an external link, a virtual
dataset, 2,000 nested groups, per-step datasets resized to 2e7 rows with nothing written,
20,000 root attributes), plus a run-like file with 10,000 parameter tensors (the object count a
very large model has). For each it prints the verdict, the wall time of the first check (the
child process: start, import h5py, walk), the time of a second, cached check, and the peak
memory of the checking process.

    python benchmarks/filecheck.py [--out /tmp/lca-filecheck]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import h5py  # noqa: E402
import numpy as np  # noqa: E402

from lca.store import RunFileError, filecheck  # noqa: E402


def make_normal(folder: Path) -> Path:
    from lca.config import RunConfig
    from lca.train import run

    path = folder / "normal.h5"
    run(
        RunConfig.from_dict(
            {
                "dataset": "digits",
                "model": "mlp",
                "model_options": {"hidden": [16]},
                "steps": 30,
                "measure_size": 300,
                "eval_every": 10,
                "record": "full",
                "device": "cpu",
            }
        ),
        out=path,
    )
    return path


def crafted(normal: Path, name: str, change) -> Path:
    path = normal.with_name(name)
    shutil.copy(normal, path)
    with h5py.File(path, "r+") as f:
        change(f)
    return path


def external(target: str):
    def change(f: h5py.File) -> None:
        n = f["layers/names"].shape[0]
        del f["layers/names"]
        f.create_dataset(
            "layers/names", shape=(n,), dtype="S8", external=[(target, 0, h5py.h5f.UNLIMITED)]
        )

    return change


def files(folder: Path, normal: Path) -> dict[str, Path]:
    other = folder / "other.h5"
    with h5py.File(other, "w") as g:
        g["names"] = np.array([b"secret"] * 4)
    fifo = folder / "pipe"
    os.mkfifo(fifo)

    def elink(f):
        del f["layers/names"]
        f["layers/names"] = h5py.ExternalLink(str(other), "/names")

    def vds(f):
        del f["layers/names"]
        layout = h5py.VirtualLayout(shape=(4,), dtype="S6")
        layout[:] = h5py.VirtualSource(str(other), "names", shape=(4,))
        f.create_virtual_dataset("layers/names", layout)

    def deep(f):
        g = f
        for _ in range(2000):
            g = g.create_group("g")

    def huge(f):
        def grow(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.maxshape[:1] == (None,) and obj.ndim:
                obj.resize(20_000_000 + (name == "steps/loss"), axis=0)

        f.visititems(grow)

    def attrs(f):
        for i in range(20_000):
            f.attrs[f"a{i}"] = i

    def many_tensors(f):
        g = f["params"]
        for i in range(10_000):
            t = g.create_group(f"layer{i}.weight")
            t.attrs["name"] = np.bytes_(f"layer{i}.weight")
            t.create_dataset("total", data=np.zeros(8))
            t.create_dataset("helped_steps", data=np.zeros(8, dtype=np.int32))

    return {
        "normal run (30 steps, full)": normal,
        "10,000 tensors (40,000 objects)": crafted(normal, "tensors.h5", many_tensors),
        "external storage: /proc/self/environ": crafted(
            normal, "environ.h5", external("/proc/self/environ")
        ),
        "external storage: a FIFO": crafted(normal, "fifo.h5", external(str(fifo))),
        "external link": crafted(normal, "elink.h5", elink),
        "virtual dataset": crafted(normal, "vds.h5", vds),
        "2,000 nested groups": crafted(normal, "deep.h5", deep),
        "per-step datasets at 2e7 rows": crafted(normal, "huge.h5", huge),
        "20,000 root attributes": crafted(normal, "attrs.h5", attrs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    folder = args.out or Path(tempfile.mkdtemp(prefix="lca-filecheck-"))
    folder.mkdir(parents=True, exist_ok=True)
    normal = make_normal(folder)
    print(f"{'file':40} {'size':>9} {'first':>8} {'cached':>8} {'child RSS':>10}  verdict")
    made = files(folder, normal)
    for label, path in made.items():
        filecheck.forget()
        t0 = time.perf_counter()
        verdict = filecheck.verdict(path)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            filecheck.check(path)
            said = "accepted"
        except RunFileError as e:
            said = str(e)[:90]
        cached = time.perf_counter() - t0
        rss = verdict.get("peak_rss_kb")
        peak = f"{rss / 1024:.0f} MB" if rss else "?"
        size = path.stat().st_size
        print(
            f"{label:40} {size / 1e6:7.2f}MB {first:7.2f}s {cached * 1e6:6.0f}µs {peak:>10}  {said}"
        )
    filecheck.forget()
    t0 = time.perf_counter()
    filecheck.prefetch(made.values())
    print(
        f"all {len(made)} files above in one checking process (prefetch, as the Runs page "
        f"does): {time.perf_counter() - t0:.2f}s"
    )
    if args.out is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
