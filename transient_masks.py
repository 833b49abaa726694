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

# (issue 4) plot_epoch, the focal-plane overview, the survey summary and their
# CLI hooks live here.


def _add_plot_arguments(parser, modes):
    """Add the --plot / --summary modes and their options to the parser."""


def _run_plot(args) -> int:
    raise NotImplementedError("--plot")


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
