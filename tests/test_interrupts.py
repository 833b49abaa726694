"""An interrupted or terminated run removes its temporary files, prints one line
and exits 130 (SIGINT) or 143 (SIGTERM)."""
import os
import signal
import subprocess
import sys
import time

import pytest

import transient_masks as tm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "transient_masks.py")


def _start_and_signal(tmp_path, argv, signum):
    """Start the command, wait until its temporary output exists, send ``signum``."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    process = subprocess.Popen([sys.executable, SCRIPT, *argv], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    def writing():  # the temporary output exists and has data in it
        for name in os.listdir(tmp_path):
            try:
                if name.startswith(".") and ".tmp" in name and os.path.getsize(tmp_path / name):
                    return True
            except FileNotFoundError:  # renamed into place meanwhile
                pass
        return False

    while not writing():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no temporary output appeared: {process.communicate()}")
        time.sleep(0.01)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    return process.returncode, err


@pytest.mark.slow
@pytest.mark.parametrize("signum, code, word", [(signal.SIGTERM, 143, "terminated"),
                                                (signal.SIGINT, 130, "interrupted")])
def test_signal_removes_temporary_files(tmp_path, signum, code, word):
    # The plain (520 MB) masks take seconds to write: time to be interrupted.
    returncode, err = _start_and_signal(
        tmp_path, ["--epoch", "Y2E1", "--no-compress", "-o", "masks.fits"], signum)
    lines = [line for line in err.splitlines() if line and "WARNING" not in line]
    assert returncode == code, err
    assert lines == [f"transient_masks: {word}; no output written"], err
    assert "Traceback" not in err
    assert os.listdir(tmp_path) == []


def test_remove_tree_retries_when_a_file_vanishes_under_it(tmp_path, monkeypatch):
    """A worker renaming its file while the tree is read makes rmtree raise FileNotFoundError
    for that file, not for the tree: the directory must still go."""
    import shutil

    tree = tmp_path / ".out.tmp"
    tree.mkdir()
    (tree / "part.0.fits").write_bytes(b"x")
    real_rmtree, calls = shutil.rmtree, []

    def racing_rmtree(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 1:
            raise FileNotFoundError(2, "No such file or directory", str(tree / ".part.1.fits.tmp"))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", racing_rmtree)
    tm._remove_tree(str(tree))
    assert len(calls) == 2 and not tree.exists()
    tm._remove_tree(str(tree))  # already gone: nothing to do
    assert len(calls) == 3
