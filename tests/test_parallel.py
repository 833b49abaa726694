"""Parallel runs on Dask: the same maps, kept rows and counts as the serial path.

One module-scoped `LocalCluster` of 2 single-threaded worker processes serves
every test that needs workers; the data are small and made here.
"""
import glob
import logging
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table, vstack

import transient_masks as tm

dask = pytest.importorskip("dask")
dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")
pytest.importorskip("pyarrow")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EPOCHS = tm.read_epochs()
ROW = {name: row for name, row in zip(EPOCHS["NAME"], EPOCHS)}
DEMO = tm.data_path(tm.DEMO_COUNTS_FILENAME)


@pytest.fixture(scope="module")
def client():
    """2 worker processes; a task whose worker dies fails at once (no retries)."""
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False}) as cluster, distributed.Client(cluster) as c:
            yield c


@pytest.fixture(scope="module")
def masks():
    return tm.TransientMasks(DEMO)


def events(rng, n, epochs=("Y2E1", "Y4E2", "Y6", "Y1E1"), n_bad=0):
    """Events over some epochs (Y1E1 has no demo map), a few in no epoch, ``n_bad`` bad rows."""
    names = rng.choice(list(epochs), n)
    expnum = rng.integers([ROW[e]["MINEXPNUM"] for e in names], [ROW[e]["MAXEXPNUM"] + 1 for e in names])
    expnum[:3] = [1, 300000, 900000][:n]
    table = Table({"EXPNUM": expnum.astype(np.int64), "CCDNUM": rng.integers(1, 63, n).astype(np.int16),
                   "XWIN_IMAGE": rng.uniform(0.5, 2048.5, n), "YWIN_IMAGE": rng.uniform(0.5, 4096.5, n),
                   "MAG": rng.normal(21, 1, n).astype(np.float32), "ROW": np.arange(n)},
                  meta={"ORIGIN": "test"})
    table["XWIN_IMAGE"].unit = "pix"
    hot = rng.random(n) < 0.1  # on the demo maps' masked right half of CCD 31
    table["CCDNUM"][hot], table["XWIN_IMAGE"][hot] = 31, rng.uniform(1100, 2000, hot.sum())
    if n_bad:
        bad = rng.choice(n, n_bad, replace=False)
        table["CCDNUM"][bad[::2]] = 0
        table["YWIN_IMAGE"][bad[1::2]] = np.nan
    return table


def write_parts(directory, tables, ext):
    os.makedirs(directory, exist_ok=True)
    paths = []
    for i, table in enumerate(tables):
        paths.append(os.path.join(directory, f"part.{i}.{ext}"))
        table.write(paths[-1])
    return paths


def same_maps(a, b):
    with open(a, "rb") as one, open(b, "rb") as two:
        return one.read() == two.read()


def test_gather_parquet_dataset_is_bit_identical(tmp_path, client, rng):
    tables = [events(rng, 3000, n_bad=5), events(rng, 1), events(rng, 2500, n_bad=5),
              events(rng, 4000, n_bad=5), events(rng, 2000, epochs=("Y6",))]
    write_parts(tmp_path / "ds", tables, "parquet")
    serial = tm.gather_data(str(tmp_path / "ds"), str(tmp_path / "serial.fits"), chunk_rows=700)
    parallel = tm.gather_data(str(tmp_path / "ds"), str(tmp_path / "parallel.fits"), client=client,
                              chunk_rows=700)
    assert serial.summary() == parallel.summary()
    assert (serial.n_read, serial.n_bad, serial.n_no_epoch) == (parallel.n_read, parallel.n_bad,
                                                                parallel.n_no_epoch)
    assert (parallel.n_read, parallel.n_bad) == (11501, 15) and parallel.n_no_epoch >= 12
    assert same_maps(tmp_path / "serial.fits", tmp_path / "parallel.fits")


def test_tasks_of_several_files_log_each_file_in_order(tmp_path, client, rng, caplog):
    """7 files on 2 threads make 2 tasks of several files: each file is still logged once,
    in order, with its own rows and bad rows, and the SIM cards are the first file's."""
    assert tm._file_tasks(client, 7) == 2 and tm._file_tasks(client, 1) == 1
    tables = [events(rng, 100 * (i + 1), n_bad=i) for i in range(7)]
    for i, table in enumerate(tables):
        table.meta.update({"SIMSEED": 40 + i} if i in (2, 5) else {})
    paths = write_parts(tmp_path / "in", tables, "fits")
    with caplog.at_level(logging.INFO, logger="transient_masks"):
        serial = tm.gather_data(paths, str(tmp_path / "serial.fits"))
        lines = [r.getMessage() for r in caplog.records if "rows read" in r.getMessage()]
        caplog.clear()
        parallel = tm.gather_data(paths, str(tmp_path / "parallel.fits"), client=client)
    assert [r.getMessage() for r in caplog.records if "rows read" in r.getMessage()] == lines
    assert lines[3].startswith(f"{paths[3]}: 400 rows read, 3 bad rows") and len(lines) == 7
    assert serial.summary() == parallel.summary()
    with fits.open(tmp_path / "parallel.fits") as hdul:
        assert hdul[1].header["SIMSEED"] == 42
    assert same_maps(tmp_path / "serial.fits", tmp_path / "parallel.fits")


def test_gather_clips_exactly_as_the_serial_path(tmp_path, client, caplog):
    # Cell (CCD 5, 10, 20) of Y2E1: 40000 + 30000 events in two files (over 65535 only
    # summed); cell (CCD 7, 0, 0): 65535 exactly (not clipped); (CCD 9, 3, 3): 70000 in one file.
    def cell(n, ccd, y, x, expnum=350000):
        return Table({"EXPNUM": np.full(n, expnum), "CCDNUM": np.full(n, ccd, dtype=np.int16),
                      "XWIN_IMAGE": np.full(n, 8.0 * x + 4), "YWIN_IMAGE": np.full(n, 16.0 * y + 8)})

    tables = [vstack([cell(40000, 5, 10, 20), cell(30000, 7, 0, 0)]),
              vstack([cell(30000, 5, 10, 20), cell(35535, 7, 0, 0)]), cell(70000, 9, 3, 3)]
    paths = write_parts(tmp_path / "ds", tables, "fits")
    with caplog.at_level("WARNING", logger="transient_masks"):
        serial = tm.gather_data(paths, str(tmp_path / "serial.fits"))
        serial_log = [r.getMessage() for r in caplog.records if "clipped" in r.getMessage()]
        caplog.clear()
        parallel = tm.gather_data(paths, str(tmp_path / "parallel.fits"), client=client)
        parallel_log = [r.getMessage() for r in caplog.records if "clipped" in r.getMessage()]
    assert serial.n_clipped == parallel.n_clipped == {"Y2E1": 2}
    assert serial_log == parallel_log and "CCDNUM 5,9" in serial_log[0]
    counts = parallel.counts["Y2E1"]
    assert counts[4, 10, 20] == counts[8, 3, 3] == counts[6, 0, 0] == 65535
    assert same_maps(tmp_path / "serial.fits", tmp_path / "parallel.fits")


def test_filter_many_fits_files_by_glob(tmp_path, client, rng, masks):
    tables = [events(rng, n) for n in (2000, 3000, 10, 2500)]
    write_parts(tmp_path / "in", tables, "fits")
    pattern = str(tmp_path / "in" / "part.*.fits")
    serial = tm.filter_files(pattern, str(tmp_path / "serial"), masks, chunk_rows=600)
    parallel = tm.filter_files(pattern, str(tmp_path / "parallel"), masks, client=client, chunk_rows=600)
    assert serial.summary() == parallel.summary()
    assert serial.read == sum(map(len, tables)) == serial.masked + serial.no_epoch_dropped + serial.written
    names = sorted(os.listdir(tmp_path / "serial"))
    assert names == sorted(os.listdir(tmp_path / "parallel")) == [f"part.{i}.fits" for i in range(4)]
    for name in names:  # streamed raw rows: the very same bytes
        assert same_maps(tmp_path / "serial" / name, tmp_path / "parallel" / name)
        single = str(tmp_path / f"single_{name}")
        tm.filter_file(str(tmp_path / "in" / name), single, masks)
        assert same_maps(single, tmp_path / "parallel" / name)
    out = Table.read(tmp_path / "parallel" / "part.1.fits")
    assert out.meta["TM_VERS"] == tm.__version__ and out["XWIN_IMAGE"].unit == "pix"


def test_filter_parquet_dataset_keeps_rows_dtypes_and_provenance(tmp_path, client, rng, masks):
    tables = [events(rng, n) for n in (1500, 2500, 1000)]
    write_parts(tmp_path / "ds" / "sub", tables, "parquet")
    serial = tm.filter_files(str(tmp_path / "ds"), str(tmp_path / "serial"), masks)
    parallel = tm.filter_files([str(tmp_path / "ds")], str(tmp_path / "parallel"), masks, client=client)
    assert serial.summary() == parallel.summary()
    for i, table in enumerate(tables):
        name = os.path.join("sub", f"part.{i}.parquet")
        one, two = Table.read(tmp_path / "serial" / name), Table.read(tmp_path / "parallel" / name)
        keep = ~masks.apply(table["EXPNUM"], table["CCDNUM"], table["XWIN_IMAGE"], table["YWIN_IMAGE"])
        np.testing.assert_array_equal(two["ROW"], table["ROW"][keep])
        assert one.colnames == two.colnames == table.colnames and one.meta == two.meta
        for column in table.colnames:
            np.testing.assert_array_equal(one[column], two[column])
            assert two[column].dtype == table[column].dtype and two[column].unit == table[column].unit
        assert two.meta["ORIGIN"] == "test" and two.meta["DEMO"] is True


def test_dask_dataframe_gather_and_filter(tmp_path, client, rng, masks):
    tables = [events(rng, n, n_bad=2) for n in (2000, 3000, 1500)]
    paths = write_parts(tmp_path / "ds", tables, "parquet")
    frame = dd.read_parquet(paths)
    assert frame.npartitions == 3
    serial = tm.gather_data(paths, str(tmp_path / "serial.fits"))
    parallel = tm.gather_data(frame, str(tmp_path / "parallel.fits"), client=client)
    assert serial.summary() == parallel.summary()
    for epoch in serial.counts:
        np.testing.assert_array_equal(serial.counts[epoch], parallel.counts[epoch])
    with pytest.raises(tm.BadInputError, match=r"^DataFrame partition \d: 2 bad row"):
        tm.filter_files(frame, str(tmp_path / "out"), masks, client=client)
    assert not os.path.exists(tmp_path / "out")
    counts = tm.filter_files(frame, str(tmp_path / "out"), masks, client=client, drop_bad=True)
    expected = tm.filter_files(paths, str(tmp_path / "serial"), masks, drop_bad=True)
    assert counts.summary() == expected.summary() and counts.bad == 6
    kept = vstack([Table.read(tmp_path / "out" / f"part.{i}.parquet") for i in range(3)])
    np.testing.assert_array_equal(kept["ROW"], vstack([Table.read(p) for p in sorted(
        glob.glob(str(tmp_path / "serial" / "*.parquet")))])["ROW"])
    assert kept.meta["TM_COUNT"] == os.path.basename(DEMO)


def test_dask_dataframe_gather_without_a_client(tmp_path, rng, monkeypatch):
    """No distributed client: Dask's own scheduler runs the partitions, with the same maps."""
    tables = [events(rng, n, n_bad=2) for n in (2000, 3000)]
    paths = write_parts(tmp_path / "ds", tables, "parquet")
    monkeypatch.setattr(tm, "_current_client", lambda: None)  # the module's cluster is not used
    serial = tm.gather_data(paths, str(tmp_path / "serial.fits"))
    frame = dd.from_pandas(vstack(tables).to_pandas(), npartitions=2)  # read_parquet warns in-process
    with dask.config.set(scheduler="threads"):
        parallel = tm.gather_data(frame, str(tmp_path / "parallel.fits"))
    assert serial.summary() == parallel.summary() and list(serial.counts) == list(parallel.counts)
    for epoch in serial.counts:
        np.testing.assert_array_equal(serial.counts[epoch], parallel.counts[epoch])


def test_bad_partition_same_error_as_serial_and_nothing_written(tmp_path, client, rng, masks, capsys):
    tables = [events(rng, 1000), events(rng, 1000, n_bad=3), events(rng, 1000)]
    paths = write_parts(tmp_path / "in", tables, "fits")
    with pytest.raises(tm.BadInputError) as serial:
        tm.filter_files(paths, str(tmp_path / "serial"), masks)
    with pytest.raises(tm.BadInputError) as parallel:
        tm.filter_files(paths, str(tmp_path / "parallel"), masks, client=client)
    assert str(serial.value) == str(parallel.value)
    assert str(parallel.value).startswith(f"{paths[1]}: 3 bad row(s)")
    assert os.listdir(tmp_path) == ["in"]  # no output, no temporary directory
    # the command line, with its own local cluster: exit 2, one line naming the file
    code = tm.main(["--input", *paths, "-o", str(tmp_path / "out"), "--jobs", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith(f"transient_masks: error: {paths[1]}: 3 bad row(s)")
    assert os.listdir(tmp_path) == ["in"]
    code = tm.main(["--input", str(tmp_path / "in" / "part.*.fits"), "-o", str(tmp_path / "out"),
                    "--drop_bad", "--jobs", "2"])
    err = capsys.readouterr().err
    expected = tm.filter_files(paths, str(tmp_path / "serial"), masks, drop_bad=True)
    assert code == 0 and f"{expected.summary()}; wrote {tmp_path / 'out'}" in err
    assert sorted(os.listdir(tmp_path / "out")) == ["part.0.fits", "part.1.fits", "part.2.fits"]


def _fails(frame):
    raise RuntimeError("disk on fire")


def _dies(frame):
    os._exit(3)


@pytest.mark.parametrize("task, message", [(_fails, "disk on fire"), (_dies, "a Dask worker died")])
def test_worker_failure_is_one_clear_error_and_leaves_nothing(tmp_path, client, rng, masks, task, message):
    paths = write_parts(tmp_path / "in", [events(rng, 500) for _ in range(3)], "parquet")

    def broken(**options):  # partition 1 fails on its worker (a graph of its own each time)
        frame = dd.read_parquet(paths, **options)
        parts = frame.to_delayed()
        parts[1] = dask.delayed(task)(parts[1])
        return dd.from_delayed(parts, meta=frame._meta)

    with pytest.raises(RuntimeError, match=message) as failure:
        tm.filter_files(broken(), str(tmp_path / "out"), masks, client=client)
    assert "\n" not in str(failure.value)
    with pytest.raises(RuntimeError, match=message):
        tm.gather_data(broken(columns=["EXPNUM", "CCDNUM", "XWIN_IMAGE", "YWIN_IMAGE"]),
                       str(tmp_path / "maps.fits"), client=client)
    assert os.listdir(tmp_path) == ["in"]
    client.wait_for_workers(2, timeout=30)


def test_truncated_file_mid_run_is_a_bad_input(tmp_path, client, rng, masks):
    """A file that changes under the run (cut short after the inputs were listed)."""
    paths = write_parts(tmp_path / "in", [events(rng, 2000) for _ in range(3)], "fits")
    size = os.path.getsize(paths[2])
    with open(paths[2], "r+b") as stream:
        stream.truncate(size - 2880 * 4)
    with pytest.raises(tm.BadInputError, match=f"^{re.escape(paths[2])}: .*truncated"):
        tm.filter_files(paths, str(tmp_path / "out"), masks, client=client)
    with pytest.raises(tm.BadInputError, match=f"^{re.escape(paths[2])}: .*truncated"):
        tm.gather_data(paths, str(tmp_path / "maps.fits"), client=client)
    assert os.listdir(tmp_path) == ["in"]


def test_command_line_gather_with_jobs_in_process(tmp_path, rng, capsys, client):
    write_parts(tmp_path / "ds", [events(rng, 1500) for _ in range(3)], "parquet")
    assert tm.main(["--gather", str(tmp_path / "ds"), "-o", str(tmp_path / "serial.fits")]) == 0
    assert tm.main(["--gather", str(tmp_path / "ds"), "-o", str(tmp_path / "parallel.fits"),
                    "--jobs", "2", "--quiet"]) == 0
    assert tm.main(["--gather", str(tmp_path / "ds"), "-o", str(tmp_path / "scheduler.fits"),
                    "--scheduler", client.scheduler.address]) == 0
    err = capsys.readouterr().err
    assert err.count("4500 rows read, ") == 3
    assert same_maps(tmp_path / "serial.fits", tmp_path / "parallel.fits")
    assert same_maps(tmp_path / "serial.fits", tmp_path / "scheduler.fits")
    assert tm.main(["--gather", str(tmp_path / "ds"), "--jobs", "2", "--scheduler", "tcp://x:1"]) == 2


def test_jobs_beyond_the_machine_are_refused_before_any_start(tmp_path, monkeypatch, capsys):
    """At most 4 local workers per core (at least 4): a huge --jobs once took 24 GB starting workers."""
    def no_cluster(*args, **kwargs):
        raise AssertionError("a local cluster was started")

    monkeypatch.setattr(distributed, "LocalCluster", no_cluster)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    for jobs in ("9", "99999999999999999999"):
        assert tm.main(["--gather", "a.fits", "b.fits", "-o", str(tmp_path / "m.fits"), "--jobs", jobs]) == 2
        assert capsys.readouterr().err.endswith(
            f"error: argument --jobs: {jobs}: at most 8 local worker processes on this machine (4 per core) "
            "(see --help)\n")
        with pytest.raises(tm.BadInputError, match=f"jobs={jobs}: at most 8 local worker processes"):
            with tm.dask_client(int(jobs)):
                pass
    assert os.listdir(tmp_path) == []


def test_interrupt_leaves_no_output_directory(tmp_path, rng, masks, client, monkeypatch):
    paths = write_parts(tmp_path / "in", [events(rng, 100) for _ in range(2)], "fits")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tm, "_compute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tm.filter_files(paths, str(tmp_path / "out"), masks, client=client)
    assert os.listdir(tmp_path) == ["in"]


def _run_signalled_gather(tmp_path, paths, client_code):
    """Gather ``paths`` with --jobs 2 in a subprocess (a session of its own) whose
    dask_client runs ``client_code``, the body of a generator that may call
    ``signal_after(delay, signum)``: SIGTERM to the process, SIGINT to its whole
    process group, as Ctrl-C on a terminal does."""
    code = (
        "import os, signal, threading, time, transient_masks as tm\n"
        "start = tm.dask_client\n"
        "def signal_after(delay, signum):\n"
        "    send = (os.killpg, os.getpgid(0)) if signum == signal.SIGINT else (os.kill, os.getpid())\n"
        "    threading.Timer(delay, send[0], (send[1], signum)).start()\n"
        "def signalled_client(*args, **kwargs):\n"
        f"{client_code}"
        "tm.dask_client = tm.contextlib.contextmanager(signalled_client)\n"
        f"raise SystemExit(tm.main(['--gather', *{paths!r}, '-o', 'maps.fits', '--jobs', '2']))\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(tm.__file__)))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": root}, start_new_session=True)


def _busy_workers_then(signal_name):
    """`_run_signalled_gather` code: every worker busy (a held task) when the signal comes, 2 s in."""
    return ("    with start(*args, **kwargs) as client:\n"
            "        sleeping = [client.submit(time.sleep, 30, pure=False, workers=[worker])\n"
            "                    for worker in client.scheduler_info()['workers']]\n"
            f"        signal_after(2.0, signal.{signal_name})\n"
            "        yield client\n")


def test_sigterm_with_jobs_is_one_line_on_stderr(tmp_path, rng):
    """SIGTERM while the workers of --jobs run: exit 143, the one line, nothing else
    (no asyncio traceback, no cancelled-task warnings from the workers), no output."""
    paths = write_parts(tmp_path / "in", [events(rng, 100) for _ in range(2)], "fits")
    run = _run_signalled_gather(tmp_path, paths, _busy_workers_then("SIGTERM"))
    assert run.returncode == 143, run.stderr
    assert run.stderr.splitlines() == ["transient_masks: terminated; no output written"]
    assert sorted(os.listdir(tmp_path)) == ["in"]


def test_ctrl_c_on_the_terminal_with_jobs_is_one_line(tmp_path, rng):
    """Ctrl-C signals the whole process group, workers included.  While the cluster
    starts it is ignored (a worker half-way through its start would die with a
    traceback); once the workers run, the command stops them: exit 130, the one
    line and nothing else, no output."""
    paths = write_parts(tmp_path / "in", [events(rng, 100) for _ in range(2)], "fits")
    during_start = ("    signal_after(0.3, signal.SIGINT)\n"  # the workers' processes start and import for 1-2 s
                    "    with start(*args, **kwargs) as client:\n"
                    "        yield client\n")
    run = _run_signalled_gather(tmp_path, paths, during_start)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.splitlines()[-1].endswith("wrote maps.fits")
    os.remove(tmp_path / "maps.fits")
    run = _run_signalled_gather(tmp_path, paths, _busy_workers_then("SIGINT"))
    assert run.returncode == 130, run.stderr
    assert run.stderr.splitlines() == ["transient_masks: interrupted; no output written"]
    assert sorted(os.listdir(tmp_path)) == ["in"]


def test_output_directory_rules(tmp_path, rng, masks):
    paths = write_parts(tmp_path / "in", [events(rng, 100) for _ in range(2)], "fits")
    with pytest.raises(tm.BadInputError, match="no file matches"):
        tm.filter_files(str(tmp_path / "none*.fits"), str(tmp_path / "out"), masks)
    with pytest.raises(tm.BadInputError, match="both would be written as part.0.fits"):
        tm.filter_files([paths[0], paths[0]], str(tmp_path / "out"), masks)
    with pytest.raises(tm.BadInputError, match="into the input directory"):
        tm.filter_files(str(tmp_path / "in"), str(tmp_path / "in" / "out"), masks)
    tm.filter_files(paths, str(tmp_path / "out"), masks)
    with pytest.raises(tm.BadInputError, match="output exists"):
        tm.filter_files(paths, str(tmp_path / "out"), masks)
    (tmp_path / "out" / "stale.txt").write_text("old")
    tm.filter_files(paths, str(tmp_path / "out"), masks, overwrite=True)
    assert sorted(os.listdir(tmp_path / "out")) == ["part.0.fits", "part.1.fits"]
    assert sorted(os.listdir(tmp_path)) == ["in", "out"]
    assert tm.main(["--input", *paths]) == 2  # several inputs need -o


def test_an_output_directory_holding_inputs_is_never_replaced(tmp_path, rng, masks, monkeypatch):
    """--overwrite replaces the output directory whole: never one that holds an input
    (files named, a dataset directory, a link to one) or the current directory."""
    paths = write_parts(tmp_path / "p" / "d", [events(rng, 100) for _ in range(2)], "fits")
    def contents():
        return {path: pathlib.Path(path).read_bytes() for path in paths}

    before = contents()
    os.symlink(tmp_path / "p", tmp_path / "link")
    monkeypatch.chdir(tmp_path / "p")
    cases = [(paths, tmp_path / "p" / "d"), (str(tmp_path / "p" / "d" / "*.fits"), tmp_path / "p" / "d"),
             (str(tmp_path / "p" / "d"), tmp_path / "p"), (paths, tmp_path / "link"), (paths, tmp_path)]
    for inputs, output in cases:
        with pytest.raises(tm.BadInputError, match=f"{re.escape(str(output))}: holds the input"):
            tm.filter_files(inputs, str(output), masks, overwrite=True)
        assert tm.main(["--input", *([inputs] if isinstance(inputs, str) else inputs), "-o", str(output),
                        "--overwrite", "--counts", tm.data_path(tm.DEMO_COUNTS_FILENAME)]) == 2
    other = write_parts(tmp_path / "q", [events(rng, 50)], "fits")
    os.makedirs(tmp_path / "c" / "here")
    monkeypatch.chdir(tmp_path / "c" / "here")
    with pytest.raises(tm.BadInputError, match="holds the current directory"):
        tm.filter_files(other, str(tmp_path / "c"), masks, overwrite=True)
    assert contents() == before
    assert sorted(os.listdir(tmp_path / "p")) == ["d"] and sorted(os.listdir(tmp_path / "p" / "d")) == [
        "part.0.fits", "part.1.fits"]
    assert os.listdir(tmp_path / "c") == ["here"]


def test_serial_runs_never_import_dask(tmp_path, rng):
    paths = write_parts(tmp_path / "in", [events(rng, 100) for _ in range(2)], "fits")
    code = ("import sys, transient_masks as tm\n"
            f"assert tm.main(['--input', {paths[0]!r}, '-o', {str(tmp_path / 'one.fits')!r}]) == 0\n"
            f"assert tm.main(['--input', *{paths!r}, '-o', {str(tmp_path / 'many')!r}]) == 0\n"
            f"assert tm.main(['--gather', *{paths!r}, '-o', {str(tmp_path / 'maps.fits')!r}]) == 0\n"
            "assert not [name for name in sys.modules if name.split('.')[0] in ('dask', 'distributed')]\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(tm.__file__)))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(tm.__file__), env={**os.environ, "PYTHONPATH": root})
    assert run.returncode == 0, run.stderr


def test_missing_dask_is_a_one_line_error_naming_the_extra(tmp_path, monkeypatch, capsys, rng):
    paths = write_parts(tmp_path / "in", [events(rng, 10) for _ in range(2)], "fits")
    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # import fails
    assert tm.main(["--gather", *paths, "-o", str(tmp_path / "maps.fits"), "--jobs", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["transient_masks: error: parallel runs need Dask: pip install 'transient_masks[dask]'"]


# Partials of the tree reduction: any grouping of any partitions sums to the
# counts of one accumulator over every event, also past the uint16 clip.
_CELLS = st.tuples(st.integers(0, 2), st.sampled_from([1, 31, 62]), st.integers(0, 1), st.integers(0, 1),
                   st.integers(1, 40000))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(_CELLS, max_size=4), min_size=1, max_size=6), st.integers(2, 4), st.integers(1, 3))
def test_partials_sum_like_one_accumulator(partitions, split_every, n_roots):
    def arrays(cells):
        epoch = np.repeat([c[0] for c in cells], [c[4] for c in cells]).astype(np.int64)
        ccd = np.repeat([c[1] for c in cells], [c[4] for c in cells])
        x = np.repeat([8.0 * c[3] + 1 for c in cells], [c[4] for c in cells])
        y = np.repeat([16.0 * c[2] + 1 for c in cells], [c[4] for c in cells])
        return epoch, ccd, x, y

    whole = tm._CountAccumulator(3)
    parts = []
    for number, cells in enumerate(partitions):
        accumulator = tm._CountAccumulator(3)
        accumulator.add(*arrays(cells))
        whole.add(*arrays(cells))
        parts.append(tm._CountPartial.of(accumulator, [(number, f"p{number}", accumulator.n_read, 0)]))
    while len(parts) > n_roots:  # trees, as Dask's reduction builds them, their roots added on the client
        parts = [tm._CountPartial.merge(parts[i:i + split_every]) for i in range(0, len(parts), split_every)]
    merged = tm._CountAccumulator(3)
    for part in parts:
        part.add_to(merged)
    assert sorted(merged.totals) == sorted(whole.totals)
    for index in whole.totals:
        (merged_counts, merged_clipped), (counts, clipped) = merged.saturated(index), whole.saturated(index)
        np.testing.assert_array_equal(merged_counts, counts)
        no_clip = np.zeros(counts.size, bool)
        np.testing.assert_array_equal(no_clip if merged_clipped is None else merged_clipped,
                                      no_clip if clipped is None else clipped)
    np.testing.assert_array_equal(merged.n_events, whole.n_events)


def test_partials_added_past_the_uint32_bound_saturate_and_flag(monkeypatch):
    # With a tiny uint32 limit, adding a third partial must clip the counts first.
    monkeypatch.setattr(tm, "_UINT32_MAX", 140000)
    merged, parts = tm._CountAccumulator(1), []
    for n in (40000, 40000, 40000, 3):
        accumulator = tm._CountAccumulator(1)
        accumulator.add(np.zeros(n, np.int64), np.full(n, 5), np.full(n, 9.0), np.full(n, 17.0))
        parts.append(tm._CountPartial.of(accumulator, [(len(parts), "p", n, 0)]))
    for part in parts:
        part.add_to(merged)
        assert merged.bound[0] <= tm._UINT32_MAX  # the counts could never wrap
    assert merged.totals[0].max() < 140000
    counts, clipped = merged.saturated(0)
    cell = 4 * 65536 + 1 * 256 + 1  # CCD 5, y cell 1, x cell 1
    assert counts[cell] == 65535 and clipped[cell] and clipped.sum() == 1
    assert merged.n_events[0] == 120003 and merged.n_read == 120003


def test_progress_bars_go_to_stderr(tmp_path, client, rng, monkeypatch, capsys):
    paths = write_parts(tmp_path / "ds", [events(rng, 1000) for _ in range(3)], "parquet")
    monkeypatch.setattr(tm, "_PROGRESS_DELAY", 0.0)  # show them at once
    serial = tm.gather_data(paths, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "/3.00k" in err and "rows/s" in err  # tqdm, the rows of the three files
    parallel = tm.gather_data(paths, client=client, progress=True)
    counts = tm.filter_files(paths, str(tmp_path / "out"), tm.TransientMasks(DEMO), client=client, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "100% Completed" in err  # Dask's own bar
    assert serial.summary() == parallel.summary() and counts.read == 3000


def test_warnings_of_the_workers_are_said_once_by_the_client(tmp_path, client, rng, caplog):
    """A worker's own log is not shown: the warnings its tasks log come back with their results,
    each said once (here: files holding a second table, events of an epoch with no count map)."""
    tables = [events(rng, 300) for _ in range(4)]
    for table in tables[:2]:
        table["EXPNUM"][:10] = 480000  # Y3E1: no map in the demo file
    directory = tmp_path / "in"
    directory.mkdir()
    paths = []
    for i, table in enumerate(tables):
        paths.append(str(directory / f"part{i}.fits"))
        fits.HDUList([fits.PrimaryHDU(), fits.table_to_hdu(table), fits.table_to_hdu(table[:5])]).writeto(paths[-1])
    said = {}
    for run, kwargs in [("serial", {}), ("parallel", {"client": client})]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="transient_masks"):
            tm.gather_data(paths, str(tmp_path / f"{run}.fits"), **kwargs)
            masks = tm.TransientMasks(DEMO)  # (each TransientMasks says a missing map once)
            tm.filter_files(paths, str(tmp_path / f"{run}_out"), masks, **kwargs)
            tm.filter_files(paths, str(tmp_path / f"{run}_again"), masks, **kwargs)
        said[run] = sorted(r.getMessage() for r in caplog.records)
    assert said["parallel"] == said["serial"]
    assert sum("only that table is read" in text for text in said["serial"]) == 12  # 4 files, read 3 times
    assert sum("no count map for epoch Y3E1" in text for text in said["parallel"]) == 1


def test_a_dask_dataframe_repeating_an_event_column_is_refused(tmp_path, masks):
    """Found by an audit: a repeated CCDNUM made pandas hand back a frame (AttributeError)."""
    import pandas as pd

    frame = events(np.random.default_rng(5), 40).to_pandas()
    frame = dd.from_pandas(pd.concat([frame, frame[["CCDNUM"]]], axis=1), npartitions=2)
    with pytest.raises(tm.BadInputError, match="DataFrame: column 'CCDNUM' appears 2 times"):
        tm.filter_files(frame, str(tmp_path / "out"), masks)
    with pytest.raises(tm.BadInputError, match="DataFrame: column 'CCDNUM' appears 2 times"):
        tm.gather_data(frame)
    assert not (tmp_path / "out").exists()
