#!/usr/bin/env python
"""Benchmark the core of transient_masks on this machine, in one run.

    python bench/bench_core.py            # about a minute; files go to bench/out/
    python bench/bench_core.py --rows 2000000   # a quicker, smaller --input run

Prints, with the targets of the core issue:
- masks of one epoch from a loaded (62, 256, 256) cube (target < 0.2 s);
- EpochMask.apply on 10 million events (target >= 20 million events/s);
- the compressed write of one epoch (targets < 3 s and < 2 MB);
- ``--input`` on a 10-million-row FITS table against astropy reading and
  writing the same table unfiltered (target ratio <= 1.5), with the peak
  memory of each as a multiple of the table's size (target < 2).
Each --input run is a fresh subprocess, so its peak RSS (ru_maxrss) is its own.
"""
import argparse
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import transient_masks as tm  # noqa: E402

OUT = os.path.join(HERE, "out")


def best_of(function, repeat=3):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def realistic_cube(rng):
    """Poisson background varying between CCDs, a few hot columns and spots, a dead CCD."""
    means = rng.uniform(1.0, 8.0, size=62)
    cube = rng.poisson(means[:, None, None], size=(62, 256, 256))
    for ccd in rng.integers(0, 62, 40):
        x_cell, y_start = rng.integers(0, 256), rng.integers(0, 200)
        cube[ccd, y_start:, x_cell] += rng.integers(5, 60)
    for ccd in rng.integers(0, 62, 20):
        x_cell, y_cell = rng.integers(2, 250, size=2)
        cube[ccd, y_cell - 2:y_cell + 2, x_cell - 2:x_cell + 2] += rng.integers(10, 80)
    cube[60] = 0
    return np.minimum(cube, 65535).astype(np.uint16)


def write_counts(path, cubes):
    from astropy.io import fits

    epochs = tm.read_epochs()
    hdus = [fits.PrimaryHDU()]
    for name, cube in cubes.items():
        row = epochs[epochs["NAME"] == name][0]
        hdu = fits.ImageHDU(cube, name=name)
        hdu.header.update(EPOCH=name, MIN_EXP=int(row["MINEXPNUM"]), MAX_EXP=int(row["MAXEXPNUM"]))
        hdus.append(hdu)
    fits.HDUList(hdus).writeto(path, overwrite=True)


def write_events(path, rng, n_rows, block=2_000_000):
    """A DES-like event table: 12 columns, 64 bytes a row, written in blocks."""
    from astropy.io import fits

    columns = [
        ("EXPNUM", "K"), ("CCDNUM", "I"), ("XWIN_IMAGE", "D"), ("YWIN_IMAGE", "D"),
        ("RA", "D"), ("DEC", "D"), ("MAG", "E"), ("MAGERR", "E"), ("FLUX_RADIUS", "E"),
        ("FLAGS", "I"), ("SPREAD_MODEL", "E"), ("BAND", "1A"),
    ]
    dtype = np.dtype([(name, {"K": ">i8", "I": ">i2", "D": ">f8", "E": ">f4", "1A": "S1"}[form])
                      for name, form in columns])
    header = fits.BinTableHDU.from_columns(
        [fits.Column(name=name, format=form) for name, form in columns], nrows=0).header
    header["NAXIS2"] = n_rows
    with open(path, "wb") as out:
        out.write(fits.PrimaryHDU().header.tostring().encode())
        out.write(header.tostring().encode())
        for start in range(0, n_rows, block):
            n = min(block, n_rows - start)
            rows = np.zeros(n, dtype=dtype)
            rows["EXPNUM"] = rng.choice([350000, 360000, 780000, 300000], size=n)
            rows["CCDNUM"] = rng.integers(1, 63, n)
            rows["XWIN_IMAGE"] = rng.uniform(0.5, 2048.5, n)
            rows["YWIN_IMAGE"] = rng.uniform(0.5, 4096.5, n)
            rows["RA"], rows["DEC"] = rng.uniform(0, 360, n), rng.uniform(-60, 5, n)
            rows["MAG"] = rng.normal(22, 1, n)
            rows["BAND"] = rng.choice([b"g", b"r", b"i", b"z"], size=n)
            rows.tofile(out)
        out.write(b"\0" * (-(n_rows * dtype.itemsize) % 2880))
    return n_rows * dtype.itemsize


def run_measured(code):
    """Run Python code in a fresh interpreter; return (seconds, peak RSS in bytes).

    The peak is the child's own VmHWM (the high-water mark of its address space
    after exec), so memory the parent had at fork does not count.
    """
    report = ("\nwith open('/proc/self/status') as status:\n"
              "    print([line.split()[1] for line in status if line.startswith('VmHWM')][0])")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code + report], check=True, capture_output=True,
                          text=True, cwd=os.path.dirname(HERE))
    seconds = time.perf_counter() - start
    return seconds, int(done.stdout.split()[-1]) * 1024


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of the --input table")
    args = parser.parse_args(argv)
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(2026)
    cube = realistic_cube(rng)
    counts_path = os.path.join(OUT, "bench_maps.fits")
    write_counts(counts_path, {"Y2E1": cube, "Y6": realistic_cube(rng)})
    tm.EpochMask(cube)  # import scipy.stats once, outside the timing

    print(f"transient_masks {tm.__version__} core benchmark (numpy {np.__version__})")
    seconds = best_of(lambda: tm.EpochMask(cube, epoch="Y2E1"))
    print(f"masks of one epoch from a loaded cube: {seconds:.3f} s (target < 0.2 s)")

    mask = tm.EpochMask(cube, epoch="Y2E1")
    n = 10_000_000
    ccdnum = rng.integers(1, 63, n)
    x, y = rng.uniform(0.5, 2048.5, n), rng.uniform(0.5, 4096.5, n)
    seconds = best_of(lambda: mask.apply(ccdnum, x, y))
    print(f"apply on {n:,} events: {seconds:.3f} s = {n / seconds / 1e6:.1f} million events/s "
          f"(target >= 20)")

    path = os.path.join(OUT, "bench_masks.fits.fz")
    seconds = best_of(lambda: mask.write_masks(path, overwrite=True), repeat=2)
    print(f"compressed write of one epoch: {seconds:.2f} s, {os.path.getsize(path) / 1e6:.2f} MB "
          f"(targets < 3 s, < 2 MB; {100 * mask.area_fraction:.2f}% of the area masked)")

    del ccdnum, x, y  # keep the parent small while the children run
    table_path = os.path.join(OUT, "bench_events.fits")
    table_bytes = write_events(table_path, rng, args.rows)
    print(f"--input on a {args.rows:,}-row FITS table ({table_bytes / 1e6:.0f} MB):")
    baseline_out = os.path.join(OUT, "bench_astropy_copy.fits")
    filtered_out = os.path.join(OUT, "bench_filtered.fits")
    for stale in (baseline_out, filtered_out):
        if os.path.exists(stale):
            os.unlink(stale)
    idle_seconds, idle_peak = run_measured("import transient_masks, astropy.table")
    base_seconds, base_peak = run_measured(
        f"from astropy.table import Table; Table.read({table_path!r}).write({baseline_out!r})")
    ours_seconds, ours_peak = run_measured(
        f"import transient_masks as tm; assert tm.main(['--input', {table_path!r}, "
        f"'--counts', {counts_path!r}, '-o', {filtered_out!r}]) == 0")
    print(f"  astropy read + write, unfiltered: {base_seconds:.2f} s, peak {base_peak / 1e6:.0f} MB "
          f"= {base_peak / table_bytes:.2f}x the table")
    print(f"  transient_masks --input:          {ours_seconds:.2f} s, peak {ours_peak / 1e6:.0f} MB "
          f"= {ours_peak / table_bytes:.2f}x the table")
    print(f"  time ratio {ours_seconds / base_seconds:.2f} (target <= 1.5); peak memory "
          f"{ours_peak / table_bytes:.2f}x the table (target < 2; the interpreter and imports alone "
          f"take {idle_peak / 1e6:.0f} MB, {idle_seconds:.1f} s)")
    for name in (table_path, baseline_out, filtered_out):
        os.unlink(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
