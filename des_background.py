#!/usr/bin/env python
"""Good background pixels of DES single-epoch (SE) CCD images.

A pixel of an SE image is *good background* when, at the coadd pixel nearest to
it on the sky, the coadd segmentation map is 0 (no detected object), the SE and
coadd weights are both positive, the SE and coadd bmasks are both 0 (apart from
bits the user chooses to ignore), and the pixel is outside the transient masks
of its exposure's epoch and CCD (see `transient_masks`).

The command line is `des_background.py` (console script ``des-background``)::

    $ ./des_background.py --info DES2122+0001_r_pizza_info.yaml --se_index 3
    $ ./des_background.py --se_image D00232321_r_c57_immasked.fits.fz[sci] \\
          --se_weight D00232321_r_c57_immasked.fits.fz[wgt] \\
          --se_bmask D00232321_r_c57_immasked.fits.fz[msk] \\
          --coadd_weight DES2122+0001_r.fits.fz[wgt] --coadd_bmask DES2122+0001_r.fits.fz[msk] \\
          --coadd_seg DES2122+0001_r_segmap.fits.fz[1] --ignore_bits SUSPECT,STREAK -o good.fits

It writes a uint8 image on the SE pixel grid with the SE WCS, holding for each
pixel the first cut that removed it (`REASONS`; 0 = good background), a PNG
picture of it beside the SE image, and prints how many pixels each cut removed.

From Python, `good_background` reads the files of one SE image;
`BackgroundPixels` does the work on arrays already in memory:

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
import logging
import os
import re
import sys
from dataclasses import dataclass, field, replace

import numpy as np

if __name__ == "__main__":
    # Run as a script: import the masks module by name, once (see transient_masks).
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import transient_masks as tm  # noqa: E402

__version__ = tm.__version__

__all__ = [
    "REASONS",
    "REASON_HELP",
    "MappingError",
    "ImageFiles",
    "bits_value",
    "se_to_coadd",
    "nearest_coadd_pixel",
    "BackgroundPixels",
    "good_background",
    "write_outputs",
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
#: Colours of the reasons in the PNG picture.
REASON_COLOURS = ("#1a9850", "#000000", "#7f3b08", "#e08214", "#542788", "#8073ac",
                  "#bdbdbd", "#e7298a")
#: The exact SE -> coadd map is evaluated every GRID_STEP SE pixels and interpolated.
GRID_STEP = 128
#: The interpolated map is checked against the exact one at this many pixels ...
N_CHECK = 1000
#: ... and must agree to this many coadd pixels.
MAP_TOLERANCE = 1e-3
#: The six images of one SE image and its coadd, in the order of the cuts.
ROLES = ("se_image", "se_weight", "se_bmask", "coadd_weight", "coadd_bmask", "coadd_seg")
#: WCS keywords copied from the SE header into the output image.
_WCS_KEY = re.compile(r"^(WCSAXES|CTYPE\d|CUNIT\d|CRPIX\d|CRVAL\d|CDELT\d|CROTA\d|CD\d_\d|PC\d_\d|"
                      r"PV\d_\d+|RADESYS|RADECSYS|EQUINOX|EPOCH|LONPOLE|LATPOLE|MJD-OBS|DATE-OBS)$")


class MappingError(RuntimeError):
    """The interpolated SE -> coadd map disagrees with the exact one."""


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
    value = 0
    for name in names:
        key = name.strip().upper()
        if key not in tm.MASK_BITS:
            raise tm.BadInputError(f"unknown DES mask bit {name!r} (known: {', '.join(tm.MASK_BITS)})")
        value |= tm.MASK_BITS[key]
    return value


def _exact_coadd_position(se_wcs, coadd_wcs, x, y):
    """Coadd pixel position (0-indexed) of SE pixels (0-indexed), through the sky."""
    ra, dec = se_wcs.all_pix2world(x, y, 0)
    coadd_x, coadd_y = coadd_wcs.all_world2pix(ra, dec, 0)
    return np.asarray(coadd_x, dtype=np.float64), np.asarray(coadd_y, dtype=np.float64)


def _grid(n, step):
    """Grid points 0, step, 2 step, ... and the last pixel n - 1."""
    return np.unique(np.r_[np.arange(0, n, step), n - 1]).astype(np.float64)


def _spline_on_pixels(grid_y, grid_x, values, n_y, n_x):
    """The bicubic interpolating spline of ``values`` evaluated on every pixel.

    The spline is a tensor product, so on a full grid of pixels it is two matrix
    products of the B-spline bases with its coefficients: ~5x faster than
    evaluating it point by point.
    """
    from scipy.interpolate import BSpline, RectBivariateSpline

    k_y, k_x = min(3, grid_y.size - 1), min(3, grid_x.size - 1)
    spline = RectBivariateSpline(grid_y, grid_x, values, kx=k_y, ky=k_x, s=0)
    knots_y, knots_x, coeffs = spline.tck
    coeffs = coeffs.reshape(knots_y.size - k_y - 1, knots_x.size - k_x - 1)
    basis_y = BSpline.design_matrix(np.arange(n_y, dtype=np.float64), knots_y, k_y).toarray()
    basis_x = BSpline.design_matrix(np.arange(n_x, dtype=np.float64), knots_x, k_x).toarray()
    return basis_y @ (coeffs @ basis_x.T)


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
        The interpolation differs from the exact map by more than ``tolerance``.

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
    n_y, n_x = (int(n) for n in shape)
    grid_y, grid_x = _grid(n_y, grid_step), _grid(n_x, grid_step)
    mesh_x, mesh_y = np.meshgrid(grid_x, grid_y)
    exact_x, exact_y = _exact_coadd_position(se_wcs, coadd_wcs, mesh_x, mesh_y)
    if not (np.isfinite(exact_x).all() and np.isfinite(exact_y).all()):
        raise MappingError("the SE -> coadd map is not finite on the SE image (WCS far out of range?)")
    coadd_x = _spline_on_pixels(grid_y, grid_x, exact_x, n_y, n_x)
    coadd_y = _spline_on_pixels(grid_y, grid_x, exact_y, n_y, n_x)
    rng = np.random.default_rng(seed)
    check_y = np.r_[0, 0, n_y - 1, n_y - 1, rng.integers(0, n_y, n_check)]
    check_x = np.r_[0, n_x - 1, 0, n_x - 1, rng.integers(0, n_x, n_check)]
    true_x, true_y = _exact_coadd_position(se_wcs, coadd_wcs, check_x, check_y)
    error = float(max(np.abs(coadd_x[check_y, check_x] - true_x).max(),
                      np.abs(coadd_y[check_y, check_x] - true_y).max()))
    if not error <= tolerance:
        raise MappingError(f"interpolated SE -> coadd map differs from the exact one by {error:.3g} "
                           f"coadd pixels (tolerance {tolerance:g}); use a smaller grid step")
    log.debug("SE -> coadd map: %d x %d exact points, max error %.2g px at %d checked pixels",
              grid_y.size, grid_x.size, error, check_x.size)
    return coadd_x, coadd_y, error


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
    coadd_x, coadd_y, error = se_to_coadd(se_wcs, coadd_wcs, se_shape, grid_step=grid_step,
                                          n_check=n_check, tolerance=tolerance)
    # A position within `margin` of a half-integer could round the other way
    # exactly: those few pixels are recomputed exactly.
    margin = max(1e-6, 10 * error)
    rounded = []
    close = np.zeros(coadd_x.shape, dtype=bool)
    for position in (coadd_x, coadd_y):
        position += 0.5  # in place: nearest pixel = floor(position + 0.5)
        index = np.floor(position)
        position -= index  # now the distance above the pixel boundary, in [0, 1)
        close |= position < margin
        close |= position > 1.0 - margin
        rounded.append(index)
    coadd_ix, coadd_iy = rounded
    if close.any():
        rows, cols = np.nonzero(close)
        exact_x, exact_y = _exact_coadd_position(se_wcs, coadd_wcs, cols, rows)
        coadd_ix[rows, cols], coadd_iy[rows, cols] = np.floor(exact_x + 0.5), np.floor(exact_y + 0.5)
        log.debug("%d pixels near a coadd pixel boundary recomputed exactly", rows.size)
    n_y, n_x = coadd_shape
    on_coadd = (coadd_ix >= 0) & (coadd_ix < n_x)
    on_coadd &= coadd_iy >= 0
    on_coadd &= coadd_iy < n_y
    coadd_ix = np.clip(coadd_ix, 0, n_x - 1, out=coadd_ix).astype(np.int32)
    coadd_iy = np.clip(coadd_iy, 0, n_y - 1, out=coadd_iy).astype(np.int32)
    return coadd_iy, coadd_ix, on_coadd, error


def _first_reason(failures):
    """uint8 image of the first failing cut (1-based, in order), 0 where none fails."""
    reason = np.zeros(failures[0].shape, dtype=np.uint8)
    for code in range(len(failures), 0, -1):  # later cuts first, earlier ones overwrite
        reason[failures[code - 1]] = code
    return reason


# ---- Files


def _parse_path_ext(text, default_ext=0):
    """Split ``PATH[EXT]`` (EXT a name or an HDU number) into (path, ext)."""
    match = re.fullmatch(r"(.+)\[([^\[\]]+)\]", str(text))
    if not match:
        return str(text), default_ext
    ext = match.group(2).strip()
    return match.group(1), int(ext) if ext.isdigit() else ext


@dataclass
class ImageFiles:
    """The files of one SE image and of its coadd: ``(path, ext)`` for each role.

    ``se_image`` gives the SE WCS; the coadd WCS is read from ``coadd_weight``
    (or, when that header has none, from ``coadd_bmask`` or ``coadd_seg``).
    ``expnum`` and ``ccdnum`` default to the SE image header's EXPNUM and CCDNUM.
    Each role also accepts ``"path[ext]"`` strings.
    """

    se_image: tuple
    se_weight: tuple
    se_bmask: tuple
    coadd_weight: tuple
    coadd_bmask: tuple
    coadd_seg: tuple
    expnum: int = None
    ccdnum: int = None
    source: str = field(default="", compare=False)

    def __post_init__(self):
        for role in ROLES:
            value = getattr(self, role)
            if isinstance(value, (str, os.PathLike)):
                setattr(self, role, _parse_path_ext(os.fspath(value)))
            else:
                path, ext = value
                setattr(self, role, (os.fspath(path), ext))

    @classmethod
    def from_info(cls, info_path: str, se_index: int) -> "ImageFiles":
        """The files of SE image ``se_index`` of a pizza-cutter info YAML.

        Environment variables (``$MEDS_DIR/...``) and ``~`` in its paths are
        expanded; relative paths are taken relative to the YAML's directory.

        Examples
        --------
        >>> import yaml
        >>> info = {"weight_path": "coadd.fits", "weight_ext": "wgt", "bmask_path": "coadd.fits",
        ...         "bmask_ext": "msk", "seg_path": "seg.fits", "seg_ext": "sci",
        ...         "src_info": [{"expnum": 232321, "ccdnum": 57, "image_path": "se.fits",
        ...                       "image_ext": "sci", "weight_path": "se.fits", "weight_ext": "wgt",
        ...                       "bmask_path": "se.fits", "bmask_ext": "msk"}]}
        >>> with open("info.yaml", "w") as out:
        ...     yaml.safe_dump(info, out)
        >>> files = ImageFiles.from_info("info.yaml", 0)
        >>> files.expnum, files.ccdnum, os.path.basename(files.coadd_seg[0]), files.coadd_seg[1]
        (232321, 57, 'seg.fits', 'sci')
        """
        import yaml

        if not os.path.exists(info_path):
            raise tm.BadInputError(f"{info_path}: pizza-cutter info file not found")
        try:
            with open(info_path) as stream:
                info = yaml.safe_load(stream)
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise tm.BadInputError(f"{info_path}: not a readable YAML file ({first})") from None
        if not isinstance(info, dict) or not isinstance(info.get("src_info"), list):
            raise tm.BadInputError(f"{info_path}: no 'src_info' list (not a pizza-cutter info file?)")
        sources = info["src_info"]
        if not 0 <= se_index < len(sources):
            raise tm.BadInputError(f"{info_path}: se_index {se_index} out of range "
                                   f"(src_info has {len(sources)} entries, 0..{len(sources) - 1})")
        entry = sources[se_index]
        base = os.path.dirname(os.path.abspath(info_path))

        def role(mapping, key, default_ext, where):
            path = mapping.get(f"{key}_path")
            if not path:
                raise tm.BadInputError(f"{info_path}: {where} has no {key}_path")
            path = os.path.join(base, os.path.expandvars(os.path.expanduser(str(path))))
            return path, mapping.get(f"{key}_ext", default_ext)

        where = f"src_info[{se_index}]"
        return cls(
            se_image=role(entry, "image", "sci", where),
            se_weight=role(entry, "weight", "wgt", where),
            se_bmask=role(entry, "bmask", "msk", where),
            coadd_weight=role(info, "weight", "wgt", "the top level"),
            coadd_bmask=role(info, "bmask", "msk", "the top level"),
            coadd_seg=role(info, "seg", "sci", "the top level"),
            expnum=None if entry.get("expnum") is None else int(entry["expnum"]),
            ccdnum=None if entry.get("ccdnum") is None else int(entry["ccdnum"]),
            source=f"{info_path} {where}",
        )

    def paths(self):
        """The distinct input files."""
        return list(dict.fromkeys(getattr(self, role)[0] for role in ROLES))


def _read_image(path, ext, role, box=None):
    """(data, header, shape) of one 2-d image HDU.

    ``box`` = (y0, y1, x0, x1) reads only that part (through ``section``: for a
    tile-compressed image only the tiles it needs); an empty box reads no data
    (None).  One-line errors name the file, the extension and the option.
    """
    from astropy.io import fits

    option = "--" + role
    if not os.path.exists(path):
        raise tm.BadInputError(f"{path}: file not found ({option})")
    try:
        with fits.open(path) as hdul:
            try:
                hdu = hdul[ext]
            except (KeyError, IndexError):
                names = ", ".join(str(h.name or i) for i, h in enumerate(hdul))
                raise tm.BadInputError(f"{path}: no extension {ext!r} ({option}; it has {names})") from None
            if not hdu.is_image or len(hdu.shape) != 2:
                raise tm.BadInputError(f"{path}[{ext}]: not a 2-d image ({option})")
            header, shape = hdu.header.copy(), tuple(int(n) for n in hdu.shape)
            if box is None:
                return np.array(hdu.data), header, shape
            y0, y1, x0, x1 = box
            data = np.array(hdu.section[y0:y1, x0:x1]) if y1 > y0 and x1 > x0 else None
            return data, header, shape
    except OSError as exc:
        raise tm.BadInputError(f"{path}: cannot read as FITS ({option}: {exc})") from None


_NO_DATA = (0, 0, 0, 0)


def _coadd_box(se_wcs, coadd_wcs, se_shape, coadd_shape, margin=2):
    """(y0, y1, x0, x1): the part of the coadd under an SE image, plus ``margin``.

    From the exact map of the SE image's edges and a coarse interior grid (the
    map is smooth and nearly affine, so its extremes are on the edges);
    `BackgroundPixels` checks that the box holds every pixel it needs.
    """
    n_y, n_x = se_shape
    edge_x = np.r_[np.arange(n_x), np.arange(n_x), np.zeros(n_y), np.full(n_y, n_x - 1)]
    edge_y = np.r_[np.zeros(n_x), np.full(n_x, n_y - 1), np.arange(n_y), np.arange(n_y)]
    mesh_x, mesh_y = np.meshgrid(_grid(n_x, GRID_STEP), _grid(n_y, GRID_STEP))
    x, y = _exact_coadd_position(se_wcs, coadd_wcs, np.r_[edge_x, mesh_x.ravel()],
                                 np.r_[edge_y, mesh_y.ravel()])
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return (0, coadd_shape[0], 0, coadd_shape[1])  # read it all; the map will complain
    y0 = int(np.clip(np.floor(y.min() + 0.5) - margin, 0, coadd_shape[0]))
    y1 = int(np.clip(np.floor(y.max() + 0.5) + margin + 1, 0, coadd_shape[0]))
    x0 = int(np.clip(np.floor(x.min() + 0.5) - margin, 0, coadd_shape[1]))
    x1 = int(np.clip(np.floor(x.max() + 0.5) + margin + 1, 0, coadd_shape[1]))
    return (y0, y1, x0, x1) if y1 > y0 and x1 > x0 else _NO_DATA


def _celestial_wcs(header, what):
    """The celestial WCS of a header, or None when it has no usable one."""
    import warnings

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


# ---- The class that does the work


class BackgroundPixels:
    """The good background pixels of one SE image, from arrays in memory.

    Parameters
    ----------
    se_wcs, coadd_wcs : astropy.wcs.WCS
        Celestial WCSs of the SE image (TPV for DES) and of the coadd.
    se_weight, se_bmask : array_like, shape (ny, nx)
        SE weight and bmask.
    coadd_weight, coadd_bmask, coadd_seg : array_like, shape (my, mx)
        Coadd weight, bmask and segmentation map.
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
    good : ndarray of bool
        ``reason == 0``.
    failed : dict
        Reason name -> bool image of the pixels that fail that cut (whatever
        the other cuts say; coadd cuts only on the coadd).
    map_error : float
        The largest difference of the interpolated map from the exact one at
        the checked pixels, in coadd pixels.
    """

    def __init__(self, se_wcs, coadd_wcs, *, se_weight, se_bmask, coadd_weight, coadd_bmask, coadd_seg,
                 transient_mask=None, ignore_bits=0, se_image=None, coadd_shape=None,
                 coadd_offset=(0, 0), grid_step: int = GRID_STEP, n_check: int = N_CHECK,
                 tolerance: float = MAP_TOLERANCE):
        se_weight, se_bmask = np.asarray(se_weight), np.asarray(se_bmask)
        coadd_weight, coadd_bmask, coadd_seg = (np.asarray(a) for a in (coadd_weight, coadd_bmask, coadd_seg))
        _same_shape({"SE weight": se_weight, "SE bmask": se_bmask}
                    | ({"SE image": np.asarray(se_image)} if se_image is not None else {})
                    | ({"transient mask": np.asarray(transient_mask)} if transient_mask is not None else {}))
        _same_shape({"coadd weight": coadd_weight, "coadd bmask": coadd_bmask, "coadd seg": coadd_seg})
        keep_bits = ~np.int64(bits_value(ignore_bits) if isinstance(ignore_bits, str) else int(ignore_bits))
        self.se_image = se_image
        self.ignore_bits = int(~keep_bits)
        self.shape = se_weight.shape

        coadd_shape = coadd_weight.shape if coadd_shape is None else tuple(coadd_shape)
        coadd_iy, coadd_ix, on_coadd, self.map_error = nearest_coadd_pixel(
            se_wcs, coadd_wcs, self.shape, coadd_shape, grid_step=grid_step, n_check=n_check,
            tolerance=tolerance)
        self.on_coadd = on_coadd
        # Indices into the (cutout) coadd arrays; they must hold every pixel on the coadd.
        (y0, x0), (cut_ny, cut_nx) = coadd_offset, coadd_weight.shape
        coadd_iy -= y0
        coadd_ix -= x0
        in_cutout = (coadd_iy >= 0) & (coadd_iy < cut_ny)
        in_cutout &= coadd_ix >= 0
        in_cutout &= coadd_ix < cut_nx
        if (on_coadd & ~in_cutout).any():
            raise MappingError(f"the coadd cutout ({cut_nx}x{cut_ny} at x0={x0}, y0={y0}) does not hold "
                             "every coadd pixel the SE image needs")
        if not on_coadd.any():
            coadd_weight = coadd_bmask = coadd_seg = np.zeros((1, 1))  # nothing to look up
        np.clip(coadd_iy, 0, max(cut_ny - 1, 0), out=coadd_iy)
        np.clip(coadd_ix, 0, max(cut_nx - 1, 0), out=coadd_ix)

        def at_coadd(image):
            return image[coadd_iy, coadd_ix]

        self.failed = {
            "OFF_COADD": ~on_coadd,
            "SE_WEIGHT": ~(se_weight > 0),
            "SE_BMASK": (se_bmask.astype(np.int64) & keep_bits) != 0,
            "COADD_WEIGHT": ~(at_coadd(coadd_weight) > 0) & on_coadd,
            "COADD_BMASK": ((at_coadd(coadd_bmask).astype(np.int64) & keep_bits) != 0) & on_coadd,
            "COADD_SEG": (at_coadd(coadd_seg) != 0) & on_coadd,
            "TRANSIENT": (np.zeros(self.shape, bool) if transient_mask is None
                          else np.asarray(transient_mask, bool)),
        }
        self.transient_cut = transient_mask is not None
        self.reason = _first_reason([self.failed[name] for name in REASONS[1:]])
        self.good = self.reason == 0

    def summary(self):
        """How many pixels each cut removed, as an astropy Table.

        Columns: CODE, REASON, FIRST (pixels whose first failing cut is this
        one: they add up to all pixels), ANY (pixels failing this cut at all),
        FRACTION (FIRST over all pixels) and MEANING.
        """
        from astropy.table import Table

        first = np.bincount(self.reason.ravel(), minlength=len(REASONS))
        any_cut = [int(first[0])] + [int(np.count_nonzero(self.failed[name])) for name in REASONS[1:]]
        return Table({
            "CODE": np.arange(len(REASONS), dtype=np.uint8),
            "REASON": list(REASONS),
            "FIRST": first.astype(np.int64),
            "ANY": np.array(any_cut, dtype=np.int64),
            "FRACTION": first / self.reason.size,
            "MEANING": [REASON_HELP[name] + ("" if name != "TRANSIENT" or self.transient_cut
                                             else " (cut not applied)") for name in REASONS],
        })

    def header_cards(self):
        """FITS cards documenting the codes and counts of the output image."""
        cards = [("BUNIT", "code", "0 good background; else the first cut failed")]
        first = np.bincount(self.reason.ravel(), minlength=len(REASONS))
        for code, name in enumerate(REASONS):
            cards.append((f"BGCODE{code}", name, REASON_HELP[name][:46]))
        for code, name in enumerate(REASONS):
            cards.append((f"BGNPIX{code}", int(first[code]), f"pixels with code {code} ({name})"))
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
        from astropy.io import fits

        out = fits.Header()
        if header is not None:
            for card in header.cards:
                if _WCS_KEY.match(card.keyword):
                    out.append(card)
        for card in list(self.header_cards()) + list(extra_cards):
            out[card[0]] = card[1:] if len(card) > 2 else card[1]
        with tm.atomic_output(path, overwrite=overwrite, inputs=inputs) as tmp:
            fits.PrimaryHDU(self.reason, header=out).writeto(tmp)
        return path

    def plot(self, path: str = None, *, title: str = "", overwrite: bool = False, inputs=()):
        """The SE image beside its pixels coloured by reason; a matplotlib Figure.

        Written to ``path`` (PNG, PDF... by extension) when given, atomically.
        The reason image is the artist with gid ``"reasons"``.
        """
        from matplotlib.colors import BoundaryNorm, ListedColormap
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch

        n_y, n_x = self.shape
        figure = Figure(figsize=(11, 7.5), layout="constrained")
        ax_image, ax_reason = figure.subplots(1, 2, sharex=True, sharey=True)
        if self.se_image is not None:
            image = np.asarray(self.se_image, dtype=np.float64)
            finite = image[np.isfinite(image)]
            low, high = np.percentile(finite, [1, 99.5]) if finite.size else (0, 1)
            ax_image.imshow(image, origin="lower", cmap="gray", vmin=low, vmax=high,
                            interpolation="nearest", extent=(0.5, n_x + 0.5, 0.5, n_y + 0.5))
            ax_image.set_title("SE image")
        else:
            ax_image.text(0.5, 0.5, "no SE image given", transform=ax_image.transAxes, ha="center")
        cmap = ListedColormap(REASON_COLOURS)
        norm = BoundaryNorm(np.arange(len(REASONS) + 1) - 0.5, cmap.N)
        artist = ax_reason.imshow(self.reason, origin="lower", cmap=cmap, norm=norm, interpolation="nearest",
                                  extent=(0.5, n_x + 0.5, 0.5, n_y + 0.5))
        artist.set_gid("reasons")
        ax_reason.set_title(f"good background: {100 * self.good.mean():.1f}% of the pixels")
        first = np.bincount(self.reason.ravel(), minlength=len(REASONS))
        handles = [Patch(facecolor=REASON_COLOURS[code], edgecolor="0.5",
                         label=f"{name}: {100 * first[code] / self.reason.size:.1f}%")
                   for code, name in enumerate(REASONS) if first[code] or code == 0]
        ax_reason.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9,
                         title="first cut failed")
        for ax in (ax_image, ax_reason):
            ax.set_xlabel("x [pixel]")
        ax_image.set_ylabel("y [pixel]")
        if title:
            figure.suptitle(title)
        if path is not None:
            with tm.atomic_output(path, overwrite=overwrite, inputs=inputs) as tmp:
                figure.savefig(tmp, dpi=100, format=os.path.splitext(path)[1][1:] or "png")
        return figure


def _same_shape(shapes, source=""):
    """One-line error unless every named shape (or array) is the same."""
    shapes = {name: getattr(value, "shape", value) for name, value in shapes.items()}
    if len(set(shapes.values())) > 1:
        raise tm.BadInputError((f"{source}: " if source else "") + "images of different shapes: " + ", ".join(
            f"{name} {shape[1]}x{shape[0]}" if len(shape) == 2 else f"{name} {shape}"
            for name, shape in shapes.items()))


# ---- The function that wraps it


def good_background(files: ImageFiles, *, transient_masks=None, ignore_bits=0,
                    grid_step: int = GRID_STEP) -> BackgroundPixels:
    """Find the good background pixels of one SE image from its files.

    Parameters
    ----------
    files : ImageFiles
        The SE image, weight and bmask and the coadd weight, bmask and
        segmentation map (see `ImageFiles.from_info` for a pizza-cutter YAML).
    transient_masks : transient_masks.TransientMasks, optional
        When given, pixels in the masks of the SE exposure's epoch and CCD are
        removed.  EXPNUM and CCDNUM come from ``files`` or the SE header; an
        exposure in no epoch of the count maps leaves the cut out, with a
        warning.
    ignore_bits : int or str
        Bmask bits to ignore, e.g. ``"SUSPECT,STREAK"``.
    grid_step : int
        Of the SE -> coadd map.

    Returns
    -------
    BackgroundPixels
        With extra attributes ``files``, ``se_header``, ``expnum``, ``ccdnum``,
        ``epoch`` ('' when no transient cut) and ``demo`` (masks from demo maps).

    Examples
    --------
    >>> files = ImageFiles("se.fits[sci]", "se.fits[wgt]", "se.fits[msk]",
    ...                    "coadd.fits[wgt]", "coadd.fits[msk]", "seg.fits[sci]")
    >>> pixels = good_background(files, ignore_bits="SUSPECT")   # in a directory without them
    Traceback (most recent call last):
    ...
    transient_masks.BadInputError: se.fits: file not found (--se_image)
    """
    ignore = bits_value(ignore_bits) if isinstance(ignore_bits, str) else int(ignore_bits)
    arrays, headers, shapes = {}, {}, {}
    for role in ROLES:  # SE images whole; coadd headers only, for now
        path, ext = getattr(files, role)
        box = None if role.startswith("se_") else _NO_DATA
        arrays[role], headers[role], shapes[role] = _read_image(path, ext, role, box)
    where = files.source or files.se_image[0]
    for kind in ("se", "coadd"):
        _same_shape({role.replace("_", " ").replace("se ", "SE "): shapes[role]
                     for role in ROLES if role.startswith(kind + "_")}, where)
    se_header = headers["se_image"]
    se_wcs = _celestial_wcs(se_header, files.se_image[0])
    if se_wcs is None:
        raise tm.BadInputError(f"{files.se_image[0]}[{files.se_image[1]}]: no usable celestial WCS "
                               "in the SE image header")
    coadd_wcs = next((wcs for wcs in (_celestial_wcs(headers[role], getattr(files, role)[0])
                                      for role in ("coadd_weight", "coadd_bmask", "coadd_seg"))
                      if wcs is not None), None)
    if coadd_wcs is None:
        raise tm.BadInputError(f"{files.coadd_weight[0]}: no usable celestial WCS in the coadd weight, "
                               "bmask or segmentation-map header")
    coadd_shape = shapes["coadd_weight"]
    # A DES coadd tile is 10000 x 10000: read only the part under the SE image.
    box = _coadd_box(se_wcs, coadd_wcs, shapes["se_image"], coadd_shape)
    for role in ("coadd_weight", "coadd_bmask", "coadd_seg"):
        path, ext = getattr(files, role)
        arrays[role] = _read_image(path, ext, role, box)[0]
        if arrays[role] is None:  # the SE image is off the coadd
            arrays[role] = np.zeros((0, 0))
    log.debug("coadd cutout y %d..%d, x %d..%d of %s", *box, coadd_shape)
    expnum = files.expnum if files.expnum is not None else se_header.get("EXPNUM")
    ccdnum = files.ccdnum if files.ccdnum is not None else se_header.get("CCDNUM")
    transient_mask, epoch, demo = None, "", False
    if transient_masks is not None:
        transient_mask, epoch = _transient_pixels(transient_masks, expnum, ccdnum,
                                                  shapes["se_image"], files.se_image[0])
        demo = bool(transient_masks.maps.demo) and transient_mask is not None
    pixels = BackgroundPixels(
        se_wcs, coadd_wcs, se_weight=arrays["se_weight"], se_bmask=arrays["se_bmask"],
        coadd_weight=arrays["coadd_weight"], coadd_bmask=arrays["coadd_bmask"],
        coadd_seg=arrays["coadd_seg"], transient_mask=transient_mask, ignore_bits=ignore,
        se_image=arrays["se_image"], coadd_shape=coadd_shape, coadd_offset=(box[0], box[2]),
        grid_step=grid_step)
    pixels.files, pixels.se_header = files, se_header
    pixels.expnum, pixels.ccdnum, pixels.epoch, pixels.demo = expnum, ccdnum, epoch, demo
    return pixels


def _transient_pixels(transient_masks, expnum, ccdnum, shape, se_path):
    """The transient mask on the SE grid and its epoch; (None, '') when it cannot apply."""
    if expnum is None or ccdnum is None:
        log.warning("%s: no EXPNUM/CCDNUM (in the info or the SE header): transient-mask cut not applied",
                    se_path)
        return None, ""
    if not 1 <= int(ccdnum) <= tm.N_CCD:
        raise tm.BadInputError(f"{se_path}: CCDNUM {ccdnum} outside 1..{tm.N_CCD}")
    epoch = str(transient_masks.epoch_of([int(expnum)])[0])
    if not epoch or epoch not in transient_masks.maps:
        log.warning("%s: EXPNUM %d is in %s: transient-mask cut not applied", se_path, int(expnum),
                    f"epoch {epoch}, which the count maps do not have" if epoch else "no DES epoch")
        return None, ""
    n_y, n_x = shape
    if n_y > tm.CCD_NY or n_x > tm.CCD_NX:
        raise tm.BadInputError(f"{se_path}: SE image {n_x}x{n_y} is larger than a DECam CCD")
    # The SE pixel grid is the CCD's (DES SE images are whole, untrimmed CCDs).
    pixel_mask = transient_masks.mask_for(epoch).pixel_mask(int(ccdnum))[:n_y, :n_x]
    log.info("%s: transient masks of epoch %s, CCD %d: %.2f%% of the pixels", se_path, epoch,
             int(ccdnum), 100 * pixel_mask.mean())
    return pixel_mask, epoch


def _provenance(pixels):
    """Cards saying where the output came from."""
    import datetime

    files = pixels.files
    cards = [(f"BGIN{index}", f"{os.path.basename(getattr(files, role)[0])}[{getattr(files, role)[1]}]",
              role) for index, role in enumerate(ROLES)]
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


def write_outputs(pixels, fits_path: str, png_path: str = None, *, overwrite: bool = False):
    """Write the reason image (and the picture) of `good_background`'s result."""
    inputs = pixels.files.paths()
    # Check both names before writing either, so a refusal leaves nothing behind.
    for path in filter(None, (fits_path, png_path)):
        tm.check_output(path, overwrite, inputs)
    pixels.write(fits_path, header=pixels.se_header, extra_cards=_provenance(pixels),
                 overwrite=overwrite, inputs=inputs)
    if png_path:
        title = (f"{os.path.basename(pixels.files.se_image[0])}  EXPNUM {pixels.expnum}  CCDNUM "
                 f"{pixels.ccdnum}" + (f"  transient masks {pixels.epoch}" if pixels.epoch else "")
                 + ("  [DEMO transient masks]" if pixels.demo else ""))
        pixels.plot(png_path, title=title, overwrite=overwrite, inputs=inputs)


# ---- Command line

#: The six images of the explicit form, in `ImageFiles` order.
_IMAGE_ROLES = ("se_image", "se_weight", "se_bmask", "coadd_weight", "coadd_bmask", "coadd_seg")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``des_background.py``."""
    parser = tm._ArgumentParser(
        prog="des_background.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    group = parser.add_argument_group(
        "the SE image and coadd products; images as PATH or PATH[EXT], EXT a name or number")
    group.add_argument("--info", metavar="YAML", help="pizza-cutter info file of the coadd tile")
    group.add_argument("--se_index", type=int, metavar="N",
                       help="index of the SE image in the info's src_info (from 0)")
    for role in _IMAGE_ROLES:
        group.add_argument(f"--{role}", metavar="FITS", help=f"the {role.replace('_', ' ')}")
    group.add_argument("--ignore_bits", default="", metavar="NAMES",
                       help="bmask bits to ignore in both bmasks, DES names, e.g. SUSPECT,STREAK")
    group.add_argument("--no_transient_cut", action="store_true",
                       help="do not cut the pixels in the transient masks")
    group.add_argument("-o", "--output", metavar="FILE",
                       help="output FITS file (default: STEM_goodbkg.fits of the SE image)")
    group.add_argument("--png", metavar="FILE",
                       help="the picture (default: the output name with .png)")
    group.add_argument("--overwrite", action="store_true", help="replace existing output files")
    tm._add_mask_options(parser)
    return parser


def _run(args) -> int:
    explicit = [role for role in _IMAGE_ROLES if getattr(args, role)]
    if args.info is not None:
        if args.se_index is None or explicit:
            raise tm.BadInputError("give --info with --se_index, and none of --" + ", --".join(_IMAGE_ROLES))
        files = ImageFiles.from_info(args.info, args.se_index)
    else:
        missing = [role for role in _IMAGE_ROLES if role not in explicit]
        if args.se_index is not None:
            raise tm.BadInputError("--se_index needs --info")
        if missing:
            raise tm.BadInputError("missing --" + ", --".join(missing) + " (or give --info and --se_index)")
        files = ImageFiles(*(getattr(args, role) for role in _IMAGE_ROLES))
    ignore_bits = bits_value(args.ignore_bits)
    if args.output:
        output = args.output
    else:
        stem = os.path.basename(files.se_image[0])
        output = f"{stem[: len(stem) - len(tm._suffix(stem))]}_goodbkg.fits"
    png = args.png or f"{output[: len(output) - len(tm._suffix(output))]}.png"
    for path in (output, png):  # refuse before the work
        tm.check_output(path, args.overwrite, files.paths())
    masks = None
    if not args.no_transient_cut:
        masks = tm.TransientMasks(args.counts, epochs=args.epochs_file, **tm._mask_options(args))
    pixels = good_background(files, transient_masks=masks, ignore_bits=ignore_bits)
    write_outputs(pixels, output, png, overwrite=args.overwrite)
    table = pixels.summary()
    table["FRACTION"].format = ".4f"
    print("\n".join(table.pformat(max_lines=-1, max_width=-1)))
    demo = " [transient masks from SYNTHETIC DEMO DATA]" if pixels.demo else ""
    cut = f"transient masks of {pixels.epoch}" if pixels.epoch else "no transient-mask cut"
    print(f"{files.se_image[0]}: {100 * pixels.good.mean():.2f}% good background pixels ({cut}){demo}; "
          f"wrote {output}, {png}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    """Run the command line; returns the exit code (see `transient_masks.run_cli`)."""
    return tm.run_cli(build_parser(), _run, argv, prog="des_background")


if __name__ == "__main__":
    sys.exit(main())
