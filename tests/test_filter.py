"""Filtering event tables: every format, exact rows, columns intact, bad input."""
import logging
import os

import astropy.units as u
import numpy as np
import pytest
from astropy.table import MaskedColumn, Table

import transient_masks as tm


def _events(rng, n=3000):
    """Events in Y2E1 (a hot column on CCD 5 at x cell 100), Y6, no epoch and Y1E1 (no map)."""
    expnum = rng.choice([350000, 360000, 780000, 300000, 226400], size=n)
    table = Table(
        {
            "EXPNUM": expnum.astype(np.int32),
            "CCDNUM": rng.integers(1, 63, n).astype(np.int16),
            "XWIN_IMAGE": rng.uniform(0.5, 2048.5, n) * u.pix,
            "YWIN_IMAGE": rng.uniform(0.5, 4096.5, n) * u.pix,
            "MAG_AUTO": rng.normal(21, 1, n).astype(np.float32) * u.mag,
            "FLAGS": rng.integers(0, 4, n).astype(np.uint8),
            "BAND": rng.choice(["g", "r", "i", "z"], size=n),
        },
        meta={"ORIGIN": "test catalog", "SEED": 11},
    )
    hot = rng.random(n) < 0.1  # events on the hot column of CCD 5 in Y2E1
    table["EXPNUM"][hot], table["CCDNUM"][hot] = 350000, 5
    table["XWIN_IMAGE"][hot] = rng.uniform(801, 809, hot.sum())
    table["YWIN_IMAGE"][hot] = rng.uniform(321, 961, hot.sum())
    return table


def _expected_keep(table, masks, x="XWIN_IMAGE", y="YWIN_IMAGE"):
    return ~masks.apply(table["EXPNUM"], table["CCDNUM"], table[x], table[y])


@pytest.mark.parametrize("ext", ["fits", "ecsv", "csv", "hdf5", "parquet", "fits.gz"])
def test_filter_keeps_exactly_the_unmasked_rows_in_order(tmp_path, rng, counts_file, ext):
    if ext == "parquet":
        pytest.importorskip("pyarrow")
        pytest.importorskip("pandas")
    if ext == "hdf5":
        pytest.importorskip("h5py")
    table = _events(rng)
    table["ROW"] = np.arange(len(table))
    path = str(tmp_path / f"events.{ext}")
    options = {"path": "events", "serialize_meta": True} if ext == "hdf5" else {}
    table.write(path, **options)
    out = str(tmp_path / f"clean.{ext}")
    masks = tm.TransientMasks(counts_file)
    counts = tm.filter_file(path, out, masks)
    read_options = {"path": "events"} if ext == "hdf5" else {}
    result = Table.read(out, **read_options)
    table = Table.read(path, **read_options)  # the input as its format holds it
    keep = _expected_keep(table, masks)
    assert 0 < keep.sum() < len(table) - 300  # the hot column and no-epoch events go
    np.testing.assert_array_equal(result["ROW"], np.flatnonzero(keep))
    assert result.colnames == table.colnames
    for name in table.colnames:
        np.testing.assert_array_equal(np.asarray(result[name]), np.asarray(table[name][keep]))
        assert result[name].dtype.newbyteorder("=") == table[name].dtype.newbyteorder("=")
        assert result[name].unit == table[name].unit
        if ext not in ("csv",):  # CSV has no units or metadata
            assert result[name].unit is not None or name not in ("XWIN_IMAGE", "MAG_AUTO")
    if ext != "csv":
        assert result.meta["ORIGIN"] == "test catalog" and result.meta["SEED"] == 11
        assert result.meta["DEMO"] is False or result.meta["DEMO"] == 0
        assert result.meta["TM_VERS"] == tm.__version__ and result.meta["TM_COUNT"] == "maps.fits"
    assert counts.read == len(table) == counts.masked + counts.no_epoch_dropped + counts.bad + counts.written
    assert counts.written == len(result)
    assert counts.no_epoch_dropped == np.isin(table["EXPNUM"], [300000, 226400]).sum()


def test_fits_stream_matches_the_table_path_and_keeps_headers(tmp_path, rng, counts_file):
    table = _events(rng, 5000)
    table["EXPNUM"] = table["EXPNUM"].astype(np.uint32)  # stored with TZERO = 2**31
    path = str(tmp_path / "events.fits")
    table.write(path)
    masks = tm.TransientMasks(counts_file)
    streamed = str(tmp_path / "streamed.fits")
    counts = tm.filter_file(path, streamed, masks, chunk_rows=777)  # blocks that split the rows unevenly
    via_table = str(tmp_path / "via_table.ecsv")
    tm.filter_file(path, via_table, masks)
    a, b, source = Table.read(streamed), Table.read(via_table), Table.read(path)
    assert len(a) == len(b) == counts.written
    for name in table.colnames:
        np.testing.assert_array_equal(a[name], b[name])
        assert a[name].dtype == source[name].dtype and a[name].unit == source[name].unit
    from astropy.io import fits

    with fits.open(streamed) as hdul:
        hdul.verify("exception")
        assert hdul[1].header["TZERO1"] == 2**31 and hdul[1].header["NAXIS2"] == counts.written


def test_keep_no_epoch(tmp_path, rng, counts_file):
    table = _events(rng)
    path = str(tmp_path / "events.fits")
    table.write(path)
    masks = tm.TransientMasks(counts_file, keep_no_epoch=True)
    counts = tm.filter_file(path, str(tmp_path / "out.fits"), masks)
    result = Table.read(str(tmp_path / "out.fits"))
    no_epoch = np.isin(table["EXPNUM"], [300000, 226400])
    assert counts.no_epoch_kept == no_epoch.sum() and counts.no_epoch_dropped == 0
    assert np.isin(result["EXPNUM"], [300000, 226400]).sum() == no_epoch.sum()
    assert counts.read == counts.masked + counts.bad + counts.written


def test_position_column_fallbacks(tmp_path, rng, counts_file, caplog):
    caplog.set_level(logging.INFO, logger="transient_masks")
    table = _events(rng, 500)
    table.rename_columns(["XWIN_IMAGE", "YWIN_IMAGE"], ["X_IMAGE", "Y_IMAGE"])
    path = str(tmp_path / "events.ecsv")
    table.write(path)
    masks = tm.TransientMasks(counts_file)
    tm.filter_file(path, str(tmp_path / "out.ecsv"), masks)
    assert "using X_IMAGE/Y_IMAGE" in caplog.text
    result = Table.read(str(tmp_path / "out.ecsv"))
    assert len(result) == _expected_keep(table, masks, "X_IMAGE", "Y_IMAGE").sum()
    table.rename_columns(["X_IMAGE", "Y_IMAGE"], ["X", "Y"])
    assert tm.resolve_columns(table.colnames) == ("EXPNUM", "CCDNUM", "X", "Y")
    with pytest.raises(tm.BadInputError, match="no column 'XPOS'"):
        tm.resolve_columns(table.colnames, x_col="XPOS")


def test_bad_rows_are_an_error_naming_them_or_dropped(tmp_path, rng, counts_file):
    table = _events(rng, 400)
    table["CCDNUM"][3] = 0
    table["CCDNUM"][10] = 63
    table["XWIN_IMAGE"][20] = np.nan
    table["YWIN_IMAGE"][30] = 4096.5
    table["XWIN_IMAGE"][40] = 0.2
    path = str(tmp_path / "events.fits")
    table.write(path)
    masks = tm.TransientMasks(counts_file)
    out = tmp_path / "out.fits"
    for target in (str(out), str(tmp_path / "out.ecsv")):  # the FITS stream and the table path
        with pytest.raises(tm.BadInputError, match=r"5 bad row\(s\) .* at row\(s\) 3, 10, 20, 30, 40 "):
            tm.filter_file(path, target, masks)
        assert not os.path.exists(target)
    counts = tm.filter_file(path, str(out), masks, drop_bad=True)
    assert counts.bad == 5 and counts.read == counts.masked + counts.no_epoch_dropped + 5 + counts.written
    assert not np.isin(Table.read(str(out))["CCDNUM"], [0, 63]).any()


def test_masked_values_count_as_bad_rows(tmp_path, rng, counts_file):
    table = _events(rng, 100)
    table["XWIN_IMAGE"] = MaskedColumn(np.asarray(table["XWIN_IMAGE"]), mask=np.arange(100) == 7)
    path = str(tmp_path / "events.ecsv")
    table.write(path)
    with pytest.raises(tm.BadInputError, match=r"1 bad row\(s\) .* at row\(s\) 7 "):
        tm.filter_file(path, str(tmp_path / "out.ecsv"), tm.TransientMasks(counts_file))


def test_never_writes_over_the_input_or_an_existing_output(tmp_path, rng, counts_file):
    table = _events(rng, 100)
    path = tmp_path / "events.fits"
    table.write(str(path))
    before = path.read_bytes()
    masks = tm.TransientMasks(counts_file)
    for overwrite in (False, True):
        with pytest.raises(tm.BadInputError, match="refusing to write over the input"):
            tm.filter_file(str(path), str(path), masks, overwrite=overwrite)
    os.link(path, tmp_path / "alias.fits")
    with pytest.raises(tm.BadInputError, match="refusing to write over the input"):
        tm.filter_file(str(path), str(tmp_path / "alias.fits"), masks, overwrite=True)
    existing = tmp_path / "out.fits"
    existing.write_text("keep me")
    with pytest.raises(tm.BadInputError, match="output exists"):
        tm.filter_file(str(path), str(existing), masks)
    assert existing.read_text() == "keep me" and path.read_bytes() == before
    tm.filter_file(str(path), str(existing), masks, overwrite=True)
    assert len(Table.read(str(existing))) < len(table)


def test_unreadable_and_missing_inputs(tmp_path, counts_file):
    masks = tm.TransientMasks(counts_file)
    with pytest.raises(tm.BadInputError, match="nope.fits: event table not found"):
        tm.filter_file(str(tmp_path / "nope.fits"), str(tmp_path / "o.fits"), masks)
    junk = tmp_path / "junk.ecsv"
    junk.write_text("this is not a table\x00\x01")
    with pytest.raises(tm.BadInputError, match="junk.ecsv: cannot read as a table"):
        tm.filter_file(str(junk), str(tmp_path / "o.ecsv"), masks)
    assert sorted(os.listdir(tmp_path)) == ["junk.ecsv", "maps.fits"]


def test_count_maps_of_other_exposures_than_the_epoch_table_are_warned_about(tmp_path, rng, caplog):
    """Maps made with another epoch table (or an HDU named for the wrong epoch) would
    mask events with the counts of other exposures: a warning names both ranges."""
    from astropy.io import fits

    cube = rng.poisson(3.0, size=(62, 256, 256)).astype(np.uint16)
    epochs = tm.read_epochs()
    hdus = [fits.PrimaryHDU()]
    for name, (min_exp, max_exp) in {"Y2E1": (345031, 382973), "Y4E2": (345031, 382973)}.items():
        hdu = fits.ImageHDU(cube, name=name)
        hdu.header.update(EPOCH=name, MIN_EXP=min_exp, MAX_EXP=max_exp)
        hdus.append(hdu)
    fits.HDUList(hdus).writeto(tmp_path / "maps.fits")
    masks = tm.TransientMasks(str(tmp_path / "maps.fits"), epochs=epochs)
    caplog.set_level(logging.WARNING, logger="transient_masks")
    masks.apply(expnum=[350000, 350001], ccdnum=[5, 5], x=[100.0, 100.0], y=[100.0, 100.0])
    assert caplog.text == ""  # Y2E1's map covers the table's Y2E1 exposures
    masks.apply(expnum=[610000, 610001], ccdnum=[5, 5], x=[100.0, 100.0], y=[100.0, 100.0])
    masks.apply(expnum=[610002], ccdnum=[5], x=[100.0], y=[100.0])
    assert caplog.text.count("maps.fits: the count map of epoch Y4E2 covers EXPNUM 345031..382973, "
                             "the epoch table 605796..622099") == 1


def test_write_fits_rows_keeps_unsigned_and_signed_byte_values(tmp_path):
    """Found by an audit: unsigned columns wider than a byte were written without their
    TZERO offset (read back shifted by 2**(bits - 1)), and int8 ones as FITS logicals."""
    block = {"U2": np.array([0, 1, 65535], np.uint16), "U4": np.array([0, 2**31 + 5, 2**32 - 1], np.uint32),
             "U8": np.array([0, 2**63 + 5, 2**64 - 1], np.uint64), "I1": np.array([-128, 0, 127], np.int8),
             "U1": np.array([0, 7, 255], np.uint8)}
    path = str(tmp_path / "rows.fits")
    assert tm.write_fits_rows(path, [block, block]) == 6
    table = Table.read(path)
    for name, values in block.items():
        assert table[name].tolist() == 2 * values.tolist(), name
    assert table["I1"].dtype.kind == "i" and table["I1"].dtype.itemsize == 2


def test_signed_byte_columns_are_filtered_into_fits_as_int16(tmp_path, rng, counts_file):
    table = _events(rng, 200)
    table["FLAG"] = rng.integers(-128, 128, len(table)).astype(np.int8)
    table.write(tmp_path / "events.parquet")
    masks = tm.TransientMasks(counts_file)
    tm.filter_file(str(tmp_path / "events.parquet"), str(tmp_path / "out.fits"), masks)
    kept = Table.read(tmp_path / "out.fits")
    expected = table[~masks.apply(table["EXPNUM"], table["CCDNUM"], table["XWIN_IMAGE"], table["YWIN_IMAGE"])]
    assert kept["FLAG"].dtype.kind == "i" and kept["FLAG"].tolist() == expected["FLAG"].tolist()


def test_files_holding_more_than_one_table_say_that_one_is_read(tmp_path, rng, counts_file, caplog):
    """Found by an audit: the other tables of a file were left out without a word."""
    import gzip

    from astropy.io import fits

    first, second = _events(rng, 200), _events(rng, 300)
    fits.HDUList([fits.PrimaryHDU(), fits.table_to_hdu(first), fits.table_to_hdu(second)]).writeto(
        tmp_path / "two.fits")
    (tmp_path / "two.fits.gz").write_bytes(gzip.compress((tmp_path / "two.fits").read_bytes()))
    first.write(tmp_path / "two.h5", path="first", serialize_meta=True)
    second.write(tmp_path / "two.h5", path="second", append=True, serialize_meta=True)
    first.write(tmp_path / "one.fits")
    masks = tm.TransientMasks(counts_file, keep_no_epoch=True)
    caplog.set_level(logging.WARNING, logger="transient_masks")
    for name in ("two.fits", "two.fits.gz", "two.h5"):
        for output in ("out.fits", "out.ecsv"):
            caplog.clear()
            counts = tm.filter_file(str(tmp_path / name), str(tmp_path / output), masks, overwrite=True)
            assert counts.read == 200 and "only" in caplog.text and name in caplog.text, (name, output)
        caplog.clear()
        assert tm.gather_data(str(tmp_path / name)).n_read == 200
        assert "only" in caplog.text and name in caplog.text, name
    caplog.clear()
    tm.filter_file(str(tmp_path / "one.fits"), str(tmp_path / "out.fits"), masks, overwrite=True)
    tm.gather_data(str(tmp_path / "one.fits"))
    assert caplog.text == ""


def test_qtable_positions_in_pixels_are_taken_and_other_units_refused(rng, counts_file):
    """Found by an audit: a QTable's Quantity positions raised astropy's UnitConversionError."""
    from astropy.table import QTable

    table = QTable(_events(rng, 500))  # XWIN_IMAGE / YWIN_IMAGE in pix become Quantities
    masks = tm.TransientMasks(counts_file)
    kept, counts = tm.filter_table(table, masks)
    assert counts.read == 500 and isinstance(kept, QTable)
    assert len(kept) == len(tm.filter_table(Table(table), masks)[0])
    table["YWIN_IMAGE"] = table["YWIN_IMAGE"].value * u.deg
    with pytest.raises(tm.BadInputError, match="column 'YWIN_IMAGE' is in deg; expected pixels"):
        tm.filter_table(table, masks)
