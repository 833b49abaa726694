"""Tests of simulate (synthetic transient catalogs and their truth) and the demo maps."""
import os

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

import transient_masks as tm
import transient_sim as ts

EPOCHS = tm.read_epochs()
ROW = {name: row for name, row in zip(EPOCHS["NAME"], EPOCHS)}
CODE = {name: code for code, name in enumerate(ts.SIM_SOURCES)}
# A low background keeps these tests fast (about 200k events per epoch).
BACKGROUND = 0.05


@pytest.fixture(scope="module")
def sim():
    return ts.simulate(["Y1E1", "Y2E1", "Y5E1", "Y6"], seed=11, background=BACKGROUND)


def rows_of(catalog, epoch):
    row = ROW[epoch]
    keep = (catalog["EXPNUM"] >= row["MINEXPNUM"]) & (catalog["EXPNUM"] <= row["MAXEXPNUM"])
    return catalog[keep]


def test_columns_ranges_and_order(sim):
    catalog, truth = sim
    assert catalog.colnames == ["EXPNUM", "CCDNUM", "XWIN_IMAGE", "YWIN_IMAGE", "SOURCE"]
    assert truth.epochs == ["Y1E1", "Y2E1", "Y5E1", "Y6"]
    index = tm.epoch_index(catalog["EXPNUM"], EPOCHS["MINEXPNUM"], EPOCHS["MAXEXPNUM"])
    names = np.asarray(EPOCHS["NAME"])[index]
    assert (index >= 0).all() and set(names) == set(truth.epochs)
    for epoch in truth.epochs:
        expnum = rows_of(catalog, epoch)["EXPNUM"]
        assert len(np.unique(expnum)) <= truth.n_exposures[epoch]
    x, y = catalog["XWIN_IMAGE"], catalog["YWIN_IMAGE"]
    assert ((x >= 0.5) & (x < 2048.5) & (y >= 0.5) & (y < 4096.5)).all()
    assert ((catalog["CCDNUM"] >= 1) & (catalog["CCDNUM"] <= 62)).all()
    # the default populations (the richer mix, faint_column and glow, is off by default)
    assert set(np.unique(catalog["SOURCE"])) == set(range(ts.SIM_SOURCES.index("faint_column")))
    assert (np.diff(catalog["EXPNUM"]) >= 0).all()  # ordered by exposure, like DES catalogs
    # Positions are continuous, not pixel centres.
    assert np.mean(x != np.round(x)) > 0.99
    assert catalog.meta["SIMSEED"] == 11 and catalog.meta["SRC5"] == "ccd46_bulb"


def test_reproducible_from_seed_and_epoch_independent():
    one, truth_one = ts.simulate("Y2E1", seed=4, background=BACKGROUND)
    again, truth_again = ts.simulate("Y2E1", seed=4, background=BACKGROUND)
    other, _ = ts.simulate("Y2E1", seed=5, background=BACKGROUND)
    two, truth_two = ts.simulate(["Y1E1", "Y2E1"], seed=4, background=BACKGROUND)
    for name in one.colnames:
        np.testing.assert_array_equal(one[name], again[name])
        np.testing.assert_array_equal(one[name], rows_of(two, "Y2E1")[name])
    np.testing.assert_array_equal(truth_one.excess["Y2E1"], truth_again.excess["Y2E1"])
    np.testing.assert_array_equal(truth_one.excess["Y2E1"], truth_two.excess["Y2E1"])
    assert len(other) != len(one) or not np.array_equal(other["XWIN_IMAGE"], one["XWIN_IMAGE"])


def test_problem_ccds(sim):
    catalog, truth = sim
    ccd, src, x = catalog["CCDNUM"], catalog["SOURCE"], catalog["XWIN_IMAGE"]
    assert not (ccd == 61).any() and (truth.background["Y2E1"][60] == 0).all()
    # CCD 2: dead through Y2E1; alive in Y1E1 until its death in late Nov 2013.
    y1e1, y2e1, y6 = rows_of(catalog, "Y1E1"), rows_of(catalog, "Y2E1"), rows_of(catalog, "Y6")
    assert not (y2e1["CCDNUM"] == 2).any() and (truth.excess["Y2E1"][1] == 0).all()
    on_2 = y1e1["EXPNUM"][y1e1["CCDNUM"] == 2]
    assert on_2.size > 0 and on_2.max() < ROW["Y1E1"]["MAXEXPNUM"] - 2000
    assert (y6["CCDNUM"] == 2).any()
    # CCD 46 light bulb from expnum 674105 (inside Y5E1), around (795, 2620).
    bulb = catalog[src == CODE["ccd46_bulb"]]
    assert len(bulb) > 0 and (bulb["CCDNUM"] == 46).all() and (bulb["EXPNUM"] >= 674105).all()
    assert abs(np.median(bulb["XWIN_IMAGE"]) - 795) < 50 and abs(np.median(bulb["YWIN_IMAGE"]) - 2620) < 50
    assert not (rows_of(catalog, "Y2E1")["SOURCE"] == CODE["ccd46_bulb"]).any()
    assert (truth.excess["Y2E1"][45] < truth.excess["Y6"][45]).any()
    # CCD 41 amp B (x 1025-2048 on an N CCD) from expnum 765533: Y6 only.
    amp_b = catalog[src == CODE["ccd41_ampB"]]
    assert len(amp_b) > 0 and (amp_b["CCDNUM"] == 41).all() and (amp_b["EXPNUM"] >= 765533).all()
    assert (amp_b["XWIN_IMAGE"] >= 1024.5).all()
    # CCD 31: the right half (amp A) is unstable in every epoch.
    amp_31 = catalog[src == CODE["ccd31_amp"]]
    assert (amp_31["CCDNUM"] == 31).all() and (amp_31["XWIN_IMAGE"] >= 1024.5).all()
    for epoch in truth.epochs:
        assert (truth.excess[epoch][30, :, 128:] > 0).all() and (truth.excess[epoch][30, :, :128] >= 0).all()
        assert np.isin([1, 2, 3], rows_of(catalog, epoch)["SOURCE"]).all()


def test_truth_covers_every_event(sim):
    """Every defect event lies in a cell with a defect excess; astro events where background > 0."""
    catalog, truth = sim
    result = tm.gather_arrays(catalog["EXPNUM"], catalog["CCDNUM"], catalog["XWIN_IMAGE"],
                              catalog["YWIN_IMAGE"])
    assert result.n_binned == len(catalog)
    for epoch in truth.epochs:
        events = rows_of(catalog, epoch)
        defect = events[events["SOURCE"] != CODE["astro"]]
        defect_cells = tm.gather_arrays(defect["EXPNUM"], defect["CCDNUM"], defect["XWIN_IMAGE"],
                                        defect["YWIN_IMAGE"]).counts[epoch]
        assert (truth.excess[epoch][defect_cells > 0] > 0).all()
        counts = result.counts[epoch].astype(float)
        expected = truth.background[epoch] + truth.excess[epoch]
        assert (expected[counts > 0] > 0).all()
        # Totals agree with the expectation (Poisson: within 5 sigma).
        assert abs(counts.sum() - expected.sum()) < 5 * np.sqrt(expected.sum())
        per_ccd = counts.sum(axis=(1, 2)) - expected.sum(axis=(1, 2))
        assert (np.abs(per_ccd) < 6 * np.sqrt(expected.sum(axis=(1, 2))) + 3).all()
        # The defect events agree with the defect excess.
        assert abs(len(defect) - truth.excess[epoch].sum()) < 5 * np.sqrt(truth.excess[epoch].sum())


def test_rates_gradients_and_amplitudes(sim):
    _, truth = sim
    background = truth.background["Y2E1"]
    per_ccd = background.sum(axis=(1, 2))
    live = per_ccd > 0
    assert per_ccd[live].std() / per_ccd[live].mean() > 0.05  # rates differ between CCDs
    assert np.mean(background[live]) == pytest.approx(BACKGROUND, rel=0.3)
    # A gradient across each CCD: the halves differ.
    left, right = background[live, :, :128].sum(axis=(1, 2)), background[live, :, 128:].sum(axis=(1, 2))
    assert np.abs(left / right - 1).max() > 0.05
    # Defect amplitudes spread from well below to far above the background.
    ratio = truth.ratio("Y2E1")[truth.defect("Y2E1")]
    assert ratio.min() < 0.3 and ratio.max() > 10
    rates = [truth.background[e][live].sum() for e in truth.epochs]
    assert len(set(np.round(rates, 3))) == len(rates)  # rates differ between epochs


def test_bad_parameters():
    with pytest.raises(tm.BadInputError, match="'Y9'"):
        ts.simulate(["Y9"])
    with pytest.raises(tm.BadInputError, match="background"):
        ts.simulate(["Y2E1"], background=0)


def test_repeated_epoch_refused(tmp_path, capsys):
    with pytest.raises(tm.BadInputError, match="epoch 'Y2E1': given more than once"):
        ts.simulate(["Y2E1", "Y1E1", "Y2E1"], background=BACKGROUND)
    output = tmp_path / "s.fits"
    assert ts.main([str(output), "--epochs", "Y2E1", "Y2E1", "--background", "0.01"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "epoch 'Y2E1': given more than once" in err
    assert not os.listdir(tmp_path)


def test_more_exposures_than_the_epoch_holds_refused(tmp_path, capsys):
    """Exposures are distinct expnums of the epoch: more than its range holds is refused, not clamped."""
    row = ROW["Y5E1"]
    n_range = int(row["MAXEXPNUM"]) - int(row["MINEXPNUM"]) + 1
    message = (f"{n_range + 1} exposures per epoch: more than epoch Y5E1 holds (at most {n_range}, "
               f"the expnums {row['MINEXPNUM']}..{row['MAXEXPNUM']})")
    with pytest.raises(tm.BadInputError) as refused:  # Y2E1 holds that many; Y5E1 does not
        ts.simulate(["Y2E1", "Y5E1"], n_exposures=n_range + 1, background=BACKGROUND)
    assert str(refused.value) == message
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(tm.BadInputError, match="n_exposures="):
            ts.simulate("Y5E1", n_exposures=bad, background=BACKGROUND)
    # the whole range is fine: every expnum is an exposure
    catalog, truth = ts.simulate("Y5E1", n_exposures=n_range, seed=2, background=0.01)
    assert truth.n_exposures["Y5E1"] == n_range and len(np.unique(catalog["EXPNUM"])) > 0.9 * n_range
    output = tmp_path / "sim.fits"
    assert ts.main([str(output), "--exposures", "10000000000", "--background", "0.01"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    y2e1 = int(ROW["Y2E1"]["MAXEXPNUM"]) - int(ROW["Y2E1"]["MINEXPNUM"]) + 1
    assert f"10000000000 exposures per epoch: more than epoch Y2E1 holds (at most {y2e1}," in err
    assert not os.listdir(tmp_path)


def test_cli_simulate_then_gather(tmp_path, capsys):
    catalog_path = str(tmp_path / "sim.fits")
    argv = [catalog_path, "--epochs", "Y2E1", "Y6", "--seed", "3", "--background", str(BACKGROUND)]
    assert ts.main(argv) == 0
    assert "simulated transients" in capsys.readouterr().err
    expected, _ = ts.simulate(["Y2E1", "Y6"], seed=3, background=BACKGROUND)
    written = Table.read(catalog_path)
    assert len(written) == len(expected)
    for name in expected.colnames:
        np.testing.assert_array_equal(written[name], expected[name])
    assert written.meta["SIMSEED"] == 3
    maps_path = str(tmp_path / "maps.fits.gz")
    assert tm.main(["--gather", catalog_path, "--demo", "-o", maps_path, "--chunk_rows", "100000"]) == 0
    maps = tm.CountMaps(maps_path)
    assert maps.epochs == ["Y2E1", "Y6"] and maps.demo
    with fits.open(maps_path) as hdul:
        assert all(hdu.header["DEMO"] is True for hdu in hdul)
        assert hdul[1].header["SIMSEED"] == 3  # provenance carried from the catalog
    # Parquet output through astropy.
    parquet_path = str(tmp_path / "sim.parquet")
    assert ts.main([parquet_path, "--epochs", "Y2E1", "--seed", "3", "--background", str(BACKGROUND)]) == 0
    np.testing.assert_array_equal(Table.read(parquet_path)["XWIN_IMAGE"],
                                  rows_of(expected, "Y2E1")["XWIN_IMAGE"])


def test_cli_simulate_bad_epoch_exit_2_no_output(tmp_path, capsys):
    output = tmp_path / "sim.fits"
    assert ts.main([str(output), "--epochs", "Y2E1", "Y7"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "'Y7'" in err
    assert not output.exists() and not os.listdir(tmp_path)


def test_moved_modes_point_to_their_commands(capsys):
    """transient_masks --simulate / --background: a one-line pointer, exit 2."""
    for mode, command in (("--simulate", "transient_sim.py"), ("--background", "des_background.py")):
        assert tm.main([mode, "x.fits"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and command in err


def test_masks_module_does_not_import_the_other_jobs():
    """The import arrows go one way: the simulator and the background job use the masks."""
    import subprocess
    import sys

    probe = "import sys, transient_masks; print(sorted(m for m in ('transient_sim', 'des_background') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.stdout.strip() == "[]"


def test_shipped_demo_maps():
    """The demo maps: DEMO = T everywhere, Y2E1 among the epochs, usable by the core."""
    path = tm.data_path(tm.DEMO_COUNTS_FILENAME)
    assert os.path.getsize(path) < 8e6
    maps = tm.CountMaps(path)
    assert maps.demo and "Y2E1" in maps.epochs
    with fits.open(path) as hdul:
        assert all(hdu.header.get("DEMO") is True for hdu in hdul)
        assert all("SIMSEED" in hdu.header for hdu in hdul[1:])
    for epoch in maps.epochs:
        info = maps.info(epoch)
        assert (info["min_exp"], info["max_exp"]) == (ROW[epoch]["MINEXPNUM"], ROW[epoch]["MAXEXPNUM"])
    counts = maps.counts("Y2E1")
    assert counts.shape == (62, 256, 256) and counts[60].sum() == 0 and counts[1].sum() == 0
    mask = tm.EpochMask.from_maps(maps, "Y2E1")
    assert 0.005 < mask.area_fraction < 0.2


def test_richer_mix_keeps_the_default_populations():
    """Faint columns, glows across the amplifier boundary and fading defects are drawn
    from their own random streams: off, the catalog is the default one bit for bit;
    on, the default defects keep their places and amplitudes."""
    plain, plain_truth = ts.simulate(["Y2E1", "Y6"], seed=4, background=0.3)
    rich, rich_truth = ts.simulate(["Y2E1", "Y6"], seed=4, background=0.3, n_faint_columns=1.0,
                                   n_glows=5, fade=False)
    off, _ = ts.simulate(["Y2E1", "Y6"], seed=4, background=0.3, n_faint_columns=0.0, n_glows=0.0)
    for name in ("EXPNUM", "CCDNUM", "XWIN_IMAGE", "YWIN_IMAGE", "SOURCE"):
        assert np.array_equal(off[name], plain[name])
    default = rich["SOURCE"] < ts.SIM_SOURCES.index("faint_column")
    for code in range(1, ts.SIM_SOURCES.index("faint_column")):
        n_rich, n_plain = (rich["SOURCE"][default] == code).sum(), (plain["SOURCE"] == code).sum()
        assert abs(n_rich - n_plain) <= 5 * np.sqrt(n_plain) + 5
    assert (rich["SOURCE"] == CODE["faint_column"]).sum() > 0 and (rich["SOURCE"] == CODE["glow"]).sum() > 0
    glow = rich[rich["SOURCE"] == CODE["glow"]]
    assert abs(np.median(glow["XWIN_IMAGE"]) - 1024.5) < 300  # across the amplifier boundary
    # fading changes amplitudes across epochs, not the astrophysical background
    faded, faded_truth = ts.simulate(["Y2E1", "Y6"], seed=4, background=0.3, fade=True)
    assert np.array_equal(faded_truth.background["Y6"], plain_truth.background["Y6"])
    assert not np.array_equal(faded_truth.excess["Y6"], plain_truth.excess["Y6"])
