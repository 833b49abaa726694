#!/usr/bin/env python
"""How well the DES rule and the multiscale method find simulated defects.

    python bench/bench_detection.py                          # Y2E1, Y4E2, Y6, seed 7, background 3
    python bench/bench_detection.py --seed 11 --background 10
    python bench/bench_detection.py --seed 23 --rich         # the richer mix of defects

Simulates the epochs (`transient_sim.simulate`; ``--rich`` adds faint 1-pixel
columns, glows across the amplifier boundary and fading defects), gathers the
catalog into DES count maps (`gather_arrays`), builds each epoch's masks with
both methods (`EpochMask`, fp_rate 1e-4, no extra binning) and scores them
against the simulation truth, side by side:

- completeness: the fraction of defect cells masked, in bins of the cell's
  expected excess over its expected background.  A defect cell is a cell whose
  expected defect excess is at least 0.1 x its background.  The right half of
  CCD 31 (masked entirely by both) and dead CCDs are left out;
- false positives: the fraction of clean interior cells masked (no defect
  excess above 0.001 x background, more than 2 cells from the CCD edges, live
  CCDs, not the right half of CCD 31);
- masked area (live CCDs but CCD 31's right half) and its ratio to the area of
  the true defect cells;
- the share of defect events (SOURCE != astro) that fall in masked cells, and
  of astrophysical events (the cost);
- the time to build one epoch's mask: the CPU time of the slowest epoch (the
  cost on one core, whatever else the machine runs) and the wall time of the
  fastest.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import transient_masks as tm  # noqa: E402
import transient_sim as ts  # noqa: E402

RATIO_BINS = [0.1, 0.5, 1, 2, 3, 5, 10, np.inf]


def score_epoch(epoch, catalog, truth, counts, **mask_options):
    """Per-epoch scores of one method's mask."""
    start, cpu = time.perf_counter(), time.process_time()
    mask = tm.EpochMask(counts, epoch=epoch, **mask_options)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
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
        "area": int((mask.mask & usable).sum()), "true_area": int(defect.sum()), "usable": int(usable.sum()),
        "defect_events": int(is_defect.sum()), "defect_masked": int((masked & is_defect).sum()),
        "astro_events": int((~is_defect).sum()), "astro_masked": int((masked & ~is_defect).sum()),
        "seconds": seconds, "cpu_seconds": cpu_seconds,
    }


def summary(scores):
    """Totals over epochs: completeness per bin and the global figures."""
    ratio = np.concatenate([s["ratio"] for s in scores])
    found = np.concatenate([s["found"] for s in scores])
    total = {key: sum(s[key] for s in scores) for key in scores[0] if key not in ("ratio", "found")}
    bins = []
    for lo, hi in zip(RATIO_BINS[:-1], RATIO_BINS[1:]):
        inside = (ratio >= lo) & (ratio < hi)
        bins.append((int(inside.sum()), float(found[inside].mean()) if inside.any() else np.nan))
    total["bins"] = bins
    total["best_seconds"] = min(s["seconds"] for s in scores)
    total["worst_cpu"] = max(s["cpu_seconds"] for s in scores)
    return total


def table(results):
    """Markdown table: a row per excess bin and per global figure, a column per method."""
    names = list(results)
    lines = ["| excess / background | defect cells | " + " | ".join(names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    first = results[names[0]]
    for k, (lo, hi) in enumerate(zip(RATIO_BINS[:-1], RATIO_BINS[1:])):
        label = f"> {lo:g}" if np.isinf(hi) else f"{lo:g} - {hi:g}"
        cells = " | ".join(f"{100 * results[n]['bins'][k][1]:.1f}%" if first["bins"][k][0] else "-"
                           for n in names)
        lines.append(f"| {label} | {first['bins'][k][0]} | {cells} |")

    def row(label, fmt):
        lines.append(f"| {label} | | " + " | ".join(fmt(results[n]) for n in names) + " |")

    row("clean cells masked (false positives)", lambda r: f"{r['n_fp'] / r['n_clean']:.2e} ({r['n_fp']})")
    row("masked area (x true defect area)",
        lambda r: f"{100 * r['area'] / r['usable']:.2f}% (x{r['area'] / r['true_area']:.2f})")
    row("defect transients removed", lambda r: f"{100 * r['defect_masked'] / r['defect_events']:.2f}%")
    row("astrophysical transients lost", lambda r: f"{100 * r['astro_masked'] / r['astro_events']:.2f}%")
    row("time per epoch: CPU (slowest epoch) / wall (fastest)",
        lambda r: f"{r['worst_cpu']:.2f} s / {r['best_seconds']:.2f} s")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", nargs="+", default=["Y2E1", "Y4E2", "Y6"])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--background", type=float, default=3.0,
                        help="mean astrophysical transients per cell per epoch (default 3)")
    parser.add_argument("--rich", action="store_true",
                        help="add the richer mix: faint 1-px columns (1 per CCD), 4 glows across the "
                             "amplifier boundary, defects fading in and out")
    parser.add_argument("--fp_rate", type=float, default=tm.DEFAULT_FP_RATE)
    parser.add_argument("--floor", choices=tm.FLOORS, default=tm.DEFAULT_FLOOR)
    parser.add_argument("--methods", nargs="+", choices=tm.METHODS, default=list(tm.METHODS))
    args = parser.parse_args(argv)

    start = time.perf_counter()
    rich = dict(n_faint_columns=1.0, n_glows=4.0, fade=True) if args.rich else {}
    catalog, truth = ts.simulate(args.epochs, seed=args.seed, background=args.background, **rich)
    result = tm.gather_arrays(catalog["EXPNUM"], catalog["CCDNUM"], catalog["XWIN_IMAGE"],
                              catalog["YWIN_IMAGE"])
    results = {}
    for method in args.methods:
        scores = [score_epoch(epoch, catalog, truth, result.counts[epoch], fp_rate=args.fp_rate,
                              floor=args.floor, method=method) for epoch in truth.epochs]
        results["DES rule" if method == "des" else "multiscale"] = summary(scores)
    print(f"{len(catalog)} simulated transients in {', '.join(args.epochs)} (seed {args.seed}, "
          f"background {args.background:g} per cell per epoch{', richer mix' if args.rich else ''}); "
          f"fp_rate {args.fp_rate:g}, no extra binning ({time.perf_counter() - start:.0f} s)\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
