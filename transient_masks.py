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
    path : str or astropy.table.Table, optional
        A FITS table with columns NAME, MINNITE, MAXNITE, MINEXPNUM, MAXEXPNUM
        (or such a table, which is copied).  Default: the ``ops_epochs.fits``
        shipped with transient_masks.

    Returns
    -------
    astropy.table.Table
        The table sorted by MINEXPNUM, NAME as str.

    Examples
    --------
    >>> epochs = read_epochs()
    >>> epochs["NAME"][:3].tolist()
    ['SVE1', 'SVE2', 'Y1E1']
    """
    from astropy.table import Table

    if hasattr(path, "colnames"):  # already a table
        epochs, path = path.copy(), "epoch table"
    else:
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


def find_counts_file(path: str = None):
    """Locate the count-map file.

    Parameters
    ----------
    path : str, optional
        An explicit file.  Default: the real DES maps
        (``y6a1_transient_maps.fits.gz``) beside this module or in the working
        directory, else the synthetic demo maps shipped with transient_masks.

    Returns
    -------
    (str, bool)
        The path, and whether it is the demo fallback.
    """
    if path is not None:
        if not os.path.exists(path):
            raise BadInputError(f"{path}: count-map file not found")
        return path, False
    here = os.path.dirname(os.path.abspath(__file__))
    for place in (here, os.getcwd()):
        candidate = os.path.join(place, REAL_COUNTS_FILENAME)
        if os.path.exists(candidate):
            return candidate, False
    try:
        demo = data_path(DEMO_COUNTS_FILENAME)
    except FileNotFoundError:
        raise BadInputError(
            f"{REAL_COUNTS_FILENAME}: not found beside the module or in the working directory, "
            f"and the demo maps {DEMO_COUNTS_FILENAME} are missing too (use --counts)"
        ) from None
    log.warning(
        "WARNING: the real DES count maps (%s) were not found beside the module or in the "
        "working directory; using the SYNTHETIC DEMO maps %s. Results are NOT real DES masks.",
        REAL_COUNTS_FILENAME, demo,
    )
    return demo, True


class CountMaps:
    """Lazy reader of a DES transient count-map file.

    The file holds an empty primary HDU, then one image HDU per epoch with
    keywords EPOCH (or EXTNAME), MIN_EXP and MAX_EXP and (62, ny, nx) integer
    counts: cell (CCDNUM-1, Y, X) counts the transients of that CCD with
    ``(2048/nx) X + 1 <= x < (2048/nx) (X + 1) + 1`` and likewise in y
    (8 x 16 pixel cells in the DES file).  Opening reads nothing but the first
    headers; an epoch's counts are read and checked when first needed.

    Parameters
    ----------
    path : str, optional
        The file; see `find_counts_file` for the default.

    Attributes
    ----------
    path : str
    demo : bool
        Whether these are the synthetic demo maps (the fallback file, or
        DEMO = T in its headers).

    Examples
    --------
    >>> maps = CountMaps()                              # doctest: +SKIP
    >>> maps.epochs                                     # doctest: +SKIP
    ['Y1E1', 'Y2E1', 'Y4E2', 'Y6']
    >>> maps.counts("Y2E1").shape                       # doctest: +SKIP
    (62, 256, 256)
    """

    def __init__(self, path: str = None):
        self.path, fallback = find_counts_file(path)
        self._fallback_demo = fallback
        self._headers = None  # epoch name -> (hdu index, header), once scanned
        self._counts = {}
        with self._open() as hdul:
            try:
                first = hdul[1]
            except IndexError:
                raise BadInputError(f"{self.path}: no epoch HDUs (only a primary HDU)") from None
            self._first_demo = bool(first.header.get("DEMO", False))
        self.demo = fallback or self._first_demo

    def _open(self):
        from astropy.io import fits

        try:
            return fits.open(self.path, memmap=False, lazy_load_hdus=True)
        except (OSError, ValueError) as exc:
            raise BadInputError(f"{self.path}: not a readable FITS file ({exc})") from None

    def _scan(self):
        """Read every header once (not the data) and index the epochs."""
        if self._headers is None:
            headers = {}
            with self._open() as hdul:
                for index, hdu in enumerate(hdul):
                    if index == 0:
                        continue
                    name = self._epoch_name(hdu.header, index)
                    headers[name] = (index, hdu.header.copy())
            self._headers = headers
        return self._headers

    def _epoch_name(self, header, index):
        name = header.get("EPOCH", header.get("EXTNAME"))
        if not name:
            raise BadInputError(f"{self.path}: HDU {index} has neither EPOCH nor EXTNAME")
        return str(name).strip()

    @property
    def epochs(self) -> list:
        """Names of the epochs in the file, in HDU order (reads headers only)."""
        return list(self._scan())

    def __contains__(self, epoch) -> bool:
        return epoch in self._scan()

    def _header(self, epoch):
        try:
            return self._scan()[epoch]
        except KeyError:
            raise BadInputError(
                f"{self.path}: no epoch {epoch!r} (it has {', '.join(self._scan())})"
            ) from None

    def info(self, epoch: str) -> dict:
        """Header facts of one epoch: min_exp, max_exp, demo (reads no data)."""
        index, header = self._header(epoch)
        for key in ("MIN_EXP", "MAX_EXP"):
            if key not in header:
                raise BadInputError(f"{self.path}: HDU {index} ({epoch}) lacks the {key} keyword")
        return {
            "min_exp": int(header["MIN_EXP"]),
            "max_exp": int(header["MAX_EXP"]),
            "demo": self._fallback_demo or bool(header.get("DEMO", False)),
        }

    def counts(self, epoch: str) -> np.ndarray:
        """The (62, ny, nx) counts of one epoch, read and checked on first use."""
        if epoch not in self._counts:
            index, _ = self._header(epoch)
            self.info(epoch)  # checks MIN_EXP / MAX_EXP
            with self._open() as hdul:
                data = hdul[index].data
                data = None if data is None else np.array(data)
            where = f"{self.path}: HDU {index} ({epoch})"
            if data is None or data.ndim != 3 or data.shape[0] != N_CCD:
                shape = None if data is None else data.shape
                raise BadInputError(f"{where}: counts have shape {shape}, expected ({N_CCD}, ny, nx)")
            if CCD_NY % data.shape[1] or CCD_NX % data.shape[2]:
                raise BadInputError(
                    f"{where}: a {data.shape[1]} x {data.shape[2]} cell grid does not divide "
                    f"a {CCD_NX} x {CCD_NY} CCD"
                )
            if data.dtype.kind not in "ui":
                raise BadInputError(f"{where}: counts are {data.dtype.name}, expected integers")
            if data.dtype.kind == "i" and data.min() < 0:
                raise BadInputError(f"{where}: negative counts")
            self._counts[epoch] = data
        return self._counts[epoch]


# ---- Epoch masks


def _check_options(fp_rate, x_bin, y_bin, floor):
    """Validate the masking options shared by the classes and the CLI."""
    if not 0 < fp_rate < 1:
        raise BadInputError(f"fp_rate={fp_rate}: must be between 0 and 1")
    for name, value in (("x_bin", x_bin), ("y_bin", y_bin)):
        if int(value) != value or value < 1:
            raise BadInputError(f"{name}={value}: must be a positive integer")
    if floor not in FLOORS:
        raise BadInputError(f"floor={floor!r}: must be one of {', '.join(FLOORS)}")


def rebin_counts(counts: np.ndarray, x_bin: int = 1, y_bin: int = 1) -> np.ndarray:
    """Sum a (62, ny, nx) count cube over blocks of y_bin x x_bin cells.

    Examples
    --------
    >>> cube = np.ones((62, 4, 8), dtype=np.uint16)
    >>> rebin_counts(cube, x_bin=2, y_bin=4).shape
    (62, 1, 4)
    >>> int(rebin_counts(cube, 2, 4).sum()) == int(cube.sum())
    True
    """
    n_ccd, ny, nx = counts.shape
    for name, factor, size in (("x_bin", x_bin, nx), ("y_bin", y_bin, ny)):
        if size % factor:
            divisors = [d for d in range(1, size + 1) if size % d == 0]
            raise BadInputError(
                f"{name}={factor}: must divide the {size}-cell grid ({', '.join(map(str, divisors))})"
            )
    blocks = counts.reshape(n_ccd, ny // y_bin, y_bin, nx // x_bin, x_bin)
    return blocks.sum(axis=(2, 4), dtype=np.int64)


def poisson_threshold(mode, centre, fp_rate: float = DEFAULT_FP_RATE, floor_factor: float = 2.0):
    """The reference DES threshold: a cell is masked when its count exceeds it.

    ``max(ceil(floor_factor * centre), Poisson(mode + 1).isf(fp_rate))``.  The
    Poisson mean is the modal cell count plus one: the mode of a Poisson variable
    is the floor of its mean, so the +1 errs on the side of masking less.

    Examples
    --------
    >>> from scipy.stats import poisson
    >>> float(poisson_threshold(3, 3.2, 1e-4))  # ceil(6.4) = 7 < Poisson(4).isf(1e-4)
    13.0
    >>> float(poisson(4).isf(1e-4))
    13.0
    """
    from scipy.stats import poisson

    mode = np.asarray(mode, dtype=np.float64)
    poisson_cut = poisson.isf(fp_rate, mode + 1.0)
    return np.maximum(np.ceil(floor_factor * np.asarray(centre, dtype=np.float64)), poisson_cut)


class EpochMask:
    """The transient mask of one epoch, from its count cube.

    For each CCD the cells (after optional extra binning) are compared with a
    threshold from the reference DES rule: a Poisson distribution whose mean is
    the modal cell count + 1 must exceed the count with probability below
    ``fp_rate``, and the count must exceed twice the CCD's median (or mean)
    cell count.  CCDs with no transients at all (dead) are masked entirely.
    CCD 31 takes its statistics from its left half and its right half (the
    unstable amp A) is masked entirely.

    Parameters
    ----------
    counts : array_like, shape (62, ny, nx)
        Non-negative integer counts; cell (CCDNUM-1, Y, X) covers the pixels
        ``cx X + 1 <= x < cx (X + 1) + 1`` with ``cx = 2048 / nx`` (8 for DES),
        likewise in y with ``cy = 4096 / ny`` (16 for DES).
    epoch : str, optional
        The epoch name, for headers and plots.
    fp_rate : float
        False-positive probability per (re-binned) cell of a defect-free CCD.
    x_bin, y_bin : int
        Extra binning: numbers of cells summed along x and y; must divide the
        cell grid.
    floor : {"median", "mean"}
        Statistic of the cell counts whose double is a floor of the threshold.
        "median" follows the published DES README; "mean" reproduces the
        published DES masks (the code used the mean).
    min_exp, max_exp : int, optional
        Expnum range of the epoch (provenance).
    demo : bool
        Whether the counts are synthetic demo data (provenance, plots).
    source : str, optional
        The count-map file (provenance).

    Attributes
    ----------
    counts : numpy.ndarray of int64, shape (62, ny // y_bin, nx // x_bin)
    mask : numpy.ndarray of bool, same shape; True = masked
    mode, centre, threshold : numpy.ndarray of float, shape (62,)
        Per CCD; NaN for CCDs with no transients.
    live : numpy.ndarray of bool, shape (62,)
        CCDs with at least one transient.
    cell_size : (int, int)
        Pixels per re-binned cell along y and x.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> counts = rng.poisson(3.0, size=(62, 256, 256))
    >>> counts[4, 10:20, 100] += 40                     # a hot column on CCD 5
    >>> m = EpochMask(counts, epoch="Y2E1")
    >>> bool(m.mask[4, 10:20, 100].all()), bool(m.mask[4, 30:, 100].any())
    (True, False)
    >>> m.apply([5, 5], [805.0, 10.0], [200.0, 200.0])    # x=805 is in cell 100
    array([ True, False])
    """

    def __init__(self, counts, *, epoch: str = None, fp_rate: float = DEFAULT_FP_RATE,
                 x_bin: int = 1, y_bin: int = 1, floor: str = DEFAULT_FLOOR,
                 min_exp: int = None, max_exp: int = None, demo: bool = False,
                 source: str = None):
        _check_options(fp_rate, x_bin, y_bin, floor)
        counts = np.asarray(counts)
        if counts.ndim != 3 or counts.shape[0] != N_CCD:
            raise BadInputError(f"counts have shape {counts.shape}, expected ({N_CCD}, ny, nx)")
        if counts.dtype.kind not in "ui" or (counts.size and counts.min() < 0):
            raise BadInputError(f"counts must be non-negative integers, not {counts.dtype}")
        if CCD_NY % counts.shape[1] or CCD_NX % counts.shape[2]:
            raise BadInputError(f"a {counts.shape[1]} x {counts.shape[2]} cell grid does not divide a CCD")
        self.epoch = epoch
        self.fp_rate = float(fp_rate)
        self.x_bin, self.y_bin = int(x_bin), int(y_bin)
        self.floor = floor
        self.min_exp, self.max_exp = min_exp, max_exp
        self.demo = bool(demo)
        self.source = source
        self.counts = rebin_counts(counts, self.x_bin, self.y_bin)
        ny, nx = self.counts.shape[1:]
        self.cell_size = (CCD_NY // ny, CCD_NX // nx)
        self._compute()

    @classmethod
    def from_maps(cls, maps: "CountMaps", epoch: str, **options) -> "EpochMask":
        """The mask of one epoch of a `CountMaps` file (options as for the class)."""
        info = maps.info(epoch)
        return cls(maps.counts(epoch), epoch=epoch, min_exp=info["min_exp"],
                   max_exp=info["max_exp"], demo=info["demo"], source=maps.path, **options)

    def _compute(self):
        counts = self.counts
        n_ccd, ny, nx = counts.shape
        # CCD 31: statistics from the cells wholly left of x = 1024.5 (amp B).
        half_cells = (CCD_NX // 2) // self.cell_size[1]
        self.mode = np.full(n_ccd, np.nan)
        self.centre = np.full(n_ccd, np.nan)
        self.live = counts.reshape(n_ccd, -1).sum(axis=1) > 0
        for index in np.flatnonzero(self.live):  # a loop over CCDs, not cells
            cells = counts[index, :, :half_cells] if index + 1 == HALF_MASKED_CCD else counts[index]
            if cells.size == 0 or not cells.any():
                self.live[index] = False
                continue
            self.mode[index] = np.argmax(np.bincount(cells.ravel()))
            self.centre[index] = np.median(cells) if self.floor == "median" else cells.mean()
        self.threshold = np.where(self.live, poisson_threshold(
            np.nan_to_num(self.mode), np.nan_to_num(self.centre), self.fp_rate), np.nan)
        with np.errstate(invalid="ignore"):
            mask = counts > self.threshold[:, None, None]
        mask[~self.live] = True
        mask[HALF_MASKED_CCD - 1, :, half_cells:] = True
        self.mask = mask

    # -- statistics

    @property
    def area_fraction(self) -> float:
        """Fraction of the area of the live CCDs that is masked."""
        return float(self.mask[self.live].mean()) if self.live.any() else 1.0

    @property
    def transient_fraction(self) -> float:
        """Fraction of the epoch's transients that fall in masked cells."""
        total = self.counts.sum()
        return float(self.counts[self.mask].sum() / total) if total else 0.0

    def stats(self):
        """Per-CCD statistics as an astropy Table.

        Columns: CCDNUM, DETPOS, LIVE, MODE, CENTRE (median or mean cell count),
        THRESHOLD, N_TRANSIENTS, AREA_MASKED and TRANSIENTS_MASKED (fractions of
        the CCD's cells and transients that are masked).
        """
        from astropy.table import Table

        n_ccd = self.counts.shape[0]
        flat_counts = self.counts.reshape(n_ccd, -1)
        flat_mask = self.mask.reshape(n_ccd, -1)
        n_transients = flat_counts.sum(axis=1)
        masked_transients = np.where(flat_mask, flat_counts, 0).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            transients_masked = np.where(n_transients > 0, masked_transients / n_transients, 0.0)
        ccdnum = np.arange(1, n_ccd + 1)
        return Table(
            {
                "CCDNUM": ccdnum,
                "DETPOS": [DETPOS[c] for c in ccdnum],
                "LIVE": self.live,
                "MODE": self.mode,
                "CENTRE": self.centre,
                "THRESHOLD": self.threshold,
                "N_TRANSIENTS": n_transients,
                "AREA_MASKED": flat_mask.mean(axis=1),
                "TRANSIENTS_MASKED": transients_masked,
            },
            meta={"EPOCH": self.epoch, "AREAFRAC": self.area_fraction,
                  "TRANFRAC": self.transient_fraction},
        )

    # -- lookups

    def cell_index(self, ccdnum, x, y):
        """Flat index into ``mask`` of each position; -1 where it is off the CCDs.

        A position belongs to the cell ``X = floor((x - 1) / cx)``: a position on a
        cell edge ``x = cx X + 1`` belongs to cell X, the cell on its right (its
        higher-x side), exactly as the DES maps count transients.  The half
        pixel 0.5 <= x < 1 left of the first cell edge belongs to the first cell.
        Likewise in y.  Positions off the CCD (x < 0.5, x >= 2048.5, y < 0.5,
        y >= 4096.5, NaN) and CCDNUM outside 1..62 give -1.
        """
        ccdnum = np.asarray(ccdnum)
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        n_ccd, ny, nx = self.mask.shape
        cell_ny, cell_nx = self.cell_size
        on = (ccdnum >= 1) & (ccdnum <= n_ccd)
        on &= (x >= 0.5) & (x < CCD_NX + 0.5) & (y >= 0.5) & (y < CCD_NY + 0.5)  # NaN fails
        # Truncation toward zero is floor for x >= 1 and gives cell 0 for the
        # half pixel 0.5 <= x < 1; the cell sizes are powers of two, so the
        # scaling is exact.
        x_cell = ((np.where(on, x, 1.0) - 1.0) * (1.0 / cell_nx)).astype(np.intp)
        y_cell = ((np.where(on, y, 1.0) - 1.0) * (1.0 / cell_ny)).astype(np.intp)
        flat = ((np.where(on, ccdnum, 1).astype(np.intp) - 1) * ny + y_cell) * nx + x_cell
        return np.where(on, flat, -1)

    def apply(self, ccdnum, x, y) -> np.ndarray:
        """Whether each position (FITS 1-indexed pixel coordinates) is masked.

        See `cell_index` for which cell a position on a cell edge belongs to.

        Raises
        ------
        BadInputError
            If any CCDNUM is outside 1..62 or any position is off the CCD
            (0.5 <= x < 2048.5 and 0.5 <= y < 4096.5) or NaN.
        """
        flat = self.cell_index(ccdnum, x, y)
        off = flat < 0
        if off.any():
            rows = np.flatnonzero(off)
            raise BadInputError(
                f"{rows.size} position(s) off the CCDs or with CCDNUM outside 1..{N_CCD} "
                f"(first at index {rows[0]})"
            )
        return self.mask.ravel()[flat]

    def pixel_mask(self, ccdnum: int) -> np.ndarray:
        """The full-resolution mask of one CCD: bool (4096, 2048), [y - 1, x - 1].

        Pixel (x, y) with centre at the integer position is masked exactly when
        the cell holding its centre is.
        """
        if not 1 <= ccdnum <= self.mask.shape[0]:
            raise BadInputError(f"ccdnum={ccdnum}: must be in 1..{self.mask.shape[0]}")
        return self._full_resolution(self.mask[ccdnum - 1])

    def _full_resolution(self, cells):
        """Repeat a (ny, nx) cell image to the 4096 x 2048 pixel grid."""
        cell_ny, cell_nx = self.cell_size
        return np.repeat(np.repeat(cells, cell_nx, axis=1), cell_ny, axis=0)

    # -- output

    def provenance(self) -> list:
        """(keyword, value, comment) cards describing how the mask was made."""
        import datetime

        return [
            ("EPOCH", self.epoch or "", "DES observing epoch"),
            ("MIN_EXP", -1 if self.min_exp is None else int(self.min_exp), "first expnum of the epoch"),
            ("MAX_EXP", -1 if self.max_exp is None else int(self.max_exp), "last expnum of the epoch"),
            ("FP_RATE", self.fp_rate, "false-positive rate per cell"),
            ("X_BIN", self.x_bin, "extra binning of count-map cells along x"),
            ("Y_BIN", self.y_bin, "extra binning of count-map cells along y"),
            ("CELL_NX", self.cell_size[1], "pixels per masking cell along x"),
            ("CELL_NY", self.cell_size[0], "pixels per masking cell along y"),
            ("FLOOR", self.floor, "threshold floor: 2 x this statistic of cells"),
            ("AREAFRAC", self.area_fraction, "fraction of live-CCD area masked"),
            ("TRANFRAC", self.transient_fraction, "fraction of transients masked"),
            ("DEMO", self.demo, "T = made from SYNTHETIC demo counts, not DES"),
            ("COUNTS", os.path.basename(self.source or ""), "count-map file"),
            ("TM_VERS", __version__, "transient_masks version"),
            ("DATE", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
             "UTC time the file was written"),
        ]

    def write_masks(self, path: str, compress: bool = True, masked_value: int = 1,
                    overwrite: bool = False) -> str:
        """Write the full-resolution masks: one 4096 x 2048 image per CCD.

        Extension k (1..62) is CCDNUM k, with CCDNUM, DETPOS, EXTNAME (= DETPOS)
        and the CCD's statistics in its header; the primary header holds the
        provenance (`provenance`).  Masked pixels hold ``masked_value``, others 0.

        Parameters
        ----------
        path : str
            Output file; written atomically.
        compress : bool
            Tile-compressed (GZIP_2, one tile per CCD: about 1 MB an epoch) or
            plain FITS (about 520 MB an epoch).  Both read with astropy and fitsio.
        masked_value : int
            Value of masked pixels, 1 to 32767: a DES BADPIX bit (`MASK_BITS`)
            lets the mask be OR-ed into a DES bmask.  Images are uint8 for values
            up to 255 and int16 above.
        overwrite : bool
            Whether an existing file may be replaced.

        Returns
        -------
        str
            The path written.
        """
        from astropy.io import fits

        masked_value = int(masked_value)
        if not 1 <= masked_value <= 32767:
            raise BadInputError(f"masked_value={masked_value}: must be in 1..32767")
        dtype = np.uint8 if masked_value <= 255 else np.int16
        primary = fits.PrimaryHDU()
        for card in self.provenance():
            primary.header[card[0]] = card[1:]
        primary.header["MASKVAL"] = (masked_value, "value of masked pixels")
        primary.header["COMMENT"] = "transient_masks: DECam cells with a significant excess of transients"
        if self.demo:
            primary.header["COMMENT"] = "SYNTHETIC DEMO DATA: these are not real DES masks"
        ccd_stats = self.stats()

        def extension_bytes(row):
            ccdnum = int(row["CCDNUM"])
            image = self._full_resolution(self.mask[ccdnum - 1].astype(dtype) * dtype(masked_value))
            header = fits.Header()
            header["EXTNAME"] = row["DETPOS"]
            header["CCDNUM"] = (ccdnum, "DECam CCD number")
            header["DETPOS"] = (row["DETPOS"], "DECam detector position")
            header["EPOCH"] = self.epoch or ""
            header["LIVE"] = (bool(row["LIVE"]), "F = no transients: masked entirely")
            header["MODE"] = (_finite_or(row["MODE"]), "modal cell count (-1: none)")
            header["THRESH"] = (_finite_or(row["THRESHOLD"]), "cells with more counts are masked")
            header["AREAFRAC"] = (float(row["AREA_MASKED"]), "fraction of CCD area masked")
            header["TRANFRAC"] = (float(row["TRANSIENTS_MASKED"]), "fraction of its transients masked")
            header["MASKVAL"] = masked_value
            header["DEMO"] = self.demo
            if compress:
                hdu = fits.CompImageHDU(image, header=header, compression_type="GZIP_2",
                                        tile_shape=image.shape)
            else:
                hdu = fits.ImageHDU(image, header=header)
            return _extension_bytes(hdu)

        inputs = [self.source] if self.source else ()
        with atomic_output(path, overwrite=overwrite, inputs=inputs) as tmp, open(tmp, "wb") as out:
            out.write(primary.header.tostring().encode("ascii"))
            if compress:
                # zlib releases the GIL: compress the CCDs in threads.
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
                    for chunk in pool.map(extension_bytes, ccd_stats):
                        out.write(chunk)
            else:  # one 8 MB image at a time
                for chunk in map(extension_bytes, ccd_stats):
                    out.write(chunk)
        return path


def _extension_bytes(hdu) -> bytes:
    """An extension HDU as it stands in a file, so HDUs can be made in parallel."""
    import io

    buffer = io.BytesIO()
    hdu.writeto(buffer)  # astropy puts a minimal primary HDU (one 2880-byte block) first
    data = buffer.getvalue()
    if data[2880:2888] != b"XTENSION":
        raise RuntimeError("unexpected FITS layout from astropy")
    return data[2880:]


def _finite_or(value, default=-1.0):
    value = float(value)
    return value if np.isfinite(value) else default


# ---- All epochs

#: Codes of `TransientMasks.classify` (and BAD for rows that cannot be classified).
KEEP, MASKED, NO_EPOCH, BAD = 0, 1, 2, 3


class TransientMasks:
    """The masks of every epoch of a count-map file, applied to events.

    Each event's epoch comes from its EXPNUM and the epoch table (see
    `epoch_index` for overlapping epochs); only the epochs the events need are
    read and masked.

    Parameters
    ----------
    counts : str or CountMaps, optional
        The count-map file (default: see `find_counts_file`).
    epochs : str or astropy.table.Table, optional
        The epoch table (default: the shipped ``ops_epochs.fits``).
    fp_rate, x_bin, y_bin, floor
        As for `EpochMask`.
    keep_no_epoch : bool
        Keep (True) or mask (False, the default) events whose EXPNUM is in no
        epoch, or in an epoch with no count map.

    Examples
    --------
    >>> masks = TransientMasks()                                 # doctest: +SKIP
    >>> masks.apply(expnum=[350000], ccdnum=[5], x=[805.0], y=[200.0])  # doctest: +SKIP
    array([False])
    """

    def __init__(self, counts=None, *, epochs=None, fp_rate: float = DEFAULT_FP_RATE,
                 x_bin: int = 1, y_bin: int = 1, floor: str = DEFAULT_FLOOR,
                 keep_no_epoch: bool = False):
        _check_options(fp_rate, x_bin, y_bin, floor)
        self.maps = counts if isinstance(counts, CountMaps) else CountMaps(counts)
        self.epochs = read_epochs(epochs)
        self.options = {"fp_rate": fp_rate, "x_bin": x_bin, "y_bin": y_bin, "floor": floor}
        self.keep_no_epoch = keep_no_epoch
        self._masks = {}
        self._warned = set()

    def provenance(self) -> list:
        """(keyword, value, comment) cards recorded in filtered tables."""
        return [
            ("TM_VERS", __version__, "filtered by transient_masks, this version"),
            ("TM_COUNT", os.path.basename(self.maps.path), "count-map file of the masks"),
            ("TM_FPRAT", self.options["fp_rate"], "masks: false-positive rate per cell"),
            ("TM_XBIN", self.options["x_bin"], "masks: extra binning along x"),
            ("TM_YBIN", self.options["y_bin"], "masks: extra binning along y"),
            ("TM_FLOOR", self.options["floor"], "masks: threshold floor statistic"),
            ("TM_NOEP", self.keep_no_epoch, "T = events in no epoch were kept"),
            ("DEMO", bool(self.maps.demo), "T = masks from SYNTHETIC demo counts"),
        ]

    def epoch_index(self, expnum) -> np.ndarray:
        """Row of the epoch table of each EXPNUM; -1 for none."""
        return epoch_index(expnum, self.epochs["MINEXPNUM"], self.epochs["MAXEXPNUM"])

    def epoch_of(self, expnum) -> np.ndarray:
        """Epoch name of each EXPNUM ('' for none)."""
        index = self.epoch_index(expnum)
        names = np.append(np.asarray(self.epochs["NAME"], dtype=str), "")
        return names[index]  # index -1 picks the trailing ''

    def mask_for(self, epoch: str) -> EpochMask:
        """The `EpochMask` of one epoch, built on first use."""
        if epoch not in self._masks:
            self._masks[epoch] = EpochMask.from_maps(self.maps, epoch, **self.options)
        return self._masks[epoch]

    def classify(self, expnum, ccdnum, x, y) -> np.ndarray:
        """KEEP (0), MASKED (1) or NO_EPOCH (2) for each event.

        NO_EPOCH: the EXPNUM is in no epoch, or its epoch has no count map.
        Positions must be on the CCDs (see `EpochMask.apply`).
        """
        index = self.epoch_index(expnum)
        ccdnum = np.asarray(ccdnum)
        x = np.asarray(x)
        y = np.asarray(y)
        codes = np.full(index.shape, NO_EPOCH, dtype=np.uint8)
        for row in np.unique(index[index >= 0]):  # a loop over epochs, not events
            epoch = str(self.epochs["NAME"][row])
            if epoch not in self.maps:
                if epoch not in self._warned:
                    log.warning("%s: no count map for epoch %s; its events count as in no epoch",
                                self.maps.path, epoch)
                    self._warned.add(epoch)
                continue
            chosen = index == row
            codes[chosen] = self.mask_for(epoch).apply(ccdnum[chosen], x[chosen], y[chosen])
        return codes

    def apply(self, expnum, ccdnum, x, y) -> np.ndarray:
        """Whether each event is masked (events in no epoch: see ``keep_no_epoch``)."""
        codes = self.classify(expnum, ccdnum, x, y)
        return (codes == MASKED) | ((codes == NO_EPOCH) & (not self.keep_no_epoch))


# ---- Filtering event tables

#: Fallback position columns, tried in order when the requested ones are absent.
_FALLBACK_XY = [("X_IMAGE", "Y_IMAGE"), ("X", "Y")]
_FITS_SUFFIXES = (".fits", ".fit", ".fts")


class FilterCounts:
    """How many events a filtering run read, dropped and wrote.

    ``read == masked + no_epoch_dropped + bad + written`` always holds;
    ``no_epoch_kept`` (with keep_no_epoch) are part of ``written``.
    """

    def __init__(self):
        self.read = self.masked = self.no_epoch_dropped = self.no_epoch_kept = 0
        self.bad = self.written = 0
        self.bad_rows = []  # the first few bad rows (0-based), for messages

    def add(self, codes, kept, row_offset=0):
        """Count one block of rows from its `classify` codes and kept flags."""
        no_epoch = codes == NO_EPOCH
        bad = codes == BAD
        self.read += codes.size
        self.masked += int((codes == MASKED).sum())
        self.no_epoch_dropped += int((no_epoch & ~kept).sum())
        self.no_epoch_kept += int((no_epoch & kept).sum())
        self.written += int(kept.sum())
        n_bad = int(bad.sum())
        if n_bad and len(self.bad_rows) < 10:
            self.bad_rows.extend((np.flatnonzero(bad)[: 10 - len(self.bad_rows)] + row_offset).tolist())
        self.bad += n_bad

    def check_bad(self, source):
        """Raise BadInputError naming the bad rows, if there are any."""
        if self.bad:
            shown = ", ".join(map(str, self.bad_rows)) + (", ..." if self.bad > len(self.bad_rows) else "")
            raise BadInputError(
                f"{source}: {self.bad} bad row(s) (CCDNUM outside 1..{N_CCD}, NaN or off-CCD "
                f"position) at row(s) {shown} (0-based); use --drop_bad to drop them"
            )

    def summary(self) -> str:
        """One line: read, dropped (masked, no epoch, bad), written."""
        text = (f"{self.read} events read, {self.masked} dropped in masked regions, "
                f"{self.no_epoch_dropped} dropped for no epoch, {self.bad} bad rows dropped, "
                f"{self.written} written")
        if self.no_epoch_kept:
            text += f" (including {self.no_epoch_kept} in no epoch, kept)"
        return text


def resolve_columns(colnames, expnum_col="EXPNUM", ccdnum_col="CCDNUM", x_col="XWIN_IMAGE",
                    y_col="YWIN_IMAGE", source="table"):
    """The four column names to use, checked against ``colnames``.

    When the default position columns (XWIN_IMAGE, YWIN_IMAGE) are absent and
    X_IMAGE/Y_IMAGE or X/Y are present, those are used and the choice is logged.

    Returns
    -------
    (str, str, str, str)
        The EXPNUM, CCDNUM, x and y column names.
    """
    colnames = list(colnames)
    if (x_col, y_col) == (DEFAULT_COLUMNS["x"], DEFAULT_COLUMNS["y"]) and not (
        x_col in colnames and y_col in colnames
    ):
        for fx, fy in _FALLBACK_XY:
            if fx in colnames and fy in colnames:
                log.info("%s: no %s/%s columns; using %s/%s", source, x_col, y_col, fx, fy)
                x_col, y_col = fx, fy
                break
    for role, name in (("expnum", expnum_col), ("ccdnum", ccdnum_col), ("x", x_col), ("y", y_col)):
        if name not in colnames:
            raise BadInputError(
                f"{source}: no column {name!r} (set --{role}_col; columns are {', '.join(colnames[:20])})"
            )
    return expnum_col, ccdnum_col, x_col, y_col


def _column_values(column, fill, dtype):
    """A column as a plain array, masked entries replaced by ``fill``."""
    values = np.ma.getdata(column)
    mask = np.ma.getmaskarray(column) if np.ma.isMaskedArray(column) else None
    values = np.asarray(values, dtype=dtype)
    if mask is not None and mask.any():
        values = np.where(mask, fill, values)
    return values


def _classify_rows(masks, expnum, ccdnum, x, y):
    """`TransientMasks.classify` codes for a block of rows, BAD for unusable rows."""
    good = ((ccdnum >= 1) & (ccdnum <= N_CCD) & (x >= 0.5) & (x < CCD_NX + 0.5)
            & (y >= 0.5) & (y < CCD_NY + 0.5))  # NaN fails every comparison
    codes = np.full(good.shape, BAD, dtype=np.uint8)
    codes[good] = masks.classify(expnum[good], ccdnum[good], x[good], y[good])
    return codes


def _keep(codes, keep_no_epoch):
    return (codes == KEEP) | ((codes == NO_EPOCH) & keep_no_epoch)


def filter_table(table, masks: "TransientMasks", *, expnum_col="EXPNUM", ccdnum_col="CCDNUM",
                 x_col="XWIN_IMAGE", y_col="YWIN_IMAGE", drop_bad=False, source="table"):
    """The rows of an event table that are not masked, in their order.

    Parameters
    ----------
    table : astropy.table.Table
        Events with EXPNUM, CCDNUM and FITS 1-indexed x, y columns.
    masks : TransientMasks
        The masks; its ``keep_no_epoch`` decides the events in no epoch.
    expnum_col, ccdnum_col, x_col, y_col : str
        Column names (see `resolve_columns` for the x/y fallbacks).
    drop_bad : bool
        Drop rows with CCDNUM outside 1..62 or a NaN or off-CCD position
        (default: raise `BadInputError` naming them).
    source : str
        Name of the table in messages.

    Returns
    -------
    (astropy.table.Table, FilterCounts)
        The kept rows with every column, unit and the metadata; the counts.
    """
    names = resolve_columns(table.colnames, expnum_col, ccdnum_col, x_col, y_col, source)
    expnum = _column_values(table[names[0]], -1, np.int64)
    ccdnum = _column_values(table[names[1]], 0, np.int64)
    x = _column_values(table[names[2]], np.nan, np.float64)
    y = _column_values(table[names[3]], np.nan, np.float64)
    codes = _classify_rows(masks, expnum, ccdnum, x, y)
    kept = _keep(codes, masks.keep_no_epoch)
    counts = FilterCounts()
    counts.add(codes, kept)
    if not drop_bad:
        counts.check_bad(source)
    return table[kept], counts


def _is_plain_fits(path, table_format):
    name = path.lower()
    return (table_format in (None, "fits")) and name.endswith(_FITS_SUFFIXES)


def _first_table_hdu(hdul):
    from astropy.io import fits

    for index, hdu in enumerate(hdul):
        if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
            return index, hdu
    return None, None


def _filter_fits_stream(input_path, output_path, masks, names, drop_bad, chunk_rows):
    """Filter an uncompressed FITS binary table row block by row block.

    The rows are copied as raw bytes, so every column, scaling, null value,
    unit and header keyword is kept exactly; memory stays at one block.
    Returns the FilterCounts, or None when the table does not suit (variable
    length arrays, ASCII table) and the generic path must be used.
    """
    from astropy.io import fits

    with fits.open(input_path, memmap=False, lazy_load_hdus=True) as hdul:
        index, hdu = _first_table_hdu(hdul)
        if index is None:
            raise BadInputError(f"{input_path}: no table HDU")
        if not isinstance(hdu, fits.BinTableHDU) or hdu.header.get("PCOUNT", 0) != 0:
            return None
        header = hdu.header.copy()
        primary_header = hdul[0].header.copy()
        if hdul[0].header.get("NAXIS", 0):
            return None
        info = hdul.fileinfo(index)
        columns = hdu.columns
    names = resolve_columns(columns.names, *names, source=input_path)
    row_bytes = header["NAXIS1"]
    n_rows = header["NAXIS2"]
    raw_dtype = np.dtype(columns.dtype).newbyteorder(">")  # one row as it is on disk
    if raw_dtype.itemsize != row_bytes:
        return None
    scales = {}
    for name in names:
        column = columns[name]
        if column.dim or raw_dtype[name].shape:
            raise BadInputError(f"{input_path}: column {name!r} holds arrays, expected one value per row")
        scales[name] = (column.bscale, column.bzero)

    def values(block, name, dtype):
        data = block[name].astype(dtype)
        scale, zero = scales[name]
        if scale not in (None, 1):
            data = data * scale
        if zero not in (None, 0):
            data = data + zero
        return data.astype(dtype, copy=False)

    for card in masks.provenance():
        header[card[0]] = card[1:]
    header["NAXIS2"] = 0  # patched once the number of kept rows is known
    for key in ("CHECKSUM", "DATASUM"):
        header.remove(key, ignore_missing=True)
    primary_header.remove("CHECKSUM", ignore_missing=True)
    primary_header.remove("DATASUM", ignore_missing=True)
    counts = FilterCounts()
    with open(input_path, "rb") as source_file, open(output_path, "wb") as out:
        out.write(primary_header.tostring().encode("ascii"))
        header_start = out.tell()
        header_text = header.tostring().encode("ascii")
        out.write(header_text)
        source_file.seek(info["datLoc"])
        for start in range(0, n_rows, chunk_rows):
            n_block = min(chunk_rows, n_rows - start)
            block = np.fromfile(source_file, dtype=raw_dtype, count=n_block)
            if block.size != n_block:
                raise BadInputError(f"{input_path}: truncated table (rows {start}..{start + n_block})")
            codes = _classify_rows(
                masks, values(block, names[0], np.int64), values(block, names[1], np.int64),
                values(block, names[2], np.float64), values(block, names[3], np.float64),
            )
            kept = _keep(codes, masks.keep_no_epoch)
            counts.add(codes, kept, row_offset=start)
            block[kept].tofile(out)
        data_bytes = counts.written * row_bytes
        out.write(b"\0" * (-data_bytes % 2880))
        header["NAXIS2"] = counts.written
        new_header = header.tostring().encode("ascii")
        assert len(new_header) == len(header_text)  # same cards, same size
        out.seek(header_start)
        out.write(new_header)
    if not drop_bad:
        counts.check_bad(input_path)  # the partial output is discarded
    return counts


def filter_file(input_path: str, output_path: str, masks: "TransientMasks", *,
                expnum_col="EXPNUM", ccdnum_col="CCDNUM", x_col="XWIN_IMAGE",
                y_col="YWIN_IMAGE", drop_bad=False, table_format=None,
                output_format=None, overwrite=False, chunk_rows=500_000) -> FilterCounts:
    """Write a copy of an event table without the events in masked regions.

    Reads any format astropy's Table reads (FITS, ECSV, CSV, HDF5, Parquet...),
    chosen by extension or ``table_format``; writes ``output_path`` atomically in
    its own format (``output_format`` or its extension).  Rows keep their order,
    every column, dtype, unit and the table metadata.  An uncompressed FITS
    binary table written to FITS is streamed in blocks of ``chunk_rows`` rows.

    Returns
    -------
    FilterCounts
    """
    from astropy.table import Table

    if not os.path.exists(input_path):
        raise BadInputError(f"{input_path}: input file not found")
    names = (expnum_col, ccdnum_col, x_col, y_col)
    same_format = output_format in (None, "fits") and _is_plain_fits(output_path, output_format)
    with atomic_output(output_path, overwrite=overwrite, inputs=[input_path]) as tmp:
        if same_format and _is_plain_fits(input_path, table_format):
            counts = _filter_fits_stream(input_path, tmp, masks, names, drop_bad, chunk_rows)
            if counts is not None:
                return counts
        read_options = {"format": table_format} if table_format else {}
        if input_path.lower().endswith((".h5", ".hdf5")) and "path" not in read_options:
            read_options["path"] = _first_hdf5_table(input_path)
        try:
            table = Table.read(input_path, **read_options)
        except Exception as exc:  # astropy raises many types for unreadable files
            raise BadInputError(f"{input_path}: cannot read as a table ({type(exc).__name__}: {exc})") from None
        kept, counts = filter_table(table, masks, expnum_col=expnum_col, ccdnum_col=ccdnum_col,
                                    x_col=x_col, y_col=y_col, drop_bad=drop_bad, source=input_path)
        kept.meta.update((key, value) for key, value, _ in masks.provenance())
        write_options = {"format": output_format} if output_format else {}
        if output_path.lower().endswith((".h5", ".hdf5")):
            write_options.update(path=read_options.get("path", "data"), serialize_meta=True)
        try:
            kept.write(tmp, **write_options)
        except Exception as exc:
            raise BadInputError(f"{output_path}: cannot write this table format ({exc})") from None
    return counts


def _first_hdf5_table(path):
    """Path of the first table in an HDF5 file (astropy needs one to read it)."""
    import h5py

    found = []
    with h5py.File(path, "r") as h5:
        h5.visititems(lambda name, item: found.append(name)
                      if isinstance(item, h5py.Dataset) and item.dtype.names else None)
    if not found:
        raise BadInputError(f"{path}: no table in this HDF5 file")
    return found[0]


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


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be a positive integer")
    return value


def _masked_value(text):
    """A number, or a DES mask bit name such as SUSPECT."""
    if text.upper() in MASK_BITS:
        return MASK_BITS[text.upper()]
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text}: not a number nor a DES mask bit ({', '.join(MASK_BITS)})") from None


def _add_mask_arguments(parser, modes):
    """Add the --epoch and --input modes and the masking options."""
    modes.add_argument("--epoch", metavar="EPOCH",
                       help="write the full-resolution masks of this epoch (e.g. Y2E1)")
    modes.add_argument("--input", metavar="TABLE",
                       help="write a copy of this event table without the events in masked regions")
    group = parser.add_argument_group("masking options")
    group.add_argument("--counts", metavar="FILE",
                       help=f"DES count-map file (default: {REAL_COUNTS_FILENAME} beside the module "
                            f"or in the working directory, else the synthetic demo maps)")
    group.add_argument("--epochs_file", metavar="FILE",
                       help=f"DES epoch table (default: the shipped {EPOCHS_FILENAME})")
    group.add_argument("--fp_rate", type=float, default=DEFAULT_FP_RATE,
                       help="false-positive probability per cell of a clean CCD (default %(default)g)")
    group.add_argument("--x_bin", type=_positive_int, default=1,
                       help="sum this many cells along x before masking (a divisor of 256; default 1)")
    group.add_argument("--y_bin", type=_positive_int, default=1,
                       help="sum this many cells along y before masking (a divisor of 256; default 1)")
    group.add_argument("--floor", choices=FLOORS, default=DEFAULT_FLOOR,
                       help="threshold floor is twice this statistic of a CCD's cells; 'mean' "
                            "reproduces the published DES masks (default %(default)s)")
    group.add_argument("-o", "--output", metavar="FILE",
                       help="output file (default: transient_masks_EPOCH.fits.fz for --epoch, "
                            "STEM_filtered.EXT in the working directory for --input)")
    group.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    group.add_argument("--no-compress", dest="compress", action="store_false",
                       help="--epoch: write plain FITS (about 520 MB) instead of tile-compressed (about 1 MB)")
    group.add_argument("--masked_value", type=_masked_value, default=1, metavar="VALUE",
                       help="--epoch: value of masked pixels, a number or a DES mask bit name such "
                            "as SUSPECT, so the mask can be OR-ed into a DES bmask (default 1)")
    group.add_argument("--keep_no_epoch", action="store_true",
                       help="--input: keep events whose EXPNUM is in no epoch (default: drop them)")
    group.add_argument("--drop_bad", action="store_true",
                       help="--input: drop rows with CCDNUM outside 1..62 or a NaN or off-CCD "
                            "position (default: stop with an error naming them)")
    group.add_argument("--format", metavar="FORMAT", dest="table_format",
                       help="--input: astropy table format of input and output (default: by extension)")
    for role, default in DEFAULT_COLUMNS.items():
        group.add_argument(f"--{role}_col", default=default, metavar="NAME",
                           help=f"--input: {role} column (default %(default)s"
                                + ("; falls back to X_IMAGE/Y_IMAGE or X/Y)" if role in "xy" else ")"))


def _mask_options(args) -> dict:
    return {"fp_rate": args.fp_rate, "x_bin": args.x_bin, "y_bin": args.y_bin, "floor": args.floor}


def _run_epoch(args) -> int:
    maps = CountMaps(args.counts)
    mask = EpochMask.from_maps(maps, args.epoch, **_mask_options(args))
    suffix = ".fits.fz" if args.compress else ".fits"
    output = args.output or f"transient_masks_{args.epoch}{suffix}"
    mask.write_masks(output, compress=args.compress, masked_value=args.masked_value,
                     overwrite=args.overwrite)
    demo = " [SYNTHETIC DEMO DATA]" if mask.demo else ""
    print(f"{args.epoch}{demo}: {100 * mask.area_fraction:.2f}% of the live-CCD area and "
          f"{100 * mask.transient_fraction:.2f}% of the transients masked; wrote {output}",
          file=sys.stderr)
    return 0


def _run_filter(args) -> int:
    masks = TransientMasks(args.counts, epochs=args.epochs_file, keep_no_epoch=args.keep_no_epoch,
                           **_mask_options(args))
    stem, ext = os.path.basename(args.input), _suffix(os.path.basename(args.input))
    output = args.output or f"{stem[: len(stem) - len(ext)]}_filtered{ext}"
    counts = filter_file(args.input, output, masks, expnum_col=args.expnum_col,
                         ccdnum_col=args.ccdnum_col, x_col=args.x_col, y_col=args.y_col,
                         drop_bad=args.drop_bad, table_format=args.table_format,
                         output_format=args.table_format, overwrite=args.overwrite)
    demo = " [masks from SYNTHETIC DEMO DATA]" if masks.maps.demo else ""
    print(f"{args.input}: {counts.summary()}; wrote {output}{demo}", file=sys.stderr)
    return 0


class _ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit code 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


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
    parser = _ArgumentParser(
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 for --help
        return exc.code
    run = next(globals()[name] for dest, name in _MODES if getattr(args, dest, None))
    # Library modules log; the command line shows their messages on stderr.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("transient_masks: %(message)s"))
    loggers = [logging.getLogger(name) for name in (__name__, "des_background")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        return run(args)
    except BadInputError as exc:
        print(f"transient_masks: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # an unexpected failure: one line too, and exit 1
        print(f"transient_masks: unexpected failure: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
