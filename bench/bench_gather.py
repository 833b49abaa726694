#!/usr/bin/env python
"""Benchmark gather_data: binning rate from memory, and peak memory on a big FITS catalog.

    python bench/bench_gather.py                  # 20M events in memory, 50M-row FITS file
    python bench/bench_gather.py --rows 5000000   # a smaller file

Targets (issue 3): >= 30 million events/s binned from in-memory arrays;
a 50-million-row FITS catalog gathered with a peak memory under 500 MB.
The catalog (int32 EXPNUM, int16 CCDNUM, float32 XWIN_IMAGE/YWIN_IMAGE:
14 bytes a row, 700 MB for 50M rows) is written in chunks to --out_dir
(default bench/out/, git-ignored) and deleted afterwards.  Peak memory is the
peak resident set size of a subprocess that runs gather_data, next to that of
a subprocess that only imports transient_masks (the baseline).
"""
import argparse
import os
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import transient_masks as tm  # noqa: E402

CHILD = """
import resource, sys, time
sys.path.insert(0, {top!r})
import transient_masks as tm
start = time.perf_counter()
if {gather!r}:
    result = tm.gather_data({path!r}, {output!r}, overwrite=True)
    n = result.n_read
else:
    n = 0
elapsed = time.perf_counter() - start
# VmHWM: the peak RSS of this process's own memory (ru_maxrss would also
# count the parent's pages at fork time on Linux).
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    with open("/proc/self/status") as status:
        peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    pass
print(n, elapsed, peak_kb)
"""


def events(rng, n, epochs, sort=True, float32=False):
    """n random events over the given epochs (sorted by expnum unless sort=False)."""
    rows = [r for r in tm.read_epochs() if r["NAME"] in epochs]
    which = rng.integers(0, len(rows), n)
    lo = np.array([r["MINEXPNUM"] for r in rows])[which]
    hi = np.array([r["MAXEXPNUM"] for r in rows])[which]
    expnum = rng.integers(lo, hi + 1).astype(np.int32)
    if sort:
        expnum.sort()
    dtype = np.float32 if float32 else np.float64
    x = rng.uniform(0.5, 2048.4, n).astype(dtype)
    y = rng.uniform(0.5, 4096.4, n).astype(dtype)
    return expnum, rng.integers(1, 63, n).astype(np.int16), x, y


def best_rate(arrays, repeats=3):
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        result = tm.gather_arrays(*arrays)
        best = min(best, time.perf_counter() - start)
    assert result.n_binned == len(arrays[0])
    return len(arrays[0]) / best / 1e6, best


def write_catalog(path, n_rows, chunk=2_000_000, seed=1):
    """A FITS catalog of n_rows events over all DES epochs, sorted by expnum, written in chunks."""
    epochs = tm.read_epochs()
    lo, hi = int(epochs["MINEXPNUM"].min()), int(epochs["MAXEXPNUM"].max())
    rng = np.random.default_rng(seed)

    def blocks():
        for start in range(0, n_rows, chunk):
            n = min(chunk, n_rows - start)
            # Expnums rise through the file like a catalog ordered by exposure.
            first = lo + (hi - lo) * start // n_rows
            last = lo + (hi - lo) * (start + n) // n_rows
            yield {"EXPNUM": np.sort(rng.integers(first, last + 1, n)).astype(np.int32),
                   "CCDNUM": rng.integers(1, 63, n).astype(np.int16),
                   "XWIN_IMAGE": rng.uniform(0.5, 2048.4, n).astype(np.float32),
                   "YWIN_IMAGE": rng.uniform(0.5, 4096.4, n).astype(np.float32)}

    return tm.write_fits_rows(path, blocks(), overwrite=True)


def run_child(path, output, gather):
    code = CHILD.format(top=os.path.dirname(HERE), path=path, output=output, gather=gather)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    n, elapsed, maxrss_kb = out.stdout.split()
    return int(n), float(elapsed), int(maxrss_kb) / 1024


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000_000, help="in-memory events (default 20M)")
    parser.add_argument("--rows", type=int, default=50_000_000, help="FITS catalog rows (default 50M)")
    parser.add_argument("--out_dir", default=os.path.join(HERE, "out"))
    parser.add_argument("--keep", action="store_true", help="keep the catalog file")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)

    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, "bench_catalog.fits")
    output = os.path.join(args.out_dir, "bench_maps.fits")
    start = time.perf_counter()
    n = write_catalog(path, args.rows)
    size = os.path.getsize(path) / 1e6
    print(f"wrote {path}: {n / 1e6:.0f}M rows, {size:.0f} MB, in {time.perf_counter() - start:.1f} s")
    try:
        _, _, baseline = run_child(path, output, gather=False)
        n_read, elapsed, peak = run_child(path, output, gather=True)
    finally:
        if not args.keep:
            os.unlink(path)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"gather_data of the {n_read / 1e6:.0f}M-row FITS file: {elapsed:.1f} s "
          f"({n_read / elapsed / 1e6:.1f} M rows/s)")
    print(f"  peak RSS {peak:.0f} MB (import-only baseline {baseline:.0f} MB; "
          f"RUSAGE_CHILDREN ru_maxrss {children:.0f} MB)  target < 500 MB")
    if os.path.exists(output):
        os.unlink(output)

    print(f"\ngather_arrays, {args.events / 1e6:.0f}M events in memory (best of 3):")
    cases = [
        ("one epoch, sorted by expnum, float64 x/y", dict(epochs=["Y2E1"])),
        ("one epoch, sorted by expnum, float32 x/y", dict(epochs=["Y2E1"], float32=True)),
        ("all 14 epochs, sorted by expnum", dict(epochs=list(tm.read_epochs()["NAME"]))),
        ("all 14 epochs, random order", dict(epochs=list(tm.read_epochs()["NAME"]), sort=False)),
    ]
    for label, options in cases:
        arrays = events(rng, args.events, **options)
        rate, seconds = best_rate(arrays)
        print(f"  {label:45s} {rate:6.1f} M events/s ({seconds:.2f} s)  target >= 30")
        del arrays
    return 0


if __name__ == "__main__":
    sys.exit(main())
