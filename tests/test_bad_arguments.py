"""Bad arguments to the public functions of transient_masks: a one-line BadInputError naming them.

Every name of ``transient_masks.__all__`` that takes arguments is exercised with
wrong types, shapes, lengths and values; none may let an IndexError, TypeError,
ZeroDivisionError, OverflowError or MemoryError escape.
"""
import numpy as np
import pytest
from astropy.table import Table

import transient_masks as tm


@pytest.fixture(scope="module")
def mask():
    cube = np.full((62, 256, 256), 5, dtype=np.int64)
    cube[4, 10, 100] = 500
    return tm.EpochMask(cube, epoch="Y2E1")


@pytest.fixture(scope="module")
def masks():
    return tm.TransientMasks(tm.data_path(tm.DEMO_COUNTS_FILENAME))


def raises(match, function, *args, **kwargs):
    """Call and check that a one-line BadInputError matching ``match`` comes out."""
    with pytest.raises(tm.BadInputError, match=match) as error:
        function(*args, **kwargs)
    assert "\n" not in str(error.value)
    return str(error.value)


# ---- Masking options, shared by EpochMask, TransientMasks and the plots


@pytest.mark.parametrize("fp_rate", [np.nan, np.inf, -np.inf, "1e-4", None, [1e-4], 1e-17, 1.5, True])
def test_fp_rate_must_be_a_probability(fp_rate):
    raises("fp_rate=", tm.EpochMask, np.ones((62, 4, 4), int), fp_rate=fp_rate)


@pytest.mark.parametrize("value", [2.5, "2", np.nan, np.inf, None, 0, -2, True, [2]])
def test_binning_must_be_a_positive_integer(value):
    raises("x_bin=.*must be a positive integer", tm.EpochMask, np.ones((62, 4, 4), int), x_bin=value)
    raises("y_bin=.*must be a positive integer", tm.rebin_counts, np.ones((62, 4, 4), int), 1, value)


def test_whole_float_binning_still_works():
    assert tm.EpochMask(np.ones((62, 4, 4), int), x_bin=2.0).counts.shape == (62, 4, 2)


@pytest.mark.parametrize("floor", ["mode", ["median"], None, 1])
def test_floor_must_be_a_known_name(floor):
    raises("floor=", tm.EpochMask, np.ones((62, 4, 4), int), floor=floor)


# ---- Count cubes


@pytest.mark.parametrize("counts, match", [
    (np.zeros((62, 0, 0), int), "shape"),  # a cell grid of size 0 (was ZeroDivisionError)
    (np.zeros((62, 4, 0), int), "shape"),
    (np.zeros((0, 4, 4), int), "shape"),
    (np.zeros((62, 4), int), "shape"),
    (np.zeros((62, 3, 4), int), "does not divide"),
    ([[[1, 2], [3]]] * 62, "not an array of integers"),  # ragged
    (np.full((62, 4, 4), "1"), "non-negative integers"),
    (np.ones((62, 4, 4), dtype=bool), "non-negative integers"),
    (np.full((62, 2, 2), 2**61), "fewer than 2\\*\\*52"),  # was a terabyte bincount
    ("counts", "shape"),
    (None, "shape"),
])
def test_bad_count_cubes(counts, match):
    raises(match, tm.EpochMask, counts)


@pytest.mark.parametrize("counts, match", [
    (np.zeros((62, 0, 4), int), "shape"), (np.zeros((62, 4)), "numbers"), (np.ones((62, 4, 4)), "numbers"),
    (np.full((62, 4, 4), "a"), "numbers"), (None, "numbers"),
])
def test_rebin_counts_refuses_what_it_cannot_sum(counts, match):
    raises(match, tm.rebin_counts, counts, 2, 2)


def test_huge_counts_are_masked_without_a_huge_allocation():
    cube = np.full((62, 4, 4), 2**40, dtype=np.int64)
    cube[5, 0, 0] = 2**42
    mask = tm.EpochMask(cube)
    assert mask.mode[5] == 2**40 and mask.mask[5, 0, 0] and mask.mask[5].sum() == 1


@pytest.mark.parametrize("keyword, value", [
    ("epoch", 5), ("min_exp", "345031"), ("max_exp", 1.5), ("source", 3), ("min_exp", np.nan),
])
def test_epoch_mask_provenance_arguments(keyword, value):
    raises(f"{keyword}=", tm.EpochMask, np.ones((62, 4, 4), int), **{keyword: value})


# ---- Lookups


@pytest.mark.parametrize("ccdnum", [5.5, "5", 0, 63, np.nan, None, [5], True, 1e30])
def test_pixel_mask_needs_a_ccd_number(mask, ccdnum):
    raises("ccdnum=", mask.pixel_mask, ccdnum)


def test_pixel_mask_takes_numpy_and_whole_float_ccd_numbers(mask):
    assert mask.pixel_mask(np.int16(5)).sum() == mask.pixel_mask(5.0).sum() == 8 * 16


@pytest.mark.parametrize("ccdnum, x, y, match", [
    ([5, 5], [10.0], [10.0], "different shapes"),
    ([5], [10.0, 11.0], [10.0, 10.0], "different shapes"),
    ([[5, 5]], [10.0, 11.0], [10.0, 10.0], "different shapes"),
    (["5"], [10.0], [10.0], "ccdnum: must be numbers"),
    ([5], ["10.0"], [10.0], "x: must be numbers"),
    ([5], [10.0], [b"1"], "y: must be numbers"),
    ([5], [10.0 + 1j], [10.0], "x: must be numbers"),
    ([5], [None], [10.0], "x: must be numbers"),
    ([5], [[1.0], [2.0, 3.0]], [10.0], "x: not an array of numbers"),
    ("5", 10.0, 10.0, "ccdnum=.*not a string"),
    ([5], np.ma.masked_array([10.0], mask=[True]), [10.0], "x: has masked"),
])
def test_lookups_refuse_arrays_that_are_not_numbers_of_one_shape(mask, ccdnum, x, y, match):
    raises(match, mask.cell_index, ccdnum, x, y)
    raises(match, mask.apply, ccdnum, x, y)


def test_lookups_broadcast_scalars_and_treat_fractional_ccdnum_as_off(mask):
    assert mask.apply(5, [805.0, 10.0], 170.0).tolist() == [True, False]
    assert mask.cell_index([5.0, 5.5, np.nan, 1e30], 805.0, 170.0).tolist()[1:] == [-1, -1, -1]
    raises("1 position", mask.apply, [5.5], [805.0], [170.0])
    assert mask.apply([], [], []).shape == (0,)
    assert mask.apply(np.array([5], np.uint64), np.float32([805.0]), np.int16([170])).tolist() == [True]


@pytest.mark.parametrize("value", [0, 32768, 2.5, "SUSPECT", np.nan, np.inf, None, 1e300])
def test_write_masks_masked_value(mask, tmp_path, value):
    raises("masked_value=", mask.write_masks, str(tmp_path / "m.fits.fz"), masked_value=value)
    assert not list(tmp_path.iterdir())


def test_write_masks_path(mask):
    raises("path=", mask.write_masks, 5)
    raises("path=", mask.write_masks, "")


def test_from_maps_arguments(masks):
    raises("maps=", tm.EpochMask.from_maps, "demo.fits", "Y2E1")
    raises("epoch=", tm.EpochMask.from_maps, masks.maps, 5)
    raises("epoch=", tm.EpochMask.from_maps, masks.maps, ["Y2E1"])
    raises("epoch=", masks.maps.counts, None)
    assert ["Y2E1"] not in masks.maps


# ---- Thresholds


@pytest.mark.parametrize("mode, centre, match", [
    ([np.nan], [1.0], "mode"), ([-1.0], [1.0], "mode"), ([2.0**60], [1.0], "mode"), (["3"], [1.0], "mode"),
    ([3.0], [np.inf], "centre"), ([1.0, 2.0], [1.0, 2.0, 3.0], "do not broadcast"), ([3.0], "3", "centre"),
])
def test_poisson_threshold_arguments(mode, centre, match):
    raises(match, tm.poisson_threshold, mode, centre)


def test_poisson_threshold_floor_factor():
    raises("floor_factor=", tm.poisson_threshold, 3, 3.0, 1e-4, "2")
    raises("floor_factor=", tm.poisson_threshold, 3, 3.0, 1e-4, np.nan)


# ---- Epochs


@pytest.mark.parametrize("expnum, minexp, maxexp, match", [
    ([1], [], [], "non-zero length"),  # was an IndexError
    ([1], [10, 20], [18], "same non-zero length"),
    ([1], [[10]], [[18]], "1-d"),
    ([1], [20, 10], [25, 18], "sorted"),
    (["345031"], [10], [18], "expnum: must be numbers"),
    ([1.5], [10], [18], "expnum: 1 value\\(s\\) are not whole numbers"),
    ([np.nan], [10], [18], "not whole numbers"),
    ([1], ["10"], [18], "minexp: must be numbers"),
    ([1], [10.5], [18], "minexp"),
    ([None], [10], [18], "expnum"),
])
def test_epoch_index_arguments(expnum, minexp, maxexp, match):
    raises(match, tm.epoch_index, expnum, minexp, maxexp)


def test_epoch_index_takes_unsigned_and_whole_float_expnums():
    minexp, maxexp = [10, 20], [18, 32]
    expected = [0, -1, 1, -1]
    assert tm.epoch_index(np.array([12, 19, 20, 2**64 - 1], np.uint64), minexp, maxexp).tolist() == expected
    assert tm.epoch_index([12.0, 19.0, 20.0], minexp, maxexp).tolist() == expected[:3]
    raises("1 value\\(s\\) are not whole numbers in the int64 range", tm.epoch_index, [1e30], minexp, maxexp)
    assert tm.epoch_index(np.array([], int), minexp, maxexp).shape == (0,)


@pytest.mark.parametrize("table, match", [
    (Table({"NAME": np.array([], str), "MINEXPNUM": np.array([], int), "MAXEXPNUM": np.array([], int)}),
     "no rows"),
    (Table({"NAME": ["A"], "MINEXPNUM": ["10"], "MAXEXPNUM": [18]}), "MINEXPNUM: must be numbers"),
    (Table({"NAME": ["A"], "MINEXPNUM": [10.5], "MAXEXPNUM": [18]}), "not whole numbers"),
    (Table({"NAME": ["A"], "MINEXPNUM": [[10, 11]], "MAXEXPNUM": [18]}), "holds arrays"),
    (Table({"NAME": ["A"], "MAXEXPNUM": [18]}), "lacks column"),
])
def test_epoch_tables_given_as_tables(table, match):
    raises(match, tm.read_epochs, table)
    raises(match, tm.TransientMasks, tm.data_path(tm.DEMO_COUNTS_FILENAME), epochs=table)
    raises(match, tm.gather_arrays, [12], [5], [1.0], [1.0], epochs=table)


@pytest.mark.parametrize("path", [5, b"ops_epochs.fits", ["ops_epochs.fits"]])
def test_epoch_table_path_type(path):
    raises("path=", tm.read_epochs, path)


# ---- All epochs


@pytest.mark.parametrize("args, match", [
    (([350000, 350001], [5], [10.0], [10.0]), "different shapes"),
    (([350000], [5, 5], [10.0, 10.0], [10.0, 10.0]), "different shapes"),
    ((["350000"], [5], [10.0], [10.0]), "expnum: must be numbers"),
    (([350000], ["5"], [10.0], [10.0]), "ccdnum: must be numbers"),
    (([350000], [5], ["a"], [10.0]), "x: must be numbers"),
    (([350000.5], [5], [10.0], [10.0]), "not whole numbers"),
])
def test_classify_arguments(masks, args, match):
    raises(match, masks.classify, *args)
    raises(match, masks.apply, *args)


def test_classify_broadcasts_scalars(masks):
    assert masks.classify(350000, 5, [10.0, 11.0], 10.0).tolist() == [tm.KEEP, tm.KEEP]
    assert masks.classify([], [], [], []).shape == (0,)


@pytest.mark.parametrize("keywords, match", [
    ({"counts": 5}, "counts="), ({"epochs": 5}, "epochs="), ({"keep_no_epoch": "yes"}, "keep_no_epoch="),
    ({"fp_rate": "x"}, "fp_rate="), ({"x_bin": 0}, "x_bin="),
])
def test_transient_masks_arguments(keywords, match):
    raises(match, tm.TransientMasks, **keywords)


def test_mask_for_needs_an_epoch_name(masks):
    raises("epoch=", masks.mask_for, 5)
    raises("no epoch 'Y1E1'", masks.mask_for, "Y1E1")


# ---- Filtering


def _events(**columns):
    base = {"EXPNUM": [350000, 350001], "CCDNUM": [5, 6], "XWIN_IMAGE": [10.0, 20.0], "YWIN_IMAGE": [5.0, 6.0]}
    base.update(columns)
    return Table(base)


@pytest.mark.parametrize("table, match", [
    (_events(CCDNUM=["5", "S7"]), "column 'CCDNUM'"),
    (_events(XWIN_IMAGE=["1.0", "2.0"]), "column 'XWIN_IMAGE'"),
    (_events(EXPNUM=[[1, 2], [3, 4]]), "column 'EXPNUM'"),
    (_events(CCDNUM=[True, False]), "column 'CCDNUM'"),
    ({"EXPNUM": [1]}, "table=.*must be an astropy Table"),
    (np.zeros(3), "table="),
])
def test_filter_table_arguments(masks, table, match):
    raises(match, tm.filter_table, table, masks)


def test_filter_table_needs_masks():
    raises("masks=", tm.filter_table, _events(), "maps.fits")


@pytest.mark.parametrize("colnames, keywords, match", [
    (5, {}, "colnames="), ("EXPNUM", {}, "colnames="), (["EXPNUM"], {"x_col": 5}, "x_col="),
])
def test_resolve_columns_arguments(colnames, keywords, match):
    raises(match, tm.resolve_columns, colnames, **keywords)


def test_filter_counts_add_arguments():
    counts = tm.FilterCounts()
    raises("different shapes", counts.add, np.zeros(3, np.uint8), np.ones(2, bool))
    raises("kept: must be numbers", counts.add, np.zeros(2, np.uint8), np.ones(2, int))
    raises("codes: must be numbers", counts.add, np.zeros(2), np.ones(2, bool))
    raises("row_offset=", counts.add, np.zeros(2, np.uint8), np.ones(2, bool), -1)
    assert counts.read == 0


@pytest.mark.parametrize("keywords, match", [
    ({"chunk_rows": 0}, "chunk_rows=0"), ({"chunk_rows": -5}, "chunk_rows=-5"),
    ({"chunk_rows": 2.5}, "chunk_rows=2.5"), ({"chunk_rows": "10"}, "chunk_rows="),
])
def test_filter_file_arguments(masks, tmp_path, keywords, match):
    source = tmp_path / "events.fits"
    _events().write(source)
    raises(match, tm.filter_file, str(source), str(tmp_path / "out.fits"), masks, **keywords)
    raises("masks=", tm.filter_file, str(source), str(tmp_path / "out.fits"), None)
    raises("input_path=", tm.filter_file, 5, str(tmp_path / "out.fits"), masks)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.fits"]


# ---- Gathering


@pytest.mark.parametrize("chunk_rows", [0, -1, 2.5, "1000", None, np.nan])
def test_gather_chunk_rows_must_be_positive(chunk_rows, tmp_path):
    # chunk_rows=0 silently dropped every event of gather_arrays
    raises("chunk_rows=", tm.gather_arrays, [345031], [5], [100.0], [200.0], chunk_rows=chunk_rows)
    raises("chunk_rows=", tm.gather_data, str(tmp_path / "none.fits"), chunk_rows=chunk_rows)


@pytest.mark.parametrize("args, match", [
    (([345031, 345032], [5], [100.0], [200.0]), "different shapes"),
    (([345031], [5], [100.0, 1.0], [200.0, 1.0]), "different shapes"),
    ((["345031"], [5], [100.0], [200.0]), "expnum: must be numbers"),
    (([345031], ["5"], [100.0], [200.0]), "ccdnum: must be numbers"),
    (([345031], [5], [b"1"], [200.0]), "x: must be numbers"),
    (([345031], [5], [100.0], None), "y: must be numbers"),
])
def test_gather_arrays_arguments(args, match):
    raises(match, tm.gather_arrays, *args)


def test_gather_arrays_takes_scalars_2d_and_counts_fractional_ccdnum_bad():
    result = tm.gather_arrays(345031, 5, 100.0, 200.0)
    assert result.n_binned == 1 and int(result.counts["Y2E1"][4, 12, 12]) == 1
    result = tm.gather_arrays([[345031, 345031]], [[5, 5]], [[100.0, 1.0]], [[200.0, 1.0]], chunk_rows=1)
    assert result.n_binned == 2
    result = tm.gather_arrays([345031, 345031], [5.5, 5.0], [100.0, 100.0], [200.0, 200.0])
    assert (result.n_bad, result.n_binned) == (1, 1)
    # as for event tables: a fractional EXPNUM or a masked entry makes a bad row
    result = tm.gather_arrays([345031.5, 345031.0, 345031], [5, 5, 5], [100.0, 100.0, 100.0],
                              np.ma.masked_array([200.0, 200.0, 200.0], mask=[False, False, True]))
    assert (result.n_read, result.n_bad, result.n_binned) == (3, 2, 1)


@pytest.mark.parametrize("args, match", [
    (([0, 1], [5], [1.0], [1.0], 2), "different shapes"),
    (([0], [5], [1.0], [1.0], 0), "epoch_idx: 0 is not below n_epochs=0"),  # was an IndexError
    (([3], [5], [1.0], [1.0], 2), "epoch_idx: 3 is not below n_epochs=2"),
    (([0.5], [5], [1.0], [1.0], 2), "epoch_idx: 1 value"),
    ((["0"], [5], [1.0], [1.0], 2), "epoch_idx: must be numbers"),
    (([0], [5], [1.0], [1.0], -1), "n_epochs=-1"),
    (([0], [5], [1.0], [1.0], 2.5), "n_epochs=2.5"),
    (([0], [5], [1.0], [1.0], "2"), "n_epochs="),
    (([0], [5], [1.0], [1.0], 10**12), "n_epochs="),  # a 32 PB array: no MemoryError
])
def test_bin_events_arguments(args, match):
    raises(match, tm.bin_events, *args)


def test_bin_events_with_no_epochs_and_no_events():
    assert tm.bin_events([], [], [], [], 0).shape == (0, 62, 256, 256)
    assert tm.bin_events([-1], [5], [1.0], [1.0], 1).sum() == 0


@pytest.mark.parametrize("catalogs, match", [(5, "catalogs="), ([], "no catalog"), ([None], "catalogs=")])
def test_gather_data_catalogs(catalogs, match):
    raises(match, tm.gather_data, catalogs)


def test_write_count_maps_arguments(tmp_path):
    good = tm.gather_arrays([345031], [5], [100.0], [200.0])
    out = str(tmp_path / "maps.fits")
    raises("result=", tm.write_count_maps, out, {"Y2E1": np.zeros((62, 256, 256))})
    raises("path=", tm.write_count_maps, None, good)
    for counts, match in [(np.zeros((62, 4, 4), np.uint16), "shape"), (np.full((62, 256, 256), -1), "0..65535"),
                          (np.full((62, 256, 256), 70000), "0..65535"), (np.zeros((62, 256, 256)), "numbers")]:
        bad = tm.gather_arrays([345031], [5], [100.0], [200.0])
        bad.counts["Y2E1"] = counts
        raises(match, tm.write_count_maps, out, bad)
    bad = tm.gather_arrays([345031], [5], [100.0], [200.0])
    del bad.min_exp["Y2E1"]
    raises("MIN_EXP", tm.write_count_maps, out, bad)
    assert not list(tmp_path.iterdir())
    tm.write_count_maps(out, good, inputs="catalog.fits")  # one input path, not a list of characters
    assert tm.CountMaps(out).epochs == ["Y2E1"]


@pytest.mark.parametrize("blocks, match", [
    (5, "blocks"), ({"A": [1]}, "blocks"), ([{}], "block="), ([[1, 2]], "block="),
    ([{"A": [1, 2], "B": [1]}], "different shapes"), ([{"A": [[1], [2]]}], "1-d"),
    ([{"A": [True]}], "must be numbers"), ([{"A": ["\u00e9"]}], "ASCII"), ([{5: [1]}], "column name"),
    ([{"A": [1]}, {"A": [1.5]}], "same columns"), ([], "nothing to write"),
])
def test_write_fits_rows_arguments(tmp_path, blocks, match):
    raises(match, tm.write_fits_rows, str(tmp_path / "rows.fits"), blocks)
    assert not list(tmp_path.iterdir())


def test_write_fits_rows_writes_text_columns_as_ascii(tmp_path):
    path = str(tmp_path / "rows.fits")
    assert tm.write_fits_rows(path, [{"A": np.arange(2), "B": np.array(["x", "yy"])}] * 2) == 4
    table = Table.read(path)
    assert table["A"].tolist() == [0, 1, 0, 1] and table["B"].tolist() == ["x", "yy", "x", "yy"]


# ---- Files, plots, parallel runs


@pytest.mark.parametrize("function, args, match", [
    (tm.data_path, (5,), "filename="), (tm.data_path, ("../setup.py",), "filename="),
    (tm.check_output, (5,), "path="), (tm.check_output, ("",), "path=|empty output file name"),
    (tm.check_output, ("out.fits", False, [5]), "inputs="),
    (tm.find_counts_file, (5,), "path="), (tm.CountMaps, (5,), "path="),
    (tm.read_ccd_layout, (5,), "path="),
])
def test_path_arguments(function, args, match):
    raises(match, function, *args)


def test_input_and_output_list_checks():
    raises("event table=", tm.check_input, 5, "event table")
    raises("what=", tm.check_input, "x.fits", 5)
    raises("paths=", tm.check_outputs, "out.fits")
    raises("paths=", tm.check_outputs, 5)
    raises("path=", tm.table_format_of, None)
    raises("table_format=", tm.table_format_of, "x.fits", 5)


def test_atomic_output_checks_its_path():
    with pytest.raises(tm.BadInputError, match="path="):
        with tm.atomic_output(None):
            pass


def test_plot_arguments(mask, masks, tmp_path):
    raises("epoch_mask=", tm.plot_ccd, "Y2E1", 5)
    raises("ccdnum=", tm.plot_ccd, mask, 5.5)
    raises("ccdnum=", tm.plot_ccd, mask, "5")
    raises("ccdnum=", tm.plot_ccd, mask, 0)
    pdf = str(tmp_path / "p.pdf")
    for ccdnums, match in [(5, "ccdnums="), ("5", "ccdnums="), (["a"], "ccdnums="), ([5.5], "ccdnums="),
                           ([], "ccdnums="), ([63], "ccdnums=")]:
        raises(match, tm.plot_epoch, mask, pdf, ccdnums=ccdnums)
    raises("pdf_file=", tm.plot_epoch, mask, None)
    raises("maps=", tm.plot_epoch, "Y2E1", pdf, maps="demo.fits")
    raises("fp_rate=", tm.plot_epoch, "Y2E1", pdf, maps=masks.maps, fp_rate="x")
    raises("epoch_mask=", tm.plot_epoch, 5, pdf)
    for keywords, match in [({"vmax": 0}, "vmax="), ({"vmax": np.nan}, "vmax="), ({"dpi": 0}, "dpi="),
                            ({"dpi": "high"}, "dpi="), ({"path": 5}, "path=")]:
        raises(match, tm.plot_focal_plane, mask, **keywords)
    raises("epoch_mask=", tm.plot_focal_plane, None)
    raises("maps=", tm.plot_survey_summary, "demo.fits")
    for keywords, match in [({"vmax_percent": -1}, "vmax_percent="), ({"dpi": np.inf}, "dpi="),
                            ({"x_bin": 3.5}, "x_bin="), ({"floor": "max"}, "floor=")]:
        raises(match, tm.plot_survey_summary, masks.maps, **keywords)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("keywords, match", [({"jobs": -1}, "jobs="), ({"jobs": 1.5}, "jobs="),
                                             ({"jobs": "2"}, "jobs="), ({"scheduler": 8786}, "scheduler=")])
def test_dask_client_arguments(keywords, match):
    with pytest.raises(tm.BadInputError, match=match):
        with tm.dask_client(**keywords):
            pass


# ---- The multiscale method


def _search(**changes):
    """Valid arguments of a detector's detect (a 32 x 32 cell grid), with some replaced."""
    counts = np.full((62, 32, 32), 3, dtype=np.int64)
    arguments = {"counts": counts, "background": np.full(counts.shape, 3.0),
                 "excluded": np.zeros(counts.shape, bool), "tail": tm.PoissonTail(1e-6),
                 "live": np.ones(62, bool)}
    arguments.update(changes)
    return arguments


@pytest.mark.parametrize("p", [0, 1, -0.5, 1.5, np.nan, np.inf, "1e-4", None, [1e-4], True])
def test_poisson_tail_probability(p):
    raises("p=", tm.PoissonTail, p)


@pytest.mark.parametrize("n, b, match", [
    (["a"], [3.0], "n.*must be numbers"), ([np.nan], [3.0], "n: must be finite"),
    ([np.inf], [3.0], "n: must be finite"), ([3], ["3"], "b.*must be numbers"), ([3], [np.nan], "b: must be finite"),
    ([3, 4, 5], [3.0, 3.0], "do not broadcast"), (None, [3.0], "n.*must be numbers"),
])
def test_poisson_tail_windows(n, b, match):
    tail = tm.PoissonTail(1e-4)
    if match.startswith("n:"):
        raises(match, tail.bmax, n)
    raises(match, tail.significant, n, b)


@pytest.mark.parametrize("n, b, match", [("12", 3.0, "n="), (np.nan, 3.0, "n="), (12, np.inf, "b="),
                                         (12, None, "b="), ([12], 3.0, "n="), (True, 3.0, "n=")])
def test_poisson_tail_one_window(n, b, match):
    raises(match, tm.PoissonTail(1e-4).significant1, n, b)


@pytest.mark.parametrize("n, b, match", [
    ("30", 10.0, "n.*must be numbers"), (30, None, "b.*must be numbers"), (np.nan, 10.0, "n: must be finite"),
    (30, np.inf, "b: must be finite"), (-1, 10.0, "n: must be finite and non-negative"),
    ([1, 2, 3], [1.0, 2.0], "do not broadcast"), ([[1], [2, 3]], 1.0, "not an array of numbers"),
])
def test_lr_significance_arguments(n, b, match):
    raises(match, tm.lr_significance, n, b)


@pytest.mark.parametrize("keywords, match", [
    ({"fp_rate": 0}, "fp_rate="), ({"fp_rate": np.nan}, "fp_rate="), ({"fp_rate": "1e-4"}, "fp_rate="),
    ({"families": 0}, "families="), ({"families": 2.5}, "families="), ({"families": None}, "families="),
    ({"margin": 0}, "margin="), ({"margin": -1}, "margin="), ({"margin": np.inf}, "margin="),
    ({"margin": "30"}, "margin="),
])
def test_significance_rule_arguments(keywords, match):
    raises(match, tm.SignificanceRule, **keywords)


def test_significance_rule_detectors_and_shape():
    rule = tm.SignificanceRule()
    raises("detector", rule.tail, "LineDetector")
    raises("detector", rule.tail, None)
    raises("detectors=", tm.SignificanceRule.for_detectors, tm.LineDetector(), (62, 32, 32))
    raises("detectors: .* is not a detector", tm.SignificanceRule.for_detectors, [1, 2], (62, 32, 32))
    for shape in [(62, 32), (61, 32, 32), (62, 0, 32), (62, 30, 32), "shape", None, (62, 32.5, 32)]:
        raises("shape=", tm.SignificanceRule.for_detectors, tm.default_detectors(), shape)


@pytest.mark.parametrize("keywords, match", [
    ({"degree": 4}, "degree="), ({"degree": -1}, "degree="), ({"degree": 1.5}, "degree="),
    ({"degree": "2"}, "degree="), ({"blocks": 0}, "blocks="), ({"blocks": 12}, "power of 2"),
    ({"blocks": np.nan}, "blocks="), ({"edge_depth": -1}, "edge_depth="), ({"edge_depth": None}, "edge_depth="),
    ({"amp_ratio": 0.5}, "amp_ratio="), ({"amp_ratio": np.inf}, "amp_ratio="), ({"clip": 0}, "clip="),
    ({"clip": "3"}, "clip="),
])
def test_amp_background_arguments(keywords, match):
    raises(match, tm.AmpBackground, **keywords)


@pytest.mark.parametrize("arguments, match", [
    ((np.ones((62, 32, 32)),), "counts: must be non-negative integers"),
    ((np.full((62, 32, 32), "1"),), "counts.*must be numbers"),
    ((np.ones((62, 32, 32), bool),), "counts: must be non-negative integers"),
    ((np.ones((62, 32), int),), "expected shape"),
    ((np.ones((61, 32, 32), int),), "counts shape="), ((np.ones((62, 0, 32), int),), "counts shape="),
    ((np.ones((62, 32, 1), int),), "counts shape="), ((np.full((62, 32, 32), -1),), "negative"),
    ((None,), "counts.*must be numbers"),
    ((np.ones((62, 32, 32), int), np.zeros((62, 32, 16), bool)), "excluded: .*expected shape"),
    ((np.ones((62, 32, 32), int), np.full((62, 32, 32), "a")), "excluded.*must be numbers"),
    ((np.ones((62, 32, 32), int), None, np.ones(61, bool)), "live: .*expected shape"),
    ((np.ones((62, 32, 32), int), None, "all"), "live="),
])
def test_amp_background_model_arguments(arguments, match):
    raises(match, tm.AmpBackground().model, *arguments)


@pytest.mark.parametrize("changes, match", [
    ({"ccdnum": 0}, "ccdnum="), ({"ccdnum": 63}, "ccdnum="), ({"ccdnum": "5"}, "ccdnum="),
    ({"kind": "hot"}, "kind="), ({"kind": None}, "kind="), ({"y0": -1}, "y0="), ({"y1": 1}, "y1="),
    ({"x0": 2.5}, "x0="), ({"x1": np.nan}, "x1="), ({"cells": -3}, "cells="), ({"counts": np.nan}, "counts="),
    ({"counts": -1}, "counts="), ({"background": "3"}, "background="), ({"background": np.inf}, "background="),
])
def test_defect_arguments(changes, match):
    arguments = dict(ccdnum=5, kind="column", y0=2, y1=10, x0=4, x1=5, cells=8, counts=40, background=24.0)
    arguments.update(changes)
    raises(match, tm.Defect, **arguments)


@pytest.mark.parametrize("args, keywords, match", [
    ((np.full(10, 3), np.full(10, 1.0), 2.0), {"lo": -1}, "lo="), ((np.full(10, 3), np.full(10, 1.0), 2.0),
                                                                   {"lo": 11}, "lo="),
    ((np.full(10, 3), np.full(10, 1.0), 2.0), {"lo": 5, "hi": 4}, "hi="),
    ((np.full(10, 3), np.full(10, 1.0), 2.0), {"hi": 2.5}, "hi="),
    ((np.full(10, 3), np.full(10, 1.0), 2.0), {"n_iter": -1}, "n_iter="),
    ((np.full(10, 3), np.full(10, 1.0), 2.0), {"penalty": np.nan}, "penalty="),
    ((np.full(10, 3), np.full(10, 1.0), 2.0), {"penalty": -1}, "penalty="),
    ((np.full(10, 3), np.full(10, 1.0), np.nan), {}, "ratio="), ((np.full(10, 3), np.full(10, 1.0), 0), {}, "ratio="),
    ((np.full(10, 3), np.full(10, 1.0), "2"), {}, "ratio="),
    ((np.full(10, 3), np.full(9, 1.0), 2.0), {}, "background: .*expected shape"),
    ((np.full((2, 5), 3), np.full((2, 5), 1.0), 2.0), {}, "1-d"),
    ((np.array([], int), np.array([]), 2.0), {}, "1-d"),
    ((np.full(10, "3"), np.full(10, 1.0), 2.0), {}, "counts.*must be numbers"),
    ((np.full(10, 3), np.full(10, np.nan), 2.0), {}, "background: must be finite"),
    (([3, -1, 3], [1.0, 1.0, 1.0], 2.0), {}, "counts: must be finite and non-negative"),
    (("abc", [1.0], 2.0), {}, "counts="),
])
def test_fit_segment_arguments(args, keywords, match):
    raises(match, tm.fit_segment, *args, **keywords)


@pytest.mark.parametrize("keywords, match", [
    ({"col_widths": 1}, "col_widths="), ({"col_widths": (0,)}, "col_widths="), ({"row_widths": "1"}, "row_widths="),
    ({"row_widths": (1.5,)}, "row_widths="), ({"min_length": 0}, "min_length="), ({"min_length": None}, "min_length="),
    ({"gap_p": 0}, "gap_p="), ({"gap_p": np.nan}, "gap_p="), ({"piece_p": 2}, "piece_p="),
    ({"max_rounds": 0}, "max_rounds="), ({"end_penalty": -0.1}, "end_penalty="),
    ({"end_penalty": np.inf}, "end_penalty="), ({"neighbour_p": "1e-4"}, "neighbour_p="),
    ({"max_neighbours": -1}, "max_neighbours="),
])
def test_line_detector_arguments(keywords, match):
    raises(match, tm.LineDetector, **keywords)


@pytest.mark.parametrize("keywords, match", [
    ({"min_shape": (8,)}, "min_shape="), ({"min_shape": (0, 1)}, "min_shape="), ({"min_shape": 8}, "min_shape="),
    ({"min_fit": ("a", 4)}, "min_fit="), ({"trim": -0.1}, "trim="), ({"trim": 0.5}, "trim="),
    ({"trim": np.nan}, "trim="), ({"trim_p": 0}, "trim_p="), ({"ring_p": 1}, "ring_p="),
    ({"ring_p": None}, "ring_p="), ({"max_rings": -1}, "max_rings="), ({"max_rounds": 0}, "max_rounds="),
])
def test_box_detector_arguments(keywords, match):
    raises(match, tm.BoxDetector, **keywords)


@pytest.mark.parametrize("changes, match", [
    ({"counts": np.ones((62, 32, 32))}, "counts: must be non-negative integers"),
    ({"counts": None}, "counts.*must be numbers"),
    ({"counts": np.ones((62, 32, 16), int)}, "background: .*expected shape"),
    ({"counts": np.full((62, 32, 32), -2)}, "negative"), ({"counts": np.ones((62, 32), int)}, "expected shape"),
    ({"background": np.ones((62, 32, 16))}, "background: .*expected shape"),
    ({"background": np.full((62, 32, 32), "3")}, "background.*must be numbers"),
    ({"excluded": np.zeros((62, 32, 32), int)}, "excluded=.*bool"), ({"excluded": None}, "excluded="),
    ({"excluded": np.zeros((62, 32, 16), bool)}, "excluded: .*expected shape"),
    ({"tail": 1e-6}, "tail="), ({"live": np.ones(61, bool)}, "live: .*expected shape"),
    ({"live": "yes"}, "live="),
])
@pytest.mark.parametrize("detector", [tm.LineDetector(), tm.CellDetector(), tm.BoxDetector()],
                         ids=["line", "cell", "box"])
def test_detect_arguments(detector, changes, match):
    raises(match, detector.detect, **_search(**changes))


def test_detector_shapes_and_lengths():
    for shape in [(62, 32), (60, 32, 32), (62, 32, 0), (62, 3, 32), "grid", None]:
        for detector in (tm.LineDetector(), tm.CellDetector(), tm.BoxDetector()):
            raises("shape=", detector.families, shape)
        raises("shape=", tm.BoxDetector().shapes, shape)
    for size in (-1, 2.5, "64", None, np.nan):
        raises("size=", tm.LineDetector().lengths, size)
    assert [type(d).__name__ for d in tm.default_detectors()] == ["BoxDetector", "LineDetector", "CellDetector",
                                                                  "BoxDetector"]


def test_multiscale_result_arguments():
    mask, background = np.zeros((62, 32, 32), bool), np.zeros((62, 32, 32))
    raises("mask.*must be numbers", tm.MultiscaleResult, mask.astype(int), background, [])
    raises("mask: .*expected shape", tm.MultiscaleResult, mask[0], background[0], [])
    raises("background: .*expected shape", tm.MultiscaleResult, mask, background[:, :16], [])
    raises("defects=", tm.MultiscaleResult, mask, background, None)
    raises("defects: must be a list of Defect", tm.MultiscaleResult, mask, background, ["a"])


@pytest.mark.parametrize("counts, keywords, match", [
    (np.ones((62, 32, 32)), {}, "counts: must be non-negative integers"),
    (np.ones((62, 32, 32), bool), {}, "counts: must be non-negative integers"),
    (np.full((62, 32, 32), "3"), {}, "counts: must be"), (None, {}, "counts: must be"),
    ([], {}, "must be non-negative integers"), (np.array([], int), {}, "expected shape"),
    (np.ones((62, 32, 0), int), {}, "counts shape="), (np.ones((62, 32), int), {}, "expected shape"),
    (np.full((62, 32, 32), -1), {}, "negative"), ([[[1, 2], [3]]] * 62, {}, "not an array of numbers"),
    (None, {"fp_rate": np.nan}, "counts"),
    (np.ones((62, 32, 32), int), {"fp_rate": np.nan}, "fp_rate="),
    (np.ones((62, 32, 32), int), {"fp_rate": 1.5}, "fp_rate="),
    (np.ones((62, 32, 32), int), {"fp_rate": "1e-4"}, "fp_rate="),
    (np.ones((62, 32, 32), int), {"live": np.ones(61, bool)}, "live: .*expected shape"),
    (np.ones((62, 32, 32), int), {"live": ["a"] * 62}, "live.*must be numbers"),
    (np.ones((62, 32, 32), int), {"known": np.ones((62, 32, 16), bool)}, "known: .*expected shape"),
    (np.ones((62, 32, 32), int), {"known": "CCD 31"}, "known="),
    (np.ones((62, 32, 32), int), {"background": "amp"}, "background="),
    (np.ones((62, 32, 32), int), {"detectors": tm.LineDetector()}, "detectors="),
    (np.ones((62, 32, 32), int), {"detectors": [None]}, "not a detector"),
    (np.ones((62, 32, 32), int), {"margin": 0}, "margin="),
    (np.ones((62, 32, 32), int), {"margin": np.inf}, "margin="),
    (np.ones((62, 32, 32), int), {"ring_p": 0}, "ring_p="),
    (np.ones((62, 32, 32), int), {"max_rings": -1}, "max_rings="),
    (np.ones((62, 32, 32), int), {"max_rings": 1.5}, "max_rings="),
    (np.ones((62, 32, 32), int), {"compact": 8}, "compact="),
    (np.ones((62, 32, 32), int), {"compact": (8, 16, 2)}, "compact="),
    (np.ones((62, 32, 32), int), {"compact": (8, np.nan)}, "compact="),
    (np.ones((62, 32, 32), int), {"wing_ratio": -0.1}, "wing_ratio="),
    (np.ones((62, 32, 32), int), {"wing_ratio": np.nan}, "wing_ratio="),
    (np.ones((62, 32, 32), int), {"wing_ratio": "0.1"}, "wing_ratio="),
])
def test_multiscale_mask_arguments(counts, keywords, match):
    raises(match, tm.multiscale_mask, counts, **keywords)


def test_multiscale_mask_background_model_of_the_wrong_shape():
    class Flat:
        def model(self, counts, excluded, live):
            return np.ones(3)
    raises("background: its model", tm.multiscale_mask, np.ones((62, 32, 32), int), background=Flat())


def test_defect_table_writers(tmp_path):
    counts = np.random.default_rng(0).poisson(3, (62, 64, 64))
    table = tm.EpochMask(counts, epoch="Y6", method="multiscale").defects
    raises("table=", tm.write_defects, {"CCDNUM": [5]}, str(tmp_path / "d.ecsv"))
    raises("table=", tm.write_defects, None, str(tmp_path / "d.ecsv"))
    raises("path=", tm.write_defects, table, 5)
    raises("path=", tm.write_defects, table, "")
    raises("ECSV", tm.write_defects, table, str(tmp_path / "d.txt"))
    raises("overwrite=", tm.write_defects, table, str(tmp_path / "d.ecsv"), overwrite="no")
    raises("inputs=", tm.write_defects, table, str(tmp_path / "d.ecsv"), inputs=5)
    raises("table=", tm.write_regions, "table", str(tmp_path))
    raises("no column X0", tm.write_regions, table[["CCDNUM", "KIND"]], str(tmp_path))
    bad = table.copy()
    bad["CCDNUM"][0] = 99
    raises("CCDNUM must be integers in 1..62", tm.write_regions, bad, str(tmp_path))
    raises("directory=", tm.write_regions, table, None)
    raises("directory=", tm.write_regions, table, ["."])
    raises("not a directory", tm.write_regions, table, str(tmp_path / "none"))
    raises("overwrite=", tm.write_regions, table, str(tmp_path), overwrite=None)


def test_defect_history_arguments(masks):
    maps = tm.CountMaps(tm.data_path(tm.DEMO_COUNTS_FILENAME))
    raises("source=", tm.defect_history, "demo_transient_maps.fits.gz")
    raises("source=", tm.defect_history, 5)
    raises("source=", tm.defect_history, [None])
    raises("source: not a defect table", tm.defect_history, [Table()])
    raises("tolerance=", tm.defect_history, [], tolerance=-1)
    raises("tolerance=", tm.defect_history, [], tolerance=1.5)
    raises("tolerance=", tm.defect_history, [], tolerance="1")
    raises("epochs=", tm.defect_history, maps, epochs="Y6")
    raises("epochs=", tm.defect_history, maps, epochs=[6])
    raises("fp_rate=", tm.defect_history, maps, fp_rate=np.nan)
    raises("x_bin=", tm.defect_history, maps, x_bin=0)
    raises("floor=", tm.defect_history, maps, floor="mode")
    raises("method", tm.defect_history, maps, method="best")


def test_plot_methods_arguments(mask):
    raises("first=", tm.plot_methods, None, mask, 5)
    raises("second=", tm.plot_methods, mask, "multiscale", 5)
    for ccdnum in (0, 63, 5.5, "5", None, np.nan, True):
        raises("ccdnum=", tm.plot_methods, mask, mask, ccdnum)
    raises("figure=", tm.plot_methods, mask, mask, 5, figure="fig")
    small = tm.EpochMask(np.full((62, 128, 128), 5), epoch="Y2E1")
    raises("same cell grid", tm.plot_methods, mask, small, 5)


def test_every_public_callable_is_covered_here():
    """A new public function gets its bad-argument tests here too."""
    import inspect
    import pathlib

    text = pathlib.Path(__file__).read_text()
    callables = [name for name in tm.__all__ if callable(getattr(tm, name))
                 and not isinstance(getattr(tm, name), type(tm.BadInputError))
                 or name in ("EpochMask", "TransientMasks", "CountMaps", "FilterCounts")]
    no_arguments = {"GatherResult", "run_cli", "main", "BadInputError"}
    missing = [name for name in callables if name not in no_arguments and f"tm.{name}" not in text]
    assert not missing, missing
    assert inspect.isfunction(tm.run_cli)  # the command line: tests/test_cli.py


@pytest.mark.parametrize("value", ["no", "False", None, 2, 0.5, [True]])
def test_yes_no_arguments_are_booleans(mask, masks, tmp_path, value):
    """overwrite="no" is true in Python: refused, rather than replacing a file."""
    existing = tmp_path / "exists.fits"
    existing.write_bytes(b"keep me")
    raises("overwrite=", tm.check_output, str(existing), value)
    raises("overwrite=", mask.write_masks, str(existing), overwrite=value)
    raises("compress=", mask.write_masks, str(tmp_path / "m.fits"), compress=value)
    raises("demo=", tm.EpochMask, np.ones((62, 4, 4), int), demo=value)
    raises("keep_no_epoch=", tm.TransientMasks, tm.data_path(tm.DEMO_COUNTS_FILENAME), keep_no_epoch=value)
    raises("drop_bad=", tm.filter_table, _events(), masks, drop_bad=value)
    raises("demo=", tm.gather_data, str(existing), demo=value)
    raises("demo=", tm.write_count_maps, str(tmp_path / "maps.fits"), tm.GatherResult(), demo=value)
    assert existing.read_bytes() == b"keep me" and len(list(tmp_path.iterdir())) == 1


def test_numpy_booleans_and_0_1_are_yes_no(tmp_path):
    tm.check_output(str(tmp_path / "new.fits"), np.False_)
    tm.check_output(str(tmp_path / "new.fits"), 1)


# ---- Many inputs (filter_files, expand_inputs; the Dask runs are tested in test_parallel.py)


@pytest.mark.parametrize("inputs, match", [
    (5, "inputs=5"), ({"a.fits"}, "inputs="), ([], "no input file given"), ([None], "inputs="),
    ([""], "inputs="), (["nothing*.fits"], "no file matches"),
])
def test_expand_inputs_arguments(inputs, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raises(match, tm.expand_inputs, inputs)


@pytest.mark.parametrize("keywords, match", [
    ({"chunk_rows": 0}, "chunk_rows=0"), ({"chunk_rows": "10"}, "chunk_rows="),
    ({"drop_bad": "yes"}, "drop_bad="), ({"client": "tcp://host:8786"}, "client="),
])
def test_filter_files_arguments(masks, tmp_path, keywords, match):
    source = tmp_path / "events.fits"
    _events().write(source)
    raises(match, tm.filter_files, [str(source)], str(tmp_path / "out"), masks, **keywords)
    raises("masks=", tm.filter_files, [str(source)], str(tmp_path / "out"), None)
    raises("output_dir=", tm.filter_files, [str(source)], 5, masks)
    raises("inputs=", tm.filter_files, 5, str(tmp_path / "out"), masks)
    raises("client=", tm.gather_data, [str(source)], client=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.fits"]


# ---- Found by a second audit (each was a TypeError, ValueError or AttributeError, or silent)


def test_epoch_names_must_be_printable_ascii(tmp_path):
    counts = np.ones((62, 4, 4), int)
    for epoch in ("Y2\nE1", "Y2É1", " "):
        raises("an epoch name must be printable ASCII", tm.EpochMask, counts, epoch=epoch)
    result = tm.gather_arrays([350000], [5], [10.0], [10.0])
    result.counts, result.min_exp, result.max_exp = (
        {"Y2É1": result.counts["Y2E1"]}, {"Y2É1": 1}, {"Y2É1": 2})
    raises("an epoch name must be printable ASCII", tm.write_count_maps, str(tmp_path / "m.fits"), result)
    raises("min_exp=", tm.EpochMask, counts, min_exp=10**30)


def test_masked_counts_and_methods_of_other_types_are_refused(mask, tmp_path):
    counts = np.ma.masked_array(np.full((62, 16, 16), 3), mask=False)
    counts[4, 3, 3] = 10**6
    counts.mask[4, 3, 3] = True
    raises("counts: has masked", tm.EpochMask, counts)
    raises("method=", tm.EpochMask, np.ones((62, 4, 4), int), method=np.array(["des"]))
    raises("inputs=5", mask.write_masks, str(tmp_path / "m.fits.fz"), inputs=5)
    raises("figure='x'", tm.plot_ccd, mask, 5, figure="x")


def test_count_maps_give_their_counts_read_only():
    maps = tm.CountMaps(tm.data_path(tm.DEMO_COUNTS_FILENAME))
    with pytest.raises(ValueError, match="read-only"):
        maps.counts("Y2E1")[0, 0, 0] = 10**4


def test_codes_and_epoch_indices_outside_their_range_are_refused():
    raises("epoch_idx: -2 is below -1", tm.bin_events, [-2, 0], [5, 5], [1.0, 1.0], [1.0, 1.0], n_epochs=1)
    raises("codes: must be KEEP, MASKED, NO_EPOCH or BAD", tm.FilterCounts().add, [7], [False])


@pytest.mark.parametrize("cards, match", [
    ([("K", 1)], "must be \\(keyword, value, comment\\)"),
    ([("TOO_LONG_KEYWORD", 1, "")], "not a keyword this table can take"),
    ([("NAXIS2", 5, "")], "not a keyword this table can take"),
    ([("TFORM1", "J", "")], "not a keyword this table can take"),
    ([("X", np.nan, "")], "not one a FITS card holds"),
    ([("X", "é", "")], "not one a FITS card holds"),
    ([("X", 2**70, "")], "not one a FITS card holds"),
    ([("X", 1, None)], "not one a FITS card holds"),
    (5, "header_cards=5"),
])
def test_write_fits_rows_header_cards(tmp_path, cards, match):
    raises(match, tm.write_fits_rows, str(tmp_path / "rows.fits"), [{"A": np.arange(3)}], header_cards=cards)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["", " ", "é"])
def test_write_fits_rows_column_names(tmp_path, name):
    raises("must be printable ASCII", tm.write_fits_rows, str(tmp_path / "rows.fits"), [{name: np.arange(3)}])


def test_des_background_bits_and_index_arguments():
    import des_background as db

    raises("names=None", db.bits_value, None)
    raises("bit name=5", db.bits_value, ["SUSPECT", 5])
    raises("n_images='3'", db.parse_se_index, "0", "3")
    assert db.bits_value(["SUSPECT", "streak"]) == db.bits_value("SUSPECT,STREAK")


@pytest.mark.parametrize("ignore_bits, match", [(-1, "ignore_bits=-1"), (2.5, "ignore_bits=2.5"),
                                                (None, "ignore_bits=None"), ("NOPE", "unknown DES mask bit")])
def test_des_background_ignore_bits(ignore_bits, match):
    import des_background as db

    raises(match, db._ignore_value, ignore_bits)
    assert db._ignore_value(["SUSPECT"]) == db._ignore_value("SUSPECT") == db._ignore_value(2048)


def test_plot_epoch_and_command_line_arguments(mask, tmp_path):
    """Found by a second audit: options given with a ready EpochMask were ignored, a .png
    name got a PDF, and main() split a str argv into one-letter arguments."""
    raises("fp_rate: only for an epoch name", tm.plot_epoch, mask, str(tmp_path / "x.pdf"), fp_rate=0.5)
    raises("maps, x_bin: only for an epoch name", tm.plot_epoch, mask, str(tmp_path / "x.pdf"),
           maps=tm.CountMaps(tm.data_path(tm.DEMO_COUNTS_FILENAME)), x_bin=2)
    raises("name it .pdf", tm.plot_epoch, mask, str(tmp_path / "x.png"))
    for argv in ("--epoch Y2E1", 5, ["--epoch", 5]):
        raises("argv=", tm.main, argv)
    assert not list(tmp_path.iterdir())


def test_epoch_table_with_a_null_name_is_refused():
    from astropy.table import MaskedColumn

    table = tm.read_epochs()
    table["NAME"] = MaskedColumn(table["NAME"], mask=[True] + [False] * (len(table) - 1))
    raises("column NAME must name each epoch once, and not be empty: ''", tm.read_epochs, table)
