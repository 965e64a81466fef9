"""Image windows sampled per second: frames in memory vs read lazily from disk (HDF5, memory-mapped npz).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_pixel_windows.py                 # 20k frames 64x64x3, B=64, K=8
    PYTHONPATH=. .venv/bin/python benchmarks/bench_pixel_windows.py --frames 100000 --dir /big/disk

A synthetic dataset of ``--frames`` uint8 frames (episodes of ``--length`` steps) is written once to
``--dir`` (default a temporary folder) as a D4RL-style HDF5 file (``observations`` only: final
observations from the next row) and as an uncompressed npz, then opened three ways: in memory
(``lazy=False``), lazily from the HDF5 file (h5py reads of each window's rows) and lazily from the npz
(memory-mapped members). One "window" is one row of the returned Batch (uint8 ``[K, 64, 64, 3]``
observations and next observations, plus the step fields). The figure is the median of ``--repeats``
timed runs of ``--batches`` batches. The files were just written, so the OS page cache holds them: this
measures the read path, not a cold disk (on a cold disk each window costs one or two random reads).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from qtkit.data import load_dataset


def write_files(folder: Path, frames: int, length: int, size: int, seed: int) -> tuple[Path, Path]:
    import h5py

    rng = np.random.default_rng(seed)
    timeouts = np.zeros(frames, dtype=bool)
    timeouts[length - 1:: length] = True
    h5 = folder / f"pixels-{frames}-{size}.hdf5"
    with h5py.File(h5, "w") as f:
        obs = f.create_dataset("observations", (frames, size, size, 3), dtype=np.uint8)
        for a in range(0, frames, 5000):
            b = min(frames, a + 5000)
            obs[a:b] = rng.integers(0, 256, (b - a, size, size, 3), dtype=np.uint8)
        f["actions"] = rng.uniform(-1, 1, (frames, 4)).astype(np.float32)
        f["rewards"] = rng.normal(size=frames).astype(np.float32)
        f["terminals"] = np.zeros(frames, dtype=bool)
        f["timeouts"] = timeouts
    npz = load_dataset(h5, lazy=True).to_npz(folder / f"pixels-{frames}-{size}.npz")
    return h5, npz


def rate(ds, batch: int, K: int, batches: int, repeats: int) -> float:
    ds.sample_windows(batch, K, generator=0)
    rng = np.random.default_rng(1)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(batches):
            ds.sample_windows(batch, K, generator=rng)
        times.append(time.perf_counter() - t0)
    return batch * batches / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=20_000)
    p.add_argument("--length", type=int, default=500, help="steps per episode")
    p.add_argument("--size", type=int, default=64, help="frames are size x size x 3")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("-K", type=int, default=8)
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dir", default=None, help="where to write the files (default: a temporary folder)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        t0 = time.perf_counter()
        h5, npz = write_files(Path(tmp), args.frames, args.length, args.size, 0)
        gb = args.frames * args.size * args.size * 3 / 1e9
        print(f"{args.frames} frames {args.size}x{args.size}x3 uint8 ({gb:.2f} GB), written in "
              f"{time.perf_counter() - t0:.1f}s; B={args.batch}, K={args.K}, {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cpus, torch threads {args.threads}")
        cases = [("memory (lazy=False)", h5, False), ("hdf5 (lazy=True)", h5, True),
                 ("npz memmap (lazy=True)", npz, True)]
        for name, path, lazy in cases:
            t0 = time.perf_counter()
            ds = load_dataset(path, lazy=lazy)
            opened = time.perf_counter() - t0
            r = rate(ds, args.batch, args.K, args.batches, args.repeats)
            print(f"  {name:24s} open {opened:6.2f}s  {r:10,.0f} windows/s  ({r / args.batch:7,.1f} batches/s)  "
                  f"frames={ds.frames_storage}")
            del ds


if __name__ == "__main__":
    main()
