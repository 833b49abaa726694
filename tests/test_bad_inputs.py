"""Every mode of the command line against a library of bad inputs made here.

Each case asserts: exit code 2, exactly one line on stderr that names the
file, column, option or value, no traceback, nothing written in the working
directory, and every input file unchanged (sha256).
"""
import gzip
import hashlib
import io
import os

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

import transient_masks as tm
import transient_sim as ts
from conftest import write_count_maps

EPOCHS = tm.read_epochs()
Y2E1 = EPOCHS[list(EPOCHS["NAME"]).index("Y2E1")]


def _events(rng, n=400):
    """A small valid event table in Y2E1."""
    return Table({
        "EXPNUM": rng.integers(Y2E1["MINEXPNUM"], Y2E1["MAXEXPNUM"] + 1, n),
        "CCDNUM": rng.integers(1, 63, n).astype(np.int16),
        "XWIN_IMAGE": rng.uniform(0.5, 2048.4, n),
        "YWIN_IMAGE": rng.uniform(0.5, 4096.4, n),
    })


def _counts_hdu(data, name="Y2E1", **cards):
    hdu = fits.ImageHDU(data, name=name)
    hdu.header["EPOCH"] = name
    hdu.header["MIN_EXP"] = int(Y2E1["MINEXPNUM"])
    hdu.header["MAX_EXP"] = int(Y2E1["MAXEXPNUM"])
    for key, value in cards.items():
        if value is None:
            del hdu.header[key]
        else:
            hdu.header[key] = value
    return hdu


def _write_hdus(path, *hdus):
    fits.HDUList([fits.PrimaryHDU(), *hdus]).writeto(path)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """The good and bad input files, in one directory; returns its path."""
    lib = tmp_path_factory.mktemp("library")
    rng = np.random.default_rng(20261123)
    cube = rng.poisson(3.0, size=(62, 256, 256)).astype(np.uint16)
    # good inputs
    write_count_maps(lib / "maps.fits", {"Y2E1": cube})
    events = _events(rng)
    events.write(lib / "events.fits")
    events.write(lib / "events.parquet")
    EPOCHS.write(lib / "epochs.fits")
    # files that are not what their name says
    (lib / "png.fits").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (lib / "csv.fits").write_text("EXPNUM,CCDNUM\n1,2\n")
    (lib / "zero.fits").write_bytes(b"")
    (lib / "dir.fits").mkdir()
    (lib / "text.parquet").write_text("not parquet")
    (lib / "text.h5").write_text("not hdf5")
    with open(lib / "maps.fits", "rb") as whole:
        raw = whole.read()
    compressed = gzip.compress(raw, compresslevel=1)
    (lib / "cut.fits.gz").write_bytes(compressed[: len(compressed) // 2])
    (lib / "corrupt.fits.gz").write_bytes(compressed[:200] + bytes(2000) + compressed[2200:])
    (lib / "cut.fits").write_bytes(raw[: len(raw) // 2])
    # bad event tables
    bad_tables = {
        "ccd_str": {"CCDNUM": np.array(["5"] * 400)},
        "ccd_s7": {"CCDNUM": np.array(["S7"] * 400)},
        "x_str": {"XWIN_IMAGE": np.array(["1.5"] * 400)},
        "y_bool": {"YWIN_IMAGE": np.ones(400, dtype=bool)},
        "expnum_str": {"EXPNUM": np.array(["D00154912"] * 400)},
        "ccd_array": {"CCDNUM": np.ones((400, 2), dtype=np.int16)},
    }
    for name, columns in bad_tables.items():
        table = events.copy()
        for column, values in columns.items():
            table.replace_column(column, values)
        table.write(lib / f"{name}.fits")
    no_ccd = events.copy()
    no_ccd.remove_column("CCDNUM")
    no_ccd.write(lib / "no_ccdnum.fits")
    frac = events.copy()
    frac["CCDNUM"] = frac["CCDNUM"] + 0.5
    frac.write(lib / "ccd_frac.fits")
    frac.write(lib / "ccd_frac.parquet")
    # bad count maps
    _write_hdus(lib / "maps_none.fits")
    _write_hdus(lib / "maps_shape.fits", _counts_hdu(cube[:61]))
    _write_hdus(lib / "maps_zero.fits", _counts_hdu(np.zeros((62, 0, 0), dtype=np.int16)))
    _write_hdus(lib / "maps_grid.fits", _counts_hdu(cube[:, :, :100]))
    _write_hdus(lib / "maps_float.fits", _counts_hdu(cube.astype(np.float32)))
    _write_hdus(lib / "maps_negative.fits", _counts_hdu(cube.astype(np.int16) - 5))
    _write_hdus(lib / "maps_minexp_str.fits", _counts_hdu(cube, MIN_EXP="abc"))
    _write_hdus(lib / "maps_no_minexp.fits", _counts_hdu(cube, MIN_EXP=None))
    _write_hdus(lib / "maps_backwards.fits", _counts_hdu(cube, MIN_EXP=int(Y2E1["MAXEXPNUM"]) + 1))
    _write_hdus(lib / "maps_no_name.fits", _counts_hdu(cube, EPOCH=None, EXTNAME=None))
    # bad epoch tables
    EPOCHS[:0].write(lib / "epochs_empty.fits")
    _write_hdus(lib / "epochs_image.fits", fits.ImageHDU(np.zeros((3, 3))))
    EPOCHS.write(lib / "epochs.csv", format="ascii.csv")
    text_min = EPOCHS.copy()
    text_min["MINEXPNUM"] = text_min["MINEXPNUM"].astype(str)
    text_min.write(lib / "epochs_text_min.fits")
    no_max = EPOCHS.copy()
    no_max.remove_column("MAXEXPNUM")
    no_max.write(lib / "epochs_no_max.fits")
    backwards = EPOCHS.copy()
    backwards["MINEXPNUM"][3] = backwards["MAXEXPNUM"][3] + 10
    backwards.write(lib / "epochs_backwards.fits")
    float_min = EPOCHS.copy()
    float_min["MINEXPNUM"] = float_min["MINEXPNUM"] + 0.5
    float_min.write(lib / "epochs_float_min.fits")
    # outputs that are not files
    os.mkfifo(lib / "fifo.fits")
    return lib


def _snapshot(directory):
    """sha256 of every regular file below ``directory`` (FIFOs are left unread)."""
    digests = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            if os.path.isfile(path):
                with open(path, "rb") as stream:
                    digests[path] = hashlib.sha256(stream.read()).hexdigest()
    return digests


# ---- The cases: (id, command, argv with {lib} for the library, text the line must hold)

GENERIC_BAD = ["png.fits", "csv.fits", "zero.fits", "dir.fits", "text.parquet", "text.h5",
               "cut.fits.gz", "corrupt.fits.gz", "missing.fits"]
BAD_MAPS = ["maps_none.fits", "maps_shape.fits", "maps_zero.fits", "maps_grid.fits", "maps_float.fits",
            "maps_negative.fits", "maps_minexp_str.fits", "maps_no_minexp.fits", "maps_backwards.fits",
            "maps_no_name.fits", "cut.fits"]
BAD_EPOCHS = ["epochs_empty.fits", "epochs_image.fits", "epochs.csv", "epochs_text_min.fits",
              "epochs_no_max.fits", "epochs_backwards.fits", "epochs_float_min.fits"]
BAD_TABLES = ["ccd_str.fits", "ccd_s7.fits", "x_str.fits", "y_bool.fits", "expnum_str.fits",
              "ccd_array.fits", "no_ccdnum.fits"]
MAPS = ["--counts", "{lib}/maps.fits"]


def _mode_cases():
    cases = []
    epoch = ["--epoch", "Y2E1", *MAPS]
    filter_ = ["--input", "{lib}/events.fits", *MAPS, "-o", "out.fits"]
    gather = ["--gather", "{lib}/events.fits", "-o", "maps_out.fits"]
    plot = ["--plot", "Y2E1", *MAPS]
    summary = ["--summary", *MAPS]
    simulate = ["sim.fits", "--background", "0.01"]
    # a bad file in every role that reads one
    for name in GENERIC_BAD:
        path = f"{{lib}}/{name}"
        cases += [
            (f"input-table-{name}", "tm", ["--input", path, *MAPS, "-o", "out.fits"], name),
            (f"gather-catalog-{name}", "tm", ["--gather", path, "-o", "maps_out.fits"], name),
            (f"epoch-counts-{name}", "tm", ["--epoch", "Y2E1", "--counts", path], name),
            (f"input-counts-{name}", "tm", ["--input", "{lib}/events.fits", "--counts", path, "-o", "o.fits"], name),
            (f"plot-counts-{name}", "tm", ["--plot", "Y2E1", "--counts", path], name),
            (f"summary-counts-{name}", "tm", ["--summary", "--counts", path], name),
            (f"input-epochs-{name}", "tm", [*filter_, "--epochs_file", path], name),
            (f"gather-epochs-{name}", "tm", [*gather, "--epochs_file", path], name),
            (f"simulate-epochs-{name}", "ts", [*simulate, "--epochs_file", path], name),
        ]
    for name in BAD_MAPS:
        path = f"{{lib}}/{name}"
        cases += [(f"epoch-maps-{name}", "tm", ["--epoch", "Y2E1", "--counts", path], name),
                  (f"input-maps-{name}", "tm", ["--input", "{lib}/events.fits", "--counts", path,
                                                "-o", "o.fits"], name),
                  (f"plot-maps-{name}", "tm", ["--plot", "Y2E1", "--counts", path], name)]
    for name in BAD_EPOCHS:
        path = f"{{lib}}/{name}"
        cases += [(f"epoch-epochs-{name}", "tm", [*epoch, "--epochs_file", path], name),
                  (f"input-epochs-{name}", "tm", [*filter_, "--epochs_file", path], name),
                  (f"gather-epochs-{name}", "tm", [*gather, "--epochs_file", path], name),
                  (f"simulate-epochs-{name}", "ts", [*simulate, "--epochs_file", path], name)]
    column = {"ccd_str.fits": "CCDNUM", "ccd_s7.fits": "CCDNUM", "x_str.fits": "XWIN_IMAGE",
              "y_bool.fits": "YWIN_IMAGE", "expnum_str.fits": "EXPNUM", "ccd_array.fits": "CCDNUM",
              "no_ccdnum.fits": "CCDNUM"}
    for name in BAD_TABLES:
        path = f"{{lib}}/{name}"
        cases += [(f"input-{name}", "tm", ["--input", path, *MAPS, "-o", "out.fits"], column[name]),
                  (f"input-csv-out-{name}", "tm", ["--input", path, *MAPS, "-o", "out.csv"], column[name]),
                  (f"gather-{name}", "tm", ["--gather", path, "-o", "maps_out.fits"], column[name])]
    # bad rows: --input stops (naming the rows) where --gather skips and counts them
    cases += [("input-fractional-ccdnum", "tm", ["--input", "{lib}/ccd_frac.fits", *MAPS], "400 bad row(s)"),
              ("input-fractional-ccdnum-parquet", "tm", ["--input", "{lib}/ccd_frac.parquet", *MAPS],
               "400 bad row(s)")]
    # options and values
    for mode, argv in (("epoch", epoch), ("input", filter_), ("plot", plot), ("summary", summary)):
        cases += [
            (f"{mode}-fp_rate-0", "tm", [*argv, "--fp_rate", "0"], "fp_rate"),
            (f"{mode}-fp_rate-2", "tm", [*argv, "--fp_rate", "2"], "fp_rate"),
            (f"{mode}-fp_rate-nan", "tm", [*argv, "--fp_rate", "nan"], "fp_rate"),
            (f"{mode}-fp_rate-text", "tm", [*argv, "--fp_rate", "often"], "fp_rate"),
            (f"{mode}-x_bin-3", "tm", [*argv, "--x_bin", "3"], "x_bin=3"),
            (f"{mode}-x_bin-0", "tm", [*argv, "--x_bin", "0"], "x_bin"),
            (f"{mode}-y_shrink-5", "tm", [*argv, "--y_shrink", "5"], "y_bin=5"),
            (f"{mode}-floor", "tm", [*argv, "--floor", "mode"], "--floor"),
            (f"{mode}-unknown-option", "tm", [*argv, "--fp-rate", "1e-3"], "--fp-rate"),
        ]
    for mode, argv in (("epoch", epoch), ("input", filter_), ("gather", gather)):
        cases += [(f"{mode}-second-mode", "tm", [*argv, "--summary"], "not allowed with argument")]
    cases += [
        ("epoch-unknown", "tm", ["--epoch", "Y9", *MAPS], "'Y9'"),
        ("epoch-empty-name", "tm", ["--epoch", "", *MAPS], "--epoch"),
        ("epoch-masked-value-text", "tm", [*epoch, "--masked_value", "NOTABIT"], "NOTABIT"),
        ("epoch-masked-value-big", "tm", [*epoch, "--masked_value", "70000"], "masked_value=70000"),
        ("epoch-out-dir", "tm", [*epoch, "-o", "{lib}/dir.fits", "--overwrite"], "dir.fits"),
        ("epoch-out-fifo", "tm", [*epoch, "-o", "{lib}/fifo.fits", "--overwrite"], "fifo.fits"),
        ("epoch-out-empty", "tm", [*epoch, "-o", ""], "empty output file name"),
        ("epoch-out-counts", "tm", [*epoch, "-o", "{lib}/maps.fits", "--overwrite"], "maps.fits"),
        ("epoch-out-epochs", "tm", [*epoch, "--epochs_file", "{lib}/epochs.fits", "-o", "{lib}/epochs.fits",
                                    "--overwrite"], "epochs.fits"),
        ("epoch-out-no-dir", "tm", [*epoch, "-o", "nowhere/masks.fits.fz"], "nowhere"),
        ("input-empty-name", "tm", ["--input", "", *MAPS], "empty file name"),
        ("input-no-column", "tm", [*filter_, "--x_col", "XPOS"], "XPOS"),
        ("input-format-unknown", "tm", [*filter_, "--format", "foo"], "'foo'"),
        ("input-out-extension", "tm", ["--input", "{lib}/events.fits", *MAPS, "-o", "out.xyz"], ".xyz"),
        ("input-out-input", "tm", ["--input", "{lib}/events.fits", *MAPS, "-o", "{lib}/events.fits",
                                   "--overwrite"], "events.fits"),
        ("input-out-counts", "tm", ["--input", "{lib}/events.fits", *MAPS, "-o", "{lib}/maps.fits",
                                    "--overwrite"], "maps.fits"),
        ("input-out-epochs", "tm", [*filter_[:-2], "--epochs_file", "{lib}/epochs.fits", "-o",
                                    "{lib}/epochs.fits", "--overwrite"], "epochs.fits"),
        ("input-out-dir", "tm", [*filter_[:-2], "-o", "{lib}/dir.fits", "--overwrite"], "dir.fits"),
        ("input-out-fifo", "tm", [*filter_[:-2], "-o", "{lib}/fifo.fits", "--overwrite"], "fifo.fits"),
        ("input-out-empty", "tm", [*filter_[:-2], "-o", ""], "empty output file name"),
        ("gather-chunk-0", "tm", [*gather, "--chunk_rows", "0"], "--chunk_rows"),
        ("gather-out-input", "tm", ["--gather", "{lib}/events.fits", "-o", "{lib}/events.fits",
                                    "--overwrite"], "events.fits"),
        ("gather-out-epochs", "tm", [*gather[:-2], "--epochs_file", "{lib}/epochs.fits", "-o",
                                     "{lib}/epochs.fits", "--overwrite"], "epochs.fits"),
        ("gather-out-dir", "tm", [*gather[:-2], "-o", "{lib}/dir.fits", "--overwrite"], "dir.fits"),
        ("gather-no-column", "tm", [*gather, "--ccdnum_col", "CCD"], "'CCD'"),
        ("gather-format-unknown", "tm", [*gather, "--format", "foo"], "'foo'"),
        ("plot-unknown-epoch", "tm", ["--plot", "Y9", *MAPS], "'Y9'"),
        ("plot-dir-missing", "tm", [*plot, "--plot_dir", "nowhere"], "nowhere"),
        ("plot-dir-file", "tm", [*plot, "--plot_dir", "{lib}/maps.fits"], "maps.fits"),
        ("summary-dir-missing", "tm", [*summary, "--plot_dir", "nowhere"], "nowhere"),
        ("no-mode", "tm", [*MAPS], "one of the arguments"),
        ("moved-simulate", "tm", ["--simulate", "sim.fits"], "transient_sim.py"),
        ("moved-background", "tm", ["--background", "--info", "x.yaml"], "des_background.py"),
        ("simulate-seed-negative", "ts", [*simulate, "--seed", "-3"], "seed=-3"),
        ("simulate-seed-text", "ts", [*simulate, "--seed", "abc"], "--seed"),
        ("simulate-background-inf", "ts", ["sim.fits", "--background", "inf"], "background=inf"),
        ("simulate-background-nan", "ts", ["sim.fits", "--background", "nan"], "background=nan"),
        ("simulate-background-zero", "ts", ["sim.fits", "--background", "0"], "background=0"),
        ("simulate-background-huge", "ts", ["sim.fits", "--background", "1e9"], "background="),
        ("simulate-epoch-unknown", "ts", [*simulate, "--epochs", "Y9"], "'Y9'"),
        ("simulate-epoch-empty", "ts", [*simulate, "--epochs", ""], "''"),
        ("simulate-exposures-0", "ts", [*simulate, "--exposures", "0"], "--exposures"),
        ("simulate-out-extension", "ts", ["sim.xyz", "--background", "0.01"], ".xyz"),
        ("simulate-out-empty", "ts", ["", "--background", "0.01"], "empty output file name"),
        ("simulate-out-dir", "ts", ["{lib}/dir.fits", "--background", "0.01", "--overwrite"], "dir.fits"),
        ("simulate-out-fifo", "ts", ["{lib}/fifo.fits", "--background", "0.01", "--overwrite"], "fifo.fits"),
        ("simulate-out-epochs", "ts", ["{lib}/epochs.fits", "--epochs_file", "{lib}/epochs.fits",
                                       "--overwrite"], "epochs.fits"),
        ("simulate-out-default-epochs", "ts", [tm.data_path(tm.EPOCHS_FILENAME), "--overwrite"],
         tm.EPOCHS_FILENAME),
        ("simulate-out-no-dir", "ts", ["nowhere/sim.fits", "--background", "0.01"], "nowhere"),
        ("simulate-no-output", "ts", ["--background", "0.01"], "CATALOG"),
    ]
    return cases


CASES = _mode_cases()


def test_the_library_covers_every_mode():
    modes = {argv[0] for _, command, argv, _ in CASES if command == "tm"}
    assert {"--epoch", "--input", "--gather", "--plot", "--summary"} <= modes
    assert any(command == "ts" for _, command, _, _ in CASES)
    assert len(CASES) >= 150


@pytest.mark.parametrize("command, argv, text", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_exit_2_one_line_nothing_written(library, tmp_path, monkeypatch, capsys, command, argv, text):
    monkeypatch.chdir(tmp_path)
    argv = [arg.replace("{lib}", str(library)) for arg in argv]
    before = _snapshot(library)
    main = tm.main if command == "tm" else ts.main
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "unexpected failure" not in err
    assert text in lines[0], lines[0]
    assert os.listdir(tmp_path) == [], "wrote files"
    assert _snapshot(library) == before, "changed an input"


def test_gather_skips_the_bad_rows_that_input_refuses(library, tmp_path, monkeypatch, capsys):
    """One rule: the rows --input refuses (fractional CCDNUM) are the rows --gather skips."""
    monkeypatch.chdir(tmp_path)
    for name in ("ccd_frac.fits", "ccd_frac.parquet"):
        # every row bad: nothing to write, which is an error of its own
        assert tm.main(["--gather", str(library / name), "-o", f"{name}.maps.fits"]) == 2
        assert "no event is in an epoch of the table (400 rows read, 400 bad, 0 in no epoch)" in (
            capsys.readouterr().err)
        assert not os.path.exists(f"{name}.maps.fits")
        assert tm.main(["--input", str(library / name), *MAPS[:1], str(library / "maps.fits"),
                        "--drop_bad", "-o", f"{name}.kept.fits"]) == 0
        assert "400 bad rows dropped, 0 written" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".parquet", ".fits"])
def test_nulls_are_bad_rows_in_both_modes(tmp_path, monkeypatch, capsys, rng, suffix):
    """A NULL EXPNUM, CCDNUM or position makes its row bad, in --input and --gather alike."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)
    events = _events(rng, 40)
    nulls = {"EXPNUM": 3, "CCDNUM": 5, "XWIN_IMAGE": 7}
    path = f"nulls{suffix}"
    if suffix == ".parquet":  # real Parquet nulls
        arrays = {name: pa.array(np.asarray(events[name]), mask=np.isin(np.arange(40), [nulls.get(name, -1)]))
                  for name in events.colnames}
        pq.write_table(pa.table(arrays), path)
    else:  # FITS: TNULL for the integer columns, NaN for the float one
        table = Table(events, masked=True)
        for name, row in nulls.items():
            table[name].mask[row] = True
        table.write(path)
    write_count_maps(tmp_path / "maps.fits", {"Y2E1": np.ones((62, 256, 256), dtype=np.uint16)})
    assert tm.main(["--gather", path, "-o", "g.fits"]) == 0
    assert "3 bad rows skipped" in capsys.readouterr().err
    assert tm.main(["--input", path, "--counts", "maps.fits", "-o", f"k{suffix}"]) == 2
    assert "3 bad row(s)" in capsys.readouterr().err


def test_uint64_expnum_works(tmp_path, monkeypatch, capsys, rng):
    """EXPNUM stored as uint64 (astropy writes it with TZERO = 2**63) is read in both modes."""
    monkeypatch.chdir(tmp_path)
    events = _events(rng, 50)
    events["EXPNUM"] = events["EXPNUM"].astype(np.uint64)
    events.write("u64.fits")
    write_count_maps(tmp_path / "maps.fits", {"Y2E1": np.ones((62, 256, 256), dtype=np.uint16)})
    assert tm.main(["--input", "u64.fits", "--counts", "maps.fits", "-o", "kept.fits"]) == 0
    assert "50 events read" in capsys.readouterr().err
    assert Table.read("kept.fits")["EXPNUM"].dtype == np.uint64
    assert tm.main(["--gather", "u64.fits", "-o", "g.fits"]) == 0
    assert tm.CountMaps("g.fits").counts("Y2E1").sum() == 50


def test_non_ascii_file_names_go_into_headers_escaped(tmp_path, monkeypatch, rng):
    monkeypatch.chdir(tmp_path)
    maps = write_count_maps(tmp_path / "cartes_été.fits", {"Y2E1": np.ones((62, 256, 256), dtype=np.uint16)})
    _events(rng, 30).write("événements.fits")
    assert tm.main(["--epoch", "Y2E1", "--counts", maps, "-o", "masques_été.fits.fz"]) == 0
    assert fits.getheader("masques_été.fits.fz")["COUNTS"] == "cartes_\\xe9t\\xe9.fits"
    assert tm.main(["--input", "événements.fits", "--counts", maps, "-o", "gardés.fits"]) == 0
    assert tm.main(["--gather", "événements.fits", "-o", "cartes.fits"]) == 0
    assert fits.getheader("cartes.fits")["INPUT1"] == "\\xe9v\\xe9nements.fits"


def test_count_map_cell_of_2_40_does_not_allocate_a_table(tmp_path):
    cube = np.full((62, 256, 256), 3, dtype=np.int64)
    cube[4, 10, 10] = 2**40
    mask = tm.EpochMask(cube)
    assert mask.mode[4] == 3 and mask.mask[4, 10, 10] and mask.mask[4].sum() == 1


def test_gather_file_given_twice_is_read_once(tmp_path, monkeypatch, capsys, rng):
    monkeypatch.chdir(tmp_path)
    _events(rng, 25).write("e.fits")
    assert tm.main(["--gather", "e.fits", "./e.fits", "-o", "g.fits"]) == 0
    err = capsys.readouterr().err
    assert "given more than once" in err and "25 rows read" in err


def test_plot_refuses_before_writing_any_figure(tmp_path, monkeypatch, capsys):
    """An existing third output: --plot refuses before writing the first two."""
    monkeypatch.chdir(tmp_path)
    maps = write_count_maps(tmp_path / "maps.fits", {"Y2E1": np.ones((62, 256, 256), dtype=np.uint16)})
    (tmp_path / "Y2E1_focal_plane.pdf").write_text("keep me")
    assert tm.main(["--plot", "Y2E1", "--counts", maps]) == 2
    assert "Y2E1_focal_plane.pdf: output exists" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["Y2E1_focal_plane.pdf", "maps.fits"]


def test_des_option_names_are_aliases(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    counts = np.random.default_rng(2).poisson(3.0, size=(62, 256, 256))
    assert tm.EpochMask(counts, x_shrink=2, y_shrink=4).counts.shape == (62, 64, 128)
    with pytest.raises(tm.BadInputError, match="x_shrink is the DES name of x_bin"):
        tm.EpochMask(counts, x_bin=4, x_shrink=2)
    masks = tm.TransientMasks(tm.data_path(tm.DEMO_COUNTS_FILENAME), default=True)
    assert masks.keep_no_epoch
    maps = write_count_maps(tmp_path / "maps.fits", {"Y2E1": counts.astype(np.uint16)})
    assert tm.main(["--epoch", "Y2E1", "--counts", maps, "--x_shrink", "2", "-o", "m.fits.fz"]) == 0
    assert fits.getheader("m.fits.fz")["X_BIN"] == 2


def test_corrupt_gzip_catalog_in_gather_is_an_error(tmp_path, monkeypatch, capsys, rng):
    """A gzip FITS catalog cut short mid-data (streamed by gather) is an error, not fewer rows."""
    monkeypatch.chdir(tmp_path)
    buffer = io.BytesIO()
    _events(rng, 20000).write(buffer, format="fits")
    compressed = gzip.compress(buffer.getvalue())
    (tmp_path / "cut.fits.gz").write_bytes(compressed[: len(compressed) * 3 // 4])
    assert tm.main(["--gather", "cut.fits.gz", "-o", "g.fits"]) == 2
    err = capsys.readouterr().err
    assert "cut.fits.gz" in err and len(err.strip().splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["cut.fits.gz"]


def _refused_in_one_line(directory, capsys, cases):
    """Each (argv, text) of ``cases``: exit 2, one line on stderr holding the text, nothing written."""
    before = sorted(os.listdir(directory))
    for argv, said in cases:
        assert tm.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and said in err, (argv, err)
    assert sorted(os.listdir(directory)) == before


def test_damaged_tables_and_ambiguous_names_are_bad_input(tmp_path, monkeypatch, capsys, rng):
    """Found by an audit: each was a traceback, or a file silently taken one way."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)
    cube = rng.poisson(3.0, size=(62, 256, 256)).astype(np.uint16)
    write_count_maps(tmp_path / "maps.fits", {"Y2E1": cube})
    cases = []
    # a Parquet file whose pages are damaged (its footer intact)
    pq.write_table(pa.table({name: np.asarray(column) for name, column in _events(rng, 20000).items()}),
                   "damaged.parquet", compression="snappy")
    data = bytearray((tmp_path / "damaged.parquet").read_bytes())
    data[2000:60000] = rng.integers(0, 256, 58000, dtype=np.uint8).tobytes()
    (tmp_path / "damaged.parquet").write_bytes(bytes(data))
    cases += [(["--input", "damaged.parquet", "--counts", "maps.fits", "-o", "out.parquet"], "damaged.parquet: damaged Parquet data"),
              (["--gather", "damaged.parquet", "-o", "out.fits"], "damaged.parquet: damaged Parquet data")]
    # epoch tables with a repeated, an empty, or an undecodable NAME
    for name, names in [("twice", [b"Y2E1", b"Y2E1"]), ("empty", [b"Y2E1", b" "]), ("bytes", [b"Y2E1", b"\xff\xfe"])]:
        Table({"NAME": np.array(names, dtype="S8"), "MINEXPNUM": [345031, 400000],
               "MAXEXPNUM": [382973, 500000]}).write(f"{name}.fits")
        said = "holds bytes that are not text" if name == "bytes" else "must name each epoch once, and not be empty"
        cases.append((["--epoch", "Y2E1", "--counts", "maps.fits", "--epochs_file", f"{name}.fits"], said))
    # a count-map file with one epoch twice
    _write_hdus("twice_maps.fits", _counts_hdu(cube), _counts_hdu(cube))
    cases.append((["--epoch", "Y2E1", "--counts", "twice_maps.fits"], "HDUs 1 and 2 are both epoch 'Y2E1'"))
    # a chunk size no reader takes
    _events(rng).write("events.fits")
    cases.append((["--gather", "events.fits", "-o", "m.fits", "--chunk_rows", "99999999999999999999"],
                  "at most 1073741824 rows a chunk"))
    _refused_in_one_line(tmp_path, capsys, cases)
    with pytest.raises(tm.BadInputError, match="chunk_rows=.*must be in 1..1073741824"):
        tm.gather_data("events.fits", chunk_rows=1 << 40)


def test_fits_files_cut_inside_a_header_are_one_line_errors(tmp_path, monkeypatch, capsys, rng):
    """A file cut in the middle of a header (astropy: a several-line warning, then
    "no table HDU"): one line naming the file and the damaged HDU, in every role."""
    monkeypatch.chdir(tmp_path)
    cube = rng.poisson(3.0, size=(62, 256, 256)).astype(np.uint16)
    write_count_maps(tmp_path / "maps.fits", {"Y2E1": cube})
    _events(rng).write("events.fits")
    EPOCHS.write("epochs.fits")
    for name in ("maps", "events", "epochs"):
        raw = (tmp_path / f"{name}.fits").read_bytes()
        (tmp_path / f"{name}_cut.fits").write_bytes(raw[: 2880 + 1000])  # inside HDU 1's header
    cases = [
        (["--input", "events_cut.fits", "--counts", "maps.fits", "-o", "out.fits"], "events_cut.fits"),
        (["--gather", "events_cut.fits", "-o", "out.fits"], "events_cut.fits"),
        (["--input", "events.fits", "--counts", "maps_cut.fits", "-o", "out.fits"], "maps_cut.fits"),
        (["--epoch", "Y2E1", "--counts", "maps_cut.fits"], "maps_cut.fits"),
        (["--epoch", "Y2E1", "--counts", "maps.fits", "--epochs_file", "epochs_cut.fits"], "epochs_cut.fits"),
    ]
    before = sorted(os.listdir(tmp_path))
    for argv, named in cases:
        assert tm.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1, (argv, err)
        assert f"{named}: not a readable" in err and "damaged header of HDU 1, counted from 0" in err, (argv, err)
    assert sorted(os.listdir(tmp_path)) == before


def _replace_card(path, key, card):
    """Rewrite the header card ``key`` of HDU 1 of a FITS file as the raw 80-byte ``card``."""
    raw = bytearray(path.read_bytes())
    start = raw.find(key.ljust(8).encode() + b"=", 2880)
    raw[start:start + 80] = card.ljust(80).encode()
    path.write_bytes(bytes(raw))


def test_damaged_headers_scalings_and_codecs_are_bad_input(tmp_path, monkeypatch, capsys, rng):
    """Found by a second audit: each was exit 1 (an astropy, numpy or pyarrow exception)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)
    cube = rng.poisson(3.0, size=(62, 256, 256)).astype(np.uint16)
    write_count_maps(tmp_path / "maps.fits", {"Y2E1": cube})
    cases = []
    # count maps: a MIN_EXP card astropy cannot parse; a tile-compressed HDU with a damaged tile
    write_count_maps(tmp_path / "nan_card.fits", {"Y2E1": cube})
    _replace_card(tmp_path / "nan_card.fits", "MIN_EXP", "MIN_EXP = 34@5031 / junk")
    cases.append((["--epoch", "Y2E1", "--counts", "nan_card.fits"],
                  "nan_card.fits: HDU 1 (Y2E1): the MIN_EXP card is not readable"))
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(cube, header=_counts_hdu(cube).header)]).writeto("tiles.fits")
    raw = bytearray((tmp_path / "tiles.fits").read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 4000] = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    (tmp_path / "tiles.fits").write_bytes(bytes(raw))
    cases.append((["--epoch", "Y2E1", "--counts", "tiles.fits"], "tiles.fits: HDU 1 (Y2E1): counts not readable"))
    # event tables: a TZERO that is text, or that no integer column can take
    events = _events(rng)
    for name, card in [("text", "TZERO2  = 'abc'"), ("huge", "TZERO1  = 9223372036854775808")]:
        table = events.copy()
        table["EXPNUM"] = table["EXPNUM"].astype(np.int32)
        hdu = fits.table_to_hdu(table)
        hdu.header["TZERO1"] = hdu.header["TZERO2"] = 0  # placeholders, rewritten as raw cards below
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(f"tzero_{name}.fits")
        _replace_card(tmp_path / f"tzero_{name}.fits", card[:6], card)
    said = "column 'CCDNUM': TZERO = 'abc' is not a finite number"
    cases += [(["--input", "tzero_text.fits", "--counts", "maps.fits", "-o", "out.fits"], said),
              (["--gather", "tzero_text.fits", "-o", "out.fits"], said),
              (["--gather", "tzero_huge.fits", "-o", "out.fits"], "tzero_huge.fits: 400 rows read")]
    # a Parquet column of pyarrow's null type: every row is bad, as NULLs make it
    pq.write_table(pa.table({"EXPNUM": np.asarray(events["EXPNUM"]), "CCDNUM": pa.nulls(len(events)),
                             "XWIN_IMAGE": np.asarray(events["XWIN_IMAGE"]),
                             "YWIN_IMAGE": np.asarray(events["YWIN_IMAGE"])}), "null_type.parquet")
    cases.append((["--input", "null_type.parquet", "--counts", "maps.fits", "-o", "out.parquet"],
                  "null_type.parquet: 400 bad row(s)"))
    # an output name longer than the directory takes: refused before the work
    cases.append((["--gather", "null_type.parquet", "-o", "g" * 300 + ".fits"], "file name longer than"))
    before = sorted(os.listdir(tmp_path))
    for argv, said in cases:
        assert tm.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert said in err and "unexpected" not in err, (argv, err)
        if "tzero_huge" not in argv[1]:  # (that one reads, then finds no good row)
            assert len(err.splitlines()) == 1, (argv, err)
    assert sorted(os.listdir(tmp_path)) == before


def test_one_file_through_a_hard_link_is_gathered_once(tmp_path, rng):
    _events(rng).write(tmp_path / "events.fits")
    os.link(tmp_path / "events.fits", tmp_path / "linked.fits")
    result = tm.gather_data([str(tmp_path / "events.fits"), str(tmp_path / "linked.fits")])
    assert result.n_read == 400


def test_demo_keyword_is_read_as_a_fits_logical(tmp_path, rng):
    cube = rng.poisson(3.0, size=(62, 256, 256)).astype(np.uint16)
    for value, demo in [(True, True), (False, False), ("F", False), ("T", True)]:
        _write_hdus(tmp_path / f"maps_{value}.fits", _counts_hdu(cube, DEMO=value))
        maps = tm.CountMaps(str(tmp_path / f"maps_{value}.fits"))
        assert maps.demo is demo and maps.info("Y2E1")["demo"] is demo, value


def test_empty_names_bad_ccds_and_outputs_named_as_other_formats_are_refused_first(
        tmp_path, monkeypatch, capsys, rng):
    """Found by a second audit: an empty --counts or --scheduler was taken or named as 'path',
    --compare 0 was refused after a PDF was written, and FITS outputs named .csv or .bz2 were
    written as FITS."""
    monkeypatch.chdir(tmp_path)
    write_count_maps(tmp_path / "maps.fits", {"Y2E1": rng.poisson(3.0, size=(62, 256, 256)).astype(np.uint16)})
    _events(rng).write("events.fits")
    cases = [(["--epoch", "Y2E1", f"--{option}", " "], f"argument --{option}: empty")
             for option in ("counts", "epochs_file", "defects", "regions")]
    cases += [
        (["--input", "events.fits", "events.fits", "--scheduler", "", "-o", "out"], "argument --scheduler: empty"),
        (["--plot", "Y2E1", "--counts", "maps.fits", "--compare", "5", "0"], "argument --compare: 0: CCD numbers"),
        (["--epoch", "Y2E1", "--counts", "maps.fits", "-o", "masks.csv"], "masks.csv: masks are written as FITS"),
        (["--gather", "events.fits", "-o", "maps.fits.bz2"], "maps.fits.bz2: count maps are written as FITS"),
        (["--gather", "events.fits", "-o", "maps.parquet"], "maps.parquet: count maps are written as FITS"),
    ]
    _refused_in_one_line(tmp_path, capsys, cases)


def test_output_format_follows_the_output_extension_over_format(tmp_path, monkeypatch, counts_file, rng):
    monkeypatch.chdir(tmp_path)
    _events(rng).write("events.txt", format="ascii.csv")
    for output, fmt in [("kept.parquet", "parquet"), ("kept.fits", "fits"), ("kept.dat", "ascii.csv"),
                        ("kept.csv", "ascii.csv")]:
        assert tm.main(["--input", "events.txt", "--format", "ascii.csv", "--counts", counts_file,
                        "-o", output]) == 0
        assert len(Table.read(output, format=fmt)) > 300, output


def test_a_file_is_never_replaced_by_an_output_directory(tmp_path, monkeypatch, capsys, rng):
    """Found by a second audit: -o naming a file (or a link to one) with --overwrite and several
    inputs replaced it by the output directory."""
    monkeypatch.chdir(tmp_path)
    write_count_maps(tmp_path / "maps.fits", {"Y2E1": rng.poisson(3.0, size=(62, 256, 256)).astype(np.uint16)})
    _events(rng).write("a.fits")
    _events(rng).write("b.fits")
    (tmp_path / "notes.txt").write_text("keep me")
    os.symlink("notes.txt", "link")
    for output in ("notes.txt", "link"):
        assert tm.main(["--input", "a.fits", "b.fits", "--counts", "maps.fits", "-o", output, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert f"{output}: exists and is not a directory" in err and len(err.splitlines()) == 1
    assert os.path.islink("link") and (tmp_path / "notes.txt").read_text() == "keep me"


def test_fits_files_compressed_other_than_gzip_are_read_as_their_content(tmp_path, monkeypatch, capsys, rng):
    """Found by a second audit: a bzip2 or xz FITS table (astropy reads them) was streamed from
    its compressed bytes (garbage rows, or 'truncated'), and a cut bzip2 count-map file was
    read as one with fewer epochs."""
    import bz2
    import lzma
    import zipfile

    monkeypatch.chdir(tmp_path)
    cube = rng.poisson(3.0, size=(62, 256, 256)).astype(np.uint16)
    write_count_maps(tmp_path / "maps.fits", {"Y2E1": cube})
    _events(rng, 2000).write("plain.fits")
    raw = (tmp_path / "plain.fits").read_bytes()
    (tmp_path / "bzip2.fits").write_bytes(bz2.compress(raw))
    (tmp_path / "xz.fits").write_bytes(lzma.compress(raw))
    with zipfile.ZipFile(tmp_path / "zip.fits", "w") as archive:
        archive.writestr("plain.fits", raw)
    masks = tm.TransientMasks("maps.fits")
    expected = tm.filter_file("plain.fits", "plain_out.fits", masks)
    maps = tm.gather_data("plain.fits").counts["Y2E1"]
    for name in ("bzip2", "xz", "zip"):
        counts = tm.filter_file(f"{name}.fits", f"{name}_out.fits", masks)
        assert vars(counts) == vars(expected), name
        assert Table.read(f"{name}_out.fits").as_array().tobytes() == Table.read("plain_out.fits").as_array().tobytes()
        np.testing.assert_array_equal(tm.gather_data(f"{name}.fits").counts["Y2E1"], maps)
    # cut short: an error, never fewer rows or epochs
    (tmp_path / "cut.fits").write_bytes(bz2.compress(raw)[:-300])
    (tmp_path / "cut_maps.fits.bz2").write_bytes(bz2.compress((tmp_path / "maps.fits").read_bytes())[:-3000])
    for argv, said in [(["--input", "cut.fits", "--counts", "maps.fits", "-o", "o.fits"], "cut.fits: truncated or corrupt bzip2"),
                       (["--input", "plain.fits", "--counts", "cut_maps.fits.bz2", "-o", "o.fits"],
                        "cut_maps.fits.bz2: truncated or corrupt bzip2 count-map file")]:
        assert tm.main(argv) == 2
        err = capsys.readouterr().err
        assert said in err and len(err.splitlines()) == 1, err
    assert not os.path.exists("o.fits")


@pytest.mark.parametrize("values", [["5", None, "6"], [True, None, False]])
def test_parquet_text_or_bool_columns_with_nulls_are_not_numbers(tmp_path, monkeypatch, capsys, values):
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)
    pq.write_table(pa.table({"EXPNUM": np.full(3, 350000), "CCDNUM": pa.array(values),
                             "XWIN_IMAGE": np.full(3, 100.0), "YWIN_IMAGE": np.full(3, 100.0)}), "e.parquet")
    for argv in (["--gather", "e.parquet", "-o", "g.fits"], ["--input", "e.parquet", "-o", "o.parquet"]):
        assert tm.main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "e.parquet: column 'CCDNUM' of type" in err and "is not numbers" in err


def test_a_repeated_event_column_of_a_text_table_is_refused(tmp_path, monkeypatch, capsys, counts_file):
    """Found by a second audit: astropy reads a repeated CSV column as CCDNUM_1 and the first was
    used silently (FITS and Parquet readers refuse repeats). Other repeated columns are kept."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dup.csv").write_text("EXPNUM,CCDNUM,XWIN_IMAGE,YWIN_IMAGE,CCDNUM\n350000,5,10.0,20.0,7\n")
    for argv in (["--input", "dup.csv", "--counts", counts_file, "-o", "o.csv"], ["--gather", "dup.csv", "-o", "g.fits"]):
        assert tm.main(argv) == 2
        err = capsys.readouterr().err
        assert "dup.csv: column 'CCDNUM' appears 2 times (astropy reads the repeats as CCDNUM_1)" in err
    (tmp_path / "flux.csv").write_text("EXPNUM,CCDNUM,XWIN_IMAGE,YWIN_IMAGE,FLUX,FLUX\n350000,5,10.0,20.0,7,8\n")
    assert tm.main(["--input", "flux.csv", "--counts", counts_file, "-o", "o.csv"]) == 0


@pytest.mark.filterwarnings("default::astropy.utils.exceptions.AstropyUserWarning")
def test_other_libraries_warnings_come_after_the_run_as_one_line_each(tmp_path, monkeypatch, capsys, rng):
    """astropy's own WARNING lines (here: zero padding after a count-map file) came before
    a one-line error; they are said at the end of a run that ended without one."""
    monkeypatch.chdir(tmp_path)
    write_count_maps(tmp_path / "maps.fits", {"Y2E1": rng.poisson(3.0, size=(62, 256, 256)).astype(np.uint16)})
    (tmp_path / "padded.fits").write_bytes((tmp_path / "maps.fits").read_bytes() + bytes(2880))
    assert tm.main(["--epoch", "Y9", "--counts", "padded.fits"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "no epoch 'Y9'" in err, err
    assert tm.main(["--epoch", "Y2E1", "--counts", "padded.fits", "-o", "m.fits"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("Y2E1: ") and err[1:] == [
        "transient_masks: Unexpected extra padding at the end of the file.  This padding may not be preserved "
        "when saving changes. [AstropyUserWarning]"], err


def test_a_csv_starting_with_a_byte_order_mark_is_read(tmp_path, counts_file):
    """Spreadsheets write a UTF-8 BOM: the first column was read as '\\ufeffEXPNUM' (no column EXPNUM)."""
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfEXPNUM,CCDNUM,XWIN_IMAGE,YWIN_IMAGE\n350000,5,10.0,20.0\n")
    assert tm.gather_data(str(path)).n_binned == 1
    counts = tm.filter_file(str(path), str(tmp_path / "out.csv"), tm.TransientMasks(counts_file))
    assert counts.read == 1 and Table.read(tmp_path / "out.csv").colnames[0] == "EXPNUM"
