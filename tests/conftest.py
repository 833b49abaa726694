"""Shared fixtures: small DES-format count-map files made in the tests."""
import gzip
import io

import numpy as np
import pytest
from astropy.io import fits

import transient_masks as tm


def write_count_maps(path, cubes, demo=False, epochs=None):
    """Write ``cubes`` ({epoch: (62, ny, nx) counts}) in the DES count-map format."""
    epochs = tm.read_epochs() if epochs is None else epochs
    rows = {name: row for name, row in zip(epochs["NAME"], epochs)}
    hdus = [fits.PrimaryHDU()]
    for name, cube in cubes.items():
        hdu = fits.ImageHDU(np.asarray(cube, dtype=np.uint16), name=name)
        hdu.header["EPOCH"] = name
        hdu.header["MIN_EXP"] = int(rows[name]["MINEXPNUM"])
        hdu.header["MAX_EXP"] = int(rows[name]["MAXEXPNUM"])
        if demo:
            hdu.header["DEMO"] = True
        hdus.append(hdu)
    path = str(path)
    if path.endswith(".gz"):  # gzip level 1: astropy's level 9 is slow on noisy counts
        buffer = io.BytesIO()
        fits.HDUList(hdus).writeto(buffer)
        with open(path, "wb") as out:
            out.write(gzip.compress(buffer.getvalue(), compresslevel=1))
    else:
        fits.HDUList(hdus).writeto(path)
    return path


def poisson_cube(rng, mean=4.0, shape=(tm.MAP_NY, tm.MAP_NX)):
    """A (62, ny, nx) cube of pure Poisson counts, with CCD 61 dead as in DES."""
    cube = rng.poisson(mean, size=(tm.N_CCD,) + shape).astype(np.uint16)
    cube[60] = 0
    return cube


@pytest.fixture
def rng():
    return np.random.default_rng(20261123)


@pytest.fixture
def counts_file(tmp_path, rng):
    """A two-epoch count-map file: a hot column on CCD 5 in Y2E1, a hot spot on CCD 10 in Y6."""
    y2e1 = poisson_cube(rng, 4.0)
    y2e1[4, 20:60, 100] += 60
    y6 = poisson_cube(rng, 3.0)
    y6[9, 100:103, 50:53] += 80
    return write_count_maps(tmp_path / "maps.fits", {"Y2E1": y2e1, "Y6": y6})
