"""Epoch table, count-map reading and the masking rule (EpochMask, TransientMasks)."""
import gzip
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from scipy.stats import poisson

import transient_masks as tm
from conftest import poisson_cube, write_count_maps

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ---- Epoch table


def test_shipped_epoch_table_matches_its_script(tmp_path):
    out = tmp_path / "epochs.fits"
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_ops_epochs.py"), "-o", str(out)],
                   check=True, capture_output=True)
    fresh, shipped = Table.read(out), Table.read(os.path.join(ROOT, "ops_epochs.fits"))
    assert fresh.dtype == shipped.dtype
    assert all((fresh[name] == shipped[name]).all() for name in fresh.colnames)
    assert len(shipped) == 14
    assert shipped.dtype["NAME"] == np.dtype("S32") and shipped.dtype["MINNITE"] == np.dtype("S8")
    assert shipped.dtype["MINEXPNUM"].kind == "i" and shipped.dtype["MINEXPNUM"].itemsize == 8
    y2e1 = shipped[shipped["NAME"] == "Y2E1"][0]
    assert (y2e1["MINEXPNUM"], y2e1["MAXEXPNUM"], y2e1["MINNITE"]) == (345031, 382973, "20140807")


def test_epoch_of_expnum_edges_gaps_and_overlap():
    epochs = tm.read_epochs()
    masks_epochs = dict(zip(epochs["NAME"], zip(epochs["MINEXPNUM"], epochs["MAXEXPNUM"])))
    expnum = [133756, 133757, 164457, 164458, 345031, 382973, 605795, 605796, 605988, 605989, 810381, 810382]
    index = tm.epoch_index(expnum, epochs["MINEXPNUM"], epochs["MAXEXPNUM"])
    names = [epochs["NAME"][i] if i >= 0 else "" for i in index]
    # Y4E1.5 (..605988) and Y4E2 (605796..) overlap: the later-starting epoch wins.
    assert names == ["", "SVE1", "SVE1", "", "Y2E1", "Y2E1", "Y4E1.5", "Y4E2", "Y4E2", "Y4E2", "Y6", ""]
    assert masks_epochs["Y4E1.5"][1] >= 605988 >= masks_epochs["Y4E2"][0]


# ---- Count maps


def test_count_maps_read_the_des_format_unchanged(tmp_path, rng):
    cube = poisson_cube(rng, 5.0)
    cube[3, 7, 9] = 65535  # the full uint16 range survives BZERO = 32768
    path = write_count_maps(tmp_path / "maps.fits.gz", {"Y1E1": cube, "Y2E1": cube[::-1]})
    with fits.open(path) as hdul:  # the DES layout: BITPIX 16 with BZERO 32768
        assert hdul[1].header["BITPIX"] == 16 and hdul[1].header["BZERO"] == 32768
    maps = tm.CountMaps(path)
    assert maps.epochs == ["Y1E1", "Y2E1"]
    assert not maps.demo
    assert maps.info("Y2E1") == {"min_exp": 345031, "max_exp": 382973, "demo": False}
    np.testing.assert_array_equal(maps.counts("Y1E1"), cube)
    assert maps.counts("Y1E1").dtype == np.uint16


def test_count_maps_read_only_the_epoch_needed(tmp_path, rng):
    cubes = {name: poisson_cube(rng, 2.0) for name in ("Y1E1", "Y2E1", "Y5E2", "Y6")}
    plain = write_count_maps(tmp_path / "maps.fits", cubes)
    maps = tm.CountMaps(plain)
    assert maps._counts == {}
    np.testing.assert_array_equal(maps.counts("Y1E1"), cubes["Y1E1"])
    assert list(maps._counts) == ["Y1E1"]


@pytest.mark.parametrize("cut", ["gzip", "plain"])
def test_count_maps_cut_short_are_an_error_never_less_data(tmp_path, rng, cut):
    """A count-map file cut short must not be read as a file with fewer epochs."""
    cubes = {name: poisson_cube(rng, 2.0) for name in ("Y1E1", "Y2E1", "Y5E2", "Y6")}
    with open(write_count_maps(tmp_path / "whole.fits", cubes), "rb") as whole:
        raw = whole.read()
    if cut == "gzip":
        compressed = gzip.compress(raw, compresslevel=1)
        data, path = compressed[: len(compressed) * 2 // 3], tmp_path / "maps.fits.gz"
    else:
        data, path = raw[: len(raw) * 2 // 3], tmp_path / "maps.fits"
    path.write_bytes(data)
    with pytest.raises(tm.BadInputError, match="maps.fits(.gz)?: (truncated|not a readable)"):
        maps = tm.CountMaps(str(path))
        for epoch in maps.epochs:
            maps.counts(epoch)


@pytest.mark.parametrize("problem, message", [
    ("no_epochs", "no epoch HDUs"),
    ("shape", "HDU 1 (Y2E1): counts have shape (61, 256, 256)"),
    ("grid", "does not divide"),
    ("dtype", "counts are float32, expected integers"),
    ("no_min_exp", "HDU 1 (Y2E1) lacks the MIN_EXP keyword"),
    ("no_name", "HDU 1 has neither EPOCH nor EXTNAME"),
    ("not_fits", "not a readable FITS file"),
])
def test_malformed_count_maps_name_file_and_hdu(tmp_path, problem, message):
    path = tmp_path / "bad.fits"
    data = np.zeros((62, 256, 256), dtype=np.int16)
    header = fits.Header({"EXTNAME": "Y2E1", "EPOCH": "Y2E1", "MIN_EXP": 345031, "MAX_EXP": 382973})
    if problem == "shape":
        data = data[:61]
    elif problem == "grid":
        data = np.zeros((62, 100, 256), dtype=np.int16)
    elif problem == "dtype":
        data = data.astype(np.float32)
    elif problem == "no_min_exp":
        del header["MIN_EXP"]
    elif problem == "no_name":
        del header["EXTNAME"], header["EPOCH"]
    hdus = [fits.PrimaryHDU()] + ([] if problem == "no_epochs" else [fits.ImageHDU(data, header=header)])
    fits.HDUList(hdus).writeto(path)
    if problem == "not_fits":
        path.write_text("EXPNUM,CCDNUM\n1,2\n")
    with pytest.raises(tm.BadInputError) as error:
        tm.CountMaps(str(path)).counts("Y2E1")
    assert str(path) in str(error.value) and message in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_count_map_file_and_epoch(tmp_path, counts_file):
    with pytest.raises(tm.BadInputError, match="nope.fits: count-map file not found"):
        tm.CountMaps(str(tmp_path / "nope.fits"))
    with pytest.raises(tm.BadInputError, match="no epoch 'Y3' \\(it has Y2E1, Y6\\)"):
        tm.CountMaps(counts_file).counts("Y3")


# ---- The masking rule


def _cube_with_histogram(values_per_ccd, shape=(16, 16)):
    """A cube whose CCD k holds the multiset values_per_ccd[k] (shuffled), others zero."""
    rng = np.random.default_rng(7)
    cube = np.zeros((62,) + shape, dtype=np.int64)
    for ccd, values in values_per_ccd.items():
        cube[ccd] = rng.permutation(np.asarray(values)).reshape(shape)
    return cube


@pytest.mark.parametrize("floor", ["median", "mean"])
@pytest.mark.parametrize("fp_rate", [1e-2, 1e-4, 1e-6])
def test_threshold_follows_the_reference_rule(floor, fp_rate):
    # CCD 1: mode 3, median 4 (floor 8); CCD 2: mode 0 with a bright tail (floor from the mean);
    # CCD 3: mode 10, many cells at 30 (floor 2 x median wins over Poisson).
    ccd1 = [3] * 100 + [4] * 60 + [5] * 50 + [9] * 40 + [50] * 6
    ccd2 = [0] * 150 + [1] * 50 + [2] * 40 + [200] * 16
    ccd3 = [10] * 90 + [30] * 80 + [31] * 80 + [40] * 6
    cube = _cube_with_histogram({0: ccd1, 1: ccd2, 2: ccd3})
    mask = tm.EpochMask(cube, fp_rate=fp_rate, floor=floor)
    for ccd, values in enumerate([ccd1, ccd2, ccd3]):
        values = np.asarray(values)
        mode = np.bincount(values).argmax()
        centre = np.median(values) if floor == "median" else values.mean()
        expected = max(np.ceil(2 * centre), poisson(mode + 1).isf(fp_rate))
        assert mask.mode[ccd] == mode and mask.centre[ccd] == pytest.approx(centre)
        assert mask.threshold[ccd] == expected
        np.testing.assert_array_equal(mask.mask[ccd], cube[ccd] > expected)
    if floor == "median":
        assert mask.threshold[2] == 2 * 30  # the floor, not the Poisson tail, decides here


@pytest.mark.parametrize("fp_rate", [1e-3, 1e-4])
def test_false_positive_rate_of_pure_poisson_ccds_is_at_most_fp_rate(fp_rate):
    rng = np.random.default_rng(42)
    n_masked = n_cells = 0
    for _ in range(3):  # 3 epochs x 61 CCDs x 65536 cells = 12 million cells
        means = rng.uniform(0.3, 40.0, size=62)
        cube = rng.poisson(means[:, None, None], size=(62, 256, 256))
        mask = tm.EpochMask(cube, fp_rate=fp_rate).mask
        clean = np.delete(mask, tm.HALF_MASKED_CCD - 1, axis=0)  # CCD 31's right half is masked by rule
        n_masked += int(clean.sum())
        n_cells += clean.size
    assert n_masked / n_cells <= fp_rate
    assert n_masked > 0  # the test has the statistics to see false positives at all


def test_binning_conserves_counts_and_shapes(rng):
    cube = poisson_cube(rng, 3.0)
    for x_bin, y_bin in [(1, 1), (2, 1), (4, 8), (256, 256)]:
        mask = tm.EpochMask(cube, x_bin=x_bin, y_bin=y_bin)
        assert mask.counts.shape == (62, 256 // y_bin, 256 // x_bin) == mask.mask.shape
        np.testing.assert_array_equal(mask.counts.sum(axis=(1, 2)), cube.sum(axis=(1, 2), dtype=np.int64))
        assert mask.cell_size == (16 * y_bin, 8 * x_bin)
    np.testing.assert_array_equal(tm.rebin_counts(cube, 2, 4)[5, 3, 7], cube[5, 12:16, 14:16].sum())


@pytest.mark.parametrize("options, message", [
    ({"x_bin": 3}, "x_bin=3: must divide the 256-cell grid"),
    ({"y_bin": 0}, "y_bin=0: must be a positive integer"),
    ({"fp_rate": 0.0}, "fp_rate=0.0: must be between 0 and 1"),
    ({"floor": "mode"}, "floor='mode': must be one of median, mean"),
])
def test_bad_options_are_clear_errors(rng, options, message):
    with pytest.raises(tm.BadInputError, match=message.replace("(", r"\(")):
        tm.EpochMask(poisson_cube(rng), **options)


def test_bad_cubes_are_clear_errors():
    with pytest.raises(tm.BadInputError, match="shape"):
        tm.EpochMask(np.zeros((61, 256, 256), dtype=int))
    with pytest.raises(tm.BadInputError, match="non-negative integers"):
        tm.EpochMask(-np.ones((62, 256, 256), dtype=int))
    with pytest.raises(tm.BadInputError, match="non-negative integers"):
        tm.EpochMask(np.ones((62, 256, 256), dtype=float))


def test_ccd31_stats_from_left_half_and_right_half_masked(rng):
    cube = poisson_cube(rng, 4.0)
    cube[30, :, 128:] += 50  # amp A of CCD 31 is wildly high
    mask = tm.EpochMask(cube)
    left = cube[30, :, :128]
    mode = np.bincount(left.ravel()).argmax()
    assert mask.mode[30] == mode
    assert mask.threshold[30] == max(np.ceil(2 * np.median(left)), poisson(mode + 1).isf(1e-4))
    assert mask.mask[30, :, 128:].all()
    assert mask.mask[30, :, :128].mean() < 0.001
    assert mask.stats()["AREA_MASKED"][30] == pytest.approx(0.5, abs=0.001)


def test_dead_ccds_are_masked_entirely_and_left_out_of_the_area(rng):
    cube = poisson_cube(rng, 4.0)  # CCD 61 dead
    cube[1] = 0  # CCD 2 in its dead period
    mask = tm.EpochMask(cube)
    assert not mask.live[[1, 60]].any() and mask.live.sum() == 60
    assert mask.mask[[1, 60]].all()
    assert np.isnan(mask.threshold[[1, 60]]).all()
    live_area = mask.mask[mask.live].mean()
    assert mask.area_fraction == pytest.approx(live_area)
    # CCD 31's right half is 1/2 of one of 60 live CCDs.
    assert 0.5 / 60 <= mask.area_fraction < 0.5 / 60 + 0.001


def test_statistics_table_and_totals(rng):
    cube = poisson_cube(rng, 4.0)
    cube[4, 20:60, 100] += 60  # 40 hot cells on CCD 5
    mask = tm.EpochMask(cube, epoch="Y2E1")
    stats = mask.stats()
    assert list(stats.colnames) == ["CCDNUM", "DETPOS", "LIVE", "MODE", "CENTRE", "THRESHOLD",
                                    "N_TRANSIENTS", "AREA_MASKED", "TRANSIENTS_MASKED"]
    row = stats[4]
    assert (row["CCDNUM"], row["DETPOS"]) == (5, "S26")
    assert row["N_TRANSIENTS"] == cube[4].sum()
    masked = mask.mask[4]
    assert row["AREA_MASKED"] == masked.mean() >= 40 / 65536
    assert row["TRANSIENTS_MASKED"] == pytest.approx(cube[4][masked].sum() / cube[4].sum())
    assert mask.transient_fraction == pytest.approx(mask.counts[mask.mask].sum() / cube.sum())
    assert stats.meta["AREAFRAC"] == mask.area_fraction
    assert tm.DETPOS[1] == "S29" and tm.DETPOS[31] == "S7" and tm.DETPOS[32] == "N1" and tm.DETPOS[62] == "N31"


# ---- Lookups


def _single_cell_mask(ccdnum, y_cell, x_cell, **options):
    """A mask of quiet CCDs with one hot cell."""
    cube = np.full((62, 256, 256), 5, dtype=np.int64)
    cube[:, ::2, ::2] = 4  # mode 5 or 4: no cell near the threshold
    cube[ccdnum - 1, y_cell, x_cell] = 500
    return tm.EpochMask(cube, **options)


def test_apply_at_cell_edges_and_ccd_borders():
    mask = _single_cell_mask(7, 0, 0)
    assert mask.mask[6].sum() == 1
    # Cell (0, 0) spans 1 <= x < 9, 1 <= y < 17, plus the half pixel 0.5..1 at the borders.
    x = [0.5, 0.9999, 1.0, 8.9999, 9.0, 4.0, 4.0, 4.0]
    y = [0.5, 3.0, 3.0, 16.9999, 3.0, 17.0, 16.9999, 4096.4999]
    got = mask.apply(np.full(len(x), 7), x, y)
    assert got.tolist() == [True, True, True, True, False, False, True, False]

    corner = _single_cell_mask(8, 255, 255)
    got = corner.apply([8, 8, 8, 8], [2048.4999, 2041.0, 2040.9999, 2048.0], [4096.4999, 4081.0, 4090.0, 4080.9999])
    assert got.tolist() == [True, True, False, False]


@pytest.mark.parametrize("ccdnum, x, y", [
    (0, 10.0, 10.0), (63, 10.0, 10.0), (5, 0.4999, 10.0), (5, 2048.5, 10.0),
    (5, 10.0, 4096.5), (5, 10.0, 0.0), (5, np.nan, 10.0), (5, 10.0, np.inf),
])
def test_apply_rejects_positions_off_the_ccds(ccdnum, x, y):
    mask = _single_cell_mask(7, 0, 0)
    assert mask.cell_index([ccdnum], [x], [y])[0] == -1
    with pytest.raises(tm.BadInputError, match="1 position\\(s\\) off the CCDs"):
        mask.apply([5, ccdnum], [10.0, x], [10.0, y])


def test_apply_is_vectorised_and_matches_the_cells(rng):
    cube = poisson_cube(rng, 2.0)
    cube[rng.integers(0, 62, 300), rng.integers(0, 256, 300), rng.integers(0, 256, 300)] += 40
    mask = tm.EpochMask(cube, x_bin=2, y_bin=4)
    n = 200_000
    ccdnum = rng.integers(1, 63, n)
    x, y = rng.uniform(0.5, 2048.5, n), rng.uniform(0.5, 4096.5, n)
    expected = mask.mask[ccdnum - 1, np.clip(np.floor((y - 1) / 64), 0, 63).astype(int),
                         np.clip(np.floor((x - 1) / 16), 0, 127).astype(int)]
    np.testing.assert_array_equal(mask.apply(ccdnum, x, y), expected)


@pytest.mark.parametrize("x_bin, y_bin", [(1, 1), (4, 2)])
def test_full_resolution_pixel_masked_exactly_when_its_cell_is(rng, x_bin, y_bin):
    cube = poisson_cube(rng, 3.0)
    cube[11, 40:44, 10:200:7] += 60
    mask = tm.EpochMask(cube, x_bin=x_bin, y_bin=y_bin)
    pixels = mask.pixel_mask(12)
    assert pixels.shape == (4096, 2048) and pixels.dtype == bool
    y, x = np.mgrid[1:4097, 1:2049]  # every pixel centre of the CCD
    np.testing.assert_array_equal(pixels, mask.apply(np.full(x.shape, 12), x, y))
    assert pixels.sum() == mask.mask[11].sum() * mask.cell_size[0] * mask.cell_size[1] > 0
    with pytest.raises(tm.BadInputError, match="ccdnum=63"):
        mask.pixel_mask(63)


# ---- All epochs


def test_transient_masks_load_only_the_epochs_the_events_need(counts_file):
    masks = tm.TransientMasks(counts_file)
    expnum = [350000, 350001, 900000]
    codes = masks.classify(expnum, [5, 5, 5], [805.0, 10.0, 10.0], [500.0, 500.0, 500.0])
    assert codes.tolist() == [tm.MASKED, tm.KEEP, tm.NO_EPOCH]
    assert list(masks.maps._counts) == ["Y2E1"] and list(masks._masks) == ["Y2E1"]
    assert masks.apply(expnum, [5, 5, 5], [805.0, 10.0, 10.0], [500.0] * 3).tolist() == [True, False, True]
    keep = tm.TransientMasks(counts_file, keep_no_epoch=True)
    assert keep.apply(expnum, [5, 5, 5], [805.0, 10.0, 10.0], [500.0] * 3).tolist() == [True, False, False]
    assert masks.epoch_of([133757, 605900, 1]).tolist() == ["SVE1", "Y4E2", ""]


def test_classify_names_an_off_ccd_event_by_its_own_index_and_keeps_the_shape(counts_file):
    masks = tm.TransientMasks(counts_file)
    # Rows 0 and 3 are in no epoch: the off-CCD event is row 4 of the call, not row 2 of Y2E1's events.
    expnum = [900000, 350000, 350001, 900000, 350002]
    with pytest.raises(tm.BadInputError, match=r"1 position\(s\) off the CCDs .*\(first at index 4\)"):
        masks.classify(expnum, 5, [10.0, 10.0, 10.0, 10.0, 3000.0], 10.0)
    expnum = np.array([[350000, 900000, 350001], [350002, 350003, 1]])
    x = np.array([[805.0, 805.0, 10.0], [10.0, 805.0, 10.0]])
    codes = masks.classify(expnum, 5, x, 500.0)
    assert codes.shape == (2, 3)
    assert codes.tolist() == [[tm.MASKED, tm.NO_EPOCH, tm.KEEP], [tm.KEEP, tm.MASKED, tm.NO_EPOCH]]
    assert masks.epoch_index(expnum).dtype == np.intp


def test_events_of_an_epoch_without_a_map_count_as_no_epoch(counts_file, caplog):
    masks = tm.TransientMasks(counts_file)
    codes = masks.classify([226400, 226401], [5, 6], [10.0, 10.0], [10.0, 10.0])  # Y1E1: not in the file
    assert codes.tolist() == [tm.NO_EPOCH, tm.NO_EPOCH]
    assert "no count map for epoch Y1E1" in caplog.text


def test_overlapping_epochs_use_the_later_epochs_mask(tmp_path, rng):
    early, late = poisson_cube(rng, 3.0), poisson_cube(rng, 3.0)
    early[9, 50, 50] += 90
    late[9, 60, 60] += 90
    path = write_count_maps(tmp_path / "maps.fits", {"Y4E1.5": early, "Y4E2": late})
    masks = tm.TransientMasks(path)
    x, y = [8 * 50 + 4.0, 8 * 60 + 4.0], [16 * 50 + 8.0, 16 * 60 + 8.0]
    # 605900 is in both expnum ranges: Y4E2 (the later) decides.
    assert masks.apply([605900, 605900], [10, 10], x, y).tolist() == [False, True]
    assert masks.apply([600000, 600000], [10, 10], x, y).tolist() == [True, False]


def test_an_hdu_whose_epoch_and_extname_disagree_is_warned_about(tmp_path, rng, caplog):
    from astropy.io import fits

    hdu = fits.ImageHDU(poisson_cube(rng, 2.0).astype(np.uint16), name="Y6")
    hdu.header.update(EPOCH="Y2E1", MIN_EXP=345031, MAX_EXP=382973)
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp_path / "maps.fits")
    caplog.set_level(logging.WARNING, logger="transient_masks")
    assert tm.CountMaps(str(tmp_path / "maps.fits")).epochs == ["Y2E1"]
    assert "HDU 1: EPOCH = 'Y2E1' but EXTNAME = 'Y6'; the HDU is taken as epoch Y2E1" in caplog.text
