"""Property-based tests (hypothesis) of the library against brute-force references.

Cell lookup (`EpochMask.cell_index` / `apply`), binning (`bin_events`,
`gather_arrays`) and filtering (`filter_table`) must agree with a plain,
one-event-at-a-time reference written with exact fractions, on arbitrary
positions: exact cell edges (x = 8X + 1, y = 16Y + 1), the half pixel at 0.5,
the last representable position below 2048.5 / 4096.5, CCD borders, NaN,
infinities and positions off the CCD.  And any array given to the public
functions either works or raises `BadInputError`, never another exception.
"""
import functools
import math
import os
import pickle
from fractions import Fraction

import numpy as np
import pytest
from astropy.table import Table
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import transient_masks as tm

#: Examples per test: modest by default (the file takes well under 30 s); set
#: TM_HYPOTHESIS_EXAMPLES=2000 for a thorough search.
SETTINGS = settings(deadline=None, max_examples=int(os.environ.get("TM_HYPOTHESIS_EXAMPLES", "60")),
                    suppress_health_check=[HealthCheck.too_slow])
EPOCHS = tm.read_epochs()
MINEXP = [int(v) for v in EPOCHS["MINEXPNUM"]]
MAXEXP = [int(v) for v in EPOCHS["MAXEXPNUM"]]
NAMES = [str(v) for v in EPOCHS["NAME"]]

# ---- Brute-force references, one event at a time, in exact arithmetic


def ref_cell(ccdnum, x, y, cell_nx=8, cell_ny=16):
    """(CCDNUM - 1, Y, X) of one event, or None when it is on no CCD."""
    if isinstance(ccdnum, float) and not (math.isfinite(ccdnum) and ccdnum == int(ccdnum)):
        return None
    if not (math.isfinite(x) and math.isfinite(y)) or not 1 <= ccdnum <= tm.N_CCD:
        return None
    fx, fy = Fraction(x), Fraction(y)
    if not (Fraction(1, 2) <= fx < Fraction(4097, 2) and Fraction(1, 2) <= fy < Fraction(8193, 2)):
        return None
    # cell X holds cx X + 1 <= x < cx (X + 1) + 1; the half pixel 0.5 <= x < 1 goes to cell 0
    return int(ccdnum) - 1, max(math.floor((fy - 1) / cell_ny), 0), max(math.floor((fx - 1) / cell_nx), 0)


def ref_epoch(expnum):
    """Row of the epoch table: among the epochs begun by expnum, the last begun, if not over."""
    begun = [i for i, lo in enumerate(MINEXP) if lo <= expnum]
    if not begun:
        return -1
    last = max(begun, key=lambda i: MINEXP[i])
    return last if expnum <= MAXEXP[last] else -1


# ---- Strategies


def _edges():
    """Positions the lookups must get exactly right."""
    values = {0.5, 1.0, 2048.0, 2048.5, 4096.0, 4096.5, 0.0, -0.5, 1e9}
    for edge in (0.5, 1.0, 9.0, 17.0, 1025.0, 2041.0, 2048.5, 4081.0, 4096.5):
        values.update({np.nextafter(edge, -np.inf), np.nextafter(edge, np.inf)})
    return sorted(float(v) for v in values)


EDGES = _edges()


def positions(cell, size):
    """Positions along one axis of ``cell`` pixels per cell and ``size`` pixels."""
    return st.one_of(
        st.integers(0, 256).map(lambda k: cell * k + 1.0),  # exact cell edges
        st.integers(0, 256).map(lambda k: float(np.nextafter(cell * k + 1.0, -np.inf))),  # just below
        st.sampled_from(EDGES),
        st.floats(-5, size + 7, allow_nan=False),
        st.sampled_from([np.nan, np.inf, -np.inf]),
    )


x_values = positions(8, 2048)
y_values = positions(16, 4096)
ccd_values = st.one_of(st.integers(-1, 64), st.sampled_from([1, 31, 32, 62]))
events = st.lists(st.tuples(ccd_values, x_values, y_values), max_size=40)
binnings = st.tuples(st.sampled_from([1, 2, 4, 8, 256]), st.sampled_from([1, 2, 16, 256]))


@functools.lru_cache(maxsize=None)
def _mask(x_bin, y_bin):
    """An EpochMask of that binning whose mask is replaced by a random pattern (half masked)."""
    rng = np.random.default_rng(x_bin * 1000 + y_bin)
    mask = tm.EpochMask(rng.poisson(2.0, size=(62, 256, 256)), x_bin=x_bin, y_bin=y_bin)
    mask.mask = rng.random(mask.mask.shape) < 0.5
    return mask


@functools.lru_cache(maxsize=None)
def _demo_masks(keep_no_epoch):
    return tm.TransientMasks(tm.data_path(tm.DEMO_COUNTS_FILENAME), keep_no_epoch=keep_no_epoch)


def _masked_positions():
    """(expnum, ccdnum, x, y) at the centre of masked cells of the demo maps, to hit masks often."""
    masks = _demo_masks(False)
    found = []
    for epoch in masks.maps.epochs:
        row = NAMES.index(epoch)
        cells = np.argwhere(masks.mask_for(epoch).mask)
        for ccd, Y, X in cells[:: max(1, len(cells) // 200)]:
            found.append((MINEXP[row], int(ccd) + 1, 8.0 * X + 5, 16.0 * Y + 9))
    return found


# ---- Cell lookup


@SETTINGS
@given(events=events, binning=binnings)
def test_cell_index_and_apply_match_brute_force(events, binning):
    mask = _mask(*binning)
    cell_ny, cell_nx = mask.cell_size
    ccdnum = np.array([e[0] for e in events], dtype=np.int64)
    x = np.array([e[1] for e in events], dtype=np.float64)
    y = np.array([e[2] for e in events], dtype=np.float64)
    ny, nx = mask.mask.shape[1:]
    expected = []
    for c, xi, yi in events:
        cell = ref_cell(c, xi, yi, cell_nx, cell_ny)
        expected.append(-1 if cell is None else (cell[0] * ny + cell[1]) * nx + cell[2])
    got = mask.cell_index(ccdnum, x, y)
    assert got.tolist() == expected
    if all(index >= 0 for index in expected):
        assert mask.apply(ccdnum, x, y).tolist() == [bool(mask.mask.ravel()[i]) for i in expected]
    else:
        with pytest.raises(tm.BadInputError, match="off the CCDs"):
            mask.apply(ccdnum, x, y)


@SETTINGS
@given(events=events)
def test_float32_positions_and_float_ccdnum_give_the_same_cells(events):
    mask = _mask(1, 1)
    ccdnum = np.array([e[0] for e in events], dtype=np.float64)
    x = np.array([e[1] for e in events], dtype=np.float32)
    y = np.array([e[2] for e in events], dtype=np.float32)
    expected = []
    for c, xi, yi in zip(ccdnum.tolist(), x.tolist(), y.tolist()):
        cell = ref_cell(c, xi, yi)
        expected.append(-1 if cell is None else (cell[0] * 256 + cell[1]) * 256 + cell[2])
    assert mask.cell_index(ccdnum, x, y).tolist() == expected


# ---- Binning


expnums = st.one_of(
    st.sampled_from(MINEXP + MAXEXP + [m - 1 for m in MINEXP] + [m + 1 for m in MAXEXP] + [605900, 605988]),
    st.integers(130_000, 820_000),
)
gather_events = st.lists(st.tuples(expnums, ccd_values, x_values, y_values), max_size=40)


def _reference_gather(events):
    counts, n_bad, n_no_epoch = {}, 0, 0
    for expnum, c, xi, yi in events:
        cell = ref_cell(c, xi, yi)
        epoch = ref_epoch(expnum)
        if cell is None:
            n_bad += 1
        elif epoch < 0:
            n_no_epoch += 1
        else:
            key = (NAMES[epoch],) + cell
            counts[key] = counts.get(key, 0) + 1
    return counts, n_bad, n_no_epoch


def _nonzero_cells(counts_by_epoch):
    found = {}
    for name, counts in counts_by_epoch.items():
        for index in zip(*np.nonzero(counts)):
            found[(name,) + tuple(int(i) for i in index)] = int(counts[index])
    return found


@SETTINGS
@given(events=gather_events, chunk_rows=st.integers(1, 50), shuffle=st.booleans())
def test_gather_arrays_matches_brute_force(events, chunk_rows, shuffle):
    if not shuffle:  # sorted catalogs take the contiguous-slice path, others the sorting path
        events = sorted(events)
    expnum = np.array([e[0] for e in events], dtype=np.int64)
    ccdnum = np.array([e[1] for e in events], dtype=np.int16)
    x = np.array([e[2] for e in events], dtype=np.float64)
    y = np.array([e[3] for e in events], dtype=np.float64)
    result = tm.gather_arrays(expnum, ccdnum, x, y, chunk_rows=chunk_rows)
    counts, n_bad, n_no_epoch = _reference_gather(events)
    assert _nonzero_cells(result.counts) == counts
    assert (result.n_read, result.n_bad, result.n_no_epoch, result.n_binned) == (
        len(events), n_bad, n_no_epoch, sum(counts.values()))
    assert list(result.counts) == [name for name in NAMES if any(key[0] == name for key in counts)]


@SETTINGS
@given(events=events, epochs=st.lists(st.integers(-1, 2), max_size=40))
def test_bin_events_matches_brute_force(events, epochs):
    n = min(len(events), len(epochs))
    events, epochs = events[:n], epochs[:n]
    counts = tm.bin_events(epochs, [e[0] for e in events], [e[1] for e in events], [e[2] for e in events],
                           n_epochs=3)
    expected = {}
    for epoch, (c, xi, yi) in zip(epochs, events):
        cell = ref_cell(c, xi, yi)
        if cell is not None and epoch >= 0:
            expected[(epoch,) + cell] = expected.get((epoch,) + cell, 0) + 1
    found = {tuple(int(i) for i in index): int(counts[index]) for index in zip(*np.nonzero(counts))}
    assert found == expected and counts.shape == (3, 62, 256, 256)


epoch_tables = st.lists(st.tuples(st.integers(-20, 60), st.integers(-3, 25)), min_size=1, max_size=8).map(
    lambda ranges: sorted((start, start + length) for start, length in ranges))  # overlaps, nesting, repeats


@SETTINGS
@given(table=epoch_tables, dtype=st.sampled_from([np.int64, np.int32, np.int16, np.uint64, np.uint8]))
def test_epoch_lookup_equals_epoch_index(table, dtype):
    minexp, maxexp = (np.array(column) for column in zip(*table))
    info = np.iinfo(dtype)
    expnum = np.array([value for value in range(-30, 100) if info.min <= value <= info.max]
                      + [info.min, info.max], dtype=dtype)
    expected = tm.epoch_index(expnum, minexp, maxexp)
    lookup = tm._EpochLookup(minexp, maxexp)
    np.testing.assert_array_equal(lookup(expnum), expected)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(lookup))(expnum), expected)  # as sent to workers


# ---- Filtering


@st.composite
def filter_rows(draw):
    masked = _masked_positions()
    rows = []
    for _ in range(draw(st.integers(0, 30))):
        if draw(st.booleans()):  # in or at the edges of a masked cell of the demo maps
            expnum, c, xc, yc = draw(st.sampled_from(masked))
            dx = draw(st.sampled_from([-4.0, -3.5, 0.0, 3.0, float(np.nextafter(4.0, 0)), 4.0]))
            dy = draw(st.sampled_from([-8.0, 0.0, 7.5, float(np.nextafter(8.0, 0)), 8.0]))
            expnum += draw(st.integers(0, 3))
            rows.append((expnum, c, xc + dx, yc + dy))
        else:
            rows.append((draw(expnums), draw(ccd_values), draw(x_values), draw(y_values)))
    return rows


def _reference_codes(masks, rows):
    codes = []
    for expnum, c, xi, yi in rows:
        cell = ref_cell(c, xi, yi)
        epoch = ref_epoch(expnum)
        if cell is None:
            codes.append(tm.BAD)
        elif epoch < 0 or NAMES[epoch] not in masks.maps.epochs:
            codes.append(tm.NO_EPOCH)
        else:
            codes.append(tm.MASKED if masks.mask_for(NAMES[epoch]).mask[cell] else tm.KEEP)
    return codes


@SETTINGS
@given(rows=filter_rows(), keep_no_epoch=st.booleans())
def test_filter_table_matches_brute_force(rows, keep_no_epoch):
    masks = _demo_masks(keep_no_epoch)
    table = Table(rows=rows or None, names=["EXPNUM", "CCDNUM", "XWIN_IMAGE", "YWIN_IMAGE"],
                  dtype=[np.int64, np.int32, np.float64, np.float64])
    table["ROW"] = np.arange(len(table))
    codes = _reference_codes(masks, rows)
    kept = [i for i, code in enumerate(codes)
            if code == tm.KEEP or (code == tm.NO_EPOCH and keep_no_epoch)]
    out, counts = tm.filter_table(table, masks, drop_bad=True)
    assert out["ROW"].tolist() == kept
    assert (counts.read, counts.masked, counts.bad, counts.written) == (
        len(rows), codes.count(tm.MASKED), codes.count(tm.BAD), len(kept))
    assert counts.read == counts.masked + counts.no_epoch_dropped + counts.bad + counts.written
    if tm.BAD in codes:
        with pytest.raises(tm.BadInputError, match="bad row"):
            tm.filter_table(table, masks)
    else:
        assert tm.filter_table(table, masks)[0]["ROW"].tolist() == kept


# ---- Any array: works or BadInputError


dtypes = st.one_of(
    hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(), hnp.floating_dtypes(), hnp.boolean_dtypes(),
    hnp.complex_number_dtypes(), hnp.unicode_string_dtypes(max_len=3), hnp.byte_string_dtypes(max_len=3),
    hnp.datetime64_dtypes(), hnp.timedelta64_dtypes(),
)
shapes = st.one_of(st.just(()), hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=4))
any_array = st.one_of(
    hnp.arrays(dtypes, shapes),
    st.lists(st.one_of(st.integers(-2**70, 2**70), st.floats(), st.text(max_size=2), st.none()), max_size=4),
    st.lists(st.lists(st.floats(-10, 3000), max_size=3), max_size=3),  # maybe ragged
    st.one_of(st.integers(-10, 5000), st.floats(), st.text(max_size=3), st.none()),
)


def works_or_bad_input(function, *args, **kwargs):
    try:
        function(*args, **kwargs)
    except tm.BadInputError as error:
        assert "\n" not in str(error)


@SETTINGS
@given(ccdnum=any_array, x=any_array, y=any_array)
def test_lookups_take_any_array(ccdnum, x, y):
    mask = _mask(2, 2)
    works_or_bad_input(mask.cell_index, ccdnum, x, y)
    works_or_bad_input(mask.apply, ccdnum, x, y)
    works_or_bad_input(_demo_masks(True).classify, x, ccdnum, x, y)


@SETTINGS
@given(expnum=any_array, ccdnum=any_array, x=any_array, y=any_array, chunk_rows=st.integers(1, 5))
def test_binning_takes_any_array(expnum, ccdnum, x, y, chunk_rows):
    works_or_bad_input(tm.gather_arrays, expnum, ccdnum, x, y, chunk_rows=chunk_rows)
    works_or_bad_input(tm.bin_events, expnum, ccdnum, x, y, n_epochs=2)
    works_or_bad_input(tm.epoch_index, expnum, ccdnum, x)


@SETTINGS
@given(mode=any_array, centre=any_array, fp_rate=st.one_of(st.floats(), st.text(max_size=2)))
def test_thresholds_take_any_array(mode, centre, fp_rate):
    works_or_bad_input(tm.poisson_threshold, mode, centre)
    works_or_bad_input(tm.poisson_threshold, 3, 3.0, fp_rate)


@SETTINGS
@given(counts=hnp.arrays(dtypes, st.one_of(shapes, st.sampled_from([(62, 0, 4), (62, 4, 4), (62, 1, 3)]))),
       x_bin=st.one_of(st.integers(-1, 5), st.floats(), st.text(max_size=1)))
def test_count_cubes_take_any_array(counts, x_bin):
    works_or_bad_input(tm.rebin_counts, counts, x_bin, 1)
    works_or_bad_input(tm.EpochMask, counts, x_bin=x_bin)


@SETTINGS
@given(codes=any_array, kept=any_array)
def test_filter_counts_take_any_array(codes, kept):
    works_or_bad_input(tm.FilterCounts().add, codes, kept)


@SETTINGS
@given(column=hnp.arrays(dtypes, st.integers(0, 4)), which=st.sampled_from(
    ["EXPNUM", "CCDNUM", "XWIN_IMAGE", "YWIN_IMAGE"]))
def test_filter_table_takes_any_column(column, which):
    n = len(column)
    columns = {"EXPNUM": np.full(n, 350000), "CCDNUM": np.full(n, 5), "XWIN_IMAGE": np.full(n, 10.0),
               "YWIN_IMAGE": np.full(n, 10.0)}
    columns[which] = column
    table = Table(columns)
    works_or_bad_input(tm.filter_table, table, _demo_masks(False))
    works_or_bad_input(tm.filter_table, table, _demo_masks(True), drop_bad=True)


@SETTINGS
@given(ccdnum=st.one_of(st.integers(-5, 70), st.floats(), st.text(max_size=2), st.none(), any_array))
def test_pixel_mask_takes_anything(ccdnum):
    works_or_bad_input(_mask(4, 4).pixel_mask, ccdnum)


small_cubes = st.one_of(
    hnp.arrays(dtypes, st.sampled_from([(62, 32, 32), (62, 32, 16), (62, 0, 32), (62, 32), (61, 32, 32), ()]),
               elements=None),
    hnp.arrays(st.sampled_from([np.int64, np.int16, np.int8]), st.just((62, 32, 32)),
               elements=st.integers(-1, 40)),
    st.one_of(st.none(), st.text(max_size=2), st.lists(st.integers(0, 5), max_size=3)),
)


@settings(deadline=None, max_examples=25, suppress_health_check=list(HealthCheck))
@given(counts=small_cubes, fp_rate=st.one_of(st.floats(), st.sampled_from([1e-4, 0.3])),
       live=st.one_of(st.none(), any_array, hnp.arrays(dtypes, st.just((62,)))))
def test_multiscale_takes_any_array(counts, fp_rate, live):
    works_or_bad_input(tm.multiscale_mask, counts, fp_rate=fp_rate, live=live)
    works_or_bad_input(tm.multiscale_mask, counts, known=live)
    works_or_bad_input(tm.EpochMask, counts, method="multiscale", fp_rate=fp_rate)


def test_reference_agrees_with_the_documented_edges():
    """The brute-force reference itself, on the README's examples."""
    assert ref_cell(7, 0.5, 0.5) == (6, 0, 0) and ref_cell(7, 9.0, 17.0) == (6, 1, 1)
    assert ref_cell(7, float(np.nextafter(9.0, 0)), 16.9999) == (6, 0, 0)
    assert ref_cell(62, float(np.nextafter(2048.5, 0)), float(np.nextafter(4096.5, 0))) == (61, 255, 255)
    assert ref_cell(62, 2048.5, 1.0) is None and ref_cell(0, 5.0, 5.0) is None and ref_cell(5, np.nan, 1) is None
    assert ref_cell(5.5, 5.0, 5.0) is None
    assert NAMES[ref_epoch(605900)] == "Y4E2" and ref_epoch(164458) == -1
