#!/usr/bin/env python
"""How well the default masking rule finds simulated defects.

    python bench/bench_detection.py                       # Y2E1, Y4E2, Y6, seed 7
    python bench/bench_detection.py --epochs Y1E1 Y6 --seed 3 --background 5

Simulates the epochs (`transient_sim.simulate`), gathers the catalog into DES
count maps (`gather_arrays`), builds each epoch's mask with the default rule
(`EpochMask`: fp_rate 1e-4, floor 2 x median, no extra binning) and scores it
against the simulation truth:

- completeness: the fraction of defect cells masked, in bins of the cell's
  expected excess over its expected background.  A defect cell is a cell whose
  expected defect excess is at least 0.1 x its background.  The right half of
  CCD 31 (masked entirely by the rule) and dead CCDs are left out;
- false positives: the fraction of clean interior cells masked (no defect
  excess above 0.001 x background, more than 2 cells from the CCD edges, live
  CCDs, not the right half of CCD 31);
- the fraction of defect events (SOURCE != astro) that fall in masked cells,
  and of astrophysical events (the cost).
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import transient_masks as tm  # noqa: E402
import transient_sim as ts  # noqa: E402

RATIO_BINS = [0, 0.5, 1, 2, 3, 5, 10, np.inf]


def score_epoch(epoch, catalog, truth, counts, **mask_options):
    """Per-epoch scores: (ratios of defect cells, masked flags, fp cells, fp masked, events)."""
    mask = tm.EpochMask(counts, epoch=epoch, **mask_options)
    background, excess = truth.background[epoch], truth.excess[epoch]
    live = background.sum(axis=(1, 2)) > 0
    usable = np.broadcast_to(live[:, None, None], background.shape).copy()
    usable[tm.HALF_MASKED_CCD - 1, :, tm.MAP_NX // 2:] = False
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(background > 0, excess / background, np.inf)
    defect = usable & (ratio >= 0.1)
    interior = np.zeros(background.shape, dtype=bool)
    interior[:, 2:-2, 2:-2] = True
    clean = usable & interior & (ratio < 1e-3)
    row = next(r for r in tm.read_epochs() if r["NAME"] == epoch)
    in_epoch = (catalog["EXPNUM"] >= row["MINEXPNUM"]) & (catalog["EXPNUM"] <= row["MAXEXPNUM"])
    events = catalog[in_epoch]
    masked = mask.apply(events["CCDNUM"], events["XWIN_IMAGE"], events["YWIN_IMAGE"])
    is_defect = events["SOURCE"] != ts.SIM_SOURCES.index("astro")
    return {
        "ratio": ratio[defect], "found": mask.mask[defect],
        "n_clean": int(clean.sum()), "n_fp": int((mask.mask & clean).sum()),
        "defect_events": int(is_defect.sum()), "defect_masked": int((masked & is_defect).sum()),
        "astro_events": int((~is_defect).sum()), "astro_masked": int((masked & ~is_defect).sum()),
        "area": mask.area_fraction,
    }


def table(scores):
    ratio = np.concatenate([s["ratio"] for s in scores])
    found = np.concatenate([s["found"] for s in scores])
    lines = ["| excess / background | defect cells | masked | completeness |",
             "|---|---:|---:|---:|"]
    for lo, hi in zip(RATIO_BINS[:-1], RATIO_BINS[1:]):
        inside = (ratio >= lo) & (ratio < hi)
        if lo == 0:
            inside &= ratio >= 0.1
        label = f"> {lo:g}" if np.isinf(hi) else f"{max(lo, 0.1) if lo == 0 else lo:g} - {hi:g}"
        n = int(inside.sum())
        n_found = int(found[inside].sum())
        share = f"{100 * n_found / n:.1f}%" if n else "-"
        lines.append(f"| {label} | {n} | {n_found} | {share} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", nargs="+", default=["Y2E1", "Y4E2", "Y6"])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--background", type=float, default=3.0,
                        help="mean astrophysical transients per cell per epoch (default 3)")
    parser.add_argument("--fp_rate", type=float, default=tm.DEFAULT_FP_RATE)
    parser.add_argument("--floor", choices=tm.FLOORS, default=tm.DEFAULT_FLOOR)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    catalog, truth = ts.simulate(args.epochs, seed=args.seed, background=args.background)
    result = tm.gather_arrays(catalog["EXPNUM"], catalog["CCDNUM"], catalog["XWIN_IMAGE"],
                              catalog["YWIN_IMAGE"])
    scores = [score_epoch(epoch, catalog, truth, result.counts[epoch], fp_rate=args.fp_rate,
                          floor=args.floor) for epoch in truth.epochs]
    print(f"{len(catalog)} simulated transients in {', '.join(args.epochs)} (seed {args.seed}, "
          f"background {args.background:g} per cell per epoch); rule: fp_rate {args.fp_rate:g}, "
          f"floor 2 x {args.floor}, no extra binning ({time.perf_counter() - start:.0f} s)\n")
    print(table(scores))
    n_clean = sum(s["n_clean"] for s in scores)
    n_fp = sum(s["n_fp"] for s in scores)
    defect = sum(s["defect_events"] for s in scores)
    defect_masked = sum(s["defect_masked"] for s in scores)
    astro = sum(s["astro_events"] for s in scores)
    astro_masked = sum(s["astro_masked"] for s in scores)
    print(f"\nfalse positives: {n_fp} of {n_clean} clean interior cells masked "
          f"({n_fp / n_clean:.2e}; the rule aims at fp_rate {args.fp_rate:g} per cell)")
    print(f"defect events removed: {defect_masked} of {defect} ({100 * defect_masked / defect:.1f}%)")
    print(f"astrophysical events removed: {astro_masked} of {astro} ({100 * astro_masked / astro:.2f}%)")
    print("masked area per epoch: " + ", ".join(
        f"{epoch} {100 * s['area']:.2f}%" for epoch, s in zip(truth.epochs, scores)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
