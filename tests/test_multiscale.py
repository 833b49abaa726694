"""The multiscale method: background, detectors, false-positive rate, defect tables and CLI."""

import numpy as np
import pytest
from astropy.table import Table

import transient_masks as tm
from conftest import write_count_maps

NY, NX = tm.MAP_NY, tm.MAP_NX


def smooth_rates(rng, level, edges=True, amp_step=0.15, gradient=0.25, curvature=0.1):
    """Expected counts of defect-free CCDs: per-CCD level, gradients with curvature, an
    amplifier step at x = 1024.5 and (optionally) camera-wide brighter edges."""
    y = (np.arange(NY) + 0.5) / NY * 2 - 1
    x = (np.arange(NX) + 0.5) / NX * 2 - 1
    rates = np.empty((tm.N_CCD, NY, NX))
    for index in range(tm.N_CCD):
        gx, gy = rng.uniform(-gradient, gradient, 2)
        cx, cy = rng.uniform(-curvature, curvature, 2)
        surface = (1 + gx * x + cx * x ** 2)[None, :] * (1 + gy * y + cy * y ** 2)[:, None]
        step = np.where(np.arange(NX) >= NX // 2, rng.uniform(1 - amp_step, 1 + amp_step), 1.0)
        rates[index] = level * rng.lognormal(0, 0.15) * surface * step[None, :]
    if edges:  # every CCD's edges glow a little: camera-wide, so background
        rates[:, :, 0] *= 1.3
        rates[:, :, 1] *= 1.1
        rates[:, :, -1] *= 1.2
        rates[:, 0, :] *= 1.15
        rates[:, -1, :] *= 1.1
    return rates


def mask_of(counts):
    return tm.multiscale_mask(counts)


# ---- statistics


def test_poisson_tail_matches_the_poisson_distribution():
    from scipy.special import pdtrc

    rng = np.random.default_rng(0)
    tail = tm.PoissonTail(1e-5)
    n = rng.integers(1, 6000, 2000)
    b = n * rng.uniform(0.2, 1.5, 2000)
    exact = pdtrc(n - 1, b) <= 1e-5
    # Wilson-Hilferty above 4000 counts: allow disagreement right at the threshold only
    assert (tail.significant(n, b) == exact).mean() > 0.995
    assert (tail.significant(n[n <= 4000], b[n <= 4000]) == exact[n <= 4000]).all()
    assert not tail.significant1(0, 0.0)
    with pytest.raises(tm.BadInputError):
        tm.PoissonTail(0.0)


def test_significance_rule_shares_the_budget():
    detectors = tm.default_detectors()
    rule = tm.SignificanceRule.for_detectors(detectors, (62, NY, NX), 1e-4, margin=30)
    families = {f for d in detectors for f in d.families((62, NY, NX))}
    assert rule.families == len(families)
    for detector in detectors:
        assert rule.tail(detector).p == pytest.approx(1e-4 / (len(families) * detector.coverage * 30))
    # a lower fp_rate makes every window test stricter
    strict = tm.SignificanceRule.for_detectors(detectors, (62, NY, NX), 1e-6)
    assert strict.tail(detectors[1]).p < rule.tail(detectors[1]).p


def test_false_positive_rate_on_clean_ccds_is_below_fp_rate():
    """12 million pure-Poisson cells with gradients, curvature, amplifier steps and
    camera-wide bright edges, at 1, 3 and 10 transients per cell."""
    masked = cells = 0
    for level, seed in ((1.0, 11), (3.0, 12), (10.0, 13)):
        rng = np.random.default_rng(seed)
        counts = rng.poisson(smooth_rates(rng, level))
        known = np.zeros(counts.shape, bool)
        known[tm.HALF_MASKED_CCD - 1, :, NX // 2:] = True
        result = tm.multiscale_mask(counts, fp_rate=1e-4, known=known)
        masked += int((result.mask & ~known).sum())
        cells += int((~known).sum())
    assert cells > 12_000_000
    assert masked / cells <= 1e-4


def test_background_follows_gradients_and_amplifier_steps():
    rng = np.random.default_rng(3)
    rates = smooth_rates(rng, 3.0)
    counts = rng.poisson(rates)
    estimator = tm.AmpBackground()
    model = estimator.model(counts)
    ratio = model[:, 4:-4, 4:-4] / rates[:, 4:-4, 4:-4]
    assert abs(np.median(ratio) - 1) < 0.01
    assert np.percentile(np.abs(ratio - 1), 99) < 0.06
    # the camera-wide glow of the first column (1.3x) is learnt from all CCDs
    live = np.arange(tm.N_CCD) != tm.HALF_MASKED_CCD - 1
    assert model[live, 4:-4, 0].sum() / rates[live, 4:-4, 0].sum() == pytest.approx(1.0, abs=0.02)
    assert estimator.edge_factor["x", 0] > 1.15
    assert (estimator.bright_half < 0).all()


def test_a_much_brighter_amplifier_half_is_a_defect():
    rng = np.random.default_rng(4)
    rates = smooth_rates(rng, 3.0, edges=False, amp_step=0.0)
    rates[40, :, NX // 2:] *= 3.0  # CCD 41: a bad amp B
    result = mask_of(rng.poisson(rates))
    assert result.mask[40, :, NX // 2 + 2:-2].mean() > 0.98
    assert result.mask[40, :, :NX // 2].mean() < 0.01


# ---- detectors


def test_faint_long_column_is_found_with_fitted_ends():
    rng = np.random.default_rng(5)
    rates = smooth_rates(rng, 3.0, edges=False)
    rates[7, 60:200, 90] *= 1.8  # 0.8x above the background: no cell stands out alone
    counts = rng.poisson(rates)
    assert not tm.EpochMask(counts, method="des").mask[7, 60:200, 90].mean() > 0.2
    result = mask_of(counts)
    column = result.mask[7, :, 90]
    assert column[60:200].mean() > 0.85 and column[80:180].all()
    assert not column[:50].any() and not column[210:].any()  # the ends are fitted: no overshoot
    assert not result.mask[7, :, [89, 91]].any()
    found = [d for d in result.defects if d.ccdnum == 8]
    assert [d.kind for d in found] == ["column"] and found[0].significance > 5


def test_column_with_a_gap_is_split():
    rng = np.random.default_rng(6)
    rates = smooth_rates(rng, 3.0, edges=False)
    rates[12, 0:100, 40] *= 6
    rates[12, 130:256, 40] *= 6
    result = mask_of(rng.poisson(rates))
    column = result.mask[12, :, 40]
    assert column[2:98].all() and column[132:254].all()
    assert column[104:126].sum() == 0


def masked_blob(seed, ccd, peak, y, x, sigma_y, sigma_x):
    """Mask of clean CCDs with one Gaussian blob (cells) on CCD index ``ccd``; the blob's excess ratio."""
    rng = np.random.default_rng(seed)
    rates = smooth_rates(rng, 3.0, edges=False)
    yy, xx = np.mgrid[0:NY, 0:NX]
    blob = peak * np.exp(-((yy - y) ** 2 / (2 * sigma_y ** 2) + (xx - x) ** 2 / (2 * sigma_x ** 2)))
    rates[ccd] *= 1 + blob
    return mask_of(rng.poisson(rates)).mask[ccd], blob


def test_hot_spot_is_boxed():
    mask, spot = masked_blob(7, 20, 6.0, 150, 60, 2.0, 4.0)
    assert mask[spot > 1.0].all()
    assert mask.sum() <= 3 * (spot > 0.1).sum()
    assert mask[spot < 1e-3].sum() == 0


def test_blob_fit_recovers_a_round_spot():
    from scipy.special import ndtr

    rng = np.random.default_rng(21)
    xc, yc, sigma, amplitude = 70.0, 150.0, 20.0, 3000.0  # pixels; cells of 8 x 16 pixels
    fx = np.diff(ndtr((np.arange(31) * 8.0 - xc) / sigma))
    fy = np.diff(ndtr((np.arange(21) * 16.0 - yc) / sigma))
    background = np.full((20, 30), 10.0)
    counts = rng.poisson(background + amplitude * np.outer(fy, fx))
    (fit_x, fit_y, fit_sigma, fit_amplitude), blob = tm._fit_blob(
        counts, background, np.ones(counts.shape, bool), (8.0, 16.0), (60.0, 140.0, 40.0, 1000.0))
    assert abs(fit_x - xc) < 2 and abs(fit_y - yc) < 3
    assert fit_sigma == pytest.approx(sigma, rel=0.05) and fit_amplitude == pytest.approx(amplitude, rel=0.05)
    assert blob.sum() == pytest.approx(fit_amplitude * fy.sum() * fx.sum(), rel=0.01)


def blob_rates(seed, level, peak, sigma_px, y_px, x_px, ccd=20):
    """Expected counts of clean CCDs at ``level`` per cell with a round Gaussian spot on one."""
    from scipy.special import ndtr

    rng = np.random.default_rng(seed)
    rates = smooth_rates(rng, level, edges=False)
    fx = np.diff(ndtr((np.arange(NX + 1) * tm.CCD_NX / NX - x_px) / sigma_px))
    fy = np.diff(ndtr((np.arange(NY + 1) * tm.CCD_NY / NY - y_px) / sigma_px))
    ratio = np.outer(fy, fx) / (fy.max() * fx.max()) * peak  # excess / background, peak at the centre
    rates[ccd] *= 1 + ratio
    return rng, rates, ratio


def test_faint_wings_of_a_hot_spot_are_masked():
    # At 10 per cell, the wing cells 0.1-0.5x above the background hold 1-5
    # extra transients each: too few for any window, but the core fixes them.
    rng, rates, ratio = blob_rates(31, 10.0, 3.0, 30.0, 2000.0, 500.0)
    counts = rng.poisson(rates)
    wings = (ratio >= 0.1) & (ratio < 0.5)
    with_wings = tm.multiscale_mask(counts).mask[20]
    without = tm.multiscale_mask(counts, wing_ratio=0).mask[20]
    assert with_wings[ratio >= 0.5].all()
    assert with_wings[wings].mean() >= 0.9 and without[wings].mean() < 0.6  # rings alone: half of them
    assert not with_wings[ratio < 1e-3].any()


def test_a_short_bright_column_gets_no_wings():
    # A round blob fitted to a column 1 cell wide predicts wings in the
    # columns beside it; their counts refuse them.
    rng = np.random.default_rng(32)
    rates = smooth_rates(rng, 10.0, edges=False)
    rates[20, 100:103, 60] *= 30.0
    mask = tm.multiscale_mask(rng.poisson(rates)).mask[20]
    assert mask[100:103, 60].all()
    assert mask.sum() <= 5


def test_structures_near_the_threshold_get_no_wings():
    # At fp_rate 1e-2 a clean camera has dozens of false structures: wings
    # fitted to them would grow every false positive.
    rng = np.random.default_rng(33)
    counts = rng.poisson(smooth_rates(rng, 3.0, edges=False))
    with_wings = tm.multiscale_mask(counts, fp_rate=1e-2)
    without = tm.multiscale_mask(counts, fp_rate=1e-2, wing_ratio=0)
    assert len(with_wings.defects) >= 20
    np.testing.assert_array_equal(with_wings.mask, without.mask)


def test_large_faint_glow_is_masked_but_not_the_rest_of_the_ccd():
    mask, glow = masked_blob(8, 45, 1.5, 160, 100, 12.0, 25.0)
    assert mask[glow > 0.5].mean() > 0.95
    assert mask[glow < 1e-3].mean() < 0.01


def test_one_ccds_glowing_edge_is_masked_but_a_camera_wide_one_is_not():
    rng = np.random.default_rng(9)
    rates = smooth_rates(rng, 3.0, edges=True)  # camera-wide: background
    rates[33, :, -1] *= 1.8  # CCD 34's right edge glows on its own
    rates[50, 0, :] *= 2.5  # CCD 51's bottom row too
    result = mask_of(rng.poisson(rates))
    assert result.mask[33, 5:-5, -1].all()
    assert result.mask[50, 0, 5:-5].all()
    others = np.ones(tm.N_CCD, bool)
    others[[33, 50, tm.HALF_MASKED_CCD - 1]] = False
    assert result.mask[others][:, :, 0].mean() < 0.005  # the camera-wide 1.3x left edge stays
    kinds = {(d.ccdnum, d.kind) for d in result.defects}
    assert (34, "edge") in {(c, "edge" if k in ("column", "row") else k) for c, k in kinds}


# ---- EpochMask and its defect table


def old_des_mask(counts, fp_rate=1e-4, floor="median"):
    """The DES rule as computed before the multiscale method existed."""
    from scipy.stats import poisson

    counts = np.asarray(counts)
    mask = np.zeros(counts.shape, bool)
    half = counts.shape[2] // 2
    for index in range(counts.shape[0]):
        cells = counts[index, :, :half] if index + 1 == tm.HALF_MASKED_CCD else counts[index]
        if not cells.any():
            mask[index] = True
            continue
        mode = np.argmax(np.bincount(cells.ravel()))
        centre = np.median(cells) if floor == "median" else cells.mean()
        threshold = max(np.ceil(2 * centre), poisson.isf(fp_rate, mode + 1.0))
        mask[index] = counts[index] > threshold
    mask[tm.HALF_MASKED_CCD - 1, :, half:] = True
    return mask


@pytest.mark.parametrize("floor", tm.FLOORS)
def test_des_method_is_unchanged(floor):
    rng = np.random.default_rng(10)
    counts = rng.poisson(smooth_rates(rng, 3.0))
    counts[4, 10:30, 100] += 25
    counts[60] = 0
    default = tm.EpochMask(counts, floor=floor)
    explicit = tm.EpochMask(counts, floor=floor, method="des")
    assert default.method == "des"
    assert np.array_equal(default.mask, old_des_mask(counts, floor=floor))
    assert np.array_equal(explicit.mask, default.mask)
    assert np.array_equal(explicit.threshold, default.threshold, equal_nan=True)


def test_bad_method_is_refused():
    with pytest.raises(tm.BadInputError, match="method"):
        tm.EpochMask(np.ones((62, 8, 8), int), method="magic")
    with pytest.raises(tm.BadInputError, match="at least 32 cells"):
        tm.EpochMask(np.ones((62, 256, 256), int), method="multiscale", x_bin=16)
    with pytest.raises(tm.BadInputError, match="method"):
        tm.TransientMasks(method="magic")


DEFECT_COLUMNS = ["EPOCH", "CCDNUM", "DETPOS", "KIND", "X0", "X1", "Y0", "Y1", "CELLS", "COUNTS",
                  "BACKGROUND", "SIGNIFICANCE"]


@pytest.mark.parametrize("method", tm.METHODS)
def test_defect_table(method):
    rng = np.random.default_rng(12)
    counts = rng.poisson(np.full((62, NY, NX), 3.0))
    counts[4, 10:30, 100] += 30  # a hot column on CCD 5: cells 10..29 of column 100
    counts[60] = 0  # CCD 61 dead
    mask = tm.EpochMask(counts, epoch="Y6", method=method)
    table = mask.defects
    assert table.colnames == DEFECT_COLUMNS
    assert table.meta["METHOD"] == method
    assert set(table["KIND"]) <= set(tm.DEFECT_KINDS)
    column = table[(table["CCDNUM"] == 5) & (table["X0"] <= 801) & (table["X1"] >= 808)]
    assert len(column) == 1 and column["KIND"][0] == "column"
    assert (column["X0"][0], column["X1"][0]) == (801, 808)  # pixels of cell 100
    assert column["Y0"][0] <= 161 and column["Y1"][0] >= 480
    assert column["COUNTS"][0] >= 20 * 30 and column["SIGNIFICANCE"][0] > 20
    dead = table[table["CCDNUM"] == 61]
    assert list(dead["KIND"]) == ["ccd"] and (dead["X0"][0], dead["X1"][0], dead["Y1"][0]) == (1, 2048, 4096)
    amp = table[table["KIND"] == "amp"]
    assert list(amp["CCDNUM"]) == [31] and amp["X0"][0] == 1025
    assert (table["DETPOS"][table["CCDNUM"] == 5] == "S26").all()
    # every masked cell but CCD 31's half and the dead CCD is inside some defect box
    covered = np.zeros(mask.mask.shape, bool)
    for row in table:
        covered[row["CCDNUM"] - 1, (row["Y0"] - 1) // 16:row["Y1"] // 16, (row["X0"] - 1) // 8:row["X1"] // 8] = True
    assert not (mask.mask & ~covered).any()


def test_transient_masks_method_and_provenance(tmp_path):
    rng = np.random.default_rng(13)
    cube = rng.poisson(np.full((62, NY, NX), 3.0))
    cube[9, 50:150, 30] += rng.poisson(1.5, 100)
    path = write_count_maps(tmp_path / "maps.fits", {"Y2E1": cube})
    masks = tm.TransientMasks(path, method="multiscale")
    assert masks.mask_for("Y2E1").method == "multiscale"
    assert ("TM_METH", "multiscale") in [card[:2] for card in masks.provenance()]
    assert masks.apply([350000], [10], [245.0], [1600.0]).tolist() == [True]  # cell (100, 30)
    assert ("METHOD", "multiscale") in [card[:2] for card in masks.mask_for("Y2E1").provenance()]


# ---- command line and history


def test_cli_writes_defects_and_regions(tmp_path):
    from regions import Regions

    rng = np.random.default_rng(14)
    cube = rng.poisson(np.full((62, NY, NX), 3.0))
    cube[6, 20:120, 200] += 20
    maps = write_count_maps(tmp_path / "maps.fits", {"Y2E1": cube})
    out = tmp_path / "masks.fits.fz"
    regions_dir = tmp_path / "regions"
    regions_dir.mkdir()
    for method, defects in (("multiscale", "defects.ecsv"), ("des", "defects.fits")):
        code = tm.main(["--epoch", "Y2E1", "--counts", maps, "--method", method, "-o", str(out),
                        "--defects", str(tmp_path / defects), "--regions", str(regions_dir), "--overwrite"])
        assert code == 0
        table = Table.read(tmp_path / defects)
        assert table.colnames == DEFECT_COLUMNS
        assert table.meta["METHOD"] == method
        ccd7 = table[table["CCDNUM"] == 7]
        hot = ccd7[(ccd7["X0"] <= 1601) & (ccd7["X1"] >= 1608)]
        assert len(hot) == 1 and hot["X0"][0] == 1601 and hot["KIND"][0] == "column"
        shapes = Regions.read(str(regions_dir / "Y2E1_CCD07_S28.reg"), format="ds9")
        assert len(shapes) == len(ccd7)
        box = shapes[list(ccd7["X0"]).index(1601)]
        assert box.center.x + 1 == pytest.approx((hot["X0"][0] + hot["X1"][0]) / 2)  # 1-indexed pixels
        assert box.width == hot["X1"][0] - hot["X0"][0] + 1
    # no overwrite: refused before any work, with exit code 2
    assert tm.main(["--epoch", "Y2E1", "--counts", maps, "-o", str(tmp_path / "new.fits.fz"),
                    "--defects", str(tmp_path / "defects.ecsv")]) == 2
    assert not (tmp_path / "new.fits.fz").exists()
    assert tm.main(["--epoch", "Y2E1", "--counts", maps, "-o", str(tmp_path / "new.fits.fz"),
                    "--defects", str(tmp_path / "defects.txt")]) == 2


def test_defect_history_lists_each_defect_once(tmp_path):
    rng = np.random.default_rng(15)
    names = ["Y1E1", "Y1E2", "Y2E1"]
    cubes = {name: rng.poisson(np.full((62, NY, NX), 3.0)) for name in names}
    for name in names[1:]:
        cubes[name][6, 20:120, 200] += rng.poisson(6.0, 100)  # a hot column from the 2nd epoch on
    cubes["Y1E1"][20, 40:44, 10:14] += 20  # a hot spot in the 1st epoch only
    maps_path = write_count_maps(tmp_path / "maps.fits", cubes)
    history = tm.defect_history(tm.CountMaps(maps_path), method="multiscale")
    column = history[(history["CCDNUM"] == 7)]
    assert len(column) == 1
    assert column["EPOCHS"][0] == "Y1E2,Y2E1" and column["N_EPOCHS"][0] == 2
    assert (column["FIRST"][0], column["LAST"][0]) == ("Y1E2", "Y2E1")
    spot = history[(history["CCDNUM"] == 21)]
    assert len(spot) == 1 and spot["EPOCHS"][0] == "Y1E1"
    assert list(history[history["KIND"] == "amp"]["N_EPOCHS"]) == [3]
    # and from the command line, with the survey summary
    out = tmp_path / "history.ecsv"
    assert tm.main(["--summary", "--counts", maps_path, "--method", "multiscale", "--plot_dir",
                    str(tmp_path), "--defects", str(out)]) == 0
    assert len(Table.read(out)) == len(history)


# ---- plots


def test_plots_name_the_method_and_compare_side_by_side(tmp_path):
    rng = np.random.default_rng(16)
    counts = rng.poisson(np.full((62, NY, NX), 3.0))
    counts[9, 50:150, 30] += rng.poisson(3.0, 100)  # a warm column: 2x, no cell stands out
    des = tm.EpochMask(counts, epoch="Y2E1")
    multiscale = tm.EpochMask(counts, epoch="Y2E1", method="multiscale")
    page = tm.plot_ccd(multiscale, 10)
    assert "multiscale method" in page._suptitle.get_text()
    assert "DES rule" in tm.plot_ccd(des, 10)._suptitle.get_text()
    figure = tm.plot_methods(des, multiscale, 10)
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles[0].startswith("DES rule") and titles[1].startswith("multiscale method")
    overlays = {artist.get_gid(): artist for ax in figure.axes for artist in ax.get_images()}
    for k, mask in enumerate((des, multiscale)):
        drawn = ~np.ma.getmaskarray(overlays[f"mask_{k}"].get_array())
        assert np.array_equal(drawn, mask.mask[9])
    assert overlays["mask_1"].get_array().count() > overlays["mask_0"].get_array().count()
    with pytest.raises(tm.BadInputError):
        tm.plot_methods(des, multiscale, 63)
    # the command line writes the comparison pages
    maps = write_count_maps(tmp_path / "maps.fits", {"Y2E1": counts})
    assert tm.main(["--plot", "Y2E1", "--counts", maps, "--plot_dir", str(tmp_path), "--compare", "10",
                    "46", "--method", "multiscale"]) == 0
    assert (tmp_path / "Y2E1_methods.pdf").exists()


@pytest.mark.parametrize("mean", [0.0005, 0.01, 0.1])
def test_sparse_maps_mask_only_the_defect(mean):
    """Maps with far fewer transients than cells (short epochs): the background
    fit must not collapse, so single counts are noise, not defects."""
    cube = np.random.default_rng(1).poisson(mean, (tm.N_CCD, 256, 256))
    cube[4, 10:60, 100] += 5
    mask = tm.EpochMask(cube, method="multiscale")
    assert mask.mask[4, 10:60, 100].all()
    kinds = sorted(mask.defects["KIND"].tolist())
    assert kinds == ["amp", "column"], kinds  # the column, and CCD 31's right half
    assert np.isfinite(tm.AmpBackground().model(cube)).all()
