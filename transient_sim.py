#!/usr/bin/env python
"""Simulate DES transient catalogs with CCD defects, and their truth per cell.

A tool for testing and validating `transient_masks`: astrophysical transients
spread over the 62 DECam CCDs plus the spurious ones of a simulated camera
(glowing edges, hot columns, hot spots, the bad amplifiers of CCDs 31 and 41,
the CCD 46 light bulb, dead CCDs), with the expected counts of every DES map
cell (`SimTruth`) to score masks against.  It imports `transient_masks`; the
masks never import it.

Examples
--------
Write a catalog of two epochs (FITS streams epoch by epoch; other formats
astropy writes are built whole), then gather it into count maps::

    $ ./transient_sim.py sim.fits --epochs Y2E1 Y6 --seed 3 --background 3
    $ ./transient_masks.py --gather sim.fits -o sim_maps.fits.gz

From Python::

    >>> import transient_sim as ts
    >>> catalog, truth = ts.simulate("Y2E1", seed=1, background=0.05)
    >>> catalog.colnames
    ['EXPNUM', 'CCDNUM', 'XWIN_IMAGE', 'YWIN_IMAGE', 'SOURCE']
"""
import argparse
import logging
import sys

import numpy as np

if __name__ == "__main__":
    # Run as a script: import the masks module by name, once (see transient_masks).
    import os

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import transient_masks as tm  # noqa: E402
from transient_masks import (  # noqa: E402
    _CELL_NX_PX, _CELL_NY_PX, CCD_NX, CCD_NY, HALF_MASKED_CCD, MAP_NX, MAP_NY, N_CCD,
    BadInputError, atomic_output, read_epochs, write_fits_rows,
)

__version__ = tm.__version__

__all__ = ["SIM_SOURCES", "SimTruth", "simulate", "simulate_to_file", "main"]

log = logging.getLogger("transient_sim")  # also when run as a script (__main__)

# ---- Populations

#: The sources of simulated events; the SOURCE column holds the index (code).
SIM_SOURCES = ("astro", "edge", "hot_column", "hot_spot", "ccd31_amp", "ccd46_bulb", "ccd41_ampB",
               "faint_column", "glow")
_SRC = {name: code for code, name in enumerate(SIM_SOURCES)}
#: Fraction of all exposure numbers of an epoch that were DES exposures
#: (about 80,000 DES exposures among the 412,959 expnums of the 14 epochs).
SIM_EXPOSURE_FRACTION = 0.194
#: Dead CCDs: CCDNUM -> (first dead night, last dead night or None) (FACTS.md;
#: CCD 2 died between 12 and 29 Nov 2013: the middle of that span is used).
SIM_DEAD_NIGHTS = {61: ("20121107", None), 2: ("20131120", "20161229")}
#: CCD 46 light bulb: first expnum, centre (x, y) in pixels, Gaussian sigma in pixels.
SIM_BULB = {"ccdnum": 46, "min_expnum": 674105, "centre": (795.0, 2620.0), "sigma": 200.0}
#: CCD 41 amp B (x 1025-2048 on an N CCD) charge-transfer problem from this expnum.
SIM_AMPB = {"ccdnum": 41, "min_expnum": 765533, "x_range": (1024.5, 2048.5)}
#: CCD 31 amp A (x 1025-2048), unstable all survey.
SIM_AMP31 = {"ccdnum": HALF_MASKED_CCD, "x_range": (1024.5, 2048.5)}

#: Cell edges in pixel coordinates: cell X spans 8X+1 <= x < 8X+9, except that
#: cell 0 starts at the CCD edge 0.5 and cell 255 ends at 2048.5 (y likewise).
_X_EDGES = np.r_[0.5, _CELL_NX_PX * np.arange(1, MAP_NX) + 1.0, CCD_NX + 0.5]
_Y_EDGES = np.r_[0.5, _CELL_NY_PX * np.arange(1, MAP_NY) + 1.0, CCD_NY + 0.5]


class SimTruth:
    """The expected counts per DES map cell of a simulation, to score masks.

    Attributes
    ----------
    epochs : list of str
    background : dict
        Epoch -> (62, 256, 256) float32: expected astrophysical transients per cell.
    excess : dict
        Epoch -> (62, 256, 256) float32: expected defect transients per cell
        (all defect sources together).
    n_exposures : dict
        Epoch -> number of simulated exposures.

    Examples
    --------
    >>> catalog, truth = simulate(["Y2E1"], seed=1, background=0.5)
    >>> ratio = truth.ratio("Y2E1")
    >>> ratio.shape
    (62, 256, 256)
    """

    def __init__(self):
        self.epochs = []
        self.background, self.excess, self.n_exposures = {}, {}, {}

    def ratio(self, epoch: str) -> np.ndarray:
        """Excess over background per cell (inf where only defects, 0 where neither)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = self.excess[epoch] / self.background[epoch]
        return np.where(self.excess[epoch] > 0, ratio, 0.0)

    def defect(self, epoch: str, min_excess: float = 0.0) -> np.ndarray:
        """Bool (62, 256, 256): cells whose expected defect excess exceeds ``min_excess``."""
        return self.excess[epoch] > min_excess


def _night_day(night: str) -> int:
    """Days since 1970 of a YYYYMMDD night string."""
    import datetime

    night = str(night).strip()
    return datetime.date(int(night[:4]), int(night[4:6]), int(night[6:8])).toordinal()


def _dead_expnum_ranges(row):
    """CCDNUM -> inclusive (lo, hi) expnum range during which it is dead in this epoch.

    Exposure numbers are taken as linear in time across the epoch's nights.
    """
    minexp, maxexp = int(row["MINEXPNUM"]), int(row["MAXEXPNUM"])
    if "MINNITE" not in row.colnames or "MAXNITE" not in row.colnames:
        return {61: (minexp, maxexp)}  # no nights: only the permanently dead CCD
    day0, day1 = _night_day(row["MINNITE"]), _night_day(row["MAXNITE"])

    def expnum_at(day):
        fraction = np.clip((day - day0) / max(day1 - day0, 1), 0.0, 1.0)
        return minexp + fraction * (maxexp - minexp)

    ranges = {}
    for ccdnum, (first, last) in SIM_DEAD_NIGHTS.items():
        start = _night_day(first)
        end = _night_day(last) if last else day1 + 1
        if start <= day1 and end >= day0:
            ranges[ccdnum] = (int(np.ceil(expnum_at(start))), int(np.floor(expnum_at(end))))
    return ranges


def _interval_overlap(edges, lo, hi):
    """Length of [lo, hi) inside each cell [edges[i], edges[i+1]), shape (K, n_cells)."""
    lo = np.asarray(lo, dtype=np.float64)[:, None]
    hi = np.asarray(hi, dtype=np.float64)[:, None]
    return np.clip(np.minimum(hi, edges[1:]) - np.maximum(lo, edges[:-1]), 0.0, None)


def _gauss_overlap(edges, centre, sigma):
    """Fraction of a 1D Gaussian inside each cell, shape (K, n_cells)."""
    from scipy.special import ndtr

    z = (edges[None, :] - np.asarray(centre, dtype=np.float64)[:, None]) / np.asarray(sigma)[:, None]
    return np.diff(ndtr(z), axis=1)


class _Components:
    """Defect components of one epoch: uniform rectangles and Gaussian blobs.

    Rectangles: density in events per pixel (over the epoch's exposures);
    Gaussians: the total expected events over the whole plane (off-CCD events
    are dropped, and the truth integrates the on-CCD part only).  Each component
    is active for the exposures with expnum in [min_expnum, max_expnum].
    """

    def __init__(self):
        self.rects = []  # (source, ccdnum, x0, x1, y0, y1, density, min_expnum)
        self.gausses = []  # (source, ccdnum, xc, yc, sigma, total, min_expnum)

    def rect(self, source, ccdnum, x0, x1, y0, y1, density, min_expnum=0):
        self.rects.append((_SRC[source], ccdnum, x0, x1, y0, y1, density, min_expnum))

    def gauss(self, source, ccdnum, xc, yc, sigma, total, min_expnum=0):
        self.gausses.append((_SRC[source], ccdnum, xc, yc, sigma, total, min_expnum))


def _camera_defects(seed, n_columns, n_spots, edge_fraction, edge_width, ratio_range):
    """The persistent defects of the simulated camera (the same for every epoch).

    Returns a dict of arrays per kind; amplitudes are excess/background ratios
    per fully covered map cell, drawn log-uniform in ``ratio_range``.
    """
    rng = np.random.default_rng([seed, 7919])
    log_lo, log_hi = np.log(ratio_range[0]), np.log(ratio_range[1])

    def ratios(size):
        return np.exp(rng.uniform(log_lo, log_hi, size))

    # Hot and warm columns: 1-3 px wide, from a start row to the readout edge
    # (y = 1 or y = 4096, per column); some with gaps.
    n_col = rng.poisson(n_columns, N_CCD)
    col_ccd = np.repeat(np.arange(1, N_CCD + 1), n_col)
    k = col_ccd.size
    col_x0 = rng.integers(1, CCD_NX - 2, k) - 0.5
    col_width = rng.choice([1, 2, 3], size=k, p=[0.6, 0.3, 0.1])
    col_length = rng.uniform(200.0, CCD_NY, k)
    col_bottom = rng.random(k) < 0.5  # readout at y = 1 (else y = 4096)
    col_gaps = np.where(rng.random(k) < 0.3, rng.integers(1, 4, k), 0)
    columns = dict(ccdnum=col_ccd, x0=col_x0, width=col_width, length=col_length,
                   bottom=col_bottom, gaps=col_gaps, ratio=ratios(k),
                   gap_seed=rng.integers(0, 2**31, k))
    # Compact hot spots of a few cells: Gaussian blobs.
    n_spot = rng.poisson(n_spots, N_CCD)
    spot_ccd = np.repeat(np.arange(1, N_CCD + 1), n_spot)
    k = spot_ccd.size
    spots = dict(ccdnum=spot_ccd, xc=rng.uniform(20, CCD_NX - 20, k),
                 yc=rng.uniform(40, CCD_NY - 40, k), sigma=rng.uniform(3.0, 12.0, k),
                 ratio=ratios(k))
    # Glowing edges: a band of the given width along some CCD edges.
    glows = rng.random((N_CCD, 4)) < edge_fraction
    ccd_idx, side = np.nonzero(glows)
    edges = dict(ccdnum=ccd_idx + 1, side=side, width=rng.uniform(*edge_width, side.size),
                 ratio=ratios(side.size))
    return {"columns": columns, "spots": spots, "edges": edges}


def _camera_extras(seed, n_faint_columns, n_glows, fade, n_defects):
    """The richer mix (off by default; its own random streams, so the default
    populations draw exactly what they drew before):

    - faint columns: Poisson(``n_faint_columns``) per CCD, 1 pixel wide,
      0.3x-1.5x the background, 300-4096 pixels long anywhere on the CCD;
    - glows across the amplifier boundary: Poisson(``n_glows``) on the whole
      camera, Gaussian (sigma 100-300 px) centred within 150 px of x = 1024.5,
      peak 0.5x-5x;
    - fading: each defect (of every kind above and of the default ones) lives
      from a start to an end epoch (in epoch-table order) with a two-epoch ramp
      in and out.
    """
    rng = np.random.default_rng([seed, 7919, 1])
    n_col = rng.poisson(n_faint_columns, N_CCD) if n_faint_columns else np.zeros(N_CCD, int)
    ccd = np.repeat(np.arange(1, N_CCD + 1), n_col)
    length = rng.uniform(300.0, CCD_NY, ccd.size)
    faint = dict(ccdnum=ccd, x0=rng.integers(1, CCD_NX, ccd.size) - 0.5, length=length,
                 y0=0.5 + rng.uniform(0, 1, ccd.size) * (CCD_NY - length),
                 ratio=np.exp(rng.uniform(np.log(0.3), np.log(1.5), ccd.size)))
    n = rng.poisson(n_glows) if n_glows else 0
    glows = dict(ccdnum=rng.integers(1, N_CCD + 1, n), xc=CCD_NX / 2 + 0.5 + rng.uniform(-150, 150, n),
                 yc=rng.uniform(300, CCD_NY - 300, n), sigma=rng.uniform(100, 300, n),
                 peak=np.exp(rng.uniform(np.log(0.5), np.log(5.0), n)))
    lives = None
    if fade:
        life = np.random.default_rng([seed, 7919, 2])
        total = n_defects + ccd.size + n
        start = life.uniform(-4.0, 14.0, total)
        lives = (start, start + life.uniform(2.0, 12.0, total))
    return {"faint": faint, "glows": glows, "lives": lives}


def _fade(lives, offset, size, epoch_index):
    """Amplitude factors (0..1) of ``size`` defects from ``offset`` in the lives list."""
    if lives is None:
        return np.ones(size)
    start, end = (a[offset:offset + size] for a in lives)
    return np.clip((epoch_index - start) / 2, 0, 1) * np.clip((end - epoch_index) / 2, 0, 1)


def _column_segments(x0, width, length, bottom, gaps, gap_seed):
    """The (y0, y1) segments of one hot column (the gaps cut out)."""
    y0, y1 = (0.5, 0.5 + length) if bottom else (CCD_NY + 0.5 - length, CCD_NY + 0.5)
    if not gaps:
        return [(y0, y1)]
    rng = np.random.default_rng(gap_seed)
    starts = np.sort(rng.uniform(y0, y1, gaps))
    ends = np.minimum(starts + rng.uniform(50.0, 400.0, gaps), y1)
    segments, cursor = [], y0
    for start, end in zip(starts, ends):
        if start > cursor:
            segments.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < y1:
        segments.append((cursor, y1))
    return segments


def _epoch_components(camera, rng, bg_density, min_expnum, active_fraction, epoch_index=0, extras_rng=None):
    """The defect components of one epoch, with its amplitudes."""
    comps = _Components()
    bg_cell = bg_density * _CELL_NX_PX * _CELL_NY_PX  # mean background per full cell
    extras = camera.get("extras") or {"faint": None, "glows": None, "lives": None}
    lives = extras["lives"]
    n_cols, n_spots = camera["columns"]["ccdnum"].size, camera["spots"]["ccdnum"].size
    # Persistent defects flicker: each is active in an epoch with probability
    # active_fraction and its amplitude varies by about 30% between epochs.
    cols = camera["columns"]
    on = rng.random(cols["ccdnum"].size) < active_fraction
    jitter = rng.lognormal(0.0, 0.3, cols["ccdnum"].size) * _fade(lives, 0, n_cols, epoch_index)
    for i in np.flatnonzero(on):
        ccd = int(cols["ccdnum"][i])
        # Per full cell: excess = ratio * background; a w px column fills w/8 of a cell's width.
        density = cols["ratio"][i] * jitter[i] * bg_cell[ccd - 1] / (cols["width"][i] * _CELL_NY_PX)
        x0 = cols["x0"][i]
        for y0, y1 in _column_segments(x0, cols["width"][i], cols["length"][i], cols["bottom"][i],
                                       cols["gaps"][i], cols["gap_seed"][i]):
            comps.rect("hot_column", ccd, x0, x0 + cols["width"][i], y0, y1, density)
    spots = camera["spots"]
    on = rng.random(spots["ccdnum"].size) < active_fraction
    jitter = rng.lognormal(0.0, 0.3, spots["ccdnum"].size) * _fade(lives, n_cols, n_spots, epoch_index)
    for i in np.flatnonzero(on):
        ccd = int(spots["ccdnum"][i])
        sigma = spots["sigma"][i]
        # Peak-cell excess ~ ratio * background: total spread over ~2 pi sigma^2 / 128 cells.
        n_cells = max(1.0, 2 * np.pi * sigma**2 / (_CELL_NX_PX * _CELL_NY_PX))
        total = spots["ratio"][i] * jitter[i] * bg_cell[ccd - 1] * n_cells
        comps.gauss("hot_spot", ccd, spots["xc"][i], spots["yc"][i], sigma, total)
    edges = camera["edges"]
    n_edges = edges["ccdnum"].size
    on = rng.random(n_edges) < active_fraction
    jitter = rng.lognormal(0.0, 0.3, n_edges) * _fade(lives, n_cols + n_spots, n_edges, epoch_index)
    for i in np.flatnonzero(on):
        ccd = int(edges["ccdnum"][i])
        width = edges["width"][i]
        density = edges["ratio"][i] * jitter[i] * bg_density[ccd - 1]
        lo_x, hi_x, lo_y, hi_y = 0.5, CCD_NX + 0.5, 0.5, CCD_NY + 0.5
        box = [(lo_x, lo_x + width, lo_y, hi_y), (hi_x - width, hi_x, lo_y, hi_y),
               (lo_x, hi_x, lo_y, lo_y + width), (lo_x, hi_x, hi_y - width, hi_y)][edges["side"][i]]
        comps.rect("edge", ccd, *box, density)
    # CCD 31: the right half (amp A) is unstable: 8 bands along y, each with its
    # own excess, 0.5x to 10x the background, redrawn every epoch.
    ccd = SIM_AMP31["ccdnum"]
    band_edges = np.linspace(0.5, CCD_NY + 0.5, 9)
    band_ratio = np.exp(rng.uniform(np.log(0.5), np.log(10.0), 8))
    for y0, y1, ratio in zip(band_edges[:-1], band_edges[1:], band_ratio):
        comps.rect("ccd31_amp", ccd, *SIM_AMP31["x_range"], y0, y1, ratio * bg_density[ccd - 1])
    # CCD 46 light bulb: a Gaussian glow, peak 3x-20x the background.
    ccd = SIM_BULB["ccdnum"]
    sigma = SIM_BULB["sigma"]
    peak = rng.uniform(3.0, 20.0) * bg_density[ccd - 1]
    comps.gauss("ccd46_bulb", ccd, *SIM_BULB["centre"], sigma, peak * 2 * np.pi * sigma**2,
                min_expnum=SIM_BULB["min_expnum"])
    # CCD 41 amp B: excess over the amplifier, growing away from the readout (y = 1)
    # in 4 bands, 0.5x to 8x the background.
    ccd = SIM_AMPB["ccdnum"]
    band_edges = np.linspace(0.5, CCD_NY + 0.5, 5)
    for y0, y1, ratio in zip(band_edges[:-1], band_edges[1:], np.geomspace(0.5, 8.0, 4)):
        comps.rect("ccd41_ampB", ccd, *SIM_AMPB["x_range"], y0, y1, ratio * bg_density[ccd - 1],
                   min_expnum=SIM_AMPB["min_expnum"])
    faint, glows = extras["faint"], extras["glows"]
    if faint is not None and faint["ccdnum"].size:
        offset = n_cols + n_spots + n_edges
        amplitude = extras_rng.lognormal(0.0, 0.3, faint["ccdnum"].size) * _fade(
            lives, offset, faint["ccdnum"].size, epoch_index)
        for i in np.flatnonzero(extras_rng.random(faint["ccdnum"].size) < active_fraction):
            ccd = int(faint["ccdnum"][i])
            density = faint["ratio"][i] * amplitude[i] * bg_cell[ccd - 1] / _CELL_NY_PX  # 1 px wide
            comps.rect("faint_column", ccd, faint["x0"][i], faint["x0"][i] + 1.0, faint["y0"][i],
                       faint["y0"][i] + faint["length"][i], density)
    if glows is not None and glows["ccdnum"].size:
        offset = n_cols + n_spots + n_edges + (0 if faint is None else faint["ccdnum"].size)
        amplitude = extras_rng.lognormal(0.0, 0.3, glows["ccdnum"].size) * _fade(
            lives, offset, glows["ccdnum"].size, epoch_index)
        for i in range(glows["ccdnum"].size):
            ccd, sigma = int(glows["ccdnum"][i]), glows["sigma"][i]
            peak = glows["peak"][i] * amplitude[i] * bg_density[ccd - 1]
            comps.gauss("glow", ccd, glows["xc"][i], glows["yc"][i], sigma, peak * 2 * np.pi * sigma**2)
    return comps


def _linear_sample(u01, gradient):
    """Inverse CDF of a density prop. to 1 + g t on t in [-1, 1], for uniform u01."""
    g = np.asarray(gradient, dtype=np.float64)
    small = np.abs(g) < 1e-9
    g_safe = np.where(small, 1.0, g)
    # CDF: F(t) = ((t + 1) + g (t^2 - 1) / 2) / 2; solve g/2 t^2 + t + (1 - g/2 - 2F) = 0.
    disc = 1.0 - 2.0 * g_safe * (1.0 - g_safe / 2.0 - 2.0 * u01)
    t = (-1.0 + np.sqrt(np.maximum(disc, 0.0))) / g_safe
    return np.clip(np.where(small, 2.0 * u01 - 1.0, t), -1.0, 1.0)


def _simulate_epoch(row, rng, camera, *, background, n_exposures, rate_scatter, epoch_scatter,
                    gradient, active_fraction, position_dtype, epoch_index=0, extras_rng=None):
    """Events and truth of one epoch: (dict of columns, background cube, excess cube, n_exp)."""
    minexp, maxexp = int(row["MINEXPNUM"]), int(row["MAXEXPNUM"])
    n_range = maxexp - minexp + 1
    if n_exposures is None:
        n_exposures = max(1, int(round(SIM_EXPOSURE_FRACTION * n_range)))
    n_exposures = int(n_exposures)  # checked by _sim_rows: at most n_range
    expnums = np.sort(rng.choice(n_range, size=n_exposures, replace=False)) + minexp
    # Background density per pixel per CCD: rate scatter between CCDs and epochs.
    ccd_factor = rng.lognormal(0.0, rate_scatter, N_CCD)
    epoch_factor = rng.lognormal(0.0, epoch_scatter)
    bg_density = background / (_CELL_NX_PX * _CELL_NY_PX) * ccd_factor * epoch_factor
    gx = rng.uniform(-gradient, gradient, N_CCD)
    gy = rng.uniform(-gradient, gradient, N_CCD)

    # Truth of the astrophysical background: separable linear gradients, exact per cell.
    x_mid = (_X_EDGES[1:] + _X_EDGES[:-1]) / 2
    y_mid = (_Y_EDGES[1:] + _Y_EDGES[:-1]) / 2
    tx = (x_mid - (CCD_NX + 1) / 2) / (CCD_NX / 2)
    ty = (y_mid - (CCD_NY + 1) / 2) / (CCD_NY / 2)
    ix = np.diff(_X_EDGES)[None, :] * (1 + gx[:, None] * tx[None, :])  # (62, 256)
    iy = np.diff(_Y_EDGES)[None, :] * (1 + gy[:, None] * ty[None, :])
    bg_truth = bg_density[:, None, None] * iy[:, :, None] * ix[:, None, :]
    excess = np.zeros_like(bg_truth)

    # Astrophysical events.
    n_astro = rng.poisson(bg_density * CCD_NX * CCD_NY)
    ccd_of = np.repeat(np.arange(1, N_CCD + 1), n_astro)
    parts = [(
        np.full(ccd_of.size, _SRC["astro"], np.uint8), ccd_of,
        (CCD_NX + 1) / 2 + (CCD_NX / 2) * _linear_sample(rng.random(ccd_of.size), gx[ccd_of - 1]),
        (CCD_NY + 1) / 2 + (CCD_NY / 2) * _linear_sample(rng.random(ccd_of.size), gy[ccd_of - 1]),
        np.zeros(ccd_of.size, np.int64),
    )]
    comps = _epoch_components(camera, rng, bg_density, minexp, active_fraction, epoch_index, extras_rng)

    def active_fraction_of(min_expnum):
        return np.count_nonzero(expnums >= min_expnum) / expnums.size

    if comps.rects:
        src, ccd, x0, x1, y0, y1, density, min_e = (np.array(a) for a in zip(*comps.rects))
        frac = np.array([active_fraction_of(m) for m in np.unique(min_e)])[
            np.searchsorted(np.unique(min_e), min_e)]
        expected = density * (x1 - x0) * (y1 - y0) * frac
        ox = _interval_overlap(_X_EDGES, x0, x1)
        oy = _interval_overlap(_Y_EDGES, y0, y1)
        for k in range(src.size):  # a loop over defects, not events
            xs = np.flatnonzero(ox[k])
            ys = np.flatnonzero(oy[k])
            if xs.size and ys.size:
                excess[ccd[k] - 1, ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1] += (
                    density[k] * frac[k] * np.outer(oy[k, ys[0]:ys[-1] + 1], ox[k, xs[0]:xs[-1] + 1]))
        n = rng.poisson(expected)
        rep = np.repeat(np.arange(src.size), n)
        parts.append((src[rep].astype(np.uint8), ccd[rep],
                      x0[rep] + (x1 - x0)[rep] * rng.random(rep.size),
                      y0[rep] + (y1 - y0)[rep] * rng.random(rep.size), min_e[rep]))
    if comps.gausses:
        src, ccd, xc, yc, sigma, total, min_e = (np.array(a) for a in zip(*comps.gausses))
        frac = np.array([active_fraction_of(m) for m in min_e])
        ox = _gauss_overlap(_X_EDGES, xc, sigma)
        oy = _gauss_overlap(_Y_EDGES, yc, sigma)
        for k in range(src.size):
            excess[ccd[k] - 1] += total[k] * frac[k] * np.outer(oy[k], ox[k])
        n = rng.poisson(total * frac)
        rep = np.repeat(np.arange(src.size), n)
        parts.append((src[rep].astype(np.uint8), ccd[rep],
                      xc[rep] + sigma[rep] * rng.standard_normal(rep.size),
                      yc[rep] + sigma[rep] * rng.standard_normal(rep.size), min_e[rep]))
    source, ccdnum, x, y, min_e = (np.concatenate(a) for a in zip(*parts))
    ccdnum = ccdnum.astype(np.int16)
    # Exposure of each event: uniform over the epoch's exposures from the
    # component's first active expnum on.
    first = np.searchsorted(expnums, min_e)
    exposure = first + (rng.random(first.size) * (expnums.size - first)).astype(np.int64)
    expnum = expnums[exposure]
    keep = (x >= 0.5) & (x < CCD_NX + 0.5) & (y >= 0.5) & (y < CCD_NY + 0.5)
    # Dead CCDs lose every event of their dead exposures.
    for dead_ccd, (lo, hi) in _dead_expnum_ranges(row).items():
        keep &= ~((ccdnum == dead_ccd) & (expnum >= lo) & (expnum <= hi))
        alive = 1.0 - np.count_nonzero((expnums >= lo) & (expnums <= hi)) / expnums.size
        bg_truth[dead_ccd - 1] *= alive
        excess[dead_ccd - 1] *= alive
    x = x[keep].astype(position_dtype)
    y = y[keep].astype(position_dtype)
    # float32 rounding must not push an event off the CCD.
    np.clip(x, 0.5, np.nextafter(position_dtype(CCD_NX + 0.5), position_dtype(0)), out=x)
    np.clip(y, 0.5, np.nextafter(position_dtype(CCD_NY + 0.5), position_dtype(0)), out=y)
    columns = {"EXPNUM": expnum[keep].astype(np.int32), "CCDNUM": ccdnum[keep], "XWIN_IMAGE": x,
               "YWIN_IMAGE": y, "SOURCE": source[keep]}
    # Order by exposure, as DES catalogs are (a 16-bit key sorts by radix: fast).
    exposure = exposure[keep]
    order = np.argsort(exposure.astype(np.uint16) if expnums.size <= 65536 else exposure, kind="stable")
    columns = {name: values[order] for name, values in columns.items()}
    return columns, bg_truth.astype(np.float32), excess.astype(np.float32), n_exposures


def _sim_rows(epochs, epoch_table, n_exposures=None):
    """The epoch-table rows of the named epochs, with their table index.

    Refuses an unknown or repeated epoch, and ``n_exposures`` more than an
    epoch's expnum range holds (the exposures are distinct expnums of it).
    """
    table = read_epochs(epoch_table)
    names = list(table["NAME"])
    if isinstance(epochs, str):
        epochs = [epochs]
    if n_exposures is not None:
        n_exposures = tm._check_int("n_exposures", n_exposures, lo=1)
    rows = []
    for name in epochs:
        if name not in names:
            raise BadInputError(f"epoch {name!r}: not in the epoch table ({', '.join(names)})")
        index = names.index(name)
        if any(index == seen for seen, _ in rows):
            raise BadInputError(f"epoch {name!r}: given more than once (each epoch is simulated once)")
        row = table[index]
        if n_exposures is not None:
            minexp, maxexp = int(row["MINEXPNUM"]), int(row["MAXEXPNUM"])
            if n_exposures > maxexp - minexp + 1:
                raise BadInputError(
                    f"{n_exposures} exposures per epoch: more than epoch {name} holds (at most "
                    f"{maxexp - minexp + 1}, the expnums {minexp}..{maxexp})")
        rows.append((index, row))
    if not rows:
        raise BadInputError("simulate: no epoch given")
    return rows


def _iter_simulation(epochs, *, seed, background, n_exposures, epoch_table, rate_scatter,
                     epoch_scatter, gradient, n_columns, n_spots, edge_fraction, edge_width,
                     ratio_range, active_fraction, position_dtype, n_faint_columns=0.0, n_glows=0.0,
                     fade=False):
    """Yield (name, columns, background, excess, n_exposures) epoch by epoch."""
    _check_simulation(seed, background)
    if not 0 < ratio_range[0] <= ratio_range[1]:
        raise BadInputError(f"ratio_range={ratio_range}: must be 0 < low <= high")
    camera = _camera_defects(seed, n_columns, n_spots, edge_fraction, edge_width, ratio_range)
    if n_faint_columns or n_glows or fade:
        n_defects = sum(camera[kind]["ccdnum"].size for kind in ("columns", "spots", "edges"))
        camera["extras"] = _camera_extras(seed, n_faint_columns, n_glows, fade, n_defects)
    for index, row in _sim_rows(epochs, epoch_table, n_exposures):
        # One stream per (seed, epoch): an epoch's events do not depend on the
        # other epochs requested.
        rng = np.random.default_rng([seed, index])
        columns, bg, excess, n_exp = _simulate_epoch(
            row, rng, camera, background=background, n_exposures=n_exposures,
            rate_scatter=rate_scatter, epoch_scatter=epoch_scatter, gradient=gradient,
            active_fraction=active_fraction, position_dtype=position_dtype, epoch_index=index,
            extras_rng=np.random.default_rng([seed, index, 1]))
        yield str(row["NAME"]), columns, bg, excess, n_exp


#: Largest mean background per cell per epoch: about 4e8 events, 7 GB, per epoch.
SIM_MAX_BACKGROUND = 100.0


def _check_simulation(seed, background):
    """Refuse a seed or background the generator cannot use, in one line."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BadInputError(f"seed={seed!r}: must be a non-negative integer")
    try:
        background = float(background)
    except (TypeError, ValueError):
        raise BadInputError(f"background={background!r}: must be a number") from None
    if not 0 < background <= SIM_MAX_BACKGROUND:
        raise BadInputError(f"background={background}: must be positive and at most "
                            f"{SIM_MAX_BACKGROUND:g} transients per cell per epoch")


def _sim_meta(epochs, seed, background):
    meta = {"SIMSEED": seed, "SIMBKG": background, "SIMEPOCH": ",".join(epochs)[:68],
            "SIMVERS": __version__}
    for code, name in enumerate(SIM_SOURCES):
        meta[f"SRC{code}"] = name
    return meta


def simulate(epochs=("Y2E1",), *, seed: int = 0, background: float = 3.0, n_exposures: int = None,
             epoch_table=None, rate_scatter: float = 0.15, epoch_scatter: float = 0.1,
             gradient: float = 0.2, n_columns: float = 1.5, n_spots: float = 1.0,
             edge_fraction: float = 0.3, edge_width=(5.0, 15.0), ratio_range=(0.3, 30.0),
             active_fraction: float = 0.85, position_dtype=np.float32, n_faint_columns: float = 0.0,
             n_glows: float = 0.0, fade: bool = False):
    """Simulate a DES transient catalog for chosen epochs, and its truth per cell.

    Populations (``SOURCE`` code in brackets, see `SIM_SOURCES`):

    - astrophysical transients [0 "astro"]: uniform on the array with a mean of
      ``background`` events per 8 x 16 pixel cell per epoch, times a per-CCD
      factor (log-normal, sigma ``rate_scatter``) and a per-epoch factor
      (log-normal, sigma ``epoch_scatter``), with a linear gradient across each
      CCD of up to +-``gradient`` along x and y (separable);
    - glowing edges [1 "edge"]: each CCD edge glows with probability
      ``edge_fraction``: a band ``edge_width`` (uniform, pixels) wide with an
      excess density of ratio x the background;
    - hot and warm columns [2 "hot_column"]: Poisson(``n_columns``) per CCD,
      1-3 px wide, from a random row to the readout edge (y = 1 or 4096), 30%
      with 1-3 gaps of 50-400 px; a cell holding the column gets ratio x its
      background;
    - hot spots [3 "hot_spot"]: Poisson(``n_spots``) per CCD, Gaussian blobs of
      sigma 3-12 px covering a few cells, peak cell about ratio x background;
    - CCD 31 amp A [4 "ccd31_amp"]: the right half (x 1025-2048), 8 bands along
      y each with an excess of 0.5x-10x the background, redrawn every epoch;
    - CCD 46 light bulb [5 "ccd46_bulb"]: for expnum >= 674105, a Gaussian glow
      (sigma 200 px) at (795, 2620), peak 3x-20x the background;
    - CCD 41 amp B [6 "ccd41_ampB"]: for expnum >= 765533, x 1025-2048, 4 bands
      from 0.5x (at the readout, y = 1) to 8x the background;
    - dead CCDs: CCD 61 from 2012-11-07 and CCD 2 from 2013-11-20 to 2016-12-29
      (`SIM_DEAD_NIGHTS`) lose every event of those exposures (expnums are taken
      linear in time across an epoch's nights).

    A richer mix, off by default (off, the catalog is the default one bit for
    bit; on, its defects are drawn from their own random streams, so the
    default defects keep their places and amplitudes, though their events are
    drawn anew):

    - faint columns [7 "faint_column"]: Poisson(``n_faint_columns``) per CCD,
      1 pixel wide, 0.3x-1.5x the background, 300-4096 px long anywhere;
    - glows across the amplifier boundary [8 "glow"]: Poisson(``n_glows``) on
      the camera, Gaussian (sigma 100-300 px) within 150 px of x = 1024.5,
      peak 0.5x-5x;
    - ``fade``: every column, spot, edge and extra defect lives from a start to
      an end epoch (epoch-table order) with a two-epoch ramp in and out.

    The ratio of each column, spot and edge is log-uniform in ``ratio_range``
    (0.3x to 30x by default).  The defects belong to the camera (the same for
    every epoch of one seed); each is active in an epoch with probability
    ``active_fraction``, and its amplitude varies by about 30% between epochs.
    Every event falls on an exposure of its epoch: ``n_exposures`` distinct
    expnums drawn in MINEXPNUM..MAXEXPNUM (default 19.4% of them, as DES had
    about 80,000 exposures).

    Parameters
    ----------
    epochs : str or sequence of str
        Epoch names of the epoch table, each at most once.
    seed : int
        Seed; the same seed gives the same catalog, and an epoch's events do
        not depend on which other epochs are simulated.
    background : float
        Mean astrophysical transients per DES map cell (8 x 16 px) per epoch.
    n_exposures : int, optional
        Exposures per epoch: distinct expnums, so at most the epoch's
        MAXEXPNUM - MINEXPNUM + 1 (more is refused).
    epoch_table : str or astropy.table.Table, optional
        Default: the shipped DES table.
    rate_scatter, epoch_scatter, gradient, n_columns, n_spots, edge_fraction,
    edge_width, ratio_range, active_fraction, n_faint_columns, n_glows, fade
        Population parameters (above).
    position_dtype : numpy dtype
        Of XWIN_IMAGE / YWIN_IMAGE (float32 halves the memory; float64 works).

    Returns
    -------
    (astropy.table.Table, SimTruth)
        The catalog (EXPNUM int32, CCDNUM int16, XWIN_IMAGE, YWIN_IMAGE
        continuous FITS 1-indexed positions on the CCD, SOURCE uint8), sorted by
        EXPNUM, with the seed and the source names in its meta; and the
        expected background and defect excess per map cell of each epoch.

    Examples
    --------
    >>> catalog, truth = simulate("Y2E1", seed=3, background=0.2)
    >>> catalog.colnames
    ['EXPNUM', 'CCDNUM', 'XWIN_IMAGE', 'YWIN_IMAGE', 'SOURCE']
    >>> bool((catalog["CCDNUM"] == 2).any())          # CCD 2 is dead in Y2E1
    False
    >>> truth.excess["Y2E1"].shape
    (62, 256, 256)
    """
    from astropy.table import Table

    epochs = [epochs] if isinstance(epochs, str) else list(epochs)
    truth = SimTruth()
    blocks = []
    for name, columns, bg, excess, n_exp in _iter_simulation(
            epochs, seed=seed, background=background, n_exposures=n_exposures,
            epoch_table=epoch_table, rate_scatter=rate_scatter, epoch_scatter=epoch_scatter,
            gradient=gradient, n_columns=n_columns, n_spots=n_spots, edge_fraction=edge_fraction,
            edge_width=edge_width, ratio_range=ratio_range, active_fraction=active_fraction,
            position_dtype=position_dtype, n_faint_columns=n_faint_columns, n_glows=n_glows, fade=fade):
        blocks.append(columns)
        truth.epochs.append(name)
        truth.background[name], truth.excess[name], truth.n_exposures[name] = bg, excess, n_exp
    catalog = Table({name: np.concatenate([block[name] for block in blocks]) for name in blocks[0]},
                    meta=_sim_meta(epochs, seed, background))
    return catalog, truth


def simulate_to_file(path: str, epochs=("Y2E1",), *, seed: int = 0, background: float = 3.0,
                     n_exposures: int = None, epoch_table=None, overwrite: bool = False) -> int:
    """Simulate (see `simulate`) straight into a catalog file; returns the rows written.

    A FITS file (``.fits``) is written epoch by epoch, so memory holds one
    epoch; other formats are built whole and written by astropy.

    Examples
    --------
    >>> simulate_to_file("sim.fits", ["Y2E1", "Y6"], seed=42, background=0.05)
    382223
    """
    epochs = [epochs] if isinstance(epochs, str) else list(epochs)
    options = dict(seed=seed, background=background, n_exposures=n_exposures,
                   epoch_table=epoch_table)
    # Everything that can be refused is refused before the (long) simulation.
    if epoch_table is None or isinstance(epoch_table, str):  # the epoch table read is an input too
        tm.check_output(path, overwrite, [epoch_table or tm.data_path(tm.EPOCHS_FILENAME)])
    else:
        tm.check_output(path, overwrite)
    fmt = tm.table_format_of(path)
    _check_simulation(seed, background)
    _sim_rows(epochs, epoch_table, n_exposures)
    if fmt == "fits" and not path.lower().endswith(".gz"):
        defaults = dict(rate_scatter=0.15, epoch_scatter=0.1, gradient=0.2, n_columns=1.5,
                        n_spots=1.0, edge_fraction=0.3, edge_width=(5.0, 15.0),
                        ratio_range=(0.3, 30.0), active_fraction=0.85, position_dtype=np.float32)
        blocks = (columns for _, columns, _, _, _ in _iter_simulation(epochs, **options, **defaults))
        meta = _sim_meta(epochs, seed, background)
        cards = [(key, value, "") for key, value in meta.items()]
        return write_fits_rows(path, blocks, header_cards=cards, overwrite=overwrite)
    catalog, _ = simulate(epochs, **options)
    with atomic_output(path, overwrite=overwrite) as tmp:
        try:
            catalog.write(tmp, format=fmt)
        except Exception as exc:  # astropy's writers raise many types
            raise BadInputError(f"{path}: cannot write a {fmt} table ({tm._one_line(exc)})") from None
    return len(catalog)


# ---- Command line


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``transient_sim.py``."""
    parser = tm._ArgumentParser(
        prog="transient_sim.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("catalog", metavar="CATALOG",
                        help="output catalog (.fits streams epoch by epoch; .parquet, .csv, .ecsv)")
    parser.add_argument("--epochs", nargs="+", default=["Y2E1"], metavar="EPOCH",
                        help="epochs to simulate (default Y2E1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--background", type=float, default=3.0,
                        help="mean astrophysical transients per 8x16 px cell per epoch (default 3)")
    parser.add_argument("--exposures", type=tm._positive_int, default=None,
                        help="exposures per epoch (default: 19.4%% of the epoch's expnums)")
    parser.add_argument("--epochs_file", metavar="FILE",
                        help=f"DES epoch table (default: the shipped {tm.EPOCHS_FILENAME})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing catalog")
    return parser


def _run(args) -> int:
    n_rows = simulate_to_file(
        args.catalog, args.epochs, seed=args.seed, background=args.background,
        n_exposures=args.exposures, epoch_table=args.epochs_file, overwrite=args.overwrite)
    print(f"wrote {args.catalog}: {n_rows} simulated transients in {', '.join(args.epochs)} "
          f"(seed {args.seed})", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    """Run the command line; returns the exit code (see `transient_masks.run_cli`)."""
    return tm.run_cli(build_parser(), _run, argv, prog="transient_sim")


if __name__ == "__main__":
    sys.exit(main())
