#!/usr/bin/env python
"""Benchmark the SE -> coadd pixel map of des_background on a whole DECam CCD.

    python bench/bench_background.py

Uses the realistic WCSs of tests/data (a DECam TPV header, D00232321 CCD 57,
and the DES2122+0001 TAN tile) on all 2048 x 4096 pixels.  Prints, with the
targets of the issue:
- the fast map (exact on a 128-pixel grid, bicubic spline between, self-check
  at 1000 pixels; nearest_coadd_pixel) against astropy on every pixel, the
  baseline measured in the same run (targets: < 0.5 s, >= 10x faster);
- the number of pixels whose nearest coadd pixel differs from astropy's
  (target 0) and the largest position difference;
- BackgroundPixels on synthetic full-size arrays (all the cuts).
"""
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import des_background as bg  # noqa: E402
import transient_masks as tm  # noqa: E402

DATA = os.path.join(os.path.dirname(HERE), "tests", "data")
SHAPE = (tm.CCD_NY, tm.CCD_NX)
COADD_SHAPE = (10000, 10000)


def best_time(function, repeats=3):
    best, result = np.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def main():
    from astropy.io import fits
    from astropy.wcs import WCS

    se_wcs = WCS(fits.Header.fromtextfile(os.path.join(DATA, "des_se_tpv.hdr")))
    coadd_wcs = WCS(fits.Header.fromtextfile(os.path.join(DATA, "des_coadd_tan.hdr")))
    print(f"des_background {bg.__version__}: SE -> coadd map of a whole {SHAPE[1]} x {SHAPE[0]} CCD "
          f"(DECam TPV -> DES TAN tile)")

    def astropy_every_pixel():
        rows, cols = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
        ra, dec = se_wcs.all_pix2world(cols.ravel(), rows.ravel(), 0)
        x, y = coadd_wcs.all_world2pix(ra, dec, 0)
        return x.reshape(SHAPE), y.reshape(SHAPE)

    baseline, (true_x, true_y) = best_time(astropy_every_pixel, repeats=2)
    fast, (iy, ix, on_coadd, error) = best_time(
        lambda: bg.nearest_coadd_pixel(se_wcs, coadd_wcs, SHAPE, COADD_SHAPE))
    positions, (coadd_x, coadd_y, _) = best_time(lambda: bg.se_to_coadd(se_wcs, coadd_wcs, SHAPE))
    true_ix, true_iy = np.floor(true_x + 0.5), np.floor(true_y + 0.5)
    inside = (true_ix >= 0) & (true_ix < COADD_SHAPE[1]) & (true_iy >= 0) & (true_iy < COADD_SHAPE[0])
    differ = int(np.count_nonzero((inside != on_coadd)
                                  | (inside & ((ix != true_ix) | (iy != true_iy)))))
    max_diff = max(np.abs(coadd_x - true_x).max(), np.abs(coadd_y - true_y).max())
    print(f"  astropy on every pixel (baseline):  {baseline:.2f} s")
    print(f"  fast nearest coadd pixel:           {fast:.3f} s = {baseline / fast:.0f}x faster "
          f"(targets < 0.5 s, >= 10x)")
    print(f"    of which the positions:           {positions:.3f} s")
    print(f"  pixels whose nearest coadd pixel differs from astropy's: {differ} of {true_x.size} (target 0)")
    print(f"  largest position difference: {max_diff:.2g} coadd pixels (self-check found {error:.2g}, "
          f"fails above {bg.MAP_TOLERANCE:g}); {100 * on_coadd.mean():.1f}% of the CCD on the tile")

    rng = np.random.default_rng(1)
    coadd_weight = np.ones(COADD_SHAPE, np.float32)
    coadd_bmask = np.zeros(COADD_SHAPE, np.int32)
    coadd_seg = (rng.random(COADD_SHAPE) < 0.2).astype(np.int32)
    se_weight = rng.random(SHAPE).astype(np.float32)
    se_bmask = (rng.random(SHAPE) < 0.01).astype(np.int32)
    transient_mask = rng.random(SHAPE) < 0.01
    seconds, pixels = best_time(lambda: bg.BackgroundPixels(
        se_wcs, coadd_wcs, se_weight=se_weight, se_bmask=se_bmask, coadd_weight=coadd_weight,
        coadd_bmask=coadd_bmask, coadd_seg=coadd_seg, transient_mask=transient_mask))
    print(f"  BackgroundPixels, all cuts, arrays in memory: {seconds:.2f} s "
          f"({100 * pixels.good.mean():.1f}% good)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
