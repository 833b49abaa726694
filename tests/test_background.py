"""Tests of des_background: the good background pixels of DES single-epoch images.

The WCSs are realistic: tests/data/des_se_tpv.hdr is the TPV WCS of a DECam
CCD image (D00232321, CCD 57) and tests/data/des_coadd_tan.hdr the TAN WCS of a
DES coadd tile (DES2122+0001).  The images are small and synthetic: the SE
image is the lower-left 120 x 240 pixels of the CCD and the coadd a small
TAN image on the same tangent point that covers most, not all, of it.
"""
import hashlib
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

import des_background as bg
import transient_masks as tm
from conftest import poisson_cube, write_count_maps

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
SE_SHAPE = (240, 120)  # (ny, nx)
CCDNUM = 5
EXPNUM_Y6 = 790000  # in Y6


def read_header(name):
    return fits.Header.fromtextfile(os.path.join(DATA, name))


def brute_force_nearest(se_wcs, coadd_wcs, shape):
    """Nearest coadd pixel of every SE pixel, by astropy on every pixel."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    ra, dec = se_wcs.all_pix2world(cols.ravel(), rows.ravel(), 0)
    x, y = coadd_wcs.all_world2pix(ra, dec, 0)
    return (np.floor(y + 0.5).reshape(shape).astype(np.int64),
            np.floor(x + 0.5).reshape(shape).astype(np.int64))


@pytest.fixture(scope="module")
def wcs_pair():
    """(se_header, coadd_header, se_wcs, coadd_wcs, coadd_shape)."""
    se_header = read_header("des_se_tpv.hdr")
    se_header["NAXIS1"], se_header["NAXIS2"] = SE_SHAPE[1], SE_SHAPE[0]
    coadd_header = read_header("des_coadd_tan.hdr")
    iy, ix = brute_force_nearest(WCS(se_header), WCS(coadd_header), SE_SHAPE)
    # Shift the tile's reference pixel so the SE image lands near the coadd's
    # origin, 15 coadd pixels hanging over the low-x side and 12 over the top.
    coadd_header["CRPIX1"] -= ix.min() + 15
    coadd_header["CRPIX2"] -= iy.min()
    coadd_shape = (int(iy.max() - iy.min()) - 11, int(ix.max() - ix.min()) + 5)
    coadd_header["NAXIS1"], coadd_header["NAXIS2"] = coadd_shape[1], coadd_shape[0]
    return se_header, coadd_header, WCS(se_header), WCS(coadd_header), coadd_shape


def sprinkle(rng, shape, fraction, values):
    """An array of zeros with ``fraction`` of its pixels set to random ``values``."""
    out = np.zeros(shape, dtype=np.asarray(values).dtype)
    hit = rng.random(shape) < fraction
    out[hit] = rng.choice(values, hit.sum())
    return out


@pytest.fixture
def images(rng, wcs_pair):
    """Synthetic SE and coadd arrays, each cut removing some pixels."""
    coadd_shape = wcs_pair[4]
    se_weight = 1.0 + rng.random(SE_SHAPE)
    se_weight[rng.random(SE_SHAPE) < 0.03] = 0.0
    se_weight[5, 7] = np.nan
    coadd_weight = 1.0 + rng.random(coadd_shape)
    coadd_weight[rng.random(coadd_shape) < 0.03] = -1.0
    bits = np.array(list(tm.MASK_BITS.values()), dtype=np.int32)
    coadd_seg = np.zeros(coadd_shape, dtype=np.int32)
    coadd_seg[20:40, 30:70] = 3  # two "objects"
    coadd_seg[100:110, 10:25] = 8
    return {
        "se_image": rng.normal(100.0, 5.0, SE_SHAPE).astype(np.float32),
        "se_weight": se_weight.astype(np.float32),
        "se_bmask": sprinkle(rng, SE_SHAPE, 0.03, bits),
        "coadd_weight": coadd_weight.astype(np.float32),
        "coadd_bmask": sprinkle(rng, coadd_shape, 0.03, bits),
        "coadd_seg": coadd_seg,
        "transient_mask": rng.random(SE_SHAPE) < 0.05,
    }


def expected_reasons(images, iy, ix, coadd_shape, ignore=0):
    """The reason codes by the definition, written independently of the module."""
    on = (iy >= 0) & (iy < coadd_shape[0]) & (ix >= 0) & (ix < coadd_shape[1])
    cy, cx = np.clip(iy, 0, coadd_shape[0] - 1), np.clip(ix, 0, coadd_shape[1] - 1)
    conditions = [
        ~on,
        ~(images["se_weight"] > 0),
        (images["se_bmask"] & ~ignore) != 0,
        ~(images["coadd_weight"][cy, cx] > 0),
        (images["coadd_bmask"][cy, cx] & ~ignore) != 0,
        images["coadd_seg"][cy, cx] != 0,
        images["transient_mask"],
    ]
    return np.select(conditions, np.arange(1, 8), 0).astype(np.uint8)


def make_pixels(wcs_pair, images, **options):
    se_wcs, coadd_wcs = wcs_pair[2], wcs_pair[3]
    arrays = {k: v for k, v in images.items() if k != "se_image"}
    return bg.BackgroundPixels(se_wcs, coadd_wcs, se_image=images["se_image"], **arrays, **options)


# ---- The SE -> coadd map


def test_fast_map_matches_brute_force(wcs_pair):
    se_header, coadd_header, se_wcs, coadd_wcs, coadd_shape = wcs_pair
    iy, ix, on_coadd, error = bg.nearest_coadd_pixel(se_wcs, coadd_wcs, SE_SHAPE, coadd_shape, grid_step=32)
    true_iy, true_ix = brute_force_nearest(se_wcs, coadd_wcs, SE_SHAPE)
    inside = (true_iy >= 0) & (true_iy < coadd_shape[0]) & (true_ix >= 0) & (true_ix < coadd_shape[1])
    np.testing.assert_array_equal(on_coadd, inside)
    np.testing.assert_array_equal(iy[inside], true_iy[inside])
    np.testing.assert_array_equal(ix[inside], true_ix[inside])
    assert error < 1e-6
    # the set-up really has pixels off the coadd, on two sides
    assert 0.02 < (~inside).mean() < 0.5 and (true_ix < 0).any() and (true_iy >= coadd_shape[0]).any()


@pytest.mark.slow
def test_whole_ccd_map_is_exact():
    """Every pixel of a whole 2048 x 4096 CCD: the same nearest coadd pixel as astropy."""
    se_wcs, coadd_wcs = WCS(read_header("des_se_tpv.hdr")), WCS(read_header("des_coadd_tan.hdr"))
    coadd_x, coadd_y, error = bg.se_to_coadd(se_wcs, coadd_wcs, (tm.CCD_NY, tm.CCD_NX))
    iy, ix, on_coadd, _ = bg.nearest_coadd_pixel(se_wcs, coadd_wcs, (tm.CCD_NY, tm.CCD_NX), (10000, 10000))
    true_iy, true_ix = brute_force_nearest(se_wcs, coadd_wcs, (tm.CCD_NY, tm.CCD_NX))
    assert error < 1e-6
    assert np.array_equal(np.floor(coadd_x + 0.5), true_ix) and np.array_equal(np.floor(coadd_y + 0.5), true_iy)
    assert np.array_equal(ix[on_coadd], true_ix[on_coadd]) and np.array_equal(iy[on_coadd], true_iy[on_coadd])
    # this CCD hangs over the tile's x = 10000 edge
    assert np.array_equal(on_coadd, true_ix < 10000) and 0 < on_coadd.mean() < 1
    # good_background reads only the part of the tile under the CCD: a few % of it
    y0, y1, x0, x1 = bg._coadd_box(se_wcs, coadd_wcs, (tm.CCD_NY, tm.CCD_NX), (10000, 10000))
    assert (y0 <= iy[on_coadd]).all() and (iy[on_coadd] < y1).all()
    assert (x0 <= ix[on_coadd]).all() and (ix[on_coadd] < x1).all()
    assert (y1 - y0) * (x1 - x0) < 0.05 * 10000**2


def test_map_checks_itself_loudly(wcs_pair):
    se_wcs, coadd_wcs = wcs_pair[2], wcs_pair[3]
    with pytest.raises(bg.MappingError, match="differs from the exact one by"):
        bg.se_to_coadd(se_wcs, coadd_wcs, SE_SHAPE, tolerance=1e-13)
    # a grid too coarse for a strongly curved TPV (a bilinear map on 2 x 2 points) is caught
    curved = wcs_pair[0].copy()
    curved["PV1_4"], curved["PV2_6"] = 40.0, -30.0
    with pytest.raises(bg.MappingError, match="use a smaller grid step"):
        bg.se_to_coadd(WCS(curved), coadd_wcs, SE_SHAPE, grid_step=1000)


# ---- The cuts


def test_each_cut_removes_exactly_its_pixels(wcs_pair, images):
    pixels = make_pixels(wcs_pair, images)
    iy, ix = brute_force_nearest(wcs_pair[2], wcs_pair[3], SE_SHAPE)
    expected = expected_reasons(images, iy, ix, wcs_pair[4])
    np.testing.assert_array_equal(pixels.reason, expected)
    np.testing.assert_array_equal(pixels.good, expected == 0)
    summary = pixels.summary()
    assert list(summary["REASON"]) == list(bg.REASONS)
    assert summary["FIRST"].sum() == pixels.reason.size
    for code, name in enumerate(bg.REASONS):
        assert summary["FIRST"][code] == np.count_nonzero(expected == code) > 0, name
        if code:  # a pixel failing a cut counts there even when an earlier cut removed it
            assert summary["ANY"][code] == np.count_nonzero(pixels.failed[name]) >= summary["FIRST"][code]
    # the SE weight cut, whatever comes first: exactly the non-positive or NaN weights
    np.testing.assert_array_equal(pixels.failed["SE_WEIGHT"], ~(images["se_weight"] > 0))
    assert pixels.reason[5, 7] in (1, 2)  # the NaN weight


def test_ignored_bits_are_not_cuts(wcs_pair, images):
    ignore = tm.MASK_BITS["SUSPECT"] | tm.MASK_BITS["STREAK"]
    pixels = make_pixels(wcs_pair, images, ignore_bits="suspect, STREAK")
    iy, ix = brute_force_nearest(wcs_pair[2], wcs_pair[3], SE_SHAPE)
    np.testing.assert_array_equal(pixels.reason, expected_reasons(images, iy, ix, wcs_pair[4], ignore))
    only_ignored = images["se_bmask"] == tm.MASK_BITS["SUSPECT"]
    assert only_ignored.any() and not pixels.failed["SE_BMASK"][only_ignored].any()
    assert pixels.ignore_bits == ignore
    with pytest.raises(tm.BadInputError, match="unknown DES mask bit 'SUSPCT'"):
        bg.bits_value("SUSPCT")


def test_pixels_off_the_coadd_are_never_good(wcs_pair, rng):
    coadd_shape = wcs_pair[4]
    perfect = {"se_weight": np.ones(SE_SHAPE), "se_bmask": np.zeros(SE_SHAPE, np.int32),
               "coadd_weight": np.ones(coadd_shape), "coadd_bmask": np.zeros(coadd_shape, np.int32),
               "coadd_seg": np.zeros(coadd_shape, np.int32)}
    pixels = bg.BackgroundPixels(wcs_pair[2], wcs_pair[3], **perfect)
    assert (~pixels.on_coadd).any()
    np.testing.assert_array_equal(pixels.reason, np.where(pixels.on_coadd, 0, 1))


def test_coadd_cutouts(wcs_pair, images):
    """Coadd arrays may be a cutout of the coadd, if it holds every pixel needed."""
    whole = make_pixels(wcs_pair, images)
    # the SE image covers the coadd's rows 0..107 and columns 0..~224 of 244
    y0, y1, x0, x1 = bg._coadd_box(wcs_pair[2], wcs_pair[3], SE_SHAPE, wcs_pair[4], margin=0)
    assert (y0, y1, x0) == (0, wcs_pair[4][0], 0) and x1 < wcs_pair[4][1] - 10
    cutout = {key: images[key][y0:y1, x0 + 2:x1] for key in ("coadd_weight", "coadd_bmask", "coadd_seg")}
    with pytest.raises(bg.MappingError, match=r"cutout \(\d+x108 at x0=2, y0=0\) does not hold"):
        make_pixels(wcs_pair, dict(images, **cutout), coadd_shape=wcs_pair[4], coadd_offset=(y0, x0 + 2))
    cutout = {key: images[key][y0:y1, x0:x1] for key in ("coadd_weight", "coadd_bmask", "coadd_seg")}
    pixels = make_pixels(wcs_pair, dict(images, **cutout), coadd_shape=wcs_pair[4], coadd_offset=(y0, x0))
    np.testing.assert_array_equal(pixels.reason, whole.reason)


def test_shapes_must_agree(wcs_pair, images):
    images = dict(images, se_bmask=images["se_bmask"][:-1])
    with pytest.raises(tm.BadInputError, match="different shapes: SE weight 120x240, SE bmask 120x239"):
        make_pixels(wcs_pair, images)


def test_picture_shows_the_reasons(wcs_pair, images, tmp_path):
    pixels = make_pixels(wcs_pair, images)
    figure = pixels.plot()
    artist = next(a for ax in figure.axes for a in ax.get_images() if a.get_gid() == "reasons")
    np.testing.assert_array_equal(artist.get_array(), pixels.reason)
    legend = [t.get_text() for ax in figure.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert any(text.startswith("GOOD:") for text in legend) and any(t.startswith("COADD_SEG:") for t in legend)
    # the colour drawn for a reason is the documented one
    rgba = artist.to_rgba(artist.norm(np.array([bg.REASONS.index("COADD_SEG")])))[0]
    assert np.allclose(rgba[:3], tuple(int(bg.REASON_COLOURS[6][i:i + 2], 16) / 255 for i in (1, 3, 5)))


# ---- Files and the command line


@pytest.fixture
def files(tmp_path, wcs_pair, images):
    """The images as DES-like FITS files, and a pizza-cutter info YAML pointing at them."""
    se_header, coadd_header = wcs_pair[0].copy(), wcs_pair[1].copy()
    se_header["EXPNUM"], se_header["CCDNUM"] = EXPNUM_Y6, CCDNUM
    for key in ("NAXIS", "NAXIS1", "NAXIS2"):
        se_header.remove(key)
        coadd_header.remove(key)
    fits.HDUList([fits.PrimaryHDU(),
                  fits.ImageHDU(images["se_image"], se_header, name="sci"),
                  fits.ImageHDU(images["se_bmask"], se_header, name="msk"),
                  fits.ImageHDU(images["se_weight"], se_header, name="wgt")]).writeto(tmp_path / "se.fits")
    fits.HDUList([fits.PrimaryHDU(),
                  fits.ImageHDU(np.zeros(wcs_pair[4], np.float32), coadd_header, name="sci"),
                  fits.ImageHDU(images["coadd_bmask"], coadd_header, name="msk"),
                  fits.ImageHDU(images["coadd_weight"], coadd_header, name="wgt")]).writeto(tmp_path / "coadd.fits")
    fits.PrimaryHDU(images["coadd_seg"], coadd_header).writeto(tmp_path / "seg.fits")
    info = {"tilename": "DES2122+0001", "band": "r", "image_path": "coadd.fits", "image_ext": "sci",
            "weight_path": "coadd.fits", "weight_ext": "wgt", "bmask_path": "coadd.fits", "bmask_ext": "msk",
            "seg_path": "seg.fits", "seg_ext": 0, "position_offset": 1,
            "src_info": [{"expnum": 111, "ccdnum": 1, "image_path": "missing.fits", "weight_path": "missing.fits",
                          "bmask_path": "missing.fits"},
                         {"expnum": EXPNUM_Y6, "ccdnum": CCDNUM, "band": "r",
                          "image_path": "se.fits", "image_ext": "sci", "weight_path": "se.fits",
                          "weight_ext": "wgt", "bmask_path": "se.fits", "bmask_ext": "msk"}]}
    (tmp_path / "info.yaml").write_text(yaml.safe_dump(info))
    return tmp_path


EXPLICIT = ["--se_image", "se.fits[sci]", "--se_weight", "se.fits[wgt]", "--se_bmask", "se.fits[msk]",
            "--coadd_weight", "coadd.fits[wgt]", "--coadd_bmask", "coadd.fits[msk]", "--coadd_seg", "seg.fits"]


def digest(directory):
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest()
            for name in ("se.fits", "coadd.fits", "seg.fits", "info.yaml")}


def test_cli_writes_the_image_picture_and_summary(files, wcs_pair, images, monkeypatch, capsys):
    monkeypatch.chdir(files)
    before = digest(files)
    assert bg.main([*EXPLICIT, "--no_transient_cut", "--png"]) == 0
    out, err = capsys.readouterr()
    assert digest(files) == before  # inputs untouched
    with fits.open("se_goodbkg.fits") as hdul:
        reason, header = hdul[0].data, hdul[0].header
    iy, ix = brute_force_nearest(wcs_pair[2], wcs_pair[3], SE_SHAPE)
    images = dict(images, transient_mask=np.zeros(SE_SHAPE, bool))
    np.testing.assert_array_equal(reason, expected_reasons(images, iy, ix, wcs_pair[4]))
    assert reason.dtype == np.uint8
    # the SE WCS, documented codes and counts, provenance
    out_wcs, se_wcs = WCS(header), wcs_pair[2]
    corners = np.array([[0, 0], [119, 239], [60, 100]], dtype=float)
    np.testing.assert_allclose(out_wcs.all_pix2world(corners, 0), se_wcs.all_pix2world(corners, 0), atol=1e-10)
    assert [header[f"BGCODE{code}"] for code in range(8)] == list(bg.REASONS)
    assert sum(header[f"BGNPIX{code}"] for code in range(8)) == reason.size
    assert header["BGNPIX6"] == np.count_nonzero(reason == 6) > 0
    assert header["EXPNUM"] == EXPNUM_Y6 and header["CCDNUM"] == CCDNUM and header["BGTRCUT"] is False
    assert header["BGIN0"] == "se.fits[sci]" and header["BGIN5"] == "seg.fits[0]"
    # the picture is a PNG with two panels
    from matplotlib.image import imread

    picture = imread("se_goodbkg.png")
    assert picture.ndim == 3 and picture.shape[1] > picture.shape[0]
    # the summary: a row per reason with its count
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["CODE", "REASON", "FIRST", "ANY", "FRACTION"]
    row = next(line for line in lines if " COADD_SEG " in line)
    assert int(row.split()[2]) == header["BGNPIX6"]
    assert len(err.strip().splitlines()) == 1 and "good background pixels" in err


def test_yaml_and_explicit_forms_agree(files, monkeypatch, capsys):
    monkeypatch.chdir(files)
    assert bg.main([*EXPLICIT, "--counts", "maps.fits", "-o", "explicit.fits"]) == 2
    assert "maps.fits: count-map file not found" in capsys.readouterr().err
    write_count_maps(files / "maps.fits", {"Y6": hot_maps(np.random.default_rng(1), hot_x=7)})
    assert bg.main([*EXPLICIT, "--counts", "maps.fits", "-o", "explicit.fits"]) == 0
    assert bg.main(["--info", "info.yaml", "--se_index", "1", "--counts", "maps.fits",
                    "-o", "from_yaml.fits"]) == 0
    capsys.readouterr()
    explicit, from_yaml = fits.getdata("explicit.fits"), fits.getdata("from_yaml.fits")
    np.testing.assert_array_equal(explicit, from_yaml)
    assert (explicit == bg.REASONS.index("TRANSIENT")).any()
    # the YAML's relative paths are resolved from its own directory
    os.mkdir("elsewhere")
    monkeypatch.chdir("elsewhere")
    files_from_yaml = bg.ImageFiles.from_info("../info.yaml", 1)
    assert files_from_yaml.se_image == (str(files / "se.fits"), "sci")
    assert files_from_yaml.coadd_seg == (str(files / "seg.fits"), 0)
    assert (files_from_yaml.expnum, files_from_yaml.ccdnum) == (EXPNUM_Y6, CCDNUM)


def hot_maps(rng, hot_x=2, ccdnum=CCDNUM):
    """A count cube with one hot column of cells (X = hot_x, Y 0..9) on one CCD."""
    cube = poisson_cube(rng, 4.0)
    cube[ccdnum - 1, 0:10, hot_x] += 50
    return cube


def test_transient_cut_uses_the_epoch_and_ccd_of_the_exposure(files, wcs_pair, images, rng, caplog):
    # Y2E1 and Y6 have hot cells in different columns, and another CCD has its own
    path = write_count_maps(files / "maps.fits", {"Y2E1": hot_maps(rng, hot_x=9), "Y6": hot_maps(rng, hot_x=2)})
    masks = tm.TransientMasks(path)
    explicit = bg.ImageFiles(*(str(files / f) for f in ("se.fits[sci]", "se.fits[wgt]", "se.fits[msk]",
                                                         "coadd.fits[wgt]", "coadd.fits[msk]", "seg.fits")))
    pixels = bg.good_background(explicit, transient_masks=masks)
    assert (pixels.expnum, pixels.ccdnum, pixels.epoch) == (EXPNUM_Y6, CCDNUM, "Y6")
    y6 = masks.mask_for("Y6").pixel_mask(CCDNUM)[:SE_SHAPE[0], :SE_SHAPE[1]]
    np.testing.assert_array_equal(pixels.failed["TRANSIENT"], y6)
    assert y6[:160, 16:24].all() and y6.sum() == 160 * 8  # cells X = 2, Y 0..9: x 17..24, y 1..160
    iy, ix = brute_force_nearest(wcs_pair[2], wcs_pair[3], SE_SHAPE)
    np.testing.assert_array_equal(pixels.reason,
                                  expected_reasons(dict(images, transient_mask=y6), iy, ix, wcs_pair[4]))
    # the same exposure on another CCD, or in Y2E1, gets other masks
    other_ccd = bg.good_background(bg.ImageFiles(*[getattr(explicit, r) for r in bg.ROLES], ccdnum=6),
                                   transient_masks=masks)
    assert not other_ccd.failed["TRANSIENT"].any()
    y2e1 = bg.good_background(bg.ImageFiles(*[getattr(explicit, r) for r in bg.ROLES], expnum=350000),
                              transient_masks=masks)
    assert y2e1.epoch == "Y2E1" and y2e1.failed["TRANSIENT"][:160, 72:80].all()
    assert not y2e1.failed["TRANSIENT"][:, 16:24].any()
    # an exposure in an epoch the maps lack: the cut is left out, loudly
    with caplog.at_level(logging.WARNING, logger="des_background"):
        lacking = bg.good_background(bg.ImageFiles(*[getattr(explicit, r) for r in bg.ROLES], expnum=400000),
                                     transient_masks=masks)
    assert lacking.epoch == "" and not lacking.transient_cut
    assert "EXPNUM 400000 is in epoch Y2E2, which the count maps do not have" in caplog.text


def listing(directory):
    """Every file below ``directory`` (hidden ones too) with its sha256."""
    found = {}
    for root, dirs, names in os.walk(directory):
        for name in dirs + names:
            path = os.path.join(root, name)
            key = os.path.relpath(path, directory)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as stream:
                    found[key] = hashlib.sha256(stream.read()).hexdigest()
            else:
                found[key] = "not a file"
    return found


def test_script_run_reports_bad_input(tmp_path):
    """Run as a script, des_background is __main__: its bad-input errors must still be exit 2."""
    script = os.path.join(os.path.dirname(DATA), os.pardir, "des_background.py")
    done = subprocess.run([sys.executable, script, "--info", "nothere.yaml", "--se_index", "0"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == "des_background: error: nothere.yaml: pizza-cutter info file not found"


def test_existing_output_refused_before_work(files, monkeypatch, capsys):
    monkeypatch.chdir(files)
    (files / "se_goodbkg.png").write_text("keep me")
    assert bg.main([*EXPLICIT, "--no_transient_cut", "--png"]) == 2
    assert "se_goodbkg.png: output exists" in capsys.readouterr().err
    assert not (files / "se_goodbkg.fits").exists()
    assert (files / "se_goodbkg.png").read_text() == "keep me"
    # with --overwrite it is replaced, by a real picture
    assert bg.main([*EXPLICIT, "--no_transient_cut", "--png", "--overwrite"]) == 0
    assert (files / "se_goodbkg.png").read_bytes()[:4] == b"\x89PNG"


# ---- The defects of issue 11


def test_wholly_off_coadd_arrays_in_memory_are_all_off_coadd(wcs_pair, images):
    """Coadd arrays in memory that the SE image misses: all OFF_COADD (it raised IndexError)."""
    coadd_shape = wcs_pair[4]
    far = wcs_pair[1].copy()
    far["CRPIX1"] += 5000
    pixels = make_pixels((None, None, wcs_pair[2], WCS(far)), images)
    assert not pixels.overlaps and pixels.map_error == 0.0
    assert (pixels.reason == bg.REASONS.index("OFF_COADD")).all() and not pixels.good.any()
    assert pixels.counts[1] == pixels.reason.size and pixels.summary()["FIRST"][1] == pixels.reason.size
    # the SE cuts are still known, the coadd ones are not evaluated
    np.testing.assert_array_equal(pixels.failed["SE_WEIGHT"], ~(images["se_weight"] > 0))
    assert not pixels.failed["COADD_SEG"].any()
    # also for a cutout of the coadd that is empty, and an empty coadd
    empty = {key: images[key][:0, :0] for key in ("coadd_weight", "coadd_bmask", "coadd_seg")}
    pixels = make_pixels((None, None, wcs_pair[2], WCS(far)), dict(images, **empty), coadd_shape=coadd_shape)
    assert (pixels.reason == 1).all()


def opposite_hemisphere(header):
    """A copy of an SE header moved to the other side of the sky (the coadd's TAN is not finite there)."""
    header = header.copy()
    header["CRVAL1"] = (header["CRVAL1"] + 180.0) % 360.0
    header["CRVAL2"] = -header["CRVAL2"]
    return header


def test_se_image_in_the_other_hemisphere_is_off_coadd_without_reading_it(files, wcs_pair, images, monkeypatch,
                                                                           capsys, caplog):
    far = WCS(opposite_hemisphere(wcs_pair[0]))
    pixels = make_pixels((None, None, far, wcs_pair[3]), images)
    assert (pixels.reason == 1).all() and not pixels.overlaps
    # from files: the coadd is never read, and the command says why there is no output
    monkeypatch.chdir(files)
    with fits.open("se.fits") as hdul:
        hdus = [fits.PrimaryHDU()] + [fits.ImageHDU(hdul[name].data, opposite_hemisphere(hdul[name].header),
                                                    name=name) for name in ("sci", "msk", "wgt")]
    fits.HDUList(hdus).writeto("south.fits")

    def no_reading(*args):
        raise AssertionError("the coadd was read")

    monkeypatch.setattr(bg.Coadd, "cutout", no_reading)
    args = ["--se_image", "south.fits[sci]", "--se_weight", "south.fits[wgt]", "--se_bmask", "south.fits[msk]",
            *EXPLICIT[6:], "--no_transient_cut"]
    with caplog.at_level(logging.WARNING, logger="des_background"):
        pixels = bg.good_background(bg.ImageFiles(*args[1:12:2]))
    assert (pixels.reason == 1).all()
    assert "the SE image and the coadd do not overlap" in caplog.text
    assert bg.main(args) == 0
    err = capsys.readouterr().err
    assert "south.fits[sci]: the SE image and the coadd do not overlap: skipped, no output written" in err
    assert not os.path.exists("south_goodbkg.fits")
    summary = Table.read("south_goodbkg_summary.ecsv")
    assert list(summary["STATUS"]) == ["skipped"] and summary["N_OFF_COADD"][0] == SE_SHAPE[0] * SE_SHAPE[1]


def test_ccd_wholly_off_the_coadd_warns(files, wcs_pair, monkeypatch, capsys):
    monkeypatch.chdir(files)
    far = wcs_pair[1].copy()
    far["CRPIX1"] += 5000  # the same sky, now far off this small coadd
    for key in ("NAXIS", "NAXIS1", "NAXIS2"):
        far.remove(key)
    fits.PrimaryHDU(np.zeros(wcs_pair[4], np.int32), far).writeto("far.fits")
    args = [*EXPLICIT[:6], "--coadd_weight", "far.fits", "--coadd_bmask", "far.fits[0]", "--coadd_seg",
            "seg.fits"]
    assert bg.main([*args, "--no_transient_cut"]) == 2  # far.fits and far.fits[0] are one image
    assert "--coadd_weight and --coadd_bmask are the same image, HDU 0 of far.fits" in capsys.readouterr().err
    fits.PrimaryHDU(np.zeros(wcs_pair[4], np.int32), far).writeto("far2.fits")
    fits.PrimaryHDU(np.zeros(wcs_pair[4], np.int32), far).writeto("far3.fits")
    args = [*EXPLICIT[:6], "--coadd_weight", "far.fits", "--coadd_bmask", "far2.fits", "--coadd_seg", "far3.fits"]
    assert bg.main([*args, "--no_transient_cut"]) == 0
    err = capsys.readouterr().err
    assert "do not overlap" in err and "skipped" in err
    assert not os.path.exists("se_goodbkg.fits")


def test_fpacked_segmap_without_extension_takes_its_first_image(tmp_path, monkeypatch, capsys):
    """fpack puts the image in HDU 1 after an empty primary: no [EXT] means that image."""
    monkeypatch.chdir(tmp_path)
    paths = bg.write_example_tile(".", n_images=1, se_shape=(256, 128))
    se = os.path.basename(paths["se"][0])
    args = ["--se_image", f"{se}[sci]", "--se_weight", f"{se}[wgt]", "--se_bmask", f"{se}[msk]",
            "--coadd_weight", "DES2122+0001_r.fits.fz[wgt]", "--coadd_bmask", "DES2122+0001_r.fits.fz[msk]",
            "--coadd_seg", "DES2122+0001_r_segmap.fits.fz", "--no_transient_cut"]
    assert bg.main(args) == 0
    capsys.readouterr()
    header = fits.getheader("D00791215_r_c57_goodbkg.fits")
    assert header["BGIN5"] == "DES2122+0001_r_segmap.fits.fz[1]"
    assert header["BGNPIX6"] > 0  # the objects of the segmentation map are seen
    assert bg.main(["--info", "DES2122+0001_r_pizza_info.yaml", "--se_index", "0", "--no_transient_cut",
                    "-o", "from_info.fits"]) == 0
    np.testing.assert_array_equal(fits.getdata("from_info.fits"), fits.getdata("D00791215_r_c57_goodbkg.fits"))


def test_quoted_extension_number_is_an_hdu_number(files):
    info = yaml.safe_load((files / "info.yaml").read_text())
    info["seg_ext"] = "0"
    info["src_info"][1].update(image_ext=" 1", bmask_ext="2", weight_ext="WGT")
    (files / "info.yaml").write_text(yaml.safe_dump(info))
    tile = bg.PizzaInfo(files / "info.yaml")
    chosen = tile.files(1)
    assert chosen.se_image[1] == 1 and chosen.se_bmask[1] == 2 and chosen.coadd_seg[1] == 0
    assert chosen.se_weight[1] == "WGT"
    pixels = bg.good_background(chosen)
    expected = bg.good_background(bg.ImageFiles(*(str(files / f) for f in EXPLICIT[1::2])))
    np.testing.assert_array_equal(pixels.reason, expected.reason)


# ---- Many SE images


@pytest.fixture
def tile(tmp_path):
    """A synthetic tile in DES layout (fpacked) with 4 small SE images."""
    paths = bg.write_example_tile(tmp_path / "tile", n_images=4, se_shape=(256, 128))
    return tmp_path, paths


def test_parse_se_index():
    assert bg.parse_se_index(" 3 ", 5) == [3]
    assert bg.parse_se_index("0,4,2,4", 5) == [0, 4, 2]
    assert bg.parse_se_index("1-3,0", 5) == [1, 2, 3, 0]
    assert bg.parse_se_index("ALL", 3) == [0, 1, 2]
    for bad, message in [("", "give N"), ("1-", "give N"), ("-1", "give N"), ("a", "give N"), ("1.5", "give N"),
                         ("3-1", "runs backwards"), ("5", "out of range"), ("0-5", "out of range")]:
        with pytest.raises(tm.BadInputError, match=message):
            bg.parse_se_index(bad, 5)


def test_many_se_images_one_summary(tile, monkeypatch, capsys):
    tmp_path, paths = tile
    monkeypatch.chdir(tmp_path)
    maps = write_count_maps("maps.fits", {"Y6": hot_maps(np.random.default_rng(2), hot_x=3, ccdnum=58)})
    info = "tile/DES2122+0001_r_pizza_info.yaml"
    assert bg.main(["--info", info, "--se_index", "0-2", "-o", "out/", "--counts", maps, "--png"]) == 0
    out, err = capsys.readouterr()
    names = ["D00791215_r_c57", "D00791216_r_c58", "D00791217_r_c59"]
    assert sorted(os.listdir("out")) == sorted([f"{n}_goodbkg.{e}" for n in names for e in ("fits", "png")]
                                               + ["DES2122+0001_r_goodbkg_summary.ecsv"])
    assert "3 SE images: 3 done" in err and out == ""
    summary = Table.read("out/DES2122+0001_r_goodbkg_summary.ecsv")
    assert list(summary["INDEX"]) == [0, 1, 2] and list(summary["STATUS"]) == ["done"] * 3
    assert list(summary["EXPNUM"]) == [791215, 791216, 791217] and list(summary["CCDNUM"]) == [57, 58, 59]
    assert list(summary["EPOCH"]) == ["Y6"] * 3 and summary.meta["DEMO"] is False
    assert summary["SE_IMAGE"][1].endswith("D00791216_r_c58_immasked.fits.fz[sci]")
    assert summary["OUTPUT"][1] == "out/D00791216_r_c58_goodbkg.fits"
    for row, name in zip(summary, names):
        reason = fits.getdata(f"out/{name}_goodbkg.fits")
        for code, reason_name in enumerate(bg.REASONS):
            assert row[f"N_{reason_name}"] == np.count_nonzero(reason == code)
        assert row["N_PIXELS"] == reason.size and row["GOOD_FRAC"] == pytest.approx(np.mean(reason == 0))
    # the hot cells of CCD 58 cut that image only
    assert summary["N_TRANSIENT"][1] > 0 and summary["N_TRANSIENT"][0] == summary["N_TRANSIENT"][2] == 0
    # the same images one at a time give the same outputs
    for index, name in enumerate(names):
        assert bg.main(["--info", info, "--se_index", str(index), "-o", f"one_{index}.fits", "--counts", maps]) == 0
        np.testing.assert_array_equal(fits.getdata(f"one_{index}.fits"), fits.getdata(f"out/{name}_goodbkg.fits"))


def test_one_bad_se_image_does_not_stop_the_others(tile, monkeypatch, capsys):
    tmp_path, paths = tile
    monkeypatch.chdir(tmp_path)
    with open(paths["se"][1], "r+b") as stream:
        stream.truncate(20000)  # image 1 cut short
    os.remove(paths["se"][2])  # image 2 gone
    info = "tile/DES2122+0001_r_pizza_info.yaml"
    assert bg.main(["--info", info, "--se_index", "all", "-o", "out", "--no_transient_cut"]) == bg.EXIT_SOME_FAILED
    err = capsys.readouterr().err
    assert "src_info[1]: failed:" in err and "src_info[2]: failed:" in err and "4 SE images: 2 done" in err
    summary = Table.read("out/DES2122+0001_r_goodbkg_summary.ecsv")
    assert list(summary["STATUS"]) == ["done", "failed", "failed", "done"]
    assert "D00791216_r_c58_immasked.fits.fz: not a readable FITS image for --se_image (File may have been truncated" in summary["MESSAGE"][1]
    assert "D00791217_r_c59_immasked.fits.fz: FITS image for --se_image not found" in summary["MESSAGE"][2]
    assert "\n" not in "".join(summary["MESSAGE"].filled(""))
    assert summary["N_PIXELS"][1] == 0 and np.isnan(summary["GOOD_FRAC"][1])
    assert sorted(os.listdir("out")) == ["D00791215_r_c57_goodbkg.fits", "D00791218_r_c60_goodbkg.fits",
                                         "DES2122+0001_r_goodbkg_summary.ecsv"]


def test_bad_count_maps_stop_a_run_of_many_se_images(tile, monkeypatch, capsys):
    """They are every image's input: one error, exit 2, nothing written (was: each image failed, exit 3)."""
    tmp_path, _ = tile
    monkeypatch.chdir(tmp_path)
    hdu = fits.ImageHDU(np.ones((62, 3, 3), np.uint16), name="Y6")
    hdu.header.update(EPOCH="Y6", MIN_EXP=770843, MAX_EXP=810381)
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto("grid.fits")
    info = "tile/DES2122+0001_r_pizza_info.yaml"
    assert bg.main(["--info", info, "--se_index", "all", "-o", "out/", "--counts", "grid.fits"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "grid.fits: HDU 1 (Y6): a 3 x 3 cell grid does not divide" in err
    assert not os.path.exists("out")


def test_from_python_one_call_yields_every_image(tile, monkeypatch):
    tmp_path, paths = tile
    monkeypatch.chdir(tmp_path)
    images = bg.PizzaInfo(paths["info"]).images("3,1")
    opened = []
    real_init = bg.Coadd.__init__

    def counting_init(self, *args):
        opened.append(args)
        real_init(self, *args)

    monkeypatch.setattr(bg.Coadd, "__init__", counting_init)
    results = list(bg.iter_good_background(images, ignore_bits="SUSPECT"))
    assert len(opened) == 1  # the coadd is opened once for the run
    assert [r.index for r in results] == [3, 1] and all(r.status == "done" and not r.outputs for r in results)
    assert not os.path.exists("D00791218_r_c60_goodbkg.fits")  # nothing written without output_dir
    for result in results:
        single = bg.good_background(images[0] if result.index == 3 else images[1], ignore_bits="SUSPECT")
        np.testing.assert_array_equal(result.pixels.reason, single.reason)
        assert result.counts == tuple(single.counts) and result.good_fraction == single.good_fraction
    table = bg.summary_table(results)
    assert list(table["INDEX"]) == [1, 3] and table["N_GOOD"][1] == results[0].counts[0]


def test_progress_bar_on_stderr_only(tile, monkeypatch, capsys):
    pytest.importorskip("tqdm")
    monkeypatch.setattr(tm, "_PROGRESS_DELAY", 0.0)  # (shown only after 2 s otherwise)
    tmp_path, paths = tile
    results = list(bg.iter_good_background(bg.PizzaInfo(paths["info"]).images("0-1"), progress=True))
    out, err = capsys.readouterr()
    assert len(results) == 2 and out == "" and "image" in err and "/2 " in err
    # the command shows it only on a terminal, and never with --quiet
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    args = ["--info", paths["info"], "--se_index", "0-1", "--no_transient_cut"]
    assert bg.main([*args, "-o", "shown/"]) == 0
    assert "/2 " in capsys.readouterr().err
    assert bg.main([*args, "-o", "quiet/", "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")


def test_parallel_run_matches_one_process(tile, monkeypatch, capsys):
    pytest.importorskip("distributed")
    tmp_path, paths = tile
    monkeypatch.chdir(tmp_path)
    info = "tile/DES2122+0001_r_pizza_info.yaml"
    assert bg.main(["--info", info, "--se_index", "all", "-o", "serial/", "--no_transient_cut"]) == 0
    # as a script, in parallel: the workers must find the module's functions by name
    script = os.path.join(os.path.dirname(DATA), os.pardir, "des_background.py")
    done = subprocess.run([sys.executable, script, "--info", info, "--se_index", "all", "-o", "parallel/",
                           "--no_transient_cut", "--jobs", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir("parallel")) == sorted(os.listdir("serial"))
    for name in os.listdir("serial"):
        if name.endswith(".fits"):
            np.testing.assert_array_equal(fits.getdata(f"parallel/{name}"), fits.getdata(f"serial/{name}"))
    serial, parallel = (Table.read(f"{d}/DES2122+0001_r_goodbkg_summary.ecsv") for d in ("serial", "parallel"))
    for column in ("INDEX", "STATUS", "N_GOOD", "N_COADD_SEG", "GOOD_FRAC"):
        assert list(serial[column]) == list(parallel[column])
    # without --jobs, Dask is not imported at all
    probe = ("import sys, des_background as bg; bg.main(['--info', %r, '--se_index', '0', '-o', 'probe.fits', "
             "'--no_transient_cut', '--quiet']); print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('dask', 'distributed')))" % info)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(DATA), os.pardir)))
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_interrupt_leaves_no_temporary_file(tile, monkeypatch, capsys):
    tmp_path, paths = tile
    monkeypatch.chdir(tmp_path)

    def interrupted(figure, tmp, path):
        with open(tmp, "wb") as out:
            out.write(b"half a picture")
        raise KeyboardInterrupt

    monkeypatch.setattr(bg, "_save_picture", interrupted)
    before = listing(tmp_path)
    info = "tile/DES2122+0001_r_pizza_info.yaml"
    assert bg.main(["--info", info, "--se_index", "0", "--no_transient_cut", "--png"]) == 130
    assert capsys.readouterr().err.strip() == "des_background: interrupted; no output written"
    assert listing(tmp_path) == before
    # what a killed worker leaves, the run removes
    with pytest.raises(RuntimeError), tm.atomic_output("out.fits") as tmp:
        with open(tmp, "w") as out:
            out.write("left behind")
        bg._remove_temporaries(["out.fits"])
        assert not os.path.exists(tmp)
        raise RuntimeError
    assert listing(tmp_path) == before


def test_non_ascii_file_names(tile, monkeypatch, capsys):
    tmp_path, paths = tile
    monkeypatch.chdir(tmp_path)
    se = paths["se"][0]
    os.rename(se, "tile/Dé_ñ.fits.fz")
    args = ["--se_image", "tile/Dé_ñ.fits.fz[sci]", "--se_weight", "tile/Dé_ñ.fits.fz[wgt]", "--se_bmask",
            "tile/Dé_ñ.fits.fz[msk]", "--coadd_weight", paths["coadd"][0], "--coadd_bmask", paths["coadd"][1],
            "--coadd_seg", paths["coadd"][2], "--no_transient_cut", "-o", "sortie_é.fits"]
    assert bg.main(args) == 0
    assert fits.getheader("sortie_é.fits")["BGIN0"] == "D\\xe9_\\xf1.fits.fz[sci]"
    assert Table.read("sortie_é_summary.ecsv")["SE_IMAGE"][0] == "tile/Dé_ñ.fits.fz[sci]"


# ---- The picture


def test_picture_bins_big_images_and_keeps_the_majority():
    codes = np.zeros((2100, 1030), dtype=np.uint8)
    codes[:, :520] = 6
    codes[1000:1003, 700] = 7  # a thin line: a minority in its blocks
    factor = -(-2100 // bg.PICTURE_SIDE)
    binned = bg._bin_mode(codes, factor)
    assert binned.shape == (700, 344) and set(np.unique(binned)) == {0, 6}
    # columns 519..521 make block 173: one of them is 6, so it shows 0
    assert (binned[:, :173] == 6).all() and (binned[:, 173:] == 0).all()
    image = np.arange(12.0).reshape(3, 4)
    image[0, 0] = np.nan
    np.testing.assert_allclose(bg._bin_mean(image, 2), [[(1 + 4 + 5) / 3, 4.5], [8.5, 10.5]])


def test_picture_of_a_whole_ccd(rng):
    """A whole CCD is drawn binned down to at most PICTURE_SIDE pixels a side."""
    shape = (tm.CCD_NY, tm.CCD_NX)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cd = [[-7.3e-5, 0.0], [0.0, 7.3e-5]]
    seg = np.zeros(shape, np.int32)
    seg[:, :1024] = 1
    pixels = bg.BackgroundPixels(wcs, wcs, se_weight=np.ones(shape, np.float32), se_bmask=np.zeros(shape, np.int16),
                                 coadd_weight=np.ones(shape, np.float32), coadd_bmask=np.zeros(shape, np.int16),
                                 coadd_seg=seg, se_image=rng.normal(size=shape).astype(np.float32))
    figure = pixels.plot()
    artist = next(a for ax in figure.axes for a in ax.get_images() if a.get_gid() == "reasons")
    assert artist.get_array().shape == (1024, 512) and list(artist.get_extent()) == [0.5, 2048.5, 0.5, 4096.5]
    assert (artist.get_array()[:, :256] == 6).all() and (artist.get_array()[:, 256:] == 0).all()
    assert any("50.0% of the pixels" in ax.get_title() for ax in figure.axes)


# ---- Bad input: one line, exit 2, nothing written, inputs unchanged


def explicit(**roles):
    """The explicit form with some images replaced."""
    chosen = dict(zip(bg.ROLES, EXPLICIT[1::2]), **roles)
    return [item for role in bg.ROLES for item in (f"--{role}", chosen[role])]


def se_copy(name, transform=None, compress=False):
    """Write a copy of se.fits (sci, msk, wgt), its HDUs passed through ``transform``."""
    def setup(directory):
        with fits.open(directory / "se.fits") as hdul:
            hdus = [fits.PrimaryHDU()]
            for hdu in hdul[1:]:
                data, header = (transform or (lambda d, h: (d, h)))(hdu.data, hdu.header.copy())
                kind = fits.CompImageHDU if compress else fits.ImageHDU
                hdus.append(kind(data, header, name=hdu.name))
            fits.HDUList(hdus).writeto(directory / name)
    return setup


def cut_short(source, name, fraction):
    def setup(directory):
        if not (directory / source).exists():
            SETUPS[source](directory)
        data = (directory / source).read_bytes()
        (directory / name).write_bytes(data[: int(len(data) * fraction)])
    return setup


def gzipped(source, name, damage=None):
    import gzip

    def setup(directory):
        data = bytearray(gzip.compress((directory / source).read_bytes(), compresslevel=1))
        if damage == "cut":
            data = data[: len(data) // 2]
        elif damage == "flip":
            middle = len(data) // 2
            data[middle: middle + 64] = bytes(255 - b for b in data[middle: middle + 64])
        (directory / name).write_bytes(bytes(data))
    return setup


def scrambled_heap(directory):
    """se.fits.fz with garbage in the middle of the compressed data of its weight."""
    se_copy("se.fits.fz", compress=True)(directory)
    with fits.open(directory / "se.fits.fz", disable_image_compression=True) as hdul:
        info, header = hdul.fileinfo(3), hdul[3].header
        start = info["datLoc"] + header.get("THEAP", header["NAXIS1"] * header["NAXIS2"])
        size = header["PCOUNT"]
    data = bytearray((directory / "se.fits.fz").read_bytes())
    first, last = start + size // 4, start + 3 * size // 4
    data[first:last] = np.random.default_rng(5).bytes(last - first)
    (directory / "bad.fits.fz").write_bytes(bytes(data))


def edit_info(change, name="info.yaml"):
    def setup(directory):
        info = yaml.safe_load((directory / "info.yaml").read_text())
        change(info)
        (directory / name).write_text(yaml.safe_dump(info))
    return setup


def entry(**values):
    """Change src_info[1] (None deletes the key)."""
    def change(info):
        for key, value in values.items():
            if value is None:
                del info["src_info"][1][key]
            else:
                info["src_info"][1][key] = value
    return edit_info(change)


def top(**values):
    def change(info):
        for key, value in values.items():
            if value is None:
                del info[key]
            else:
                info[key] = value
    return edit_info(change)


def write_bytes(name, data):
    return lambda directory: (directory / name).write_bytes(data)


def png_file(directory):
    from matplotlib.figure import Figure

    Figure(figsize=(1, 1)).savefig(directory / "png.fits", format="png")


SETUPS = {"se.fits.fz": se_copy("se.fits.fz", compress=True)}
SE_IN = {name: explicit(se_image=f"{name}[sci]", se_weight=f"{name}[wgt]", se_bmask=f"{name}[msk]")
         for name in ("cut.fits", "cut.fits.fz", "bad.fits.fz")}
INFO_1 = ["--info", "info.yaml", "--se_index", "1"]
ALL = ["--info", "info.yaml", "--se_index", "all"]
MAPS = ["--counts", "maps.fits"]


def with_maps(directory):
    write_count_maps(directory / "maps.fits", {"Y6": hot_maps(np.random.default_rng(3))})


def huge_expnum(data, header):
    header["EXPNUM"] = 10**23
    return data, header


def unwritable(directory):
    if bg._can_write_in("/sys"):
        pytest.skip("/sys is writable here")


BAD_INPUTS = [
    # files that are not what their name says
    ("PNG named .fits", png_file, explicit(se_image="png.fits"), "png.fits: not a readable FITS image for --se_image (No SIMPLE card found"),
    ("CSV named .fits", write_bytes("csv.fits", b"x,y\n1,2\n"), explicit(coadd_weight="csv.fits"),
     "csv.fits: not a readable FITS image for --coadd_weight"),
    ("zero-byte file", write_bytes("empty.fits", b""), explicit(coadd_seg="empty.fits"),
     "empty.fits: empty file (0 bytes), expected a FITS image for --coadd_seg"),
    ("directory named .fits", lambda d: (d / "dir.fits").mkdir(), explicit(se_bmask="dir.fits[1]"),
     "dir.fits: is a directory, expected a FITS image for --se_bmask"),
    ("truncated FITS", cut_short("se.fits", "cut.fits", 0.6), SE_IN["cut.fits"], "cut.fits: not a readable FITS image for --se_weight (File may have been truncated"),
    ("truncated fpack", cut_short("se.fits.fz", "cut.fits.fz", 0.6), SE_IN["cut.fits.fz"],
     "cut.fits.fz: not a readable FITS image for --se_weight (File may have been truncated"),
    ("corrupt fpack data", scrambled_heap, SE_IN["bad.fits.fz"], "bad.fits.fz: not a readable FITS image for --se_weight (CfitsioException"),
    ("truncated gzip", gzipped("coadd.fits", "coadd.fits.gz", "cut"), explicit(coadd_weight="coadd.fits.gz[wgt]"),
     "coadd.fits.gz: truncated or corrupt gzip FITS image for --coadd_weight"),
    ("corrupt gzip", gzipped("seg.fits", "seg.fits.gz", "flip"), explicit(coadd_seg="seg.fits.gz"),
     "seg.fits.gz: truncated or corrupt gzip FITS image for --coadd_seg (CRC check failed"),
    ("a table, no image", lambda d: fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU(Table({"a": [1]}))]).writeto(
        d / "table.fits"), explicit(coadd_seg="table.fits"), "table.fits: no HDU holds an image (--coadd_seg)"),
    ("a 3-d image", lambda d: fits.PrimaryHDU(np.zeros((2, 3, 4), np.int16)).writeto(d / "cube.fits"),
     explicit(coadd_seg="cube.fits"), "cube.fits: not a 2-d image (--coadd_seg)"),
    ("no WCS", lambda d: fits.PrimaryHDU(np.zeros(SE_SHAPE, np.float32)).writeto(d / "nowcs.fits"),
     explicit(se_image="nowcs.fits"), "nowcs.fits[0]: no usable celestial WCS in the SE image header"),
    ("no such extension name", None, explicit(se_bmask="se.fits[bad]"),
     "se.fits: no extension 'bad' (--se_bmask; it has PRIMARY, SCI, MSK, WGT)"),
    ("no such extension number", None, explicit(se_bmask="se.fits[9]"), "se.fits: no extension 9 (--se_bmask"),
    ("empty extension", None, explicit(se_weight="se.fits[]"), "se.fits[]: empty extension name"),
    ("segmentation map not integers",
     lambda d: fits.PrimaryHDU(fits.getdata(d / "seg.fits").astype(np.float32) + np.float32(np.nan),
                               fits.getheader(d / "seg.fits")).writeto(d / "nan_seg.fits"),
     explicit(coadd_seg="nan_seg.fits"), "nan_seg.fits: a segmentation map must hold integers"),
    ("bmask not integers", se_copy("float.fits", lambda d, h: (d + 0.5 if h["EXTNAME"] == "MSK" else d, h)),
     explicit(se_image="float.fits[sci]", se_weight="float.fits[wgt]", se_bmask="float.fits[msk]"),
     "float.fits[msk]: a bmask must hold integers"),
    ("SE shapes differ", None, explicit(se_bmask="coadd.fits[msk]"),
     "images of different shapes: SE image 120x240, SE weight 120x240, SE bmask 244x108"),
    ("coadd shapes differ", None, explicit(coadd_bmask="se.fits[msk]"),
     "images of different shapes: coadd weight 244x108, coadd bmask 120x240"),
    ("one image for two roles", None, explicit(se_weight="se.fits[1]"),
     "--se_image and --se_weight are the same image, HDU 1 of se.fits"),
    # the pizza-cutter info file
    ("info not found", None, ["--info", "nothere.yaml", "--se_index", "0"],
     "nothere.yaml: pizza-cutter info file not found"),
    ("info a directory", lambda d: (d / "dir.yaml").mkdir(), ["--info", "dir.yaml", "--se_index", "0"],
     "dir.yaml: is a directory, expected a pizza-cutter info file"),
    ("info binary", write_bytes("binary.yaml", bytes(range(256))), ["--info", "binary.yaml", "--se_index", "0"],
     "binary.yaml: not a text file"),
    ("info bad YAML", write_bytes("syntax.yaml", b"src_info: [1, 2\n"), ["--info", "syntax.yaml", "--se_index", "0"],
     "syntax.yaml: not a readable YAML file"),
    ("counts without the cut", None, INFO_1 + ["--no_transient_cut", "--counts", "maps.fits"],
     "--counts: not used with --no_transient_cut"),
    ("info key given twice", write_bytes("twice.yaml", b"src_info:\n- ccdnum: 57\n  ccdnum: 12\n"),
     ["--info", "twice.yaml", "--se_index", "0"], "twice.yaml: line 3: key 'ccdnum' given twice in one mapping"),
    ("info nested too deeply", write_bytes("deep.yaml", b"[" * 5000 + b"]" * 5000),
     ["--info", "deep.yaml", "--se_index", "0"], "deep.yaml: not a readable YAML file (nested too deeply)"),
    ("info empty", write_bytes("empty.yaml", b""), ["--info", "empty.yaml", "--se_index", "0"],
     "empty.yaml: empty file (0 bytes), expected a pizza-cutter info file"),
    ("info without src_info", write_bytes("nolist.yaml", b"tilename: DES2122+0001\n"),
     ["--info", "nolist.yaml", "--se_index", "0"], "nolist.yaml: no 'src_info' list"),
    ("entry a string", edit_info(lambda i: i["src_info"].__setitem__(1, "D00154912_r_c01.fits")), INFO_1,
     "info.yaml: src_info[1] is 'D00154912_r_c01.fits', not a mapping"),
    ("expnum not a number", entry(expnum="D00154912"), INFO_1,
     "info.yaml: src_info[1]: expnum 'D00154912' is not an exposure number (an integer)"),
    ("expnum a float", entry(expnum=790000.5), INFO_1, "info.yaml: src_info[1]: expnum 790000.5 is not an exposure"),
    ("ccdnum out of range", entry(ccdnum=99), INFO_1, "info.yaml: src_info[1]: ccdnum 99 is out of range (1..62)"),
    ("expnum beyond 64 bits", entry(expnum=99999999999999999999999), INFO_1,
     "info.yaml: src_info[1]: expnum 99999999999999999999999 is out of range (1..9223372036854775807)"),
    ("expnum digits beyond 64 bits", entry(expnum="99999999999999999999999"), INFO_1,
     "info.yaml: src_info[1]: expnum 99999999999999999999999 is out of range (1..9223372036854775807)"),
    ("expnum a superscript digit", entry(expnum="\u00b2"), INFO_1,
     "info.yaml: src_info[1]: expnum '\u00b2' is not an exposure number (an integer)"),
    ("extension a superscript digit", entry(weight_ext="\u00b2"), INFO_1,
     "se.fits: no extension '\u00b2' (--se_weight"),
    ("SE header EXPNUM beyond 64 bits", se_copy("bigexp.fits", huge_expnum),
     explicit(se_image="bigexp.fits[sci]", se_weight="bigexp.fits[wgt]", se_bmask="bigexp.fits[msk]"),
     "bigexp.fits[sci]: EXPNUM = 100000000000000000000000 is out of range (1..9223372036854775807)"),
    ("path not a string", entry(image_path=5), INFO_1, "info.yaml: src_info[1]: image_path 5 is not a path"),
    ("path missing", entry(weight_path=None), INFO_1, "info.yaml: src_info[1]: weight_path is missing"),
    ("extension a list", entry(bmask_ext=[1, 2]), INFO_1,
     "info.yaml: src_info[1]: bmask_ext a list ([1, 2]) is not an HDU number nor a name"),
    ("extension a boolean", entry(image_ext=True), INFO_1,
     "info.yaml: src_info[1]: image_ext True is not an HDU number nor a name"),
    ("extension negative", top(seg_ext=-1), INFO_1, "info.yaml: the top level: seg_ext -1 is not an HDU number"),
    ("coadd path missing", top(seg_path=None), INFO_1, "info.yaml: the top level: seg_path is missing"),
    ("unset variable", entry(image_path="$NO_SUCH_VARIABLE_11/se.fits"), INFO_1,
     "src_info[1]: image_path '$NO_SUCH_VARIABLE_11/se.fits' uses the environment variable $NO_SUCH_VARIABLE_11"),
    ("band not a string", entry(band=5), INFO_1, "info.yaml: src_info[1]: band 5 is not a string"),
    ("tilename not a string", top(tilename=[1]), INFO_1, "info.yaml: the top level: tilename a list ([1]) is not a"),
    ("the SE image of the entry missing", None, ["--info", "info.yaml", "--se_index", "0"],
     "missing.fits: FITS image for --se_image not found"),
    ("se_index out of range", None, ["--info", "info.yaml", "--se_index", "2"],
     "info.yaml: --se_index 2 is out of range (src_info has 2 entries, 0..1)"),
    ("se_index backwards", None, ["--info", "info.yaml", "--se_index", "1-0"], "the range 1-0 runs backwards"),
    ("se_index not a number", None, ["--info", "info.yaml", "--se_index", "one"], "--se_index 'one': give N"),
    ("src_info empty", top(src_info=[]), ALL, "info.yaml: src_info is empty"),
    # options
    ("unknown bit", None, [*EXPLICIT, "--ignore_bits", "BPM,NOSUCH"], "unknown DES mask bit 'NOSUCH'"),
    ("info and images", None, [*INFO_1, *EXPLICIT[:2]], "give --info with --se_index, and none of"),
    ("se_index without info", None, [*EXPLICIT, "--se_index", "1"], "--se_index needs --info"),
    ("images missing", None, EXPLICIT[:4], "missing --se_bmask, --coadd_weight, --coadd_bmask, --coadd_seg"),
    ("jobs zero", None, [*EXPLICIT, "--jobs", "0"], "0: must be a positive integer"),
    ("jobs and scheduler", None, [*ALL, "--jobs", "2", "--scheduler", "tcp://127.0.0.1:1"],
     "--jobs and --scheduler: give one or the other"),
    # outputs
    ("-o a picture name", None, [*EXPLICIT, "-o", "good.png"], "-o good.png: the output image is FITS"),
    ("--png not a picture", None, [*EXPLICIT, "--png", "good.bmp"], "--png good.bmp: not a picture format"),
    ("-o an input, even with --overwrite", None, [*EXPLICIT, "-o", "se.fits", "--overwrite"],
     "se.fits: refusing to write over the input file"),
    ("-o the segmentation map", None, [*EXPLICIT, "-o", "seg.fits", "--overwrite"],
     "seg.fits: refusing to write over the input file"),
    ("--summary the info file", edit_info(lambda i: None, name="info.ecsv"),
     ["--info", "info.ecsv", "--se_index", "1", "--summary", "info.ecsv", "--overwrite"],
     "info.ecsv: refusing to write over the input file"),
    ("-o the count maps", with_maps, [*EXPLICIT, *MAPS, "-o", "maps.fits", "--overwrite"],
     "maps.fits: refusing to write over the input file"),
    ("-o the epoch table", lambda d: (with_maps(d), shutil.copy(tm.data_path(tm.EPOCHS_FILENAME), d / "epochs.fits")),
     [*EXPLICIT, *MAPS, "--epochs_file", "epochs.fits", "-o", "epochs.fits", "--overwrite"],
     "epochs.fits: refusing to write over the input file"),
    ("--summary not ECSV", None, [*EXPLICIT, "--summary", "summary.txt"],
     "--summary summary.txt: the summary table is ECSV"),
    ("--summary a directory", lambda d: (d / "sums.ecsv").mkdir(), [*EXPLICIT, "--summary", "sums.ecsv"],
     "sums.ecsv: is a directory, not an output file name"),
    ("output name a directory", lambda d: (d / "se_goodbkg.fits").mkdir(), EXPLICIT,
     "se_goodbkg.fits: is a directory, not an output file name"),
    ("-o in no directory", None, [*EXPLICIT, "-o", "nodir/good.fits"], "nodir/good.fits: output directory"),
    ("-o in an unwritable directory", unwritable, [*EXPLICIT, "-o", "/sys/good.fits"],
     "/sys/good.fits: cannot write in the directory /sys"),
    ("-o a FIFO", lambda d: os.mkfifo(d / "fifo.fits"), [*EXPLICIT, "-o", "fifo.fits", "--overwrite"],
     "fifo.fits: exists and is not a regular file"),
    ("output exists", write_bytes("good.fits", b"keep"), [*EXPLICIT, "-o", "good.fits"],
     "good.fits: output exists (use --overwrite"),
    ("-o empty", None, [*EXPLICIT, "-o", ""], "-o '': give a directory"),
    ("--png FILE for many", None, [*ALL, "--png", "one.png"], "--png one.png: names one picture, but there are 2"),
    ("-o FITS for many", None, [*ALL, "-o", "x.fits"], "-o x.fits: with 2 SE images, -o names a directory"),
    ("-o a file for many", write_bytes("afile", b"keep"), [*ALL, "-o", "afile"],
     "-o afile: exists and is not a directory"),
    ("-o without parent for many", None, [*ALL, "-o", "no/such/dir/"], "-o no/such/dir/: its parent directory"),
    ("two images, one output name", edit_info(lambda i: i["src_info"].__setitem__(0, i["src_info"][1])), ALL,
     "D00790000_r_c05_goodbkg.fits: the output of info.yaml src_info[0] and the output of info.yaml src_info[1] "
     "would be the same file"),
]


@pytest.mark.parametrize("setup, args, message", [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2(files, monkeypatch, capsys, setup, args, message):
    monkeypatch.chdir(files)
    if setup is not None:
        setup(files)
    before = listing(files)
    extra = [] if "--counts" in args else ["--no_transient_cut"]
    assert bg.main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(("des_background: error: ", "des_background.py: error: "))
    assert listing(files) == before  # nothing written, nothing changed


def test_expnum_beyond_64_bits_from_python_names_the_image(files):
    masks = tm.TransientMasks(write_count_maps(files / "maps.fits", {"Y6": hot_maps(np.random.default_rng(4))}))
    huge = bg.ImageFiles(*(str(files / f) for f in EXPLICIT[1::2]), expnum=10**23)
    with pytest.raises(tm.BadInputError, match=r"se\.fits\[sci\]: EXPNUM 10{23} outside 1\.\.9223372036854775807$"):
        bg.good_background(huge, transient_masks=masks)


def test_jobs_beyond_the_machine_refused(files, monkeypatch, capsys):
    """--jobs starts at most 4 worker processes per core (at least 4): more is refused before any work."""
    monkeypatch.chdir(files)

    def no_cluster(*args, **kwargs):
        raise AssertionError("a local cluster was started")

    # (without the bound, the run would try to start the workers: never here)
    monkeypatch.setattr(tm, "_parallel_client", no_cluster)
    monkeypatch.setattr(tm, "dask_client", no_cluster)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    before = listing(files)
    for args, jobs, limit in [(ALL, "99999999999999999999", 8), (EXPLICIT, "9", 8)]:
        assert bg.main([*args, "--no_transient_cut", "--jobs", jobs]) == 2
        assert capsys.readouterr().err == (f"des_background.py: error: argument --jobs: {jobs}: at most {limit} "
                                           "local worker processes on this machine (4 per core) (see --help)\n")
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown: at least 4
    assert bg.main([*EXPLICIT, "--no_transient_cut", "--jobs", "5"]) == 2
    assert "--jobs: 5: at most 4 local worker processes" in capsys.readouterr().err
    assert listing(files) == before
    # up to the bound, a run goes ahead (one SE image: in this process)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert bg.main([*EXPLICIT, "--no_transient_cut", "--jobs", "8", "-o", "good.fits", "--quiet"]) == 0
    assert os.path.exists("good.fits")


def test_there_are_enough_bad_inputs():
    assert len(BAD_INPUTS) >= 30


# ---- Bad arguments from Python: a one-line BadInputError naming the argument and its value


def tan_wcs():
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cd = [[-7.3e-5, 0.0], [0.0, 7.3e-5]]
    return wcs


def small_arrays(**changes):
    """Arguments of BackgroundPixels for an 8 x 8 SE image on an 8 x 8 coadd, with ``changes``."""
    ones = np.ones((8, 8), np.float32)
    zeros = np.zeros((8, 8), np.int32)
    return {"se_weight": ones, "se_bmask": zeros, "coadd_weight": ones, "coadd_bmask": zeros, "coadd_seg": zeros,
            **changes}


def info_files(index=1):
    """The ImageFiles of the `files` fixture's info.yaml (entry 1 is the real SE image)."""
    return bg.PizzaInfo("info.yaml").files(index)


# (id, call, what the message must start with); each raised something else before (the audit of
# the public API: TypeError, AttributeError, ValueError, ZeroDivisionError, MemoryError,
# FileNotFoundError, or no error at all).
BAD_ARGUMENTS = [
    ("output_name expnum a str", lambda: bg.output_name(expnum="abc", ccdnum=5, band="r"), "expnum='abc'"),
    ("output_name se_path None", lambda: bg.output_name(se_path=None), "se_path=None"),
    ("ImageFiles None", lambda: bg.ImageFiles(None, None, None, None, None, None), "se_image=None"),
    ("ImageFiles an int", lambda: bg.ImageFiles("a", "b", "c", "d", "e", 5), "coadd_seg=5"),
    ("ImageFiles a triple", lambda: bg.ImageFiles(("a", 1, 2), "b", "c", "d", "e", "f"),
     r"se_image=\('a', 1, 2\)"),
    ("ImageFiles empty path", lambda: bg.ImageFiles("a", "", "c", "d", "e", "f"), "se_weight=''"),
    ("ImageFiles expnum a str", lambda: bg.ImageFiles("a", "b", "c", "d", "e", "f", expnum="x"), "expnum='x'"),
    ("PizzaInfo None", lambda: bg.PizzaInfo(None), "path=None"),
    ("PizzaInfo an int", lambda: bg.PizzaInfo(5), "path=5"),
    ("PizzaInfo.files a str", lambda: bg.PizzaInfo("info.yaml").files("0"), "index='0'"),
    ("PizzaInfo.files a fraction", lambda: bg.PizzaInfo("info.yaml").files(0.5), "index=0.5"),
    ("good_background None", lambda: bg.good_background(None), "files=None"),
    ("good_background a path", lambda: bg.good_background("x.fits"), "files='x.fits'"),
    ("good_background masks a path", lambda: bg.good_background(info_files(), transient_masks="maps.fits"),
     "transient_masks='maps.fits'"),
    ("good_background grid_step 0", lambda: bg.good_background(info_files(), grid_step=0), "grid_step=0"),
    ("good_background grid_step a str", lambda: bg.good_background(info_files(), grid_step="64"),
     "grid_step='64'"),
    ("good_background coadd a str", lambda: bg.good_background(info_files(), coadd="x"), "coadd='x'"),
    ("iter_good_background None", lambda: list(bg.iter_good_background(None)), "images=None"),
    ("iter_good_background a str", lambda: list(bg.iter_good_background("x")), "images='x'"),
    ("iter_good_background a list of str", lambda: list(bg.iter_good_background(["x"])), r"images\[0\]='x'"),
    ("iter_good_background output_dir an int",
     lambda: list(bg.iter_good_background(bg.PizzaInfo("info.yaml").images("1"), output_dir=5)), "output_dir=5"),
    ("summary_table None", lambda: bg.summary_table(None), "results=None"),
    ("summary_table a list of str", lambda: bg.summary_table(["x"]), r"results\[0\]='x'"),
    ("summary_table meta a str", lambda: bg.summary_table([], meta="x"), "meta='x'"),
    ("write_outputs None", lambda: bg.write_outputs(None, "x.fits"), "pixels=None"),
    ("se_to_coadd None", lambda: bg.se_to_coadd(None, None, (10, 10)), "se_wcs=None"),
    ("se_to_coadd huge", lambda: bg.se_to_coadd(tan_wcs(), tan_wcs(), (10**6, 10**6)),
     r"shape=\(1000000, 1000000\): each side must be at most"),
    ("nearest_coadd_pixel None", lambda: bg.nearest_coadd_pixel(None, None, (10, 10), (10, 10)), "se_wcs=None"),
    ("Coadd None", lambda: bg.Coadd(None, None, None), "weight=None"),
    ("BackgroundPixels WCS None", lambda: bg.BackgroundPixels(None, tan_wcs(), **small_arrays()), "se_wcs=None"),
    ("BackgroundPixels weight a str", lambda: bg.BackgroundPixels(tan_wcs(), tan_wcs(), **small_arrays(se_weight="1")),
     "se_weight='1'"),
    ("BackgroundPixels bmask None", lambda: bg.BackgroundPixels(tan_wcs(), tan_wcs(), **small_arrays(se_bmask=None)),
     "se_bmask: must be numbers"),
    ("BackgroundPixels one row",
     lambda: bg.BackgroundPixels(tan_wcs(), tan_wcs(), **small_arrays(se_weight=np.ones((1, 8)),
                                                                      se_bmask=np.zeros((1, 8), int))),
     "se_weight=array of float64 with shape \\(1, 8\\): the SE image must be at least 2 x 2"),
    ("write_example_tile None", lambda: bg.write_example_tile(None), "directory=None"),
    ("write_example_tile se_shape a str", lambda: bg.write_example_tile("d", se_shape="abc"), "se_shape='abc'"),
    ("write_example_tile se_shape 0", lambda: bg.write_example_tile("d", se_shape=(0, 0)), r"se_shape=\(0, 0\)"),
    ("write_example_tile se_shape huge", lambda: bg.write_example_tile("d", se_shape=(10**6, 10**6)),
     r"se_shape=\(1000000, 1000000\): each side must be at most 4096 pixels"),
    ("write_example_tile band a path", lambda: bg.write_example_tile("d", n_images=1, se_shape=(64, 32),
                                                                     band="r/../../x"),
     "band='r/../../x': must be a plain name"),
    ("write_example_tile tilename not ASCII", lambda: bg.write_example_tile("d", n_images=1, se_shape=(64, 32),
                                                                            tilename="D\u00c9S"),
     "tilename='D\u00c9S': must be a plain name"),
    ("write_example_tile no images", lambda: bg.write_example_tile("d", n_images=0), "n_images=0"),
    ("main argv an int", lambda: bg.main(5), "argv=5"),
]


@pytest.mark.parametrize("call, message", [case[1:] for case in BAD_ARGUMENTS], ids=[case[0] for case in BAD_ARGUMENTS])
def test_bad_arguments_are_one_line_bad_input(files, monkeypatch, call, message):
    monkeypatch.chdir(files)
    before = listing(files)
    with pytest.raises(tm.BadInputError, match=f"^{message}") as error:
        call()
    assert "\n" not in str(error.value)
    assert listing(files) == before  # refused before anything was written


def test_arguments_of_other_valid_types_are_taken(files, monkeypatch):
    """numpy integers, whole floats, os.PathLike paths, (path, ext) lists, iterators, '' for no picture."""
    monkeypatch.chdir(files)
    assert bg.output_name(np.int64(232321), np.int16(57), "r", None) == "D00232321_r_c57_goodbkg.fits"
    assert bg.output_name(232321, 57.0, None, files / "se.fits") == "se_goodbkg.fits"
    info = bg.PizzaInfo(files / "info.yaml")
    chosen = info.files(np.int64(1))
    assert info.files(1.0) == chosen and chosen.expnum == EXPNUM_Y6
    same = bg.ImageFiles(*([path, ext] for path, ext in (getattr(chosen, role) for role in bg.ROLES)),
                         expnum=np.int64(EXPNUM_Y6), ccdnum=CCDNUM, band="r", index=1)
    assert same == chosen and type(same.expnum) is int
    assert list(bg.iter_good_background(iter([]))) == []
    assert len(bg.summary_table((), meta={})) == 0
    pixels = bg.good_background(chosen, grid_step=np.int32(64), read_se_image=np.bool_(False), ignore_bits=0)
    assert pixels.shape == SE_SHAPE and pixels.se_image is None
    assert [os.fspath(path) for path in bg.write_outputs(pixels, files / "good.fits", "")] == [str(files / "good.fits")]
    small = bg.BackgroundPixels(tan_wcs(), tan_wcs(), **small_arrays(se_weight=[[1.0] * 8] * 8,
                                                                   transient_mask=np.zeros((8, 8))),
                                coadd_shape=[8.0, 8], coadd_offset=np.array([0, 0]), tolerance=np.inf)
    assert small.good.all() and small.transient_cut
    paths = bg.write_example_tile(files / "tile", n_images=1, se_shape=[64, 32], fpack=False, seed=np.int64(1))
    assert os.path.basename(paths["se"][0]) == "D00791215_r_c57_immasked.fits"


# ---- The README


def readme_commands():
    """The des_background.py commands of the README's good-background section, one string each."""
    with open(os.path.join(os.path.dirname(DATA), os.pardir, "README.md")) as stream:
        readme = stream.read()
    section = readme[readme.index("## Good background pixels"):readme.index("### What it writes")]
    block = section[section.index("```sh"):]
    block = block[: block.index("```", 5)].replace("\\\n", " ")
    return [line.strip() for line in block.splitlines() if line.strip().startswith("./des_background.py")]


def test_readme_examples_work_as_written(tmp_path, monkeypatch, capsys):
    """The README's commands, run in the example tile the README tells how to write."""
    import shlex

    commands = readme_commands()
    assert len(commands) == 4 and any("--jobs" in command for command in commands)
    monkeypatch.chdir(tmp_path)
    bg.write_example_tile(".", n_images=4, se_shape=(256, 128))
    write_count_maps("y6a1_transient_maps.fits.gz", {"Y6": hot_maps(np.random.default_rng(4), ccdnum=57)})
    for command in commands:
        if "--jobs" in command and importlib.util.find_spec("distributed") is None:
            continue
        assert bg.main(shlex.split(command)[1:]) == 0, command
    capsys.readouterr()
    assert sorted(os.listdir("goodbkg")) == sorted([f"D0079121{5 + i}_r_c{57 + i:02d}_goodbkg.fits" for i in range(4)]
                                                   + ["DES2122+0001_r_goodbkg_summary.ecsv"])
    assert sorted(os.listdir("some")) == sorted([f"D0079121{5 + i}_r_c{57 + i:02d}_goodbkg.{e}" for i in (0, 2, 3)
                                                 for e in ("fits", "png")] + ["DES2122+0001_r_goodbkg_summary.ecsv"])
    assert os.path.exists("D00791218_r_c60_goodbkg.fits") and os.path.exists("good.png")
    explicit, from_info = fits.getdata("good.fits"), fits.getdata("goodbkg/D00791215_r_c57_goodbkg.fits")
    assert fits.getheader("good.fits")["BGIGNORE"] == 3072
    # the explicit form ignores SUSPECT and STREAK: it differs from the info run only at bmask pixels
    differ = explicit != from_info
    assert differ.any() and np.isin(from_info[differ], [3, 5]).all()
    assert (explicit == bg.REASONS.index("TRANSIENT")).any()


# ---- Signals


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [[], ["--jobs", "2"]], ids=["one process", "two workers"])
@pytest.mark.parametrize("signum, code, word", [(signal.SIGTERM, 143, "terminated"),
                                                (signal.SIGINT, 130, "interrupted")], ids=["SIGTERM", "SIGINT"])
def test_signal_leaves_no_temporary_file(tmp_path, jobs, signum, code, word):
    """Signalled while the pictures are being drawn, the run exits with one line and leaves no temporary file."""
    if jobs and importlib.util.find_spec("distributed") is None:
        pytest.skip("needs dask.distributed")
    bg.write_example_tile(tmp_path / "tile", n_images=6, se_shape=(1024, 512))
    script = os.path.join(os.path.dirname(DATA), os.pardir, "des_background.py")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    process = subprocess.Popen([sys.executable, script, "--info", "tile/DES2122+0001_r_pizza_info.yaml",
                                "--se_index", "all", "-o", "out/", "--png", "--no_transient_cut", *jobs],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = tmp_path / "out"
    try:
        wait_until(lambda: bool(temporaries(out)), process)  # a picture is being drawn
        process.send_signal(signum)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == code, err
    kept = sorted(out.glob("*")) if out.is_dir() else []  # the SE images finished stay, whole
    said = (f"the outputs of the SE images finished are kept ({len(kept)} files); no partial or temporary "
            "file left" if kept else "no output written")
    assert err.splitlines() == [f"des_background: {word}; {said}"], err
    assert not temporaries(out)
    assert not list(out.glob("*.ecsv"))  # no summary of an interrupted run


def temporaries(directory):
    """The temporary files of atomic_output in ``directory``."""
    return [path for path in directory.glob(".*") if ".tmp" in path.name] if directory.is_dir() else []


def wait_until(condition, process, timeout=120):
    """Poll ``condition`` until it holds; fail if ``process`` ends first or the time runs out."""
    stop = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None and time.monotonic() < stop, process.communicate()
        time.sleep(0.005)
