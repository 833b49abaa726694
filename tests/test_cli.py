"""The command line, in-process through main([...]): modes, defaults, exit codes."""
import os
import re

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

import transient_masks as tm


def _one_line_error(capsys, *pieces):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for piece in pieces:
        assert piece in lines[0]
    return lines[0]


def _events_file(path, rng, n=2000):
    table = Table({
        "EXPNUM": rng.choice([350000, 780000, 300000], size=n),
        "CCDNUM": rng.integers(1, 63, n),
        "XWIN_IMAGE": rng.uniform(0.5, 2048.5, n),
        "YWIN_IMAGE": rng.uniform(0.5, 4096.5, n),
    })
    table["CCDNUM"][:100], table["EXPNUM"][:100] = 5, 350000  # on the hot column of Y2E1
    table["XWIN_IMAGE"][:100] = 805.0
    table["YWIN_IMAGE"][:100] = rng.uniform(321, 961, 100)
    table.write(str(path))
    return table


def test_epoch_mode_writes_default_name_in_working_directory(tmp_path, counts_file, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert tm.main(["--epoch", "Y2E1", "--counts", counts_file]) == 0
    err = capsys.readouterr().err
    assert "Y2E1:" in err and "% of the transients masked; wrote transient_masks_Y2E1.fits.fz" in err
    with fits.open(tmp_path / "transient_masks_Y2E1.fits.fz") as hdul:
        assert len(hdul) == 63 and hdul[5].data[400, 804] == 1 and hdul[5].data[2000, 10] == 0
        assert hdul[0].header["DEMO"] is False
    assert tm.main(["--epoch", "Y6", "--counts", counts_file, "--no-compress", "--masked_value", "SUSPECT",
                    "--fp_rate", "1e-3", "--x_bin", "2", "--floor", "mean"]) == 0
    with fits.open(tmp_path / "transient_masks_Y6.fits") as hdul:
        header = hdul[0].header
        assert (header["MASKVAL"], header["FP_RATE"], header["X_BIN"], header["FLOOR"]) == (2048, 1e-3, 2, "mean")
        assert hdul[10].data[1616, 408] == 2048


def test_input_mode_default_output_and_counts_that_add_up(tmp_path, rng, counts_file, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    _events_file(data / "events.fits", rng)
    monkeypatch.chdir(tmp_path)
    assert tm.main(["--input", str(data / "events.fits"), "--counts", counts_file]) == 0
    err = capsys.readouterr().err
    numbers = re.search(r"(\d+) events read, (\d+) dropped in masked regions, (\d+) dropped for no epoch, "
                        r"(\d+) bad rows dropped, (\d+) written; wrote events_filtered.fits", err)
    assert numbers, err
    read, masked, no_epoch, bad, written = map(int, numbers.groups())
    assert read == 2000 and read == masked + no_epoch + bad + written and masked >= 100
    assert len(Table.read(tmp_path / "events_filtered.fits")) == written


def test_input_mode_options(tmp_path, rng, counts_file, capsys):
    table = _events_file(tmp_path / "events.fits", rng)
    table.rename_columns(["EXPNUM", "XWIN_IMAGE"], ["EXP", "XPOS"])
    table.write(str(tmp_path / "renamed.csv"))
    out = str(tmp_path / "out.txt")
    argv = ["--input", str(tmp_path / "renamed.csv"), "--counts", counts_file, "-o", out, "--format", "ascii.csv",
            "--expnum_col", "EXP", "--x_col", "XPOS", "--keep_no_epoch"]
    assert tm.main(argv) == 0
    assert "(including" in capsys.readouterr().err
    result = Table.read(out, format="ascii.csv")
    assert (result["EXP"] == 300000).sum() == (table["EXP"] == 300000).sum()  # kept: no epoch
    assert tm.main(argv) == 2
    _one_line_error(capsys, "out.txt: output exists (use --overwrite to replace it)")
    assert tm.main(argv + ["--overwrite"]) == 0


@pytest.mark.parametrize("argv_tail, pieces", [
    (["--epoch", "Y3"], ["error:", "no epoch 'Y3'"]),
    (["--epoch", "Y2E1", "--x_bin", "3"], ["error:", "x_bin=3: must divide"]),
    (["--epoch", "Y2E1", "--fp_rate", "2"], ["error:", "fp_rate=2.0"]),
    (["--input", "missing.fits"], ["error:", "missing.fits: event table not found"]),
    (["--input", "events.fits", "--x_col", "XPOS"], ["error:", "no column 'XPOS'"]),
    (["--input", "bad.fits"], ["error:", "bad.fits: 1 bad row(s)", "row(s) 17 "]),
    (["--input", "events.fits", "-o", "events.fits"], ["refusing to write over the input"]),
    (["--epoch", "Y2E1", "--masked_value", "NOTABIT"], ["error:", "NOTABIT: not a number nor a DES mask bit"]),
    (["--epoch"], ["error:", "expected one argument"]),
    (["--epoch", "Y2E1", "--input", "events.fits"], ["error:", "not allowed with argument"]),
    ([], ["error:", "one of the arguments"]),
])
def test_bad_input_is_one_line_and_exit_2_and_writes_nothing(tmp_path, rng, counts_file, monkeypatch, capsys,
                                                            argv_tail, pieces):
    monkeypatch.chdir(tmp_path)
    table = _events_file(tmp_path / "events.fits", rng)
    table["CCDNUM"][17] = 99
    table.write(str(tmp_path / "bad.fits"))
    before = sorted(os.listdir(tmp_path))
    assert tm.main(argv_tail + ["--counts", counts_file] if argv_tail else []) == 2
    _one_line_error(capsys, *pieces)
    assert sorted(os.listdir(tmp_path)) == before


def test_drop_bad_counts_the_bad_rows(tmp_path, rng, counts_file, capsys):
    table = _events_file(tmp_path / "events.fits", rng)
    table["CCDNUM"][17] = 99
    table["YWIN_IMAGE"][18] = np.nan
    table.write(str(tmp_path / "bad.fits"))
    assert tm.main(["--input", str(tmp_path / "bad.fits"), "--counts", counts_file, "--drop_bad",
                    "-o", str(tmp_path / "clean.fits")]) == 0
    assert "2 bad rows dropped" in capsys.readouterr().err


def test_unexpected_failure_is_exit_1_in_one_line(tmp_path, counts_file, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated disk failure")

    monkeypatch.setattr(tm.EpochMask, "write_masks", broken)
    assert tm.main(["--epoch", "Y2E1", "--counts", counts_file, "-o", str(tmp_path / "m.fits")]) == 1
    _one_line_error(capsys, "unexpected failure: RuntimeError: simulated disk failure")


def test_control_characters_in_names_and_messages_stay_on_one_line(tmp_path, counts_file, monkeypatch, capsys):
    bad = tmp_path / "bad\nname\x1b.fits"
    bad.write_bytes(b"not FITS")
    assert tm.main(["--input", str(bad), "--counts", counts_file, "-o", str(tmp_path / "out.fits")]) == 2
    _one_line_error(capsys, "bad\\nname\\x1b.fits: ")

    def broken(*args, **kwargs):
        raise RuntimeError("two\nlines")

    monkeypatch.setattr(tm.EpochMask, "write_masks", broken)
    assert tm.main(["--epoch", "Y2E1", "--counts", counts_file, "-o", str(tmp_path / "m.fits")]) == 1
    _one_line_error(capsys, "RuntimeError: two\\nlines")
    assert "out.fits" not in os.listdir(tmp_path) and "m.fits" not in os.listdir(tmp_path)


def test_an_output_name_near_the_file_system_limit_is_written(tmp_path, rng, counts_file, monkeypatch):
    """Temporaries carry a cut copy of the output's name: a 250-byte name still works."""
    monkeypatch.chdir(tmp_path)
    _events_file(tmp_path / "events.fits", rng)
    long_name = "o" * 245 + ".fits"
    assert tm.main(["--input", "events.fits", "--counts", counts_file, "-o", long_name]) == 0
    assert long_name in os.listdir(tmp_path)
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no temporary left


def test_demo_fallback_is_said_loudly_and_recorded(tmp_path, rng, monkeypatch, capsys):
    from conftest import poisson_cube, write_count_maps

    demo = write_count_maps(tmp_path / "demo.fits", {"Y2E1": poisson_cube(rng)})
    monkeypatch.setattr(tm, "REAL_COUNTS_FILENAME", "no_such_real_maps.fits.gz")
    data_path = tm.data_path
    monkeypatch.setattr(tm, "data_path", lambda name: demo if name == tm.DEMO_COUNTS_FILENAME else data_path(name))
    monkeypatch.chdir(tmp_path)
    assert tm.main(["--epoch", "Y2E1"]) == 0
    err = capsys.readouterr().err
    assert "SYNTHETIC DEMO maps" in err and "NOT real DES masks" in err and "[SYNTHETIC DEMO DATA]" in err
    with fits.open(tmp_path / "transient_masks_Y2E1.fits.fz") as hdul:
        assert hdul[0].header["DEMO"] is True and all(hdu.header["DEMO"] is True for hdu in hdul[1:])
    # A bad input with the demo maps gets its one-line error alone: the warning
    # is for runs that succeed (where it comes last).
    Table({"EXPNUM": [350000], "CCDNUM": [5], "XW": [1.0], "YWIN_IMAGE": [1.0]}).write("events.fits")
    for argv in (["--input", "events.fits", "-o", "out.fits"], ["--epoch", "Y9"]):
        assert tm.main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "error:" in err and "DEMO" not in err, err
    assert tm.main(["--input", "events.fits", "--x_col", "XW", "-o", "out.fits"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "[masks from SYNTHETIC DEMO DATA]" in err[0] and "NOT real DES masks" in err[-1]


def test_help_and_version(capsys):
    assert tm.main(["--version"]) == 0
    assert tm.__version__ in capsys.readouterr().out
    assert tm.main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--epoch", "--input", "--counts", "--output", "--fp_rate", "--x_bin", "--y_bin", "--floor",
                   "--keep_no_epoch", "--expnum_col", "--ccdnum_col", "--x_col", "--y_col", "--overwrite",
                   "--no-compress", "--format", "--drop_bad", "--masked_value"):
        assert option in out
