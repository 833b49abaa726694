#!/usr/bin/env python
"""Mask the DECam regions where DES sees a significant excess of transients.

True astrophysical transients land at random places on the Dark Energy Camera;
spurious ones made by CCD defects (hot columns, glowing edges, bad amplifiers)
cluster in pixel coordinates.  This module turns per-epoch histograms of DES
transient detections on the 62 DECam science CCDs (the "count maps") into masks
of the cells with a statistically significant excess, and uses them.

Examples
--------
Write the full-resolution masks of one epoch (one 2048 x 4096 uint8 image per
CCD, 1 = masked) as a tile-compressed multi-extension FITS file::

    $ ./transient_masks.py --epoch Y2E1
    $ ./transient_masks.py --epoch Y2E1 --fp_rate 1e-5 -o y2e1_masks.fits.fz

Drop the events of a catalog that fall in a masked region of their epoch::

    $ ./transient_masks.py --input events.fits
    $ ./transient_masks.py --input events.csv --x_col X_IMAGE --y_col Y_IMAGE -o clean.csv

Use the real DES maps (``y6a1_transient_maps.fits.gz``) when you have them; without
them the bundled synthetic demo maps are used, and every output says so::

    $ ./transient_masks.py --counts /data/y6a1_transient_maps.fits.gz --epoch Y6

From Python::

    >>> import transient_masks as tm
    >>> maps = tm.CountMaps()                       # doctest: +SKIP
    >>> mask = tm.EpochMask.from_maps(maps, "Y2E1")  # doctest: +SKIP
    >>> mask.apply(ccdnum, x, y)                     # doctest: +SKIP
"""
import argparse
import contextlib
import logging
import os
import site
import sys
import tempfile

import numpy as np

__version__ = "0.1.0"

__all__ = [
    "BadInputError",
    "read_epochs",
    "epoch_index",
]

log = logging.getLogger(__name__)

# ---- Constants

N_CCD = 62
CCD_NX = 2048  # pixels along x (columns) of a DECam science CCD
CCD_NY = 4096  # pixels along y (rows)
MAP_NX = 256  # cells along x in the DES count maps (8 pixels each)
MAP_NY = 256  # cells along y in the DES count maps (16 pixels each)

#: CCDNUM ranges of the DECam DETPOS names (S29-S31, S25-S28, ... N1-N31).
_DETPOS_RANGES = [
    (1, 3, "S", 29), (4, 7, "S", 25), (8, 12, "S", 20), (13, 18, "S", 14),
    (19, 24, "S", 8), (25, 31, "S", 1), (32, 62, "N", 1),
]
DETPOS = {
    ccdnum: f"{side}{first + ccdnum - lo}"
    for lo, hi, side, first in _DETPOS_RANGES
    for ccdnum in range(lo, hi + 1)
}

#: CCD 31 (S7): amp A, the right half (x 1025-2048), is unstable; the DES rule
#: takes its statistics from the left half only and masks the right half.
HALF_MASKED_CCD = 31

#: DES image mask bits (BADPIX values of mask_bits.h).
MASK_BITS = {
    "BPM": 1, "SATURATE": 2, "INTERP": 4, "BADAMP": 8, "CRAY": 16, "STAR": 32,
    "TRAIL": 64, "EDGEBLEED": 128, "SSXTALK": 256, "EDGE": 512, "STREAK": 1024,
    "SUSPECT": 2048, "FIXED": 4096, "NEAREDGE": 8192, "TAPEBUMP": 16384,
}

DEFAULT_FP_RATE = 1e-4
FLOORS = ("median", "mean")
DEFAULT_FLOOR = "median"

EPOCHS_FILENAME = "ops_epochs.fits"
REAL_COUNTS_FILENAME = "y6a1_transient_maps.fits.gz"
DEMO_COUNTS_FILENAME = "demo_transient_maps.fits.gz"
CCDS_FILENAME = "decam_ccds.csv"

DEFAULT_COLUMNS = {"expnum": "EXPNUM", "ccdnum": "CCDNUM", "x": "XWIN_IMAGE", "y": "YWIN_IMAGE"}


class BadInputError(ValueError):
    """Bad input from the user: a file, column or value that cannot be used.

    The message is one line and names the file, column or value.  The command
    line turns it into exit code 2.
    """


# ---- Files and data


def data_path(filename: str) -> str:
    """Path of one of the data files shipped with transient_masks.

    Looks beside this module (a clone or an editable install), then in
    ``<prefix>/share/transient_masks`` where a wheel puts its data files.

    Raises
    ------
    FileNotFoundError
        When the file is in none of those places.
    """
    places = [os.path.dirname(os.path.abspath(__file__))]
    for prefix in (sys.prefix, getattr(site, "USER_BASE", None) or ""):
        places.append(os.path.join(prefix, "share", "transient_masks"))
    for place in places:
        path = os.path.join(place, filename)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{filename}: not found in {', '.join(places)}")


@contextlib.contextmanager
def atomic_output(path: str, overwrite: bool = False, inputs=()):
    """Context manager giving a temporary path that becomes ``path`` on success.

    The temporary file is in the same directory, so the final rename is atomic:
    a crash or an exception leaves no half-written output.

    Parameters
    ----------
    path : str
        The final output path.
    overwrite : bool
        Whether an existing ``path`` may be replaced.
    inputs : iterable of str
        Input files that ``path`` must not be (never write over an input).
    """
    final = os.path.abspath(path)
    for name in inputs:
        if os.path.exists(name) and os.path.exists(final) and os.path.samefile(name, final):
            raise BadInputError(f"{path}: refusing to write over the input file")
        if os.path.abspath(name) == final:
            raise BadInputError(f"{path}: refusing to write over the input file")
    if os.path.exists(final) and not overwrite:
        raise BadInputError(f"{path}: output exists (use --overwrite to replace it)")
    directory = os.path.dirname(final)
    if not os.path.isdir(directory):
        raise BadInputError(f"{path}: output directory {directory} does not exist")
    # Keep the final suffix so that writers that choose a format by extension
    # (astropy Table.write, savefig) see the right one.
    base = os.path.basename(final)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{base}.", suffix=f".tmp{_suffix(base)}")
    os.close(fd)
    os.unlink(tmp)  # writers that refuse to overwrite get a free name
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _suffix(filename: str) -> str:
    """The format-bearing suffix of a file name: '.fits.gz', '.csv', ''."""
    name = filename.lower()
    for compressed in (".gz", ".bz2", ".xz", ".fz"):
        if name.endswith(compressed):
            stem = filename[: -len(compressed)]
            return os.path.splitext(stem)[1] + filename[-len(compressed):]
    return os.path.splitext(filename)[1]


# ---- Epochs


def read_epochs(path: str = None):
    """Read the DES epoch table (OPS_EPOCH format).

    Parameters
    ----------
    path : str, optional
        A FITS table with columns NAME, MINNITE, MAXNITE, MINEXPNUM, MAXEXPNUM.
        Default: the ``ops_epochs.fits`` shipped with transient_masks.

    Returns
    -------
    astropy.table.Table
        The table sorted by MINEXPNUM, NAME as str.

    Examples
    --------
    >>> epochs = read_epochs()
    >>> list(epochs["NAME"][:3])
    ['SVE1', 'SVE2', 'Y1E1']
    """
    from astropy.table import Table

    path = path or data_path(EPOCHS_FILENAME)
    try:
        epochs = Table.read(path, hdu=1)
    except (OSError, ValueError, IndexError) as exc:
        raise BadInputError(f"{path}: cannot read the epoch table ({exc})") from None
    missing = {"NAME", "MINEXPNUM", "MAXEXPNUM"} - set(epochs.colnames)
    if missing:
        raise BadInputError(f"{path}: epoch table lacks column(s) {', '.join(sorted(missing))}")
    epochs["NAME"] = np.char.strip(np.asarray(epochs["NAME"]).astype(str))
    epochs.sort("MINEXPNUM")
    return epochs


def epoch_index(expnum, minexp, maxexp):
    """Index of the epoch of each exposure number; -1 where it is in no epoch.

    Overlapping epochs (DES Y4E1.5 and Y4E2 share expnums 605796..605988) are
    resolved by giving an exposure to the epoch that began last, i.e. the one
    with the largest MINEXPNUM not above it.  Exposures between epochs belong to
    none.

    Parameters
    ----------
    expnum : array_like of int
        Exposure numbers.
    minexp, maxexp : array_like of int
        Inclusive expnum range of each epoch, sorted by ``minexp``.

    Returns
    -------
    numpy.ndarray of int
        Same shape as ``expnum``.

    Examples
    --------
    >>> epoch_index([5, 15, 25, 35], minexp=[10, 20, 30], maxexp=[18, 32, 40])
    array([-1,  0,  1,  2])
    """
    expnum = np.asarray(expnum)
    minexp = np.asarray(minexp)
    maxexp = np.asarray(maxexp)
    index = np.searchsorted(minexp, expnum, side="right") - 1
    inside = (index >= 0) & (expnum <= maxexp[np.maximum(index, 0)])
    return np.where(inside, index, -1)


# ---- Count maps

# ---- Epoch masks

# ---- All epochs

# ---- Filtering event tables

# ---- Gathering count maps from a catalog

# (issue 3) gather_data and its CLI hooks live here.


def _add_gather_arguments(parser, modes):
    """Add the --gather mode and its options to the command-line parser."""


def _run_gather(args) -> int:
    raise NotImplementedError("--gather")


# ---- Simulation

# (issue 3) simulate, the truth companion and their CLI hooks live here.


def _add_simulate_arguments(parser, modes):
    """Add the --simulate mode and its options to the command-line parser."""


def _run_simulate(args) -> int:
    raise NotImplementedError("--simulate")


# ---- Plotting

# Figures are built with matplotlib.figure.Figure (never pyplot): nothing needs a
# display, no global state leaks, and `import transient_masks` stays fast because
# matplotlib is imported only inside these functions.

_CCD_WIDTH_MM = CCD_NX * 0.015  # 15 um pixels: 30.72 mm along x
_CCD_HEIGHT_MM = CCD_NY * 0.015  # 61.44 mm along y
_MASK_RGBA = (0.93, 0.0, 0.55, 0.45)  # masked-cell overlay: translucent magenta
_MASK_EDGE = (0.93, 0.0, 0.55, 1.0)  # and its outline
_DEAD_RGBA = (0.80, 0.80, 0.80, 1.0)


def read_ccd_layout(path: str = None):
    """Read the DECam layout: the 62 science CCDs and their focal-plane centres.

    Parameters
    ----------
    path : str, optional
        A CSV file with columns ccdnum, detpos, x_center_mm, y_center_mm (lines
        starting with ``#`` are comments).  Default: the ``decam_ccds.csv``
        shipped with transient_masks.

    Returns
    -------
    astropy.table.Table
        Columns CCDNUM, DETPOS, X_CENTER_MM, Y_CENTER_MM; one row per CCD in
        CCDNUM order 1..62.

    Examples
    --------
    >>> layout = read_ccd_layout()
    >>> row = layout[34]
    >>> str(row["DETPOS"]), float(row["X_CENTER_MM"]), float(row["Y_CENTER_MM"])
    ('N4', 16.908, 0.0)
    """
    import csv

    from astropy.table import Table

    path = path or data_path(CCDS_FILENAME)
    try:
        with open(path, newline="") as stream:
            rows = list(csv.DictReader(line for line in stream if not line.startswith("#")))
        layout = Table(
            {
                "CCDNUM": np.array([int(row["ccdnum"]) for row in rows]),
                "DETPOS": np.array([row["detpos"].strip() for row in rows]),
                "X_CENTER_MM": np.array([float(row["x_center_mm"]) for row in rows]),
                "Y_CENTER_MM": np.array([float(row["y_center_mm"]) for row in rows]),
            }
        )
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise BadInputError(f"{path}: cannot read the CCD layout ({type(exc).__name__}: {exc})") from None
    layout.sort("CCDNUM")
    if list(layout["CCDNUM"]) != list(range(1, N_CCD + 1)):
        raise BadInputError(f"{path}: the CCD layout must list CCDNUM 1..{N_CCD} once each")
    return layout


def _epoch_mask_for(epoch_mask_or_epoch, maps, fp_rate, x_bin, y_bin, floor):
    """An EpochMask as given, or built for an epoch name from the count maps."""
    if not isinstance(epoch_mask_or_epoch, str):
        return epoch_mask_or_epoch
    maps = maps if maps is not None else CountMaps()
    epoch = epoch_mask_or_epoch
    if epoch not in maps.epochs:
        raise BadInputError(
            f"{maps.path}: no epoch {epoch!r} in the count maps (they have {', '.join(maps.epochs) or 'none'})"
        )
    return EpochMask.from_maps(maps, epoch, fp_rate=fp_rate, x_bin=x_bin, y_bin=y_bin, floor=floor)


def _describe(epoch_mask) -> str:
    """One line with the options a mask was built with (whatever it records)."""
    parts = []
    for name, fmt in (("fp_rate", "{:g}"), ("x_bin", "{}"), ("y_bin", "{}"), ("floor", "{}")):
        value = getattr(epoch_mask, name, None)
        if value is not None:
            parts.append(f"{name} {fmt.format(value)}")
    return ", ".join(parts)


def _cell_extent(epoch_mask):
    """imshow extent (left, right, bottom, top) of a re-binned map, in CCD pixels."""
    cell_ny, cell_nx = epoch_mask.cell_size
    n_y, n_x = epoch_mask.counts.shape[1:]
    return (0.5, 0.5 + n_x * cell_nx, 0.5, 0.5 + n_y * cell_ny)


def _mask_outline(mask, extent):
    """Segments outlining the masked cells of a 2-d bool array (cell edges only).

    Vectorised: an edge is drawn wherever a cell and its neighbour differ.
    Returns an (n, 2, 2) array of segments in the coordinates of ``extent``.
    """
    n_y, n_x = mask.shape
    left, right, bottom, top = extent
    x_edges = np.linspace(left, right, n_x + 1)
    y_edges = np.linspace(bottom, top, n_y + 1)
    padded = np.pad(mask, 1, constant_values=False)
    # vertical edges: between columns j-1 and j, for each row i
    vertical = padded[1:-1, 1:] != padded[1:-1, :-1]  # (n_y, n_x + 1)
    rows, cols = np.nonzero(vertical)
    v_segments = np.stack(
        [np.stack([x_edges[cols], y_edges[rows]], -1), np.stack([x_edges[cols], y_edges[rows + 1]], -1)], 1
    )
    # horizontal edges: between rows i-1 and i, for each column j
    horizontal = padded[1:, 1:-1] != padded[:-1, 1:-1]  # (n_y + 1, n_x)
    rows, cols = np.nonzero(horizontal)
    h_segments = np.stack(
        [np.stack([x_edges[cols], y_edges[rows]], -1), np.stack([x_edges[cols + 1], y_edges[rows]], -1)], 1
    )
    return np.concatenate([v_segments, h_segments]).reshape(-1, 2, 2)


def _ccd_stats(epoch_mask):
    """Per-CCD (area fraction masked, transient fraction masked), (62,) arrays."""
    table = epoch_mask.stats()
    return np.asarray(table["AREA_MASKED"], float), np.asarray(table["TRANSIENTS_MASKED"], float)


class _CcdPage:
    """One A4 page layout, redrawn for each CCD of an epoch mask.

    The axes, colour bar and labels are built once; drawing a CCD only swaps
    data and texts, so 62 pages cost little more than their rendering.
    """

    def __init__(self, epoch_mask, figure=None):
        from matplotlib.collections import LineCollection
        from matplotlib.colors import ListedColormap
        from matplotlib.figure import Figure

        self.epoch_mask = epoch_mask
        self.area, self.transients = _ccd_stats(epoch_mask)
        self.figure = figure = figure if figure is not None else Figure(figsize=(8.27, 11.69))
        figure.clear()
        figure.suppressComposite = True  # keep counts and overlay as separate images in the PDF
        self.ax = ax = figure.add_axes((0.10, 0.065, 0.66, 0.80))
        self.cax = cax = figure.add_axes((0.82, 0.065, 0.03, 0.80))
        ax.set_xlim(0.5, CCD_NX + 0.5)
        ax.set_ylim(0.5, CCD_NY + 0.5)
        ax.set_aspect("equal")
        ax.set_xticks(np.arange(0, CCD_NX + 1, 512))
        ax.set_yticks(np.arange(0, CCD_NY + 1, 512))
        ax.set_xlabel("x [pixel]")
        ax.set_ylabel("y [pixel]")
        # amplifier boundary: S CCDs have amp A on the right (x 1025-2048), N CCDs on the left
        ax.axvline(CCD_NX / 2 + 0.5, color="0.6", lw=0.6, ls=":", zorder=4)
        self.amp_labels = [
            ax.text(x, 1.005, "", transform=ax.transAxes, ha="center", va="bottom", fontsize=9, color="0.3")
            for x in (0.25, 0.75)
        ]
        self.title = figure.suptitle("", y=0.965, fontsize=13)
        cell_ny, cell_nx = epoch_mask.cell_size
        figure.text(0.10, 0.015, f"cells of {cell_nx} x {cell_ny} pixels; {_describe(epoch_mask)}",
                    fontsize=8, color="0.3")
        if getattr(epoch_mask, "demo", False):
            figure.text(0.98, 0.015, "DEMO DATA (synthetic maps)", fontsize=11, color="red", ha="right",
                        weight="bold", gid="demo")

        self.extent = extent = _cell_extent(epoch_mask)
        shape = epoch_mask.counts.shape[1:]
        self.image = ax.imshow(np.zeros(shape), origin="lower", extent=extent, cmap="viridis", vmin=0, vmax=1,
                               interpolation="nearest", aspect="equal", gid="counts")
        self.overlay = ax.imshow(np.ma.masked_all(shape), origin="lower", extent=extent,
                                 cmap=ListedColormap([_MASK_RGBA]), vmin=0, vmax=1, interpolation="nearest",
                                 aspect="equal", gid="mask")
        self.outline = LineCollection([], colors=[_MASK_EDGE], linewidths=0.5, gid="mask_outline", zorder=3)
        ax.add_collection(self.outline, autolim=False)
        self.colorbar = figure.colorbar(self.image, cax=cax, extend="max")
        self.colorbar.set_label("transients per cell")
        self.threshold_line = cax.axhline(0, color=_MASK_EDGE, lw=2)
        self.threshold_text = cax.text(1.0, 0, " threshold", transform=cax.get_yaxis_transform(),
                                       rotation=0, va="center", ha="left", fontsize=8, color=_MASK_EDGE,
                                       weight="bold")
        self.half_note = ax.text(0.75, 0.5, "amp A unstable:\nmasked entirely", transform=ax.transAxes,
                                 ha="center", va="center", fontsize=12, color="white", weight="bold",
                                 bbox=dict(boxstyle="round", fc=_MASK_EDGE, ec="none", alpha=0.85), zorder=5)
        self.dead_note = ax.text(0.5, 0.5, "no transients\n(dead CCD)", transform=ax.transAxes, ha="center",
                                 va="center", fontsize=22, color="0.25", gid="dead")

    def draw(self, ccdnum: int):
        """Show CCD ``ccdnum`` on the page; returns the figure."""
        if not 1 <= int(ccdnum) <= N_CCD:
            raise BadInputError(f"ccdnum {ccdnum}: must be 1..{N_CCD}")
        ccdnum = int(ccdnum)
        index = ccdnum - 1
        epoch_mask = self.epoch_mask
        threshold = float(epoch_mask.threshold[index])
        live = bool(epoch_mask.live[index])
        epoch = getattr(epoch_mask, "epoch", None) or "?"
        amps = ("B", "A") if ccdnum <= HALF_MASKED_CCD else ("A", "B")
        for label, amp in zip(self.amp_labels, amps):
            label.set_text(f"amp {amp}")
        title = f"CCD {ccdnum} ({DETPOS[ccdnum]})    epoch {epoch}"
        if live:
            title += (
                f"\nthreshold {threshold:g} counts/cell    area masked {100 * self.area[index]:.2f}%"
                f"    transients masked {100 * self.transients[index]:.2f}%"
            )
        else:
            title += "\nno transients (dead CCD): masked entirely"
        self.title.set_text(title)
        self.ax.set_facecolor(_DEAD_RGBA if not live else "white")
        self.dead_note.set_visible(not live)
        self.half_note.set_visible(live and ccdnum == HALF_MASKED_CCD)
        for artist in (self.image, self.overlay, self.outline):
            artist.set_visible(live)
        self.cax.set_visible(live)
        # a dead CCD shows no data at all (not noise): its artists hold none
        counts = epoch_mask.counts[index] if live else np.zeros(self.image.get_array().shape)
        mask = np.asarray(epoch_mask.mask[index], bool) if live else np.zeros(counts.shape, bool)
        vmax = max(3 * threshold, 1.0)
        self.image.set_data(counts)
        self.image.set_clim(0, vmax)
        self.overlay.set_data(np.ma.masked_array(np.ones(mask.shape), mask=~mask))
        self.outline.set_segments(_mask_outline(mask, self.extent))
        self.threshold_line.set_ydata([threshold, threshold])
        self.threshold_text.set_y(threshold)
        self.ccdnum = ccdnum
        return self.figure


def plot_ccd(epoch_mask, ccdnum: int, *, figure=None):
    """Draw one CCD of an epoch mask: its count map with the masked cells marked.

    The page of :func:`plot_epoch` for one CCD.  The count map (as re-binned by
    the mask) is drawn in CCD pixel coordinates (x 0.5..2048.5, y 0.5..4096.5),
    coloured from 0 to 3 times the CCD's threshold; masked cells are tinted and
    outlined.  A dead CCD (no transients) is labelled instead of drawn.

    Parameters
    ----------
    epoch_mask : EpochMask
        The mask of one epoch.
    ccdnum : int
        CCD number, 1..62.
    figure : matplotlib.figure.Figure, optional
        Figure to draw on (it is cleared); default a new A4 portrait figure.

    Returns
    -------
    matplotlib.figure.Figure
        The figure.  Artists carry gids: ``counts`` (the count image), ``mask``
        (the masked-cell overlay image, its data masked where cells are not),
        ``mask_outline`` (the outline LineCollection), ``dead`` (the label of a
        dead CCD, visible only on a dead CCD).

    Examples
    --------
    >>> mask = EpochMask.from_maps(CountMaps(), "Y2E1")  # doctest: +SKIP
    >>> plot_ccd(mask, 46).savefig("n15.png")            # doctest: +SKIP
    """
    return _CcdPage(epoch_mask, figure).draw(ccdnum)


def plot_epoch(epoch_mask_or_epoch, pdf_file: str, *, maps=None, fp_rate: float = DEFAULT_FP_RATE,
               x_bin: int = 1, y_bin: int = 1, floor: str = DEFAULT_FLOOR, overwrite: bool = False):
    """Write a multipage PDF of one epoch: one page per CCD, in CCDNUM order.

    Each page (see :func:`plot_ccd`) shows the CCD's count map, coloured from 0
    to 3 times its threshold, with the masked cells tinted and outlined, and a
    title with CCDNUM, DETPOS, threshold and the percentages of area and of
    transients masked.  CCD 31's right half is shown masked, as the masks do;
    dead CCDs are labelled "no transients (dead CCD)".

    Parameters
    ----------
    epoch_mask_or_epoch : EpochMask or str
        A mask (its own options are used), or an epoch name: the mask is then
        built from ``maps`` with ``fp_rate``, ``x_bin``, ``y_bin``, ``floor``.
    pdf_file : str
        The PDF to write (atomically).
    maps : CountMaps, optional
        Count maps for an epoch name; default ``CountMaps()``.
    fp_rate, x_bin, y_bin, floor
        Masking options, as for :class:`EpochMask` (used with an epoch name).
    overwrite : bool
        Whether an existing ``pdf_file`` may be replaced.

    Returns
    -------
    EpochMask
        The mask that was drawn.

    Raises
    ------
    BadInputError
        Unknown epoch, or ``pdf_file`` exists without ``overwrite``.

    Examples
    --------
    >>> plot_epoch("Y2E1", "y2e1_ccds.pdf")                  # doctest: +SKIP
    >>> plot_epoch(mask, "y2e1_ccds.pdf", overwrite=True)    # doctest: +SKIP
    """
    from matplotlib.backends.backend_pdf import PdfPages

    epoch_mask = _epoch_mask_for(epoch_mask_or_epoch, maps, fp_rate, x_bin, y_bin, floor)
    inputs = [maps.path] if maps is not None and getattr(maps, "path", None) else []
    page = _CcdPage(epoch_mask)
    with atomic_output(pdf_file, overwrite=overwrite, inputs=inputs) as tmp:
        with PdfPages(tmp, metadata={"Title": f"transient masks, epoch {getattr(epoch_mask, 'epoch', '')}",
                                     "Creator": f"transient_masks {__version__}"}) as pdf:
            for ccdnum in range(1, N_CCD + 1):
                pdf.savefig(page.draw(ccdnum))
    log.info("wrote %s (%d pages)", pdf_file, N_CCD)
    return epoch_mask


def _block_any(mask, factor_y: int, factor_x: int):
    """Reduce a (n_y, n_x) bool array by blocks: a block is True when any cell is."""
    n_y, n_x = mask.shape
    pad_y, pad_x = -n_y % factor_y, -n_x % factor_x
    padded = np.pad(mask, ((0, pad_y), (0, pad_x)), constant_values=False)
    return padded.reshape(padded.shape[0] // factor_y, factor_y, padded.shape[1] // factor_x, factor_x).any(
        axis=(1, 3)
    )


def plot_focal_plane(epoch_mask, path: str = None, *, overwrite: bool = False, vmax: float = 4.0,
                     layout_file: str = None, dpi: int = 150):
    """Draw the whole focal plane of one epoch: all 62 CCDs at their DECam positions.

    Each CCD's count map is divided by its own background (the modal cell
    count, at least 1) so that CCDs of different depth compare; masked cells
    are overlaid; each CCD is labelled with DETPOS and CCDNUM.

    Parameters
    ----------
    epoch_mask : EpochMask
        The mask of one epoch.
    path : str, optional
        Output file; the format follows the suffix (``.png``, ``.pdf``, ...).
        None: only return the figure.
    overwrite : bool
        Whether an existing ``path`` may be replaced.
    vmax : float
        Top of the colour scale, in units of the CCD background.
    layout_file : str, optional
        The CCD layout CSV (default the shipped ``decam_ccds.csv``).
    dpi : int
        Resolution of raster output.

    Returns
    -------
    matplotlib.figure.Figure
        The figure.  Artists carry gids ``counts_<ccdnum>`` (count image, its
        extent in focal-plane mm), ``mask_<ccdnum>`` (the masked-cell overlay,
        True where any cell of an overlay block is masked), ``ccd_<ccdnum>``
        (the CCD outline Rectangle) and ``label_<ccdnum>``.

    Examples
    --------
    >>> mask = EpochMask.from_maps(CountMaps(), "Y2E1")    # doctest: +SKIP
    >>> plot_focal_plane(mask, "y2e1_focal_plane.png")     # doctest: +SKIP
    """
    from matplotlib import patheffects
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    layout = read_ccd_layout(layout_file)
    area, transients = _ccd_stats(epoch_mask)
    figure = Figure(figsize=(9.0, 10.0))
    ax = figure.add_axes((0.06, 0.05, 0.80, 0.83))
    cax = figure.add_axes((0.88, 0.15, 0.025, 0.6))
    ax.set_aspect("equal")
    half_x, half_y = _CCD_WIDTH_MM / 2, _CCD_HEIGHT_MM / 2
    # The overlay is shown at about the screen resolution of a CCD: a block is
    # marked when any of its cells is, so that one masked column never vanishes.
    cell_ny, cell_nx = epoch_mask.cell_size
    factor_x, factor_y = max(1, 32 // cell_nx), max(1, 32 // cell_ny)
    mask_cmap = ListedColormap([_MASK_RGBA[:3] + (0.75,)])
    image = None
    outline = [patheffects.withStroke(linewidth=2.5, foreground="white")]
    for row in layout:
        ccdnum = int(row["CCDNUM"])
        index = ccdnum - 1
        x_c, y_c = float(row["X_CENTER_MM"]), float(row["Y_CENTER_MM"])
        extent = (x_c - half_x, x_c + half_x, y_c - half_y, y_c + half_y)
        live = bool(epoch_mask.live[index])
        ax.add_patch(Rectangle((extent[0], extent[2]), _CCD_WIDTH_MM, _CCD_HEIGHT_MM, fill=not live,
                               facecolor=_DEAD_RGBA, edgecolor="0.3", lw=0.6, gid=f"ccd_{ccdnum}", zorder=3))
        label = f"{row['DETPOS']}\n{ccdnum}"
        if live:
            background = max(float(epoch_mask.mode[index]), 1.0)
            counts = epoch_mask.counts[index] / background
            # the drawn extent covers the cells the (re-binned) map has
            cells = _cell_extent(epoch_mask)
            drawn = (extent[0], extent[0] + (cells[1] - 0.5) * 0.015, extent[2],
                     extent[2] + (cells[3] - 0.5) * 0.015)
            image = ax.imshow(counts, origin="lower", extent=drawn, cmap="viridis", vmin=0, vmax=vmax,
                              interpolation="antialiased", aspect="equal", zorder=1)
            image.set_gid(f"counts_{ccdnum}")
            blocks = _block_any(np.asarray(epoch_mask.mask[index], bool), factor_y, factor_x)
            n_y, n_x = blocks.shape
            block_extent = (drawn[0], drawn[0] + n_x * factor_x * cell_nx * 0.015, drawn[2],
                            drawn[2] + n_y * factor_y * cell_ny * 0.015)
            overlay = ax.imshow(np.ma.masked_array(np.ones(blocks.shape), mask=~blocks), origin="lower",
                                extent=block_extent, cmap=mask_cmap, vmin=0, vmax=1,
                                interpolation="nearest", aspect="equal", zorder=2)
            overlay.set_gid(f"mask_{ccdnum}")
        else:
            label += "\ndead"
        ax.text(x_c, y_c, label, ha="center", va="center", fontsize=7, weight="bold", color="black",
                path_effects=outline, gid=f"label_{ccdnum}", zorder=4)
    ax.set_xlim(-215, 215)
    ax.set_ylim(-235, 235)
    ax.set_xlabel("focal-plane x [mm]")
    ax.set_ylabel("focal-plane y [mm]")
    epoch = getattr(epoch_mask, "epoch", None) or "?"
    figure.suptitle(
        f"DECam transient masks, epoch {epoch}\n{_describe(epoch_mask)}:"
        f" {100 * epoch_mask.area_fraction:.2f}% of the area,"
        f" {100 * epoch_mask.transient_fraction:.2f}% of the transients masked",
        y=0.975, fontsize=12,
    )
    if image is not None:
        colorbar = figure.colorbar(image, cax=cax, extend="max")
        colorbar.set_label("transients per cell / CCD background (modal count)")
    else:
        cax.set_visible(False)
    ax.legend(handles=[Patch(facecolor=mask_cmap.colors[0], label="masked"),
                       Patch(facecolor=_DEAD_RGBA, edgecolor="0.3", label="dead CCD (no transients)")],
              loc="lower left", fontsize=8, framealpha=0.9)
    if getattr(epoch_mask, "demo", False):
        ax.text(0.98, 0.98, "DEMO DATA\n(synthetic maps)", transform=ax.transAxes, ha="right", va="top",
                fontsize=14, weight="bold", color="red", gid="demo")
    if path is not None:
        _save_figure(figure, path, overwrite=overwrite, dpi=dpi)
    return figure


def _save_figure(figure, path: str, *, overwrite: bool, dpi: int, inputs=()):
    """Save a figure atomically; the format follows the suffix of ``path``."""
    suffix = os.path.splitext(path)[1].lower().lstrip(".")
    if not suffix:
        raise BadInputError(f"{path}: give the figure file a suffix (.png, .pdf, ...)")
    with atomic_output(path, overwrite=overwrite, inputs=inputs) as tmp:
        try:
            figure.savefig(tmp, format=suffix, dpi=dpi)
        except ValueError as exc:  # matplotlib: unsupported format
            raise BadInputError(f"{path}: cannot write this format ({exc})") from None
    log.info("wrote %s", path)


def plot_survey_summary(maps, path: str = None, *, fp_rate: float = DEFAULT_FP_RATE, x_bin: int = 1,
                        y_bin: int = 1, floor: str = DEFAULT_FLOOR, overwrite: bool = False,
                        vmax_percent: float = 10.0, dpi: int = 150):
    """Draw the masked area of every CCD in every epoch of the maps (epochs x CCDs).

    One row per epoch (in the order of the maps), one column per CCD: the
    percentage of the CCD area masked, so one sees defects come and go.  Dead
    CCDs (no transients, masked entirely) are grey; the epoch totals are
    written at the right.

    Parameters
    ----------
    maps : CountMaps
        The count maps; every epoch in them is drawn.
    path : str, optional
        Output file; the format follows the suffix.  None: only return the figure.
    fp_rate, x_bin, y_bin, floor
        Masking options, as for :class:`EpochMask`.
    overwrite : bool
        Whether an existing ``path`` may be replaced.
    vmax_percent : float
        Top of the colour scale (percent masked); more is drawn in the top colour.
    dpi : int
        Resolution of raster output.

    Returns
    -------
    matplotlib.figure.Figure
        The figure.  The image (gid ``area_masked``) holds the percentages, an
        (n_epochs, 62) masked array, masked where a CCD is dead.

    Examples
    --------
    >>> plot_survey_summary(CountMaps(), "survey_summary.png")   # doctest: +SKIP
    """
    from matplotlib.figure import Figure

    epochs = list(maps.epochs)
    if not epochs:
        raise BadInputError(f"{maps.path}: the count maps hold no epoch")
    percent = np.zeros((len(epochs), N_CCD))
    dead = np.zeros((len(epochs), N_CCD), bool)
    totals = []
    demo = bool(getattr(maps, "demo", False))
    for row, epoch in enumerate(epochs):
        epoch_mask = EpochMask.from_maps(maps, epoch, fp_rate=fp_rate, x_bin=x_bin, y_bin=y_bin, floor=floor)
        percent[row] = 100 * _ccd_stats(epoch_mask)[0]
        dead[row] = ~np.asarray(epoch_mask.live, bool)
        totals.append((100 * epoch_mask.area_fraction, 100 * epoch_mask.transient_fraction))
        demo = demo or bool(getattr(epoch_mask, "demo", False))

    figure = Figure(figsize=(15.0, 2.4 + 0.32 * len(epochs)))
    height = 0.32 * len(epochs) / figure.get_figheight()
    bottom = 1.05 / figure.get_figheight()
    ax = figure.add_axes((0.07, bottom, 0.78, height))
    cax = figure.add_axes((0.955, bottom, 0.008, height))
    ax.set_facecolor(_DEAD_RGBA)  # dead cells are left transparent over this grey
    image = ax.imshow(np.ma.masked_array(percent, mask=dead), cmap="magma_r", vmin=0, vmax=vmax_percent,
                      interpolation="nearest", aspect="auto", origin="upper")
    image.set_gid("area_masked")
    ax.set_xticks(np.arange(N_CCD))
    ax.set_xticklabels([f"{DETPOS[c]} {c}" for c in range(1, N_CCD + 1)], rotation=90, fontsize=7)
    ax.set_yticks(np.arange(len(epochs)))
    ax.set_yticklabels(epochs, fontsize=8)
    ax.set_xlabel("CCD (DETPOS CCDNUM)")
    ax.set_ylabel("epoch")
    # light grid lines between cells make rows and columns easy to follow
    ax.set_xticks(np.arange(N_CCD + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(epochs) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", lw=0.4)
    ax.tick_params(which="minor", length=0)
    ax.axvline(HALF_MASKED_CCD + 0.5 - 1, color="0.2", lw=1.0)  # S | N boundary after CCD 31
    for row, (area_total, transients_total) in enumerate(totals):
        ax.text(N_CCD - 0.2, row, f"  {area_total:5.2f}% area, {transients_total:5.2f}% transients",
                va="center", ha="left", fontsize=7, clip_on=False)
    for row, col in zip(*np.nonzero(dead)):
        ax.text(col, row, "dead", ha="center", va="center", fontsize=5, color="0.3")
    colorbar = figure.colorbar(image, cax=cax, extend="max")
    colorbar.set_label("% of CCD area masked")
    title = (f"Masked area per CCD and epoch ({_describe_options(fp_rate, x_bin, y_bin, floor)});"
             " grey: dead CCD (no transients, masked entirely)")
    if demo:
        title += "    DEMO DATA (synthetic maps)"
    figure.suptitle(title, fontsize=11, color="red" if demo else "black")
    if path is not None:
        _save_figure(figure, path, overwrite=overwrite, dpi=dpi,
                     inputs=[maps.path] if getattr(maps, "path", None) else [])
    return figure


def _describe_options(fp_rate, x_bin, y_bin, floor) -> str:
    return f"fp_rate {fp_rate:g}, x_bin {x_bin}, y_bin {y_bin}, floor {floor}"


def _add_plot_arguments(parser, modes):
    """Add the --plot / --summary modes and their options to the parser."""
    modes.add_argument(
        "--plot", metavar="EPOCH",
        help="draw one epoch: EPOCH_ccds.pdf (a page per CCD) and EPOCH_focal_plane.png/.pdf",
    )
    modes.add_argument(
        "--summary", action="store_true",
        help="draw the masked area per CCD for every epoch: survey_summary.png/.pdf",
    )
    g = parser.add_argument_group("plots (--plot, --summary)")
    g.add_argument("--plot_dir", default=".", metavar="DIR", help="directory for the plots (default: .)")


def _run_plot(args) -> int:
    """Run --plot EPOCH or --summary."""
    counts = getattr(args, "counts", None)
    options = dict(
        fp_rate=getattr(args, "fp_rate", DEFAULT_FP_RATE),
        x_bin=getattr(args, "x_bin", 1),
        y_bin=getattr(args, "y_bin", 1),
        floor=getattr(args, "floor", DEFAULT_FLOOR),
    )
    overwrite = bool(getattr(args, "overwrite", False))
    plot_dir = args.plot_dir
    if not os.path.isdir(plot_dir):
        raise BadInputError(f"--plot_dir {plot_dir}: not a directory")
    maps = CountMaps(counts)
    inputs = [maps.path] if getattr(maps, "path", None) else []
    written = []
    if args.summary:
        figure = plot_survey_summary(maps, None, **options)
        for suffix in ("png", "pdf"):
            path = os.path.join(plot_dir, f"survey_summary.{suffix}")
            _save_figure(figure, path, overwrite=overwrite, dpi=150, inputs=inputs)
            written.append(path)
    else:
        epoch_mask = _epoch_mask_for(args.plot, maps, **options)
        path = os.path.join(plot_dir, f"{args.plot}_ccds.pdf")
        plot_epoch(epoch_mask, path, overwrite=overwrite)
        written.append(path)
        figure = plot_focal_plane(epoch_mask)
        for suffix in ("png", "pdf"):
            path = os.path.join(plot_dir, f"{args.plot}_focal_plane.{suffix}")
            _save_figure(figure, path, overwrite=overwrite, dpi=150, inputs=inputs)
            written.append(path)
    for path in written:
        print(path)
    return 0


# ---- Good background pixels

# (issue 5) the CLI hooks of des_background live here; the work is in that module.


def _add_background_arguments(parser, modes):
    """Add the --background mode and its options to the command-line parser."""


def _run_background(args) -> int:
    raise NotImplementedError("--background")


# ---- Command line


def _add_mask_arguments(parser, modes):
    """Add the --epoch and --input modes and the masking options."""


def _run_epoch(args) -> int:
    raise NotImplementedError("--epoch")


def _run_filter(args) -> int:
    raise NotImplementedError("--input")


#: Each mode: (the args attribute that selects it, the function that runs it).
_MODES = [
    ("epoch", "_run_epoch"),
    ("input", "_run_filter"),
    ("gather", "_run_gather"),
    ("simulate", "_run_simulate"),
    ("plot", "_run_plot"),
    ("summary", "_run_plot"),
    ("background", "_run_background"),
]


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser: one mode option, then that mode's options."""
    parser = argparse.ArgumentParser(
        prog="transient_masks.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    modes = parser.add_mutually_exclusive_group(required=True)
    for add_arguments in (
        _add_mask_arguments,
        _add_gather_arguments,
        _add_simulate_arguments,
        _add_plot_arguments,
        _add_background_arguments,
    ):
        add_arguments(parser, modes)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input, 1 failure)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    run = next(globals()[name] for dest, name in _MODES if getattr(args, dest, None))
    try:
        return run(args)
    except BadInputError as exc:
        print(f"transient_masks: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # an unexpected failure: say so in one line too
        log.debug("unexpected failure", exc_info=True)
        print(f"transient_masks: unexpected failure: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
