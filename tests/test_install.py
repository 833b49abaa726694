"""The wheel path: build a wheel, install it in a fresh virtual environment, run it."""
import glob
import os
import pathlib
import site
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _site_dirs():
    """The site-packages directories of the running interpreter, without this checkout.

    Written into a .pth file of the test venv, whose lines only extend
    sys.path: the .pth files in those directories (an editable install of
    this checkout among them) are not run.
    """
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    dirs += [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    root = os.path.realpath(ROOT)
    kept = []
    for path in dirs:
        if os.path.isdir(path) and os.path.realpath(path) != root and path not in kept:
            kept.append(path)
    return kept


@pytest.mark.slow
def test_wheel_in_fresh_venv_finds_its_data_and_runs(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist), ROOT], check=True, capture_output=True)
    wheel = glob.glob(str(dist / "transient_masks-*.whl"))
    assert len(wheel) == 1
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    # The venv sees the numpy/astropy/... of the interpreter running the tests
    # (a venv, a conda env or the system Python), not this checkout.
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (pathlib.Path(purelib) / "_running_env.pth").write_text("\n".join(_site_dirs()) + "\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall",
                    wheel[0]], check=True, capture_output=True)
    work = tmp_path / "work"
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    probe = subprocess.run(
        [python, "-c", "import transient_masks as tm, des_background; "
                       "print(tm.__file__); print(tm.data_path('ops_epochs.fits')); "
                       "print(tm.data_path(tm.DEMO_COUNTS_FILENAME)); print(tm.data_path(tm.CCDS_FILENAME))"],
        cwd=work, env=env, check=True, capture_output=True, text=True)
    paths = probe.stdout.split()
    assert len(paths) == 4 and all(path.startswith(str(venv)) for path in paths), paths
    run = subprocess.run([str(venv / "bin" / "transient-masks"), "--epoch", "Y2E1"], cwd=work, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "SYNTHETIC DEMO" in run.stderr
    assert (work / "transient_masks_Y2E1.fits.fz").stat().st_size > 10_000
