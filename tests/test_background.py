"""Tests of des_background: the good background pixels of DES single-epoch images.

The WCSs are realistic: tests/data/des_se_tpv.hdr is the TPV WCS of a DECam
CCD image (D00232321, CCD 57) and tests/data/des_coadd_tan.hdr the TAN WCS of a
DES coadd tile (DES2122+0001).  The images are small and synthetic: the SE
image is the lower-left 120 x 240 pixels of the CCD and the coadd a small
TAN image on the same tangent point that covers most, not all, of it.
"""
import hashlib
import logging
import os

import numpy as np
import pytest
import yaml
from astropy.io import fits
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
    assert bg.main([*EXPLICIT, "--no_transient_cut"]) == 0
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


@pytest.mark.parametrize("args, message", [
    (["--info", "info.yaml", "--se_index", "2"], "info.yaml: se_index 2 out of range (src_info has 2 entries"),
    (["--info", "info.yaml", "--se_index", "0"], "missing.fits: file not found (--se_image)"),
    (["--info", "nothere.yaml", "--se_index", "0"], "nothere.yaml: pizza-cutter info file not found"),
    (["--info", "info.yaml"], "give --info with --se_index"),
    ([*EXPLICIT, "--se_index", "1"], "--se_index needs --info"),
    (EXPLICIT[:4], "missing --se_bmask, --coadd_weight, --coadd_bmask, --coadd_seg"),
    ([*EXPLICIT[:5], "se.fits[bad]", *EXPLICIT[6:]], "se.fits: no extension 'bad' (--se_bmask; it has PRIMARY, SCI"),
    ([*EXPLICIT[:9], "se.fits[msk]", *EXPLICIT[10:]], "different shapes: coadd weight 244x108, coadd bmask 120x240"),
    ([*EXPLICIT[:1], "coadd.fits[sci]", *EXPLICIT[2:]], "different shapes: SE image 244x108, SE weight 120x240"),
    ([*EXPLICIT, "--ignore_bits", "BPM,NOSUCH"], "unknown DES mask bit 'NOSUCH'"),
])
def test_bad_input_is_one_line_exit_2(files, monkeypatch, capsys, args, message):
    monkeypatch.chdir(files)
    before = digest(files)
    assert bg.main([*args, "--no_transient_cut"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert digest(files) == before
    assert sorted(os.listdir(files)) == ["coadd.fits", "info.yaml", "se.fits", "seg.fits"]


def test_se_image_off_the_coadd(files, wcs_pair, monkeypatch, capsys):
    monkeypatch.chdir(files)
    far = wcs_pair[1].copy()
    far["CRPIX1"] += 5000  # the same sky, now far off this small coadd
    for key in ("NAXIS", "NAXIS1", "NAXIS2"):
        far.remove(key)
    fits.PrimaryHDU(np.zeros(wcs_pair[4], np.int32), far).writeto("far.fits")
    args = [*EXPLICIT[:6], "--coadd_weight", "far.fits", "--coadd_bmask", "far.fits", "--coadd_seg", "far.fits"]
    assert bg.main([*args, "--no_transient_cut"]) == 0
    capsys.readouterr()
    assert (fits.getdata("se_goodbkg.fits") == bg.REASONS.index("OFF_COADD")).all()


def test_no_usable_wcs(files, monkeypatch, capsys):
    monkeypatch.chdir(files)
    with fits.open("se.fits") as hdul:
        data = hdul["sci"].data
    fits.PrimaryHDU(data).writeto("nowcs.fits")
    assert bg.main(["--se_image", "nowcs.fits", *EXPLICIT[2:], "--no_transient_cut"]) == 2
    assert "nowcs.fits[0]: no usable celestial WCS in the SE image header" in capsys.readouterr().err


def test_existing_output_refused_before_work(files, monkeypatch, capsys):
    monkeypatch.chdir(files)
    (files / "se_goodbkg.png").write_text("keep me")
    assert bg.main([*EXPLICIT, "--no_transient_cut"]) == 2
    assert "se_goodbkg.png: output exists" in capsys.readouterr().err
    assert not (files / "se_goodbkg.fits").exists()
    assert (files / "se_goodbkg.png").read_text() == "keep me"
    assert bg.main([*EXPLICIT, "--no_transient_cut", "-o", "se.fits"]) == 2
    assert "refusing to write over the input file" in capsys.readouterr().err


def test_script_run_reports_bad_input(tmp_path):
    """Run as a script, des_background is __main__: its bad-input errors must still be exit 2."""
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(DATA), os.pardir, "des_background.py")
    done = subprocess.run([sys.executable, script, "--info", "nothere.yaml", "--se_index", "0"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == "des_background: error: nothere.yaml: pizza-cutter info file not found"
