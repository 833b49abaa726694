"""Tests of gather_data: DES count maps built from transient catalogs."""
import logging
import math
import os
from collections import Counter

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

import transient_masks as tm

EPOCHS = tm.read_epochs()
ROW = {name: row for name, row in zip(EPOCHS["NAME"], EPOCHS)}
# Positions on cell edges and CCD borders (FITS 1-indexed): cell X spans 8X+1 <= x < 8X+9.
X_EDGES = [0.5, 0.75, 0.9999999, 1.0, 1.0000001, 8.999999, 9.0, 9.5, 17.0, 1024.5, 2040.999,
           2041.0, 2048.0, 2048.49, 2048.4999]
Y_EDGES = [0.5, 0.9999999, 1.0, 16.999999, 17.0, 33.0, 2048.5, 4080.999, 4081.0, 4096.0,
           4096.49, 4096.4999]


def random_catalog(rng, n, epochs=("Y1E1", "Y2E1", "Y6"), edges=True, dtype=np.float64):
    """A random catalog over some epochs (and a few expnums in no epoch)."""
    names = rng.choice(list(epochs), n)
    lo = np.array([ROW[e]["MINEXPNUM"] for e in names])
    hi = np.array([ROW[e]["MAXEXPNUM"] for e in names])
    expnum = rng.integers(lo, hi + 1)
    expnum[:5] = [1, 300000, 900000, 345030, 382974]  # between or outside epochs
    ccdnum = rng.integers(1, tm.N_CCD + 1, n)
    x = rng.uniform(0.5, tm.CCD_NX + 0.5, n)
    y = rng.uniform(0.5, tm.CCD_NY + 0.5, n)
    if edges:
        k = n // 3
        x[:k] = rng.choice(X_EDGES, k)
        y[:k] = rng.choice(Y_EDGES, k)
        ccdnum[: n // 10] = rng.choice([1, 31, 62], n // 10)
    x, y = x.astype(dtype), y.astype(dtype)
    x[x >= tm.CCD_NX + 0.5] = 2048.4  # float32 rounding of 2048.4999...
    y[y >= tm.CCD_NY + 0.5] = 4096.4
    return Table({"EXPNUM": expnum.astype(np.int64), "CCDNUM": ccdnum.astype(np.int16),
                  "XWIN_IMAGE": x, "YWIN_IMAGE": y})


def brute_force(catalog):
    """{epoch: Counter of (ccd index, Y, X)} by explicit per-event arithmetic."""
    counts = {}
    for expnum, ccdnum, x, y in zip(*(catalog[c] for c in catalog.colnames[:4])):
        epoch = [str(r["NAME"]) for r in EPOCHS if r["MINEXPNUM"] <= expnum <= r["MAXEXPNUM"]]
        if not epoch or not 1 <= ccdnum <= 62 or not (0.5 <= x < 2048.5 and 0.5 <= y < 4096.5):
            continue
        cell_x = min(max(math.floor((float(x) - 1) / 8), 0), 255)
        cell_y = min(max(math.floor((float(y) - 1) / 16), 0), 255)
        counts.setdefault(epoch[-1], Counter())[(int(ccdnum) - 1, cell_y, cell_x)] += 1
    return counts


def assert_same_as_brute(result, expected):
    assert list(result.counts) == [e for e in EPOCHS["NAME"] if e in expected]
    for epoch, counter in expected.items():
        cube = result.counts[epoch]
        assert cube.dtype == np.uint16 and cube.shape == (62, 256, 256)
        assert int(cube.sum()) == sum(counter.values())
        cells = np.array(list(counter.keys()))
        np.testing.assert_array_equal(cube[tuple(cells.T)], list(counter.values()))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_counts_equal_brute_force_histogram(rng, dtype):
    catalog = random_catalog(rng, 3000, dtype=dtype)
    result = tm.gather_arrays(*(catalog[c] for c in catalog.colnames), chunk_rows=700)
    expected = brute_force(catalog)
    assert_same_as_brute(result, expected)
    assert result.n_no_epoch == 5 and result.n_bad == 0
    assert result.n_binned == 2995 == sum(sum(c.values()) for c in expected.values())


def test_cell_edges_explicitly():
    expnum = np.full(8, 345031)
    ccdnum = np.array([1, 1, 1, 1, 62, 62, 62, 62])
    x = np.array([0.5, 8.9999, 9.0, 2040.9999, 2041.0, 2048.4999, 1.0, 1.0])
    y = np.array([0.5, 1.0, 16.9999, 17.0, 4081.0, 4096.4999, 4080.9999, 33.0])
    cube = tm.gather_arrays(expnum, ccdnum, x, y).counts["Y2E1"]
    expected = {(0, 0, 0): 2, (0, 0, 1): 1, (0, 1, 254): 1, (61, 255, 255): 2, (61, 254, 0): 1,
                (61, 2, 0): 1}
    assert int(cube.sum()) == 8
    for cell, count in expected.items():
        assert cube[cell] == count, cell


def test_epoch_lookup_matches_epoch_index(rng):
    lookup = tm._EpochLookup(EPOCHS["MINEXPNUM"], EPOCHS["MAXEXPNUM"])
    expnum = np.r_[rng.integers(-5, 900000, 20000), 605796, 605988, 605795, 605989, 133757,
                   810381, 810382, 133756, -2**40, 2**40]
    expected = tm.epoch_index(expnum, EPOCHS["MINEXPNUM"], EPOCHS["MAXEXPNUM"])
    for dtype in (np.int64, np.int32):
        values = expnum if dtype == np.int64 else np.clip(expnum, -2**31, 2**31 - 1).astype(dtype)
        np.testing.assert_array_equal(lookup(values), tm.epoch_index(values, EPOCHS["MINEXPNUM"],
                                                                       EPOCHS["MAXEXPNUM"]))
    assert lookup(np.array([605900]))[0] == list(EPOCHS["NAME"]).index("Y4E2")  # overlap
    assert (expected >= 0).any() and (expected < 0).any()


@pytest.mark.parametrize("batch", [tm._ADD_BATCH, 2500])
def test_unsorted_mixed_epochs_equal_sorted(rng, monkeypatch, batch):
    """Also with small batches, so epochs are binned in many partial batches."""
    monkeypatch.setattr(tm, "_ADD_BATCH", batch)
    catalog = random_catalog(rng, 20000, epochs=list(EPOCHS["NAME"]))
    mixed = tm.gather_arrays(*(catalog[c] for c in catalog.colnames), chunk_rows=3000)
    catalog.sort("EXPNUM")
    ordered = tm.gather_arrays(*(catalog[c] for c in catalog.colnames))
    assert list(mixed.counts) == list(ordered.counts) and len(mixed.counts) == 14
    for epoch in mixed.counts:
        np.testing.assert_array_equal(mixed.counts[epoch], ordered.counts[epoch])


def test_bad_rows_counted_not_binned(tmp_path, caplog):
    good = [(345031, 5, 100.0, 200.0)] * 3
    bad = [(345031, 0, 100.0, 200.0), (345031, 63, 100.0, 200.0), (345031, -1, 100.0, 200.0),
           (345031, 5, np.nan, 200.0), (345031, 5, 100.0, np.nan), (345031, 5, 0.4999, 200.0),
           (345031, 5, 2048.5, 200.0), (345031, 5, 100.0, 4096.5), (345031, 5, 100.0, 0.0),
           (345031, 5, np.inf, 200.0)]
    no_epoch = [(100, 5, 100.0, 200.0), (100, 0, 100.0, 200.0)]  # the second is bad
    rows = good + bad + no_epoch
    catalog = Table(rows=rows, names=["EXPNUM", "CCDNUM", "XWIN_IMAGE", "YWIN_IMAGE"])
    path = str(tmp_path / "cat.fits")
    catalog.write(path)
    with caplog.at_level(logging.INFO, logger="transient_masks"):
        result = tm.gather_data(path, str(tmp_path / "maps.fits"))
    assert (result.n_read, result.n_bad, result.n_no_epoch, result.n_binned) == (15, 11, 1, 3)
    assert result.counts["Y2E1"][4, 12, 12] == 3
    assert "11 bad row(s)" in caplog.text
    with fits.open(tmp_path / "maps.fits") as hdul:
        assert hdul[1].header["NBAD"] == 11 and hdul[1].header["NREAD"] == 15


def test_uint16_overflow_warns_and_clips(caplog):
    n = 65535 + 20
    expnum = np.full(n + 3, 770843)
    ccdnum = np.r_[np.full(n, 7), 8, 8, 8]
    x = np.full(n + 3, 50.0)
    y = np.full(n + 3, 60.0)
    with caplog.at_level(logging.WARNING, logger="transient_masks"):
        result = tm.gather_arrays(expnum, ccdnum, x, y, chunk_rows=40000)
    cube = result.counts["Y6"]
    assert cube[6, 3, 6] == 65535 and cube[7, 3, 6] == 3
    assert result.n_clipped == {"Y6": 1}
    assert "Y6: 1 cell(s) on 1 CCD(s) (CCDNUM 7) exceed 65535" in caplog.text


def test_saturation_across_batches(caplog):
    """Counts saturate at 65535 across separately binned batches, and the warning says so."""
    accumulator = tm._CountAccumulator(2)
    for n in (65000, 600):
        accumulator.add(np.ones(n, int), np.full(n, 3), np.full(n, 5.0), np.full(n, 5.0))
    counts, clipped = accumulator.saturated(1)
    assert counts[2 * 65536] == 65535 and np.flatnonzero(clipped).tolist() == [2 * 65536]
    accumulator.add(np.ones(2, int), np.array([4, 3]), np.full(2, 5.0), np.full(2, 5.0))
    with caplog.at_level(logging.WARNING, logger="transient_masks"):
        result = tm._finish_gather(accumulator, EPOCHS[:2])
    cube = result.counts[str(EPOCHS["NAME"][1])]
    assert cube[2, 0, 0] == 65535 and cube[3, 0, 0] == 1 and result.n_binned == 65602
    assert "1 cell(s) on 1 CCD(s) (CCDNUM 3)" in caplog.text


def test_file_round_trip_through_the_core(tmp_path, rng):
    catalog = random_catalog(rng, 5000, epochs=("Y2E1", "Y6"))
    path = str(tmp_path / "cat.fits")
    catalog.write(path)
    output = str(tmp_path / "maps.fits.gz")
    result = tm.gather_data(path, output, demo=True)
    maps = tm.CountMaps(output)
    assert maps.epochs == ["Y2E1", "Y6"] and maps.demo
    for epoch in maps.epochs:
        cube = maps.counts(epoch)
        assert cube.dtype == np.uint16
        np.testing.assert_array_equal(cube, result.counts[epoch])
        info = maps.info(epoch)
        assert (info["min_exp"], info["max_exp"]) == (ROW[epoch]["MINEXPNUM"], ROW[epoch]["MAXEXPNUM"])
        assert info["demo"]
    mask = tm.EpochMask.from_maps(maps, "Y2E1")
    assert mask.counts.shape == (62, 256, 256) and mask.demo
    with fits.open(output) as hdul:
        assert len(hdul) == 3 and hdul[0].data is None
        for hdu in hdul[1:]:
            header = hdu.header
            assert (header["BITPIX"], header["BZERO"], header["BSCALE"]) == (16, 32768, 1)
            assert header["EXTNAME"] == header["EPOCH"] and header["DEMO"] is True
            assert header["NEVENTS"] == int(result.counts[header["EPOCH"]].sum())
        assert hdul[0].header["DEMO"] is True


def test_epochs_without_transients_left_out(tmp_path):
    catalog = Table({"EXPNUM": [345031, 810381, 810381], "CCDNUM": [3, 4, 5],
                     "XWIN_IMAGE": [10.0, 20.0, 30.0], "YWIN_IMAGE": [10.0, 20.0, 30.0]})
    path = str(tmp_path / "cat.ecsv")
    catalog.write(path)
    output = str(tmp_path / "maps.fits")
    tm.gather_data(path, output)
    with fits.open(output) as hdul:
        assert [hdu.name for hdu in hdul[1:]] == ["Y2E1", "Y6"]
        assert "DEMO" not in hdul[1].header
    assert not tm.CountMaps(output).demo


@pytest.mark.parametrize("suffix", [".fits", ".fits.gz", ".parquet", ".csv", ".hdf5"])
def test_chunked_equals_whole(tmp_path, rng, suffix):
    catalog = random_catalog(rng, 4000)
    catalog["XWIN_IMAGE"][7] = np.nan
    catalog["CCDNUM"][8] = 99
    catalog["EXTRA"] = np.arange(len(catalog))
    path = str(tmp_path / f"cat{suffix}")
    catalog.write(path, **({"path": "events"} if suffix == ".hdf5" else {}))
    whole = tm.gather_data(path, chunk_rows=10**7)
    chunked = tm.gather_data(path, chunk_rows=333)
    memory = tm.gather_arrays(*(catalog[c] for c in catalog.colnames[:4]))
    assert whole.n_bad == chunked.n_bad == memory.n_bad == 2
    for result in (chunked, memory):
        assert list(result.counts) == list(whole.counts) == ["Y1E1", "Y2E1", "Y6"]
        for epoch in whole.counts:
            np.testing.assert_array_equal(result.counts[epoch], whole.counts[epoch])


def test_fits_table_with_scaled_columns(tmp_path, rng):
    """An unsigned CCDNUM column (TZERO) and float32 positions stream correctly."""
    catalog = random_catalog(rng, 2000, edges=False, dtype=np.float32)
    catalog["CCDNUM"] = catalog["CCDNUM"].astype(np.uint16)
    catalog["EXPNUM"] = catalog["EXPNUM"].astype(np.int32)
    path = str(tmp_path / "cat.fits")
    catalog.write(path)
    with fits.open(path) as hdul:
        assert hdul[1].header["TZERO2"] == 32768
    streamed = tm.gather_data(path, chunk_rows=128)
    assert_same_as_brute(streamed, brute_force(catalog))


def test_several_catalogs_and_column_names(tmp_path, rng):
    first = random_catalog(rng, 1000)
    second = random_catalog(rng, 1000)
    for table in (first, second):
        table.rename_columns(["EXPNUM", "CCDNUM", "XWIN_IMAGE", "YWIN_IMAGE"],
                             ["expnum", "ccd", "X_IMAGE", "Y_IMAGE"])
    paths = [str(tmp_path / "a.fits"), str(tmp_path / "b.parquet")]
    first.write(paths[0])
    second.write(paths[1])
    result = tm.gather_data(paths, expnum_col="expnum", ccdnum_col="ccd")  # X_IMAGE fallback
    both = Table({c: np.r_[first[c], second[c]] for c in first.colnames})
    assert_same_as_brute(result, brute_force(both))
    with pytest.raises(tm.BadInputError, match=r"a\.fits: no column 'EXPNUM'"):
        tm.gather_data(paths)


def test_bad_inputs_raise_one_line(tmp_path):
    with pytest.raises(tm.BadInputError, match="catalog not found"):
        tm.gather_data(str(tmp_path / "missing.fits"))
    text = tmp_path / "junk.fits"
    text.write_text("not a FITS file\n")
    with pytest.raises(tm.BadInputError, match="junk.fits"):
        tm.gather_data(str(text))
    with pytest.raises(tm.BadInputError, match="chunk_rows"):
        tm.gather_data(str(text), chunk_rows=0)


def test_cli_gather(tmp_path, rng, capsys):
    catalog = random_catalog(rng, 2000, epochs=("Y2E1",))
    path = str(tmp_path / "cat.fits")
    catalog.write(path)
    output = str(tmp_path / "maps.fits.gz")
    assert tm.main(["--gather", path, "-o", output, "--demo", "--chunk_rows", "500"]) == 0
    err = capsys.readouterr().err
    assert "2000 rows read" in err and "maps.fits.gz" in err
    maps = tm.CountMaps(output)
    assert maps.demo and maps.epochs == ["Y2E1"]
    np.testing.assert_array_equal(maps.counts("Y2E1"), tm.gather_arrays(
        *(catalog[c] for c in catalog.colnames)).counts["Y2E1"])
    # The output exists: refused without --overwrite, replaced with it.
    assert tm.main(["--gather", path, "-o", output]) == 2
    assert "exists" in capsys.readouterr().err
    assert tm.main(["--gather", path, "-o", output, "--overwrite"]) == 0
    assert not tm.CountMaps(output).demo


def test_cli_gather_bad_column_exit_2_no_output(tmp_path, rng, capsys):
    catalog = random_catalog(rng, 100)
    path = str(tmp_path / "cat.fits")
    catalog.write(path)
    output = tmp_path / "maps.fits"
    assert tm.main(["--gather", path, "-o", str(output), "--x_col", "XPOS"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "XPOS" in err and "cat.fits" in err
    assert not output.exists()
    assert not [name for name in os.listdir(tmp_path) if name != "cat.fits"]


def test_counts_clip_before_uint32_could_wrap(monkeypatch, rng):
    """With a tiny uint32 limit the counts are clipped early and often: the result
    is still min(count, 65535), and the clipped cells are exactly those past it."""
    monkeypatch.setattr(tm, "_UINT32_MAX", 70000)
    monkeypatch.setattr(tm, "_ADD_BATCH", 3000)
    n_hot, n_warm = 90000, 65535
    ccdnum = np.r_[np.full(n_hot, 7), np.full(n_warm, 8), rng.integers(1, 63, 5000)]
    order = rng.permutation(ccdnum.size)
    x = np.r_[np.full(n_hot + n_warm, 50.0), rng.uniform(0.5, 2048.5, 5000)][order]
    y = np.r_[np.full(n_hot + n_warm, 60.0), rng.uniform(0.5, 4096.5, 5000)][order]
    epoch_idx = np.zeros(ccdnum.size, dtype=np.int64)
    accumulator = tm._CountAccumulator(1)
    for start in range(0, ccdnum.size, 7000):
        stop = start + 7000
        accumulator.add(epoch_idx[start:stop], ccdnum[order][start:stop], x[start:stop], y[start:stop])
    counts, clipped = accumulator.saturated(0)
    flat, good = tm._cell_index(ccdnum[order], x, y)
    assert good.all()
    expected = np.bincount(flat, minlength=62 * 65536)  # the true counts, not clipped
    np.testing.assert_array_equal(counts, np.minimum(expected, 65535))
    np.testing.assert_array_equal(np.flatnonzero(clipped), np.flatnonzero(expected > 65535))


def test_file_groups_follow_bytes_and_order(tmp_path):
    """Consecutive runs of files with about equal bytes; one file a task when tasks suffice."""
    sizes = [10, 10, 10, 10, 100, 1, 1, 1, 50, 10]
    paths = []
    for number, size in enumerate(sizes):
        paths.append(str(tmp_path / f"part.{number}"))
        with open(paths[-1], "wb") as stream:
            stream.write(b"x" * size)
    for n_groups in range(1, 13):
        groups = tm._file_groups(paths, n_groups)
        assert np.concatenate(groups).tolist() == list(range(len(sizes)))  # every file once, in order
        assert 1 <= len(groups) <= min(n_groups, len(sizes))
    assert [g.tolist() for g in tm._file_groups(paths, 2)] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert len(tm._file_groups(paths, 10)) == 10


@pytest.mark.parametrize("epochs", [[0, 1, 2], [0, 1, 256, 299]])  # 8-bit sort keys, and wider ones
def test_events_in_any_epoch_order_are_binned_as_one_by_one(rng, epochs):
    n = 5000
    epoch_idx = rng.choice([-1, *epochs], n)  # -1: in no epoch
    ccdnum = rng.integers(0, 64, n)  # 0 and 63: bad rows
    x, y = rng.uniform(0.5, 2048.5, n), rng.uniform(0.5, 4096.5, n)
    accumulator = tm._CountAccumulator(max(epochs) + 1)
    accumulator.add(epoch_idx, ccdnum, x, y)
    good = (ccdnum >= 1) & (ccdnum <= 62)
    assert (accumulator.n_read, accumulator.n_bad, accumulator.n_no_epoch) == (
        n, np.count_nonzero(~good), np.count_nonzero(good & (epoch_idx < 0)))
    for index in epochs:
        expected = np.zeros((62, 256, 256), dtype=np.int64)
        this = good & (epoch_idx == index)
        np.add.at(expected, (ccdnum[this] - 1, ((y[this] - 1) // 16).clip(0).astype(int),
                             ((x[this] - 1) // 8).clip(0).astype(int)), 1)
        np.testing.assert_array_equal(accumulator.saturated(index)[0].reshape(62, 256, 256), expected)
