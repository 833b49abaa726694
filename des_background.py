#!/usr/bin/env python
"""Good background pixels of DES single-epoch (SE) CCD images.

A pixel of an SE image is *good background* when, at the coadd pixel nearest to
it on the sky, the coadd segmentation map is 0 (no detected object), the SE and
coadd weights are both positive, the SE and coadd bmasks are both 0 (apart from
bits the user chooses to ignore), and the pixel is outside the transient masks
of its exposure's epoch and CCD (see `transient_masks`).

The command line is `des_background.py` (console script ``des-background``),
for one SE image, a list of them or a whole coadd tile::

    $ ./des_background.py --info DES2122+0001_r_pizza_info.yaml --se_index 3
    $ ./des_background.py --info DES2122+0001_r_pizza_info.yaml --se_index all -o goodbkg/ --jobs 2
    $ ./des_background.py --se_image D00232321_r_c57_immasked.fits.fz[sci] \\
          --se_weight D00232321_r_c57_immasked.fits.fz[wgt] \\
          --se_bmask D00232321_r_c57_immasked.fits.fz[msk] \\
          --coadd_weight DES2122+0001_r.fits.fz[wgt] --coadd_bmask DES2122+0001_r.fits.fz[msk] \\
          --coadd_seg DES2122+0001_r_segmap.fits.fz --ignore_bits SUSPECT,STREAK -o good.fits

For each SE image it writes a uint8 image on the SE pixel grid with the SE
WCS, holding for each pixel the first cut that removed it (`REASONS`; 0 = good
background), named as DES names its files (``D00232321_r_c57_goodbkg.fits``),
and a picture of it on request (``--png``); for the run, a summary table
(ECSV) with a row per SE image.

From Python, `iter_good_background` runs many SE images (the files of a
pizza-cutter info file: `PizzaInfo`), `good_background` reads the files of one,
and `BackgroundPixels` does the work on arrays already in memory:

    >>> import numpy as np
    >>> from astropy.wcs import WCS
    >>> se_wcs = WCS(naxis=2)
    >>> se_wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    >>> se_wcs.wcs.crval = [320.5, 0.5]
    >>> se_wcs.wcs.crpix = [16.5, 32.5]
    >>> se_wcs.wcs.cd = [[-7.3e-5, 0.0], [0.0, 7.3e-5]]
    >>> ones = np.ones((64, 32))
    >>> seg = np.zeros((64, 32), dtype=np.int32)
    >>> seg[10:20, 5:9] = 7                       # an object in the coadd
    >>> pixels = BackgroundPixels(se_wcs, se_wcs, se_weight=ones, se_bmask=0 * ones,
    ...                           coadd_weight=ones, coadd_bmask=0 * ones, coadd_seg=seg)
    >>> int(pixels.good.sum()), int((pixels.reason == REASONS.index("COADD_SEG")).sum())
    (2008, 40)
"""
import argparse
import contextlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

if __name__ == "__main__":
    # Run as a script: import the masks module by name, once (see transient_masks).
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import transient_masks as tm  # noqa: E402

__version__ = tm.__version__

__all__ = [
    "REASONS",
    "REASON_HELP",
    "EXIT_SOME_FAILED",
    "MappingError",
    "ImageFiles",
    "PizzaInfo",
    "Coadd",
    "SEResult",
    "bits_value",
    "parse_se_index",
    "output_name",
    "se_to_coadd",
    "nearest_coadd_pixel",
    "BackgroundPixels",
    "good_background",
    "iter_good_background",
    "summary_table",
    "write_outputs",
    "write_example_tile",
    "main",
]

log = logging.getLogger(__name__)

# ---- Constants

#: Values of the output image: 0 = good background, else the first cut (in this
#: order) that removed the pixel.
REASONS = ("GOOD", "OFF_COADD", "SE_WEIGHT", "SE_BMASK", "COADD_WEIGHT", "COADD_BMASK",
           "COADD_SEG", "TRANSIENT")
REASON_HELP = {
    "GOOD": "good background pixel",
    "OFF_COADD": "nearest coadd pixel outside the coadd image",
    "SE_WEIGHT": "SE weight <= 0 (or not finite)",
    "SE_BMASK": "SE bmask has a bit set (not ignored)",
    "COADD_WEIGHT": "coadd weight <= 0 (or not finite)",
    "COADD_BMASK": "coadd bmask has a bit set (not ignored)",
    "COADD_SEG": "coadd segmentation map != 0 (an object)",
    "TRANSIENT": "in the transient masks of the exposure's epoch and CCD",
}
#: Colours of the reasons in the picture.
REASON_COLOURS = ("#1a9850", "#000000", "#7f3b08", "#e08214", "#542788", "#8073ac",
                  "#bdbdbd", "#e7298a")
#: Exit code of a run of many SE images that finished but in which some failed.
EXIT_SOME_FAILED = 3
#: Largest EXPNUM taken (the masks look exposures up as 64-bit integers).
MAX_EXPNUM = int(np.iinfo(np.int64).max)
#: The exact SE -> coadd map is evaluated every GRID_STEP SE pixels and interpolated.
GRID_STEP = 128
#: The interpolated map is checked against the exact one at this many pixels ...
N_CHECK = 1000
#: ... and must agree to this many coadd pixels.
MAP_TOLERANCE = 1e-3
#: SE rows worked on at a time (bounds the memory of the map and the cuts).
BLOCK_ROWS = 256
#: The six images of one SE image and its coadd, in the order of the cuts.
ROLES = ("se_image", "se_weight", "se_bmask", "coadd_weight", "coadd_bmask", "coadd_seg")
SE_ROLES, COADD_ROLES = ROLES[:3], ROLES[3:]
#: Names the reason image may have, and formats of the picture.
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz")
PICTURE_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")
#: The images of the picture are binned down to at most this many pixels a side.
PICTURE_SIDE = 1024
#: WCS keywords copied from the SE header into the output image.
_WCS_KEY = re.compile(r"^(WCSAXES|CTYPE\d|CUNIT\d|CRPIX\d|CRVAL\d|CDELT\d|CROTA\d|CD\d_\d|PC\d_\d|"
                      r"PV\d_\d+|RADESYS|RADECSYS|EQUINOX|EPOCH|LONPOLE|LATPOLE|MJD-OBS|DATE-OBS)$")
#: Bit k - 1 of a pixel's failures is set when cut k (`REASONS`) fails; the
#: reason is the lowest set bit, + 1.
_N_CUTS = len(REASONS) - 1
_REASON_OF_FAILURES = np.array([0] + [(b & -b).bit_length() for b in range(1, 1 << _N_CUTS)],
                               dtype=np.uint8)


class MappingError(RuntimeError):
    """The interpolated SE -> coadd map disagrees with the exact one."""


# ---- Argument checks
# The public names check their arguments on the way in (with the helpers of
# transient_masks), so that a bad one is a one-line BadInputError naming it and
# its value, never a TypeError, AttributeError or MemoryError from deep inside.

#: Longest side of an SE image whose arrays are made here (`se_to_coadd`,
#: `nearest_coadd_pixel`): twice the long side of a DECam CCD (4096 x 2048).
MAX_SE_SIDE = 2 * tm.CCD_NY
_SE_SIDE_WHY = f" (twice the long side of a DECam CCD, {tm.CCD_NY} x {tm.CCD_NX})"
#: Longest sides of `write_example_tile`'s images: an SE image up to a CCD's
#: long side, a coadd up to a DES tile (10000 x 10000); its default coadd is
#: about twice the SE image's long side.
_EXAMPLE_SE_SIDE, _EXAMPLE_COADD_SIDE = tm.CCD_NY, 10000


def _check_shape(name, shape, lo=1, hi=None, why=""):
    """An image shape (ny, nx): two integers in ``lo..hi`` (``why``: what the bound is)."""
    shape = tm._check_int_tuple(name, shape, 2, lo=lo)
    if hi is not None and max(shape) > hi:
        raise tm.BadInputError(f"{name}={shape}: each side must be at most {hi} pixels{why}")
    return shape


def _check_wcs(name, wcs):
    """A 2-d astropy WCS (the SE -> coadd map calls its pixel <-> sky methods)."""
    from astropy.wcs import WCS

    if not isinstance(wcs, WCS) or wcs.naxis != 2:
        raise tm.BadInputError(f"{name}={tm._describe_value(wcs)}: must be a 2-d astropy.wcs.WCS")
    return wcs


def _check_map_options(grid_step, n_check=N_CHECK, tolerance=MAP_TOLERANCE):
    """(grid_step, n_check, tolerance) of the SE -> coadd map, checked."""
    grid_step = tm._check_int("grid_step", grid_step, 1)
    # More random checks than the pixels of a CCD prove nothing more, and cost memory.
    n_check = tm._check_int("n_check", n_check, 0, tm.CCD_NY * tm.CCD_NX)
    # inf is taken (no check); NaN would fail every map.
    if (isinstance(tolerance, (bool, np.bool_)) or not isinstance(tolerance, (int, float, np.integer, np.floating))
            or not tolerance >= 0):
        raise tm.BadInputError(f"tolerance={tm._describe_value(tolerance)}: must be a number >= 0 (coadd pixels)")
    return grid_step, n_check, float(tolerance)


def _optional_int(name, value):
    """None, or an integer (a whole float is taken; not a str or bool)."""
    return None if value is None else tm._check_int(name, value)


def _check_masks(transient_masks):
    """None, or a `transient_masks.TransientMasks` (not the count-map file: open it first)."""
    if transient_masks is not None and not isinstance(transient_masks, tm.TransientMasks):
        raise tm.BadInputError(f"transient_masks={tm._describe_value(transient_masks)}: must be a "
                               "transient_masks.TransientMasks or None")
    return transient_masks


def _check_image_files(name, files):
    """An `ImageFiles` (a path alone does not say which HDUs are which)."""
    if not isinstance(files, ImageFiles):
        raise tm.BadInputError(f"{name}={tm._describe_value(files)}: must be an ImageFiles "
                               "(e.g. PizzaInfo(path).files(index))")
    return files


def _check_plain_name(name, value, pattern, what):
    """A name that goes into file names and FITS headers: ``pattern`` (ASCII), at most 64 characters."""
    tm._check_str(name, value)
    if len(value) > 64 or not re.fullmatch(pattern, value):
        raise tm.BadInputError(f"{name}={tm._describe_value(value)}: must be a plain name ({what})")
    return value


# ---- Pure functions


def bits_value(names) -> int:
    """The DES mask bits named in ``names`` OR-ed together.

    Parameters
    ----------
    names : str or iterable of str
        Bit names of `transient_masks.MASK_BITS`, e.g. ``"SUSPECT,STREAK"``.

    Examples
    --------
    >>> bits_value("SUSPECT,STREAK")
    3072
    >>> bits_value("")
    0
    """
    if isinstance(names, str):
        names = [name for name in names.split(",") if name.strip()]
    if not hasattr(names, "__iter__"):
        raise tm.BadInputError(f"names={tm._describe_value(names)}: must be bit names (a str or a list of str)")
    value = 0
    for name in names:
        tm._check_str("bit name", name)
        key = name.strip().upper()
        if key not in tm.MASK_BITS:
            raise tm.BadInputError(f"unknown DES mask bit {name!r} (known: {', '.join(tm.MASK_BITS)})")
        value |= tm.MASK_BITS[key]
    return value


def _ignore_value(ignore_bits) -> int:
    """``ignore_bits`` as an int: bit names, a list of them, or a non-negative integer below 2**63."""
    if isinstance(ignore_bits, str) or (hasattr(ignore_bits, "__iter__")
                                        and not isinstance(ignore_bits, np.ndarray)):
        return bits_value(ignore_bits)
    return tm._check_int("ignore_bits", ignore_bits, 0, np.iinfo(np.int64).max)


def parse_se_index(text, n_images: int, where: str = "") -> list:
    """The SE image indices chosen by ``text``: ``3``, ``0,5,7``, ``10-19``, ``all`` or a mix.

    Indices run from 0 to ``n_images - 1`` (ranges include both ends); each is
    kept once, in the order given.

    Examples
    --------
    >>> parse_se_index("3", 20), parse_se_index("0,5,7", 20), parse_se_index("10-12,2", 20)
    ([3], [0, 5, 7], [10, 11, 12, 2])
    >>> parse_se_index("all", 4)
    [0, 1, 2, 3]
    >>> parse_se_index("18-21", 20, "info.yaml")
    Traceback (most recent call last):
    ...
    transient_masks.BadInputError: info.yaml: --se_index 18-21 is out of range (src_info has 20 entries, 0..19)
    """
    text = str(text).strip()
    n_images = tm._check_int("n_images", n_images)
    prefix = f"{where}: " if where else ""
    if n_images < 1:
        raise tm.BadInputError(f"{prefix}src_info is empty: no SE images")
    if text.lower() == "all":
        return list(range(n_images))
    chosen = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise tm.BadInputError(f"--se_index {text!r}: give N, a list N,M,..., a range N-M, or all")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise tm.BadInputError(f"--se_index {text!r}: the range {part.strip()} runs backwards")
        if last >= n_images:
            raise tm.BadInputError(f"{prefix}--se_index {text} is out of range "
                                   f"(src_info has {n_images} entries, 0..{n_images - 1})")
        chosen.extend(range(first, last + 1))
    return list(dict.fromkeys(chosen))


def output_name(expnum=None, ccdnum=None, band=None, se_path: str = "",
                suffix: str = "_goodbkg.fits") -> str:
    """The name of an SE image's output, as DES names its files.

    ``D{EXPNUM:08d}_{band}_c{CCDNUM:02d}{suffix}`` when all three are known,
    else the SE image's file name without its FITS suffix, plus ``suffix``.

    Examples
    --------
    >>> output_name(232321, 57, "r")
    'D00232321_r_c57_goodbkg.fits'
    >>> output_name(232321, 57, None, "data/se_image.fits.fz")
    'se_image_goodbkg.fits'
    """
    expnum, ccdnum = _optional_int("expnum", expnum), _optional_int("ccdnum", ccdnum)
    band, suffix = tm._check_str("band", band, optional=True), tm._check_str("suffix", suffix)
    if expnum is not None and ccdnum is not None and band and re.fullmatch(r"[A-Za-z0-9]+", band):
        return f"D{expnum:08d}_{band}_c{ccdnum:02d}{suffix}"
    if se_path is None or (isinstance(se_path, str) and not se_path):
        raise tm.BadInputError(f"se_path={se_path!r}: the SE image's path is needed when expnum, ccdnum "
                               "and band (a plain name) are not all given")
    stem = os.path.basename(tm._check_path("se_path", se_path))
    return stem[: len(stem) - len(tm._suffix(stem))] + suffix


def _exact_coadd_position(se_wcs, coadd_wcs, x, y):
    """Coadd pixel position (0-indexed) of SE pixels (0-indexed), through the sky."""
    ra, dec = se_wcs.all_pix2world(x, y, 0)
    coadd_x, coadd_y = coadd_wcs.all_world2pix(ra, dec, 0)
    return np.asarray(coadd_x, dtype=np.float64), np.asarray(coadd_y, dtype=np.float64)


def _grid(n, step):
    """Grid points 0, step, 2 step, ... and the last pixel n - 1."""
    return np.unique(np.r_[np.arange(0, n, step), n - 1]).astype(np.float64)


class _SeToCoadd:
    """The SE -> coadd map of one SE image: exact on a grid, a bicubic spline between.

    The spline is a tensor product, so on a block of whole SE rows it is one
    matrix product of the rows' B-spline basis with a precomputed matrix: about
    5x faster than evaluating it point by point, and any block of rows can be
    evaluated alone (the memory of a whole CCD's float64 map is never needed).
    """

    def __init__(self, se_wcs, coadd_wcs, shape, grid_step, n_check, tolerance, seed=0):
        from scipy.interpolate import BSpline, RectBivariateSpline

        self.se_wcs, self.coadd_wcs = se_wcs, coadd_wcs
        n_y, n_x = self.shape = tuple(int(n) for n in shape)
        grid_y, grid_x = _grid(n_y, grid_step), _grid(n_x, grid_step)
        mesh_x, mesh_y = np.meshgrid(grid_x, grid_y)
        exact = _exact_coadd_position(se_wcs, coadd_wcs, mesh_x, mesh_y)
        if not (np.isfinite(exact[0]).all() and np.isfinite(exact[1]).all()):
            raise MappingError("the SE -> coadd map is not finite on part of the SE image "
                               "(the SE image is about 90 degrees from the coadd)")
        k_y, k_x = min(3, grid_y.size - 1), min(3, grid_x.size - 1)
        self._basis_y, right = None, []
        for values in exact:
            spline = RectBivariateSpline(grid_y, grid_x, values, kx=k_y, ky=k_x, s=0)
            knots_y, knots_x, coeffs = spline.tck
            if self._basis_y is None:
                self._basis_y = BSpline.design_matrix(np.arange(n_y, dtype=np.float64), knots_y, k_y).toarray()
                basis_x = BSpline.design_matrix(np.arange(n_x, dtype=np.float64), knots_x, k_x).toarray()
            coeffs = coeffs.reshape(knots_y.size - k_y - 1, knots_x.size - k_x - 1)
            right.append(np.einsum("ik,jk->ij", coeffs, basis_x))
        self._right = right
        rng = np.random.default_rng(seed)
        check_y = np.r_[0, 0, n_y - 1, n_y - 1, rng.integers(0, n_y, n_check)]
        check_x = np.r_[0, n_x - 1, 0, n_x - 1, rng.integers(0, n_x, n_check)]
        true = _exact_coadd_position(se_wcs, coadd_wcs, check_x, check_y)
        error = 0.0
        for matrix, values in zip(right, true):
            interpolated = np.einsum("ij,ji->i", self._basis_y[check_y], matrix[:, check_x])
            error = max(error, float(np.abs(interpolated - values).max()))
        if not error <= tolerance:
            raise MappingError(f"interpolated SE -> coadd map differs from the exact one by {error:.3g} "
                               f"coadd pixels (tolerance {tolerance:g}); use a smaller grid step")
        self.error = error
        # A position within `margin` of a half-integer could round the other
        # way exactly: those few pixels are recomputed exactly.
        self.margin = max(1e-6, 10 * error)
        log.debug("SE -> coadd map: %d x %d exact points, max error %.2g px at %d checked pixels",
                  grid_y.size, grid_x.size, error, check_x.size)

    def positions(self, start: int, stop: int, work=None):
        """(coadd_x, coadd_y), 0-indexed float64, of SE rows start..stop - 1."""
        work = work or _Work((stop - start, self.shape[1]))
        basis = self._basis_y[start:stop]
        # A row's cubic B-spline basis has 4 non-zero terms, the same for the rows
        # between two grid points: use only the columns the block needs.
        used = np.flatnonzero(basis.any(axis=0))
        columns = slice(used[0], used[-1] + 1)
        # einsum, not BLAS: threaded BLAS costs more than it saves on these thin products.
        return tuple(np.einsum("ik,kj->ij", basis[:, columns], right[columns],
                               out=work(name, np.float64, stop - start))
                     for name, right in (("x", self._right[0]), ("y", self._right[1])))

    def nearest(self, start: int, stop: int, work=None):
        """(ix, iy): the nearest coadd pixel (float64 integers) of SE rows start..stop - 1.

        Equal to rounding the exact map: pixels closer to a coadd pixel
        boundary than the interpolation error allows are recomputed exactly.
        """
        work = work or _Work((stop - start, self.shape[1]))
        n_rows = stop - start
        close, flag = work("close", bool, n_rows), work("flag", bool, n_rows)
        close[...] = False
        rounded = []
        for name, position in zip(("ix", "iy"), self.positions(start, stop, work)):
            position += 0.5  # in place: nearest pixel = floor(position + 0.5)
            index = np.floor(position, out=work(name, np.float64, n_rows))
            position -= index  # now the distance above the pixel boundary, in [0, 1)
            close |= np.less(position, self.margin, out=flag)
            close |= np.greater(position, 1.0 - self.margin, out=flag)
            rounded.append(index)
        coadd_ix, coadd_iy = rounded
        if close.any():
            rows, cols = np.nonzero(close)
            exact_x, exact_y = _exact_coadd_position(self.se_wcs, self.coadd_wcs, cols, rows + start)
            coadd_ix[rows, cols], coadd_iy[rows, cols] = np.floor(exact_x + 0.5), np.floor(exact_y + 0.5)
        return coadd_ix, coadd_iy


class _Work:
    """Arrays of one block of rows, reused from block to block.

    Fresh block-sized arrays each cost their page faults, about as much as the
    arithmetic done on them: the block pipeline writes into these instead.
    """

    def __init__(self, shape):
        self.shape, self._arrays = tuple(shape), {}

    def __call__(self, name, dtype, n_rows):
        array = self._arrays.get(name)
        if array is None or array.dtype != np.dtype(dtype):
            array = self._arrays[name] = np.empty(self.shape, dtype=dtype)
        return array[:n_rows]


def se_to_coadd(se_wcs, coadd_wcs, shape, *, grid_step: int = GRID_STEP, n_check: int = N_CHECK,
                tolerance: float = MAP_TOLERANCE, seed: int = 0):
    """Coadd pixel position of every SE pixel: exact on a grid, interpolated between.

    SE pixel -> sky goes through the SE WCS (TPV for DES), sky -> coadd pixel
    through the coadd WCS (TAN, an analytic inverse).  The map is smooth, so it
    is computed exactly every ``grid_step`` pixels (and on the last row and
    column) and interpolated with a bicubic spline; the result is then checked
    against the exact map at ``n_check`` random pixels and the four corners.

    Parameters
    ----------
    se_wcs, coadd_wcs : astropy.wcs.WCS
    shape : (int, int)
        (ny, nx) of the SE image.
    grid_step : int
        Pixels between exact evaluations.
    n_check : int
        Random pixels checked exactly (seeded by ``seed``).
    tolerance : float
        Largest allowed difference, in coadd pixels, at the checked pixels.

    Returns
    -------
    (coadd_x, coadd_y, max_error) : ndarray, ndarray, float
        (ny, nx) float64 arrays of 0-indexed coadd pixel positions, and the
        largest difference from the exact map found at the checked pixels.

    Raises
    ------
    MappingError
        The interpolation differs from the exact map by more than
        ``tolerance``, or the map is not finite (an SE image about 90 degrees
        or more from the coadd's tangent point).

    Examples
    --------
    >>> from astropy.wcs import WCS
    >>> wcs = WCS(naxis=2)
    >>> wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    >>> wcs.wcs.cd = [[-7.3e-5, 0.0], [0.0, 7.3e-5]]
    >>> coadd_x, coadd_y, error = se_to_coadd(wcs, wcs, (300, 200))
    >>> round(float(coadd_x[5, 7]), 6), round(float(coadd_y[5, 7]), 6), error < 1e-6
    (7.0, 5.0, True)
    """
    se_wcs, coadd_wcs = _check_wcs("se_wcs", se_wcs), _check_wcs("coadd_wcs", coadd_wcs)
    shape = _check_shape("shape", shape, 2, MAX_SE_SIDE, _SE_SIDE_WHY)
    grid_step, n_check, tolerance = _check_map_options(grid_step, n_check, tolerance)
    mapping = _SeToCoadd(se_wcs, coadd_wcs, shape, grid_step, n_check, tolerance,
                         tm._check_int("seed", seed, 0))
    coadd_x, coadd_y = mapping.positions(0, mapping.shape[0])
    return coadd_x, coadd_y, mapping.error


def nearest_coadd_pixel(se_wcs, coadd_wcs, se_shape, coadd_shape, *, grid_step: int = GRID_STEP,
                        n_check: int = N_CHECK, tolerance: float = MAP_TOLERANCE):
    """Index of the coadd pixel nearest to every SE pixel, and whether it is on the coadd.

    Rounds the positions of `se_to_coadd`; the few pixels whose position lies
    closer to a pixel boundary than the interpolation error allows are
    recomputed exactly, so the result equals rounding the exact map.

    Returns
    -------
    (coadd_iy, coadd_ix, on_coadd, max_error) : ndarray, ndarray, ndarray, float
        (ny, nx) int32 0-indexed coadd row and column (clipped into the coadd
        where it is off); a bool array, True where the nearest coadd pixel is
        inside the coadd of shape ``coadd_shape``; and the interpolation error
        of `se_to_coadd`.

    Examples
    --------
    >>> from astropy.wcs import WCS
    >>> wcs = WCS(naxis=2)
    >>> wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    >>> wcs.wcs.cd = [[-7.3e-5, 0.0], [0.0, 7.3e-5]]
    >>> iy, ix, on_coadd, error = nearest_coadd_pixel(wcs, wcs, (40, 30), (20, 30))
    >>> int(on_coadd.sum()), int(iy[39, 0])
    (600, 19)
    """
    se_wcs, coadd_wcs = _check_wcs("se_wcs", se_wcs), _check_wcs("coadd_wcs", coadd_wcs)
    se_shape = _check_shape("se_shape", se_shape, 2, MAX_SE_SIDE, _SE_SIDE_WHY)
    # The indices are int32.
    n_y, n_x = _check_shape("coadd_shape", coadd_shape, 1, np.iinfo(np.int32).max)
    grid_step, n_check, tolerance = _check_map_options(grid_step, n_check, tolerance)
    mapping = _SeToCoadd(se_wcs, coadd_wcs, se_shape, grid_step, n_check, tolerance)
    coadd_iy = np.empty(mapping.shape, dtype=np.int32)
    coadd_ix = np.empty(mapping.shape, dtype=np.int32)
    on_coadd = np.empty(mapping.shape, dtype=bool)
    work = _Work((min(BLOCK_ROWS, mapping.shape[0]), mapping.shape[1]))
    for start in range(0, mapping.shape[0], BLOCK_ROWS):
        rows = slice(start, min(start + BLOCK_ROWS, mapping.shape[0]))
        ix, iy = mapping.nearest(rows.start, rows.stop, work)
        _inside(ix, iy, n_x, n_y, out=on_coadd[rows], scratch=work("flag", bool, ix.shape[0]))
        coadd_ix[rows] = np.clip(ix, 0, n_x - 1)
        coadd_iy[rows] = np.clip(iy, 0, n_y - 1)
    return coadd_iy, coadd_ix, on_coadd, mapping.error


def _inside(ix, iy, n_x, n_y, out=None, scratch=None):
    """Whether integer positions (ix, iy) are inside an n_x x n_y image (into ``out``)."""
    inside = np.greater_equal(ix, 0, out=out)
    inside &= np.less(ix, n_x, out=scratch)
    inside &= np.greater_equal(iy, 0, out=scratch)
    inside &= np.less(iy, n_y, out=scratch)
    return inside


def _coadd_box(se_wcs, coadd_wcs, se_shape, coadd_shape, margin=2):
    """(y0, y1, x0, x1): the part of the coadd under an SE image, plus ``margin``; None if none.

    From the exact map of the SE image's edges and a coarse interior grid (the
    map is smooth and nearly affine, so its extremes are on the edges);
    `BackgroundPixels` checks that the box holds every pixel it needs.  Where
    the coadd's projection is not finite (an SE image about 90 degrees or more
    from the coadd's tangent point) the SE image is not on the coadd.
    """
    n_y, n_x = se_shape
    edge_x = np.r_[np.arange(n_x), np.arange(n_x), np.zeros(n_y), np.full(n_y, n_x - 1)]
    edge_y = np.r_[np.zeros(n_x), np.full(n_x, n_y - 1), np.arange(n_y), np.arange(n_y)]
    mesh_x, mesh_y = np.meshgrid(_grid(n_x, GRID_STEP), _grid(n_y, GRID_STEP))
    x, y = _exact_coadd_position(se_wcs, coadd_wcs, np.r_[edge_x, mesh_x.ravel()],
                                 np.r_[edge_y, mesh_y.ravel()])
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.any():
        return None
    x, y = x[finite], y[finite]
    y0 = int(np.clip(np.floor(y.min() + 0.5) - margin, 0, coadd_shape[0]))
    y1 = int(np.clip(np.floor(y.max() + 0.5) + margin + 1, 0, coadd_shape[0]))
    x0 = int(np.clip(np.floor(x.min() + 0.5) - margin, 0, coadd_shape[1]))
    x1 = int(np.clip(np.floor(x.max() + 0.5) + margin + 1, 0, coadd_shape[1]))
    if y1 <= y0 or x1 <= x0:
        return None
    if not finite.all():
        raise MappingError("the SE -> coadd map is not finite on part of the SE image "
                           "(the SE image is about 90 degrees from the coadd)")
    return (y0, y1, x0, x1)


# ---- Files


def _parse_path_ext(text):
    """Split ``PATH[EXT]`` (EXT a name or an HDU number) into (path, ext); no [EXT]: ext None."""
    match = re.fullmatch(r"(.+)\[([^\[\]]*)\]", str(text))
    if not match:
        return str(text), None
    return match.group(1), _hdu_key(match.group(2), str(text))


def _hdu_key(value, where):
    """An HDU number (an int, or a string of digits) or an EXTNAME; one-line error otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise tm.BadInputError(f"{where}: extension {value!r} is not an HDU number nor a name")
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise tm.BadInputError(f"{where}: empty extension name")
        if not (value.isascii() and value.isdigit()):  # int() refuses some Unicode digits ('²')
            return value
    value = int(value)
    if value < 0:
        raise tm.BadInputError(f"{where}: extension {value} is not an HDU number (0, 1, ...)")
    return value


def _as_path_ext(value, name):
    """(path, ext) from ``"path[ext]"``, ``"path"`` or a (path, ext) pair; ``name``: the argument's."""
    if isinstance(value, (str, os.PathLike)):
        return _parse_path_ext(tm._check_path(name, value))
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise tm.BadInputError(f"{name}={tm._describe_value(value)}: must be a path, 'path[ext]' or a "
                               "(path, ext) pair")
    path = tm._check_path(name, value[0])
    return path, None if value[1] is None else _hdu_key(value[1], path)


def _show(path, ext):
    return f"{path}[{ext}]" if ext is not None else path


@dataclass
class ImageFiles:
    """The files of one SE image and of its coadd: ``(path, ext)`` for each role.

    ``ext`` is an HDU number, an EXTNAME, or None for the first HDU that holds
    an image (the first extension of an fpacked file).  Each role also accepts
    ``"path[ext]"`` or ``"path"`` strings.  ``se_image`` gives the SE WCS; the
    coadd WCS is read from ``coadd_weight`` (or, when that header has none,
    from ``coadd_bmask`` or ``coadd_seg``).  ``expnum``, ``ccdnum`` and
    ``band`` default to the SE image header's EXPNUM, CCDNUM and BAND.

    Examples
    --------
    >>> files = ImageFiles("se.fits.fz[sci]", "se.fits.fz[wgt]", "se.fits.fz[msk]",
    ...                    "coadd.fits.fz[wgt]", "coadd.fits.fz[2]", "seg.fits.fz")
    >>> files.se_weight, files.coadd_bmask, files.coadd_seg
    (('se.fits.fz', 'wgt'), ('coadd.fits.fz', 2), ('seg.fits.fz', None))
    >>> files.paths()
    ['se.fits.fz', 'coadd.fits.fz', 'seg.fits.fz']
    """

    se_image: tuple
    se_weight: tuple
    se_bmask: tuple
    coadd_weight: tuple
    coadd_bmask: tuple
    coadd_seg: tuple
    expnum: int = None
    ccdnum: int = None
    band: str = None
    index: int = 0
    source: str = field(default="", compare=False)

    def __post_init__(self):
        for role in ROLES:
            setattr(self, role, _as_path_ext(getattr(self, role), role))
        # Types only: an EXPNUM or CCDNUM out of range is refused by the cut that uses it, naming the image.
        self.expnum, self.ccdnum = _optional_int("expnum", self.expnum), _optional_int("ccdnum", self.ccdnum)
        self.band = tm._check_str("band", self.band, optional=True)
        self.index = tm._check_int("index", self.index, 0)
        self.source = tm._check_str("source", self.source)

    @classmethod
    def from_info(cls, info_path: str, se_index: int) -> "ImageFiles":
        """The files of SE image ``se_index`` of a pizza-cutter info YAML (see `PizzaInfo`)."""
        return PizzaInfo(info_path).files(se_index)

    @property
    def label(self) -> str:
        """How messages name this SE image: its info entry, or its file."""
        return self.source or _show(*self.se_image)

    def coadd(self) -> tuple:
        """The coadd's (path, ext) of weight, bmask and segmentation map."""
        return tuple(getattr(self, role) for role in COADD_ROLES)

    def paths(self):
        """The distinct input files."""
        return list(dict.fromkeys(getattr(self, role)[0] for role in ROLES))


class _RepeatedKey(Exception):
    """A key given twice in one YAML mapping (PyYAML would keep the last silently)."""


def _unique_key_loader():
    """PyYAML's safe loader, refusing a key repeated in a mapping (``ccdnum`` twice in an entry)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            keys = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, (str, int, float, bool)):  # unhashable keys: PyYAML refuses them
                    continue
                if key in keys:
                    raise _RepeatedKey(f"line {key_node.start_mark.line + 1}: key {key!r} given twice "
                                       f"in one mapping")
                keys.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


class PizzaInfo:
    """A pizza-cutter info file (YAML) of a coadd tile and band, checked as it is read.

    Its top level names the coadd products (``weight_path``/``weight_ext``,
    ``bmask_path``/``bmask_ext``, ``seg_path``/``seg_ext``, with ``tilename``
    and ``band``); ``src_info`` lists the SE images, each with ``expnum``,
    ``ccdnum``, ``band`` and ``image``/``weight``/``bmask`` ``_path`` and
    ``_ext``.  Environment variables (``$MEDS_DIR/...``) and ``~`` in paths are
    expanded; relative paths are taken relative to the YAML's directory.  An
    extension is an HDU number (``2`` or ``'2'``) or an EXTNAME.

    Every malformed entry or key is a `transient_masks.BadInputError` naming
    the file, the entry and the key.

    Examples
    --------
    >>> import yaml
    >>> info = {"tilename": "DES2122+0001", "band": "r",
    ...         "weight_path": "coadd.fits", "weight_ext": "wgt", "bmask_path": "coadd.fits",
    ...         "bmask_ext": "msk", "seg_path": "seg.fits", "seg_ext": "1",
    ...         "src_info": [{"expnum": 232321, "ccdnum": 57, "image_path": "se.fits",
    ...                       "image_ext": "sci", "weight_path": "se.fits", "weight_ext": "wgt",
    ...                       "bmask_path": "se.fits", "bmask_ext": "msk"},
    ...                      {"expnum": "D00154912", "ccdnum": 3}]}
    >>> with open("info.yaml", "w") as out:
    ...     yaml.safe_dump(info, out)
    >>> tile = PizzaInfo("info.yaml")
    >>> tile.tilename, tile.band, tile.n_images, tile.select("all")
    ('DES2122+0001', 'r', 2, [0, 1])
    >>> files = tile.files(0)
    >>> files.expnum, files.ccdnum, files.band, os.path.basename(files.coadd_seg[0]), files.coadd_seg[1]
    (232321, 57, 'r', 'seg.fits', 1)
    >>> tile.files(1)
    Traceback (most recent call last):
    ...
    transient_masks.BadInputError: info.yaml: src_info[1]: expnum 'D00154912' is not an exposure number (an integer)
    """

    def __init__(self, path: str):
        import yaml

        self.path = tm.check_input(tm._check_path("path", path), "pizza-cutter info file")
        try:
            with open(self.path, encoding="utf-8") as stream:
                info = yaml.load(stream, Loader=_unique_key_loader())
        except UnicodeDecodeError:
            raise tm.BadInputError(f"{self.path}: not a text file (a pizza-cutter info YAML)") from None
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise tm.BadInputError(f"{self.path}: not a readable YAML file ({first})") from None
        except OSError as exc:
            raise tm.BadInputError(f"{self.path}: cannot read ({exc.strerror or exc})") from None
        except _RepeatedKey as exc:
            raise tm.BadInputError(f"{self.path}: {exc}") from None
        except RecursionError:  # PyYAML's parser recurses once per level of nesting
            raise tm.BadInputError(f"{self.path}: not a readable YAML file (nested too deeply)") from None
        if not isinstance(info, dict) or not isinstance(info.get("src_info"), list):
            raise tm.BadInputError(f"{self.path}: no 'src_info' list (not a pizza-cutter info file?)")
        self._info = info
        self._base = os.path.dirname(os.path.abspath(self.path))
        self.tilename = self._text(info, "tilename", "the top level")
        self.band = self._text(info, "band", "the top level")
        self.n_images = len(info["src_info"])
        self.coadd = tuple(self._role(info, key, None, "the top level")
                           for key in ("weight", "bmask", "seg"))

    def select(self, text) -> list:
        """The indices of `parse_se_index` (``3``, ``0,5,7``, ``10-19``, ``all``)."""
        return parse_se_index(text, self.n_images, self.path)

    def files(self, index: int) -> ImageFiles:
        """The checked files of SE image ``index`` of ``src_info``."""
        index = tm._check_int("index", index)
        if not 0 <= index < self.n_images:
            raise tm.BadInputError(f"{self.path}: se_index {index} out of range "
                                   f"(src_info has {self.n_images} entries, 0..{self.n_images - 1})")
        where = f"src_info[{index}]"
        entry = self._info["src_info"][index]
        if not isinstance(entry, dict):
            raise tm.BadInputError(f"{self.path}: {where} is {_describe_value(entry)}, not a mapping "
                                   "(expnum, ccdnum, image_path, ...)")
        expnum = self._integer(entry, "expnum", where, "an exposure number", 1, MAX_EXPNUM)
        ccdnum = self._integer(entry, "ccdnum", where, "a CCD number", 1, tm.N_CCD)
        band = self._text(entry, "band", where) or self.band
        se_files = [self._role(entry, key, ext, where) for key, ext in (("image", "sci"), ("weight", "wgt"),
                                                                         ("bmask", "msk"))]
        return ImageFiles(*se_files, *self.coadd, expnum=expnum, ccdnum=ccdnum, band=band, index=index,
                          source=f"{self.path} {where}")

    def images(self, text="all") -> list:
        """The `ImageFiles` of the SE images chosen by ``text`` (see `select`)."""
        return [self.files(index) for index in self.select(text)]

    # -- the checks of single keys

    def _fail(self, where, key, value, problem):
        raise tm.BadInputError(f"{self.path}: {where}: {key} {_describe_value(value)} {problem}")

    def _text(self, mapping, key, where):
        value = mapping.get(key)
        if value is not None and not isinstance(value, str):
            self._fail(where, key, value, "is not a string")
        return value

    def _integer(self, mapping, key, where, what, low, high=None):
        value = mapping.get(key)
        if value is None:
            return None
        if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self._fail(where, key, value, f"is not {what} (an integer)")
        if value < low or (high is not None and value > high):
            self._fail(where, key, value, f"is out of range ({low}.." + (f"{high})" if high else ")"))
        return value

    def _role(self, mapping, key, default_ext, where):
        path = mapping.get(f"{key}_path")
        if path is None or path == "":
            raise tm.BadInputError(f"{self.path}: {where}: {key}_path is missing")
        if not isinstance(path, str):
            self._fail(where, f"{key}_path", path, "is not a path (a string)")
        expanded = os.path.expandvars(os.path.expanduser(path))
        unset = re.search(r"\$(\{[^}]*\}|\w+)", expanded)
        if unset:
            self._fail(where, f"{key}_path", path, f"uses the environment variable {unset.group(0)}, "
                       "which is not set")
        ext = mapping.get(f"{key}_ext", default_ext)
        if ext is not None:
            try:
                ext = _hdu_key(ext, "")
            except tm.BadInputError:
                self._fail(where, f"{key}_ext", ext, "is not an HDU number nor a name")
        return os.path.join(self._base, expanded), ext


def _describe_value(value) -> str:
    """A short, one-line description of a YAML value for messages."""
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return text if isinstance(value, (str, int, float, type(None))) else f"a {type(value).__name__} ({text})"


# -- Reading FITS images, with one-line errors for files that are not what they say


@contextlib.contextmanager
def _reading(path, option):
    """`transient_masks._reading` for a FITS image of ``option``, also for the tile codecs' errors.

    A corrupt tile of an fpacked file fails in astropy's decompression with
    errors of its own types; they are one line naming the file too.
    """
    try:
        with tm._reading(path, f"FITS image for {option}"):
            yield
    except tm.BadInputError:
        raise
    except Exception as exc:  # astropy's tile codecs raise their own exception types
        raise tm.BadInputError(f"{path}: not a readable FITS image for {option} "
                               f"({type(exc).__name__}: {tm._one_line(exc)})") from None


def _open_fits(path, option):
    """An open HDUList of ``path`` (plain, gzip or fpack FITS); a one-line error if it is not one."""
    from astropy.io import fits

    tm.check_input(path, f"FITS image for {option}")
    with _reading(path, option):
        return fits.open(path)


def _image_hdu(hdul, path, ext, option):
    """(index, hdu) of the 2-d image HDU ``ext`` (None: the first HDU that holds an image)."""
    with _reading(path, option):
        if ext is None:
            found = next(((i, h) for i, h in enumerate(hdul) if h.is_image and len(h.shape) > 0), None)
            if found is None:
                raise tm.BadInputError(f"{path}: no HDU holds an image ({option})")
            index, hdu = found
        else:
            try:
                hdu = hdul[ext]
            except (KeyError, IndexError):
                names = ", ".join(str(h.name or i) for i, h in enumerate(hdul))
                raise tm.BadInputError(f"{path}: no extension {ext!r} ({option}; it has {names})") from None
            index = hdul.index(hdu)
        if not hdu.is_image or len(hdu.shape) != 2:
            raise tm.BadInputError(f"{_show(path, ext)}: not a 2-d image ({option})")
        return index, hdu


def _read_data(hdu, path, ext, option, box=None):
    """The data of an image HDU, or of its part ``box`` = (y0, y1, x0, x1), as an array.

    Through ``section``: for a tile-compressed image only the tiles it needs
    are decompressed, and nothing stays cached on the HDU.
    """
    with _reading(path, option):
        data = hdu.section[...] if box is None else hdu.section[box[0]:box[1], box[2]:box[3]]
    # A section of a tile-compressed image can be a view into its whole tiles
    # (whole rows of the coadd for fpack's default tiling): keep only the part.
    data = np.asarray(data)
    return data.copy() if data.base is not None else data


def _holds_integers(array) -> bool:
    """Whether a bmask holds integers: an integer array, or floats that are all whole numbers."""
    if array.dtype.kind in "iub":
        return True
    return array.dtype.kind == "f" and bool(np.isfinite(array).all() and (np.trunc(array) == array).all())


def _check_integer(array, path, ext, option, what="a bmask"):
    if not _holds_integers(array):
        raise tm.BadInputError(f"{_show(path, ext)}: {what} must hold integers ({array.dtype} values "
                               f"that are not whole numbers; {option})")


def _celestial_wcs(header, what):
    """The celestial WCS of a header, or None when it has no usable one."""
    from astropy.wcs import WCS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FITSFixedWarning about harmless header fixes
            wcs = WCS(header)
    except Exception as exc:  # astropy raises many types for broken WCS headers
        log.debug("%s: no usable WCS (%s)", what, exc)
        return None
    if not wcs.has_celestial or wcs.naxis != 2:
        return None
    return wcs


def _same_shape(shapes, source=""):
    """One-line error unless every named shape (or array) is the same."""
    shapes = {name: getattr(value, "shape", value) for name, value in shapes.items()}
    if len(set(shapes.values())) > 1:
        raise tm.BadInputError((f"{source}: " if source else "") + "images of different shapes: " + ", ".join(
            f"{name} {shape[1]}x{shape[0]}" if len(shape) == 2 else f"{name} {shape}"
            for name, shape in shapes.items()))


def _distinct_hdus(found, source):
    """One-line error when two roles are the same HDU of the same file (a missing [EXT]?)."""
    seen = {}
    for role, (path, index) in found.items():
        key = (os.path.realpath(path), index)
        if key in seen:
            raise tm.BadInputError(f"{source}: --{seen[key]} and --{role} are the same image, "
                                   f"HDU {index} of {path} (give each its [EXT])")
        seen[key] = role


class _OpenFiles:
    """The FITS files of one SE image or coadd, each opened once, and their image HDUs."""

    def __init__(self, roles):
        self.roles = dict(roles)  # role -> (path, ext)
        self._files, self._hdus = {}, {}

    def hdu(self, role):
        if role not in self._hdus:
            path, ext = self.roles[role]
            key = os.path.abspath(path)
            if key not in self._files:
                self._files[key] = _open_fits(path, "--" + role)
            self._hdus[role] = _image_hdu(self._files[key], path, ext, "--" + role)
        return self._hdus[role]

    def header(self, role):
        return self.hdu(role)[1].header

    def read(self, role, box=None):
        path, ext = self.roles[role]
        return _read_data(self.hdu(role)[1], path, ext, "--" + role, box)

    def check(self, source):
        """Open every role; they must be distinct HDUs of one shape. Returns that shape."""
        found = {role: (self.roles[role][0], self.hdu(role)[0]) for role in self.roles}
        _distinct_hdus(found, source)
        shapes = {role.replace("_", " ").replace("se ", "SE "): tuple(int(n) for n in self.hdu(role)[1].shape)
                  for role in self.roles}
        _same_shape(shapes, source)
        return next(iter(shapes.values()))

    def close(self):
        for hdul in self._files.values():
            hdul.close()
        self._files, self._hdus = {}, {}


class Coadd:
    """The coadd weight, bmask and segmentation map of a tile, opened once.

    Reads headers only; `cutout` reads the part of the three images under an
    SE image (for fpacked files, only the tiles it needs).  The object can be
    pickled (to worker processes): the files are opened again where needed.

    Parameters
    ----------
    weight, bmask, seg : str or (path, ext)
        The three images, as in `ImageFiles`.

    Attributes
    ----------
    shape : (int, int)
        (ny, nx) of the coadd.
    wcs : astropy.wcs.WCS
        Its celestial WCS (from the weight, else the bmask or seg header).
    """

    def __init__(self, weight: "str | tuple", bmask: "str | tuple", seg: "str | tuple"):
        self.roles = dict(zip(COADD_ROLES, (_as_path_ext(value, name) for name, value
                                            in (("weight", weight), ("bmask", bmask), ("seg", seg)))))
        self._open = _OpenFiles(self.roles)
        try:
            self.shape = self._open.check("coadd")
            self.wcs = next((wcs for wcs in (_celestial_wcs(self._open.header(role), self.roles[role][0])
                                             for role in COADD_ROLES) if wcs is not None), None)
            self.hdus = {role: self._open.hdu(role)[0] for role in COADD_ROLES}
        except BaseException:
            self.close()
            raise
        if self.wcs is None:
            self.close()
            raise tm.BadInputError(f"{self.roles['coadd_weight'][0]}: no usable celestial WCS in the coadd "
                                   "weight, bmask or segmentation-map header")

    def box(self, se_wcs, se_shape) -> "tuple | None":
        """The part (y0, y1, x0, x1) of the coadd under an SE image, or None when off the coadd."""
        return _coadd_box(_check_wcs("se_wcs", se_wcs), self.wcs, _check_shape("se_shape", se_shape),
                          self.shape)

    def cutout(self, box) -> dict:
        """{role: array} of the three images in ``box`` = (y0, y1, x0, x1)."""
        box = tm._check_int_tuple("box", box, 4, lo=0)
        arrays = {role: self._open.read(role, box) for role in COADD_ROLES}
        _check_integer(arrays["coadd_bmask"], *self.roles["coadd_bmask"], "--coadd_bmask")
        _check_integer(arrays["coadd_seg"], *self.roles["coadd_seg"], "--coadd_seg", "a segmentation map")
        return arrays

    def close(self):
        self._open.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_open"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open = _OpenFiles(self.roles)


# ---- The class that does the work


class _CoaddLookup:
    """Values of the (cutout) coadd images at the nearest coadd pixels of a block of SE pixels."""

    def __init__(self, arrays, coadd_shape, coadd_offset):
        self.flat = [np.ascontiguousarray(array).ravel() for array in arrays]
        self.shape, self.offset, self.cut_shape = tuple(coadd_shape), tuple(coadd_offset), arrays[0].shape

    def __call__(self, coadd_ix, coadd_iy, work):
        """(on_coadd, [weight, bmask, seg] or None): the images at the pixels, where on the coadd."""
        (n_y, n_x), (y0, x0), (cut_ny, cut_nx) = self.shape, self.offset, self.cut_shape
        n_rows = coadd_ix.shape[0]
        scratch = work("scratch", bool, n_rows)
        on_coadd = _inside(coadd_ix, coadd_iy, n_x, n_y, out=work("on", bool, n_rows), scratch=scratch)
        if not on_coadd.any():
            return on_coadd, None
        coadd_ix -= x0
        coadd_iy -= y0
        for position, size in ((coadd_ix, cut_nx), (coadd_iy, cut_ny)):
            if (position.min(where=on_coadd, initial=np.inf) < 0
                    or position.max(where=on_coadd, initial=-np.inf) >= size):
                raise MappingError(f"the coadd cutout ({cut_nx}x{cut_ny} at x0={x0}, y0={y0}) does not hold "
                                   "every coadd pixel the SE image needs")
        index = np.multiply(coadd_iy, cut_nx, out=work("index", np.float64, n_rows))
        index += coadd_ix
        flat = work("flat", np.intp, n_rows)
        np.copyto(flat, index, casting="unsafe")
        return on_coadd, [np.take(image, flat, mode="clip", out=work(f"value{k}", image.dtype, n_rows))
                          for k, image in enumerate(self.flat)]


def _or_bit(block, failed, bit, work):
    """Set bit ``bit`` of ``block`` where ``failed`` (bool) is True."""
    block |= np.multiply(failed.view(np.uint8), np.uint8(1 << bit), out=work("bit", np.uint8, block.shape[0]))


def _bits_set(bmask, keep, out, work):
    """``bmask & keep != 0`` into ``out`` (``keep``: int64, the bits that count)."""
    if bmask.dtype.kind in "iu":
        masked = np.bitwise_and(bmask, keep.astype(bmask.dtype), out=work("bmask", bmask.dtype, bmask.shape[0]))
    else:  # bool, or floats that hold integers
        masked = bmask.astype(np.int64) & keep
    return np.not_equal(masked, 0, out=out)


class BackgroundPixels:
    """The good background pixels of one SE image, from arrays in memory.

    Parameters
    ----------
    se_wcs, coadd_wcs : astropy.wcs.WCS
        Celestial WCSs of the SE image (TPV for DES) and of the coadd.
    se_weight, se_bmask : array_like, shape (ny, nx)
        SE weight and bmask (integer).
    coadd_weight, coadd_bmask, coadd_seg : array_like, shape (my, mx)
        Coadd weight, bmask (integer) and segmentation map.
    transient_mask : array_like of bool, shape (ny, nx), optional
        True where the transient masks cover the SE pixel; None = no such cut.
    ignore_bits : int or str
        Bmask bits not counted as bad (a value, or DES bit names, e.g.
        ``"SUSPECT,STREAK"``), in both bmasks.
    se_image : array_like, optional
        The SE image itself, for the picture.
    coadd_shape : (int, int), optional
        The whole coadd's (ny, nx) when the coadd arrays are a cutout of it.
    coadd_offset : (int, int)
        The coadd pixel (y, x), 0-indexed, of the cutout's first pixel.
    grid_step, n_check, tolerance
        Of the SE -> coadd map (`se_to_coadd`).

    Attributes
    ----------
    reason : ndarray of uint8, shape (ny, nx)
        0 = good, else the code (index in `REASONS`) of the first cut that
        removed the pixel.
    failures : ndarray of uint8, shape (ny, nx)
        Every cut a pixel fails: bit k - 1 is set when cut k of `REASONS` fails
        (coadd cuts only on the coadd).
    counts : ndarray of int64
        Pixels per reason code (the first cut that removed them).
    overlaps : bool
        Whether any pixel is on the coadd.  When none is, the coadd arrays are
        not looked at and the SE -> coadd map is not computed.
    map_error : float
        The largest difference of the interpolated map from the exact one at
        the checked pixels, in coadd pixels (0 when the map was not needed).
    """

    def __init__(self, se_wcs, coadd_wcs, *, se_weight, se_bmask, coadd_weight, coadd_bmask, coadd_seg,
                 transient_mask=None, ignore_bits=0, se_image=None, coadd_shape=None,
                 coadd_offset=(0, 0), grid_step: int = GRID_STEP, n_check: int = N_CHECK,
                 tolerance: float = MAP_TOLERANCE):
        se_wcs, coadd_wcs = _check_wcs("se_wcs", se_wcs), _check_wcs("coadd_wcs", coadd_wcs)
        se_weight, se_bmask = (tm._numeric_array(name, value, "iufb") for name, value
                               in (("se_weight", se_weight), ("se_bmask", se_bmask)))
        coadd = [tm._numeric_array(name, value, "iufb") for name, value in (
            ("coadd_weight", coadd_weight), ("coadd_bmask", coadd_bmask), ("coadd_seg", coadd_seg))]
        if transient_mask is not None:
            transient_mask = tm._numeric_array("transient_mask", transient_mask, "biuf").astype(bool, copy=False)
        if se_image is not None:
            se_image = tm._numeric_array("se_image", se_image, "iufb")
        for name, array in (("se_weight", se_weight), ("coadd_weight", coadd[0])):
            if array.ndim != 2:
                raise tm.BadInputError(f"{name}={tm._describe_value(array)}: the SE and coadd images must be "
                                       "2-d arrays")
        _same_shape({"SE weight": se_weight, "SE bmask": se_bmask}
                    | ({"SE image": se_image} if se_image is not None else {})
                    | ({"transient mask": transient_mask} if transient_mask is not None else {}))
        _same_shape(dict(zip(("coadd weight", "coadd bmask", "coadd seg"), coadd)))
        if min(se_weight.shape) < 2:  # the SE -> coadd map's spline needs two points a side
            raise tm.BadInputError(f"se_weight={tm._describe_value(se_weight)}: the SE image must be at least "
                                   "2 x 2 pixels")
        coadd_shape = None if coadd_shape is None else _check_shape("coadd_shape", coadd_shape)
        coadd_offset = tm._check_int_tuple("coadd_offset", coadd_offset, 2, lo=0)
        grid_step, n_check, tolerance = _check_map_options(grid_step, n_check, tolerance)
        for name, bmask in (("SE bmask", se_bmask), ("coadd bmask", coadd[1]),
                            ("coadd segmentation map", coadd[2])):
            if not _holds_integers(bmask):
                raise tm.BadInputError(f"the {name} must hold integers ({bmask.dtype} values that are "
                                       "not whole numbers)")
        keep = np.array(~_ignore_value(ignore_bits), dtype=np.int64)
        self.se_image = se_image
        self.ignore_bits = int(~keep)
        self.shape = se_weight.shape
        self.transient_cut = transient_mask is not None
        coadd_shape = coadd[0].shape if coadd_shape is None else coadd_shape
        self.overlaps = _coadd_box(se_wcs, coadd_wcs, self.shape, coadd_shape) is not None
        mapping = lookup = None
        if self.overlaps:
            mapping = _SeToCoadd(se_wcs, coadd_wcs, self.shape, grid_step, n_check, tolerance)
            lookup = _CoaddLookup(coadd, coadd_shape, coadd_offset)
        self.map_error = mapping.error if mapping else 0.0

        self.failures = np.empty(self.shape, dtype=np.uint8)
        histogram = np.zeros(1 << _N_CUTS, dtype=np.int64)
        n_y = self.shape[0]
        work = _Work((min(BLOCK_ROWS, n_y), self.shape[1]))
        for start in range(0, n_y, BLOCK_ROWS):
            rows = slice(start, min(start + BLOCK_ROWS, n_y))
            n_rows = rows.stop - start
            block, failed = self.failures[rows], work("failed", bool, n_rows)
            values = None
            if mapping is None:
                block[...] = 1  # OFF_COADD
            else:
                on_coadd, values = lookup(*mapping.nearest(rows.start, rows.stop, work), work)
                np.copyto(block, np.logical_not(on_coadd, out=failed).view(np.uint8))
            _or_bit(block, np.logical_not(np.greater(se_weight[rows], 0, out=failed), out=failed), 1, work)
            _or_bit(block, _bits_set(se_bmask[rows], keep, failed, work), 2, work)
            if values is not None:
                weight, bmask, seg = values
                np.logical_not(np.greater(weight, 0, out=failed), out=failed)
                _or_bit(block, np.logical_and(failed, on_coadd, out=failed), 3, work)
                _bits_set(bmask, keep, failed, work)
                _or_bit(block, np.logical_and(failed, on_coadd, out=failed), 4, work)
                np.not_equal(seg, 0, out=failed)
                _or_bit(block, np.logical_and(failed, on_coadd, out=failed), 5, work)
            if transient_mask is not None:
                _or_bit(block, transient_mask[rows], 6, work)
            wide = work("wide", np.intp, n_rows)
            np.copyto(wide, block)
            histogram += np.bincount(wide.ravel(), minlength=histogram.size)
        self.reason = np.take(_REASON_OF_FAILURES, self.failures)
        self.counts = np.bincount(_REASON_OF_FAILURES, weights=histogram,
                                  minlength=len(REASONS)).astype(np.int64)
        self._any = np.array([histogram[(np.arange(histogram.size) >> bit) & 1 == 1].sum()
                              for bit in range(_N_CUTS)], dtype=np.int64)

    @property
    def good(self) -> np.ndarray:
        """bool image: ``reason == 0``."""
        return self.reason == 0

    @property
    def on_coadd(self) -> np.ndarray:
        """bool image: the nearest coadd pixel is inside the coadd."""
        return (self.failures & 1) == 0

    @property
    def failed(self) -> dict:
        """Reason name -> bool image of the pixels that fail that cut (whatever the other cuts say)."""
        return {name: (self.failures & (1 << bit)) != 0 for bit, name in enumerate(REASONS[1:])}

    @property
    def good_fraction(self) -> float:
        return float(self.counts[0] / max(self.reason.size, 1))

    def summary(self):
        """How many pixels each cut removed, as an astropy Table.

        Columns: CODE, REASON, FIRST (pixels whose first failing cut is this
        one: they add up to all pixels), ANY (pixels failing this cut at all),
        FRACTION (FIRST over all pixels) and MEANING.
        """
        from astropy.table import Table

        return Table({
            "CODE": np.arange(len(REASONS), dtype=np.uint8),
            "REASON": list(REASONS),
            "FIRST": self.counts.copy(),
            "ANY": np.r_[self.counts[0], self._any].astype(np.int64),
            "FRACTION": self.counts / max(self.reason.size, 1),
            "MEANING": [REASON_HELP[name] + ("" if name != "TRANSIENT" or self.transient_cut
                                             else " (cut not applied)") for name in REASONS],
        })

    def header_cards(self):
        """FITS cards documenting the codes and counts of the output image."""
        cards = [("BUNIT", "code", "0 good background; else the first cut failed")]
        for code, name in enumerate(REASONS):
            cards.append((f"BGCODE{code}", name, REASON_HELP[name][:46]))
        for code, name in enumerate(REASONS):
            cards.append((f"BGNPIX{code}", int(self.counts[code]), f"pixels with code {code} ({name})"))
        cards += [
            ("BGIGNORE", self.ignore_bits, "bmask bits ignored in both bmasks"),
            ("BGTRCUT", self.transient_cut, "transient-mask cut applied"),
            ("BGMAPERR", self.map_error, "max SE->coadd interpolation error [coadd px]"),
        ]
        return cards

    def write(self, path: str, *, header=None, extra_cards=(), overwrite: bool = False, inputs=()):
        """Write the reason image (uint8) with the SE WCS, atomically.

        Parameters
        ----------
        header : astropy.io.fits.Header, optional
            The SE image header: its WCS keywords are copied.
        extra_cards : iterable of (key, value, comment)
            More provenance for the primary header.
        """
        tm._check_path("path", path)
        if header is not None and not hasattr(header, "cards"):
            raise tm.BadInputError(f"header={tm._describe_value(header)}: must be an astropy.io.fits.Header")
        if isinstance(extra_cards, (str, dict)) or not hasattr(extra_cards, "__iter__"):
            raise tm.BadInputError(f"extra_cards={tm._describe_value(extra_cards)}: must be a list of "
                                   "(key, value, comment)")
        # (key, value) pairs are taken too, with no comment.
        extra_cards = tm._header_cards([(*card, "") if isinstance(card, (tuple, list)) and len(card) == 2
                                        else card for card in extra_cards])
        with tm.atomic_output(path, overwrite=overwrite, inputs=inputs) as tmp:
            self._write_fits(tmp, header, extra_cards)
        return path

    def _write_fits(self, path, header=None, extra_cards=()):
        from astropy.io import fits

        out = fits.Header()
        if header is not None:
            for card in header.cards:
                if _WCS_KEY.match(card.keyword):
                    out.append(card)
        for card in list(self.header_cards()) + list(extra_cards):
            out[card[0]] = card[1:] if len(card) > 2 else card[1]
        fits.PrimaryHDU(self.reason, header=out).writeto(path)

    def plot(self, path: str = None, *, title: str = "", overwrite: bool = False, inputs=()):
        """The SE image beside its pixels coloured by reason; a matplotlib Figure.

        Both images are binned down to at most `PICTURE_SIDE` pixels a side
        before drawing (the SE image by its mean, the reasons by the most
        common one in each block), so a whole CCD is drawn in well under a
        second; the legend's percentages count every pixel.  Written to
        ``path`` (PNG, PDF... by extension) when given, atomically.  The reason
        image is the artist with gid ``"reasons"``.
        """
        from matplotlib.colors import BoundaryNorm, ListedColormap
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch

        path = _check_picture_path("path", path)
        title = tm._check_str("title", title)

        n_y, n_x = self.shape
        factor = max(1, -(-max(n_y, n_x) // PICTURE_SIDE))
        extent = (0.5, n_x + 0.5, 0.5, n_y + 0.5)
        figure = Figure(figsize=(11, 7.5), layout="constrained")
        ax_image, ax_reason = figure.subplots(1, 2, sharex=True, sharey=True)
        if self.se_image is not None:
            image = _bin_mean(np.asarray(self.se_image), factor)
            finite = image[np.isfinite(image)]
            low, high = np.percentile(finite, [1, 99.5]) if finite.size else (0, 1)
            ax_image.imshow(image, origin="lower", cmap="gray", vmin=low, vmax=high,
                            interpolation="nearest", extent=_binned_extent(image.shape, factor))
            ax_image.set_title("SE image" + (f" (binned {factor}x{factor})" if factor > 1 else ""))
        else:
            ax_image.text(0.5, 0.5, "no SE image given", transform=ax_image.transAxes, ha="center")
        cmap = ListedColormap(REASON_COLOURS)
        norm = BoundaryNorm(np.arange(len(REASONS) + 1) - 0.5, cmap.N)
        reason = _bin_mode(self.reason, factor, np.flatnonzero(self.counts))
        artist = ax_reason.imshow(reason, origin="lower", cmap=cmap, norm=norm, interpolation="nearest",
                                  extent=_binned_extent(reason.shape, factor))
        artist.set_gid("reasons")
        ax_reason.set_title(f"good background: {100 * self.good_fraction:.1f}% of the pixels")
        handles = [Patch(facecolor=REASON_COLOURS[code], edgecolor="0.5",
                         label=f"{name}: {100 * self.counts[code] / self.reason.size:.1f}%")
                   for code, name in enumerate(REASONS) if self.counts[code] or code == 0]
        ax_reason.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9,
                         title="first cut failed")
        for ax in (ax_image, ax_reason):
            ax.set_xlabel("x [pixel]")
            ax.set_xlim(extent[:2])
            ax.set_ylim(extent[2:])
        ax_image.set_ylabel("y [pixel]")
        if title:
            figure.suptitle(title)
        if path is not None:
            with tm.atomic_output(path, overwrite=overwrite, inputs=inputs) as tmp:
                _save_picture(figure, tmp, path)
        return figure


def _check_picture_path(name, path):
    """None, or a path whose extension (none: PNG) names a format matplotlib writes."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = tm._check_path(name, path, optional=True)
    extension = os.path.splitext(path or "")[1][1:].lower()
    if extension and extension not in FigureCanvasBase.get_supported_filetypes():
        raise tm.BadInputError(f"{name}={path!r}: not a picture format matplotlib writes "
                               f"({', '.join(PICTURE_FORMATS)}, ...)")
    return path


def _save_picture(figure, tmp, path):
    figure.savefig(tmp, dpi=100, format=os.path.splitext(path)[1][1:].lower() or "png")


def _binned_extent(shape, factor):
    return (0.5, shape[1] * factor + 0.5, 0.5, shape[0] * factor + 0.5)


def _block_sum(image, factor, dtype):
    """Sums over factor x factor blocks, the image padded with zeros to whole blocks.

    Rows first, then columns: both reductions run along contiguous memory.
    """
    n_y, n_x = image.shape
    pad_y, pad_x = -n_y % factor, -n_x % factor
    if pad_y or pad_x:
        image = np.pad(image, ((0, pad_y), (0, pad_x)))
        n_y, n_x = image.shape
    rows = image.reshape(n_y // factor, factor, n_x).sum(axis=1, dtype=dtype)
    return rows.reshape(n_y // factor, n_x // factor, factor).sum(axis=2, dtype=dtype)


def _bin_mean(image, factor):
    """Mean of the finite pixels of each factor x factor block (NaN where none is finite)."""
    if factor == 1:
        return image
    finite = np.isfinite(image)
    total = _block_sum(np.where(finite, image, 0), factor, np.float64)
    count = _block_sum(finite, factor, np.int32)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def _bin_mode(codes, factor, present=None):
    """The most common code of each factor x factor block (the lowest on a tie).

    ``present``: the codes that occur (default: all of them, found here).
    """
    if factor == 1:
        return codes
    best = best_count = None
    for code in (np.unique(codes) if present is None else sorted(present)):
        count = _block_sum(codes == code, factor, np.int32)
        if best is None:
            best, best_count = np.full(count.shape, code, dtype=np.uint8), count
        else:
            better = count > best_count
            best[better], best_count[better] = code, count[better]
    return best


# ---- From files


def _se_identity(files):
    """(expnum, ccdnum, band) of an SE image: from ``files``, else from its image header."""
    expnum, ccdnum, band = files.expnum, files.ccdnum, files.band
    if expnum is None or ccdnum is None or band is None:
        se = _OpenFiles({"se_image": files.se_image})
        try:
            header = se.header("se_image")
            expnum = expnum if expnum is not None else _header_integer(header, "EXPNUM", files)
            ccdnum = ccdnum if ccdnum is not None else _header_integer(header, "CCDNUM", files)
            if band is None and isinstance(header.get("BAND"), str):
                band = header["BAND"].strip() or None
        finally:
            se.close()
    return expnum, ccdnum, band


def _header_integer(header, key, files):
    value = header.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise tm.BadInputError(f"{_show(*files.se_image)}: {key} = {value!r} is not an integer")
    if key == "EXPNUM" and not 1 <= value <= MAX_EXPNUM:
        raise tm.BadInputError(f"{_show(*files.se_image)}: {key} = {value} is out of range (1..{MAX_EXPNUM})")
    return int(value)


def _transient_cells(transient_masks, expnum, ccdnum, where):
    """(epoch, cells, cell_size, demo): the transient mask of the SE image's CCD, at cell level.

    None when the cut cannot apply (no EXPNUM/CCDNUM, or an exposure in no
    epoch of the count maps), with a warning.
    """
    if expnum is None or ccdnum is None:
        log.warning("%s: no EXPNUM/CCDNUM (in the info or the SE header): transient-mask cut not applied",
                    where)
        return None
    if not 1 <= int(ccdnum) <= tm.N_CCD:
        raise tm.BadInputError(f"{where}: CCDNUM {ccdnum} outside 1..{tm.N_CCD}")
    if not 1 <= int(expnum) <= MAX_EXPNUM:
        raise tm.BadInputError(f"{where}: EXPNUM {expnum} outside 1..{MAX_EXPNUM}")
    epoch = str(transient_masks.epoch_of([int(expnum)])[0])
    if not epoch or epoch not in transient_masks.maps:
        log.warning("%s: EXPNUM %d is in %s: transient-mask cut not applied", where, int(expnum),
                    f"epoch {epoch}, which the count maps do not have" if epoch else "no DES epoch")
        return None
    try:
        mask = transient_masks.mask_for(epoch)
    except tm.BadInputError as exc:  # the count maps: every SE image of the epoch would fail alike
        raise _SharedInputError(str(exc)) from None
    return epoch, mask.mask[int(ccdnum) - 1].copy(), tuple(mask.cell_size), bool(transient_masks.maps.demo)


class _SharedInputError(tm.BadInputError):
    """A bad input all the SE images share (the count maps): it stops the run, not one image."""


def _expand_cells(cells, cell_size, shape, where):
    """The cell mask of a CCD on the SE pixel grid (DES SE images are whole, untrimmed CCDs)."""
    n_y, n_x = shape
    if n_y > tm.CCD_NY or n_x > tm.CCD_NX:
        raise tm.BadInputError(f"{where}: SE image {n_x}x{n_y} is larger than a DECam CCD")
    cell_ny, cell_nx = cell_size
    cells = cells[: -(-n_y // cell_ny), : -(-n_x // cell_nx)]
    return np.repeat(np.repeat(cells, cell_nx, axis=1)[:, :n_x], cell_ny, axis=0)[:n_y]


def _compute(files, coadd, transient, ignore, grid_step, read_se_image):
    """BackgroundPixels of one SE image, reading its files and the coadd cutout under it."""
    se = _OpenFiles({role: getattr(files, role) for role in SE_ROLES})
    try:
        shape = se.check(files.label)
        se_header = se.header("se_image").copy()
        se_wcs = _celestial_wcs(se_header, files.se_image[0])
        if se_wcs is None:
            path, ext = files.se_image
            shown = f"{path}[{se.hdu('se_image')[0] if ext is None else ext}]"
            raise tm.BadInputError(f"{shown}: no usable celestial WCS in the SE image header")
        # A DES coadd tile is 10000 x 10000: read only the part under the SE image.
        box = coadd.box(se_wcs, shape)
        weight, bmask = se.read("se_weight"), se.read("se_bmask")
        _check_integer(bmask, *files.se_bmask, "--se_bmask")
        image = se.read("se_image") if read_se_image else None
        hdus = {role: se.hdu(role)[0] for role in SE_ROLES}
    finally:
        se.close()
    if box is None:  # the SE image is off the coadd: nothing to read
        cutout, offset = {role: np.zeros((0, 0), dtype=np.int32) for role in COADD_ROLES}, (0, 0)
    else:
        cutout, offset = coadd.cutout(box), (box[0], box[2])
        log.debug("%s: coadd cutout y %d..%d, x %d..%d of %s", files.label, *box, coadd.shape)
    expnum = files.expnum if files.expnum is not None else _header_integer(se_header, "EXPNUM", files)
    ccdnum = files.ccdnum if files.ccdnum is not None else _header_integer(se_header, "CCDNUM", files)
    epoch, transient_mask, demo = "", None, False
    if transient is not None:
        epoch, cells, cell_size, demo = transient
        transient_mask = _expand_cells(cells, cell_size, shape, files.label)
    pixels = BackgroundPixels(
        se_wcs, coadd.wcs, se_weight=weight, se_bmask=bmask, coadd_weight=cutout["coadd_weight"],
        coadd_bmask=cutout["coadd_bmask"], coadd_seg=cutout["coadd_seg"], transient_mask=transient_mask,
        ignore_bits=ignore, se_image=image, coadd_shape=coadd.shape, coadd_offset=offset,
        grid_step=grid_step)
    pixels.files, pixels.se_header, pixels.hdus = files, se_header, {**hdus, **coadd.hdus}
    pixels.expnum, pixels.ccdnum, pixels.epoch, pixels.demo = expnum, ccdnum, epoch, demo
    pixels.band = files.band if files.band is not None else (se_header.get("BAND") or None)
    return pixels


def good_background(files: ImageFiles, *, transient_masks=None, ignore_bits=0,
                    grid_step: int = GRID_STEP, coadd: "Coadd" = None,
                    read_se_image: bool = True) -> BackgroundPixels:
    """Find the good background pixels of one SE image from its files.

    Parameters
    ----------
    files : ImageFiles
        The SE image, weight and bmask and the coadd weight, bmask and
        segmentation map (see `PizzaInfo` for a pizza-cutter YAML).
    transient_masks : transient_masks.TransientMasks, optional
        When given, pixels in the masks of the SE exposure's epoch and CCD are
        removed.  EXPNUM and CCDNUM come from ``files`` or the SE header; an
        exposure in no epoch of the count maps leaves the cut out, with a
        warning.
    ignore_bits : int or str
        Bmask bits to ignore, e.g. ``"SUSPECT,STREAK"``.
    grid_step : int
        Of the SE -> coadd map.
    coadd : Coadd, optional
        The coadd products, already open (for many SE images of one tile);
        default: open ``files``' coadd products for this call.
    read_se_image : bool
        Read the SE image itself (only the picture needs it).

    Returns
    -------
    BackgroundPixels
        With extra attributes ``files``, ``se_header``, ``expnum``, ``ccdnum``,
        ``band``, ``epoch`` ('' when no transient cut) and ``demo`` (masks from
        demo maps).  An SE image wholly off the coadd (``overlaps`` False) is
        all OFF_COADD, with a warning; the coadd is not read for it.

    Examples
    --------
    >>> paths = write_example_tile("tile", n_images=1, se_shape=(256, 128))
    >>> files = PizzaInfo(paths["info"]).files(0)
    >>> pixels = good_background(files, ignore_bits="SUSPECT")
    >>> pixels.shape, pixels.expnum, pixels.ccdnum, 0.6 < pixels.good_fraction < 0.95
    ((256, 128), 791215, 57, True)
    >>> good_background(ImageFiles("se.fits[sci]", "se.fits[wgt]", "se.fits[msk]",
    ...                            *paths["coadd"]))
    Traceback (most recent call last):
    ...
    transient_masks.BadInputError: se.fits: FITS image for --se_image not found
    """
    files, transient_masks = _check_image_files("files", files), _check_masks(transient_masks)
    grid_step = tm._check_int("grid_step", grid_step, 1)
    if coadd is not None and not isinstance(coadd, Coadd):
        raise tm.BadInputError(f"coadd={tm._describe_value(coadd)}: must be a Coadd, or None (open the coadd "
                               "products of files)")
    read_se_image = tm._check_flag("read_se_image", read_se_image)
    ignore = _ignore_value(ignore_bits)
    own = coadd is None
    if own:
        coadd = Coadd(*files.coadd())
    try:
        transient = None
        if transient_masks is not None:
            expnum, ccdnum, _ = _se_identity(files)
            transient = _transient_cells(transient_masks, expnum, ccdnum, files.label)
        pixels = _compute(files, coadd, transient, ignore, grid_step, read_se_image)
    finally:
        if own:
            coadd.close()
    if not pixels.overlaps:
        log.warning("%s: the SE image and the coadd do not overlap: every pixel is OFF_COADD", files.label)
    return pixels


# ---- Outputs


def _provenance(pixels):
    """Cards saying where the output came from."""
    import datetime

    files = pixels.files
    hdus = getattr(pixels, "hdus", {})
    cards = []
    for number, role in enumerate(ROLES):
        path, ext = getattr(files, role)
        ext = hdus.get(role, "") if ext is None else ext
        cards.append((f"BGIN{number}", tm._header_text(f"{os.path.basename(path)}[{ext}]"), role))
    cards += [
        ("EXPNUM", -1 if pixels.expnum is None else int(pixels.expnum), "exposure of the SE image"),
        ("CCDNUM", -1 if pixels.ccdnum is None else int(pixels.ccdnum), "CCD of the SE image"),
        ("TM_EPOCH", pixels.epoch, "epoch of the transient masks ('' = not applied)"),
        ("DEMO", bool(pixels.demo), "T = transient masks from SYNTHETIC demo counts"),
        ("TM_VERS", tm.__version__, "transient_masks version"),
        ("DATE", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
         "UTC date of writing"),
    ]
    return cards


def _picture_title(pixels) -> str:
    return (f"{os.path.basename(pixels.files.se_image[0])}  EXPNUM {pixels.expnum}  CCDNUM {pixels.ccdnum}"
            + (f"  transient masks {pixels.epoch}" if pixels.epoch else "")
            + ("  [DEMO transient masks]" if pixels.demo else ""))


def write_outputs(pixels, fits_path: str, png_path: str = None, *, overwrite: bool = False,
                  inputs=None) -> tuple:
    """Write the reason image (and the picture) of `good_background`'s result, atomically.

    Both names are checked (`_check_outputs`) before either is written, and
    both files appear together: if drawing the picture fails, neither does.
    Returns the paths written.
    """
    # The provenance comes from the files good_background read (arrays alone have none).
    if not isinstance(pixels, BackgroundPixels) or not hasattr(pixels, "files"):
        raise tm.BadInputError(f"pixels={tm._describe_value(pixels)}: must be the BackgroundPixels of "
                               "good_background (of files)")
    tm._check_path("fits_path", fits_path)
    if not (isinstance(png_path, str) and not png_path):  # '': no picture, as None
        _check_picture_path("png_path", png_path)
    overwrite = tm._check_flag("overwrite", overwrite)
    inputs = pixels.files.paths() if inputs is None else tm._path_list("inputs", inputs)
    paths = [("the output image", fits_path)] + ([("the picture", png_path)] if png_path else [])
    _check_outputs(paths, overwrite=overwrite, inputs=inputs)
    with contextlib.ExitStack() as stack:
        fits_tmp = stack.enter_context(tm.atomic_output(fits_path, overwrite=overwrite, inputs=inputs))
        pixels._write_fits(fits_tmp, pixels.se_header, _provenance(pixels))
        if png_path:
            png_tmp = stack.enter_context(tm.atomic_output(png_path, overwrite=overwrite, inputs=inputs))
            _save_picture(pixels.plot(title=_picture_title(pixels)), png_tmp, png_path)
    return tuple(path for _, path in paths)


def _has_suffix(path, suffixes):
    return path.lower().endswith(tuple(suffixes))


def _check_outputs(paths, *, overwrite: bool = False, inputs=()) -> None:
    """Refuse a run's outputs, (what, path) pairs, before any is written.

    `transient_masks.check_outputs` (no input of the run, even with
    ``overwrite``; no directory, FIFO...; no existing file unless
    ``overwrite``), no two the same (saying which two), and a file can be
    created in each directory (tried: permission bits do not stop root, a
    read-only file system does).

    Examples
    --------
    >>> _check_outputs([("-o", "good.fits"), ("--png", "good.fits")])
    Traceback (most recent call last):
    ...
    transient_masks.BadInputError: good.fits: -o and --png would be the same file
    """
    seen = {}
    for what, path in paths:
        final = os.path.abspath(path)
        if final in seen:
            raise tm.BadInputError(f"{path}: {seen[final]} and {what} would be the same file")
        seen[final] = what
    tm.check_outputs([path for _, path in paths], overwrite, inputs)
    for directory in dict.fromkeys(os.path.dirname(final) for final in seen):
        if not _can_write_in(directory):
            path = next(path for _, path in paths if os.path.dirname(os.path.abspath(path)) == directory)
            raise tm.BadInputError(f"{path}: cannot write in the directory {directory}")


def _can_write_in(directory) -> bool:
    """Whether a file can be created in ``directory`` (tried: permissions, read-only file systems...)."""
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".goodbkg-probe-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def _remove_temporaries(paths):
    """Remove what `transient_masks.atomic_output` may have left of ``paths`` in a killed process."""
    import glob

    for path in paths:
        final = os.path.abspath(path)
        prefix = tm._temporary_prefix(os.path.basename(final))
        pattern = os.path.join(glob.escape(os.path.dirname(final)), f"{glob.escape(prefix)}*.tmp*")
        for leftover in glob.glob(pattern):
            with contextlib.suppress(OSError):
                os.unlink(leftover)


# ---- Many SE images


@dataclass
class SEResult:
    """What became of one SE image in `iter_good_background`.

    ``status`` is ``"done"`` (outputs written, if asked), ``"skipped"`` (wholly
    off the coadd: no output) or ``"failed"`` (``message`` says why, in one
    line; ``unexpected`` when it was not bad input but a failure of the code).
    ``counts`` are the pixels per reason code.  ``pixels`` is the
    `BackgroundPixels` when the image ran in this process, else None.
    """

    files: ImageFiles
    status: str = "done"
    message: str = ""
    expnum: int = None
    ccdnum: int = None
    band: str = None
    epoch: str = ""
    demo: bool = False
    counts: tuple = ()
    outputs: tuple = ()
    unexpected: bool = False
    pixels: BackgroundPixels = field(default=None, repr=False, compare=False)

    @property
    def index(self) -> int:
        return self.files.index

    @property
    def label(self) -> str:
        return self.files.label

    @property
    def good_fraction(self) -> float:
        """Good pixels over all pixels (NaN when failed)."""
        total = sum(self.counts)
        return self.counts[0] / total if total else float("nan")


@dataclass
class _Task:
    """One SE image to run, with all it needs (sent to worker processes)."""

    files: ImageFiles
    transient: tuple = None  # (epoch, cells, cell_size, demo) of _transient_cells
    fits_path: str = None
    png_path: str = None
    ignore_bits: int = 0
    grid_step: int = GRID_STEP
    overwrite: bool = False
    inputs: tuple = ()
    keep_pixels: bool = True


def _failed(files, exc, *, catch=True) -> SEResult:
    """The result of an SE image that failed with ``exc``."""
    if not catch:
        raise exc
    if isinstance(exc, (tm.BadInputError, MappingError)):
        return SEResult(files, status="failed", message=tm._one_line(exc))
    log.debug("%s: unexpected failure", files.label, exc_info=exc)
    return SEResult(files, status="failed", unexpected=True,
                    message=f"unexpected failure: {type(exc).__name__}: {tm._one_line(exc)}")


def _run_task(task: _Task, coadd: Coadd, catch: bool = True) -> SEResult:
    """Run one SE image (in this process or a worker); failures become a failed result."""
    files = task.files
    try:
        pixels = _compute(files, coadd, task.transient, task.ignore_bits, task.grid_step,
                          read_se_image=task.png_path is not None)
        result = SEResult(files, expnum=pixels.expnum, ccdnum=pixels.ccdnum, band=pixels.band,
                          epoch=pixels.epoch, demo=pixels.demo, counts=tuple(int(n) for n in pixels.counts))
        if not pixels.overlaps:
            result.status, result.message = "skipped", "the SE image and the coadd do not overlap"
        elif task.fits_path:
            result.outputs = write_outputs(pixels, task.fits_path, task.png_path, overwrite=task.overwrite,
                                           inputs=task.inputs)
        if task.keep_pixels:
            result.pixels = pixels
        return result
    except Exception as exc:  # one bad SE image does not stop the others
        return _failed(files, exc, catch=catch)


def _prepare(images, coadds, transient_masks, ignore, grid_step, catch=True):
    """A `_Task` per SE image (or its failed `SEResult`), opening each coadd once."""
    plan = []
    for files in images:
        key = files.coadd()
        if key not in coadds:
            coadds[key] = Coadd(*key)
        try:
            expnum, ccdnum, band = _se_identity(files)
            files = ImageFiles(*(getattr(files, role) for role in ROLES), expnum=expnum, ccdnum=ccdnum,
                               band=band, index=files.index, source=files.source)
            transient = None
            if transient_masks is not None:
                transient = _transient_cells(transient_masks, expnum, ccdnum, files.label)
            plan.append(_Task(files, transient, ignore_bits=ignore, grid_step=grid_step))
        except _SharedInputError:
            raise
        except Exception as exc:
            plan.append(_failed(files, exc, catch=catch))
    return plan


def _run_tasks(plan, coadds, client=None, progress=False, catch=True):
    """Yield the `SEResult` of every item of ``plan``: here, or on the workers of ``client``."""
    if client is None:
        for item in tm._progress(plan, progress, "image"):
            yield item if isinstance(item, SEResult) else _run_task(item, coadds[item.files.coadd()], catch)
        return
    from distributed import as_completed

    tasks = [item for item in plan if isinstance(item, _Task)]
    yield from (item for item in plan if isinstance(item, SEResult))
    if not tasks:
        return
    shared = {key: tm._share(client, coadd, "coadd") for key, coadd in coadds.items()}
    futures = {}
    for task in tasks:
        task.keep_pixels = False  # the pixels stay on the worker; the outputs are in files
        futures[client.submit(_run_task, task, shared[task.files.coadd()], pure=False)] = task
    try:
        if progress:
            tm._progress_bar(list(futures))
        for future in as_completed(list(futures)):
            try:
                yield future.result()
            except Exception as exc:  # the worker died (memory, signal): this image failed
                yield _failed(futures[future].files, exc, catch=catch)
    finally:
        client.cancel(list(futures))


def _assign_outputs(plan, output_dir, png, overwrite, inputs):
    """Give each task its output names in ``output_dir``; the (what, path) pairs to check."""
    paths = []
    for task in plan:
        if isinstance(task, _Task):
            files = task.files
            name = output_name(files.expnum, files.ccdnum, files.band, files.se_image[0])
            task.fits_path = os.path.join(output_dir, name)
            task.png_path = task.fits_path[: -len(".fits")] + ".png" if png else None
            task.overwrite, task.inputs = overwrite, tuple(inputs)
            paths.append((f"the output of {files.label}", task.fits_path))
            if task.png_path:
                paths.append((f"the picture of {files.label}", task.png_path))
    return paths


def iter_good_background(images, *, transient_masks=None, ignore_bits=0, output_dir: str = None,
                         png: bool = False, overwrite: bool = False, client=None, progress: bool = False,
                         grid_step: int = GRID_STEP):
    """Find the good background pixels of many SE images; yield an `SEResult` for each.

    The coadd products are opened once (per process) and only the part under
    each SE image is read.  One bad SE image does not stop the others: its
    result says ``failed`` and why.

    Parameters
    ----------
    images : iterable of ImageFiles
        The SE images, e.g. ``PizzaInfo(path).images("all")``.
    transient_masks : transient_masks.TransientMasks, optional
        Cut the pixels in the transient masks of each exposure's epoch and CCD.
    ignore_bits : int or str
        Bmask bits to ignore in both bmasks.
    output_dir : str, optional
        Write each SE image's reason image there, named by `output_name`
        (every name is checked before the first SE image runs); default:
        write nothing.
    png : bool
        With ``output_dir``: also draw each picture (``.png`` beside the FITS).
    overwrite : bool
        Replace existing outputs (an input is never written over).
    client : dask.distributed.Client, optional
        Run the SE images on its workers (see `transient_masks.dask_client`);
        the results then come back without ``pixels``.  Default: one at a
        time in this process, in order.
    progress : bool
        Show a progress bar on stderr.

    Yields
    ------
    SEResult
        In the order the SE images finish.

    Examples
    --------
    >>> paths = write_example_tile("tile", n_images=3, se_shape=(256, 128))
    >>> tile = PizzaInfo(paths["info"])
    >>> for result in iter_good_background(tile.images("all"), output_dir="tile"):
    ...     print(result.index, result.status, os.path.basename(result.outputs[0]))
    0 done D00791215_r_c57_goodbkg.fits
    1 done D00791216_r_c58_goodbkg.fits
    2 done D00791217_r_c59_goodbkg.fits
    >>> summary_table([]).colnames[:6]
    ['INDEX', 'LABEL', 'SE_IMAGE', 'SE_WEIGHT', 'SE_BMASK', 'OUTPUT']
    """
    # Checked now, not at the first result: a generator would run none of this before.
    if isinstance(images, (str, bytes, os.PathLike)) or not hasattr(images, "__iter__"):
        raise tm.BadInputError(f"images={tm._describe_value(images)}: must be a list of ImageFiles "
                               "(e.g. PizzaInfo(path).images('all'))")
    images = [_check_image_files(f"images[{k}]", files) for k, files in enumerate(images)]
    transient_masks = _check_masks(transient_masks)
    ignore = _ignore_value(ignore_bits)
    output_dir = tm._check_path("output_dir", output_dir, optional=True)
    png, overwrite, progress = (tm._check_flag(name, value) for name, value in
                                (("png", png), ("overwrite", overwrite), ("progress", progress)))
    tm._check_client(client)
    grid_step = tm._check_int("grid_step", grid_step, 1)
    return _iter_good_background(images, transient_masks, ignore, output_dir, png, overwrite, client, progress,
                                 grid_step)


def _iter_good_background(images, transient_masks, ignore, output_dir, png, overwrite, client, progress,
                          grid_step):
    """The results of `iter_good_background`, its arguments checked."""
    coadds = {}
    try:
        plan = _prepare(images, coadds, transient_masks, ignore, grid_step)
        if output_dir is not None:
            inputs = list(dict.fromkeys(path for files in images for path in files.paths()))
            _check_outputs(_assign_outputs(plan, output_dir, png, overwrite, inputs), overwrite=overwrite,
                          inputs=inputs)
        yield from _run_tasks(plan, coadds, client=client, progress=progress)
    finally:
        for coadd in coadds.values():
            coadd.close()


def summary_table(results, meta: dict = None) -> "astropy.table.Table":
    """The summary table of a run: a row per SE image, in index order (an astropy Table).

    Columns: INDEX, LABEL, the SE_IMAGE/SE_WEIGHT/SE_BMASK files, OUTPUT and
    PNG (the files written), EXPNUM, CCDNUM (-1 unknown), BAND, EPOCH (of the
    transient cut; '' none), N_<REASON> (pixels per reason code), N_PIXELS,
    GOOD_FRAC, STATUS (done / skipped / failed) and MESSAGE (why).
    """
    from astropy.table import Table

    if isinstance(results, (str, bytes)) or not hasattr(results, "__iter__"):
        raise tm.BadInputError(f"results={tm._describe_value(results)}: must be a list of SEResult "
                               "(of iter_good_background)")
    results = list(results)
    for k, result in enumerate(results):
        if not isinstance(result, SEResult):
            raise tm.BadInputError(f"results[{k}]={tm._describe_value(result)}: must be an SEResult")
    if meta is not None and not isinstance(meta, Mapping):
        raise tm.BadInputError(f"meta={tm._describe_value(meta)}: must be a dict (the table's header)")
    results = sorted(results, key=lambda r: (r.index, r.label))

    def text(values):
        return np.array(list(values), dtype=str) if results else np.zeros(0, dtype="U1")

    def integers(values):
        return np.array(list(values), dtype=np.int64)

    columns = {
        "INDEX": integers(r.index for r in results),
        "LABEL": text(r.label for r in results),
        **{role.upper(): text(_show(*getattr(r.files, role)) for r in results) for role in SE_ROLES},
        "OUTPUT": text(r.outputs[0] if r.outputs else "" for r in results),
        "PNG": text(r.outputs[1] if len(r.outputs) > 1 else "" for r in results),
        "EXPNUM": integers(-1 if r.expnum is None else r.expnum for r in results),
        "CCDNUM": integers(-1 if r.ccdnum is None else r.ccdnum for r in results),
        "BAND": text(r.band or "" for r in results),
        "EPOCH": text(r.epoch for r in results),
    }
    counts = np.array([r.counts or (0,) * len(REASONS) for r in results], dtype=np.int64).reshape(-1, len(REASONS))
    for code, name in enumerate(REASONS):
        columns[f"N_{name}"] = counts[:, code]
    columns["N_PIXELS"] = counts.sum(axis=1)
    columns["GOOD_FRAC"] = np.array([r.good_fraction for r in results], dtype=np.float64)
    columns["STATUS"] = text(r.status for r in results)
    columns["MESSAGE"] = text(r.message for r in results)
    table = Table(columns, meta=dict(meta or {}))
    table["GOOD_FRAC"].format = ".5f"
    return table


# ---- A synthetic tile in DES layout (examples, tests, benchmarks)

#: Pixel scale of DES coadds and (near the centre of the focal plane) DECam, in degrees.
_PIXEL_DEG = 0.263 / 3600
#: The CCDs of the example tile's SE images (not the dead CCD 61).
_EXAMPLE_CCDS = [57, 58, 59, 60, 62] + [n for n in range(1, 57) if n != 31]


def _example_se_header(centre, shape, expnum, ccdnum, band):
    """A DECam-like SE header: TPV, rotated by 90 degrees on the sky, as DES SE images are."""
    from astropy.io import fits

    n_y, n_x = shape
    header = fits.Header()
    header.update({"CTYPE1": "RA---TPV", "CTYPE2": "DEC--TPV", "CUNIT1": "deg", "CUNIT2": "deg",
                   "RADESYS": "ICRS", "EQUINOX": 2000.0, "CRVAL1": centre[0], "CRVAL2": centre[1],
                   "CRPIX1": (n_x + 1) / 2, "CRPIX2": (n_y + 1) / 2,
                   "CD1_1": 0.0, "CD1_2": _PIXEL_DEG, "CD2_1": -_PIXEL_DEG, "CD2_2": 0.0})
    # A gentle distortion: a few pixels across a whole CCD.
    distortion = {"PV1_0": 0.0, "PV1_1": 1.0, "PV1_2": 0.0, "PV1_4": 4e-3, "PV1_5": -2e-3, "PV1_6": 3e-3,
                  "PV2_0": 0.0, "PV2_1": 1.0, "PV2_2": 0.0, "PV2_4": -3e-3, "PV2_5": 2e-3, "PV2_6": 5e-3}
    header.update(distortion)
    header.update({"EXPNUM": expnum, "CCDNUM": ccdnum, "BAND": band})
    return header


def _paint_disks(image, rng, n, radius, value_of):
    """Paint ``n`` disks of random radius up to ``radius`` at random places (objects, stars)."""
    n_y, n_x = image.shape
    for k in range(n):
        cy, cx, r = rng.integers(0, n_y), rng.integers(0, n_x), rng.integers(2, radius + 1)
        y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, n_y), max(cx - r, 0), min(cx + r + 1, n_x)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        image[y0:y1, x0:x1][disk] = value_of(k)


def write_example_tile(directory: str, *, n_images: int = 3, se_shape=(tm.CCD_NY, tm.CCD_NX),
                       coadd_shape=None, first_expnum: int = 791215, fpack: bool = True,
                       seed: int = 0, tilename: str = "DES2122+0001", band: str = "r") -> dict:
    """Write a small synthetic coadd tile and its SE images in DES layout, for examples and tests.

    Files (in ``directory``, created if needed): the coadd ``TILE_BAND.fits.fz``
    (extensions sci, msk, wgt), its segmentation map ``TILE_BAND_segmap.fits.fz``
    (the image in HDU 1, after an empty primary), ``n_images`` SE images
    ``DEXPNUM_BAND_cCCD_immasked.fits.fz`` (sci, msk, wgt; a DECam-like TPV WCS
    rotated by 90 degrees, EXPNUM, CCDNUM and BAND in the headers, exposures
    of Y6 from ``first_expnum``) and the pizza-cutter info file
    ``TILE_BAND_pizza_info.yaml`` listing them.  ``fpack``: tile-compressed
    (astropy CompImageHDU, RICE, one tile per row as fpack does), else plain
    ``.fits``.  The data are random but seeded: sky noise and stars, a bad
    column and cosmic rays in the SE bmask, objects in the segmentation map.

    Returns
    -------
    dict
        ``info`` (the YAML), ``coadd`` (the weight, bmask and seg as
        ``path[ext]``) and ``se`` (the SE image files).

    Examples
    --------
    >>> paths = write_example_tile("tile", n_images=2, se_shape=(256, 128))
    >>> sorted(os.listdir("tile"))  # doctest: +NORMALIZE_WHITESPACE
    ['D00791215_r_c57_immasked.fits.fz', 'D00791216_r_c58_immasked.fits.fz',
     'DES2122+0001_r.fits.fz', 'DES2122+0001_r_pizza_info.yaml', 'DES2122+0001_r_segmap.fits.fz']
    """
    import yaml
    from astropy.io import fits
    from astropy.wcs import WCS

    directory = tm._check_path("directory", directory)
    n_images = tm._check_int("n_images", n_images, 1)
    se_ny, se_nx = _check_shape("se_shape", se_shape, 2, _EXAMPLE_SE_SIDE,
                                f" (a DECam CCD is {tm.CCD_NY} x {tm.CCD_NX})")
    coadd_ny, coadd_nx = (_check_shape("coadd_shape", coadd_shape, 1, _EXAMPLE_COADD_SIDE, " (a DES coadd tile)")
                          if coadd_shape is not None else (2 * max(se_ny, se_nx) + 64,) * 2)
    first_expnum = tm._check_int("first_expnum", first_expnum, 1, MAX_EXPNUM - n_images + 1)
    fpack = tm._check_flag("fpack", fpack)
    seed = tm._check_int("seed", seed, 0)
    # Both go into file names and FITS headers.
    tilename = _check_plain_name("tilename", tilename, r"[A-Za-z0-9][A-Za-z0-9+._-]*",
                                 "ASCII letters, digits and + . _ -, as DES2122+0001")
    band = _check_plain_name("band", band, r"[A-Za-z0-9]+", "ASCII letters and digits, as r or VR")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise tm.BadInputError(f"directory={directory!r}: cannot create it ({exc.strerror or exc})") from None
    if not _can_write_in(directory):
        raise tm.BadInputError(f"directory={directory!r}: cannot write in it")
    rng = np.random.default_rng(seed)
    suffix = ".fits.fz" if fpack else ".fits"

    def hdu(data, header, name):
        if fpack:
            return fits.CompImageHDU(data, header, name=name)
        return fits.ImageHDU(data, header, name=name)

    coadd_header = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CUNIT1": "deg", "CUNIT2": "deg",
                                "RADESYS": "ICRS", "EQUINOX": 2000.0, "CRVAL1": 320.688891,
                                "CRVAL2": 0.016667, "CRPIX1": (coadd_nx + 1) / 2, "CRPIX2": (coadd_ny + 1) / 2,
                                "CD1_1": -_PIXEL_DEG, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": _PIXEL_DEG})
    coadd_header["TILENAME"], coadd_header["BAND"] = tilename, band
    weight = (1.0 + 0.05 * rng.random((coadd_ny, coadd_nx), dtype=np.float32)).astype(np.float32)
    weight[:, : coadd_nx // 50] = 0.0  # a strip with no coverage
    bmask = np.zeros((coadd_ny, coadd_nx), dtype=np.int32)
    bmask[rng.random((coadd_ny, coadd_nx)) < 0.002] = tm.MASK_BITS["SUSPECT"]
    seg = np.zeros((coadd_ny, coadd_nx), dtype=np.int32)
    n_objects = max(1, coadd_ny * coadd_nx // 800)
    _paint_disks(seg, rng, n_objects, 12, lambda k: k + 1)
    coadd_name, seg_name = f"{tilename}_{band}{suffix}", f"{tilename}_{band}_segmap{suffix}"
    fits.HDUList([fits.PrimaryHDU(), hdu(np.zeros((coadd_ny, coadd_nx), np.float32), coadd_header, "sci"),
                  hdu(bmask, coadd_header, "msk"), hdu(weight, coadd_header, "wgt")]).writeto(
        os.path.join(directory, coadd_name), overwrite=True)
    del weight, bmask
    fits.HDUList([fits.PrimaryHDU(), hdu(seg, coadd_header, None)]).writeto(
        os.path.join(directory, seg_name), overwrite=True)
    del seg

    coadd_wcs = WCS(coadd_header)
    entries, se_files = [], []
    golden = (np.sqrt(5) - 1) / 2
    for i in range(n_images):
        expnum, ccdnum = first_expnum + i, _EXAMPLE_CCDS[i % len(_EXAMPLE_CCDS)]
        # Spread the SE images over the tile, wholly on it (SE y runs along coadd x).
        fx, fy = 0.3 + 0.4 * ((i * golden) % 1), 0.3 + 0.4 * ((i * golden * golden + 0.5) % 1)
        centre = coadd_wcs.all_pix2world([[fx * (coadd_nx - 1), fy * (coadd_ny - 1)]], 0)[0]
        header = _example_se_header(centre, (se_ny, se_nx), expnum, ccdnum, band)
        image = rng.normal(100.0, 5.0, (se_ny, se_nx)).astype(np.float32)
        _paint_disks(image, rng, max(1, se_ny * se_nx // 20000), 6, lambda k: 400.0)
        se_weight = (0.04 * (1.0 + 0.05 * rng.standard_normal((se_ny, se_nx)))).astype(np.float32)
        se_bmask = np.zeros((se_ny, se_nx), dtype=np.int16)
        column = rng.integers(0, se_nx)
        se_bmask[:, column], se_weight[:, column] = tm.MASK_BITS["BPM"], 0.0
        se_bmask[rng.random((se_ny, se_nx)) < 0.001] = tm.MASK_BITS["CRAY"]
        se_bmask[rng.random((se_ny, se_nx)) < 0.001] = tm.MASK_BITS["SUSPECT"]
        name = f"D{expnum:08d}_{band}_c{ccdnum:02d}_immasked{suffix}"
        fits.HDUList([fits.PrimaryHDU(), hdu(image, header, "sci"), hdu(se_bmask, header, "msk"),
                      hdu(se_weight, header, "wgt")]).writeto(os.path.join(directory, name), overwrite=True)
        se_files.append(os.path.join(directory, name))
        entries.append({"expnum": expnum, "ccdnum": ccdnum, "band": band, "image_path": name,
                        "image_ext": "sci", "weight_path": name, "weight_ext": "wgt", "bmask_path": name,
                        "bmask_ext": "msk", "image_shape": [se_ny, se_nx]})
    info = {"tilename": tilename, "band": band, "image_path": coadd_name, "image_ext": "sci",
            "weight_path": coadd_name, "weight_ext": "wgt", "bmask_path": coadd_name, "bmask_ext": "msk",
            "seg_path": seg_name, "seg_ext": 1, "image_shape": [coadd_ny, coadd_nx], "position_offset": 1,
            "src_info": entries}
    info_path = os.path.join(directory, f"{tilename}_{band}_pizza_info.yaml")
    with open(info_path, "w") as out:
        yaml.safe_dump(info, out, sort_keys=False)
    coadd_path = os.path.join(directory, coadd_name)
    return {"info": info_path, "se": se_files,
            "coadd": (f"{coadd_path}[wgt]", f"{coadd_path}[msk]", os.path.join(directory, seg_name))}


# ---- Command line

_EPILOG = """\
exit codes: 0 done (SE images wholly off the coadd are skipped, with a warning);
2 bad input or usage (one line naming the file, entry or key; nothing written);
3 a run of several SE images finished, but some failed (STATUS in the summary);
1 an unexpected failure; 130 interrupted; 143 terminated."""


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``des_background.py``."""
    parser = tm._ArgumentParser(
        prog="des_background.py",
        description=__doc__.split("\n\n")[0],
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    group = parser.add_argument_group(
        "the SE images and coadd products; images as PATH or PATH[EXT], EXT a name or HDU number "
        "(no [EXT]: the first HDU that holds an image)")
    group.add_argument("--info", metavar="YAML", help="pizza-cutter info file of the coadd tile")
    group.add_argument("--se_index", metavar="N",
                       help="SE images of the info's src_info (from 0): N, a list N,M,..., a range N-M "
                            "(both included), a mix of those, or all")
    for role in ROLES:
        group.add_argument(f"--{role}", metavar="FITS", help=f"instead of --info: the {role.replace('_', ' ')}")
    group = parser.add_argument_group("cuts")
    group.add_argument("--ignore_bits", default="", metavar="NAMES",
                       help="bmask bits to ignore in both bmasks, DES names, e.g. SUSPECT,STREAK")
    group.add_argument("--no_transient_cut", action="store_true",
                       help="do not cut the pixels in the transient masks")
    group = parser.add_argument_group("outputs")
    group.add_argument("-o", "--output", metavar="PATH",
                       help="a directory (an existing one, or a name ending in /; with several SE "
                            "images, created if needed), or with one SE image its FITS file "
                            f"({', '.join(FITS_SUFFIXES)}); default: the working directory, each SE "
                            "image's output named DEXPNUM_BAND_cCCD_goodbkg.fits")
    group.add_argument("--png", nargs="?", const="", metavar="FILE",
                       help="also draw each SE image's picture (beside its FITS file, .png), or with one "
                            f"SE image into FILE ({', '.join(PICTURE_FORMATS)})")
    group.add_argument("--summary", metavar="FILE",
                       help="the run's summary table, ECSV (default: TILE_BAND_goodbkg_summary.ecsv in the "
                            "output directory; for one SE image, beside its output as NAME_summary.ecsv)")
    group.add_argument("--overwrite", action="store_true",
                       help="replace existing outputs (an input is never written over)")
    group = tm._add_parallel_arguments(parser)  # --jobs, --scheduler, --quiet, as for transient_masks
    group.title = "several SE images in parallel, on Dask (one SE image always runs in this process)"
    group.description = "--quiet also leaves out the report: only warnings and errors are printed"
    tm._add_mask_options(parser)
    return parser


def _fits_stem(path):
    return path[: len(path) - len(tm._suffix(path))]


def _plan_outputs(args, plan, info):
    """Name every output of the run: (what, path) pairs to check, the output directory, the summary."""
    tasks = [item for item in plan if isinstance(item, _Task)]
    single = len(plan) == 1
    out = args.output
    if out is not None and not out:
        raise tm.BadInputError("-o '': give a directory or, with one SE image, a FITS file name")
    if args.png and not single:
        raise tm.BadInputError(f"--png {args.png}: names one picture, but there are {len(plan)} SE images "
                               "(give --png alone: each picture goes beside its FITS file)")
    if args.png and not _has_suffix(args.png, tuple("." + f for f in PICTURE_FORMATS)):
        raise tm.BadInputError(f"--png {args.png}: not a picture format ({', '.join(PICTURE_FORMATS)})")
    if args.summary is not None and not args.summary.lower().endswith(".ecsv"):
        raise tm.BadInputError(f"--summary {args.summary}: the summary table is ECSV (a name ending in .ecsv)")
    to_directory = (out is None or out.endswith(("/", os.sep)) or os.path.isdir(out)
                    or (not single and not _has_suffix(out, FITS_SUFFIXES)))
    if not to_directory and not single:
        raise tm.BadInputError(f"-o {out}: with {len(plan)} SE images, -o names a directory")
    if not to_directory and not _has_suffix(out, FITS_SUFFIXES):
        raise tm.BadInputError(f"-o {out}: the output image is FITS: give a name ending in "
                               f"{', '.join(FITS_SUFFIXES)}, or a directory (ending in /)")
    directory = (out or ".") if to_directory else None
    paths = []
    if directory is not None:
        for task in tasks:
            files = task.files
            name = output_name(files.expnum, files.ccdnum, files.band, files.se_image[0])
            task.fits_path = name if directory == "." else os.path.join(directory, name)
    else:
        tasks[0].fits_path = out
    for task in tasks:
        if args.png is not None:
            task.png_path = args.png or _fits_stem(task.fits_path) + ".png"
        task.overwrite = args.overwrite
        label = "-o" if directory is None else f"the output of {task.files.label}"
        paths.append((label, task.fits_path))
        if task.png_path:
            paths.append(("--png" if args.png else f"the picture of {task.files.label}", task.png_path))
    if args.summary is not None:
        summary = args.summary
    elif single and tasks:
        summary = _fits_stem(tasks[0].fits_path) + "_summary.ecsv"
    else:
        name = (f"{info.tilename}_{info.band}_goodbkg_summary.ecsv" if info is not None and info.tilename
                and info.band and re.fullmatch(r"[\w+.-]+", f"{info.tilename}_{info.band}")
                else "goodbkg_summary.ecsv")
        summary = os.path.join(directory or ".", name)
    paths.append(("--summary" if args.summary is not None else "the summary table", summary))
    return paths, directory, summary


def _choose_images(args):
    """(the PizzaInfo or None, the ImageFiles of the run)."""
    explicit = [role for role in ROLES if getattr(args, role)]
    if args.info is not None:
        if args.se_index is None or explicit:
            raise tm.BadInputError("give --info with --se_index, and none of --" + ", --".join(ROLES))
        info = PizzaInfo(args.info)
        return info, info.images(args.se_index)
    if args.se_index is not None:
        raise tm.BadInputError("--se_index needs --info")
    missing = [role for role in ROLES if role not in explicit]
    if missing:
        raise tm.BadInputError("missing --" + ", --".join(missing) + " (or give --info and --se_index)")
    return None, [ImageFiles(*(getattr(args, role) for role in ROLES))]


def _run_meta(args, info, masks, ignore):
    import datetime

    return {
        "TILENAME": (info.tilename if info else "") or "", "BAND": (info.band if info else "") or "",
        "INFO": args.info or "", "IGNORE_BITS": ignore, "TRANSIENT_CUT": masks is not None,
        "COUNTS": masks.maps.path if masks else "", "DEMO": bool(masks and masks.maps.demo),
        **({key.upper(): value for key, value in tm._mask_options(args).items()} if masks else {}),
        "TM_VERS": tm.__version__,
        "DATE": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "REASONS": ", ".join(f"{code} {name}" for code, name in enumerate(REASONS)),
    }


def _run(args) -> int:
    level = log.level
    if args.quiet:
        log.setLevel(logging.WARNING)
    try:
        return _run_background(args)
    finally:
        log.setLevel(level)


def _run_background(args) -> int:
    if args.no_transient_cut:  # a file given and never read would look used
        given = [f"--{name}" for name in ("counts", "epochs_file") if getattr(args, name, None)]
        if given:
            raise tm.BadInputError(f"{' and '.join(given)}: not used with --no_transient_cut (drop one)")
    ignore = bits_value(args.ignore_bits)
    info, images = _choose_images(args)
    single = len(images) == 1
    paths, results = [], []
    try:
        masks = _run_images(args, ignore, info, images, paths, results)
    except KeyboardInterrupt as exc:  # also SIGTERM; here the cluster is down, its last outputs in place
        kept = [path for _, path in paths if os.path.exists(path)]
        if not single and kept:  # each SE image's outputs are whole once written: those finished stay
            raise type(exc)(f"the outputs of the SE images finished are kept ({len(kept)} files); "
                            "no partial or temporary file left") from None
        raise
    _report_run(results, single, paths[-1][1], masks)
    return EXIT_SOME_FAILED if any(r.status == "failed" for r in results) else 0


def _run_images(args, ignore, info, images, paths, results):
    """Run the SE images of `_run_background`, filling ``paths`` (its outputs, as planned)
    and ``results``; returns the TransientMasks (or None)."""
    single = len(images) == 1
    created = None
    with contextlib.ExitStack() as stack:
        client = None
        if (args.jobs or args.scheduler) and not single:
            # What a killed worker may leave is removed once the cluster is down
            # (callbacks run last in, first out).
            stack.callback(lambda: _remove_temporaries(path for _, path in paths))
            client = stack.enter_context(tm._parallel_client(args))
            # The workers import what they need while this process prepares.
            warming = [client.submit(_warm_up, pure=False, workers=[worker])
                       for worker in client.scheduler_info()["workers"]]
        masks = None
        if not args.no_transient_cut:
            masks = tm.TransientMasks(args.counts, epochs=args.epochs_file, **tm._mask_options(args))
        inputs = ([info.path] if info else []) + [path for files in images for path in files.paths()]
        if masks is not None:
            inputs += [masks.maps.path, args.epochs_file or tm.data_path(tm.EPOCHS_FILENAME)]
        inputs = list(dict.fromkeys(inputs))
        coadds = {}
        stack.callback(lambda: [coadd.close() for coadd in coadds.values()])
        try:
            # Every input is checked, and every output named and checked, before the first SE image runs.
            plan = _prepare(images, coadds, masks, ignore, GRID_STEP, catch=not single)
            paths[:], directory, summary_path = _plan_outputs(args, plan, info)
            for task in plan:
                if isinstance(task, _Task):
                    task.inputs, task.keep_pixels = tuple(inputs), single  # many: let each image go
            created = _make_directory(directory)
            _check_outputs(paths, overwrite=args.overwrite, inputs=inputs)
            show = tm._show_progress(args)
            if client is not None:
                # Done importing before the coadd (its WCS) is sent: a worker unpickles data in
                # another thread, and two threads must not import astropy.wcs at once.
                client.gather(warming)
            for result in _run_tasks(plan, coadds, client=client, progress=show and not single,
                                     catch=not single):
                results.append(_report_one(result))
            table = summary_table(results, meta=_run_meta(args, info, masks, ignore))
            with tm.atomic_output(summary_path, overwrite=args.overwrite, inputs=inputs) as tmp:
                table.write(tmp, format="ascii.ecsv")
        except BaseException:
            if created and not os.listdir(created):
                os.rmdir(created)
            raise
    return masks


def _warm_up():
    """Import in a worker what the SE images need, ahead of the first one."""
    import astropy.io.fits  # noqa: F401
    import astropy.wcs  # noqa: F401
    import scipy.interpolate  # noqa: F401


def _make_directory(directory):
    """Create the output directory if needed (its parent must exist); the path when created."""
    if directory is None or os.path.isdir(directory):
        return None
    if os.path.lexists(directory):
        raise tm.BadInputError(f"-o {directory}: exists and is not a directory")
    parent = os.path.dirname(os.path.abspath(directory))
    if not os.path.isdir(parent):
        raise tm.BadInputError(f"-o {directory}: its parent directory {parent} does not exist")
    try:
        os.mkdir(directory)
    except OSError as exc:
        raise tm.BadInputError(f"-o {directory}: cannot create the directory ({exc.strerror or exc})") from None
    return directory


def _report_one(result):
    if result.status == "failed":
        log.warning("%s: failed: %s", result.label, result.message)
    elif result.status == "skipped":
        log.warning("%s: %s: skipped, no output written", result.label, result.message)
    else:
        log.debug("%s: %.2f%% good", result.label, 100 * result.good_fraction)
    return result


def _report_run(results, single, summary_path, masks):
    """What the run did: the reason table of one SE image on stdout, a line on stderr."""
    if not log.isEnabledFor(logging.INFO):  # --quiet
        return
    demo = " [transient masks from SYNTHETIC DEMO DATA]" if masks is not None and masks.maps.demo else ""
    if single:
        result = results[0]
        if result.status == "done":
            table = result.pixels.summary()
            table["FRACTION"].format = ".4f"
            print("\n".join(table.pformat(max_lines=-1, max_width=-1)))
            cut = f"transient masks of {result.epoch}" if result.epoch else "no transient-mask cut"
            log.info("%s: %.2f%% good background pixels (%s)%s; wrote %s", result.label,
                     100 * result.good_fraction, cut, demo, ", ".join([*result.outputs, summary_path]))
        return
    status = {name: sum(r.status == name for r in results) for name in ("done", "skipped", "failed")}
    done = [r for r in results if r.status == "done"]
    good = sum(r.counts[0] for r in done) / max(sum(sum(r.counts) for r in done), 1)
    log.info("%d SE images: %d done (%.2f%% good background pixels), %d skipped (off the coadd), "
             "%d failed%s; wrote the summary %s", len(results), status["done"], 100 * good,
             status["skipped"], status["failed"], demo, summary_path)


def main(argv=None) -> int:
    """Run the command line; returns the exit code.

    0 done (SE images wholly off the coadd are skipped, with a warning); 2 bad
    input or usage; 3 a run of several SE images finished but some failed; 1
    an unexpected failure; 130/143 interrupted/terminated (see
    `transient_masks.run_cli`).
    """
    return tm.run_cli(build_parser(), _run, argv, prog="des_background")


if __name__ == "__main__":
    # Run as a script this file is __main__: run it as the module des_background,
    # so that worker processes and pickles find its functions by that name.
    import des_background

    sys.exit(des_background.main())
