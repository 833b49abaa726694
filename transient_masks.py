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
    >>> maps = tm.CountMaps(tm.data_path(tm.DEMO_COUNTS_FILENAME))  # or tm.CountMaps()
    >>> mask = tm.EpochMask.from_maps(maps, "Y2E1")
    >>> mask.apply(ccdnum=[31, 31, 46], x=[500.0, 1500.0, 1000.0], y=[100.0, 100.0, 2000.0])
    array([False,  True, False])
"""
import argparse
import contextlib
import glob
import gzip
import logging
import os
import re
import secrets
import site
import sys
import tempfile
import threading
import warnings

import numpy as np

__version__ = "0.1.0"

__all__ = [
    # constants
    "N_CCD", "CCD_NX", "CCD_NY", "MAP_NX", "MAP_NY", "DETPOS", "HALF_MASKED_CCD", "MASK_BITS",
    "DEFAULT_FP_RATE", "FLOORS", "DEFAULT_FLOOR", "DEFAULT_COLUMNS",
    "KEEP", "MASKED", "NO_EPOCH", "BAD",
    "BadInputError",
    # files, epochs and count maps
    "data_path", "check_input", "check_output", "check_outputs", "atomic_output", "read_epochs", "epoch_index", "find_counts_file", "CountMaps",
    # masks
    "rebin_counts", "poisson_threshold", "EpochMask", "TransientMasks",
    # multiscale masks
    "METHODS", "DEFAULT_METHOD", "DEFECT_KINDS", "PoissonTail", "lr_significance", "SignificanceRule",
    "AmpBackground", "Defect", "fit_segment", "LineDetector", "CellDetector", "BoxDetector",
    "default_detectors", "MultiscaleResult", "multiscale_mask", "write_defects", "write_regions",
    "defect_history",
    # filtering event tables
    "FilterCounts", "TABLE_SUFFIXES", "table_format_of", "resolve_columns", "filter_table", "filter_file",
    "filter_files", "expand_inputs",
    # gathering count maps
    "GatherResult", "bin_events", "gather_arrays", "gather_data", "write_count_maps", "write_fits_rows",
    # plotting
    "read_ccd_layout", "plot_ccd", "plot_epoch", "plot_focal_plane", "plot_survey_summary", "plot_methods",
    # command line and parallel runs
    "dask_client", "run_cli", "main",
]

log = logging.getLogger("transient_masks")  # also when run as a script (__main__)

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
#: Masking methods of `EpochMask`: the published DES rule and the multiscale method.
METHODS = ("des", "multiscale")
DEFAULT_METHOD = "des"
#: The multiscale method needs at least this many (re-binned) cells along x and y.
MULTISCALE_MIN_CELLS = 32
#: Kinds of defects in `EpochMask.defects`.
DEFECT_KINDS = ("cell", "column", "row", "edge", "box", "amp", "ccd")
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


def _printable(text) -> str:
    """``text`` as one line: newlines and other control characters escaped as Python
    writes them (a file name may hold any of them)."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class _OneLineFormatter(logging.Formatter):
    """Log records as single lines (`_printable`), prefixed with the command's name."""

    def format(self, record) -> str:
        return _printable(super().format(record))


#: A log record flagged with this attribute (``extra={_AFTER_SUCCESS: True}``) is
#: shown by the command line only at the end of a run that ended without an error.
_AFTER_SUCCESS = "tm_after_success"


class _HeldRecords(logging.Filter):
    """Holds back the records flagged `_AFTER_SUCCESS` (see `run_cli`)."""

    def __init__(self):
        super().__init__()
        self.held = []

    def filter(self, record) -> bool:
        if getattr(record, _AFTER_SUCCESS, False):
            self.held.append(record)
            return False
        return True


def _one_line(exc) -> str:
    """The first line of an exception's message, at most 200 characters (for error lines)."""
    lines = str(exc).strip().splitlines()
    text = lines[0].strip() if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# ---- Argument checks
# The public functions check their arguments here on the way in, so that a bad
# argument gives a one-line BadInputError naming it, never an IndexError,
# TypeError, ZeroDivisionError or MemoryError from deep inside.


def _describe_value(value) -> str:
    """A short repr of an argument for a message (arrays by dtype and shape)."""
    if isinstance(value, np.ndarray) and value.ndim:
        return f"array of {value.dtype} with shape {value.shape}"
    text = " ".join(repr(value).split())  # one line
    return text if len(text) <= 60 else text[:57] + "..."


def _check_int(name: str, value, lo: int = None, hi: int = None) -> int:
    """``value`` as an int: an integer (or a whole float) in ``lo..hi``; not a bool or str."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, float, np.floating)):
        raise BadInputError(f"{name}={_describe_value(value)}: must be an integer")
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value) or value != int(value):
            raise BadInputError(f"{name}={value!r}: must be an integer")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        limits = f"in {lo}..{hi}" if lo is not None and hi is not None else (
            f"at least {lo}" if lo is not None else f"at most {hi}")
        raise BadInputError(f"{name}={value}: must be {limits}")
    return value


def _check_real(name: str, value) -> float:
    """``value`` as a finite float; not a bool, str or complex."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)):
        raise BadInputError(f"{name}={_describe_value(value)}: must be a number")
    value = float(value)
    if not np.isfinite(value):
        raise BadInputError(f"{name}={value}: must be finite")
    return value


def _check_flag(name: str, value) -> bool:
    """A yes/no argument: True, False (numpy booleans, 0 and 1 too); not "no", which is true."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
        return bool(value)
    raise BadInputError(f"{name}={_describe_value(value)}: must be True or False")


def _check_fp_rate(fp_rate) -> float:
    """The false-positive rate as a float strictly between 0 and 1."""
    try:
        value = _check_real("fp_rate", fp_rate)
    except BadInputError:
        value = None
    if value is None or not 0 < value < 1:
        raise BadInputError(f"fp_rate={_describe_value(fp_rate)}: must be between 0 and 1")
    if 1.0 - value == 1.0:  # the Poisson quantile works at the level 1 - fp_rate
        raise BadInputError(f"fp_rate={value!r}: too small, 1 - fp_rate rounds to 1 (use at least 1e-15)")
    return value


def _check_path(name: str, value, optional: bool = False):
    """A file path argument: a non-empty str or os.PathLike (None if ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise BadInputError(f"{name}={_describe_value(value)}: must be a file path (a non-empty str)")
    return value


def _path_list(name: str, value) -> list:
    """A list of file paths: one path, or an iterable of them; None and "" entries (no file) are left out."""
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        value = [value]
    if not hasattr(value, "__iter__"):
        raise BadInputError(f"{name}={_describe_value(value)}: must be a list of file paths")
    return [_check_path(name, path) for path in value if path is not None and path != ""]


def _check_str(name: str, value, optional: bool = False):
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise BadInputError(f"{name}={_describe_value(value)}: must be a str")
    return value


def _printable_ascii(text: str) -> bool:
    """Whether ``text`` is printable ASCII, all a FITS header card holds."""
    return all(" " <= char <= "~" for char in text)


def _check_epoch_name(name: str, value, optional: bool = False):
    """An epoch name: text a FITS header holds (printable ASCII), not blank."""
    value = _check_str(name, value, optional)
    if value is not None and (not value.strip() or not _printable_ascii(value)):
        raise BadInputError(f"{name}={value!r}: an epoch name must be printable ASCII, not blank")
    return value


def _numeric_array(name: str, value, kinds: str = "iuf") -> np.ndarray:
    """``value`` as a numpy array of one of the dtype ``kinds`` (i, u, f; b if listed).

    Strings, objects, complex numbers, dates and ragged sequences are refused.
    """
    if isinstance(value, (str, bytes)):
        raise BadInputError(f"{name}={_describe_value(value)}: must be numbers, not a string")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nested sequences
        raise BadInputError(f"{name}: not an array of numbers ({exc})") from None
    if np.ma.isMaskedArray(value) and np.ma.getmaskarray(value).any():
        raise BadInputError(f"{name}: has masked (null) values")
    if array.dtype.kind not in kinds:
        raise BadInputError(f"{name}: must be numbers, not {array.dtype} values")
    return array


def _float_array(name: str, value) -> np.ndarray:
    """A numeric argument as a float64 array (integers and booleans excluded: i, u, f kinds)."""
    return _numeric_array(name, value).astype(np.float64, copy=False)


def _whole_int64(name: str, values: np.ndarray, bad=None) -> np.ndarray:
    """Integer-valued numbers as int64.

    Integer arrays are cast (uint64 beyond the int64 range and, for floats,
    non-finite or fractional values become ``bad`` when it is given, else raise).
    """
    if values.dtype.kind == "i" or (values.dtype.kind == "u" and values.dtype.itemsize < 8):
        return values.astype(np.int64, copy=False)
    if values.dtype.kind == "u":
        too_big = values > np.uint64(np.iinfo(np.int64).max)
        if not too_big.any():
            return values.astype(np.int64, copy=False)
        if bad is None:
            raise BadInputError(f"{name}: {int(too_big.sum())} value(s) beyond the int64 range")
        return np.where(too_big, bad, values.astype(np.int64))  # wraps only where replaced
    values = values.astype(np.float64, copy=False)  # float16 cannot hold 2**63
    with np.errstate(invalid="ignore"):
        whole = np.isfinite(values) & (values == np.floor(values)) & (np.abs(values) < 2.0 ** 63)
    if whole.all():
        return values.astype(np.int64)
    if bad is None:
        first = int(np.flatnonzero(~whole.ravel())[0])
        raise BadInputError(f"{name}: {int((~whole).sum())} value(s) are not whole numbers in the int64 range "
                            f"(first at index {first}: {values.ravel()[first]!r})")
    return np.where(whole, values, bad).astype(np.int64)


def _same_shape(**arrays) -> tuple:
    """The common shape of arrays that must match (0-d arrays broadcast to it)."""
    shapes = {name: array.shape for name, array in arrays.items() if array.ndim}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise BadInputError(f"arrays of different shapes: {listed}")
    return next(iter(shapes.values()), ())


def _broadcast_shape(**arrays) -> tuple:
    """The shape arrays broadcast to (an error naming them if they do not)."""
    try:
        return np.broadcast_shapes(*(array.shape for array in arrays.values()))
    except ValueError:
        listed = ", ".join(f"{name} {array.shape}" for name, array in arrays.items())
        raise BadInputError(f"arrays of shapes that do not broadcast: {listed}") from None


def _ccdnum_array(ccdnum) -> np.ndarray:
    """CCDNUM values as integers (kept in their integer dtype, for speed); floats that
    are not whole numbers (5.5, NaN, inf) become 0, no CCD."""
    values = _numeric_array("ccdnum", ccdnum)
    return _whole_int64("ccdnum", values, bad=0) if values.dtype.kind == "f" else values


def _position_arrays(ccdnum, x, y, **others) -> tuple:
    """CCDNUM (see `_ccdnum_array`) and x, y (numbers) flattened to their common shape.

    Returns ``(ccdnum, x, y, shape)``; ``others`` (arrays already checked) only
    take part in the shape check.  x and y keep their dtype (floats are
    converted block by block where they are used).
    """
    ccdnum = _ccdnum_array(ccdnum)
    x = _numeric_array("x", x)
    y = _numeric_array("y", y)
    shape = _same_shape(**others, ccdnum=ccdnum, x=x, y=y)
    ccdnum, x, y = (np.broadcast_to(a, shape).ravel() for a in (ccdnum, x, y))
    return ccdnum, x, y, shape


def _check_probability(name: str, value) -> float:
    """A probability strictly between 0 and 1 (a tail probability)."""
    try:
        number = _check_real(name, value)
    except BadInputError:
        number = None
    if number is None or not 0 < number < 1:
        raise BadInputError(f"{name}={_describe_value(value)}: must be between 0 and 1")
    return number


def _check_at_least(name: str, value, lo: float = 0.0, strict: bool = False) -> float:
    """A finite number >= ``lo`` (> ``lo`` if ``strict``)."""
    number = _check_real(name, value)
    if number < lo or (strict and number == lo):
        raise BadInputError(f"{name}={number!r}: must be {'greater than' if strict else 'at least'} {lo:g}")
    return number


def _check_int_tuple(name: str, value, length: int = None, lo: int = 1) -> tuple:
    """A tuple of integers >= ``lo`` (of ``length`` items if given)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") or (
            isinstance(value, np.ndarray) and value.ndim != 1):
        raise BadInputError(f"{name}={_describe_value(value)}: must be a tuple of integers")
    items = list(value)
    if length is not None and len(items) != length:
        raise BadInputError(f"{name}={_describe_value(value)}: must be {length} integers")
    for item in items:
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer, float, np.floating)) or (
                isinstance(item, (float, np.floating)) and not (np.isfinite(item) and item == int(item))):
            raise BadInputError(f"{name}={_describe_value(value)}: must be a tuple of integers")
        if item < lo:
            raise BadInputError(f"{name}={_describe_value(value)}: each must be at least {lo}")
    return tuple(int(item) for item in items)


def _check_grid_shape(name: str, shape) -> tuple:
    """A count-cube shape (62, ny, nx) for the multiscale method."""
    shape = _check_int_tuple(name, shape, 3, lo=1)
    if shape[0] != N_CCD or shape[2] < 2 or CCD_NY % shape[1] or CCD_NX % shape[2]:
        raise BadInputError(f"{name}={shape}: must be ({N_CCD}, ny, nx), a cell grid dividing a CCD "
                            f"(two amplifier halves: nx >= 2)")
    return shape


def _check_cube(counts, name: str = "counts") -> np.ndarray:
    """A (62, ny, nx) cube of non-negative integer counts for the multiscale method."""
    counts = _numeric_array(name, counts, "iufb")
    if counts.dtype.kind not in "iu":
        raise BadInputError(f"{name}: must be non-negative integers, not {counts.dtype} values")
    if counts.ndim != 3:
        raise BadInputError(f"{name}: {_describe_value(counts)}, expected shape ({N_CCD}, ny, nx)")
    _check_grid_shape(f"{name} shape", counts.shape)
    if counts.dtype.kind == "i" and counts.min() < 0:
        raise BadInputError(f"{name}: negative counts ({int(counts.min())})")
    return counts


def _check_cells(name: str, value, shape, kinds: str = "b") -> np.ndarray:
    """A per-cell array of ``shape`` (booleans for ``kinds="b"``, else finite non-negative numbers)."""
    array = _numeric_array(name, value, kinds)
    if array.shape != tuple(shape):
        raise BadInputError(f"{name}: {_describe_value(array)}, expected shape {tuple(shape)}")
    if array.dtype.kind == "f" and array.size and not (np.isfinite(array).all() and array.min() >= 0):
        raise BadInputError(f"{name}: must be finite and non-negative")
    return array


def _check_live(live) -> np.ndarray:
    """The live CCDs: booleans (or 0/1), one per CCD."""
    live = _numeric_array("live", live, "biu")
    if live.shape != (N_CCD,):
        raise BadInputError(f"live: {_describe_value(live)}, expected shape ({N_CCD},)")
    return live.astype(bool, copy=False)


def _check_search(counts, background, excluded, tail, live) -> tuple:
    """The arguments of a detector's ``detect``: cube, model, writable bool mask, tail, live CCDs."""
    counts = _check_cube(counts)
    background = _numeric_array("background", background)  # not checked finite: see multiscale_mask
    if background.shape != counts.shape:
        raise BadInputError(f"background: {_describe_value(background)}, expected shape {counts.shape}")
    if not isinstance(excluded, np.ndarray) or excluded.dtype != bool or not excluded.flags.writeable:
        raise BadInputError(f"excluded={_describe_value(excluded)}: must be a writable numpy bool array "
                            f"(the detector masks its finds in it)")
    _check_cells("excluded", excluded, counts.shape)
    if not isinstance(tail, PoissonTail):
        raise BadInputError(f"tail={_describe_value(tail)}: must be a PoissonTail")
    return counts, background, excluded, tail, _check_live(live)


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
    if not isinstance(filename, str) or not filename or os.path.basename(filename) != filename:
        raise BadInputError(f"filename={_describe_value(filename)}: must be the name of a shipped data file")
    places = [os.path.dirname(os.path.abspath(__file__))]
    for prefix in (sys.prefix, getattr(site, "USER_BASE", None) or ""):
        places.append(os.path.join(prefix, "share", "transient_masks"))
    for place in places:
        path = os.path.join(place, filename)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{filename}: not found in {', '.join(places)}")


def check_output(path: str, overwrite: bool = False, inputs=()) -> None:
    """Refuse an output path that cannot or must not be written.

    Refused: an empty name; any input of the run (``inputs``), even with
    ``overwrite``; a directory, a FIFO, a device or anything else that is not a
    regular file; an existing file unless ``overwrite``; a path in no existing
    directory or in one that cannot be written.  `atomic_output` checks this;
    call it early to refuse before a long job.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise BadInputError(f"path={_describe_value(path)}: must be a file path")
    path = os.fspath(path)
    if not path:
        raise BadInputError("empty output file name")
    overwrite = _check_flag("overwrite", overwrite)
    inputs = _path_list("inputs", inputs)
    final = os.path.abspath(path)
    for name in inputs:
        if not name:
            continue
        name = os.fspath(name)
        if os.path.abspath(name) == final or (
                os.path.exists(name) and os.path.exists(final) and os.path.samefile(name, final)):
            raise BadInputError(f"{path}: refusing to write over the input file")
    if os.path.isdir(final):
        raise BadInputError(f"{path}: is a directory, not an output file name")
    if os.path.lexists(final) and not os.path.isfile(final):
        raise BadInputError(f"{path}: exists and is not a regular file (a FIFO, device or broken link); "
                            f"refusing to replace it")
    if os.path.exists(final) and not overwrite:
        raise BadInputError(f"{path}: output exists (use --overwrite to replace it)")
    directory = os.path.dirname(final)
    if not os.path.isdir(directory):
        raise BadInputError(f"{path}: output directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise BadInputError(f"{path}: cannot write in the directory {directory} (permissions)")
    try:
        name_max = os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # not known here (or not POSIX)
        name_max = 255
    if len(os.fsencode(os.path.basename(final))) > name_max:
        raise BadInputError(f"{path}: file name longer than the {name_max} bytes its directory takes")


def check_outputs(paths, overwrite: bool = False, inputs=()) -> None:
    """`check_output` for every output of a run, and no two of them the same file.

    Call it before any work, so that a refusal leaves nothing written.
    """
    if isinstance(paths, (str, os.PathLike)) or not hasattr(paths, "__iter__"):
        raise BadInputError(f"paths={_describe_value(paths)}: must be a list of output paths")
    seen = {}
    for path in paths:
        check_output(path, overwrite, inputs)
        final = os.path.abspath(os.fspath(path))
        if final in seen:
            raise BadInputError(f"{path}: the run would write this file twice ({seen[final]} and {path})")
        seen[final] = path


def _header_text(text) -> str:
    r"""Text a FITS header card can hold: printable ASCII, other characters escaped.

    >>> print(_header_text("cartes_été.fits"))
    cartes_\xe9t\xe9.fits
    """
    text = str(text).encode("ascii", "backslashreplace").decode("ascii")
    return "".join(char if " " <= char <= "~" else f"\\x{ord(char):02x}" for char in text)


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
    check_output(path, overwrite, inputs)
    final = os.path.abspath(path)
    directory = os.path.dirname(final)
    # Keep the final suffix so that writers that choose a format by extension
    # (astropy Table.write, savefig) see the right one.
    base = os.path.basename(final)
    # A fresh name, not a file: the writer creates it inside the ``try``, so an
    # interrupt at any moment finds nothing outside it to leave behind.
    tmp = os.path.join(directory, f"{_temporary_prefix(base)}{secrets.token_hex(6)}.tmp{_suffix(base)}")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise BadInputError(f"{path}: cannot write in the directory {directory}")
    try:
        yield tmp
        os.replace(tmp, final)
    except OSError as exc:
        if exc.filename in (tmp, final):  # the directory refused the file (read-only, gone...)
            raise BadInputError(f"{path}: cannot write here ({exc.strerror or _one_line(exc)})") from None
        raise
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _temporary_prefix(base: str) -> str:
    """The start of the names of an output's temporaries: a dot, then the output's name,
    cut to 160 bytes (a file name holds at most 255), then a dot."""
    return f".{os.fsdecode(os.fsencode(base)[:160])}."


def _suffix(filename: str) -> str:
    """The format-bearing suffix of a file name: '.fits.gz', '.csv', ''."""
    name = filename.lower()
    for compressed in (".gz", ".bz2", ".xz", ".fz"):
        if name.endswith(compressed):
            stem = filename[: -len(compressed)]
            return os.path.splitext(stem)[1] + filename[-len(compressed):]
    return os.path.splitext(filename)[1]


#: Compressions astropy does not write FITS files through.
_NOT_FITS_COMPRESSIONS = (".bz2", ".xz", ".zip", ".zst", ".z", ".7z")


def _check_fits_name(path, what: str) -> None:
    """Refuse a FITS output named as another format (maps.csv, masks.parquet, maps.fits.bz2)."""
    name = os.path.basename(os.fspath(path)).lower()
    if TABLE_SUFFIXES.get(_suffix(name), "fits") != "fits" or name.endswith(_NOT_FITS_COMPRESSIONS):
        raise BadInputError(f"{path}: {what} are written as FITS; name the file .fits, .fits.gz or .fits.fz")


# Inputs are validated on the way in, one helper per kind of check, shared by
# every mode: a new mode that reads through these inherits the checks.


def check_input(path: str, what: str = "input file", *, whole_gzip: bool = True) -> str:
    """Refuse an input that is missing, not a regular file, empty or unreadable.

    A compressed input (gzip, bzip2, xz or zip, which astropy reads through)
    is read through once to prove it is complete: a truncated or corrupt
    compressed file must be an error, never less data.

    Parameters
    ----------
    path : str
        The file.
    what : str
        What the file is, for the message ("count-map file", "epoch table"...).
    whole_gzip : bool
        Read a compressed file through (False for readers that stream it and
        catch a cut-short stream themselves).

    Returns
    -------
    str
        ``path``, as given.

    Raises
    ------
    BadInputError
        Naming the file and what is wrong with it.
    """
    what = _check_str("what", what)
    if not isinstance(path, (str, os.PathLike)):
        raise BadInputError(f"{what}={_describe_value(path)}: must be a file path")
    path = os.fspath(path)
    if not path:
        raise BadInputError(f"{what}: empty file name")
    if not os.path.exists(path):
        raise BadInputError(f"{path}: {what} not found")
    if os.path.isdir(path):
        raise BadInputError(f"{path}: is a directory, expected a {what}")
    if not os.path.isfile(path):
        raise BadInputError(f"{path}: not a regular file, expected a {what}")
    if not os.access(path, os.R_OK):
        raise BadInputError(f"{path}: {what} is not readable (permissions)")
    if os.path.getsize(path) == 0:
        raise BadInputError(f"{path}: empty file (0 bytes), expected a {what}")
    if whole_gzip and _compression(path):
        _verify_compressed(path, what)
    return path


#: The compressions astropy opens FITS files through, by their first bytes.
_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"PK\x03\x04": "zip"}


def _compression(path) -> str:
    """The compression of a file by its first bytes: 'gzip', 'bzip2', 'xz', 'zip', or None."""
    with open(path, "rb") as stream:
        start = stream.read(6)
    return next((kind for magic, kind in _MAGIC.items() if start.startswith(magic)), None)


def _open_decompressed(path):
    """A binary stream of a file's content, decompressed (gzip, bzip2, xz); None for zip."""
    import bz2
    import lzma

    kind = _compression(path)
    openers = {None: open, "gzip": gzip.open, "bzip2": bz2.open, "xz": lzma.open}
    return openers[kind](path, "rb") if kind in openers else None


def _verify_compressed(path: str, what: str) -> None:
    """Decompress a file to nowhere: raises BadInputError if it is cut short or corrupt."""
    import lzma
    import zipfile
    import zlib

    kind = _compression(path)
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
            if damaged is not None:
                raise OSError(f"member {damaged} is damaged")
            return
        with _open_decompressed(path) as stream:
            while stream.read(1 << 24):
                pass
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError, zipfile.BadZipFile) as exc:
        raise BadInputError(f"{path}: truncated or corrupt {kind} {what} ({_one_line(exc)})") from None


@contextlib.contextmanager
def _reading(path: str, what: str):
    """Turn what goes wrong while reading a file into a one-line BadInputError.

    astropy's warnings that a FITS file "may have been truncated", or that a
    header it reads is damaged (cut short, not FITS cards), are errors here: a
    short or damaged file must never be read as less data.
    """
    import zlib

    from astropy.io.fits.verify import VerifyError  # a header card astropy cannot parse

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*truncated.*")
        warnings.filterwarnings("error", message="Error validating header")
        try:
            yield
        except BadInputError:
            raise
        except (OSError, EOFError, zlib.error, ValueError, TypeError, KeyError, IndexError, OverflowError,
                UnicodeError, VerifyError, Warning) as exc:
            raise BadInputError(f"{path}: not a readable {what} ({_read_problem(exc)})") from None


def _header_value(header, key: str, where: str, default=None):
    """``header.get(key, default)``; a card astropy cannot parse (``MIN_EXP = NAN``)
    is a BadInputError naming ``where`` and the keyword."""
    try:
        return header.get(key, default)
    except Exception as exc:  # astropy's VerifyError, raised when the card's value is read
        raise BadInputError(f"{where}: the {key} card is not readable ({_one_line(exc)})") from None


def _fits_true(value) -> bool:
    """A FITS logical keyword's value (T, or a string "T"/"TRUE"; anything else is false)."""
    if isinstance(value, str):
        return value.strip().upper() in ("T", "TRUE")
    return value is True or (isinstance(value, np.bool_) and bool(value))


def _read_problem(exc) -> str:
    """What went wrong reading a file, in one line; astropy's damaged-header warning
    (several lines, the HDU counted from 0 and what is wrong) shortened to its facts."""
    lines = [line.strip() for line in str(exc).strip().splitlines()]
    found = re.match(r"Error validating header for HDU #(\d+)", lines[0]) if lines else None
    if found and len(lines) > 1:
        return f"damaged header of HDU {found.group(1)}, counted from 0: {lines[1]}"
    return _one_line(exc)


# ---- FITS tables, block by block
# Large event tables are read and written as raw FITS rows, a block of rows at
# a time: memory stays at one block and every column, scaling, null value, unit
# and keyword is kept exactly.  Filtering (`filter_file`), gathering
# (`gather_data`) and `write_fits_rows` share these two classes.


class _FitsRows:
    """The rows of the first table HDU of a FITS file (plain or gzip-compressed).

    ``streamable`` tells whether the table can be read as raw rows (a binary
    table without a heap); other tables (ASCII, variable-length arrays) are
    read whole with `read_whole`.
    """

    def __init__(self, path: str):
        from astropy.io import fits

        self.path = path
        with _reading(path, "FITS table"), fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            index, hdu = _first_table_hdu(hdul)
            if index is None:
                raise BadInputError(f"{path}: no table HDU")
            self.index = index
            self.header = hdu.header.copy()
            self.primary_header = hdul[0].header.copy()
            self.primary_has_data = bool(hdul[0].header.get("NAXIS", 0))
            self.columns = hdu.columns
            self.n_rows = self.header["NAXIS2"]
            # ColDefs.dtype is in native byte order; the file holds big-endian rows.
            self.raw_dtype = np.dtype(self.columns.dtype).newbyteorder(">")
            self.streamable = (isinstance(hdu, fits.BinTableHDU) and self.header.get("PCOUNT", 0) == 0
                               and self.raw_dtype.itemsize == self.header["NAXIS1"]
                               and _compression(path) != "zip")  # a zip member is read whole
            self.data_start = hdul.fileinfo(index)["datLoc"] if self.streamable else None
            self._whole = None if self.streamable else hdu.data
            if not self.streamable and len(hdul) > index + 1:  # (a streamed table looks at its end)
                self._warn_more_hdus()

    def _warn_more_hdus(self):
        """Say that the file goes on after the table read: only one table of a file is read."""
        log.warning("%s: more HDUs follow the table of HDU %d; only that table is read (one table a file)",
                    self.path, self.index)

    def check_scalar(self, names):
        """Refuse columns that hold arrays (one value per row is needed)."""
        for name in names:
            if self.columns[name].dim or self.raw_dtype[name].shape:
                raise BadInputError(f"{self.path}: column {name!r} holds arrays, expected one value per row")

    def blocks(self, chunk_rows: int):
        """Yield (first row, raw records) blocks of at most ``chunk_rows`` rows."""
        row_bytes = self.raw_dtype.itemsize
        with _reading(self.path, "FITS table"), _open_decompressed(self.path) as stream:
            stream.seek(self.data_start)
            for start in range(0, self.n_rows, chunk_rows):
                n_block = min(chunk_rows, self.n_rows - start)
                raw = stream.read(n_block * row_bytes)
                if len(raw) != n_block * row_bytes:
                    raise BadInputError(f"{self.path}: truncated table (rows {start}..{start + n_block})")
                yield start, np.frombuffer(raw, dtype=self.raw_dtype)
            # Another HDU starts at the next FITS block after the data (a few bytes to read).
            stream.read(-(self.n_rows * row_bytes) % 2880)
            if stream.read(8) == b"XTENSION":
                self._warn_more_hdus()

    def values(self, records, name: str) -> np.ndarray:
        """A column of raw records in native byte order, TSCAL/TZERO applied.

        Integers stored with an integer TZERO (unsigned columns) stay integers;
        integer entries equal to the column's TNULL come back masked.
        """
        column = records[name]
        if str(self.columns[name].format).endswith("L"):  # FITS logical: bytes 'T' / 'F'
            return column == ord("T")
        null = self.columns[name].null
        is_null = (column == null) if column.dtype.kind in "iu" and isinstance(null, (int, np.integer)) else None
        scale, zero = self.columns[name].bscale, self.columns[name].bzero
        scale = 1 if scale is None else scale
        zero = 0 if zero is None else zero
        for key, value in (("TSCAL", scale), ("TZERO", zero)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not np.isfinite(value):
                raise BadInputError(f"{self.path}: column {name!r}: {key} = {value!r} is not a finite number")
        if scale == 1 and zero == int(zero) and column.dtype.kind in "iu" and (
                zero == 2**63 and column.dtype.itemsize == 8 or column.dtype.itemsize < 8 and abs(zero) < 2**62):
            if zero == 2**63:  # uint64, as astropy writes it
                column = column.astype(np.int64).view(np.uint64) ^ np.uint64(2**63)
            elif zero:  # smaller unsigned integers stored with TZERO (int64 cannot overflow here)
                column = column.astype(np.int64) + int(zero)
        elif scale != 1 or zero:  # any other scaling, in floating point
            column = column.astype(np.float64) * scale + zero
        column = column.astype(column.dtype.newbyteorder("="), copy=False)
        if is_null is not None and is_null.any():
            return np.ma.MaskedArray(column, mask=is_null)
        return column

    def read_whole(self, names):
        """The named columns of a table that is not streamable, read whole."""
        return tuple(np.asarray(self._whole[name]) for name in names)


class _FitsRowWriter:
    """Write a FITS file of one binary table whose rows come in blocks.

    The headers are written first with NAXIS2 = 0, and NAXIS2 is patched in
    place once every row is written (same cards, same header size).
    """

    def __init__(self, out, header, primary_header=None):
        from astropy.io import fits

        self.out = out
        self.header = header
        self.n_rows = 0
        self.row_bytes = None
        primary_header = primary_header if primary_header is not None else fits.PrimaryHDU().header
        for key in ("CHECKSUM", "DATASUM"):
            header.remove(key, ignore_missing=True)
            primary_header.remove(key, ignore_missing=True)
        header["NAXIS2"] = 0
        out.write(primary_header.tostring().encode("ascii"))
        self.header_start = out.tell()
        self.header_text = header.tostring().encode("ascii")
        out.write(self.header_text)

    def write(self, records):
        """Append a block of records (big-endian rows of the table's layout)."""
        records.tofile(self.out)
        self.n_rows += len(records)
        self.row_bytes = records.dtype.itemsize

    def close(self):
        """Pad the data to a whole FITS block and patch NAXIS2."""
        self.out.write(b"\0" * (-(self.n_rows * (self.row_bytes or 0)) % 2880))
        self.header["NAXIS2"] = self.n_rows
        new_text = self.header.tostring().encode("ascii")
        if len(new_text) != len(self.header_text):
            raise RuntimeError("FITS table header changed size while patching NAXIS2")
        self.out.seek(self.header_start)
        self.out.write(new_text)
        self.out.seek(0, os.SEEK_END)


def _first_table_hdu(hdul):
    """(index, HDU) of the first table HDU of an open FITS file; (None, None) without one."""
    from astropy.io import fits

    for index, hdu in enumerate(hdul):
        if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
            return index, hdu
    return None, None


def write_fits_rows(path: str, blocks, *, header_cards=(), overwrite: bool = False) -> int:
    """Write a FITS binary table block by block (memory: one block).

    Parameters
    ----------
    path : str
        Output file (written atomically; uncompressed FITS).
    blocks : iterable of dict
        Column name -> 1-d array of numbers or ASCII strings (not booleans);
        every block has the same columns and dtypes.
    header_cards : iterable of (key, value, comment)
        Extra keywords of the table header.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    int
        The number of rows written.

    Examples
    --------
    >>> blocks = ({"A": np.arange(3, dtype=np.int32)} for _ in range(2))
    >>> write_fits_rows("rows.fits", blocks)
    6
    """
    from astropy.io import fits

    path = _check_path("path", path)
    if isinstance(blocks, dict) or not hasattr(blocks, "__iter__"):
        raise BadInputError("blocks: must be an iterable of dicts (column name -> 1-d array)")
    header_cards = _header_cards(header_cards)

    with atomic_output(path, overwrite=overwrite) as tmp, open(tmp, "wb") as out:
        writer = None
        for block in blocks:
            columns = _row_block(block)
            record = np.empty(len(next(iter(columns.values()))), dtype=[
                (name, column.dtype.newbyteorder(">")) for name, column in columns.items()])
            if writer is not None and record.dtype != writer_dtype:
                raise BadInputError(f"{path}: every block must have the same columns and dtypes")
            for name, column in columns.items():
                record[name] = column
            if writer is None:
                hdu = fits.BinTableHDU(data=record[:0])  # unsigned columns: TZERO = 2**(bits - 1)
                for key, value, comment in header_cards:
                    hdu.header[key] = (value, comment)
                writer = _FitsRowWriter(out, hdu.header)
                writer_dtype = record.dtype
            writer.write(_fits_stored(record))
        if writer is None:
            raise BadInputError(f"{path}: nothing to write")
        writer.close()
    return writer.n_rows


#: Keywords that describe a FITS table's layout: `write_fits_rows` sets them itself.
_TABLE_LAYOUT_KEYS = re.compile(r"(SIMPLE|XTENSION|BITPIX|NAXIS\d*|PCOUNT|GCOUNT|TFIELDS|EXTEND|END|THEAP|"
                                r"T(TYPE|FORM|ZERO|SCAL|NULL|DIM|UNIT|DISP)\d+)")


def _header_cards(cards) -> list:
    """Extra header cards, checked: (keyword, value, comment) with a standard keyword
    (up to 8 of A-Z, 0-9, - and _) that is not one of the table's layout, a value a
    FITS card holds (printable ASCII text, a bool, a 64-bit integer, a finite float)."""
    if isinstance(cards, (str, dict)) or not hasattr(cards, "__iter__"):
        raise BadInputError(f"header_cards={_describe_value(cards)}: must be a list of (keyword, value, comment)")
    checked = []
    for card in cards:
        if not isinstance(card, (tuple, list)) or len(card) != 3:
            raise BadInputError(f"header card {_describe_value(card)}: must be (keyword, value, comment)")
        key, value, comment = card
        if not isinstance(key, str) or not re.fullmatch(r"[A-Z0-9_-]{1,8}", key) or _TABLE_LAYOUT_KEYS.fullmatch(key):
            raise BadInputError(f"header card {key!r}: not a keyword this table can take (up to 8 of "
                                f"A-Z, 0-9, - and _; not one of the table's layout)")
        text = [item for item in (value, comment) if isinstance(item, str)]
        if (not isinstance(comment, str) or not all(map(_printable_ascii, text))
                or not isinstance(value, (str, bool, np.bool_, int, np.integer, float, np.floating))
                or (isinstance(value, (float, np.floating)) and not np.isfinite(value))
                or (isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
                    and not np.iinfo(np.int64).min <= value <= np.iinfo(np.int64).max)):
            raise BadInputError(f"header card {key!r}: value {value!r} or comment {comment!r} is not one a FITS "
                                f"card holds (printable ASCII text, a bool, a 64-bit integer, a finite number)")
        checked.append((key, value, comment))
    return checked


def _fits_stored(record):
    """Records as a FITS table stores them: unsigned integers wider than a byte
    offset by their TZERO (2**(bits - 1)), that is with their top bit flipped."""
    unsigned = [name for name in record.dtype.names
                if record.dtype[name].kind == "u" and record.dtype[name].itemsize > 1]
    if not unsigned:
        return record
    stored = record.astype([(name, record.dtype[name].str.replace("u", "i") if name in unsigned
                             else record.dtype[name]) for name in record.dtype.names])
    for name in unsigned:
        column = record[name]
        flipped = (column ^ column.dtype.type(1 << (8 * column.dtype.itemsize - 1))).astype(column.dtype)
        stored[name] = flipped.view(stored[name].dtype)  # the same bytes, big-endian
    return stored


def _row_block(block) -> dict:
    """A block of `write_fits_rows`: column name -> 1-d array of one length, numbers or strings."""
    if not isinstance(block, dict) or not block:
        raise BadInputError(f"block={_describe_value(block)}: must be a non-empty dict of columns")
    columns = {}
    for name, values in block.items():
        _check_str("column name", name)
        if not name.strip() or not _printable_ascii(name):
            raise BadInputError(f"column name {name!r}: must be printable ASCII, not blank")
        column = _numeric_array(f"column {name!r}", values, kinds="iufSU")  # no bool: FITS T/F bytes
        if column.ndim != 1:
            raise BadInputError(f"column {name!r}: must be 1-d, not of shape {column.shape}")
        if column.dtype.kind == "U":  # FITS holds ASCII bytes
            try:
                column = column.astype(f"S{max(column.dtype.itemsize // 4, 1)}")
            except UnicodeEncodeError:
                raise BadInputError(f"column {name!r}: FITS text columns must be ASCII") from None
        elif column.dtype == np.int8:  # FITS tables have no signed bytes (astropy would write T/F)
            column = column.astype(np.int16)
        columns[name] = column
    _same_shape(**{f"column {name!r}": column for name, column in columns.items()})
    return columns


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
        _check_epoch_table(epochs, path)
    else:
        _check_path("path", path, optional=True)
        path = check_input(path or data_path(EPOCHS_FILENAME), "epoch table")
        with _reading(path, "epoch table (a FITS binary table in HDU 1)"):
            epochs = Table.read(path, hdu=1, format="fits")
    missing = {"NAME", "MINEXPNUM", "MAXEXPNUM"} - set(epochs.colnames)
    if missing:
        raise BadInputError(f"{path}: epoch table lacks column(s) {', '.join(sorted(missing))}")
    if not len(epochs):
        raise BadInputError(f"{path}: the epoch table has no rows")
    for name in ("MINEXPNUM", "MAXEXPNUM"):
        column = epochs[name]
        if np.ma.is_masked(column):
            raise BadInputError(f"{path}: epoch table column {name} has NULL entries")
        values = np.asarray(column)
        if values.dtype.kind not in "iu" or values.ndim != 1:
            raise BadInputError(f"{path}: epoch table column {name} holds {_type_name(values.dtype)} "
                                f"values, expected integer exposure numbers")
        epochs[name] = values.astype(np.int64)
    if np.asarray(epochs["NAME"]).dtype.kind not in "US":
        raise BadInputError(f"{path}: epoch table column NAME must hold strings")
    if np.ma.is_masked(epochs["NAME"]):  # (astropy reads a blank FITS string as NULL): refused as empty
        epochs["NAME"] = epochs["NAME"].filled("")
    try:
        epochs["NAME"] = np.char.strip(np.asarray(epochs["NAME"]).astype(str))
    except UnicodeDecodeError:
        raise BadInputError(f"{path}: epoch table column NAME holds bytes that are not text (ASCII)") from None
    names, counts = np.unique(np.asarray(epochs["NAME"]), return_counts=True)
    wrong = names[(counts > 1) | (names == "")]  # a loop over epochs below
    if wrong.size:
        raise BadInputError(f"{path}: epoch table column NAME must name each epoch once, and not be empty: "
                            + ", ".join(f"{str(name)!r} ({count} rows)" for name, count in
                                        zip(wrong, counts[(counts > 1) | (names == "")])))
    backwards = np.flatnonzero(epochs["MINEXPNUM"] > epochs["MAXEXPNUM"])
    if backwards.size:
        raise BadInputError(f"{path}: epoch {epochs['NAME'][backwards[0]]!r} has MINEXPNUM > MAXEXPNUM")
    epochs.sort("MINEXPNUM")
    return epochs


def _check_epoch_table(epochs, where):
    """Refuse an epoch table without rows, or whose expnum ranges are not whole numbers."""
    if not len(epochs):
        raise BadInputError(f"{where}: the epoch table has no rows")
    for name in ("MINEXPNUM", "MAXEXPNUM"):
        if name in epochs.colnames:
            values = _numeric_array(f"{where}: column {name}", epochs[name])
            if values.ndim != 1:
                raise BadInputError(f"{where}: column {name} holds arrays, expected one value per row")
            _whole_int64(f"{where}: column {name}", values)


def epoch_index(expnum, minexp, maxexp):
    """Index of the epoch of each exposure number; -1 where it is in no epoch.

    Overlapping epochs (DES Y4E1.5 and Y4E2 share expnums 605796..605988) are
    resolved by giving an exposure to the epoch that began last, i.e. the one
    with the largest MINEXPNUM not above it.  Exposures between epochs belong to
    none.

    Parameters
    ----------
    expnum : array_like of int
        Exposure numbers (integers, or floats holding whole numbers).
    minexp, maxexp : array_like of int
        Inclusive expnum range of each epoch, sorted by ``minexp``: 1-d, of
        the same non-zero length.

    Returns
    -------
    numpy.ndarray of int
        Same shape as ``expnum``.

    Raises
    ------
    BadInputError
        For arguments that are not such numbers: strings, fractional or NaN
        exposure numbers, ranges of different lengths, empty or unsorted.

    Examples
    --------
    >>> epoch_index([5, 15, 25, 35], minexp=[10, 20, 30], maxexp=[18, 32, 40])
    array([-1,  0,  1,  2])
    """
    expnum = _numeric_array("expnum", expnum)
    if expnum.dtype == np.uint64:  # beyond the int64 range is beyond every epoch
        expnum = np.minimum(expnum, np.iinfo(np.int64).max)
    expnum = _whole_int64("expnum", expnum)
    minexp = _whole_int64("minexp", _numeric_array("minexp", minexp))
    maxexp = _whole_int64("maxexp", _numeric_array("maxexp", maxexp))
    if minexp.ndim != 1 or minexp.shape != maxexp.shape or not minexp.size:
        raise BadInputError(f"minexp and maxexp must be 1-d of the same non-zero length, "
                            f"not shapes {minexp.shape} and {maxexp.shape}")
    if (np.diff(minexp) < 0).any():
        raise BadInputError("minexp: the epochs must be sorted by minexp")
    index = np.searchsorted(minexp, expnum, side="right") - 1
    inside = (index >= 0) & (expnum <= maxexp[np.maximum(index, 0)])
    return np.where(inside, index, -1)


class _EpochLookup:
    """`epoch_index` of the epoch table as a fast vectorised lookup.

    A table of the epoch of every expnum in the table's range (about 1.4 MB for
    DES), padded with -1 at both ends, replaces the binary search: one
    subtraction and one clipped ``np.take`` a row.  The result is
    `epoch_index`'s: an epoch owns its expnums up to the next epoch's first
    (the last epoch starting at or before an expnum is the one searched).
    Pickled (to Dask workers) as the two ranges; the table is rebuilt there
    in well under a millisecond.
    """

    _MAX_TABLE = 1 << 26  # beyond this range of expnums, search instead
    _MAX_ABS = 1 << 62  # table bounds this far from int64's limits: a wrapped subtraction stays outside

    def __init__(self, minexp, maxexp):
        self.minexp = np.asarray(minexp, dtype=np.int64)
        self.maxexp = np.asarray(maxexp, dtype=np.int64)
        epoch_index(self.minexp[:1], self.minexp, self.maxexp)  # the ranges checked as epoch_index does
        self.padded = None
        self.lo = int(self.minexp.min())
        self.hi = int(self.maxexp.max())
        if self.hi - self.lo < self._MAX_TABLE and max(-self.lo, self.hi) < self._MAX_ABS:
            self.padded = np.full(max(self.hi - self.lo + 1, 0) + 2, -1,
                                  dtype=np.int16 if self.minexp.size < np.iinfo(np.int16).max else np.int32)
            ends = np.minimum(self.maxexp, np.append(self.minexp[1:] - 1, self.maxexp[-1]))
            for index in np.flatnonzero(ends >= self.minexp):  # a loop over epochs
                self.padded[self.minexp[index] - self.lo + 1:ends[index] - self.lo + 2] = index

    def __getstate__(self):
        return {"minexp": self.minexp, "maxexp": self.maxexp}

    def __setstate__(self, state):
        self.__init__(state["minexp"], state["maxexp"])

    def __call__(self, expnum) -> np.ndarray:
        if self.padded is None or np.ma.isMaskedArray(expnum):
            return epoch_index(expnum, self.minexp, self.maxexp)
        expnum = _numeric_array("expnum", expnum)  # epoch_index's errors
        if expnum.dtype.kind not in "ui":
            return epoch_index(expnum, self.minexp, self.maxexp)
        if expnum.dtype == np.uint64:  # past int64 is past every epoch (as in epoch_index)
            expnum = np.minimum(expnum, np.iinfo(np.int64).max)
        # Row lo is at 1; 0 and the last entry (-1) take every expnum outside,
        # also where the subtraction wraps.
        offset = np.subtract(expnum, self.lo - 1, dtype=np.int64, casting="unsafe")
        return np.take(self.padded, offset, mode="clip")


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
    path = _check_path("path", path, optional=True)
    if path is not None:
        return check_input(path, "count-map file"), False
    here = os.path.dirname(os.path.abspath(__file__))
    for place in (here, os.getcwd()):
        candidate = os.path.join(place, REAL_COUNTS_FILENAME)
        if os.path.exists(candidate):
            return check_input(candidate, "count-map file"), False
    try:
        demo = data_path(DEMO_COUNTS_FILENAME)
    except FileNotFoundError:
        raise BadInputError(
            f"{REAL_COUNTS_FILENAME}: not found beside the module or in the working directory, "
            f"and the demo maps {DEMO_COUNTS_FILENAME} are missing too (use --counts)"
        ) from None
    # The command line shows this once the run has succeeded (a bad input gets its
    # one-line error alone; see run_cli); in Python it goes out now.
    log.warning(
        "WARNING: the real DES count maps (%s) were not found beside the module or in the "
        "working directory; using the SYNTHETIC DEMO maps %s. Results are NOT real DES masks.",
        REAL_COUNTS_FILENAME, demo, extra={_AFTER_SUCCESS: True},
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
    >>> maps = CountMaps(data_path(DEMO_COUNTS_FILENAME))  # CountMaps() finds the real maps
    >>> maps.epochs, maps.demo
    (['Y2E1', 'Y4E2', 'Y6'], True)
    >>> maps.counts("Y2E1").shape
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
            self._first_demo = _fits_true(_header_value(first.header, "DEMO", f"{self.path}: HDU 1"))
        self.demo = fallback or self._first_demo

    @contextlib.contextmanager
    def _open(self):
        from astropy.io import fits

        with _reading(self.path, "FITS file of count maps"), \
                fits.open(self.path, memmap=False, lazy_load_hdus=True) as hdul:
            yield hdul

    def _scan(self):
        """Read every header once (not the data) and index the epochs."""
        if self._headers is None:
            headers = {}
            with self._open() as hdul:
                for index, hdu in enumerate(hdul):
                    if index == 0:
                        continue
                    name = self._epoch_name(hdu.header, index)
                    if name in headers:  # which one would be meant?
                        raise BadInputError(f"{self.path}: HDUs {headers[name][0]} and {index} are both "
                                            f"epoch {name!r}")
                    headers[name] = (index, hdu.header.copy())
            self._headers = headers
        return self._headers

    def _epoch_name(self, header, index):
        where = f"{self.path}: HDU {index}"
        extname = _header_value(header, "EXTNAME", where)
        name = _header_value(header, "EPOCH", where, extname)
        if not name:
            raise BadInputError(f"{self.path}: HDU {index} has neither EPOCH nor EXTNAME")
        if extname and str(extname).strip() != str(name).strip():  # both name the epoch in DES files
            log.warning("%s: EPOCH = %r but EXTNAME = %r; the HDU is taken as epoch %s",
                        where, str(name).strip(), str(extname).strip(), str(name).strip())
        return str(name).strip()

    @property
    def epochs(self) -> list:
        """Names of the epochs in the file, in HDU order (reads headers only)."""
        return list(self._scan())

    def __contains__(self, epoch) -> bool:
        return isinstance(epoch, str) and epoch in self._scan()

    def _header(self, epoch):
        _check_str("epoch", epoch)
        try:
            return self._scan()[epoch]
        except KeyError:
            raise BadInputError(
                f"{self.path}: no epoch {epoch!r} (it has {', '.join(self._scan())})"
            ) from None

    def info(self, epoch: str) -> dict:
        """Header facts of one epoch: min_exp, max_exp, demo (reads no data)."""
        index, header = self._header(epoch)
        limits = {}
        for key in ("MIN_EXP", "MAX_EXP"):
            if key not in header:
                raise BadInputError(f"{self.path}: HDU {index} ({epoch}) lacks the {key} keyword")
            value = _header_value(header, key, f"{self.path}: HDU {index} ({epoch})")
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise BadInputError(f"{self.path}: HDU {index} ({epoch}): {key} = {value!r}, "
                                    f"expected an integer exposure number")
            limits[key] = int(value)
        if limits["MIN_EXP"] > limits["MAX_EXP"]:
            raise BadInputError(f"{self.path}: HDU {index} ({epoch}): MIN_EXP {limits['MIN_EXP']} "
                                f"> MAX_EXP {limits['MAX_EXP']}")
        return {
            "min_exp": limits["MIN_EXP"],
            "max_exp": limits["MAX_EXP"],
            "demo": self._fallback_demo or _fits_true(_header_value(header, "DEMO", f"{self.path}: HDU {index}")),
        }

    def counts(self, epoch: str) -> np.ndarray:
        """The (62, ny, nx) counts of one epoch, read and checked on first use."""
        if epoch not in self._counts:
            index, _ = self._header(epoch)
            self.info(epoch)  # checks MIN_EXP / MAX_EXP
            where = f"{self.path}: HDU {index} ({epoch})"
            try:
                with self._open() as hdul:
                    data = hdul[index].data
                    data = None if data is None else np.array(data)
            except BadInputError:
                raise
            except Exception as exc:  # a tile-compressed HDU's codecs raise their own types
                raise BadInputError(f"{where}: counts not readable ({type(exc).__name__}: "
                                    f"{_one_line(exc)})") from None
            if data is None or data.ndim != 3 or data.shape[0] != N_CCD or 0 in data.shape:
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
            data.flags.writeable = False  # cached for every later use: callers get it read-only
            self._counts[epoch] = data
        return self._counts[epoch]


# ---- Epoch masks


def _alias(name, value, default, alias, alias_value):
    """The value of an option that may also be given by its DES name (an alias)."""
    if alias_value is None:
        return value
    if value != default and value != alias_value:
        raise BadInputError(f"{name}={value!r} and {alias}={alias_value!r}: the same option "
                            f"({alias} is the DES name of {name}) given two values")
    return alias_value


def _check_options(fp_rate, x_bin, y_bin, floor):
    """Validate the masking options shared by the classes and the CLI."""
    _check_fp_rate(fp_rate)
    _check_bin("x_bin", x_bin)
    _check_bin("y_bin", y_bin)
    if not isinstance(floor, str) or floor not in FLOORS:
        raise BadInputError(f"floor={_describe_value(floor)}: must be one of {', '.join(FLOORS)}")


def _check_bin(name: str, value) -> int:
    try:
        return _check_int(name, value, lo=1)
    except BadInputError:
        raise BadInputError(f"{name}={_describe_value(value)}: must be a positive integer") from None


def _check_method(method):
    if not isinstance(method, str) or method not in METHODS:
        raise BadInputError(f"method={method!r}: must be one of {', '.join(METHODS)}")


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
    counts = _numeric_array("counts", counts, kinds="iu")
    if counts.ndim != 3 or 0 in counts.shape:
        raise BadInputError(f"counts have shape {counts.shape}, expected (n_ccd, ny, nx), none of them 0")
    x_bin = _check_bin("x_bin", x_bin)
    y_bin = _check_bin("y_bin", y_bin)
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

    The Poisson quantile is ``scipy.stats.poisson(mode + 1).isf(fp_rate)`` to
    the bit, computed from `scipy.special` without importing `scipy.stats`
    (which took most of the start-up time of every command).

    Parameters
    ----------
    mode, centre : array_like of float
        Per CCD: the modal cell count (finite, >= 0) and the median or mean
        cell count (finite), of the same shape or broadcastable.
    fp_rate : float
        False-positive probability per cell, 0 < fp_rate < 1.
    floor_factor : float
        The threshold is at least ``ceil(floor_factor * centre)``.

    Returns
    -------
    numpy.ndarray of float

    Raises
    ------
    BadInputError
        For a non-numeric, NaN, infinite or negative argument, an fp_rate
        outside 0..1 (or below 1e-16, where ``1 - fp_rate`` rounds to 1), or
        shapes that do not broadcast.

    Examples
    --------
    >>> float(poisson_threshold(3, 3.2, 1e-4))  # ceil(6.4) = 7 < Poisson(4).isf(1e-4)
    13.0
    >>> poisson_threshold([0, 3, 10], [0.5, 3.0, 12.0]).tolist()
    [6.0, 13.0, 25.0]
    """
    fp_rate = _check_fp_rate(fp_rate)
    floor_factor = _check_real("floor_factor", floor_factor)
    mode = _float_array("mode", mode)
    centre = _float_array("centre", centre)
    if not np.isfinite(mode).all() or (mode < 0).any() or (mode >= _MAX_COUNT).any():
        raise BadInputError("mode: must be finite, non-negative and below 2**52")
    if not np.isfinite(centre).all():
        raise BadInputError("centre: must be finite")
    try:
        mode, centre = np.broadcast_arrays(mode, centre)
    except ValueError:
        raise BadInputError(f"mode and centre have shapes {mode.shape} and {centre.shape}, "
                            "which do not broadcast") from None
    with np.errstate(over="ignore"):
        floor = np.ceil(floor_factor * centre)
    if not np.isfinite(floor).all():
        raise BadInputError(f"floor_factor={floor_factor:g} times centre overflows")
    return np.maximum(floor, _poisson_isf(fp_rate, mode + 1.0))


#: Counts are whole numbers in float64 for the threshold: they must stay below 2**52.
_MAX_COUNT = 1 << 52


def _poisson_isf(fp_rate: float, mean: np.ndarray) -> np.ndarray:
    """``scipy.stats.poisson(mean).isf(fp_rate)`` from `scipy.special` alone.

    The quantile is the smallest count k with ``P(X <= k) >= level``, where
    ``level = 1.0 - fp_rate`` in float64: the ceiling of the continuous inverse
    `scipy.special.pdtrik`, or the count below it when that one already
    reaches the level (pdtrik is a numerical inverse).  This is how scipy.stats
    computes it, so the thresholds are the same to the bit (tests compare them
    over a grid of means and rates).
    """
    from scipy.special import pdtr, pdtrik

    level = 1.0 - fp_rate
    k = np.ceil(pdtrik(level, mean))
    below = np.maximum(k - 1, 0)
    return np.where(pdtr(below, mean) >= level, below, k)


def _mode(cells) -> int:
    """The most common value of non-negative integer counts (the smallest of ties)."""
    cells = cells.ravel()
    if cells.max() < (1 << 20):  # a count table is cheap
        return int(np.argmax(np.bincount(cells)))
    values, n = np.unique(cells, return_counts=True)  # a huge count must not size the table
    return int(values[np.argmax(n)])


class EpochMask:
    """The transient mask of one epoch, from its count cube.

    Two methods: ``method="des"`` (the default) is the published DES rule
    below; ``method="multiscale"`` finds structures of every size against a
    background model (`multiscale_mask`: columns with fitted ends, rows and
    edges, cells, boxes and glows) and masks only their cells.  Both mask
    dead CCDs and CCD 31's right half entirely.

    With the DES rule, each CCD's cells (after optional extra binning) are compared with a
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
        cell grid.  ``x_shrink`` and ``y_shrink``, their names in the DES
        module, are accepted as aliases.
    floor : {"median", "mean"}
        Statistic of the cell counts whose double is a floor of the threshold.
        "median" follows the published DES README; "mean" reproduces the
        published DES masks (the code used the mean).  DES rule only.
    method : {"des", "multiscale"}
        The masking method (see above).
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
        Per CCD; NaN for CCDs with no transients.  With the multiscale method
        ``threshold`` is the count above which a single cell is masked on its
        own at the CCD's median background (larger structures go lower).
    background : numpy.ndarray of float or None
        Multiscale: the expected counts per cell (`AmpBackground`).
    defects : astropy.table.Table
        The structures masked (see the property).
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
    >>> counts[9, 50:150, 30] += rng.poisson(1.5, 100)      # a warm column: 1.5x, no cell stands out
    >>> bool(EpochMask(counts, method="des").mask[9, 50:150, 30].mean() < 0.1)
    True
    >>> ms = EpochMask(counts, method="multiscale")
    >>> bool(ms.mask[9, 55:145, 30].all()), ms.defects["KIND"][ms.defects["CCDNUM"] == 10].tolist()
    (True, ['column'])
    """

    def __init__(self, counts, *, epoch: str = None, fp_rate: float = DEFAULT_FP_RATE,
                 x_bin: int = 1, y_bin: int = 1, floor: str = DEFAULT_FLOOR,
                 method: str = DEFAULT_METHOD, min_exp: int = None, max_exp: int = None,
                 demo: bool = False, source: str = None, x_shrink: int = None, y_shrink: int = None):
        x_bin = _alias("x_bin", x_bin, 1, "x_shrink", x_shrink)
        y_bin = _alias("y_bin", y_bin, 1, "y_shrink", y_shrink)
        _check_options(fp_rate, x_bin, y_bin, floor)
        _check_method(method)
        if np.ma.isMaskedArray(counts) and np.ma.is_masked(counts):
            raise BadInputError("counts: has masked (NULL) cells; give counts for every cell")
        try:
            counts = np.asarray(counts)
        except (ValueError, TypeError) as exc:  # ragged nested sequences
            raise BadInputError(f"counts: not an array of integers ({exc})") from None
        if counts.ndim != 3 or counts.shape[0] != N_CCD or 0 in counts.shape:
            raise BadInputError(f"counts have shape {counts.shape}, expected ({N_CCD}, ny, nx) with ny, nx >= 1")
        if counts.dtype.kind not in "ui" or (counts.size and counts.min() < 0):
            raise BadInputError(f"counts must be non-negative integers, not {counts.dtype}")
        if CCD_NY % counts.shape[1] or CCD_NX % counts.shape[2]:
            raise BadInputError(f"a {counts.shape[1]} x {counts.shape[2]} cell grid does not divide a CCD")
        if counts.size and int(counts.max()) * int(x_bin) * int(y_bin) >= _MAX_COUNT:
            raise BadInputError(f"counts up to {int(counts.max())}: a (re-binned) cell must hold "
                                f"fewer than 2**52 transients")
        epoch = _check_epoch_name("epoch", epoch, optional=True)
        int64 = np.iinfo(np.int64)  # FITS integer keywords
        min_exp = None if min_exp is None else _check_int("min_exp", min_exp, int64.min, int64.max)
        max_exp = None if max_exp is None else _check_int("max_exp", max_exp, int64.min, int64.max)
        source = _check_path("source", source, optional=True)
        demo = _check_flag("demo", demo)
        self.epoch = epoch
        self.fp_rate = float(fp_rate)
        self.x_bin, self.y_bin = int(x_bin), int(y_bin)
        self.floor = floor
        self.method = method
        self.background = None
        self._defects = None
        self._structures = []
        self.min_exp, self.max_exp = min_exp, max_exp
        self.demo = bool(demo)
        self.source = source
        self.counts = rebin_counts(counts, self.x_bin, self.y_bin)
        ny, nx = self.counts.shape[1:]
        if method == "multiscale" and min(ny, nx) < MULTISCALE_MIN_CELLS:
            raise BadInputError(
                f"method='multiscale' needs at least {MULTISCALE_MIN_CELLS} cells along x and y per CCD "
                f"(here {nx} x {ny}): bin less (it looks at every scale itself)")
        self.cell_size = (CCD_NY // ny, CCD_NX // nx)
        self._compute()

    @classmethod
    def from_maps(cls, maps: "CountMaps", epoch: str, **options) -> "EpochMask":
        """The mask of one epoch of a `CountMaps` file (options as for the class)."""
        if not isinstance(maps, CountMaps):
            raise BadInputError(f"maps={_describe_value(maps)}: must be a CountMaps")
        _check_str("epoch", epoch)
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
            self.mode[index] = _mode(cells)
            self.centre[index] = np.median(cells) if self.floor == "median" else cells.mean()
        if self.method == "multiscale":
            self._compute_multiscale(half_cells)
            return
        self.threshold = np.where(self.live, poisson_threshold(
            np.nan_to_num(self.mode), np.nan_to_num(self.centre), self.fp_rate), np.nan)
        with np.errstate(invalid="ignore"):
            mask = counts > self.threshold[:, None, None]
        mask[~self.live] = True
        mask[HALF_MASKED_CCD - 1, :, half_cells:] = True
        self.mask = mask

    def _compute_multiscale(self, half_cells):
        known = np.zeros(self.counts.shape, bool)
        known[HALF_MASKED_CCD - 1, :, half_cells:] = True
        result = multiscale_mask(self.counts, fp_rate=self.fp_rate, live=self.live, known=known)
        self.mask, self.background, self._structures = result.mask, result.background, result.defects
        # the single-cell threshold at each CCD's median background, for headers and plots
        tail = SignificanceRule.for_detectors(default_detectors(), self.counts.shape,
                                              self.fp_rate).tail(CellDetector())
        self.threshold = np.full(self.counts.shape[0], np.nan)
        for index in np.flatnonzero(self.live):
            level = np.median(self.background[index][~known[index]])
            n = np.arange(1, 4 * int(level) + 60)
            self.threshold[index] = float(n[np.argmax(tail._significant(n, np.full(n.size, level)))] - 1)

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

    @property
    def defects(self):
        """The masked structures of the epoch, one row each (an astropy Table).

        Columns: EPOCH, CCDNUM, DETPOS, KIND (`DEFECT_KINDS`: cell, column,
        row, edge -- a column or row along a CCD edge --, box, amp -- CCD 31's
        right half -- and ccd -- a dead CCD), X0, X1, Y0, Y1 (the pixel box,
        FITS 1-indexed, inclusive), CELLS (cells masked), COUNTS (transients in
        them), BACKGROUND (expected astrophysical transients in them) and
        SIGNIFICANCE (sigma, likelihood ratio of COUNTS over BACKGROUND).

        Multiscale: each structure the detectors found.  DES rule: the masked
        cells grouped into connected sets (8-connected), with the rule's
        Poisson mean (mode + 1) per cell as background.  The table's meta
        records METHOD, EPOCH and the options.
        """
        if self._defects is None:
            self._defects = _defect_table(self)
        return self._defects

    # -- lookups

    def cell_index(self, ccdnum, x, y):
        """Flat index into ``mask`` of each position; -1 where it is off the CCDs.

        A position belongs to the cell ``X = floor((x - 1) / cx)``: a position on a
        cell edge ``x = cx X + 1`` belongs to cell X, the cell on its right (its
        higher-x side), exactly as the DES maps count transients.  The half
        pixel 0.5 <= x < 1 left of the first cell edge belongs to the first cell.
        Likewise in y.  Positions off the CCD (x < 0.5, x >= 2048.5, y < 0.5,
        y >= 4096.5, NaN) and CCDNUM outside 1..62 (or not a whole number) give -1.

        ``ccdnum``, ``x`` and ``y`` are numbers of one shape (scalars are
        broadcast); anything else (strings, different lengths) raises
        `BadInputError`.
        """
        ccdnum, x, y, shape = _position_arrays(ccdnum, x, y)
        flat = np.empty(ccdnum.size, dtype=np.intp)
        for start in range(0, flat.size, _BIN_BLOCK):  # blocks whose temporaries stay in cache
            part = slice(start, start + _BIN_BLOCK)
            flat[part] = self._block_cells(ccdnum[part], x[part], y[part])
        return flat.reshape(shape)

    def _block_cells(self, ccdnum, x, y):
        """`cell_index` of one block of flat arrays."""
        x = x.astype(np.float64, copy=False)
        y = y.astype(np.float64, copy=False)
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
            If any CCDNUM is outside 1..62 (or not a whole number) or any
            position is off the CCD (0.5 <= x < 2048.5 and 0.5 <= y < 4096.5)
            or NaN; or if the arguments are not numbers of one shape.
        """
        return self._masked_cells(self.cell_index(ccdnum, x, y))

    def _masked_cells(self, flat, rows=None):
        """The mask at cell indices; off-CCD ones (-1) raise, naming the first by
        its position in ``rows`` (the caller's indices of ``flat``) if given."""
        off = flat < 0
        if off.any():
            bad_rows = np.flatnonzero(off.ravel())
            first = bad_rows[0] if rows is None else rows[bad_rows[0]]
            raise BadInputError(
                f"{bad_rows.size} position(s) off the CCDs or with CCDNUM outside 1..{N_CCD} "
                f"(first at index {first})"
            )
        return self.mask.ravel()[flat]

    def pixel_mask(self, ccdnum: int) -> np.ndarray:
        """The full-resolution mask of one CCD: bool (4096, 2048), [y - 1, x - 1].

        Pixel (x, y) with centre at the integer position is masked exactly when
        the cell holding its centre is.
        """
        ccdnum = _check_int("ccdnum", ccdnum, 1, self.mask.shape[0])
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
            ("METHOD", self.method, "masking method: des (DES rule) or multiscale"),
            ("AREAFRAC", self.area_fraction, "fraction of live-CCD area masked"),
            ("TRANFRAC", self.transient_fraction, "fraction of transients masked"),
            ("DEMO", self.demo, "T = made from SYNTHETIC demo counts, not DES"),
            ("COUNTS", _header_text(os.path.basename(self.source or "")), "count-map file"),
            ("TM_VERS", __version__, "transient_masks version"),
            ("DATE", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
             "UTC time the file was written"),
        ]

    def write_masks(self, path: str, compress: bool = True, masked_value: int = 1,
                    overwrite: bool = False, inputs=()) -> str:
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
        inputs : sequence of str
            Other files of the run that ``path`` must not be (the count-map
            file is always refused).

        Returns
        -------
        str
            The path written.
        """
        from astropy.io import fits

        path = _check_path("path", path)
        masked_value = _check_int("masked_value", masked_value, 1, 32767)
        compress = _check_flag("compress", compress)
        _check_fits_name(path, "masks")
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

        inputs = ([self.source] if self.source else []) + _path_list("inputs", inputs)
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


# ---- Multiscale masks
#
# The multiscale method (`EpochMask(..., method="multiscale")`): a background
# model per CCD that follows its structure, detectors for the shapes defects
# take, and a significance rule that shares the false-positive budget among
# every window the detectors test.  Each part is a small object with one
# interface, so that it can be swapped:
#
# - a background estimator: ``model(counts, excluded, live) -> expected counts``;
# - a detector: ``families(shape)`` (the window families it tests, for the
#   rule), ``coverage`` (windows of a family covering a cell) and
#   ``detect(counts, background, excluded, tail, live) -> [Defect, ...]``,
#   which masks (sets ``excluded``) the cells of what it finds;
# - the rule: ``tail(detector) -> PoissonTail``, the per-window test.

class PoissonTail:
    """The one-sided Poisson test of a window at a fixed tail probability.

    A window with ``n`` counts over an expected background ``b`` is
    significant when ``P(Poisson(b) >= n) <= p``.  That probability is the
    regularised lower incomplete gamma function P(n, b), increasing in ``b``,
    so the test is ``b <= bmax[n]`` with ``bmax[n] = gammaincinv(n, p)``,
    tabulated once (Wilson-Hilferty above 4000 counts): one table look-up per
    window.

    Parameters
    ----------
    p : float
        Tail probability of one window, 0 < p < 1.

    Examples
    --------
    >>> tail = PoissonTail(1e-4)
    >>> tail.significant([11, 12], [3.0, 3.0]).tolist()    # P(Poisson(3) >= 11) = 2.9e-4, >= 12: 7.1e-5
    [False, True]
    >>> tail.significant1(12, 3.0)
    True
    """

    #: Counts up to which the table is exact.
    EXACT = 4000

    def __init__(self, p: float):
        self.p = _check_probability("p", p)
        self._table = np.array([-np.inf])  # n = 0 is never significant

    def _extend(self, n_max: int):
        from scipy.special import gammaincinv, ndtri

        start = self._table.size
        n = np.arange(start, max(int(n_max), 2 * start) + 1, dtype=np.float64)
        bmax = np.empty(n.size)
        exact = n <= self.EXACT
        bmax[exact] = gammaincinv(n[exact], self.p)
        big = n[~exact]
        bmax[~exact] = big * (1 - 1 / (9 * big) + ndtri(self.p) / (3 * np.sqrt(big))) ** 3
        self._table = np.concatenate([self._table, bmax])

    @staticmethod
    def _check_counts(n) -> np.ndarray:
        n = _numeric_array("n", n)
        if n.dtype.kind == "f" and n.size and not np.isfinite(n).all():
            raise BadInputError("n: must be finite")
        return n

    def bmax(self, n) -> np.ndarray:
        """The largest background at which ``n`` counts are significant (-inf for n <= 0)."""
        return self._bmax(self._check_counts(n))

    def _bmax(self, n) -> np.ndarray:
        n = np.asarray(n)
        if n.dtype.kind not in "iu" or (n.size and n.min() < 0):
            n = np.clip(n, 0, None).astype(np.intp)
        if n.size and n.max() >= self._table.size:
            self._extend(n.max())
        return self._table[n]

    def significant(self, n, b) -> np.ndarray:
        """Whether each window (counts ``n``, integers; background ``b``) is significant."""
        n, b = self._check_counts(n), _numeric_array("b", b)
        if b.dtype.kind == "f" and b.size and not np.isfinite(b).all():
            raise BadInputError("b: must be finite")
        _broadcast_shape(n=n, b=b)
        return self._significant(n, b)

    def _significant(self, n, b) -> np.ndarray:
        return np.asarray(b) <= self._bmax(n)

    def significant1(self, n, b) -> bool:
        """`significant` for one window (no array overhead)."""
        for name, value in (("n", n), ("b", b)):
            if isinstance(value, (bool, np.bool_)) or not isinstance(
                    value, (int, float, np.integer, np.floating)) or not np.isfinite(value):
                raise BadInputError(f"{name}={_describe_value(value)}: must be a finite number")
        return self._significant1(n, b)

    def _significant1(self, n, b) -> bool:
        n = int(round(float(n)))
        if n <= 0:
            return False
        if n >= self._table.size:
            self._extend(n)
        return bool(float(b) <= self._table[n])


def lr_significance(n, b):
    """Significance (sigma) of ``n`` counts over a Poisson background ``b``.

    The signed likelihood-ratio statistic ``sqrt(2 (n ln(n/b) - (n - b)))``,
    negative for a deficit; it does not underflow for huge excesses.

    Examples
    --------
    >>> round(float(lr_significance(30, 10.0)), 2)
    5.09
    """
    n, b = _float_array("n", n), _float_array("b", b)
    for name, value in (("n", n), ("b", b)):
        if value.size and not (np.isfinite(value).all() and value.min() >= 0):
            raise BadInputError(f"{name}: must be finite and non-negative")
    _broadcast_shape(n=n, b=b)
    return np.sign(n - b) * np.sqrt(2 * _excess_lr(n, b, deficit=True))


def _excess_lr(n, b, deficit=False):
    """Poisson log-likelihood ratio of a free rate over ``b`` (0 where n <= b unless ``deficit``)."""
    n = np.asarray(n, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(n > 0, n * np.log(np.where(n > 0, n, 1.0) / np.where(b > 0, b, 1e-300)), 0.0) - (n - b)
    keep = (b > 0) & ((n > b) | deficit)
    return np.where(keep, np.maximum(t, 0.0), 0.0)


class SignificanceRule:
    """Shares the false-positive budget ``fp_rate`` among all the windows tested.

    Every detector tests *families* of windows (one shape at one stride); a
    family whose windows cover each cell ``coverage`` times and mask the
    cells of a window when it fires makes about ``p * coverage`` false cells
    per cell of a clean CCD.  With K families in all, the per-window tail
    probability ``p = fp_rate / (K * coverage * margin)`` keeps the total at
    ``fp_rate / margin``.  The ``margin`` (default 30) pays for what the
    detectors do after a window fires: fitting a segment's ends or a box's
    edges can make a false detection several times larger than its window.
    The tests measure the realised rate on pure-Poisson CCDs with gradients
    and amplifier steps (it is far below ``fp_rate``).

    Parameters
    ----------
    fp_rate : float
        False-positive probability per cell of a defect-free CCD.
    families : int
        K, the number of window families of all detectors together.
    margin : float
        Safety factor for the growth of fitted detections.

    Examples
    --------
    >>> rule = SignificanceRule(1e-4, families=31)
    >>> tail = rule.tail(LineDetector())
    >>> f"{tail.p:.2e}"
    '5.38e-08'
    """

    def __init__(self, fp_rate: float = DEFAULT_FP_RATE, families: int = 1, margin: float = 30.0):
        self.fp_rate = _check_fp_rate(fp_rate)
        self.families = _check_int("families", families, lo=1)
        self.margin = _check_at_least("margin", margin, 0.0, strict=True)
        self._tails = {}

    @classmethod
    def for_detectors(cls, detectors, shape, fp_rate=DEFAULT_FP_RATE, margin=30.0) -> "SignificanceRule":
        """The rule for these detectors on a (62, ny, nx) grid (families counted once)."""
        detectors = _check_detectors(detectors)
        shape = _check_grid_shape("shape", shape)
        families = {family for detector in detectors for family in detector.families(shape)}
        return cls(fp_rate, max(len(families), 1), margin)

    def tail(self, detector) -> PoissonTail:
        """The per-window test of a detector's windows."""
        _check_detectors([detector], "detector")
        p = self.fp_rate / (self.families * detector.coverage * self.margin)
        if p not in self._tails:
            self._tails[p] = PoissonTail(p)
        return self._tails[p]


def _check_detectors(detectors, name: str = "detectors") -> list:
    """A list of detectors: objects with ``families``, ``detect`` and a positive ``coverage``."""
    if isinstance(detectors, (str, bytes)) or not hasattr(detectors, "__iter__"):
        raise BadInputError(f"{name}={_describe_value(detectors)}: must be a list of detectors")
    detectors = list(detectors)
    for detector in detectors:
        coverage = getattr(detector, "coverage", None)
        if not (callable(getattr(detector, "families", None)) and callable(getattr(detector, "detect", None))
                and isinstance(coverage, (int, float, np.integer, np.floating))
                and not isinstance(coverage, (bool, np.bool_)) and np.isfinite(coverage) and coverage > 0):
            raise BadInputError(f"{name}: {_describe_value(detector)} is not a detector "
                                f"(families, detect and a positive coverage)")
    return detectors


def _cell_areas(ny: int, nx: int):
    """Relative area of each cell row and column: the first cell of a CCD holds
    the half pixel 0.5..1 too, the last one lacks it."""
    area_y, area_x = np.ones(ny), np.ones(nx)
    area_y[0] += 0.5 * ny / CCD_NY
    area_y[-1] -= 0.5 * ny / CCD_NY
    area_x[0] += 0.5 * nx / CCD_NX
    area_x[-1] -= 0.5 * nx / CCD_NX
    return area_y, area_x


def _poly_terms(u, v, degree: int):
    """Monomials u^i v^j, i + j <= degree, by total degree (constant first)."""
    return np.stack([u ** (d - i) * v ** i for d in range(degree + 1) for i in range(d + 1)], axis=-1)


def _camera_ratio(n, b, clip: float = 2.5) -> float:
    """Ratio of counts to model of one line over all CCDs, robust to the few that glow.

    Starts at the median ratio; iteratively drops the CCDs whose ratio is off by
    more than ``clip`` times its Poisson scatter (scaled up by the robust
    scatter when that is larger; twice as far below, since defects only add
    counts) and takes the counts-weighted ratio of the rest.
    """
    if n.size == 0:
        return 1.0
    ratio = n / b
    scatter = np.sqrt(np.maximum(ratio, 1e-3) / b)
    value = float(np.median(ratio))
    keep = np.ones(ratio.size, bool)
    for _ in range(10):
        z = (ratio - value) / scatter
        scale = max(1.0, 1.4826 * float(np.median(np.abs(z[keep]))))
        new = (z < clip * scale) & (z > -2 * clip * scale)
        if new.sum() < 3:
            break
        value = float(n[new].sum() / b[new].sum())
        if (new == keep).all():
            break
        keep = new
    return value


#: A background shape term is fitted only with this many counts per term, and
#: a fitted log-slope beyond this (a factor e^10 across half a CCD) is a
#: diverged fit: the lower-degree surface is kept instead.
_MIN_COUNTS_PER_TERM = 50
_MAX_LOG_SLOPE = 10.0
#: An amplifier half is "much brighter" only at this significance.
_BRIGHT_HALF_SIGMA = 5.0


class AmpBackground:
    """Background model of a count cube: per CCD and amplifier half, robust to defects.

    For each live CCD and each amplifier half (the boundary x = 1024.5 is a
    cell edge), the cells are grouped in blocks (``blocks`` per CCD side); a
    block's rate is the mean of its columns after the columns far above the
    block's median are dropped (hot columns).  A smooth log-polynomial of
    degree ``degree`` in (x, y) is fitted to the blocks by Poisson IRLS, the
    degree growing 0 -> 1 -> ``degree``; at each step the blocks far from the
    fit (``clip`` times a robust scatter, at least Poisson) are left out, so a
    glow that covers a fifth of the half does not drag the fit.

    Then two rules make background and defect distinct:

    - a half whose level is more than ``amp_ratio`` times the other half's is a
      defect (a bad amplifier), not background: it takes the other half's
      surface, mirrored, so its excess is detected; CCD 31's right half (its
      unstable amp A, masked anyway) always does;
    - the ``edge_depth`` outermost cell lines of each CCD side (left out of
      the fit) get a camera-wide factor: the robust ratio of counts to model
      on the same line of all CCDs.  An edge that glows on every CCD is
      background; one CCD's glowing edge stands out against it.

    Parameters
    ----------
    degree : int
        Degree of the polynomial per half (2: gradients and curvature).
    blocks : int
        Blocks along y per CCD (half as many along x per half).
    edge_depth : int
        Cell lines at each CCD side with a camera-wide factor.
    amp_ratio : float
        A half brighter than the other by more than this is a defect.
    clip : float
        Rejection threshold of the fits, in units of the scatter.

    Attributes (after `model`)
    --------------------------
    level : numpy.ndarray, shape (62, 2)
        Mean fitted rate (counts per cell) of each half; NaN for dead CCDs.
    bright_half : numpy.ndarray of int, shape (62,)
        The half (0 left, 1 right) taken as a defect, -1 for none.
    edge_factor : dict
        (side, depth[, half]) -> camera-wide factor of each edge line.

    Examples
    --------
    >>> rng = np.random.default_rng(2)
    >>> rate = np.ones((62, 64, 64)) * np.linspace(2.0, 4.0, 64)   # a gradient along x
    >>> counts = rng.poisson(rate)
    >>> model = AmpBackground().model(counts)
    >>> bool(np.allclose(model[:, 8:-8, 8:-8].mean(axis=(0, 1)), rate[0, 0, 8:-8], rtol=0.05))
    True
    """

    def __init__(self, degree: int = 2, blocks: int = 16, edge_depth: int = 3,
                 amp_ratio: float = 1.5, clip: float = 3.0):
        self.degree = _check_int("degree", degree, 0, 3)
        self.blocks = _check_int("blocks", blocks, 1, CCD_NY)
        if self.blocks & (self.blocks - 1):  # the blocks must tile a power-of-two grid
            raise BadInputError(f"blocks={self.blocks}: must be a power of 2")
        self.edge_depth = _check_int("edge_depth", edge_depth, lo=0)
        self.amp_ratio = _check_at_least("amp_ratio", amp_ratio, 1.0)
        self.clip = _check_at_least("clip", clip, 0.0, strict=True)

    def model(self, counts, excluded=None, live=None) -> np.ndarray:
        """Expected counts per cell, shape of ``counts``; 0 on dead CCDs.

        ``excluded`` (bool, same shape) marks cells to ignore (known defects,
        CCD 31's right half); ``live`` (bool, (62,)) the CCDs with transients.
        """
        counts = _check_cube(counts)
        n_ccd, ny, nx = counts.shape
        if excluded is None:
            excluded = np.zeros(counts.shape, bool)
        else:
            excluded = _check_cells("excluded", excluded, counts.shape, "biu").astype(bool, copy=False)
        if live is None:
            live = counts.reshape(n_ccd, -1).sum(axis=1) > 0
        else:
            live = _check_live(live)
        half = nx // 2
        area_y, area_x = _cell_areas(ny, nx)
        area = area_y[:, None] * area_x[None, :]
        depth = min(self.edge_depth, ny // 8, nx // 8)
        fit_use = ~excluded
        fit_use[:, :depth] = fit_use[:, ny - depth:] = False
        fit_use[:, :, :depth] = fit_use[:, :, nx - depth:] = False
        nb_y, nb_x = min(self.blocks, ny), min(max(self.blocks // 2, 1), half)
        by, bx = ny // nb_y, half // nb_x
        # column sums per block row, then per block: (n_ccd, nb_y, 2 nb_x, bx)
        col_n = np.where(fit_use, counts, 0).reshape(n_ccd, nb_y, by, nx).sum(axis=2, dtype=np.float64)
        col_a = np.where(fit_use, area, 0.0).reshape(n_ccd, nb_y, by, nx).sum(axis=2)
        col_n = col_n.reshape(n_ccd, nb_y, 2 * nb_x, bx)
        col_a = col_a.reshape(n_ccd, nb_y, 2 * nb_x, bx)
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.where(col_a > 0, col_n / col_a, np.nan)
            median = np.nanmedian(np.where(np.isnan(rate).all(-1, keepdims=True), 0.0, rate), axis=-1,
                                  keepdims=True)
            mean_area = np.where(col_a > 0, col_a, 0).sum(-1, keepdims=True) / np.maximum(
                (col_a > 0).sum(-1, keepdims=True), 1)
            # Poisson scatter of a column's rate, at least that of one count in the
            # column: in sparse maps (median 0) single counts are noise, not defects.
            mean_area = np.maximum(mean_area, 1e-3)
            scatter = np.sqrt(np.maximum(median, 1.0 / mean_area) / mean_area)
            keep = (col_a > 0) & (rate <= median + self.clip * scatter + 1e-12)
        block_n = np.where(keep, col_n, 0.0).sum(-1)
        block_a = np.where(keep, col_a, 0.0).sum(-1)
        v, u = np.meshgrid((np.arange(nb_y) + 0.5) / nb_y * 2 - 1, (np.arange(nb_x) + 0.5) / nb_x * 2 - 1,
                           indexing="ij")
        terms = _poly_terms(u.ravel(), v.ravel(), self.degree)
        cv, cu = np.meshgrid((np.arange(ny) + 0.5) / ny * 2 - 1, (np.arange(half) + 0.5) / half * 2 - 1,
                             indexing="ij")
        cell_terms = _poly_terms(cu, cv, self.degree)
        model = np.zeros(counts.shape)
        self.level = np.full((n_ccd, 2), np.nan)
        self.bright_half = np.full(n_ccd, -1)
        for index in np.flatnonzero(live):  # a loop over CCD halves, not cells
            for h in (0, 1):
                blocks = slice(h * nb_x, (h + 1) * nb_x)
                if not (block_a[index, :, blocks] > 0).any():
                    continue
                coef = self._fit(terms, block_n[index, :, blocks].ravel(), block_a[index, :, blocks].ravel())
                model[index, :, h * half:(h + 1) * half] = np.exp(cell_terms @ coef)
                self.level[index, h] = float(np.exp(terms @ coef).mean())
            low, high = self._significant_levels(index, block_n, block_a, nb_x)
            if index + 1 == HALF_MASKED_CCD or not np.isfinite(high) or high > self.amp_ratio * low:
                model[index, :, half:] = model[index, :, :half][:, ::-1]
                self.bright_half[index] = 1 if index + 1 != HALF_MASKED_CCD else -1
            elif not np.isfinite(low) or low > self.amp_ratio * high:
                model[index, :, :half] = model[index, :, half:][:, ::-1]
                self.bright_half[index] = 0
        model *= area[None]
        self._edge_lines(counts, model, ~excluded, live, depth)
        model[~live] = 0.0
        return model

    def _significant_levels(self, index, block_n, block_a, nb_x):
        """The fitted levels of a CCD's halves, made equal unless they differ significantly.

        A half counts as brighter only when its counts exceed ``amp_ratio``
        times the other half's rate at 5 sigma: in a sparse map a few counts
        more on one side are noise, not a bad amplifier.
        """
        levels = list(self.level[index])
        n = [block_n[index, :, h * nb_x:(h + 1) * nb_x].sum() for h in (0, 1)]
        a = [block_a[index, :, h * nb_x:(h + 1) * nb_x].sum() for h in (0, 1)]
        for bright, dim in ((0, 1), (1, 0)):
            if min(a) > 0 and levels[bright] > self.amp_ratio * levels[dim]:
                expected = self.amp_ratio * n[dim] / a[dim] * a[bright]
                if np.sqrt(2 * float(_excess_lr(n[bright], expected))) < _BRIGHT_HALF_SIGMA:
                    levels[bright] = levels[dim]  # not significantly brighter: alike
        return levels[0], levels[1]

    def _edge_lines(self, counts, model, use, live, depth):
        """Scale the outer ``depth`` lines of every CCD by their camera-wide factor."""
        n_ccd, ny, nx = counts.shape
        half = nx // 2
        self.edge_factor = {}
        good_ccd = live & (self.bright_half < 0)
        for k in range(depth):
            lines = [(("x", k), (slice(depth, ny - depth), k)),
                     (("x", -1 - k), (slice(depth, ny - depth), nx - 1 - k))]
            for h in (0, 1):
                inner = slice(max(h * half, depth), min((h + 1) * half, nx - depth))
                lines += [(("y", k, h), (k, inner)), (("y", -1 - k, h), (ny - 1 - k, inner))]
            for key, (ys, xs) in lines:
                sel = use[:, ys, xs]
                n_line = np.where(sel, counts[:, ys, xs], 0).reshape(n_ccd, -1).sum(1)
                b_line = np.where(sel, model[:, ys, xs], 0.0).reshape(n_ccd, -1).sum(1)
                good = good_ccd & (b_line > 0)
                if (key[0] == "x" and key[1] < 0) or (key[0] == "y" and key[2] == 1):
                    good[HALF_MASKED_CCD - 1] = False  # CCD 31's right half is not background
                factor = _camera_ratio(n_line[good], b_line[good])
                self.edge_factor[key] = factor
                if key[0] == "x":
                    model[:, :, xs] *= factor
                else:
                    model[:, ys, slice(key[2] * half, (key[2] + 1) * half)] *= factor

    def _fit(self, terms, n, a):
        """Coefficients of ``n ~ Poisson(a exp(terms @ c))``, robust to outlying blocks.

        The degree grows from a constant while there are counts enough for
        its terms (`_MIN_COUNTS_PER_TERM`) and the fit stays finite (a sparse
        half, mostly empty blocks, keeps the constant).
        """
        valid = a > 0
        rate = np.where(valid, n / np.where(valid, a, 1.0), 0.0)
        n_all = terms.shape[1]
        coef = np.zeros(n_all)
        start = float(np.median(rate[valid]))
        if not start > 0:  # sparse: most blocks empty, start from the mean rate
            start = float(n[valid].sum() / a[valid].sum())
        coef[0] = np.log(max(start, 1e-6))
        ok = valid.copy()
        for degree in range(self.degree + 1):
            k = (degree + 1) * (degree + 2) // 2
            if degree and n[ok].sum() < _MIN_COUNTS_PER_TERM * k:
                break  # too few counts to fit this shape: keep the lower degree
            t, c = terms[:, :k], coef[:k].copy()
            with np.errstate(over="ignore", invalid="ignore"):
                for _ in range(3):
                    for _ in range(4):  # Poisson IRLS (log link)
                        eta = t @ c
                        mu = a * np.exp(eta)
                        w = np.where(ok, mu, 0.0)
                        z = eta + np.where(ok, (n - mu) / np.maximum(mu, 1e-12), 0.0)
                        c = np.linalg.solve((t * w[:, None]).T @ t + 1e-9 * np.eye(k), (t * w[:, None]).T @ z)
                    if not _sane_log_surface(c):
                        break
                    mu = a * np.exp(t @ c)
                    rel = np.where(valid, n / np.maximum(mu, 1e-12) - 1, 0.0)
                    # Poisson scale of a block's relative excess; below one count
                    # expected, that of one count (a single count is not an outlier).
                    mu_floor = np.maximum(mu, 1e-9)
                    scale = np.maximum(1 / np.sqrt(mu_floor), 1 / mu_floor)
                    if degree < self.degree and ok.any():  # lower degrees: allow for the unfitted shape
                        scale = np.maximum(scale, 1.4826 * float(np.median(np.abs(rel[ok]))))
                    new = valid & (rel < self.clip * scale) & (rel > -2 * self.clip * scale)
                    if new.sum() < k + 2 or (new == ok).all():
                        break
                    ok = new
            if not _sane_log_surface(c):
                break  # the fit diverged (sparse or pathological counts): keep the lower degree
            coef = np.zeros(n_all)
            coef[:k] = c
        return coef


def _sane_log_surface(coef) -> bool:
    """Whether fitted log-surface coefficients are finite and their slopes plausible."""
    return bool(np.isfinite(coef).all() and np.abs(coef[1:]).max(initial=0.0) < _MAX_LOG_SLOPE)


class Defect:
    """One structure found on a CCD: its kind, cell box and statistics.

    ``y0:y1, x0:x1`` is the bounding box in cells (half open, of the grid the
    mask was made on); ``cells`` the cells it masked, ``counts`` and
    ``background`` their observed and expected counts.
    """

    __slots__ = ("ccdnum", "kind", "y0", "y1", "x0", "x1", "cells", "counts", "background")

    def __init__(self, ccdnum, kind, y0, y1, x0, x1, cells, counts, background):
        self.ccdnum = _check_int("ccdnum", ccdnum, 1, N_CCD)
        if not isinstance(kind, str) or kind not in DEFECT_KINDS:
            raise BadInputError(f"kind={_describe_value(kind)}: must be one of {', '.join(DEFECT_KINDS)}")
        self.kind = kind
        self.y0, self.x0 = _check_int("y0", y0, lo=0), _check_int("x0", x0, lo=0)
        self.y1, self.x1 = _check_int("y1", y1, lo=self.y0), _check_int("x1", x1, lo=self.x0)
        self.cells = _check_int("cells", cells, lo=0)
        self.counts = _check_at_least("counts", counts)
        self.background = _check_at_least("background", background)

    @property
    def significance(self) -> float:
        """Likelihood-ratio significance of the excess, in sigma."""
        return float(lr_significance(self.counts, self.background))

    def __repr__(self):
        return (f"Defect(ccdnum={self.ccdnum}, kind={self.kind!r}, y={self.y0}:{self.y1}, "
                f"x={self.x0}:{self.x1}, cells={self.cells}, counts={self.counts:g}, "
                f"background={self.background:.1f})")


def _starts(size: int, length: int, step: int) -> np.ndarray:
    """Window starts at ``step`` spacing, the last window ending at ``size``."""
    starts = np.arange(0, size - length + 1, step)
    return starts if starts[-1] == size - length else np.append(starts, size - length)


def _best_interval(weights):
    """The interval [s, e) of largest sum of ``weights`` (1-d): (sum, s, e); (0, 0, 0) if none is positive."""
    cumulative = np.concatenate([[0.0], np.cumsum(weights)])
    gain = cumulative - np.minimum.accumulate(cumulative)
    end = int(np.argmax(gain))
    if gain[end] <= 0:
        return 0.0, 0, 0
    return float(gain[end]), int(np.argmin(cumulative[:end + 1])), end


def fit_segment(counts, background, ratio: float, lo: int = 0, hi: int = None, n_iter: int = 10,
                penalty: float = 0.0):
    """Segment [s, e) of a 1-d profile with the largest Poisson likelihood ratio.

    The model: a constant excess ratio inside the segment, the background
    outside.  For a fixed ratio the best segment is the interval of largest
    sum of ``n ln(ratio) - b (ratio - 1)`` (linear time); alternating it with
    the ratio of that segment raises the likelihood at each step.

    Parameters
    ----------
    counts, background : numpy.ndarray, 1-d
        Observed and expected counts along the line.
    ratio : float
        Starting excess ratio (counts over background), > 1.
    lo, hi : int
        Search within [lo, hi).
    penalty : float
        A cost per cell of ``penalty * b (ratio - 1 - ln ratio)`` (a fraction of
        the information a cell of the segment is expected to carry): the ends
        move in over fluctuations that only just pay for themselves.

    Returns
    -------
    (s, e, ratio, lr)
        Bounds in [lo, hi), the fitted ratio and log-likelihood ratio;
        ``e == s`` if no segment has an excess.

    Examples
    --------
    >>> b = np.full(100, 3.0)
    >>> n = np.full(100, 3); n[20:60] = 9
    >>> fit_segment(n, b, 2.0)[:2]
    (20, 60)
    """
    counts = _numeric_array("counts", counts)
    background = _numeric_array("background", background)
    if counts.ndim != 1 or not counts.size:
        raise BadInputError(f"counts: {_describe_value(counts)}, must be a non-empty 1-d profile")
    for name, value in (("counts", counts), ("background", background)):
        if not (np.isfinite(value).all() and value.min() >= 0):
            raise BadInputError(f"{name}: must be finite and non-negative")
    if background.shape != counts.shape:
        raise BadInputError(f"background: {_describe_value(background)}, expected shape {counts.shape}")
    ratio = _check_at_least("ratio", ratio, 0.0, strict=True)
    lo = _check_int("lo", lo, 0, counts.size)
    hi = counts.size if hi is None else _check_int("hi", hi, lo, counts.size)
    return _fit_segment(counts, background, ratio, lo, hi, _check_int("n_iter", n_iter, lo=0),
                        _check_at_least("penalty", penalty))


def _fit_segment(counts, background, ratio, lo=0, hi=None, n_iter=10, penalty=0.0):
    hi = counts.size if hi is None else hi
    n = np.asarray(counts[lo:hi], dtype=np.float64)
    b = np.asarray(background[lo:hi], dtype=np.float64)
    best, best_value = (lo, lo, 1.0, 0.0), 0.0
    ratio = max(float(ratio), 1.0 + 1e-6)
    for _ in range(n_iter):
        log_ratio = np.log(ratio)
        value, s, e = _best_interval(n * log_ratio - b * (ratio - 1.0)
                                     - penalty * b * (ratio - 1.0 - log_ratio))
        if e <= s:
            break
        total_n, total_b = n[s:e].sum(), b[s:e].sum()
        if total_b <= 0:  # counts where no background is expected: no ratio to fit
            break
        if value > best_value + 1e-9:
            best, best_value = (lo + s, lo + e, total_n / total_b, float(_excess_lr(total_n, total_b))), value
        # the ratio that maximises the (penalised) likelihood of this segment
        new = (total_n / total_b + penalty) / (1.0 + penalty)
        if new <= 1 or abs(new - ratio) <= 1e-4 * ratio:
            break
        ratio = new
    return best


class LineDetector:
    """Column and row segments of any length, with fitted ends, split at gaps.

    Screening: along every column (and row) of cells, windows of ``min_length``,
    2 ``min_length``, ... cells up to the CCD's length at a stride of half a
    window, ``col_widths`` (``row_widths``) cells wide, tested with the
    rule's tail.  A line with a significant window is then fitted, most
    significant first (a glowing row is taken before the columns it crosses):

    - the segment of maximum likelihood ratio (`fit_segment`): its ends are
      fitted, not the union of the windows;
    - split at gaps: the interior interval most consistent with the
      background is cut out when its log-likelihood ratio exceeds
      ``ln(L / gap_p)`` (the maximum of that statistic over the sub-intervals
      of a gapless segment of length L exceeds it with probability ~gap_p);
      the pieces are refitted, and kept when significant at ``piece_p``;
    - of a two-cell-wide line, each column keeps its own fitted segment, so
      a neighbour without excess stays unmasked; the lines beside a found
      segment (up to ``max_neighbours`` on each side) join, with their own
      fitted segment, when their excess along it is significant at
      ``neighbour_p`` (a glowing edge or a column wider than a cell);
    - only cells likely to belong are masked: each cell in a segment costs
      ``end_penalty`` times the information a cell of the segment is expected
      to carry, ``b (ratio - 1 - ln ratio)``, so a faint column does not run on
      over a stretch of upward background fluctuations (ends of bright columns,
      whose cells carry much more, do not move).

    Parameters
    ----------
    col_widths, row_widths : tuple of int
        Widths (cells) of the column and row windows.
    min_length : int
        Shortest window (cells); shorter structures are the cell and box
        detectors' job.
    gap_p : float
        False-split probability of a segment without gaps.
    piece_p : float
        Tail probability of a piece of a split segment.
    max_rounds : int
        Re-screenings of the CCDs where masking a line hid others' windows.
    end_penalty : float
        Cost of a cell in a fitted segment, in units of its expected information
        (see `fit_segment`).
    neighbour_p, max_neighbours : float, int
        The conditional test of the lines beside a segment, and how far out.

    Examples
    --------
    >>> rng = np.random.default_rng(3)
    >>> counts = rng.poisson(3.0, size=(62, 256, 256))
    >>> counts[7, 40:200, 90] += rng.poisson(3.0, 160)         # a faint column: 2x background
    >>> excluded = np.zeros(counts.shape, bool)
    >>> found = LineDetector().detect(counts, np.full(counts.shape, 3.0), excluded,
    ...                               PoissonTail(1e-8), np.ones(62, bool))
    >>> [(d.ccdnum, d.kind, d.x0, d.x1) for d in found]
    [(8, 'column', 90, 91)]
    >>> abs(found[0].y0 - 40) <= 3 and abs(found[0].y1 - 200) <= 3
    True
    """

    coverage = 2

    def __init__(self, col_widths=(1, 2), row_widths=(1,), min_length: int = 4, gap_p: float = 0.1,
                 piece_p: float = 1e-4, max_rounds: int = 4, end_penalty: float = 0.25,
                 neighbour_p: float = 1e-4, max_neighbours: int = 2):
        self.end_penalty = _check_at_least("end_penalty", end_penalty)
        self.neighbour_tail = PoissonTail(_check_probability("neighbour_p", neighbour_p))
        self.max_neighbours = _check_int("max_neighbours", max_neighbours, lo=0)
        self.widths = {"y": _check_int_tuple("col_widths", col_widths), "x": _check_int_tuple("row_widths", row_widths)}
        self.min_length = _check_int("min_length", min_length, lo=1)
        self.gap_p = _check_probability("gap_p", gap_p)
        self.max_rounds = _check_int("max_rounds", max_rounds, lo=1)
        self.piece_tail = PoissonTail(_check_probability("piece_p", piece_p))

    def lengths(self, size: int) -> list:
        """Window lengths (cells) along a line of ``size`` cells."""
        size = _check_int("size", size, lo=0)
        lengths, length = [], self.min_length
        while length <= size:
            lengths.append(length)
            length *= 2
        return lengths

    def families(self, shape) -> list:
        shape = _check_grid_shape("shape", shape)
        return [("line", axis, width, length)
                for axis, size in (("y", shape[1]), ("x", shape[2]))
                for width in self.widths[axis] for length in self.lengths(size)]

    def detect(self, counts, background, excluded, tail, live) -> list:
        """Find, mask (in ``excluded``) and return the line segments."""
        counts, background, excluded, tail, live = _check_search(counts, background, excluded, tail, live)
        views = {"y": (counts, background, excluded),
                 "x": tuple(a.transpose(0, 2, 1) for a in (counts, background, excluded))}
        found = []
        todo = np.flatnonzero(live)
        for _ in range(self.max_rounds):
            candidates = []
            every = todo.size == counts.shape[0]
            n_y = np.where(excluded if every else excluded[todo], 0, counts if every else counts[todo])
            n_y = n_y.astype(np.int32, copy=False)
            b_y = np.where(excluded if every else excluded[todo], np.float32(0),
                           (background if every else background[todo]).astype(np.float32))
            for axis in ("y", "x"):
                n_z, b_z = (n_y, b_y) if axis == "y" else (
                    np.ascontiguousarray(n_y.transpose(0, 2, 1)), np.ascontiguousarray(b_y.transpose(0, 2, 1)))
                for width in self.widths[axis]:
                    best, where = self._screen(n_z, b_z, tail, width)
                    for i, x in zip(*np.nonzero(best)):
                        candidates.append((-best[i, x], int(todo[i]), axis, int(x), width,
                                           int(where[i, x, 0]), int(where[i, x, 1])))
            if not candidates:
                break
            candidates.sort()
            touched, deferred = set(), set()
            for _, ccd, axis, x, width, start, length in candidates:  # a loop over candidate lines
                n, b, ex = views[axis]
                use = ~ex[ccd, start:start + length, x:x + width]
                total_n = np.where(use, n[ccd, start:start + length, x:x + width], 0).sum()
                total_b = np.where(use, b[ccd, start:start + length, x:x + width], 0.0).sum()
                if not tail._significant1(total_n, total_b):  # another line took its cells
                    deferred.add(ccd)
                    continue
                new = self._fit(n, b, ex, ccd, x, width, total_n / total_b, start, length)
                if axis == "x":
                    for d in new:
                        d.y0, d.y1, d.x0, d.x1, d.kind = d.x0, d.x1, d.y0, d.y1, "row"
                found += new
                touched.add(ccd)
            todo = np.array(sorted(touched & deferred), dtype=np.int64)
            if not todo.size:
                break
        return found

    def _screen(self, n, b, tail, width):
        """Best significant window of every line: (lr (0: none), [start, length])."""
        k, ly, lx = n.shape
        if width > 1:
            n = sum(n[:, :, j:lx - width + 1 + j] for j in range(width))
            b = sum(b[:, :, j:lx - width + 1 + j] for j in range(width))
        cn = np.zeros((k, ly + 1, n.shape[2]), np.int32)
        np.cumsum(n, axis=1, out=cn[:, 1:])
        cb = np.zeros((k, ly + 1, n.shape[2]), np.float32)
        np.cumsum(b, axis=1, out=cb[:, 1:])
        best = np.zeros((k, n.shape[2]))
        where = np.zeros((k, n.shape[2], 2), np.int64)
        for length in self.lengths(ly):
            step = max(1, length // 2)
            starts = _starts(ly, length, step)
            if (ly - length) % step == 0:  # a regular grid of windows: slices, no gathering
                N = cn[:, length::step] - cn[:, :ly - length + 1:step]
                B = cb[:, length::step] - cb[:, :ly - length + 1:step]
            else:
                N = cn[:, starts + length] - cn[:, starts]
                B = cb[:, starts + length] - cb[:, starts]
            hit = tail._significant(N, B)
            if not hit.any():
                continue
            i, s, x = np.nonzero(hit)
            lr = _excess_lr(N[i, s, x], B[i, s, x])
            order = np.argsort(lr)
            i, s, x, lr = i[order], s[order], x[order], lr[order]
            better = lr > best[i, x]
            best[i[better], x[better]] = lr[better]  # the last of repeated (i, x) is the largest
            where[i[better], x[better]] = np.stack([starts[s[better]], np.full(better.sum(), length)], -1)
        return best, where

    def _fit(self, n, b, ex, ccd, x, width, ratio, start, length) -> list:
        use = ~ex[ccd, :, x:x + width]
        line_n = np.where(use, n[ccd, :, x:x + width], 0).astype(np.int64)
        line_b = np.where(use, b[ccd, :, x:x + width], 0.0)
        prof_n, prof_b = line_n.sum(1), line_b.sum(1)
        s, e, ratio_fit, _ = _fit_segment(prof_n, prof_b, ratio, penalty=self.end_penalty)
        if e <= s or min(e, start + length) <= max(s, start):  # keep hold of the window's excess
            s, e, ratio_fit = start, start + length, ratio
        found = []
        for s0, e0 in self._split(prof_n, prof_b, s, e, ratio_fit):
            if (s0, e0) != (s, e) and not self.piece_tail._significant1(prof_n[s0:e0].sum(), prof_b[s0:e0].sum()):
                continue
            parts = [(0, s0, e0)] if width == 1 else self._columns(line_n, line_b, s0, e0)
            for k, a, z in parts:
                ex[ccd, a:z, x + k] = True
            parts = [(x + k, a, z, int(use[a:z, k].sum()), line_n[a:z, k].sum(), line_b[a:z, k].sum())
                     for k, a, z in parts]
            parts += self._neighbours(n, b, ex, ccd, parts)
            found.append(Defect(ccd + 1, "column", min(p[1] for p in parts), max(p[2] for p in parts),
                                min(p[0] for p in parts), max(p[0] for p in parts) + 1,
                                sum(p[3] for p in parts), sum(p[4] for p in parts), sum(p[5] for p in parts)))
        if not found:  # significant together, no piece alone: the whole segment
            ex[ccd, s:e, x:x + width] = True
            found.append(Defect(ccd + 1, "column", s, e, x, x + width, int(use[s:e].sum()),
                                prof_n[s:e].sum(), prof_b[s:e].sum()))
        return found

    def _neighbours(self, n, b, ex, ccd, parts) -> list:
        """The columns beside a found segment that hold an excess along it too (a glow
        or column wider than a cell), tested one by one outwards at ``neighbour_p``."""
        added = []
        todo = list(parts)
        while todo and len(added) < 2 * self.max_neighbours:
            column, a, z = todo.pop()[:3]
            for side in (column - 1, column + 1):
                if not 0 <= side < n.shape[2] or any(p[0] == side for p in parts + added):
                    continue
                free = ~ex[ccd, a:z, side]
                col_n = np.where(free, n[ccd, a:z, side], 0).astype(np.int64)
                col_b = np.where(free, b[ccd, a:z, side], 0.0)
                if not free.any() or not self.neighbour_tail._significant1(col_n.sum(), col_b.sum()):
                    continue
                a2, z2, _, _ = _fit_segment(col_n, col_b, max(col_n.sum() / max(col_b.sum(), 1e-12), 1.0),
                                           penalty=self.end_penalty)
                if z2 <= a2 or not self.neighbour_tail._significant1(col_n[a2:z2].sum(), col_b[a2:z2].sum()):
                    continue
                ex[ccd, a + a2:a + z2, side] = True
                entry = (side, a + a2, a + z2, int(free[a2:z2].sum()), col_n[a2:z2].sum(), col_b[a2:z2].sum())
                added.append(entry)
                if abs(side - parts[0][0]) < self.max_neighbours:
                    todo.append(entry)
        return added

    def _columns(self, line_n, line_b, s0, e0):
        """(column, start, end) of the columns of a wide line that hold the excess."""
        ratio = line_n[s0:e0].sum() / max(line_b[s0:e0].sum(), 1e-12)
        parts = []
        for k in range(line_n.shape[1]):
            a, z, r, _ = _fit_segment(line_n[:, k], line_b[:, k], ratio, s0, e0, penalty=self.end_penalty)
            for a2, z2 in (self._split(line_n[:, k], line_b[:, k], a, z, r) if z > a else []):
                if self.piece_tail._significant1(line_n[a2:z2, k].sum(), line_b[a2:z2, k].sum()):
                    parts.append((k, a2, z2))
        return parts or [(k, s0, e0) for k in range(line_n.shape[1])]

    def _split(self, prof_n, prof_b, s, e, ratio) -> list:
        """Pieces of segment [s, e) once its gaps are cut out."""
        if e - s < 3 or ratio <= 1:
            return [(s, e)]
        # a gap: an interior interval where the background explains the counts
        # better than the segment's ratio (a log-likelihood-ratio random walk)
        value, g0, g1 = _best_interval(prof_b[s + 1:e - 1] * (ratio - 1) - prof_n[s + 1:e - 1] * np.log(ratio))
        if value < np.log((e - s) / self.gap_p) or g1 <= g0:
            return [(s, e)]
        pieces = []
        for lo, hi in ((s, s + 1 + g0), (s + 1 + g1, e)):
            if hi > lo:
                a, z, r, _ = _fit_segment(prof_n, prof_b, ratio, lo, hi, penalty=self.end_penalty)
                if z > a:
                    pieces += self._split(prof_n, prof_b, a, z, r)
        return pieces


def _grow_rings(n, b, ex, box, tail, max_rings):
    """Add the ring of cells around ``box`` while the ring's excess is significant.

    ``n, b, ex``: 2-d arrays of one CCD (or amplifier half).  Returns the grown
    box (y0, y1, x0, x1) and the counts, background and number of cells added
    (masked in ``ex``).
    """
    ny, nx = n.shape
    y0, y1, x0, x1 = box
    added_n = added_b = 0.0
    added = 0
    for _ in range(max_rings):
        gy0, gy1, gx0, gx1 = max(y0 - 1, 0), min(y1 + 1, ny), max(x0 - 1, 0), min(x1 + 1, nx)
        ring = ~ex[gy0:gy1, gx0:gx1]
        if not ring.any():
            break
        ring_n, ring_b = n[gy0:gy1, gx0:gx1][ring].sum(), b[gy0:gy1, gx0:gx1][ring].sum()
        if not tail._significant1(ring_n, ring_b):
            break
        ex[gy0:gy1, gx0:gx1] = True
        added_n += ring_n
        added_b += ring_b
        added += int(ring.sum())
        y0, y1, x0, x1 = gy0, gy1, gx0, gx1
    return (y0, y1, x0, x1), added_n, added_b, added


_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)
#: Natural log of the likelihood ratio (fitted blob against background alone)
#: that the wing cells of a blob must reach to be masked.
_WING_LOG_LR = 2.0
#: Significance (sigma) a structure needs before a blob is fitted to it: wings
#: are extrapolated from a core that leaves no doubt.  A structure near the
#: detection threshold, possibly a false one, cannot fix a blob's shape.
_WING_MIN_SIGMA = 6.0


def _max_blob_sigma(shape, cell_px) -> float:
    """The widest blob (sigma, pixels) `_fit_blob` fits in a window of ``shape`` cells."""
    return max(shape[1] * float(cell_px[0]), shape[0] * float(cell_px[1])) / 2


def _fit_blob(counts, background, use, cell_px, start):
    """Fit a circular Gaussian blob over a known background, by Poisson maximum likelihood.

    ``counts``, ``background``: 2-d windows of cells ``cell_px`` = (pixels
    along x, along y) wide; ``use``: the cells the fit sees.  The expected
    count of cell (i, j) is ``background[i, j] + amplitude * fy[i] * fx[j]``,
    ``fy``, ``fx`` the fractions of a Gaussian of width ``sigma`` pixels (the
    same along x and y: a hot spot or a glow spreads its light evenly) centred
    at (xc, yc) that fall in the cell's pixel ranges, counted from the
    window's corner.  ``start``: (xc, yc, sigma, amplitude).  Returns the
    fitted (xc, yc, sigma, amplitude) and the blob's expected counts per cell.
    """
    from scipy.optimize import minimize
    from scipy.special import ndtr

    counts = np.asarray(counts, dtype=np.float64)
    ny, nx = counts.shape
    x_edges, y_edges = np.arange(nx + 1) * float(cell_px[0]), np.arange(ny + 1) * float(cell_px[1])
    width, height = x_edges[-1], y_edges[-1]
    max_sigma = _max_blob_sigma(counts.shape, cell_px)

    def fractions(params):
        """Amplitude, the cell fractions along y and x and their derivatives by centre and log sigma."""
        xc, yc, log_sigma, log_amplitude = params
        sigma = np.exp(log_sigma)
        zy, zx = (y_edges - yc) / sigma, (x_edges - xc) / sigma
        gy, gx = np.exp(-0.5 * zy * zy) * _INV_SQRT_2PI, np.exp(-0.5 * zx * zx) * _INV_SQRT_2PI
        return (np.exp(log_amplitude), np.diff(ndtr(zy)), np.diff(ndtr(zx)),
                -np.diff(gy) / sigma, -np.diff(gx) / sigma, -np.diff(gy * zy), -np.diff(gx * zx))

    def negative_log_likelihood(params):
        amplitude, fy, fx, dfy_centre, dfx_centre, dfy_sigma, dfx_sigma = fractions(params)
        blob = amplitude * np.outer(fy, fx)
        expected = background + blob
        weight = np.where(use, 1.0 - counts / expected, 0.0)
        value = float(np.where(use, expected - counts * np.log(expected), 0.0).sum())
        gradient = np.array([
            amplitude * (weight * np.outer(fy, dfx_centre)).sum(),
            amplitude * (weight * np.outer(dfy_centre, fx)).sum(),
            amplitude * (weight * (np.outer(dfy_sigma, fx) + np.outer(fy, dfx_sigma))).sum(),
            (weight * blob).sum()])
        return value, gradient

    xc, yc, sigma, amplitude = start
    fit = minimize(negative_log_likelihood,
                   [xc, yc, np.log(min(max(sigma, 1.0), max_sigma)), np.log(max(amplitude, 1.0))],
                   jac=True, method="L-BFGS-B", options={"ftol": 1e-7, "gtol": 1e-2, "maxiter": 100},
                   bounds=[(-width / 2, 1.5 * width), (-height / 2, 1.5 * height),
                           (np.log(0.3), np.log(max_sigma)), (None, np.log(1e12))])
    amplitude, fy, fx = fractions(fit.x)[:3]
    xc, yc, log_sigma, _ = fit.x
    return (float(xc), float(yc), float(np.exp(log_sigma)), float(amplitude)), amplitude * np.outer(fy, fx)


def _grow_wings(n, b, ex, box, cell_px, wing_ratio):
    """Add the cells around ``box`` where a Gaussian blob fitted to it predicts an
    excess of at least ``wing_ratio`` times the background.

    The blob is fitted (`_fit_blob`) to a window of the structure's size on
    each side, on the box's cells and the unmasked cells around it.  Its wing
    cells (unmasked, touching the box through one another) join when their
    counts favour the blob over the background alone by a likelihood ratio of
    at least exp(`_WING_LOG_LR`): a short column or a glowing edge, which a
    round blob does not fit, predicts wings its sides do not show.  ``n, b,
    ex``: 2-d arrays of one CCD or amplifier half.  Returns the bounding box
    (y0, y1, x0, x1) and the counts, background and number of cells added
    (masked in ``ex``).
    """
    from scipy import ndimage

    ny, nx = n.shape
    y0, y1, x0, x1 = box
    pad = max(4, y1 - y0, x1 - x0)
    wy0, wy1, wx0, wx1 = max(y0 - pad, 0), min(y1 + pad, ny), max(x0 - pad, 0), min(x1 + pad, nx)
    counts, masked = n[wy0:wy1, wx0:wx1], ex[wy0:wy1, wx0:wx1]
    background = np.maximum(b[wy0:wy1, wx0:wx1], 1e-6)  # a user's model may hold zeros
    inside = np.zeros(counts.shape, dtype=bool)
    inside[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0] = True
    excess = np.where(inside, counts - background, 0.0)
    total = excess.sum()
    if total <= 0:
        return box, 0.0, 0.0, 0
    # Start at the excess-weighted centre and spread of the structure's cells.
    px_x, px_y = cell_px
    x_mid, y_mid = (np.arange(wx1 - wx0) + 0.5) * px_x, (np.arange(wy1 - wy0) + 0.5) * px_y
    profile_x, profile_y = excess.sum(axis=0), excess.sum(axis=1)
    xc, yc = (x_mid * profile_x).sum() / total, (y_mid * profile_y).sum() / total
    spread = ((x_mid - xc) ** 2 * profile_x).sum() / total + ((y_mid - yc) ** 2 * profile_y).sum() / total
    sigma = max(np.sqrt(max(spread, 0.0) / 2), min(px_x, px_y) / 2)
    (_, _, sigma, _), blob = _fit_blob(counts, background, inside | ~masked, cell_px, (xc, yc, sigma, total))
    if sigma >= 0.95 * _max_blob_sigma(counts.shape, cell_px):
        return box, 0.0, 0.0, 0  # as wide as the window allows: a plateau, not a blob
    wing = (blob >= wing_ratio * background) & ~masked & ~inside
    if wing.any():  # only wing cells connected to the box
        wing = ndimage.binary_propagation(inside, mask=wing | inside, structure=np.ones((3, 3), bool)) & ~inside
    if not wing.any():
        return box, 0.0, 0.0, 0
    wing_n, wing_b, wing_blob = counts[wing], background[wing], blob[wing]
    if float((wing_n * np.log1p(wing_blob / wing_b) - wing_blob).sum()) < _WING_LOG_LR:
        return box, 0.0, 0.0, 0
    masked |= wing
    rows, cols = np.nonzero(wing)
    grown = (min(y0, wy0 + int(rows.min())), max(y1, wy0 + int(rows.max()) + 1),
             min(x0, wx0 + int(cols.min())), max(x1, wx0 + int(cols.max()) + 1))
    return grown, float(wing_n.sum()), float(wing_b.sum()), int(wing.sum())


class CellDetector:
    """Single cells whose count is significant on its own; touching ones are grouped.

    Examples
    --------
    >>> counts = np.full((62, 16, 16), 3); counts[0, 5, 5] = 40
    >>> excluded = np.zeros(counts.shape, bool)
    >>> CellDetector().detect(counts, np.full(counts.shape, 3.0), excluded, PoissonTail(1e-6),
    ...                       np.ones(62, bool))
    [Defect(ccdnum=1, kind='cell', y=5:6, x=5:6, cells=1, counts=40, background=3.0)]
    """

    coverage = 1

    def families(self, shape) -> list:
        _check_grid_shape("shape", shape)
        return [("cell",)]

    def detect(self, counts, background, excluded, tail, live) -> list:
        from scipy import ndimage

        counts, background, excluded, tail, live = _check_search(counts, background, excluded, tail, live)

        hit = ~excluded & tail._significant(np.where(excluded, 0, counts), np.where(excluded, 0.0, background))
        found = []
        for index in np.flatnonzero(hit.reshape(hit.shape[0], -1).any(axis=1)):
            labels, _ = ndimage.label(hit[index], structure=np.ones((3, 3)))
            for label, (ys, xs) in enumerate(ndimage.find_objects(labels), 1):
                cells = labels[ys, xs] == label
                found.append(Defect(index + 1, "cell" if cells.sum() == 1 else "box", ys.start, ys.stop,
                                    xs.start, xs.stop, cells.sum(), counts[index, ys, xs][cells].sum(),
                                    background[index, ys, xs][cells].sum()))
            excluded[index] |= hit[index]
        return found


class BoxDetector:
    """Boxes of several sizes within each amplifier half, with fitted edges.

    Window shapes (cells, y x x): 1x2, 2x1, 2x2, then 2x4, 4x8, ... (square
    in pixels, as a cell is 8 x 16 pixels) up to the half's size, at a stride
    of half a window.  A significant window seeds a box whose four edges are
    moved (each within a window's size) to the maximum likelihood ratio; the
    rings of cells around it join while significant at ``ring_p``.
    Detections that reveal more (a glow's fainter outskirts once its core is
    masked) are looked for again, up to ``max_rounds`` times.

    With ``min_shape``/``min_fit``/``trim`` it finds only extended glows:
    windows at least ``min_shape``, fitted boxes at least ``min_fit``, whose
    excess stays significant (at ``trim_p``) without their brightest
    ``trim`` fraction of rows and columns -- two hot columns do not make a glow.

    Examples
    --------
    >>> rng = np.random.default_rng(4)
    >>> counts = rng.poisson(3.0, size=(62, 64, 64))
    >>> counts[3, 20:30, 10:20] += rng.poisson(4.0, (10, 10))     # a hot spot
    >>> excluded = np.zeros(counts.shape, bool)
    >>> found = BoxDetector().detect(counts, np.full(counts.shape, 3.0), excluded, PoissonTail(1e-7),
    ...                              np.ones(62, bool))
    >>> [(d.ccdnum, d.kind) for d in found]
    [(4, 'box')]
    >>> bool(excluded[3, 21:29, 11:19].all()), int(excluded[3].sum()) <= 144
    (True, True)
    """

    coverage = 4

    def __init__(self, min_shape=(1, 1), min_fit=(1, 1), trim: float = 0.0, trim_p: float = 1e-3,
                 ring_p: float = 3e-3, max_rings: int = 4, max_rounds: int = 6):
        self.min_shape = _check_int_tuple("min_shape", min_shape, 2)
        self.min_fit = _check_int_tuple("min_fit", min_fit, 2)
        self.trim = _check_at_least("trim", trim)
        if self.trim >= 0.5:
            raise BadInputError(f"trim={self.trim!r}: must be less than 0.5 (a fraction from each side)")
        self.trim_tail = PoissonTail(_check_probability("trim_p", trim_p))
        self.ring_tail = PoissonTail(_check_probability("ring_p", ring_p))
        self.max_rings = _check_int("max_rings", max_rings, lo=0)
        self.max_rounds = _check_int("max_rounds", max_rounds, lo=1)

    def shapes(self, shape) -> list:
        """Window shapes (cells along y, x) on a (62, ny, nx) grid."""
        shape = _check_grid_shape("shape", shape)
        ny, half = shape[1], shape[2] // 2
        shapes, hy = [(1, 2), (2, 1), (2, 2)], 2
        while hy <= ny and 2 * hy <= half:
            shapes.append((hy, 2 * hy))
            hy *= 2
        return [(y, x) for y, x in shapes if y <= ny and x <= half
                and y >= self.min_shape[0] and x >= self.min_shape[1]]

    def families(self, shape) -> list:
        return [("box",) + s for s in self.shapes(shape)]

    def detect(self, counts, background, excluded, tail, live) -> list:
        counts, background, excluded, tail, live = _check_search(counts, background, excluded, tail, live)
        half = counts.shape[2] // 2
        shapes = self.shapes(counts.shape)
        found = []
        todo = np.flatnonzero(live)
        for _ in range(self.max_rounds):
            new = []
            for h in (0, 1):
                xs = slice(h * half, (h + 1) * half)
                seeds = self._screen(counts[todo, :, xs], background[todo, :, xs], excluded[todo, :, xs],
                                     tail, shapes)
                for i in sorted(seeds):  # a loop over CCDs with candidate boxes
                    index = todo[i]
                    new += self._fit_half(counts[index, :, xs], background[index, :, xs],
                                          excluded[index, :, xs], tail, index, h * half, seeds[i])
            found += new
            todo = np.array(sorted({d.ccdnum - 1 for d in new}), dtype=np.int64)
            if not todo.size:
                break
        return found

    @staticmethod
    def _sums(n, b, ex, int_type=np.int64, float_type=np.float64):
        """Summed-area tables of counts and background, excluded cells left out."""
        shape = n.shape[:-2] + (n.shape[-2] + 1, n.shape[-1] + 1)
        S, T = np.zeros(shape, int_type), np.zeros(shape, float_type)
        S[..., 1:, 1:] = np.where(ex, 0, n).cumsum(-2, dtype=int_type).cumsum(-1, dtype=int_type)
        T[..., 1:, 1:] = np.where(ex, 0.0, b).cumsum(-2, dtype=float_type).cumsum(-1, dtype=float_type)
        return S, T

    @staticmethod
    def _box(S, y0, y1, x0, x1):
        return S[..., y1, x1] - S[..., y0, x1] - S[..., y1, x0] + S[..., y0, x0]

    def _screen(self, n, b, ex, tail, shapes) -> dict:
        """Significant windows of a stack of CCD halves: {stack index: [(-lr, y0, y1, x0, x1)]}.

        Windows of one stride are summed on the grid of that stride (cells
        summed in blocks first), so large windows cost little.
        """
        k, ny, nx = n.shape
        n = np.where(ex, 0, n)
        b = np.where(ex, 0.0, b)
        by_stride = {}
        for hy, hx in shapes:
            by_stride.setdefault((max(1, hy // 2), max(1, hx // 2)), []).append((hy, hx))
        seeds = {}
        for (sy, sx), group in by_stride.items():
            if ny % sy or nx % sx or any(hy % sy or hx % sx for hy, hx in group):
                sy = sx = 1  # an odd grid: windows at every cell
            blocks_n = n.reshape(k, ny // sy, sy, nx // sx, sx).sum(axis=(2, 4), dtype=np.int32)
            blocks_b = b.reshape(k, ny // sy, sy, nx // sx, sx).sum(axis=(2, 4), dtype=np.float32)
            S, T = self._sums(blocks_n, blocks_b, np.zeros(blocks_n.shape, bool), np.int32, np.float32)
            for hy, hx in group:
                ry, rx = hy // sy, hx // sx
                N = S[:, ry:, rx:] - S[:, :-ry, rx:] - S[:, ry:, :-rx] + S[:, :-ry, :-rx]
                B = T[:, ry:, rx:] - T[:, :-ry, rx:] - T[:, ry:, :-rx] + T[:, :-ry, :-rx]
                hit = tail._significant(N, B)
                if hit.any():
                    i, y, x = np.nonzero(hit)
                    lr = _excess_lr(N[i, y, x], B[i, y, x])
                    for i1, v, y0, x0 in zip(i.tolist(), lr.tolist(), (y * sy).tolist(), (x * sx).tolist()):
                        seeds.setdefault(i1, []).append((-v, y0, y0 + hy, x0, x0 + hx))
        return seeds

    def _fit_half(self, n, b, ex, tail, index, x_offset, seeds) -> list:
        S, T = self._sums(n, b, ex)
        found, rejected = [], []
        for _, y0, y1, x0, x1 in sorted(seeds):
            if any(y0 < r[1] and r[0] < y1 and x0 < r[3] and r[2] < x1 for r in rejected):
                continue
            if not tail._significant1(self._box(S, y0, y1, x0, x1), self._box(T, y0, y1, x0, x1)):
                continue  # an earlier box took its excess
            fy0, fy1, fx0, fx1 = self._fit_box(S, T, y0, y1, x0, x1)
            if (fy1 - fy0 < self.min_fit[0] or fx1 - fx0 < self.min_fit[1]
                    or (self.trim and not self._extended(n[fy0:fy1, fx0:fx1], b[fy0:fy1, fx0:fx1],
                                                         ex[fy0:fy1, fx0:fx1]))):
                rejected.append((min(y0, fy0), max(y1, fy1), min(x0, fx0), max(x1, fx1)))
                continue
            total_n, total_b = self._box(S, fy0, fy1, fx0, fx1), self._box(T, fy0, fy1, fx0, fx1)
            cells = int((~ex[fy0:fy1, fx0:fx1]).sum())
            ex[fy0:fy1, fx0:fx1] = True
            (fy0, fy1, fx0, fx1), ring_n, ring_b, ring_cells = _grow_rings(
                n, b, ex, (fy0, fy1, fx0, fx1), self.ring_tail, self.max_rings)
            found.append(Defect(index + 1, "box", fy0, fy1, fx0 + x_offset, fx1 + x_offset, cells + ring_cells,
                                total_n + ring_n, total_b + ring_b))
            S, T = self._sums(n, b, ex)
        return found

    def _extended(self, n, b, ex) -> bool:
        """Whether a box's excess is spread: significant without its brightest rows and columns."""
        n = np.where(ex, 0, n).astype(np.float64)
        b = np.where(ex, 0.0, b)
        rows, cols = np.ones(n.shape[0], bool), np.ones(n.shape[1], bool)
        rows[np.argsort(n.sum(1) - b.sum(1))[n.shape[0] - int(np.ceil(self.trim * n.shape[0])):]] = False
        cols[np.argsort(n.sum(0) - b.sum(0))[n.shape[1] - int(np.ceil(self.trim * n.shape[1])):]] = False
        return self.trim_tail._significant1(n[rows][:, cols].sum(), b[rows][:, cols].sum())

    def _fit_box(self, S, T, y0, y1, x0, x1):
        """Move each edge, within a window's size, to the maximum likelihood ratio."""
        ny, nx = S.shape[0] - 1, S.shape[1] - 1
        span_y, span_x = max(2, y1 - y0), max(2, x1 - x0)

        def value(a, b_, c, d):
            return _excess_lr(self._box(S, a, b_, c, d), self._box(T, a, b_, c, d))

        best = float(value(y0, y1, x0, x1))
        for _ in range(8):
            moved = False
            for edge in range(4):
                if edge == 0:
                    r = np.arange(max(0, y0 - span_y), y1)
                    v = value(r, y1, x0, x1)
                elif edge == 1:
                    r = np.arange(y0 + 1, min(ny, y1 + span_y) + 1)
                    v = value(y0, r, x0, x1)
                elif edge == 2:
                    r = np.arange(max(0, x0 - span_x), x1)
                    v = value(y0, y1, r, x1)
                else:
                    r = np.arange(x0 + 1, min(nx, x1 + span_x) + 1)
                    v = value(y0, y1, x0, r)
                k = int(np.argmax(v))
                if v[k] > best + 1e-9:
                    best, moved = float(v[k]), True
                    y0, y1, x0, x1 = [(int(r[k]), y1, x0, x1), (y0, int(r[k]), x0, x1),
                                      (y0, y1, int(r[k]), x1), (y0, y1, x0, int(r[k]))][edge]
            if not moved:
                break
        return y0, y1, x0, x1


def default_detectors() -> list:
    """The detectors of the multiscale method, in the order they run.

    Extended glows first (wide boxes, spread excess only), then column and row
    segments, single cells, and boxes of every size.
    """
    return [BoxDetector(min_shape=(8, 16), min_fit=(4, 4), trim=0.25, max_rings=16), LineDetector(),
            CellDetector(), BoxDetector(max_rings=8)]


class MultiscaleResult:
    """What `multiscale_mask` returns: ``mask``, ``background`` (the model) and ``defects``."""

    def __init__(self, mask, background, defects):
        mask = _numeric_array("mask", mask, "b")
        if mask.ndim != 3:
            raise BadInputError(f"mask: {_describe_value(mask)}, expected shape ({N_CCD}, ny, nx)")
        background = _numeric_array("background", background)
        if background.shape != mask.shape:
            raise BadInputError(f"background: {_describe_value(background)}, expected shape {mask.shape}")
        if isinstance(defects, (str, bytes)) or not hasattr(defects, "__iter__"):
            raise BadInputError(f"defects={_describe_value(defects)}: must be a list of Defect")
        defects = list(defects)
        if not all(isinstance(d, Defect) for d in defects):
            raise BadInputError("defects: must be a list of Defect")
        self.mask, self.background, self.defects = mask, background, defects


def multiscale_mask(counts, *, fp_rate: float = DEFAULT_FP_RATE, live=None, known=None,
                    background=None, detectors=None, margin: float = 30.0, ring_p: float = 3e-3,
                    max_rings: int = 4, compact=(8, 16), wing_ratio: float = 0.1) -> MultiscaleResult:
    """Mask the cells of the significant structures of a (62, ny, nx) count cube.

    The background estimator (default `AmpBackground`) models every live CCD;
    the detectors (default `default_detectors`) run in turn, each masking what
    it finds so the next ones see the rest; the `SignificanceRule` gives each
    its per-window test.  Compact structures (at most ``compact`` cells along
    y and x: hot spots) then take in the rings of cells around them whose
    excess is significant at ``ring_p`` (a conditional test, a few per
    structure).  Last, a round Gaussian blob is fitted to each compact
    structure and each wide box (glows) within an amplifier half that is
    significant at 6 sigma or more, and its wings join: the cells where it
    predicts at least ``wing_ratio`` times the background, when their counts
    favour the blob over the background alone (`_grow_wings`).  Faint wings
    that no window test can see are masked where the blob's bright core says
    they are.

    Parameters
    ----------
    counts : array_like of int, shape (62, ny, nx)
    fp_rate : float
        False-positive probability per cell of a defect-free CCD.
    live : array_like of bool, shape (62,), optional
        CCDs to model and search (default: those with transients).
    known : array_like of bool, same shape as counts, optional
        Cells masked beforehand (e.g. CCD 31's right half): excluded from
        the background and the search, and masked.
    background, detectors
        A background estimator and a list of detectors (see the section
        comment for their interfaces).
    margin : float
        See `SignificanceRule`.
    ring_p, max_rings, compact
        The growth of compact structures.
    wing_ratio : float
        The excess over the background, as a fraction of it, down to which
        the wings of a fitted blob are masked (0: no wings).

    Returns
    -------
    MultiscaleResult
        ``mask`` (bool, shape of counts), ``background`` (expected counts),
        ``defects`` (list of `Defect`).

    Examples
    --------
    >>> rng = np.random.default_rng(5)
    >>> counts = rng.poisson(3.0, size=(62, 256, 256))
    >>> counts[9, 100:180, 40] += rng.poisson(2.0, 80)             # a warm column, 1.7x
    >>> result = multiscale_mask(counts)
    >>> [(d.ccdnum, d.kind, d.x0) for d in result.defects]
    [(10, 'column', 40)]
    >>> int(result.mask.sum()) <= 90
    True
    """
    counts = _check_cube(counts)
    fp_rate = _check_fp_rate(fp_rate)
    margin = _check_at_least("margin", margin, 0.0, strict=True)
    ring_p = _check_probability("ring_p", ring_p)
    max_rings = _check_int("max_rings", max_rings, lo=0)
    compact = _check_int_tuple("compact", compact, 2, lo=0)
    wing_ratio = _check_at_least("wing_ratio", wing_ratio, 0.0)
    if background is not None and not callable(getattr(background, "model", None)):
        raise BadInputError(f"background={_describe_value(background)}: must be a background estimator "
                            f"(with a model method)")
    detectors = default_detectors() if detectors is None else _check_detectors(detectors)
    if counts.max() < 2 ** 31:  # half the memory traffic of int64
        counts = counts.astype(np.int32, copy=False)
    n_ccd, ny, nx = counts.shape
    live = counts.reshape(n_ccd, -1).sum(axis=1) > 0 if live is None else _check_live(live)
    excluded = (np.zeros(counts.shape, bool) if known is None
                else np.array(_check_cells("known", known, counts.shape, "biu"), bool))
    excluded[~live] = True
    estimator = background if background is not None else AmpBackground()
    model = estimator.model(counts, excluded, live)
    if not isinstance(model, np.ndarray) or model.shape != counts.shape:
        raise BadInputError(f"background: its model is {_describe_value(model)}, expected shape {counts.shape}")
    rule = SignificanceRule.for_detectors(detectors, counts.shape, fp_rate, margin)
    defects = []
    for detector in detectors:
        defects += detector.detect(counts, model, excluded, rule.tail(detector), live)
    ring_tail, half, cell_px = PoissonTail(ring_p), nx // 2, (CCD_NX / nx, CCD_NY / ny)
    for d in defects:  # hot spots and glows take in their surroundings
        h0 = 0 if d.x0 < half else half
        if d.x1 > h0 + half:
            continue
        is_compact = d.y1 - d.y0 <= compact[0] and d.x1 - d.x0 <= compact[1]
        is_glow = d.kind == "box" and d.x1 - d.x0 < half  # a wide box, not a whole amplifier
        if not (is_compact or is_glow):
            continue
        n, b, ex = (cube[d.ccdnum - 1, :, h0:h0 + half] for cube in (counts, model, excluded))
        box, grown_n, grown_b, grown_cells = (d.y0, d.y1, d.x0 - h0, d.x1 - h0), 0.0, 0.0, 0
        if is_compact:
            box, grown_n, grown_b, grown_cells = _grow_rings(n, b, ex, box, ring_tail, max_rings)
        if wing_ratio and _excess_lr(d.counts + grown_n, d.background + grown_b) >= _WING_MIN_SIGMA ** 2 / 2:
            box, wing_n, wing_b, wing_cells = _grow_wings(n, b, ex, box, cell_px, wing_ratio)
            grown_n, grown_b, grown_cells = grown_n + wing_n, grown_b + wing_b, grown_cells + wing_cells
        if grown_cells:
            d.y0, d.y1, d.x0, d.x1 = box[0], box[1], box[2] + h0, box[3] + h0
            d.counts, d.background, d.cells = d.counts + grown_n, d.background + grown_b, d.cells + grown_cells
            d.kind = "box"
    return MultiscaleResult(excluded, model, defects)


def _line_kind(kind, y0, y1, x0, x1, ny, nx):
    """Kind of a structure from its cell box: lines along a CCD edge are edges."""
    if kind in ("column", "row"):
        along_edge = (x0 == 0 or x1 == nx) if kind == "column" else (y0 == 0 or y1 == ny)
        return "edge" if along_edge else kind
    return kind


def _shape_kind(y0, y1, x0, x1, ny, nx):
    """Kind of a set of masked cells (DES rule) from its bounding box."""
    height, width = y1 - y0, x1 - x0
    if height == width == 1:
        return "cell"
    if width == 1:
        return _line_kind("column", y0, y1, x0, x1, ny, nx)
    if height == 1:
        return _line_kind("row", y0, y1, x0, x1, ny, nx)
    return "box"


def _defect_table(epoch_mask):
    """The `EpochMask.defects` table of a mask (either method)."""
    from astropy.table import Table
    from scipy import ndimage

    counts, mask = epoch_mask.counts, epoch_mask.mask
    n_ccd, ny, nx = counts.shape
    half = nx // 2
    rows = []  # (ccdnum, kind, y0, y1, x0, x1, cells, counts, background)
    for index in range(n_ccd):  # a loop over CCDs, then over their structures
        ccdnum = index + 1
        if not epoch_mask.live[index]:
            rows.append((ccdnum, "ccd", 0, ny, 0, nx, ny * nx, 0, np.nan))
            continue
        known = np.zeros((ny, nx), bool)
        if ccdnum == HALF_MASKED_CCD:
            known[:, half:] = True
            expected = (epoch_mask.background[index, :, half:].sum() if epoch_mask.background is not None
                        else (epoch_mask.mode[index] + 1) * ny * half)
            rows.append((ccdnum, "amp", 0, ny, half, nx, ny * half, counts[index, :, half:].sum(), expected))
        if epoch_mask.method == "multiscale":
            continue
        labels, _ = ndimage.label(mask[index] & ~known, structure=np.ones((3, 3)))
        for label, (ys, xs) in enumerate(ndimage.find_objects(labels), 1):
            cells = labels[ys, xs] == label
            rows.append((ccdnum, _shape_kind(ys.start, ys.stop, xs.start, xs.stop, ny, nx), ys.start, ys.stop,
                         xs.start, xs.stop, int(cells.sum()), counts[index, ys, xs][cells].sum(),
                         (epoch_mask.mode[index] + 1) * cells.sum()))
    for d in epoch_mask._structures:
        rows.append((d.ccdnum, _line_kind(d.kind, d.y0, d.y1, d.x0, d.x1, ny, nx), d.y0, d.y1, d.x0, d.x1,
                     d.cells, d.counts, d.background))
    rows.sort(key=lambda row: (row[0], row[2], row[4]))
    cell_ny, cell_nx = epoch_mask.cell_size
    columns = list(zip(*rows)) if rows else [[]] * 9
    ccdnum = np.array(columns[0], dtype=np.int16)
    y0, y1, x0, x1 = (np.array(c, dtype=np.int32) for c in columns[2:6])
    observed = np.array(columns[7], dtype=np.float64)
    expected = np.array(columns[8], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        significance = np.where(np.isfinite(expected), lr_significance(observed, np.nan_to_num(expected)), np.nan)
    table = Table({
        "EPOCH": np.array([epoch_mask.epoch or ""] * len(rows), dtype=str),
        "CCDNUM": ccdnum,
        "DETPOS": np.array([DETPOS[int(c)] for c in ccdnum], dtype=str),
        "KIND": np.array(columns[1], dtype=str),
        "X0": x0 * cell_nx + 1, "X1": x1 * cell_nx, "Y0": y0 * cell_ny + 1, "Y1": y1 * cell_ny,
        "CELLS": np.array(columns[6], dtype=np.int32),
        "COUNTS": observed.astype(np.int64),
        "BACKGROUND": expected,
        "SIGNIFICANCE": significance,
    }, meta={"METHOD": epoch_mask.method, "EPOCH": epoch_mask.epoch or "", "FP_RATE": epoch_mask.fp_rate,
             "X_BIN": epoch_mask.x_bin, "Y_BIN": epoch_mask.y_bin, "CELL_NX": cell_nx, "CELL_NY": cell_ny,
             "DEMO": epoch_mask.demo})
    for name, unit, text in (("X0", "pix", "first pixel column of the box (FITS, 1-indexed)"),
                             ("X1", "pix", "last pixel column of the box"),
                             ("Y0", "pix", "first pixel row of the box"), ("Y1", "pix", "last pixel row of the box"),
                             ("CELLS", None, "cells masked"), ("COUNTS", None, "transients in the masked cells"),
                             ("BACKGROUND", None, "expected astrophysical transients in them"),
                             ("SIGNIFICANCE", None, "likelihood-ratio significance of the excess (sigma)")):
        table[name].description = text
        if unit:
            table[name].unit = unit
    return table


_DEFECT_COLUMNS = ("CCDNUM", "KIND", "X0", "X1", "Y0", "Y1")


def _check_defect_table(table, name: str = "table", needed=()):
    """A defect table: an astropy Table with the ``needed`` columns."""
    from astropy.table import Table

    if not isinstance(table, Table):
        raise BadInputError(f"{name}={_describe_value(table)}: must be a defect table (an astropy Table)")
    missing = [column for column in needed if column not in table.colnames]
    if missing:
        raise BadInputError(f"{name}: not a defect table, no column {', '.join(missing)}")
    if "CCDNUM" in needed and len(table):
        ccdnum = np.asarray(table["CCDNUM"])
        if ccdnum.dtype.kind not in "iu" or ccdnum.min() < 1 or ccdnum.max() > N_CCD:
            raise BadInputError(f"{name}: CCDNUM must be integers in 1..{N_CCD}")
    return table


def _defect_format(path: str) -> str:
    """astropy format of a defect-table file, from its suffix (ECSV or FITS)."""
    name = path.lower()
    if name.endswith(".ecsv"):
        return "ascii.ecsv"
    if name.endswith((".fits", ".fit", ".fits.gz", ".fit.gz")):
        return "fits"
    raise BadInputError(f"{path}: a defect table is written as ECSV (.ecsv) or FITS (.fits, .fits.gz)")


def write_defects(table, path: str, *, overwrite: bool = False, inputs=()) -> str:
    """Write a defect table (`EpochMask.defects`, `defect_history`) as ECSV or FITS, atomically.

    The format follows the suffix: ``.ecsv``, or ``.fits``/``.fit`` (optionally
    ``.gz``).  Returns ``path``.

    Examples
    --------
    >>> mask = EpochMask(np.random.default_rng(0).poisson(3, (62, 64, 64)), epoch="Y6",
    ...                  method="multiscale")
    >>> write_defects(mask.defects, "y6_defects.ecsv")
    'y6_defects.ecsv'
    """
    _check_defect_table(table)
    path = _check_path("path", path)
    table_format = _defect_format(path)
    with atomic_output(path, overwrite=overwrite, inputs=inputs) as tmp:
        if table_format == "fits" and path.lower().endswith(".gz"):
            import gzip
            import io

            buffer = io.BytesIO()
            table.write(buffer, format="fits")
            with gzip.open(tmp, "wb") as out:
                out.write(buffer.getvalue())
        else:
            table.write(tmp, format=table_format, overwrite=True)
    log.info("wrote %s (%d defects)", path, len(table))
    return path


#: DS9 colours of the defect kinds in region files.
_REGION_COLORS = {"cell": "red", "column": "magenta", "row": "cyan", "edge": "yellow", "box": "orange",
                  "amp": "white", "ccd": "white"}


def write_regions(table, directory: str, *, overwrite: bool = False) -> list:
    """Write DS9 region files of a defect table, one per CCD, in CCD pixel coordinates.

    ``DIRECTORY/EPOCH_CCDNN_DETPOS.reg`` (``CCDNN_DETPOS.reg`` without an
    epoch): one box per defect (its pixel box X0..X1, Y0..Y1), coloured by
    KIND and labelled with the kind and significance, so the defects can be
    overlaid on a single-epoch image of that CCD (DS9 image coordinates are
    the FITS 1-indexed pixels of the table).  Uses astropy ``regions``.

    Returns
    -------
    list of str
        The files written.

    Examples
    --------
    >>> counts = np.random.default_rng(0).poisson(3, (62, 64, 64)); counts[4, 10:20, 30] += 30
    >>> files = write_regions(EpochMask(counts, epoch="Y6", method="multiscale").defects, ".")
    >>> [os.path.basename(f) for f in files]
    ['Y6_CCD05_S26.reg', 'Y6_CCD31_S7.reg']
    """
    from regions import PixCoord, RectanglePixelRegion, Regions

    _check_defect_table(table, needed=_DEFECT_COLUMNS + ("SIGNIFICANCE",))
    directory = _check_path("directory", directory)
    overwrite = _check_flag("overwrite", overwrite)
    if not os.path.isdir(directory):
        raise BadInputError(f"--regions {directory}: not a directory")
    written = []
    for ccdnum, path in _region_files(table, directory):  # a loop over CCDs with defects
        rows = table[table["CCDNUM"] == ccdnum]
        shapes = []
        for row in rows:
            x0, x1, y0, y1 = (float(row[name]) for name in ("X0", "X1", "Y0", "Y1"))
            # regions counts pixels from 0 and writes DS9's 1-indexed image coordinates
            box = RectanglePixelRegion(center=PixCoord(x=(x0 + x1) / 2 - 1, y=(y0 + y1) / 2 - 1),
                                       width=x1 - x0 + 1, height=y1 - y0 + 1)
            significance = float(row["SIGNIFICANCE"])
            box.meta["text"] = row["KIND"] + (f" {significance:.1f}sig" if np.isfinite(significance) else "")
            box.visual["color"] = _REGION_COLORS.get(str(row["KIND"]), "green")
            shapes.append(box)
        text = Regions(shapes).serialize(format="ds9")
        with atomic_output(path, overwrite=overwrite) as tmp, open(tmp, "w") as out:
            out.write(text)
        written.append(path)
    log.info("wrote %d region files in %s", len(written), directory)
    return written


def _region_files(table, directory: str) -> list:
    """(CCDNUM, path) of the region file of each CCD with defects (see `write_regions`)."""
    files = []
    for ccdnum in np.unique(np.asarray(table["CCDNUM"])):
        rows = table[table["CCDNUM"] == ccdnum]
        epoch = str(rows["EPOCH"][0]) if "EPOCH" in rows.colnames and len(rows) else ""
        name = f"{epoch + '_' if epoch else ''}CCD{int(ccdnum):02d}_{DETPOS[int(ccdnum)]}.reg"
        files.append((ccdnum, os.path.join(directory, name)))
    return files


def defect_history(source, *, epochs=None, fp_rate: float = DEFAULT_FP_RATE, x_bin: int = 1, y_bin: int = 1,
                   floor: str = DEFAULT_FLOOR, method: str = DEFAULT_METHOD, tolerance: int = 1):
    """The survey's defect history: each defect once, with the epochs it is seen in.

    The defects of every epoch (`EpochMask.defects`) are matched on each CCD:
    two whose pixel boxes overlap or lie within ``tolerance`` cells of each
    other are the same defect (transitively).  Dead CCDs (kind ``ccd``) and
    CCD 31's half (``amp``) are grouped by themselves.

    Parameters
    ----------
    source : CountMaps, or a sequence of EpochMask or defect tables
        Count maps (masks are built for ``epochs``, default all, with the
        options), or masks / tables already made.
    epochs : sequence of str, optional
        Epochs of the count maps to use.
    fp_rate, x_bin, y_bin, floor, method
        Masking options, as for `EpochMask` (with count maps).
    tolerance : int
        Gap (cells) up to which two boxes are the same defect.

    Returns
    -------
    astropy.table.Table
        CCDNUM, DETPOS, KIND (the most frequent), X0, X1, Y0, Y1 (the union
        of the boxes), N_EPOCHS, EPOCHS (comma-separated, in order), FIRST,
        LAST, CELLS_MAX and SIGNIFICANCE_MAX.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> cubes = [rng.poisson(3, (62, 64, 64)) for _ in range(3)]
    >>> for cube in cubes[1:]:
    ...     cube[6, 10:30, 20] += 25                           # a hot column from the 2nd epoch on
    >>> masks = [EpochMask(c, epoch=e, method="multiscale") for c, e in zip(cubes, ["Y1E1", "Y1E2", "Y2E1"])]
    >>> history = defect_history(masks)
    >>> row = history[(history["CCDNUM"] == 7)][0]
    >>> str(row["KIND"]), str(row["EPOCHS"]), int(row["N_EPOCHS"])
    ('column', 'Y1E2,Y2E1', 2)
    """
    from astropy.table import Table, vstack

    tolerance = _check_int("tolerance", tolerance, lo=0)
    if isinstance(source, CountMaps):
        _check_options(fp_rate, x_bin, y_bin, floor)
        _check_method(method)
        if epochs is not None and (isinstance(epochs, str) or not hasattr(epochs, "__iter__")):
            raise BadInputError(f"epochs={_describe_value(epochs)}: must be a list of epoch names")
        names = list(source.epochs) if epochs is None else [_check_str("epochs", e) for e in epochs]
        tables = [EpochMask.from_maps(source, epoch, fp_rate=fp_rate, x_bin=x_bin, y_bin=y_bin, floor=floor,
                                      method=method).defects for epoch in names]
    else:
        if isinstance(source, (str, bytes, os.PathLike)) or not hasattr(source, "__iter__"):
            raise BadInputError(f"source={_describe_value(source)}: must be CountMaps, or a list of EpochMask "
                                f"or defect tables")
        tables = [item.defects if isinstance(item, EpochMask) else
                  _check_defect_table(item, "source", _DEFECT_COLUMNS + ("EPOCH", "CELLS", "SIGNIFICANCE"))
                  for item in source]
    tables = [t for t in tables if len(t)]
    columns = ["CCDNUM", "DETPOS", "KIND", "X0", "X1", "Y0", "Y1", "N_EPOCHS", "EPOCHS", "FIRST", "LAST",
               "CELLS_MAX", "SIGNIFICANCE_MAX"]
    if not tables:
        return Table(names=columns, dtype=[np.int16, str, str] + [np.int32] * 5 + [str, str, str, np.int32,
                                                                                  np.float64])
    order = {}
    for table in tables:  # epochs in the order given
        for epoch in table["EPOCH"]:
            order.setdefault(str(epoch), len(order))
    cell_nx, cell_ny = int(tables[0].meta.get("CELL_NX", CCD_NX // MAP_NX)), int(
        tables[0].meta.get("CELL_NY", CCD_NY // MAP_NY))
    all_rows = vstack(tables, metadata_conflicts="silent")
    rows_out = []
    for ccdnum in np.unique(np.asarray(all_rows["CCDNUM"])):  # a loop over CCDs, then their defects
        rows = all_rows[all_rows["CCDNUM"] == ccdnum]
        kind = np.asarray(rows["KIND"], dtype=str)
        special = np.isin(kind, ["ccd", "amp"])
        x0 = np.asarray(rows["X0"]) - tolerance * cell_nx
        x1 = np.asarray(rows["X1"]) + tolerance * cell_nx
        y0 = np.asarray(rows["Y0"]) - tolerance * cell_ny
        y1 = np.asarray(rows["Y1"]) + tolerance * cell_ny
        parent = np.arange(len(rows))

        def root(i):
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        overlap = ((x0[:, None] <= x1[None, :]) & (x0[None, :] <= x1[:, None])
                   & (y0[:, None] <= y1[None, :]) & (y0[None, :] <= y1[:, None])
                   & (special[:, None] == special[None, :])
                   & (~special[:, None] | (kind[:, None] == kind[None, :])))
        for i, j in zip(*np.nonzero(np.triu(overlap, 1))):
            parent[root(i)] = root(j)
        groups = np.array([root(i) for i in range(len(rows))])
        for group in np.unique(groups):
            members = rows[groups == group]
            seen = sorted({str(e) for e in members["EPOCH"]}, key=lambda e: order.get(e, 0))
            kinds, n_kinds = np.unique(np.asarray(members["KIND"], dtype=str), return_counts=True)
            significance = np.asarray(members["SIGNIFICANCE"], dtype=float)
            rows_out.append((int(ccdnum), DETPOS[int(ccdnum)], str(kinds[np.argmax(n_kinds)]),
                             int(members["X0"].min()), int(members["X1"].max()), int(members["Y0"].min()),
                             int(members["Y1"].max()), len(seen), ",".join(seen), seen[0], seen[-1],
                             int(members["CELLS"].max()),
                             float(np.nanmax(significance)) if np.isfinite(significance).any() else np.nan))
    rows_out.sort(key=lambda r: (r[0], r[5], r[3]))
    history = Table(rows=rows_out, names=columns)
    history.meta.update({k: tables[0].meta[k] for k in ("METHOD", "FP_RATE", "X_BIN", "Y_BIN", "CELL_NX",
                                                         "CELL_NY", "DEMO") if k in tables[0].meta})
    return history


# ---- All epochs

#: Codes of `TransientMasks.classify` (and BAD for rows that cannot be classified).
KEEP, MASKED, NO_EPOCH, BAD = 0, 1, 2, 3
#: What makes an event row bad (see `_event_values`), for messages.
_BAD_ROW = (f"CCDNUM outside 1..{N_CCD}, a NULL, NaN or off-CCD position, "
            "or a fractional EXPNUM or CCDNUM")


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
    fp_rate, x_bin, y_bin, floor, method
        As for `EpochMask`.
    keep_no_epoch : bool
        Keep (True) or mask (False, the default) events whose EXPNUM is in no
        epoch, or in an epoch with no count map.
    x_shrink, y_shrink, default
        The DES module's names of ``x_bin``, ``y_bin`` and ``keep_no_epoch``,
        accepted as aliases.

    Examples
    --------
    >>> masks = TransientMasks(data_path(DEMO_COUNTS_FILENAME))  # TransientMasks(): the real maps
    >>> masks.epoch_of([350000, 400000]).tolist()
    ['Y2E1', 'Y2E2']
    >>> # Y2E2 has no map in the demo file: its events are masked (keep_no_epoch=False)
    >>> masks.apply(expnum=[350000, 400000], ccdnum=[5, 5], x=[805.0, 805.0], y=[200.0, 200.0])
    array([False,  True])
    """

    def __init__(self, counts=None, *, epochs=None, fp_rate: float = DEFAULT_FP_RATE,
                 x_bin: int = 1, y_bin: int = 1, floor: str = DEFAULT_FLOOR,
                 method: str = DEFAULT_METHOD, keep_no_epoch: bool = False, x_shrink: int = None,
                 y_shrink: int = None, default: bool = None):
        x_bin = _alias("x_bin", x_bin, 1, "x_shrink", x_shrink)
        y_bin = _alias("y_bin", y_bin, 1, "y_shrink", y_shrink)
        keep_no_epoch = _alias("keep_no_epoch", keep_no_epoch, False, "default", default)
        _check_options(fp_rate, x_bin, y_bin, floor)
        _check_method(method)
        if not isinstance(counts, CountMaps):
            _check_path("counts", counts, optional=True)
        if epochs is not None and not hasattr(epochs, "colnames"):
            _check_path("epochs", epochs)
        self.epochs = read_epochs(epochs)
        self.maps = counts if isinstance(counts, CountMaps) else CountMaps(counts)
        #: The files these masks are made from (never to be written over).
        self.inputs = [self.maps.path]
        if epochs is None or isinstance(epochs, (str, os.PathLike)):
            self.inputs.append(os.fspath(epochs or data_path(EPOCHS_FILENAME)))
        self.options = {"fp_rate": fp_rate, "x_bin": x_bin, "y_bin": y_bin, "floor": floor,
                        "method": method}
        self.keep_no_epoch = _check_flag("keep_no_epoch", keep_no_epoch)
        self._masks = {}
        self._warned = set()
        self._lookup = None  # the epoch table as an _EpochLookup, on first use

    def provenance(self) -> list:
        """(keyword, value, comment) cards recorded in filtered tables."""
        return [
            ("TM_VERS", __version__, "filtered by transient_masks, this version"),
            ("TM_COUNT", _header_text(os.path.basename(self.maps.path)), "count-map file of the masks"),
            ("TM_FPRAT", self.options["fp_rate"], "masks: false-positive rate per cell"),
            ("TM_XBIN", self.options["x_bin"], "masks: extra binning along x"),
            ("TM_YBIN", self.options["y_bin"], "masks: extra binning along y"),
            ("TM_FLOOR", self.options["floor"], "masks: threshold floor statistic"),
            ("TM_METH", self.options["method"], "masks: method (des or multiscale)"),
            ("TM_NOEP", self.keep_no_epoch, "T = events in no epoch were kept"),
            ("DEMO", bool(self.maps.demo), "T = masks from SYNTHETIC demo counts"),
        ]

    def epoch_index(self, expnum) -> np.ndarray:
        """Row of the epoch table of each EXPNUM; -1 for none (see `epoch_index`)."""
        return self._epoch_rows(expnum).astype(np.intp, copy=False)

    def _epoch_rows(self, expnum) -> np.ndarray:
        """`epoch_index` by the table lookup (int16 for the DES table)."""
        if self._lookup is None:
            self._lookup = _EpochLookup(self.epochs["MINEXPNUM"], self.epochs["MAXEXPNUM"])
        return self._lookup(expnum)

    def epoch_of(self, expnum) -> np.ndarray:
        """Epoch name of each EXPNUM ('' for none)."""
        index = self.epoch_index(expnum)
        names = np.append(np.asarray(self.epochs["NAME"], dtype=str), "")
        return names[index]  # index -1 picks the trailing ''

    def mask_for(self, epoch: str) -> EpochMask:
        """The `EpochMask` of one epoch, built on first use."""
        _check_str("epoch", epoch)
        if epoch not in self._masks:
            self._check_exposures(epoch)
            self._masks[epoch] = EpochMask.from_maps(self.maps, epoch, **self.options)
        return self._masks[epoch]

    def _check_exposures(self, epoch):
        """Warn when the count map of an epoch covers other exposures than the epoch table's row.

        Events take their epoch from the table: maps made with another table
        (or an HDU named for the wrong epoch) would mask them with the counts
        of other exposures.  A warning, not an error: the file is still read
        as it is.
        """
        rows = np.flatnonzero(np.asarray(self.epochs["NAME"], dtype=str) == epoch)
        if not rows.size:
            return
        table = (int(self.epochs["MINEXPNUM"][rows[0]]), int(self.epochs["MAXEXPNUM"][rows[0]]))
        info = self.maps.info(epoch)
        if (info["min_exp"], info["max_exp"]) != table:
            log.warning("%s: the count map of epoch %s covers EXPNUM %d..%d, the epoch table %d..%d; "
                        "its mask is applied to the events of the table's range",
                        self.maps.path, epoch, info["min_exp"], info["max_exp"], *table)

    def classify(self, expnum, ccdnum, x, y) -> np.ndarray:
        """KEEP (0), MASKED (1) or NO_EPOCH (2) for each event.

        NO_EPOCH: the EXPNUM is in no epoch, or its epoch has no count map.
        Positions must be on the CCDs (see `EpochMask.apply`).  The four
        arguments are numbers of one shape (scalars are broadcast).
        """
        index = self._epoch_rows(expnum)
        ccdnum, x, y, shape = _position_arrays(ccdnum, x, y, expnum=index)
        index = np.broadcast_to(index, shape).ravel()
        codes = np.full(index.size, NO_EPOCH, dtype=np.uint8)
        per_epoch = np.bincount(index + 1, minlength=len(self.epochs) + 1)[1:]  # index -1: no epoch
        for row in np.flatnonzero(per_epoch):  # a loop over epochs, not events
            epoch = str(self.epochs["NAME"][row])
            if epoch not in self.maps:
                if epoch not in self._warned:
                    log.warning("%s: no count map for epoch %s; its events count as in no epoch",
                                self.maps.path, epoch)
                    self._warned.add(epoch)
                continue
            mask = self.mask_for(epoch)
            if per_epoch[row] == index.size:  # every event in this epoch (sorted catalogs): no selection
                codes[:] = mask._masked_cells(mask.cell_index(ccdnum, x, y))
            else:
                rows = np.flatnonzero(index == row)
                codes[rows] = mask._masked_cells(mask.cell_index(ccdnum[rows], x[rows], y[rows]), rows)
        return codes.reshape(shape)

    def apply(self, expnum, ccdnum, x, y) -> np.ndarray:
        """Whether each event is masked (events in no epoch: see ``keep_no_epoch``)."""
        codes = self.classify(expnum, ccdnum, x, y)
        return (codes == MASKED) | ((codes == NO_EPOCH) & (not self.keep_no_epoch))


# ---- Filtering event tables

#: Fallback position columns, tried in order when the requested ones are absent.
_FALLBACK_XY = [("X_IMAGE", "Y_IMAGE"), ("X", "Y")]
_FITS_SUFFIXES = (".fits", ".fit", ".fts")
#: Event-table formats (astropy's names) by file extension; --format overrides.
TABLE_SUFFIXES = {
    **{suffix + gz: "fits" for suffix in _FITS_SUFFIXES for gz in ("", ".gz")},
    ".parquet": "parquet", ".parq": "parquet", ".pq": "parquet",
    ".ecsv": "ascii.ecsv", ".csv": "ascii.csv", ".h5": "hdf5", ".hdf5": "hdf5",
    ".vot": "votable", ".xml": "votable", ".txt": "ascii", ".dat": "ascii",
}


def table_format_of(path: str, table_format: str = None) -> str:
    """The astropy format of an event table: ``table_format`` if given, else by extension.

    Raises
    ------
    BadInputError
        For a format astropy does not know, or an extension without a format
        (one line, not astropy's table of formats).

    Examples
    --------
    >>> table_format_of("events.fits.gz"), table_format_of("events.pq"), table_format_of("x.dat", "ascii.csv")
    ('fits', 'parquet', 'ascii.csv')
    """
    _check_path("path", path)
    _check_str("table_format", table_format, optional=True)
    if table_format:
        from astropy.io import registry
        from astropy.table import Table

        known = set(map(str, registry.get_formats(Table)["Format"]))
        if table_format not in known:
            raise BadInputError(f"--format {table_format!r}: not a table format astropy knows "
                                f"(e.g. fits, parquet, ascii.ecsv, ascii.csv, hdf5, votable)")
        return table_format
    by_extension = _extension_format(path)
    if by_extension is not None:
        return by_extension
    raise BadInputError(f"{path}: unknown table format of extension {_suffix(os.path.basename(path))!r} "
                        f"(use {', '.join(sorted(set(TABLE_SUFFIXES)))}, or --format)")


def _extension_format(path):
    """The table format `TABLE_SUFFIXES` gives the extension of ``path``, or None."""
    lower = os.fspath(path).lower()
    return next((TABLE_SUFFIXES[suffix] for suffix in sorted(TABLE_SUFFIXES, key=len, reverse=True)
                 if lower.endswith(suffix)), None)


def _output_format(path, table_format=None):
    """The format of an output table: ``table_format`` (the input's, as --format gives it)
    unless the output's extension names another one (``-o out.parquet``)."""
    by_extension = _extension_format(path)
    if table_format is None or by_extension is None:
        return table_format or by_extension
    if by_extension == table_format or (by_extension == "ascii" and table_format.startswith("ascii")):
        return table_format  # .txt and .dat hold any ASCII table
    return by_extension


def _read_table(path: str, fmt: str, names=()):
    """Read a whole table with astropy; returns (table, read options). One-line errors.

    In a text table, a repeat of a column of ``names`` (the event columns) is an
    error: astropy's readers rename a repeated column NAME_1, which would leave
    the choice between the two silent (FITS and Parquet readers refuse repeats).
    """
    from astropy.table import Table

    read_options = {"format": fmt}
    if fmt == "hdf5":
        read_options["path"] = _first_hdf5_table(path)
    if fmt.startswith("ascii"):
        with open(path, "rb") as stream:
            if stream.read(3) == b"\xef\xbb\xbf":  # a UTF-8 byte-order mark (spreadsheets write one)
                read_options["encoding"] = "utf-8-sig"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", category=_astropy_warning())  # units, meta: not errors here
        try:
            table = Table.read(path, **read_options)
        except Exception as exc:  # astropy and its readers raise many types for unreadable files
            raise BadInputError(f"{path}: cannot read as a table ({fmt}: {_one_line(exc)})") from None
    if any("multiple tables are present" in str(warning.message) for warning in caught):
        log.warning("%s: holds more than one table; only the first is read (one table a file)", path)
    if fmt.startswith("ascii"):
        for name in names:
            repeats = [other for other in table.colnames if re.fullmatch(re.escape(name) + r"_\d+", other)]
            if name in table.colnames and repeats:
                raise BadInputError(f"{path}: column {name!r} appears {len(repeats) + 1} times "
                                    f"(astropy reads the repeats as {', '.join(repeats)}); which one is meant?")
    return table, read_options


def _astropy_warning():
    from astropy.utils.exceptions import AstropyWarning

    return AstropyWarning


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
        codes = _numeric_array("codes", codes, kinds="iu")
        kept = _numeric_array("kept", kept, kinds="b")
        _same_shape(codes=codes, kept=kept)
        row_offset = _check_int("row_offset", row_offset, lo=0)
        if codes.size and (codes.min() < KEEP or codes.max() > BAD):
            raise BadInputError(f"codes: must be KEEP, MASKED, NO_EPOCH or BAD ({KEEP}..{BAD})")
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
                f"{source}: {self.bad} bad row(s) ({_BAD_ROW}) at row(s) {shown} (0-based); use --drop_bad to drop them"
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
    if isinstance(colnames, (str, bytes)) or not hasattr(colnames, "__iter__"):
        raise BadInputError(f"colnames={_describe_value(colnames)}: must be a list of column names")
    colnames = list(colnames)
    for role, name in (("expnum", expnum_col), ("ccdnum", ccdnum_col), ("x", x_col), ("y", y_col)):
        _check_str(f"{role}_col", name)
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
        if colnames.count(name) > 1:  # (a pandas or Dask frame can repeat a name)
            raise BadInputError(f"{source}: column {name!r} appears {colnames.count(name)} times; which one is meant?")
    return expnum_col, ccdnum_col, x_col, y_col


#: The four event columns, in the order the readers yield them.
_EVENT_ROLES = ("expnum", "ccdnum", "x", "y")


def _event_values(columns, names, source="table"):
    """Apply the event-column rule to a block of the four event columns.

    The one rule of every mode that reads events (`filter_table`,
    `filter_file`, `gather_data`):

    - each column must hold numbers: a column of strings, booleans or any other
      type is an error (`BadInputError` naming the column), whatever the rows;
    - EXPNUM and CCDNUM may be stored as any integer type (also unsigned, such
      as uint64) or as floats holding whole numbers; a fractional, infinite or
      NaN value, or one outside the int64 range, makes its row *bad*;
    - x and y may be any integer or float type;
    - a masked or NULL entry (FITS TNULL, Parquet null, astropy masked value) in
      any of the four columns makes its row bad.

    Bad rows are then treated alike everywhere: ``--input`` stops naming them
    (``--drop_bad`` drops them), ``--gather`` skips and counts them, together
    with rows whose CCDNUM is outside 1..62 or whose position is off the CCD.

    Parameters
    ----------
    columns : sequence of 4 array_like
        EXPNUM, CCDNUM, x, y (numpy or masked arrays).
    names : sequence of 4 str
        The column names, for messages.
    source : str
        The table, for messages.

    Returns
    -------
    (expnum, ccdnum, x, y, bad)
        Plain arrays (integer columns keep their type, but uint64 becomes
        int64), and a bool array flagging the bad rows, or None when there are
        none.

    Examples
    --------
    >>> expnum, ccdnum, x, y, bad = _event_values(
    ...     [np.array([5, 6], dtype=np.uint64), np.array([3.0, 2.5]), [1.0, 2.0], [1.0, 2.0]],
    ...     ["EXPNUM", "CCDNUM", "X", "Y"])
    >>> expnum.dtype.name, bad.tolist()
    ('int64', [False, True])
    """
    values, bad = [], None
    for role, name, column in zip(_EVENT_ROLES, names, columns):
        data = np.ma.getdata(column)
        data = data if isinstance(data, np.ndarray) else np.asarray(data)
        null = np.ma.getmaskarray(column) if np.ma.isMaskedArray(column) else None
        data = _unitless(data, f"{source}: column {name!r}")
        if data.ndim != 1:
            raise BadInputError(f"{source}: column {name!r} holds arrays, expected one value per row")
        kind = data.dtype.kind
        if kind not in "iuf":
            raise BadInputError(f"{source}: column {name!r} holds {_type_name(data.dtype)} values, "
                                f"expected numbers (see --{role}_col)")
        row_bad = null.copy() if null is not None and null.any() else None
        if role in ("expnum", "ccdnum") and (kind == "f" or data.dtype == np.uint64):
            if kind == "f":
                data = data.astype(np.float64, copy=False)  # float16 cannot hold 2**62
                with np.errstate(invalid="ignore"):
                    usable = (data == np.floor(data)) & (np.abs(data) < 2.0**62)  # NaN, inf fail
            else:
                usable = data <= np.iinfo(np.int64).max
            data = np.where(usable, data, 0).astype(np.int64)
            if not usable.all():
                row_bad = ~usable if row_bad is None else row_bad | ~usable
        if row_bad is not None:
            bad = row_bad if bad is None else bad | row_bad
        values.append(data)
    if len({value.shape for value in values}) != 1:
        raise BadInputError(f"{source}: the columns {', '.join(names)} differ in length")
    return (*values, bad)


def _type_name(dtype) -> str:
    """A reader's name of a column type: 'string', 'boolean', 'object'..."""
    return {"U": "string", "S": "string", "b": "boolean", "O": "object (mixed or text)",
            "c": "complex", "M": "date", "m": "time-interval", "V": "structured"}.get(dtype.kind, str(dtype))


def _classify_rows(masks, expnum, ccdnum, x, y, bad=None):
    """`TransientMasks.classify` codes for a block of rows, BAD for unusable rows.

    Unusable: flagged in ``bad`` (see `_event_values`), CCDNUM outside 1..62,
    or a NaN or off-CCD position.
    """
    good = ((ccdnum >= 1) & (ccdnum <= N_CCD) & (x >= 0.5) & (x < CCD_NX + 0.5)
            & (y >= 0.5) & (y < CCD_NY + 0.5))  # NaN fails every comparison
    if bad is not None:
        good &= ~bad
    if good.all():  # the usual case: no copies
        return masks.classify(expnum, ccdnum, x, y)
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
        Drop bad rows (see `_event_values`: CCDNUM outside 1..62, a NULL,
        NaN or off-CCD position, a fractional EXPNUM or CCDNUM)
        (default: raise `BadInputError` naming them).
    source : str
        Name of the table in messages.

    Returns
    -------
    (astropy.table.Table, FilterCounts)
        The kept rows with every column, unit and the metadata; the counts.

    Raises
    ------
    BadInputError
        For a missing column, a column that does not hold one number per
        row, or (without ``drop_bad``) bad rows.
    """
    if not hasattr(table, "colnames") or not hasattr(table, "__getitem__"):
        raise BadInputError(f"table={_describe_value(table)}: must be an astropy Table")
    if not isinstance(masks, TransientMasks):
        raise BadInputError(f"masks={_describe_value(masks)}: must be a TransientMasks")
    drop_bad = _check_flag("drop_bad", drop_bad)
    names = resolve_columns(table.colnames, expnum_col, ccdnum_col, x_col, y_col, source)
    codes = _classify_rows(masks, *_event_values([table[name] for name in names], names, source))
    kept = _keep(codes, masks.keep_no_epoch)
    counts = FilterCounts()
    counts.add(codes, kept)
    if not drop_bad:
        counts.check_bad(source)
    return table[kept], counts


def _filter_fits_stream(input_path, output_path, masks, names, drop_bad, chunk_rows):
    """Filter an uncompressed FITS binary table row block by row block.

    The rows are copied as raw bytes (`_FitsRows`, `_FitsRowWriter`), so every
    column, scaling, null value, unit and header keyword is kept exactly;
    memory stays at one block.  Returns the FilterCounts, or None when the
    table does not suit (variable-length arrays, ASCII table, data in the
    primary HDU) and the generic path must be used.
    """
    rows = _FitsRows(input_path)
    if not rows.streamable or rows.primary_has_data:
        return None
    names = resolve_columns(rows.columns.names, *names, source=input_path)
    rows.check_scalar(names)
    header = rows.header
    for card in masks.provenance():
        header[card[0]] = card[1:]
    counts = FilterCounts()
    with open(output_path, "wb") as out:
        writer = _FitsRowWriter(out, header, rows.primary_header)
        for start, block in rows.blocks(chunk_rows):
            codes = _classify_rows(masks, *_event_values(
                [rows.values(block, name) for name in names], names, input_path))
            kept = _keep(codes, masks.keep_no_epoch)
            counts.add(codes, kept, row_offset=start)
            writer.write(block[kept])
        writer.close()
    if not drop_bad:
        counts.check_bad(input_path)  # the partial output is discarded
    return counts


def _filter_parquet_stream(input_path, output_path, masks, names, drop_bad, chunk_rows):
    """Filter a Parquet file batch by batch with pyarrow (memory: one batch).

    The output has the input's schema (column types) and metadata, with the
    mask provenance added to astropy's table metadata (its YAML header, which
    also holds the units), as astropy's Parquet writer writes it.  Returns
    the FilterCounts.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    with _open_parquet(input_path) as parquet:
        schema = parquet.schema_arrow
        names = resolve_columns(schema.names, *names, source=input_path)
        metadata = dict(schema.metadata or {})
        metadata[b"table_meta_yaml"] = _astropy_parquet_header(input_path, masks.provenance())
        counts = FilterCounts()
        start = 0
        with pq.ParquetWriter(output_path, schema.with_metadata(metadata)) as writer:
            for batch in _parquet_batches(parquet, input_path, batch_size=chunk_rows):
                codes = _classify_rows(masks, *_event_values(_arrow_columns(batch, names, input_path),
                                                             names, input_path))
                kept = _keep(codes, masks.keep_no_epoch)
                counts.add(codes, kept, row_offset=start)
                writer.write_batch(batch.filter(pa.array(kept)))
                start += batch.num_rows
    if not drop_bad:
        counts.check_bad(input_path)  # the partial output is discarded
    return counts


def _astropy_parquet_header(path, cards) -> bytes:
    """astropy's YAML table header of a Parquet file (columns, units, meta), ``cards`` added to its meta."""
    import warnings

    from astropy.table import Table, meta, serialize
    from astropy.utils.data_info import serialize_context_as
    from astropy.utils.exceptions import AstropyUserWarning

    try:
        with warnings.catch_warnings():  # string lengths guessed: only the column attributes are used
            warnings.simplefilter("ignore", AstropyUserWarning)
            header = Table.read(path, format="parquet", schema_only=True)
    except Exception as exc:  # astropy raises many types (and needs pandas)
        raise BadInputError(f"{path}: cannot read as a table ({type(exc).__name__}: {_one_line(exc)})") from None
    header.meta.update((key, value) for key, value, _ in cards)
    with serialize_context_as("parquet"):  # as astropy's writer does
        header = serialize.represent_mixins_as_columns(header)
    return "\n".join(meta.get_yaml_from_table(header)).encode()


def filter_file(input_path: str, output_path: str, masks: "TransientMasks", *,
                expnum_col="EXPNUM", ccdnum_col="CCDNUM", x_col="XWIN_IMAGE",
                y_col="YWIN_IMAGE", drop_bad=False, table_format=None,
                output_format=None, overwrite=False, chunk_rows=500_000) -> FilterCounts:
    """Write a copy of an event table without the events in masked regions.

    Reads any format astropy's Table reads (FITS, ECSV, CSV, HDF5, Parquet...),
    chosen by extension or ``table_format``; writes ``output_path`` atomically in
    its own format (``output_format`` or its extension).  Rows keep their order,
    every column, dtype, unit and the table metadata.  An uncompressed FITS
    binary table written to FITS, and a Parquet file written to Parquet, are
    streamed in blocks of ``chunk_rows`` rows.

    Returns
    -------
    FilterCounts
    """
    input_path = _check_path("input_path", input_path)
    output_path = _check_path("output_path", output_path)
    if not isinstance(masks, TransientMasks):
        raise BadInputError(f"masks={_describe_value(masks)}: must be a TransientMasks")
    chunk_rows = _check_int("chunk_rows", chunk_rows, lo=1, hi=MAX_CHUNK_ROWS)
    drop_bad = _check_flag("drop_bad", drop_bad)
    check_input(input_path, "event table")
    in_format = table_format_of(input_path, table_format)
    out_format = table_format_of(output_path, output_format or _output_format(output_path, table_format))
    names = (expnum_col, ccdnum_col, x_col, y_col)
    with atomic_output(output_path, overwrite=overwrite, inputs=[input_path, *masks.inputs]) as tmp:
        if in_format == out_format == "fits" and not _compression(input_path) \
                and output_path.lower().endswith(_FITS_SUFFIXES):
            counts = _filter_fits_stream(input_path, tmp, masks, names, drop_bad, chunk_rows)
            if counts is not None:
                return counts
        if in_format == out_format == "parquet":
            return _filter_parquet_stream(input_path, tmp, masks, names, drop_bad, chunk_rows)
        table, read_options = _read_table(input_path, in_format, names)
        kept, counts = filter_table(table, masks, expnum_col=expnum_col, ccdnum_col=ccdnum_col,
                                    x_col=x_col, y_col=y_col, drop_bad=drop_bad, source=input_path)
        kept.meta.update((key, value) for key, value, _ in masks.provenance())
        if out_format == "fits":  # FITS tables have no signed bytes (astropy writes int8 as T/F)
            for name in [name for name in kept.colnames if kept[name].dtype == np.int8]:
                kept[name] = kept[name].astype(np.int16)
                log.info("%s: column %r written as int16 (FITS tables have no signed bytes)", output_path, name)
        write_options = {"format": out_format}
        if out_format == "hdf5":
            write_options.update(path=read_options.get("path", "data"), serialize_meta=True)
        try:
            kept.write(tmp, **write_options)
        except Exception as exc:  # astropy's writers raise many types
            raise BadInputError(f"{output_path}: cannot write a {out_format} table ({_one_line(exc)})") from None
    return counts


def _first_hdf5_table(path):
    """Path of the first table in an HDF5 file (astropy needs one to read it)."""
    try:
        import h5py
    except ImportError:
        raise BadInputError(f"{path}: reading HDF5 needs h5py (pip install 'transient_masks[hdf5]')") from None
    found = []
    try:
        with h5py.File(path, "r") as h5:
            h5.visititems(lambda name, item: found.append(name)
                          if isinstance(item, h5py.Dataset) and item.dtype.names else None)
    except OSError as exc:
        raise BadInputError(f"{path}: not a readable HDF5 file ({_one_line(exc)})") from None
    if not found:
        raise BadInputError(f"{path}: no table in this HDF5 file")
    if len(found) > 1:
        log.warning("%s: holds %d tables; only the first, %s, is read (one table a file)", path, len(found), found[0])
    return found[0]


# ---- Gathering count maps from a catalog

#: Cells of one CCD in the DES count maps, and pixels per cell along x and y.
_MAP_CELLS = MAP_NY * MAP_NX
_CELL_NX_PX = CCD_NX // MAP_NX  # 8
_CELL_NY_PX = CCD_NY // MAP_NY  # 16
_UINT16_MAX = np.iinfo(np.uint16).max
#: Rows read at a time from a catalog file (about 50 MB of working memory).
GATHER_CHUNK_ROWS = 1_000_000
#: The largest chunk_rows taken (pyarrow and numpy take sizes below 2**31 everywhere).
MAX_CHUNK_ROWS = 1 << 30


class GatherResult:
    """The count maps built by `gather_data` and what happened to the rows.

    ``n_read == n_binned + n_no_epoch + n_bad`` always holds.

    Attributes
    ----------
    counts : dict
        Epoch name -> (62, 256, 256) uint16 counts, for the epochs with at
        least one transient, in the order of the epoch table.
    min_exp, max_exp : dict
        Epoch name -> MINEXPNUM / MAXEXPNUM of the epoch table.
    n_read, n_binned, n_no_epoch, n_bad : int
        Rows read; binned into a map; with an EXPNUM in no epoch; bad
        (CCDNUM outside 1..62, NaN or off-CCD position), not binned.
    n_clipped : dict
        Epoch name -> number of cells whose count exceeded 65535 and was clipped.
    output : str or None
        The file written, if any.
    """

    def __init__(self):
        self.counts = {}
        self.min_exp, self.max_exp = {}, {}
        self.n_read = self.n_binned = self.n_no_epoch = self.n_bad = 0
        self.n_clipped = {}
        self.output = None

    def summary(self) -> str:
        """One line: rows read, binned, in no epoch, bad; epochs written."""
        epochs = ", ".join(self.counts) or "none"
        return (f"{self.n_read} rows read, {self.n_binned} binned, {self.n_no_epoch} in no epoch, "
                f"{self.n_bad} bad rows skipped; epochs with transients: {epochs}")


class _CountAccumulator:
    """Running per-epoch cell counts, binned chunk by chunk.

    Each epoch seen has flat uint32 counts (16 MB), incremented in place by
    ``np.add.at``: no full-size temporary per batch (``np.bincount`` makes a
    32 MB one, which a fresh process also pays page faults for).  `saturated`
    gives the uint16 maps, clipped at 65535.  uint32 cannot wrap: an epoch
    whose count bound would pass 2**32 - 1 is clipped at 65535 first
    (saturating addition is associative, so the result is the same), and the
    cells clipped are remembered.
    """

    def __init__(self, n_epochs):
        self.n_epochs = n_epochs
        self.totals = {}  # epoch index -> flat (62 * 65536,) uint32 counts
        self.clipped = {}  # epoch index -> bool flags of the cells clipped at 65535 so far
        self.bound = {}  # epoch index -> an upper bound of its largest count
        self.n_events = np.zeros(n_epochs, dtype=np.int64)
        self.n_read = self.n_bad = self.n_no_epoch = 0

    def add(self, epoch_idx, ccdnum, x, y):
        """Bin one chunk of events (arrays of equal length; see `bin_events`)."""
        epoch_idx = np.asarray(epoch_idx)
        n_rows = epoch_idx.size
        self.n_read += n_rows
        if not n_rows:
            return
        # Cell indices in cache-sized blocks; -1 marks bad rows.
        flat = np.empty(n_rows, dtype=np.intp)  # np.add.at indexes with intp
        for start in range(0, n_rows, _BIN_BLOCK):
            stop = start + _BIN_BLOCK
            block_flat, good = _cell_index(ccdnum[start:stop], x[start:stop], y[start:stop])
            if good.all():
                flat[start:stop] = block_flat
            else:
                flat[start:stop][good] = block_flat
                flat[start:stop][~good] = -1
                self.n_bad += int(good.size - np.count_nonzero(good))
        no_epoch = epoch_idx < 0
        if no_epoch.any():
            self.n_no_epoch += int(np.count_nonzero(no_epoch & (flat >= 0)))
            epoch_idx, flat = epoch_idx[~no_epoch], flat[~no_epoch]
        if not epoch_idx.size:
            return
        first, last = int(epoch_idx.min()), int(epoch_idx.max())
        if first == last:  # one epoch in the chunk: no selection at all
            groups = [(first, flat)]
        else:
            # Catalogs sorted by exposure give contiguous slices per epoch; other
            # orders are sorted by epoch first: numpy's stable sort of 8-bit
            # keys is a radix sort of one pass (the order within an epoch is
            # irrelevant to the counts).
            if (epoch_idx[1:] < epoch_idx[:-1]).any():
                key = epoch_idx.astype(np.uint8) if last <= np.iinfo(np.uint8).max else epoch_idx
                order = np.argsort(key, kind="stable")
                epoch_idx, flat = epoch_idx[order], flat[order]
            bounds = np.searchsorted(epoch_idx, np.arange(first, last + 2, dtype=epoch_idx.dtype))
            groups = [(first + i, flat[bounds[i]:bounds[i + 1]]) for i in range(last - first + 1)]
        for index, cells in groups:
            if cells.size and cells.min() < 0:
                cells = cells[cells >= 0]
            for start in range(0, cells.size, _ADD_BATCH):
                self._bin(index, cells[start:start + _ADD_BATCH])

    def _bin(self, index, cells):
        """Add the cells of one epoch's events to its counts."""
        if not cells.size:
            return
        total = self.totals.get(index)
        if total is None:
            total = self.totals[index] = np.zeros(N_CCD * _MAP_CELLS, dtype=np.uint32)
        if self.bound.get(index, 0) + cells.size > _UINT32_MAX:
            self._clip(index)
        np.add.at(total, cells, np.uint32(1))  # a uint32 one: numpy's fast path
        self.bound[index] = self.bound.get(index, 0) + cells.size
        self.n_events[index] += cells.size

    def _clip(self, index):
        """Clip one epoch's counts at 65535, remembering the cells clipped."""
        total = self.totals[index]
        over = total > _UINT16_MAX
        if over.any():
            if index in self.clipped:
                self.clipped[index] |= over
            else:
                self.clipped[index] = over
            np.minimum(total, _UINT16_MAX, out=total)
        self.bound[index] = min(self.bound[index], _UINT16_MAX)

    def saturated(self, index) -> tuple:
        """(flat uint16 counts clipped at 65535, bool flags of the clipped cells or None) of an epoch."""
        if self.bound[index] > _UINT16_MAX:
            self._clip(index)
        return self.totals[index].astype(np.uint16), self.clipped.get(index)


#: Events whose cells are computed at a time: the temporaries of a block stay
#: in a core's L2 cache (1 << 18 was 2-3x slower on the development machine).
_BIN_BLOCK = 1 << 16
#: Events added to the counts by one ``np.add.at`` call (any size works; this
#: bounds how far past 2**32 - 1 the count bound of an epoch can be checked).
_ADD_BATCH = 1 << 24
_UINT32_MAX = np.iinfo(np.uint32).max


def _cell_index(ccdnum, x, y):
    """Flat DES map cell of each event and whether the event is good.

    Returns ``(flat, good)``: ``good`` flags rows with CCDNUM in 1..62 and a
    finite on-CCD position (0.5 <= x < 2048.5, 0.5 <= y < 4096.5); ``flat``
    (int32) holds ``(CCDNUM - 1) * 65536 + Y * 256 + X`` for the good rows only
    (for all rows when every row is good), with X = floor((x - 1) / 8) and
    Y = floor((y - 1) / 16), positions below 1 going to cell 0.
    """
    ccdnum = np.asarray(ccdnum)
    x = np.asarray(x)
    y = np.asarray(y)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    if y.dtype.kind != "f":
        y = y.astype(np.float64)
    # NaN fails every comparison, so it is flagged bad here.
    good = (ccdnum >= 1) & (ccdnum <= N_CCD)
    good &= (x >= 0.5) & (x < CCD_NX + 0.5)
    good &= (y >= 0.5) & (y < CCD_NY + 0.5)
    if not good.all():
        ccdnum, x, y = ccdnum[good], x[good], y[good]
    # x - 1 is exact in binary floating point for 0.5 <= x; truncation toward
    # zero sends -0.5 <= x - 1 < 0 to pixel offset 0 (cell 0), as DES did.
    # Every cell index is below 2**22: int32 halves the memory traffic of intp.
    x_px = (x - 1).astype(np.int32)
    y_px = (y - 1).astype(np.int32)
    x_px >>= 3  # 8 pixels per cell along x
    y_px >>= 4  # 16 pixels per cell along y
    y_px <<= 8
    x_px += y_px
    flat = ccdnum.astype(np.int32)
    flat -= 1
    flat <<= 16
    flat += x_px
    return flat, good


_NOT_WHOLE = np.iinfo(np.int64).min  # marks the EXPNUM/CCDNUM values that are not whole numbers


def _unitless(values, where):
    """The numbers of an astropy Quantity (a QTable's column) in pixels or without a unit;
    anything else as it is (a Table column's unit is only a label).  A Quantity in
    another unit (deg, arcsec) is a BadInputError naming ``where``."""
    units = sys.modules.get("astropy.units")
    if units is None or not isinstance(values, units.Quantity):
        return values
    if str(values.unit).lower() not in ("pix", "pixel", "pixels", ""):
        raise BadInputError(f"{where} is in {values.unit}; expected pixels (or no unit)")
    return np.asarray(values.value)


def _event_arrays(**arrays) -> tuple:
    """Event columns (named keyword arrays, CCDNUM as ``ccdnum``) checked and flattened.

    Each must hold numbers (any integer or float type); all non-scalar ones
    must have the same shape, scalars are repeated.  As for event tables, a
    row is *bad* (its CCDNUM becomes 0, which the binning skips and counts)
    when any of its entries is masked, or when its EXPNUM or CCDNUM is not a
    whole number (5.5, NaN).
    """
    names = list(arrays)
    values = [_unitless(np.ma.getdata(value) if np.ma.isMaskedArray(value) else value, name)
              for name, value in arrays.items()]
    checked = {name: _numeric_array(name, value) for name, value in zip(names, values)}
    shape = _same_shape(**checked)
    flat = {name: np.broadcast_to(value, shape).ravel() for name, value in checked.items()}
    bad = np.zeros(flat[names[0]].shape, dtype=bool)
    for name, value in zip(names, arrays.values()):
        if np.ma.isMaskedArray(value):
            bad |= np.broadcast_to(np.ma.getmaskarray(value), shape).ravel()
        if name in ("expnum", "ccdnum") and flat[name].dtype.kind == "f":
            flat[name] = _whole_int64(name, flat[name], bad=_NOT_WHOLE)
            bad |= flat[name] == _NOT_WHOLE
    if "ccdnum" in flat and bad.any():
        flat["ccdnum"] = np.where(bad, 0, flat["ccdnum"])
    return tuple(flat.values())


def bin_events(epoch_idx, ccdnum, x, y, n_epochs: int) -> np.ndarray:
    """Count events in the DES map cells of each epoch (integer arithmetic).

    Parameters
    ----------
    epoch_idx : array_like of int
        Epoch of each event (index into the epoch table; -1 = no epoch, skipped).
    ccdnum : array_like of int
        CCDNUM 1..62; other values are bad rows, skipped.
    x, y : array_like of float
        FITS 1-indexed positions; NaN or off-CCD positions are skipped.
    n_epochs : int
        Number of epochs.

    Returns
    -------
    numpy.ndarray of int64, shape (n_epochs, 62, 256, 256)

    Examples
    --------
    >>> counts = bin_events([0, 0, 1, -1], [1, 1, 62, 5], [0.5, 9.0, 2048.4, 5.0],
    ...                     [1.0, 16.9, 4096.4, 5.0], n_epochs=2)
    >>> int(counts[0, 0, 0, 0]), int(counts[0, 0, 0, 1]), int(counts[1, 61, 255, 255])
    (1, 1, 1)
    """
    n_epochs = _check_int("n_epochs", n_epochs, lo=0)
    epoch_idx = _whole_int64("epoch_idx", _numeric_array("epoch_idx", epoch_idx))
    epoch_idx, ccdnum, x, y = _event_arrays(epoch_idx=epoch_idx, ccdnum=ccdnum, x=x, y=y)
    if epoch_idx.size and epoch_idx.max() >= n_epochs:
        raise BadInputError(f"epoch_idx: {int(epoch_idx.max())} is not below n_epochs={n_epochs}")
    if epoch_idx.size and epoch_idx.min() < -1:
        raise BadInputError(f"epoch_idx: {int(epoch_idx.min())} is below -1 (no epoch)")
    try:
        counts = np.zeros((n_epochs, N_CCD, MAP_NY, MAP_NX), dtype=np.int64)
    except (MemoryError, ValueError):  # numpy: ValueError when beyond any address space
        raise BadInputError(f"n_epochs={n_epochs}: too many epochs to hold their maps "
                            f"({N_CCD * _MAP_CELLS * 8 / 2**20:.0f} MB each)") from None
    accumulator = _CountAccumulator(n_epochs)
    accumulator.add(epoch_idx, ccdnum, x, y)
    for index in accumulator.totals:
        counts[index] = accumulator.saturated(index)[0].reshape(N_CCD, MAP_NY, MAP_NX)
    return counts


def gather_arrays(expnum, ccdnum, x, y, *, epochs=None,
                  chunk_rows: int = GATHER_CHUNK_ROWS) -> GatherResult:
    """Build DES count maps from in-memory event arrays.

    Parameters
    ----------
    expnum, ccdnum : array_like of int
        Exposure number and CCDNUM (1..62) of each event.
    x, y : array_like of float
        FITS 1-indexed positions on the CCD.
    epochs : str or astropy.table.Table, optional
        The epoch table (NAME, MINEXPNUM, MAXEXPNUM) or its file; default the
        shipped DES table.
    chunk_rows : int
        Events binned at a time (bounds the working memory).

    Returns
    -------
    GatherResult

    Examples
    --------
    >>> result = gather_arrays([345031, 345031, 100], [5, 62, 5], [100.0, 2048.0, 1.0],
    ...                        [200.0, 4096.0, 1.0])
    >>> list(result.counts), result.n_binned, result.n_no_epoch
    (['Y2E1'], 2, 1)
    """
    chunk_rows = _check_int("chunk_rows", chunk_rows, lo=1, hi=MAX_CHUNK_ROWS)
    expnum, ccdnum, x, y = _event_arrays(expnum=expnum, ccdnum=ccdnum, x=x, y=y)
    table = read_epochs(epochs)
    accumulator = _CountAccumulator(len(table))
    lookup = _EpochLookup(table["MINEXPNUM"], table["MAXEXPNUM"])
    _add_events(accumulator, lookup, (expnum, ccdnum, x, y), ("expnum", "ccdnum", "x", "y"), "events",
                chunk_rows)
    return _finish_gather(accumulator, table)


def _add_events(accumulator, lookup, columns, names, source, chunk_rows):
    """Bin a block of (expnum, ccdnum, x, y) columns, `_event_values`' rule applied."""
    expnum, ccdnum, x, y, bad = _event_values(columns, names, source)
    if bad is not None:  # CCDNUM 0 makes a row bad for the binning
        ccdnum = np.where(bad, 0, ccdnum)
    for start in range(0, expnum.size, chunk_rows):
        stop = start + chunk_rows
        accumulator.add(lookup(expnum[start:stop]), ccdnum[start:stop], x[start:stop], y[start:stop])


def _gather_file(accumulator, lookup, path, names, chunk_rows, table_format, bar=None):
    """Bin one catalog file into ``accumulator``; returns its SIM* header cards (or []).

    The per-file piece of `gather_data`, run in place or on a Dask worker;
    ``bar`` (a tqdm bar) counts the rows.
    """
    n_before, bad_before = accumulator.n_read, accumulator.n_bad
    cards = []
    for header, columns in _catalog_chunks(path, names, chunk_rows, table_format):
        if header is not None and not cards:
            cards = [(key, header[key], header.comments[key]) for key in header if key.startswith("SIM")]
        _add_events(accumulator, lookup, columns, names, path, chunk_rows)
        if bar is not None:
            bar.update(len(columns[0]))
    _log_rows_read(path, accumulator.n_read - n_before, accumulator.n_bad - bad_before)
    return cards


def _log_rows_read(path, n_read, n_bad):
    log.info("%s: %d rows read%s", path, n_read, f", {n_bad} bad rows ({_BAD_ROW}) skipped" if n_bad else "")


def _finish_gather(accumulator, table) -> GatherResult:
    """The accumulated uint16 maps and row counts; warns about clipped cells."""
    result = GatherResult()
    result.n_read, result.n_bad, result.n_no_epoch = (
        accumulator.n_read, accumulator.n_bad, accumulator.n_no_epoch)
    result.n_binned = int(accumulator.n_events.sum())
    for index in sorted(accumulator.totals):
        name = str(table["NAME"][index])
        counts, clipped = accumulator.saturated(index)
        del accumulator.totals[index]  # one epoch's uint32 counts at a time
        result.counts[name] = counts.reshape(N_CCD, MAP_NY, MAP_NX)
        n_over = 0 if clipped is None else int(clipped.sum())
        if n_over:
            ccds = np.flatnonzero(clipped.reshape(N_CCD, -1).any(axis=1)) + 1
            log.warning("%s: %d cell(s) on %d CCD(s) (CCDNUM %s) exceed %d transients; clipped to %d",
                        name, n_over, ccds.size, ",".join(map(str, ccds)), _UINT16_MAX, _UINT16_MAX)
        result.n_clipped[name] = n_over
        result.min_exp[name] = int(table["MINEXPNUM"][index])
        result.max_exp[name] = int(table["MAXEXPNUM"][index])
    return result


def _fits_table_chunks(path, names, chunk_rows):
    """Yield (header, (expnum, ccdnum, x, y)) blocks of the first FITS table.

    Uncompressed or gzip-compressed binary tables are streamed row range by row
    range (`_FitsRows`; memory: one block); other FITS tables are read whole.
    """
    rows = _FitsRows(path)
    names = resolve_columns(rows.columns.names, *names, source=path)
    if not rows.streamable:  # ASCII or variable-length tables
        yield rows.header, rows.read_whole(names)
        return
    rows.check_scalar(names)
    for _, block in rows.blocks(chunk_rows):
        yield rows.header, tuple(rows.values(block, name) for name in names)


def _parquet_chunks(path, names, chunk_rows):
    """Yield (expnum, ccdnum, x, y) blocks of a Parquet file, batch by batch."""
    with _open_parquet(path) as parquet:
        names = resolve_columns(parquet.schema_arrow.names, *names, source=path)
        for batch in _parquet_batches(parquet, path, batch_size=chunk_rows, columns=list(dict.fromkeys(names))):
            yield None, _arrow_columns(batch, names, path)


def _parquet_batches(parquet, path, **options):
    """``parquet.iter_batches(**options)``; damaged data (a corrupt page, a bad
    compression stream) is a BadInputError naming the file."""
    batches = parquet.iter_batches(**options)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as exc:  # pyarrow raises OSError and its own ArrowException types
            raise BadInputError(f"{path}: damaged Parquet data ({_one_line(exc)})") from None
        yield batch


def _open_parquet(path):
    """A `pyarrow.parquet.ParquetFile`; a missing pyarrow or an unreadable file is a BadInputError."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BadInputError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own error types
        raise BadInputError(f"{path}: not a readable Parquet file ({exc})") from None


def _arrow_columns(batch, names, path):
    """The named columns of a pyarrow record batch as numpy arrays; nulls masked (bad rows)."""
    arrays = []
    for name in names:
        column = batch.column(name)
        if column.null_count == len(column):  # also a column of pyarrow's null type: every row bad
            arrays.append(np.ma.MaskedArray(np.zeros(len(column), dtype=np.int64), mask=True))
        elif column.null_count:  # nulls make their rows bad (_event_values)
            try:
                filled = column.fill_null(0)
            except Exception:  # pyarrow's own types: 0 is no value of a text or date column
                raise BadInputError(f"{path}: column {name!r} of type {column.type} is not numbers") from None
            arrays.append(np.ma.MaskedArray(_arrow_to_numpy(filled, path, name),
                                            mask=column.is_null().to_numpy(zero_copy_only=False)))
        else:
            arrays.append(_arrow_to_numpy(column, path, name))
    return tuple(arrays)


def _arrow_to_numpy(column, path, name):
    """A pyarrow array as numpy; a type numpy cannot hold is named in the error."""
    try:
        return column.to_numpy(zero_copy_only=False)
    except Exception as exc:  # pyarrow raises its own types
        raise BadInputError(f"{path}: column {name!r} of type {column.type} is not numbers "
                            f"({_one_line(exc)})") from None


def _table_chunks(path, names, fmt):
    """Yield the four columns of any table astropy reads (read whole)."""
    table, _ = _read_table(path, fmt, names)
    names = resolve_columns(table.colnames, *names, source=path)
    yield None, tuple(table[name] for name in names)


def _catalog_chunks(path, names, chunk_rows, table_format=None):
    """Yield (header or None, (expnum, ccdnum, x, y)) blocks of one catalog file."""
    fmt = table_format_of(path, table_format)
    # A gzip FITS catalog is streamed, and a cut-short stream is caught there:
    # no need to read it twice.
    check_input(path, "catalog", whole_gzip=fmt != "fits")
    if fmt == "fits":
        return _fits_table_chunks(path, names, chunk_rows)
    if fmt == "parquet":
        return _parquet_chunks(path, names, chunk_rows)
    return _table_chunks(path, names, fmt)


def gather_data(catalogs, output: str = None, *, epochs=None, expnum_col: str = "EXPNUM",
                ccdnum_col: str = "CCDNUM", x_col: str = "XWIN_IMAGE", y_col: str = "YWIN_IMAGE",
                chunk_rows: int = GATHER_CHUNK_ROWS, table_format: str = None, demo: bool = False,
                overwrite: bool = False, client=None, progress: bool = False) -> GatherResult:
    """Build DES-format transient count maps from one or several catalogs.

    Each event is binned into the map cell (CCDNUM - 1, Y, X) of its epoch, with
    ``X = floor((x - 1) / 8)`` and ``Y = floor((y - 1) / 16)`` (FITS 1-indexed
    positions; ``0.5 <= x < 1`` goes to cell 0), by integer arithmetic.  Large
    files are read in chunks of ``chunk_rows`` rows (FITS binary tables by row
    ranges, also gzip-compressed; Parquet by batches of its row groups); other
    formats astropy reads (ECSV, CSV, HDF5...) are read whole.  Rows with a
    CCDNUM outside 1..62 or a NaN or off-CCD position are counted and skipped;
    rows whose EXPNUM is in no epoch are counted and skipped.  A cell above
    65535 is clipped, with a logged warning.  Epochs without transients are
    left out, as in the DES file.

    Parameters
    ----------
    catalogs : str, list of str, or dask.dataframe.DataFrame
        Catalog file(s) with one row per transient: paths, glob patterns
        (``"cats/*.fits"``) and directories of dataset files (a Parquet
        dataset), see `expand_inputs`; or a Dask DataFrame, binned partition
        by partition where it lives.
    output : str, optional
        Write the maps there (atomically): an empty primary HDU, then one
        uint16 image HDU per epoch (BITPIX 16, BZERO 32768) with EXTNAME =
        EPOCH = the epoch name, MIN_EXP and MAX_EXP (the epoch table's
        MINEXPNUM and MAXEXPNUM) and provenance keywords.
    epochs : str or astropy.table.Table, optional
        The epoch table or its file (default: the shipped DES OPS_EPOCH table).
    expnum_col, ccdnum_col, x_col, y_col : str
        Column names.  Without XWIN_IMAGE/YWIN_IMAGE, X_IMAGE/Y_IMAGE or X/Y
        are used.
    chunk_rows : int
        Rows read and binned at a time.
    table_format : str, optional
        astropy table format of the catalogs (default: from the extension).
    demo : bool
        Flag the output as synthetic demo data (DEMO = T in every HDU).
    overwrite : bool
        Replace an existing ``output``.
    client : dask.distributed.Client, optional
        Bin the files in parallel on this Dask cluster (see `dask_client`):
        one task per run of files per worker thread, their counts summed by
        Dask's tree reduction.  The maps are the same, bit for bit, as
        without it.
    progress : bool
        Show a progress bar on stderr (tqdm; Dask's own for parallel runs).

    Returns
    -------
    GatherResult
        The counts per epoch and the row counts.

    Examples
    --------
    >>> rng = np.random.default_rng(3)
    >>> events = {"EXPNUM": rng.integers(345031, 382974, 1000), "CCDNUM": rng.integers(1, 63, 1000),
    ...           "XWIN_IMAGE": rng.uniform(0.5, 2048.5, 1000), "YWIN_IMAGE": rng.uniform(0.5, 4096.5, 1000)}
    >>> write_fits_rows("transients.fits", [events])
    1000
    >>> result = gather_data("transients.fits", "my_maps.fits.gz")
    >>> result.summary()
    '1000 rows read, 1000 binned, 0 in no epoch, 0 bad rows skipped; epochs with transients: Y2E1'
    """
    if not _is_dask_frame(catalogs):  # paths, glob patterns, dataset directories (see expand_inputs)
        if isinstance(catalogs, (str, os.PathLike)):
            catalogs = [catalogs]
        if not isinstance(catalogs, (list, tuple)):
            raise BadInputError(f"catalogs={_describe_value(catalogs)}: must be a file path or a list of them")
        if not catalogs:
            raise BadInputError("gather_data: no catalog given")
        catalogs = _distinct_files(expand_inputs([_check_path("catalogs", path) for path in catalogs]))
    chunk_rows = _check_int("chunk_rows", chunk_rows, lo=1, hi=MAX_CHUNK_ROWS)
    output = _check_path("output", output, optional=True)
    demo = _check_flag("demo", demo)
    _check_client(client)
    table = read_epochs(epochs)
    inputs = ([] if _is_dask_frame(catalogs) else catalogs) + ([os.fspath(epochs or data_path(EPOCHS_FILENAME))]
                         if epochs is None or isinstance(epochs, (str, os.PathLike)) else [])
    if output is not None:  # fail before the long read, not after it
        check_output(output, overwrite, inputs)
        _check_fits_name(output, "count maps")
    lookup = _EpochLookup(table["MINEXPNUM"], table["MAXEXPNUM"])
    names = (expnum_col, ccdnum_col, x_col, y_col)
    if client is not None or _is_dask_frame(catalogs):  # see "Parallel runs (Dask)"
        accumulator, simulation_cards = _gather_dask(catalogs, client, lookup, len(table), names,
                                                     chunk_rows, table_format, progress)
    else:
        accumulator = _CountAccumulator(len(table))
        simulation_cards = []
        with _row_progress(catalogs, progress) as bar:
            for path in catalogs:
                cards = _gather_file(accumulator, lookup, path, names, chunk_rows, table_format, bar)
                simulation_cards = simulation_cards or cards
    result = _finish_gather(accumulator, table)
    if result.n_bad:
        log.warning("%d bad row(s) (%s) skipped", result.n_bad, _BAD_ROW)
    if output is not None:
        # (the epoch table was refused as the output above, before the read)
        write_count_maps(output, result, demo=demo, overwrite=overwrite,
                         inputs=[] if _is_dask_frame(catalogs) else catalogs, extra_cards=simulation_cards)
        result.output = output
    return result


def _file_identity(path):
    """What makes two paths one file: its device and inode (links of any kind), else its real path."""
    try:
        status = os.stat(path)
    except (OSError, TypeError, ValueError):  # missing, or not a path: refused later, by name
        return os.path.realpath(path) if path else path
    return status.st_dev, status.st_ino


def _distinct_files(paths):
    """The paths with repeats of one file (also through links) left out (a warning names them)."""
    distinct, seen = [], {}
    for path in paths:
        key = _file_identity(path)
        if key in seen:
            log.warning("%s: given more than once (as %s too); read once", path, seen[key])
            continue
        seen[key] = path
        distinct.append(path)
    return distinct


def write_count_maps(path: str, result: GatherResult, *, demo: bool = False, overwrite: bool = False,
                     inputs=(), extra_cards=()) -> None:
    """Write the counts of a `GatherResult` as a DES count-map file (atomically).

    An empty primary HDU, then one image HDU per epoch in ``result.counts``:
    uint16 data (BITPIX 16, BZERO 32768), EXTNAME = EPOCH = name, MIN_EXP,
    MAX_EXP, NEVENTS, provenance keywords and DEMO = T when ``demo``.

    Examples
    --------
    >>> result = gather_arrays([345031], [5], [100.0], [200.0])
    >>> write_count_maps("maps.fits.gz", result, demo=True)
    >>> CountMaps("maps.fits.gz").epochs
    ['Y2E1']
    """
    from astropy.io import fits

    path = _check_path("path", path)
    demo = _check_flag("demo", demo)
    _check_fits_name(path, "count maps")
    if not isinstance(result, GatherResult):
        raise BadInputError(f"result={_describe_value(result)}: must be a GatherResult")
    inputs = _path_list("inputs", inputs)
    if not result.counts:  # a file of no epoch is no count-map file (CountMaps refuses it)
        raise BadInputError(f"{path}: not written: no event is in an epoch of the table ({result.n_read} "
                            f"rows read, {result.n_bad} bad, {result.n_no_epoch} in no epoch)")
    for name, counts in result.counts.items():
        where = f"result.counts[{name!r}]"
        _check_epoch_name("epoch name", name)
        counts = _numeric_array(where, counts, kinds="iu")
        if counts.shape != (N_CCD, MAP_NY, MAP_NX):
            raise BadInputError(f"{where}: shape {counts.shape}, expected ({N_CCD}, {MAP_NY}, {MAP_NX})")
        if counts.size and (counts.min() < 0 or counts.max() > _UINT16_MAX):
            raise BadInputError(f"{where}: counts must be in 0..{_UINT16_MAX} (the DES maps are uint16)")
        for bounds in (result.min_exp, result.max_exp):
            if name not in bounds:
                raise BadInputError(f"{where}: no MIN_EXP/MAX_EXP for this epoch in the result")
            _check_int(f"expnum bound of {name}", bounds[name])

    primary = fits.PrimaryHDU()
    hdus = [primary]
    provenance = [
        ("CREATOR", "transient_masks.gather_data", "program that made this file"),
        ("TMVERS", __version__, "transient_masks version"),
        ("CELLNX", _CELL_NX_PX, "pixels per cell along x"),
        ("CELLNY", _CELL_NY_PX, "pixels per cell along y"),
        ("NREAD", result.n_read, "catalog rows read"),
        ("NBAD", result.n_bad, "bad rows skipped (CCDNUM, NULL, NaN, off-CCD)"),
        ("NNOEPOCH", result.n_no_epoch, "rows in no epoch skipped"),
    ]
    for i, name in enumerate(inputs[:99], start=1):
        provenance.append((f"INPUT{i}", _header_text(os.path.basename(name))[:68], "catalog"))
    if demo:
        provenance.insert(0, ("DEMO", True, "SYNTHETIC demo maps, not DES data"))
    for key, value, comment in list(provenance) + list(extra_cards):
        primary.header[key] = (value, comment)
    for name, counts in result.counts.items():
        hdu = fits.ImageHDU(np.asarray(counts, dtype=np.uint16), name=name)
        hdu.header["EPOCH"] = (name, "DES observing epoch")
        hdu.header["MIN_EXP"] = (result.min_exp[name], "first expnum of the epoch")
        hdu.header["MAX_EXP"] = (result.max_exp[name], "last expnum of the epoch")
        hdu.header["NEVENTS"] = (int(counts.sum(dtype=np.int64)), "transients in this HDU")
        for key, value, comment in list(provenance) + list(extra_cards):
            hdu.header[key] = (value, comment)
        hdus.append(hdu)
    with atomic_output(path, overwrite=overwrite, inputs=list(inputs)) as tmp:
        if path.lower().endswith(".gz"):
            # gzip level 1: as fast as the gathering itself and 20% larger than
            # astropy's level 9, which took ten times longer than the gathering.
            with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1,
                                                       filename="", mtime=0) as out:
                fits.HDUList(hdus).writeto(out)
        else:
            fits.HDUList(hdus).writeto(tmp)


def _add_gather_arguments(parser, modes):
    """Add the --gather mode and its options to the command-line parser."""
    modes.add_argument("--gather", nargs="+", metavar="CATALOG",
                       help="build DES-format count maps from transient catalog(s) "
                            "(FITS, Parquet, or any table astropy reads); writes -o")
    group = parser.add_argument_group("gathering count maps (--gather)")
    group.add_argument("--demo", action="store_true",
                       help="--gather: flag the maps as synthetic demo data (DEMO = T)")
    group.add_argument("--chunk_rows", type=_chunk_rows, default=GATHER_CHUNK_ROWS,
                       help=f"--gather: catalog rows read at a time (default {GATHER_CHUNK_ROWS})")


def _run_gather(args) -> int:
    output = _output_name(args, "transient_maps.fits.gz")
    check_outputs([output], args.overwrite, _run_inputs(args) + args.gather)
    with _parallel_client(args) as client:
        result = gather_data(
            args.gather, output, epochs=args.epochs_file,
            expnum_col=args.expnum_col, ccdnum_col=args.ccdnum_col, x_col=args.x_col, y_col=args.y_col,
            chunk_rows=args.chunk_rows, table_format=args.table_format,
            demo=args.demo, overwrite=args.overwrite, client=client, progress=_show_progress(args),
        )
    demo = " [SYNTHETIC DEMO maps: DEMO = T]" if args.demo else ""
    print(f"{result.summary()}; wrote {output}{demo}", file=sys.stderr)
    return 0


# ---- Parallel runs (Dask)
# Many inputs -- paths, glob patterns, directories of dataset files (a Parquet
# dataset), or from Python a Dask DataFrame -- are filtered or binned one
# partition at a time (a partition: one input file, or one partition of the
# DataFrame), in this process or as one Dask task each; nothing gathers the
# rows on one machine.
#
# - The masks travel as `_ShippedMasks`: the (62, ny, nx) bool cell mask of
#   each epoch of the count maps and the epoch table, built once on the client
#   and scattered once to every worker; `TransientMasks.classify` runs on them
#   unchanged.  Full-resolution masks are never made.
# - Filtering: each partition is written by `filter_file` (a DataFrame
#   partition: by pyarrow, as Parquet) into a temporary sibling of the output
#   directory, which is renamed into place at the end (`_atomic_directory`).
# - Gathering: each task bins a run of consecutive files (`_file_groups`, one
#   task per worker thread) by `_gather_file` into its own `_CountAccumulator`,
#   turned into a `_CountPartial` that keeps only the (epoch, CCD) blocks they
#   touched (counts saturated at 65535, packed one byte a cell, and the cells
#   that passed 65535); the partials are summed by Dask's tree reduction
#   (`dask.bag.Bag.reduction`) on the workers, in at most `_SPLIT_EVERY`
#   trees whose roots are added up on the client.  Saturating addition of
#   counts >= 0 is associative, so the maps, the clipped cells and every row
#   count are those of the single-process path, bit for bit.

_GLOB_CHARS = frozenset("*?[")
#: Partials summed at a time by the tree reduction of gathered counts, and the
#: most trees it makes (the client adds up their roots).
_SPLIT_EVERY = 8
#: Gathering tasks per worker thread (each bins its share of the files, by bytes;
#: every task's partial costs a transfer and a merge: 1 is fastest, more
#: tasks even out workers of unequal speed).
_FILE_TASKS_PER_THREAD = 1
#: Seconds a run must last before a progress bar appears.
_PROGRESS_DELAY = 2.0


def _is_dask_frame(obj) -> bool:
    """Whether ``obj`` is a Dask DataFrame (never imports Dask)."""
    module = sys.modules.get("dask.dataframe")
    return module is not None and isinstance(obj, module.DataFrame)


def _natural_key(path):
    """Sort key of a path whose numbers compare as numbers: part.2 before part.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def _dataset_files(directory):
    """The files of a dataset directory, in natural path order (hidden and ``_`` files skipped)."""
    found = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = [name for name in dirs if not name.startswith((".", "_"))]
        found.extend(os.path.join(root, name) for name in names if not name.startswith((".", "_")))
    if not found:
        raise BadInputError(f"{directory}: no data files in this directory")
    return sorted(found, key=_natural_key)


def _input_files(inputs):
    """(path, name in an output directory) of each input file; see `expand_inputs`."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)):
        raise BadInputError(f"inputs={_describe_value(inputs)}: must be a file path, pattern or directory, "
                            f"or a list of them")
    files = []
    for item in (_check_path("inputs", item) for item in inputs):
        if os.path.isdir(item):
            files.extend((path, os.path.relpath(path, item)) for path in _dataset_files(item))
        elif _GLOB_CHARS & set(item) and not os.path.exists(item):
            matches = [path for path in glob.glob(item, recursive=True) if os.path.isfile(path)]
            if not matches:
                raise BadInputError(f"{item}: no file matches this pattern")
            files.extend((path, os.path.basename(path)) for path in sorted(matches, key=_natural_key))
        else:
            files.append((item, os.path.basename(item)))
    if not files:
        raise BadInputError("no input file given")
    return files


def expand_inputs(inputs) -> list:
    """The input files named by paths, glob patterns and dataset directories.

    A directory stands for every file under it (a Parquet dataset, also
    partitioned in subdirectories), hidden files and files starting with ``_``
    (``_metadata``, ``_SUCCESS``) left out.  A glob pattern (``*``, ``?``,
    ``[``; ``**`` crosses directories) that matches no file is an error.
    Files come in natural order (``part.2`` before ``part.10``).

    Parameters
    ----------
    inputs : str or list of str

    Returns
    -------
    list of str

    Examples
    --------
    >>> os.makedirs("cats")
    >>> for i in (1, 2, 10):
    ...     _ = write_fits_rows(f"cats/part{i}.fits", [{"A": np.arange(3)}])
    >>> expand_inputs("cats/part*.fits")
    ['cats/part1.fits', 'cats/part2.fits', 'cats/part10.fits']
    >>> expand_inputs(["cats"]) == expand_inputs("cats/*")
    True
    """
    return [path for path, _ in _input_files(inputs)]


def _several_inputs(inputs) -> bool:
    """Whether command-line inputs name several files: more than one, a pattern or a directory."""
    return len(inputs) > 1 or os.path.isdir(inputs[0]) or (
        bool(_GLOB_CHARS & set(inputs[0])) and not os.path.exists(inputs[0]))


@contextlib.contextmanager
def _held_warnings():
    """The warnings this thread logs while the block runs, held as texts, not shown.

    A Dask task returns them with its result, and the client says them once
    each (a worker's own log is not shown; several workers say the same).
    """
    held, thread = [], threading.get_ident()

    class Hold(logging.Filter):
        def filter(self, record) -> bool:
            if record.thread == thread and record.levelno >= logging.WARNING:
                held.append(record.getMessage())
                return False
            return True

    hold = Hold()
    log.addFilter(hold)
    try:
        yield held
    finally:
        log.removeFilter(hold)


def _say_warnings(texts):
    """Log the warnings held by tasks (`_held_warnings`), each text once."""
    for text in dict.fromkeys(texts):
        log.warning("%s", text)


class _MapsInfo:
    """What masks on a worker need of a `CountMaps`: its path, demo flag and epochs."""

    def __init__(self, maps):
        self.path, self.demo, self.epochs = maps.path, maps.demo, list(maps.epochs)

    def __contains__(self, epoch) -> bool:
        return epoch in self.epochs


class _CellMask(EpochMask):
    """The cell mask of one epoch, all that `EpochMask.apply` needs (no counts, no statistics)."""

    def __init__(self, epoch_mask):  # nothing to compute: the mask is made
        self.epoch, self.mask, self.cell_size = epoch_mask.epoch, epoch_mask.mask, epoch_mask.cell_size


class _ShippedMasks(TransientMasks):
    """`TransientMasks` as sent to Dask workers: the cell masks of every epoch of
    the count maps, built once, and the epoch table (4 MB per DES epoch)."""

    def __init__(self, masks: TransientMasks):  # no TransientMasks.__init__: nothing is read
        self.__dict__.update(vars(masks))
        self.maps = _MapsInfo(masks.maps)
        self._masks = {epoch: _CellMask(masks.mask_for(epoch)) for epoch in masks.maps.epochs}
        self._warned = set(masks._warned)  # what these masks have said already is not said again


class _CountPartial:
    """Gathered counts of some partitions, kept small for the tree reduction.

    Only the (epoch, CCD) blocks the partitions touched are held: per epoch
    index, the CCD indices and their (k, 65536) counts, saturated at 65535,
    packed as one byte a cell (`_pack_counts`: most cells of a partial hold a
    few events), and the flat cells whose count passed 65535.
    """

    def __init__(self):
        self.n_read = self.n_bad = self.n_no_epoch = 0
        self.n_events = {}  # epoch index -> events binned
        self.blocks = {}  # epoch index -> (CCD indices, packed counts: see _pack_counts)
        self.clipped = {}  # epoch index -> flat cells whose count passed 65535
        self.files = []  # (partition number, name, rows read, bad rows), for the log
        self.cards = []  # (partition number, SIM* header cards) of the first file with some
        self.warnings = []  # what the tasks logged as warnings (see _held_warnings)

    @classmethod
    def of(cls, accumulator, files, cards=(), warnings=()):
        """The partial of a partition binned into ``accumulator``.

        ``files``: (partition number, name, rows read, bad rows) of what it
        read; ``cards``: (partition number, SIM* header cards) of the first
        file with some, or empty; ``warnings``: what the task logged.
        """
        part = cls()
        part.warnings = list(warnings)
        part.n_read, part.n_bad, part.n_no_epoch = accumulator.n_read, accumulator.n_bad, accumulator.n_no_epoch
        for index, total in accumulator.totals.items():
            ccds, packed, over = _pack_counts(total.reshape(N_CCD, _MAP_CELLS))
            part.blocks[index] = (ccds, packed)
            part.n_events[index] = int(accumulator.n_events[index])
            if index in accumulator.clipped:  # cells clipped on the way (see _CountAccumulator._clip)
                over = np.union1d(over, np.flatnonzero(accumulator.clipped[index]))
            if over.size:
                part.clipped[index] = over
        part.files = list(files)
        part.cards = list(cards)[:1]
        return part

    @classmethod
    def merge(cls, parts):
        """The sum of some partials (the step of the tree reduction)."""
        parts = list(parts)
        if len(parts) == 1:
            return parts[0]
        total = cls()
        for part in parts:
            total.n_read += part.n_read
            total.n_bad += part.n_bad
            total.n_no_epoch += part.n_no_epoch
            for index, n_events in part.n_events.items():
                total.n_events[index] = total.n_events.get(index, 0) + n_events
            total.files.extend(part.files)
            total.cards.extend(part.cards)
            total.warnings.extend(part.warnings)
        total.files.sort(key=lambda item: item[0])
        total.cards = sorted(total.cards, key=lambda item: item[0])[:1]
        for index in sorted({index for part in parts for index in part.blocks}):
            counts = np.zeros((N_CCD, _MAP_CELLS), dtype=np.uint32)  # a sum of < 65537 uint16
            blocks = [part.blocks[index] for part in parts if index in part.blocks]
            for number, (ccds, packed) in enumerate(blocks):
                _unpack_block(counts, ccds, packed, fresh=number == 0)
            ccds, packed, over = _pack_counts(counts)
            total.blocks[index] = (ccds, packed)
            clipped = [over] + [part.clipped[index] for part in parts if index in part.clipped]
            over = np.unique(np.concatenate(clipped)) if len(clipped) > 1 else over
            if over.size:
                total.clipped[index] = over
        return total

    def add_to(self, accumulator: "_CountAccumulator") -> None:
        """Add these counts to ``accumulator`` (the root of the reduction, on the client)."""
        accumulator.n_read += self.n_read
        accumulator.n_bad += self.n_bad
        accumulator.n_no_epoch += self.n_no_epoch
        for index, (ccds, packed) in self.blocks.items():
            fresh = index not in accumulator.totals
            if fresh:
                accumulator.totals[index] = np.zeros(N_CCD * _MAP_CELLS, dtype=np.uint32)
                accumulator.bound[index] = 0
            elif accumulator.bound[index] + _UINT16_MAX > _UINT32_MAX:
                accumulator._clip(index)  # saturating addition: the same result, no wrap
            _unpack_block(accumulator.totals[index].reshape(N_CCD, _MAP_CELLS), ccds, packed, fresh=fresh)
            accumulator.bound[index] += _UINT16_MAX
            accumulator.n_events[index] += self.n_events[index]
            if index in self.clipped:
                flags = accumulator.clipped.setdefault(index, np.zeros(N_CCD * _MAP_CELLS, dtype=bool))
                flags[self.clipped[index]] = True


def _ccd_rows(ccds):
    """The rows ``ccds`` (sorted CCD indices) as a slice when they are a run (a view, not a copy)."""
    if ccds.size and ccds[-1] - ccds[0] + 1 == ccds.size:
        return slice(int(ccds[0]), int(ccds[-1]) + 1)
    return ccds


def _pack_counts(counts) -> tuple:
    """(62, 65536) uint32 counts as (touched CCD indices, their packed counts, flat cells over 65535).

    The packing holds the uint8 counts clipped at 255, the flat positions of
    the cells holding 255 or more and their uint16 counts clipped at 65535:
    half the bytes of uint16 to move between workers, exactly.  Only cells at
    255 or more are looked at past the first byte.
    """
    ccds = np.flatnonzero(counts.any(axis=1))
    block = counts[_ccd_rows(ccds)]
    low = np.empty(block.shape, dtype=np.uint8)
    np.minimum(block, 255, out=low, casting="unsafe")  # one pass, straight to uint8
    high = np.flatnonzero(low == 255)
    values = block.reshape(-1)[high]
    over = high[values > _UINT16_MAX]
    over = ccds[over // _MAP_CELLS] * _MAP_CELLS + over % _MAP_CELLS
    return ccds, (low, high, np.minimum(values, _UINT16_MAX).astype(np.uint16)), over


def _unpack_block(counts, ccds, packed, fresh=False) -> None:
    """Add a `_pack_counts` packing of CCDs ``ccds`` to (62, 65536) uint32 ``counts``
    (``fresh``: counts all zero, written rather than added: one page fault a page, not two)."""
    low, high, values = packed
    if fresh:
        counts[_ccd_rows(ccds)] = low
    else:
        counts[_ccd_rows(ccds)] += low
    if high.size:  # the rest of the cells that hold 255 or more
        rows, cells = np.divmod(high, low.shape[1])
        counts[ccds[rows], cells] += values.astype(np.uint32) - 255


def _frame_columns(frame, names):
    """Columns of a pandas DataFrame as numpy arrays, nullable columns as masked arrays."""
    columns = []
    for name in names:
        series = frame[name]
        numpy_dtype = series.dtype if isinstance(series.dtype, np.dtype) else getattr(
            series.dtype, "numpy_dtype", None)
        if isinstance(series.dtype, np.dtype) or numpy_dtype is None or numpy_dtype.kind not in "iuf":
            columns.append(series.to_numpy())  # not numbers: refused by _event_values
        else:  # a pandas nullable or pyarrow-backed number column
            columns.append(np.ma.MaskedArray(series.to_numpy(dtype=numpy_dtype, na_value=0),
                                             mask=series.isna().to_numpy(dtype=bool)))
    return columns


def _gather_partition(items, lookup, n_epochs, names, chunk_rows, table_format):
    """Dask task: the partial counts of a run of catalog files, given as ``(number, path)`` items."""
    accumulator = _CountAccumulator(n_epochs)
    files, cards = [], []
    with _held_warnings() as said:
        for number, path in items:
            n_read, n_bad = accumulator.n_read, accumulator.n_bad
            file_cards = _gather_file(accumulator, lookup, path, names, chunk_rows, table_format)
            files.append((number, path, accumulator.n_read - n_read, accumulator.n_bad - n_bad))
            if file_cards and not cards:
                cards = [(number, file_cards)]
    return [_CountPartial.of(accumulator, files, cards, said)]


def _gather_frame_partition(frame, number, lookup, n_epochs, names, chunk_rows):
    """Dask task: the partial counts of one partition of a DataFrame."""
    accumulator = _CountAccumulator(n_epochs)
    source = f"DataFrame partition {number}"
    with _held_warnings() as said:
        _add_events(accumulator, lookup, _frame_columns(frame, names), names, source, chunk_rows)
    return [_CountPartial.of(accumulator, [(number, source, accumulator.n_read, accumulator.n_bad)], (), said)]


def _file_tasks(client, n_files) -> int:
    """Gathering tasks for ``n_files`` files: `_FILE_TASKS_PER_THREAD` per worker thread.

    Each task bins its files into one accumulator, so the tree reduction
    moves one partial (up to 4 MB per epoch) per task, not per file.
    """
    threads = sum(client.nthreads().values()) if client is not None else (os.cpu_count() or 1)
    return max(1, min(n_files, _FILE_TASKS_PER_THREAD * max(threads, 1)))


def _file_groups(paths, n_groups) -> list:
    """At most ``n_groups`` runs of consecutive file indices holding about equal numbers of bytes."""
    if n_groups >= len(paths):
        return [np.array([index]) for index in range(len(paths))]
    sizes = np.array([max(os.path.getsize(path), 1) for path in paths], dtype=np.float64)
    ends = np.cumsum(sizes)
    # A group ends at the file whose cumulative size first reaches each share.
    cuts = np.searchsorted(ends, ends[-1] * np.arange(1, n_groups) / n_groups, side="left") + 1
    cuts = np.unique(np.clip(cuts, 1, len(paths) - 1)) if len(paths) > 1 else np.array([], int)
    return [group for group in np.split(np.arange(len(paths)), cuts) if group.size]


def _gather_dask(catalogs, client, lookup, n_epochs, names, chunk_rows, table_format, progress):
    """`gather_data` on Dask: (the `_CountAccumulator` of every partition summed, SIM cards)."""
    import dask
    import dask.bag

    client = client or _current_client()
    # The lookup goes in every task as it is: it pickles as its epoch ranges
    # (hundreds of bytes), quicker than a scatter to every worker.
    if _is_dask_frame(catalogs):
        names = resolve_columns(list(catalogs.columns), *names, source="DataFrame")
        parts = [dask.delayed(_gather_frame_partition)(frame, number, lookup, n_epochs, names, chunk_rows)
                 for number, frame in enumerate(catalogs.to_delayed())]
    else:  # consecutive files together, in their order, about as many bytes in each task
        groups = _file_groups(catalogs, _file_tasks(client, len(catalogs)))
        parts = [dask.delayed(_gather_partition)([(int(number), catalogs[number]) for number in group],
                                                 lookup, n_epochs, names, chunk_rows, table_format)
                 for group in groups]
    # Dask's tree reduction sums the partials on the workers, in at most
    # _SPLIT_EVERY trees; their roots come here, where the result goes anyway,
    # and are added straight into the counts (one transfer, one merge and one
    # pack and unpack fewer than a single root on a worker).
    trees = [dask.bag.from_delayed([parts[i] for i in group]).reduction(
        _CountPartial.merge, _CountPartial.merge, split_every=_SPLIT_EVERY)
        for group in np.array_split(np.arange(len(parts)), min(_SPLIT_EVERY, len(parts)))]
    accumulator = _CountAccumulator(n_epochs)
    files, cards, said = [], [], []
    for partial_counts in _compute_each(client, trees, progress):  # each root as soon as it is ready
        partial_counts.add_to(accumulator)
        files.extend(partial_counts.files)
        cards.extend(partial_counts.cards)
        said.extend(partial_counts.warnings)
    for _, name, n_read, n_bad in sorted(files, key=lambda item: item[0]):
        _log_rows_read(name, n_read, n_bad)
    _say_warnings(said)
    cards = sorted(cards, key=lambda item: item[0])
    return accumulator, (cards[0][1] if cards else [])


def _add_filter_counts(total: FilterCounts, part: FilterCounts) -> None:
    """Add the counts of one partition to ``total``."""
    for name in ("read", "masked", "no_epoch_dropped", "no_epoch_kept", "bad", "written"):
        setattr(total, name, getattr(total, name) + getattr(part, name))


def _filter_partition(path, output, masks, options):
    """Dask task: `filter_file` of one input file; (counts, the warnings it logged, epochs warned about)."""
    with _held_warnings() as said:
        counts = filter_file(path, output, masks, **options)
    return counts, said, sorted(masks._warned)


def _filter_frame_partition(frame, number, output, masks, names, drop_bad):
    """Dask task: one DataFrame partition's kept rows written as Parquet; as `_filter_partition` returns."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from astropy.table import Table, meta

    source = f"DataFrame partition {number}"
    with _held_warnings() as said:
        codes = _classify_rows(masks, *_event_values(_frame_columns(frame, names), names, source))
    kept = _keep(codes, masks.keep_no_epoch)
    counts = FilterCounts()
    counts.add(codes, kept)
    if not drop_bad:
        counts.check_bad(source)
    table = pa.Table.from_pandas(frame[kept], preserve_index=False)
    # The provenance where astropy keeps table metadata (its YAML header, which
    # lists the columns), as the single-file path writes it.
    header = Table({field.name: np.zeros(0, dtype=_numpy_type(field.type)) for field in table.schema},
                   meta={key: value for key, value, _ in masks.provenance()})
    metadata = dict(table.schema.metadata or {})
    metadata[b"table_meta_yaml"] = "\n".join(meta.get_yaml_from_table(header)).encode()
    pq.write_table(table.replace_schema_metadata(metadata), output)
    return counts, said, sorted(masks._warned)


def _numpy_type(arrow_type):
    """The numpy dtype of a pyarrow type (object for strings and other types numpy lacks)."""
    try:
        return np.dtype(arrow_type.to_pandas_dtype())
    except (NotImplementedError, TypeError):
        return np.dtype(object)


def filter_files(inputs, output_dir: str, masks: TransientMasks, *, client=None,
                 expnum_col: str = "EXPNUM", ccdnum_col: str = "CCDNUM", x_col: str = "XWIN_IMAGE",
                 y_col: str = "YWIN_IMAGE", drop_bad: bool = False, table_format: str = None,
                 overwrite: bool = False, chunk_rows: int = 500_000, progress: bool = False) -> FilterCounts:
    """Filter many event tables into a directory: one output per input partition.

    Each input file is filtered as `filter_file` does it (same rows in the
    same order, columns, dtypes, units, metadata and provenance) into a file
    of the same name in ``output_dir`` (files of a dataset directory keep
    their path under it); each partition of a Dask DataFrame becomes
    ``part.N.parquet``.  With a ``client`` (or a DataFrame) the partitions are
    Dask tasks, the masks sent to each worker once as small cell masks.
    ``output_dir`` appears at the end, whole, or not at all: it is built in a
    temporary sibling directory and renamed.

    Parameters
    ----------
    inputs : str, list of str, or dask.dataframe.DataFrame
        Paths, glob patterns and dataset directories (see `expand_inputs`),
        or a Dask DataFrame.
    output_dir : str
        The output directory (it must not exist, unless ``overwrite``).
    masks : TransientMasks
        The masks; its ``keep_no_epoch`` decides the events in no epoch.
    client : dask.distributed.Client, optional
        Run on this Dask cluster (see `dask_client`); without it, files are
        filtered one after the other here, and a DataFrame on Dask's
        current scheduler.
    expnum_col, ccdnum_col, x_col, y_col, drop_bad, table_format, chunk_rows
        As for `filter_file` (``table_format`` also for the outputs).
    overwrite : bool
        Replace an existing ``output_dir``.
    progress : bool
        Show a progress bar on stderr (tqdm; Dask's own for parallel runs).

    Returns
    -------
    FilterCounts
        Summed over the partitions.

    Examples
    --------
    >>> rng = np.random.default_rng(5)
    >>> os.makedirs("events")
    >>> for i in range(3):
    ...     _ = write_fits_rows(f"events/part{i}.fits", [{
    ...         "EXPNUM": rng.integers(345031, 382974, 100), "CCDNUM": rng.integers(1, 63, 100),
    ...         "XWIN_IMAGE": rng.uniform(1, 2048, 100), "YWIN_IMAGE": rng.uniform(1, 4096, 100)}])
    >>> masks = TransientMasks(data_path(DEMO_COUNTS_FILENAME))
    >>> counts = filter_files("events", "clean", masks)
    >>> sorted(os.listdir("clean")), counts.read
    (['part0.fits', 'part1.fits', 'part2.fits'], 300)
    """
    frame = _is_dask_frame(inputs)
    output_dir = _check_path("output_dir", output_dir)
    if not isinstance(masks, TransientMasks):
        raise BadInputError(f"masks={_describe_value(masks)}: must be a TransientMasks")
    _check_client(client)
    chunk_rows = _check_int("chunk_rows", chunk_rows, lo=1, hi=MAX_CHUNK_ROWS)
    drop_bad = _check_flag("drop_bad", drop_bad)
    files = [] if frame else _input_files(inputs)
    writers = {}
    for path, name in files:
        if name in writers:
            raise BadInputError(f"{writers[name]} and {path}: both would be written as {name} in "
                                f"{output_dir} (rename one)")
        writers[name] = path
    roots = [] if frame else [item for item in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)
                              if os.path.isdir(item)]
    options = dict(expnum_col=expnum_col, ccdnum_col=ccdnum_col, x_col=x_col, y_col=y_col,
                   drop_bad=drop_bad, table_format=table_format,
                   chunk_rows=chunk_rows)
    refused = [path for path, _ in files] + list(getattr(masks, "inputs", []))  # never written over
    with _atomic_directory(output_dir, overwrite, refused, roots) as tmp:
        for name in writers:  # workers never make directories (see _atomic_directory)
            os.makedirs(os.path.dirname(os.path.join(tmp, name)), exist_ok=True)
        if client is None and not frame:
            results = [(filter_file(path, os.path.join(tmp, name), masks, **options), [], [])
                       for path, name in _progress(files, progress, "files")]
        else:
            import dask

            client = client or _current_client()
            shared = _share(client, _ShippedMasks(masks), "cell-masks")
            if frame:
                names = resolve_columns(list(inputs.columns), expnum_col, ccdnum_col, x_col, y_col,
                                        source="DataFrame")
                tasks = [dask.delayed(_filter_frame_partition)(
                    part, number, os.path.join(tmp, f"part.{number}.parquet"), shared, names, drop_bad)
                    for number, part in enumerate(inputs.to_delayed())]
            else:
                tasks = [dask.delayed(_filter_partition)(path, os.path.join(tmp, name), shared, options)
                         for path, name in files]
            results = _compute(client, tasks, progress)
    total = FilterCounts()
    for counts, _, warned in results:
        _add_filter_counts(total, counts)
        masks._warned.update(warned)  # said once for these masks, as in this process
    _say_warnings(text for _, said, _ in results for text in said)
    return total


@contextlib.contextmanager
def _atomic_directory(path, overwrite=False, inputs=(), input_dirs=()):
    """Context manager giving a temporary directory that becomes ``path`` on success.

    The temporary directory is a hidden sibling of ``path``, so the final
    rename is atomic; on any failure or interrupt it is removed.  With
    ``overwrite`` an existing ``path`` is replaced (moved aside, then removed).
    ``path`` may be neither an input nor inside an input directory.
    """
    final = os.path.abspath(path)
    if os.path.isdir(final):  # check_output is for files
        if not overwrite:
            raise BadInputError(f"{path}: output exists (use --overwrite to replace it)")
        if not os.access(os.path.dirname(final), os.W_OK | os.X_OK):
            raise BadInputError(f"{path}: cannot write in the directory {os.path.dirname(final)} (permissions)")
    elif os.path.lexists(final):  # a file (or a link to one) is never replaced by a directory
        raise BadInputError(f"{path}: exists and is not a directory; refusing to replace it with the "
                            f"output directory")
    else:
        check_output(path, overwrite, inputs)
    _check_not_over_inputs(path, inputs, input_dirs)
    parent, base = os.path.split(final)
    tmp = tempfile.mkdtemp(dir=parent, prefix=_temporary_prefix(base), suffix=".tmp")
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the output is a normal directory
    try:
        yield tmp
        if os.path.lexists(final):  # overwrite: the old output goes once the new one is in place
            aside = tempfile.mkdtemp(dir=parent, prefix=_temporary_prefix(base), suffix=".old")
            os.rename(final, os.path.join(aside, base))
            os.rename(tmp, final)
            _remove_tree(aside)
        else:
            os.rename(tmp, final)
    finally:
        if os.path.exists(tmp):
            _remove_tree(tmp)


def _check_not_over_inputs(path, inputs=(), input_dirs=()):
    """Refuse an output directory that is, holds or lies in an input (links resolved).

    Replacing ``path`` removes everything in it: it must hold no input file or
    directory, nor the current directory; and it must not be inside an input
    directory (whose files the run reads).
    """
    final = os.path.realpath(path)

    def within(item, directory):
        return os.path.commonpath([item, directory]) == directory

    for item in [*inputs, *input_dirs]:
        if within(os.path.realpath(item), final):
            raise BadInputError(f"{path}: holds the input {item}; refusing to replace it (choose another -o)")
    for directory in input_dirs:
        if within(final, os.path.realpath(directory)):
            raise BadInputError(f"{path}: refusing to write into the input directory {directory}")
    if os.path.isdir(final) and within(os.path.realpath(os.getcwd()), final):
        raise BadInputError(f"{path}: holds the current directory; refusing to replace it")


def _remove_tree(path, attempts=10):
    """Remove a directory tree, again if a worker still wrote into it meanwhile."""
    import shutil
    import time

    for _ in range(attempts):
        try:
            shutil.rmtree(path)
            return
        except OSError:  # also FileNotFoundError: a file a worker renamed while the tree was read
            if not os.path.lexists(path):
                return
            time.sleep(0.1)
    log.warning("%s: could not remove this temporary directory", path)


def _check_client(client):
    """``client`` must be None or a dask.distributed Client (anything with ``compute`` and ``scatter``)."""
    if client is not None and not (hasattr(client, "compute") and hasattr(client, "scatter")):
        raise BadInputError(f"client={_describe_value(client)}: must be a dask.distributed.Client or None")


def _current_client():
    """The current dask.distributed client, if Dask uses one; else None (Dask's local scheduler)."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    try:
        return distributed.get_client()
    except ValueError:  # no client
        return None


def _share(client, obj, name):
    """``obj`` for many Dask tasks, sent once: scattered to every worker, or one graph key."""
    import uuid

    import dask

    if client is not None:
        return client.scatter(obj, broadcast=True, hash=False)
    return dask.delayed(obj, name=f"{name}-{uuid.uuid4().hex}")


def _compute(client, collection, progress=False):
    """Compute a Dask collection (or a list of them) on ``client``, or on Dask's own scheduler.

    A worker that dies becomes a one-line RuntimeError; whatever still runs
    after a failure is cancelled.
    """
    import dask

    if client is None:
        if not progress:
            return dask.compute(collection)[0]
        from dask.diagnostics import ProgressBar

        with ProgressBar(minimum=_PROGRESS_DELAY, out=sys.stderr):
            return dask.compute(collection)[0]
    futures = client.compute(collection)
    with _dask_errors(client, futures):
        if progress:
            _progress_bar(futures)
        return client.gather(futures)


def _compute_each(client, collections, progress=False):
    """Yield the results of a list of Dask collections in the order they finish.

    What `_compute` does for a list, but each result is handed over as soon
    as it is ready, so that the caller's work on it overlaps the rest.
    """
    if client is None:
        yield from _compute(client, collections, progress)
        return
    from distributed import as_completed

    futures = client.compute(collections)
    with _dask_errors(client, futures):
        if progress:
            _progress_bar(futures)
        # with_results: each result is fetched as soon as its task ends, while
        # the caller works on the one before.
        for _, result in as_completed(futures, with_results=True):
            if isinstance(result, BaseException):  # a cancelled task's error comes as its result
                raise result
            yield result


@contextlib.contextmanager
def _dask_errors(client, futures):
    """One-line errors for the deaths of workers while ``futures`` run; they are cancelled at the end."""
    try:
        yield
    except Exception as exc:
        if type(exc).__name__ == "KilledWorker":  # distributed.KilledWorker, multi-line
            raise RuntimeError("a Dask worker died (out of memory, or killed) while running "
                               f"{_one_line(exc)}") from None
        if type(exc).__name__ == "FutureCancelledError":  # what a dead worker's task can also give
            raise RuntimeError(f"a Dask worker died or the scheduler cancelled the run: {_one_line(exc)}") from None
        raise
    finally:
        client.cancel(futures)


def _progress_bar(futures):
    """Dask's text progress bar of ``futures`` on stderr, once they take over 2 s."""
    from distributed import wait
    from distributed.diagnostics.progressbar import TextProgressBar

    try:
        wait(futures, timeout=_PROGRESS_DELAY)
        return
    except TimeoutError:
        pass
    with contextlib.redirect_stdout(sys.stderr):  # it writes to sys.stdout
        TextProgressBar(futures if isinstance(futures, list) else [futures])


def _progress(items, enabled, unit):
    """``items`` with a tqdm bar on stderr when enabled (shown only after 2 s)."""
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, unit=unit, delay=_PROGRESS_DELAY, file=sys.stderr, leave=False)


@contextlib.contextmanager
def _row_progress(paths, enabled):
    """A tqdm bar of the rows of ``paths`` on stderr (None when not enabled or without tqdm).

    The total counts the rows of the FITS and Parquet files, read from their
    headers; the bar shows once the run has lasted 2 s.
    """
    try:
        from tqdm import tqdm
    except ImportError:
        enabled = False
    if not enabled:
        yield None
        return
    total = 0
    for path in paths:
        try:
            if table_format_of(path) == "parquet":
                with _open_parquet(path) as parquet:
                    total += parquet.metadata.num_rows
            else:
                total += _FitsRows(path).n_rows
        except BadInputError:  # other formats: no total; errors come with the real read
            total = None
            break
    with tqdm(total=total, unit=" rows", unit_scale=True, delay=_PROGRESS_DELAY, file=sys.stderr,
              leave=False) as bar:
        yield bar


#: Local worker processes per core that --jobs may start (at least 4 in all).
MAX_JOBS_PER_CORE = 4


def max_local_jobs() -> int:
    """The most local worker processes `dask_client` starts: `MAX_JOBS_PER_CORE` per core, at least 4."""
    return max(4, MAX_JOBS_PER_CORE * (os.cpu_count() or 1))


def _check_jobs(jobs: int) -> int:
    """A number of local workers, refused beyond `max_local_jobs` (each is a process:
    thousands would exhaust the memory)."""
    jobs = _check_int("jobs", jobs, lo=1)
    if jobs > max_local_jobs():
        raise BadInputError(f"jobs={jobs}: {_too_many_jobs()}")
    return jobs


def _too_many_jobs() -> str:
    return f"at most {max_local_jobs()} local worker processes on this machine ({MAX_JOBS_PER_CORE} per core)"


@contextlib.contextmanager
def dask_client(jobs: int = None, scheduler: str = None):
    """A `dask.distributed.Client` for a parallel run, closed on exit.

    Parameters
    ----------
    jobs : int, optional
        Start a local cluster of this many single-threaded worker processes
        (default: one per core).
    scheduler : str, optional
        Instead, connect to the ``dask.distributed`` scheduler at this address
        (e.g. ``tcp://10.0.0.5:8786``, or a cluster of dask-jobqueue).

    Raises
    ------
    BadInputError
        When Dask is not installed (the ``dask`` extra), both options are
        given, or the scheduler cannot be reached.
    """
    if jobs is not None:
        jobs = _check_int("jobs", jobs, lo=0)  # 0: one per core, as None
    scheduler = _check_str("scheduler", scheduler, optional=True)
    if jobs and scheduler:
        raise BadInputError("--jobs and --scheduler: give one or the other")
    try:
        import dask
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise BadInputError("parallel runs need Dask: pip install 'transient_masks[dask]'") from None
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise BadInputError(f"--scheduler {scheduler}: cannot connect ({_one_line(exc)})") from None
        with client:
            yield client
        return
    jobs = _check_jobs(int(jobs or os.cpu_count() or 1))
    # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which sends every
    # large numpy temporary through mmap and page faults: binning and filtering
    # run 2-3x slower.  These workers keep glibc's default (one thread each still).
    environ = {key: value for key, value in dask.config.get("distributed.nanny.pre-spawn-environ").items()
               if key != "MALLOC_TRIM_THRESHOLD_"}
    # Dask's statistical profiler samples each worker's stack every 10 ms: 5-7% of
    # the time of binning or of an SE image, for a profile nobody looks at here.
    # Its event-loop health checks (50 a second), system monitor (for the
    # dashboard) and memory monitor (10 a second) cost an idle 2-worker cluster
    # 8% of a core; less often, 1.5%.  Memory is still checked every second.
    # No dashboard; its HTTP server (metrics) on a free local port, never a busy 8787.
    # The workers' scratch space (and its lock files) in a directory of this run,
    # removed at the end, rather than a dask-scratch-space left in $TMPDIR.
    scratch = tempfile.mkdtemp(prefix="transient_masks-dask-")
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ,
                              "distributed.worker.profile.enabled": False,
                              "distributed.admin.tick.interval": "1s",
                              "distributed.admin.system-monitor.interval": "2s",
                              "distributed.worker.memory.monitor-interval": "1s",
                              "temporary-directory": scratch}), \
                LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                             dashboard_address="127.0.0.1:0", local_directory=scratch,
                             scheduler_kwargs={"dashboard": False}) as cluster, Client(cluster) as client:
            yield client
    finally:
        _remove_tree(scratch)


def _add_parallel_arguments(parser, modes=None):
    """Add --jobs, --scheduler and --quiet (also used by other commands, e.g. des_background)."""
    group = parser.add_argument_group("parallel runs on Dask (--input, --gather)")
    group.add_argument("--jobs", type=_jobs_int, metavar="N",
                       help="run on a local Dask cluster of N worker processes (needs the dask extra)")
    group.add_argument("--scheduler", type=_named, metavar="ADDRESS",
                       help="run on the dask.distributed scheduler at ADDRESS (e.g. tcp://host:8786)")
    group.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    return group


def _parallel_client(args):
    """Context manager: the Dask client of --jobs / --scheduler, or None (a run in this process)."""
    if not (args.jobs or args.scheduler):
        return contextlib.nullcontext(None)
    return _command_client(args.jobs, args.scheduler)


@contextlib.contextmanager
def _command_client(jobs, scheduler):
    """`dask_client` for a command: Dask's own log lines stay off its stderr.

    Dask logs what a cluster does at INFO and WARNING, and after an interrupt
    its shutting-down workers and event loop print cancelled tasks and
    asyncio tracebacks; a command reports its own outcome in one line, so
    only Dask's errors are shown, here and on the workers of ``--jobs``.
    """
    with contextlib.ExitStack() as stack:
        try:
            import dask
            import distributed  # noqa: F401  (sets its loggers' levels on import: before ours)
        except ImportError:  # dask_client says which extra to install
            pass
        else:
            # Critical only on the workers: a task's failure is logged there (a
            # "Compute Failed" block with its traceback) and raised here anyway.
            environ = {**dask.config.get("distributed.nanny.pre-spawn-environ"),
                       "DASK_LOGGING__DISTRIBUTED": "critical"}
            stack.enter_context(dask.config.set({"distributed.nanny.pre-spawn-environ": environ}))
            for name, level in (("distributed", logging.ERROR), ("asyncio", logging.CRITICAL)):
                logger = logging.getLogger(name)
                stack.callback(logger.setLevel, logger.level)
                logger.setLevel(level)
        gate = stack.enter_context(_SignalGate())  # last out: the handlers as they were (a SIGTERM
        gate.hold()                                   # held while the cluster stopped is dropped)
        client = stack.enter_context(dask_client(jobs, scheduler))
        stack.callback(gate.hold)  # first out: the cluster stops whole
        gate.release()  # a SIGTERM held while the cluster started acts now
        yield client


class _SignalGate:
    """Shields a Dask cluster's start and stop from SIGINT and SIGTERM.

    An interrupt in the middle of LocalCluster's start leaves half-started
    workers that Dask reports at exit with tracebacks.  While the cluster
    starts or stops, SIGTERM is held (it acts once the cluster is up, which is
    then stopped cleanly; it is dropped once the run is over) and SIGINT is
    ignored: the worker processes started meanwhile inherit that, so a Ctrl-C
    on the terminal, which signals the whole process group, reaches this
    process only and never kills a worker mid-task with a traceback of its
    own (a Ctrl-C during the second or two of the start is lost; the next
    one stops the run).  Outside the main thread (no signal handlers there)
    it does nothing.
    """

    def __init__(self):
        self.active = threading.current_thread() is threading.main_thread()
        self.holding = False
        self.pending = False  # a SIGTERM held
        self.previous = {}  # signal -> the handler before

    def __enter__(self):
        import signal

        if self.active:
            self.previous = {signal.SIGINT: signal.getsignal(signal.SIGINT),
                             signal.SIGTERM: signal.signal(signal.SIGTERM, self._handle_term)}
        return self

    def __exit__(self, *exc):
        import signal

        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        return False

    def _handle_term(self, signum, frame):
        if self.holding:
            self.pending = True
        else:
            self._terminate()

    def _terminate(self):
        import signal

        handler = self.previous.get(signal.SIGTERM)
        if callable(handler):
            handler(signal.SIGTERM, None)
        elif handler != signal.SIG_IGN:
            raise _Terminated

    def hold(self):
        import signal

        if self.active:
            self.holding = True
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    def release(self):
        """Stop shielding: a SIGTERM held acts now."""
        import signal

        if self.active:
            signal.signal(signal.SIGINT, self.previous[signal.SIGINT])
            self.holding = False
            if self.pending:
                self.pending = False
                self._terminate()


def _show_progress(args) -> bool:
    """Progress bars: on a terminal, without --quiet."""
    return not args.quiet and sys.stderr.isatty()


def _run_filter_many(args) -> int:
    """--input with several files, a pattern or a directory: an output directory."""
    if args.output is not None:
        output = args.output
    elif len(args.input) == 1 and os.path.isdir(args.input[0]):
        output = os.path.basename(os.path.normpath(args.input[0])) + "_filtered"
    else:
        raise BadInputError("several inputs: name the output directory with -o")
    expand_inputs(args.input)  # a pattern that matches nothing fails before the masks are made
    _run_inputs(argparse.Namespace(**{**vars(args), "input": None}))  # the epoch table, the count maps
    masks = TransientMasks(args.counts, epochs=args.epochs_file, keep_no_epoch=args.keep_no_epoch,
                           **_mask_options(args))
    with _parallel_client(args) as client:
        counts = filter_files(args.input, output, masks, client=client, expnum_col=args.expnum_col,
                              ccdnum_col=args.ccdnum_col, x_col=args.x_col, y_col=args.y_col,
                              drop_bad=args.drop_bad, table_format=args.table_format,
                              overwrite=args.overwrite, progress=_show_progress(args))
    demo = " [masks from SYNTHETIC DEMO DATA]" if masks.maps.demo else ""
    print(f"{' '.join(args.input)}: {counts.summary()}; wrote {output}{os.sep}{demo}", file=sys.stderr)
    return 0


# ---- Plotting

# Figures are built with matplotlib.figure.Figure (never pyplot): nothing needs a
# display, no global state leaks, and `import transient_masks` stays fast because
# matplotlib is imported only inside these functions.

_PIXEL_MM = 0.015  # DECam pixels are 15 um
_CCD_WIDTH_MM = CCD_NX * _PIXEL_MM  # 30.72 mm along x
_CCD_HEIGHT_MM = CCD_NY * _PIXEL_MM  # 61.44 mm along y
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

    path = _check_path("path", path, optional=True) or data_path(CCDS_FILENAME)
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


def _epoch_mask_for(epoch_mask_or_epoch, maps, fp_rate, x_bin, y_bin, floor, method=DEFAULT_METHOD):
    """An EpochMask as given, or built for an epoch name from the count maps."""
    if not isinstance(epoch_mask_or_epoch, str):
        given = [name for name, value, default in (
            ("maps", maps, None), ("fp_rate", fp_rate, DEFAULT_FP_RATE), ("x_bin", x_bin, 1),
            ("y_bin", y_bin, 1), ("floor", floor, DEFAULT_FLOOR), ("method", method, DEFAULT_METHOD))
            if value is not default and not (isinstance(value, (int, float, str, np.number)) and value == default)]
        if given:  # an EpochMask is made already: these would be ignored
            raise BadInputError(f"{', '.join(given)}: only for an epoch name; an EpochMask is drawn as it was made")
        return _check_epoch_mask(epoch_mask_or_epoch)
    _check_options(fp_rate, x_bin, y_bin, floor)
    maps = maps if maps is not None else CountMaps()
    epoch = epoch_mask_or_epoch
    if epoch not in maps.epochs:
        raise BadInputError(
            f"{maps.path}: no epoch {epoch!r} in the count maps (they have {', '.join(maps.epochs) or 'none'})"
        )
    return EpochMask.from_maps(maps, epoch, fp_rate=fp_rate, x_bin=x_bin, y_bin=y_bin, floor=floor,
                               method=method)


def _method_label(epoch_mask) -> str:
    """Which method made a mask, in words."""
    method = getattr(epoch_mask, "method", DEFAULT_METHOD)
    return "multiscale method" if method == "multiscale" else "DES rule"


def _check_epoch_mask(epoch_mask):
    """An argument that must be an epoch mask (an `EpochMask`, or any object with its arrays)."""
    needed = ("counts", "mask", "live", "threshold", "cell_size", "area_fraction", "transient_fraction")
    if not all(hasattr(epoch_mask, name) for name in needed):
        raise BadInputError(f"epoch_mask={_describe_value(epoch_mask)}: must be an EpochMask")
    return epoch_mask


def _check_dpi(dpi) -> float:
    dpi = _check_real("dpi", dpi)
    if not 1 <= dpi <= 10_000:
        raise BadInputError(f"dpi={dpi:g}: must be in 1..10000")
    return dpi


def _describe(epoch_mask) -> str:
    """One line with the method and options a mask was built with (whatever it records)."""
    parts = [_method_label(epoch_mask)]
    floor_used = getattr(epoch_mask, "method", DEFAULT_METHOD) == "des"
    for name, fmt in (("fp_rate", "{:g}"), ("x_bin", "{}"), ("y_bin", "{}"), ("floor", "{}")):
        if name == "floor" and not floor_used:
            continue
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
        # the axes box has the CCD's 1:2 shape on the page, so the colour bar sits beside the image
        height = 0.80
        width = height * figure.get_figheight() / figure.get_figwidth() / 2
        self.ax = ax = figure.add_axes((0.11, 0.065, width, height))
        # ticks and label on the colour bar's left leave its right side to the threshold mark
        self.cax = cax = figure.add_axes((0.11 + width + 0.075, 0.065, 0.025, height))
        ax.set_xlim(0.5, CCD_NX + 0.5)
        ax.set_ylim(0.5, CCD_NY + 0.5)
        ax.set_aspect("equal")
        ax.set_xticks(np.arange(0, CCD_NX + 1, 512))
        ax.set_yticks(np.arange(0, CCD_NY + 1, 512))
        ax.set_xlabel("x [pixel]")
        ax.set_ylabel("y [pixel]")
        # amplifier boundary: S CCDs have amp A on the right (x 1025-2048), N CCDs on the left
        # (a tick above the CCD, not a line across it: defects often sit on that boundary)
        ax.plot([CCD_NX / 2 + 0.5] * 2, [1.0, 1.025], transform=ax.get_xaxis_transform(), color="0.3",
                lw=1.0, clip_on=False)
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
                               interpolation="none", aspect="equal", gid="counts")
        self.overlay = ax.imshow(np.ma.masked_all(shape), origin="lower", extent=extent,
                                 cmap=ListedColormap([_MASK_RGBA]), vmin=0, vmax=1, interpolation="none",
                                 aspect="equal", gid="mask")
        self.outline = LineCollection([], colors=[_MASK_EDGE], linewidths=0.4, gid="mask_outline", zorder=3)
        ax.add_collection(self.outline, autolim=False)
        self.colorbar = figure.colorbar(self.image, cax=cax, extend="max", ticklocation="left")
        self.colorbar.set_label("transients per cell")
        self.threshold_line = cax.axhline(0, color=_MASK_EDGE, lw=2)
        self.threshold_text = cax.annotate("threshold", (1.0, 0), xycoords=cax.get_yaxis_transform(),
                                           xytext=(8, 0), textcoords="offset points", va="center",
                                           ha="left", fontsize=9, color=_MASK_EDGE, weight="bold",
                                           arrowprops=dict(arrowstyle="-", color=_MASK_EDGE, lw=1))
        self.half_note = ax.text(0.75, 0.5, "amp A unstable:\nmasked entirely", transform=ax.transAxes,
                                 ha="center", va="center", fontsize=12, color="white", weight="bold",
                                 bbox=dict(boxstyle="round", fc=_MASK_EDGE, ec="none", alpha=0.85), zorder=5)
        from matplotlib.patches import Patch

        self.legend = figure.legend(
            handles=[Patch(facecolor=_MASK_RGBA, edgecolor=_MASK_EDGE,
                           label="masked cell\n(count > threshold)" if getattr(epoch_mask, "method", "des") == "des"
                           else "masked cell\n(in a detected defect)")],
            loc="lower right", bbox_to_anchor=(0.98, 0.065 + height), fontsize=9, frameon=False)
        self.dead_note = ax.text(0.5, 0.5, "no transients\n(dead CCD)", transform=ax.transAxes, ha="center",
                                 va="center", fontsize=22, color="0.25", gid="dead")

    def draw(self, ccdnum: int):
        """Show CCD ``ccdnum`` on the page; returns the figure."""
        ccdnum = _check_int("ccdnum", ccdnum, 1, N_CCD)
        index = ccdnum - 1
        epoch_mask = self.epoch_mask
        threshold = float(epoch_mask.threshold[index])
        live = bool(epoch_mask.live[index])
        epoch = getattr(epoch_mask, "epoch", None) or "?"
        amps = ("B", "A") if ccdnum <= HALF_MASKED_CCD else ("A", "B")
        for label, amp in zip(self.amp_labels, amps):
            label.set_text(f"amp {amp}")
        title = f"CCD {ccdnum} ({DETPOS[ccdnum]})    epoch {epoch}    {_method_label(epoch_mask)}"
        word = "threshold" if getattr(epoch_mask, "method", "des") == "des" else "1-cell threshold"
        if live:
            title += (
                f"\n{word} {threshold:g} counts/cell    area masked {100 * self.area[index]:.2f}%"
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
        self.legend.set_visible(live)
        # a dead CCD shows no data at all (not noise): its artists hold none
        counts = epoch_mask.counts[index] if live else np.zeros(self.image.get_array().shape)
        mask = np.asarray(epoch_mask.mask[index], bool) if live else np.zeros(counts.shape, bool)
        vmax = max(3 * threshold, 1.0) if live else 1.0
        self.image.set_data(counts)
        self.image.set_clim(0, vmax)
        self.overlay.set_data(np.ma.masked_array(np.ones(mask.shape), mask=~mask))
        self.outline.set_segments(_mask_outline(mask, self.extent))
        if live:
            self.threshold_line.set_ydata([threshold, threshold])
            self.threshold_text.xy = (1.0, threshold)
            self.threshold_text.set_text(f"{word} {threshold:g}")
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
    >>> mask = EpochMask.from_maps(CountMaps(data_path(DEMO_COUNTS_FILENAME)), "Y2E1")
    >>> plot_ccd(mask, 46).savefig("n15.png")
    """
    _check_epoch_mask(epoch_mask)
    ccdnum = _check_int("ccdnum", ccdnum, 1, N_CCD)
    if figure is not None and not (hasattr(figure, "clear") and hasattr(figure, "add_subplot")):
        raise BadInputError(f"figure={_describe_value(figure)}: must be a matplotlib Figure or None")
    return _CcdPage(epoch_mask, figure).draw(ccdnum)


def plot_epoch(epoch_mask_or_epoch, pdf_file: str, *, maps=None, fp_rate: float = DEFAULT_FP_RATE,
               x_bin: int = 1, y_bin: int = 1, floor: str = DEFAULT_FLOOR, method: str = DEFAULT_METHOD,
               overwrite: bool = False, ccdnums=None):
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
        built from ``maps`` with ``fp_rate``, ``x_bin``, ``y_bin``, ``floor``, ``method``.
    pdf_file : str
        The PDF to write (atomically).
    maps : CountMaps, optional
        Count maps for an epoch name; default ``CountMaps()``.
    fp_rate, x_bin, y_bin, floor, method
        Masking options, as for :class:`EpochMask` (used with an epoch name).
    overwrite : bool
        Whether an existing ``pdf_file`` may be replaced.
    ccdnums : sequence of int, optional
        Draw only these CCDs (in this order); default all 62 in CCDNUM order.

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
    >>> maps = CountMaps(data_path(DEMO_COUNTS_FILENAME))
    >>> mask = plot_epoch("Y2E1", "n15.pdf", maps=maps, ccdnums=[46])
    >>> mask.epoch, mask.mask.shape
    ('Y2E1', (62, 256, 256))
    >>> binned = EpochMask.from_maps(maps, "Y2E1", x_bin=4, y_bin=2)
    >>> mask = plot_epoch(binned, "n15.pdf", ccdnums=[46], overwrite=True)
    """
    from matplotlib.backends.backend_pdf import PdfPages

    pdf_file = _check_path("pdf_file", pdf_file)
    if not pdf_file.lower().endswith(".pdf"):
        raise BadInputError(f"pdf_file={pdf_file!r}: a multipage PDF; name it .pdf")
    if maps is not None and not isinstance(maps, CountMaps):
        raise BadInputError(f"maps={_describe_value(maps)}: must be a CountMaps")
    if ccdnums is None:
        ccdnums = list(range(1, N_CCD + 1))
    else:
        if isinstance(ccdnums, (str, bytes)) or not hasattr(ccdnums, "__iter__"):
            raise BadInputError(f"ccdnums={_describe_value(ccdnums)}: must be a list of CCD numbers")
        ccdnums = [_check_int("ccdnums", c, 1, N_CCD) for c in ccdnums]
        if not ccdnums:
            raise BadInputError(f"ccdnums=[]: give at least one CCD number (1..{N_CCD})")
    epoch_mask = _epoch_mask_for(epoch_mask_or_epoch, maps, fp_rate, x_bin, y_bin, floor, method)
    source = getattr(epoch_mask, "source", None) or (getattr(maps, "path", None) if maps is not None else None)
    inputs = [source] if source else []
    page = _CcdPage(epoch_mask)
    with atomic_output(pdf_file, overwrite=overwrite, inputs=inputs) as tmp:
        with PdfPages(tmp, metadata={"Title": f"transient masks, epoch {getattr(epoch_mask, 'epoch', '')}",
                                     "Creator": f"transient_masks {__version__}"}) as pdf:
            for ccdnum in ccdnums:
                pdf.savefig(page.draw(ccdnum))
    log.info("wrote %s (%d pages)", pdf_file, len(ccdnums))
    return epoch_mask


def plot_methods(first, second, ccdnum: int, *, figure=None):
    """Draw one CCD masked by two methods side by side (e.g. DES rule and multiscale).

    Both panels show the same count map in CCD pixel coordinates, on one
    colour scale (0 to 3 times the DES rule's threshold, or the larger
    threshold of the two), with each mask's cells tinted and outlined; the
    panel titles name the method and give its masked area and transients.

    Parameters
    ----------
    first, second : EpochMask
        Masks of the same counts (same binning).
    ccdnum : int
        CCD number, 1..62.
    figure : matplotlib.figure.Figure, optional
        Figure to draw on (cleared); default a new A4 landscape figure.

    Returns
    -------
    matplotlib.figure.Figure
        Artists carry gids ``counts_0``/``counts_1``, ``mask_0``/``mask_1`` and
        ``mask_outline_0``/``mask_outline_1``.

    Examples
    --------
    >>> maps = CountMaps(data_path(DEMO_COUNTS_FILENAME))
    >>> des = EpochMask.from_maps(maps, "Y6")
    >>> multiscale = EpochMask.from_maps(maps, "Y6", method="multiscale")
    >>> plot_methods(des, multiscale, 46).savefig("n15_methods.png")
    """
    from matplotlib.collections import LineCollection
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    for name, value in (("first", first), ("second", second)):
        try:
            _check_epoch_mask(value)
        except BadInputError:
            raise BadInputError(f"{name}={_describe_value(value)}: must be an EpochMask") from None
    ccdnum = _check_int("ccdnum", ccdnum, 1, N_CCD)
    if figure is not None and not isinstance(figure, Figure):
        raise BadInputError(f"figure={_describe_value(figure)}: must be a matplotlib Figure")
    if first.counts.shape != second.counts.shape:
        raise BadInputError("plot_methods: the two masks must have the same cell grid")
    index = int(ccdnum) - 1
    figure = figure if figure is not None else Figure(figsize=(11.69, 8.27))
    figure.clear()
    thresholds = [float(m.threshold[index]) for m in (first, second) if getattr(m, "method", "des") == "des"]
    thresholds = thresholds or [float(np.nanmax([first.threshold[index], second.threshold[index]]))]
    vmax = max(3 * thresholds[0], 1.0) if np.isfinite(thresholds[0]) else 1.0
    extent = _cell_extent(first)
    height = 0.78
    width = height * figure.get_figheight() / figure.get_figwidth() / 2
    image = None
    for k, epoch_mask in enumerate((first, second)):
        ax = figure.add_axes((0.08 + k * (width + 0.12), 0.1, width, height))
        live = bool(epoch_mask.live[index])
        counts = epoch_mask.counts[index] if live else np.zeros(epoch_mask.counts.shape[1:])
        mask = np.asarray(epoch_mask.mask[index], bool)
        image = ax.imshow(counts, origin="lower", extent=extent, cmap="viridis", vmin=0, vmax=vmax,
                          interpolation="none", aspect="equal", gid=f"counts_{k}")
        ax.imshow(np.ma.masked_array(np.ones(mask.shape), mask=~mask), origin="lower", extent=extent,
                  cmap=ListedColormap([_MASK_RGBA]), vmin=0, vmax=1, interpolation="none", aspect="equal",
                  gid=f"mask_{k}")
        ax.add_collection(LineCollection(_mask_outline(mask, extent), colors=[_MASK_EDGE], linewidths=0.4,
                                         gid=f"mask_outline_{k}", zorder=3), autolim=False)
        ax.set_xlim(0.5, CCD_NX + 0.5)
        ax.set_ylim(0.5, CCD_NY + 0.5)
        ax.set_xticks(np.arange(0, CCD_NX + 1, 512))
        ax.set_yticks(np.arange(0, CCD_NY + 1, 512))
        ax.set_xlabel("x [pixel]")
        ax.set_ylabel("y [pixel]")
        area = 100 * mask.mean()
        total = epoch_mask.counts[index].sum()
        share = 100 * epoch_mask.counts[index][mask].sum() / total if total else 0.0
        ax.set_title(f"{_method_label(epoch_mask)}\n{area:.2f}% of the area, {share:.2f}% of the transients",
                     fontsize=11)
    colorbar_ax = figure.add_axes((0.08 + 2 * width + 0.15, 0.1, 0.015, height))
    figure.colorbar(image, cax=colorbar_ax, extend="max").set_label("transients per cell")
    epoch = getattr(first, "epoch", None) or "?"
    figure.suptitle(f"CCD {ccdnum} ({DETPOS[int(ccdnum)]})    epoch {epoch}    masked cells in magenta",
                    fontsize=13)
    if getattr(first, "demo", False) or getattr(second, "demo", False):
        figure.text(0.98, 0.02, "DEMO DATA (synthetic maps)", fontsize=11, color="red", ha="right",
                    weight="bold", gid="demo")
    return figure


def _write_methods_pdf(maps, epoch, options, ccdnums, path, overwrite):
    """A PDF with a page per CCD: the DES rule and the multiscale method side by side."""
    from matplotlib.backends.backend_pdf import PdfPages

    bad = [c for c in ccdnums if not 1 <= c <= N_CCD]
    if bad:
        raise BadInputError(f"--compare {bad}: CCD numbers must be 1..{N_CCD}")
    masks = [EpochMask.from_maps(maps, epoch, **dict(options, method=method)) for method in METHODS]
    with atomic_output(path, overwrite=overwrite, inputs=[maps.path]) as tmp:
        with PdfPages(tmp, metadata={"Title": f"DES rule and multiscale masks, epoch {epoch}",
                                     "Creator": f"transient_masks {__version__}"}) as pdf:
            for ccdnum in ccdnums:
                pdf.savefig(plot_methods(masks[0], masks[1], ccdnum))
    log.info("wrote %s (%d pages)", path, len(ccdnums))


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

    Each CCD's count map is divided by its own background (the mean count of
    its unmasked cells) so that CCDs of different depth compare; masked cells
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
        True where any cell of an overlay block of about 64 x 64 pixels is
        masked, so that a single masked column stays visible), ``ccd_<ccdnum>``
        (the CCD outline Rectangle) and ``label_<ccdnum>``.

    Examples
    --------
    >>> mask = EpochMask.from_maps(CountMaps(data_path(DEMO_COUNTS_FILENAME)), "Y2E1")
    >>> figure = plot_focal_plane(mask, "y2e1_focal_plane.png")
    """
    from matplotlib import patheffects
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    _check_epoch_mask(epoch_mask)
    path = _check_path("path", path, optional=True)
    vmax = _check_real("vmax", vmax)
    if vmax <= 0:
        raise BadInputError(f"vmax={vmax}: must be positive")
    dpi = _check_dpi(dpi)
    layout = read_ccd_layout(layout_file)
    figure = Figure(figsize=(9.0, 9.2))
    ax = figure.add_axes((0.085, 0.06, 0.78, 0.855))
    cax = figure.add_axes((0.895, 0.2, 0.022, 0.56))
    ax.set_aspect("equal")
    half_x, half_y = _CCD_WIDTH_MM / 2, _CCD_HEIGHT_MM / 2
    # The overlay is shown at about the screen resolution of a CCD: a block is
    # marked when any of its cells is, so that one masked column never vanishes.
    cell_ny, cell_nx = epoch_mask.cell_size
    factor_x, factor_y = max(1, 64 // cell_nx), max(1, 64 // cell_ny)
    background = _ccd_background(epoch_mask)
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
            counts = epoch_mask.counts[index] / background[index]
            # the drawn extent covers the cells the (re-binned) map has
            cells = _cell_extent(epoch_mask)
            drawn = (extent[0], extent[0] + (cells[1] - 0.5) * _PIXEL_MM, extent[2],
                     extent[2] + (cells[3] - 0.5) * _PIXEL_MM)
            image = ax.imshow(counts, origin="lower", extent=drawn, cmap="viridis", vmin=0, vmax=vmax,
                              interpolation="antialiased", aspect="equal", zorder=1)
            image.set_gid(f"counts_{ccdnum}")
            blocks = _block_any(np.asarray(epoch_mask.mask[index], bool), factor_y, factor_x)
            n_y, n_x = blocks.shape
            block_extent = (drawn[0], drawn[0] + n_x * factor_x * cell_nx * _PIXEL_MM, drawn[2],
                            drawn[2] + n_y * factor_y * cell_ny * _PIXEL_MM)
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
        y=0.985, fontsize=12,
    )
    if image is not None:
        colorbar = figure.colorbar(image, cax=cax, extend="max")
        colorbar.set_label("transients per cell / the CCD's mean unmasked cell count")
    else:
        cax.set_visible(False)
    ax.legend(handles=[Patch(facecolor=mask_cmap.colors[0], label="masked"),
                       Patch(facecolor=_DEAD_RGBA, edgecolor="0.3", label="dead CCD (no transients)")],
              loc="lower left", fontsize=8, framealpha=0.9)
    if getattr(epoch_mask, "demo", False):
        ax.text(0.98, 0.98, "DEMO DATA\n(synthetic maps)", transform=ax.transAxes, ha="right", va="top",
                fontsize=14, weight="bold", color="red", gid="demo")
    if path is not None:
        source = getattr(epoch_mask, "source", None)
        _save_figure(figure, path, overwrite=overwrite, dpi=dpi, inputs=[source] if source else [])
    return figure


def _ccd_background(epoch_mask):
    """Each CCD's background for display: the mean count of its unmasked cells.

    The mean, not the median or mode, because those are whole numbers: at the
    low counts of a shallow epoch they would shift whole CCDs by a colour step.
    Masked cells (defects; CCD 31's right half) are left out.  At least 1e-3
    so that a CCD with only masked transients still divides.
    """
    n_ccd = epoch_mask.counts.shape[0]
    counts = epoch_mask.counts.reshape(n_ccd, -1)
    unmasked = ~np.asarray(epoch_mask.mask, bool).reshape(n_ccd, -1)
    total = np.where(unmasked, counts, 0).sum(axis=1)
    cells = unmasked.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        background = np.where(cells > 0, total / np.maximum(cells, 1), 0.0)
    return np.maximum(background, 1e-3)


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
                        y_bin: int = 1, floor: str = DEFAULT_FLOOR, method: str = DEFAULT_METHOD,
                        overwrite: bool = False,
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
    fp_rate, x_bin, y_bin, floor, method
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
    >>> figure = plot_survey_summary(CountMaps(data_path(DEMO_COUNTS_FILENAME)), "survey_summary.png")
    """
    from matplotlib.figure import Figure

    if not isinstance(maps, CountMaps):
        raise BadInputError(f"maps={_describe_value(maps)}: must be a CountMaps")
    path = _check_path("path", path, optional=True)
    _check_options(fp_rate, x_bin, y_bin, floor)
    vmax_percent = _check_real("vmax_percent", vmax_percent)
    if vmax_percent <= 0:
        raise BadInputError(f"vmax_percent={vmax_percent}: must be positive")
    dpi = _check_dpi(dpi)
    epochs = list(maps.epochs)
    if not epochs:
        raise BadInputError(f"{maps.path}: the count maps hold no epoch")
    percent = np.zeros((len(epochs), N_CCD))
    dead = np.zeros((len(epochs), N_CCD), bool)
    totals = []
    demo = bool(getattr(maps, "demo", False))
    for row, epoch in enumerate(epochs):
        epoch_mask = EpochMask.from_maps(maps, epoch, fp_rate=fp_rate, x_bin=x_bin, y_bin=y_bin, floor=floor,
                                         method=method)
        percent[row] = 100 * _ccd_stats(epoch_mask)[0]
        dead[row] = ~np.asarray(epoch_mask.live, bool)
        totals.append((100 * epoch_mask.area_fraction, 100 * epoch_mask.transient_fraction))
        demo = demo or bool(getattr(epoch_mask, "demo", False))

    # inches; a few epochs get taller rows so that the colour bar keeps a readable length
    rows_height, bottom_margin, top_margin = max(0.32 * len(epochs), 1.8), 0.9, 0.75
    figure = Figure(figsize=(15.0, bottom_margin + rows_height + top_margin))
    height = rows_height / figure.get_figheight()
    bottom = bottom_margin / figure.get_figheight()
    ax = figure.add_axes((0.06, bottom, 0.74, height))
    cax = figure.add_axes((0.95, bottom, 0.008, height))
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
    ax.axvline(HALF_MASKED_CCD - 0.5, color="0.2", lw=1.5)  # S | N boundary, after CCD 31
    ax.text(N_CCD - 0.3, -0.6, "  epoch totals (live CCDs)", va="bottom", ha="left", fontsize=8,
            weight="bold", clip_on=False)
    for row, (area_total, transients_total) in enumerate(totals):
        ax.text(N_CCD - 0.3, row, f"  {area_total:5.2f}% of area, {transients_total:5.2f}% of transients",
                va="center", ha="left", fontsize=7.5, clip_on=False)
    for row, col in zip(*np.nonzero(dead)):  # a handful of cells: label them
        ax.text(col, row, "dead", ha="center", va="center", fontsize=5.5, color="0.3")
    # cells beyond the colour scale (CCD 31's half, a failing amplifier) get their value
    for row, col in zip(*np.nonzero(~dead & (percent > vmax_percent))):
        ax.text(col, row, f"{percent[row, col]:.0f}", ha="center", va="center", fontsize=6.5, color="white")
    colorbar = figure.colorbar(image, cax=cax, extend="max")
    colorbar.set_label("% of CCD area masked")
    figure.suptitle(
        f"Masked area per CCD and epoch\n{_describe_options(fp_rate, x_bin, y_bin, floor, method)};"
        f" above {vmax_percent:g}% the value is written in the cell; grey: dead CCD (no transients)",
        x=0.06, ha="left", y=1 - 0.1 / figure.get_figheight(), va="top", fontsize=11,
    )
    if demo:
        figure.text(0.99, 1 - 0.1 / figure.get_figheight(), "DEMO DATA (synthetic maps)", ha="right",
                    va="top", fontsize=12, weight="bold", color="red", gid="demo")
    if path is not None:
        _save_figure(figure, path, overwrite=overwrite, dpi=dpi,
                     inputs=[maps.path] if getattr(maps, "path", None) else [])
    return figure


def _describe_options(fp_rate, x_bin, y_bin, floor, method=DEFAULT_METHOD) -> str:
    if method == "multiscale":
        return f"multiscale method, fp_rate {fp_rate:g}, x_bin {x_bin}, y_bin {y_bin}"
    return f"DES rule, fp_rate {fp_rate:g}, x_bin {x_bin}, y_bin {y_bin}, floor {floor}"


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
    g.add_argument("--compare", nargs="+", type=_ccdnum, metavar="CCDNUM",
                   help="--plot: also write EPOCH_methods.pdf, these CCDs masked by the DES rule and the "
                        "multiscale method side by side (a page each)")


def _run_plot(args) -> int:
    """Run --plot EPOCH or --summary: write the figures into --plot_dir."""
    options = _mask_options(args)
    plot_dir = args.plot_dir
    if not os.path.isdir(plot_dir):
        raise BadInputError(f"--plot_dir {plot_dir}: not a directory")
    inputs = _run_inputs(args)
    maps = CountMaps(args.counts)
    if args.summary:
        stem, pdf_pages = "survey_summary", None
    else:
        if args.plot not in maps.epochs:
            raise BadInputError(
                f"{maps.path}: no epoch {args.plot!r} in the count maps (they have {', '.join(maps.epochs)})"
            )
        stem, pdf_pages = f"{args.plot}_focal_plane", os.path.join(plot_dir, f"{args.plot}_ccds.pdf")
    figures = [os.path.join(plot_dir, f"{stem}.{suffix}") for suffix in ("png", "pdf")]
    outputs = ([pdf_pages] if pdf_pages else []) + figures
    if args.plot and getattr(args, "compare", None):
        outputs.append(os.path.join(plot_dir, f"{args.plot}_methods.pdf"))
    if args.summary and args.defects:
        _defect_format(args.defects)
        outputs.append(args.defects)
    # refuse before any work rather than after half the files are written
    check_outputs(outputs, args.overwrite, inputs + [maps.path])
    if args.summary:
        figure = plot_survey_summary(maps, None, **options)
        if args.defects:
            history = defect_history(maps, **options)
            write_defects(history, args.defects, overwrite=args.overwrite, inputs=[maps.path])
    else:
        epoch_mask = EpochMask.from_maps(maps, args.plot, **options)
        plot_epoch(epoch_mask, pdf_pages, overwrite=args.overwrite)
        figure = plot_focal_plane(epoch_mask)
        if args.compare:
            _write_methods_pdf(maps, args.plot, options, args.compare,
                               os.path.join(plot_dir, f"{args.plot}_methods.pdf"), args.overwrite)
    for path in figures:  # each written file is logged
        _save_figure(figure, path, overwrite=args.overwrite, dpi=150, inputs=inputs + [maps.path])
    demo = " [SYNTHETIC DEMO DATA]" if maps.demo else ""
    what = f"{len(maps.epochs)} epochs" if args.summary else args.plot
    print(f"{what}{demo}: wrote {', '.join(os.path.basename(path) for path in outputs)} in {plot_dir}",
          file=sys.stderr)
    return 0


# ---- Command line


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be a positive integer")
    return value


def _named(text):
    """A file, directory or address option: any text but an empty one."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; give a name")
    return text


def _ccdnum(text):
    """A CCDNUM, 1..62 (--compare)."""
    value = int(text)
    if not 1 <= value <= N_CCD:
        raise argparse.ArgumentTypeError(f"{text}: CCD numbers are 1..{N_CCD}")
    return value


def _chunk_rows(text):
    """--chunk_rows: a positive integer, at most `MAX_CHUNK_ROWS`."""
    value = _positive_int(text)
    if value > MAX_CHUNK_ROWS:
        raise argparse.ArgumentTypeError(f"{text}: at most {MAX_CHUNK_ROWS} rows a chunk")
    return value


def _jobs_int(text):
    """--jobs: a positive integer, at most `max_local_jobs`."""
    value = _positive_int(text)
    if value > max_local_jobs():
        raise argparse.ArgumentTypeError(f"{text}: {_too_many_jobs()}")
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


def _add_mask_options(parser):
    """Add the options that choose the count maps, epochs and masking rule.

    Shared by every command that builds masks (this module's modes and
    ``des_background``); `_mask_options` turns them into `TransientMasks`
    keywords.
    """
    group = parser.add_argument_group("masking options")
    group.add_argument("--counts", type=_named, metavar="FILE",
                       help=f"DES count-map file (default: {REAL_COUNTS_FILENAME} beside the module "
                            f"or in the working directory, else the synthetic demo maps)")
    group.add_argument("--epochs_file", type=_named, metavar="FILE",
                       help=f"DES epoch table (default: the shipped {EPOCHS_FILENAME})")
    group.add_argument("--fp_rate", type=float, default=DEFAULT_FP_RATE,
                       help="false-positive probability per cell of a clean CCD (default %(default)g)")
    group.add_argument("--x_bin", "--x_shrink", type=_positive_int, default=1,
                       help="sum this many cells along x before masking (a divisor of 256; default 1; "
                            "--x_shrink is its DES name)")
    group.add_argument("--y_bin", "--y_shrink", type=_positive_int, default=1,
                       help="sum this many cells along y before masking (a divisor of 256; default 1; "
                            "--y_shrink is its DES name)")
    group.add_argument("--floor", choices=FLOORS, default=DEFAULT_FLOOR,
                       help="DES rule: threshold floor is twice this statistic of a CCD's cells; 'mean' "
                            "reproduces the published DES masks (default %(default)s)")
    group.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                       help="masking method: 'des', the published DES rule (cell by cell), or "
                            "'multiscale', structures of every size against a background model "
                            "(default %(default)s)")
    return group


def _mask_options(args) -> dict:
    """`EpochMask` / `TransientMasks` keywords from the options of `_add_mask_options`."""
    return {"fp_rate": args.fp_rate, "x_bin": args.x_bin, "y_bin": args.y_bin, "floor": args.floor,
            "method": args.method}


def _add_mask_arguments(parser, modes):
    """Add the --epoch and --input modes, the masking options and the output options."""
    modes.add_argument("--epoch", metavar="EPOCH",
                       help="write the full-resolution masks of this epoch (e.g. Y2E1)")
    modes.add_argument("--input", metavar="TABLE", nargs="+",
                       help="write a copy of this event table without the events in masked regions; "
                            "several tables, glob patterns or a dataset directory: one output each, "
                            "in the directory -o")
    group = _add_mask_options(parser)
    group.add_argument("-o", "--output", metavar="FILE",
                       help="output file (default: transient_masks_EPOCH.fits.fz for --epoch, "
                            "STEM_filtered.EXT in the working directory for --input, "
                            "transient_maps.fits.gz for --gather)")
    group.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    group.add_argument("--no-compress", dest="compress", action="store_false",
                       help="--epoch: write plain FITS (about 520 MB) instead of tile-compressed (about 1 MB)")
    group.add_argument("--masked_value", type=_masked_value, default=1, metavar="VALUE",
                       help="--epoch: value of masked pixels, a number or a DES mask bit name such "
                            "as SUSPECT, so the mask can be OR-ed into a DES bmask (default 1)")
    group.add_argument("--defects", type=_named, metavar="FILE",
                       help="--epoch: also write the table of masked defects (ECSV or FITS, by suffix); "
                            "--summary: the survey's defect history (each defect once, with its epochs)")
    group.add_argument("--regions", type=_named, metavar="DIR",
                       help="--epoch: also write DS9 region files of the defects, one per CCD, in CCD "
                            "pixel coordinates, into this directory")
    group.add_argument("--keep_no_epoch", "--default", action="store_true",
                       help="--input: keep events whose EXPNUM is in no epoch (default: drop them; "
                            "--default is its DES name)")
    group.add_argument("--drop_bad", action="store_true",
                       help=f"--input: drop bad rows ({_BAD_ROW}) instead of stopping with an "
                            "error naming them")
    group.add_argument("--format", metavar="FORMAT", dest="table_format",
                       help="--input, --gather: astropy table format of the input tables (default: by "
                            "extension); an output takes it too, unless its extension names another")
    for role, default in DEFAULT_COLUMNS.items():
        group.add_argument(f"--{role}_col", default=default, metavar="NAME",
                           help=f"--input, --gather: {role} column (default %(default)s"
                                + ("; falls back to X_IMAGE/Y_IMAGE or X/Y)" if role in "xy" else ")"))


def _run_inputs(args) -> list:
    """Check the input files named on the command line before any work; return them.

    The event table and the epoch table are read or checked here, before the
    count maps (whose default may log the demo-data warning), so a bad input
    gives one line; the count-map file is checked by `CountMaps`.  Every file
    returned is refused as an output of the run, even with --overwrite.
    """
    inputs = []
    if getattr(args, "input", None) is not None:
        # filter_file reads a gzip table through once itself: not twice here
        inputs.append(check_input(args.input, "event table", whole_gzip=False))
    if args.epochs_file is not None:
        read_epochs(args.epochs_file)
        inputs.append(args.epochs_file)
    if args.counts is not None:
        inputs.append(args.counts)
    return inputs


def _output_name(args, default: str) -> str:
    """-o if given (an empty -o is refused by check_output, not taken for the default)."""
    return default if args.output is None else args.output


def _run_epoch(args) -> int:
    if not args.epoch.strip():
        raise BadInputError("--epoch: empty epoch name (e.g. --epoch Y2E1)")
    inputs = _run_inputs(args)
    output = _output_name(args, f"transient_masks_{args.epoch}{'.fits.fz' if args.compress else '.fits'}")
    fixed_outputs = [output] + ([args.defects] if args.defects else [])
    _check_fits_name(output, "masks")
    if args.defects:
        _defect_format(args.defects)
    check_outputs(fixed_outputs, args.overwrite, inputs)
    if args.regions is not None and not os.path.isdir(args.regions):
        raise BadInputError(f"--regions {args.regions}: not a directory")
    maps = CountMaps(args.counts)
    mask = EpochMask.from_maps(maps, args.epoch, **_mask_options(args))
    # The region files are named after the CCDs with defects: checked now, still before any write.
    regions = [path for _, path in _region_files(mask.defects, args.regions)] if args.regions else []
    check_outputs([output, *fixed_outputs[1:], *regions], args.overwrite, inputs + [maps.path])
    mask.write_masks(output, compress=args.compress, masked_value=args.masked_value,
                     overwrite=args.overwrite, inputs=inputs)
    if args.defects:
        write_defects(mask.defects, args.defects, overwrite=args.overwrite, inputs=inputs + [maps.path])
    if args.regions:
        write_regions(mask.defects, args.regions, overwrite=args.overwrite)
    demo = " [SYNTHETIC DEMO DATA]" if mask.demo else ""
    print(f"{args.epoch}{demo}: {100 * mask.area_fraction:.2f}% of the live-CCD area and "
          f"{100 * mask.transient_fraction:.2f}% of the transients masked; wrote {output}",
          file=sys.stderr)
    return 0


def _run_filter(args) -> int:
    if _several_inputs(args.input):  # see "Parallel runs (Dask)"
        return _run_filter_many(args)
    args.input = args.input[0]  # one table, as before
    if args.jobs or args.scheduler:
        log.info("%s: one input file is one task; filtering it here, without Dask", args.input)
    inputs = _run_inputs(args)
    stem, ext = os.path.basename(args.input), _suffix(os.path.basename(args.input))
    output = _output_name(args, f"{stem[: len(stem) - len(ext)]}_filtered{ext}")
    check_outputs([output], args.overwrite, inputs)
    # an unknown output format fails before the work
    table_format_of(output, _output_format(output, args.table_format))
    masks = TransientMasks(args.counts, epochs=args.epochs_file, keep_no_epoch=args.keep_no_epoch,
                           **_mask_options(args))
    counts = filter_file(args.input, output, masks, expnum_col=args.expnum_col,
                         ccdnum_col=args.ccdnum_col, x_col=args.x_col, y_col=args.y_col,
                         drop_bad=args.drop_bad, table_format=args.table_format,
                         overwrite=args.overwrite)
    demo = " [masks from SYNTHETIC DEMO DATA]" if masks.maps.demo else ""
    print(f"{args.input}: {counts.summary()}; wrote {output}{demo}", file=sys.stderr)
    return 0


#: Former modes that are commands of their own now: option -> the command to use.
_MOVED_MODES = {
    "simulate": "transient_sim.py CATALOG --epochs ... (console script transient-sim)",
    "background": "des_background.py --info ... --se_index ... (console script des-background)",
}


def _add_moved_modes(parser, modes):
    """Accept the former --simulate and --background modes, to point to their commands."""
    modes.add_argument("--simulate", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    modes.add_argument("--background", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def _run_moved(args) -> int:
    mode = next(name for name in _MOVED_MODES if getattr(args, name, None) is not None)
    raise BadInputError(f"--{mode} is a command of its own now: {_MOVED_MODES[mode]}")


class _ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit code 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {_printable(message)} (see --help)\n")


class _Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so that every ``finally`` runs."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def run_cli(parser: argparse.ArgumentParser, run, argv=None, prog: str = None) -> int:
    """Parse ``argv``, run ``run(args)`` and turn the outcome into an exit code.

    The one place where exceptions become exit codes, shared by the commands of
    transient_masks, transient_sim and des_background: 0 done (or what ``run``
    returns), 2 bad input or usage (`BadInputError`, argparse errors: one line
    on stderr), 130 interrupted (SIGINT), 143 terminated (SIGTERM), 1 an
    unexpected failure (one line naming the exception).  Temporary outputs are
    removed on every path (`atomic_output`).  The library loggers of the
    project's modules are shown on stderr while ``run`` runs, but for the
    records flagged `_AFTER_SUCCESS` and the warnings of other libraries,
    shown at the end of a run that ended without an error.
    """
    import signal

    prog = prog or parser.prog
    if argv is not None:  # (a str would be split into one-letter arguments)
        given = argv
        argv = list(argv) if hasattr(argv, "__iter__") and not isinstance(argv, (str, bytes)) else None
        if argv is None or not all(isinstance(arg, str) for arg in argv):
            raise BadInputError(f"argv={_describe_value(given)}: must be a list of str (the command-line "
                                "arguments) or None")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 for --help
        return exc.code
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter(f"{prog}: %(message)s"))
    held = _HeldRecords()  # notices for a run that succeeds (the demo maps' warning)
    handler.addFilter(held)
    loggers = [logging.getLogger(name) for name in ("transient_masks", "transient_sim", "des_background")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        # Other libraries' warnings (astropy's about a file it reads) are held
        # too, and said at the end as one line each: a bad input gets its
        # one-line error alone (under pytest's filters they still raise).
        # astropy's logger takes over warnings.showwarning when imported: first.
        import astropy  # noqa: F401

        with warnings.catch_warnings(record=True) as caught:
            code = run(args)
        for record in held.held:
            handler.emit(record)
        for text in dict.fromkeys(f"{_one_line(item.message)} [{item.category.__name__}]" for item in caught):
            log.warning("%s", text)
        return code
    except BadInputError as exc:
        print(f"{prog}: error: {_printable(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # also _Terminated; its message, if any, says what was kept
        what = "terminated" if isinstance(exc, _Terminated) else "interrupted"
        print(f"{prog}: {what}; {_printable(exc) or 'no output written'}", file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    except Exception as exc:  # an unexpected failure: one line too, and exit 1
        print(f"{prog}: unexpected failure: {type(exc).__name__}: {_printable(exc)}", file=sys.stderr)
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        for logger in loggers:
            logger.removeHandler(handler)


#: Each mode: (the args attribute that selects it, the function that runs it).
_MODES = [
    ("epoch", "_run_epoch"),
    ("input", "_run_filter"),
    ("gather", "_run_gather"),
    ("plot", "_run_plot"),
    ("summary", "_run_plot"),
    ("simulate", "_run_moved"),
    ("background", "_run_moved"),
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
    for add_arguments in (_add_mask_arguments, _add_gather_arguments, _add_plot_arguments,
                          _add_moved_modes, _add_parallel_arguments):
        add_arguments(parser, modes)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit code (see `run_cli`)."""

    def run(args):
        mode = next(name for dest, name in _MODES if getattr(args, dest, None) not in (None, False))
        return globals()[mode](args)

    return run_cli(build_parser(), run, argv, prog="transient_masks")


if __name__ == "__main__":
    # Run as a script, this module is __main__; the other modules import it by
    # name, and must get this same module (one BadInputError class, one logger).
    sys.modules.setdefault("transient_masks", sys.modules[__name__])
    sys.exit(main())
