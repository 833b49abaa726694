"""Full-resolution mask files: content, headers, compression, atomic writes."""
import os

import numpy as np
import pytest
from astropy.io import fits

import transient_masks as tm
from conftest import poisson_cube


@pytest.fixture(scope="module")
def epoch_mask():
    rng = np.random.default_rng(5)
    cube = poisson_cube(rng, 4.0)
    cube[4, 20:60, 100] += 60
    cube[40, 200:210, 30:50] += 40
    return tm.EpochMask(cube, epoch="Y2E1", min_exp=345031, max_exp=382973, fp_rate=1e-4,
                        x_bin=1, y_bin=1, floor="median", demo=True, source="maps.fits")


@pytest.fixture(scope="module")
def compressed(epoch_mask, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("masks") / "masks.fits.fz")
    epoch_mask.write_masks(path)
    return path


def test_compressed_masks_round_trip_bit_exact_with_astropy(epoch_mask, compressed):
    with fits.open(compressed) as hdul:
        hdul.verify("exception")
        assert len(hdul) == 63
        for ccdnum in range(1, 63):
            hdu = hdul[ccdnum]
            assert isinstance(hdu, fits.CompImageHDU)
            assert hdu.header["CCDNUM"] == ccdnum and hdu.header["DETPOS"] == tm.DETPOS[ccdnum]
            assert hdu.header["EXTNAME"] == tm.DETPOS[ccdnum]
            data = hdu.data
            assert data.dtype == np.uint8 and data.shape == (4096, 2048)
            np.testing.assert_array_equal(data, epoch_mask.pixel_mask(ccdnum).astype(np.uint8))
    with fits.open(compressed, disable_image_compression=True) as raw:
        table = raw[5].header  # the compressed form: one tile per CCD
        assert (table["ZTILE1"], table["ZTILE2"], table["ZCMPTYPE"]) == (2048, 4096, "GZIP_2")
        assert table["NAXIS2"] == 1
    assert os.path.getsize(compressed) < 2e6


def test_compressed_masks_read_by_fitsio(epoch_mask, compressed):
    fitsio = pytest.importorskip("fitsio")
    with fitsio.FITS(compressed) as f:
        assert len(f) == 63
        for ccdnum in (1, 5, 31, 41, 61):
            np.testing.assert_array_equal(f[ccdnum].read(), epoch_mask.pixel_mask(ccdnum).astype(np.uint8))
            assert f[ccdnum].read_header()["CCDNUM"] == ccdnum


def test_headers_carry_provenance(epoch_mask, compressed):
    with fits.open(compressed) as hdul:
        primary = hdul[0].header
        assert primary["EPOCH"] == "Y2E1"
        assert (primary["MIN_EXP"], primary["MAX_EXP"]) == (345031, 382973)
        assert primary["FP_RATE"] == 1e-4 and primary["X_BIN"] == 1 and primary["Y_BIN"] == 1
        assert primary["FLOOR"] == "median" and primary["CELL_NX"] == 8 and primary["CELL_NY"] == 16
        assert primary["DEMO"] is True and primary["TM_VERS"] == tm.__version__
        assert primary["COUNTS"] == "maps.fits" and primary["DATE"].startswith("20")
        assert primary["AREAFRAC"] == pytest.approx(epoch_mask.area_fraction)
        assert primary["TRANFRAC"] == pytest.approx(epoch_mask.transient_fraction)
        assert "SYNTHETIC DEMO DATA" in str(primary["COMMENT"])
        ccd5 = hdul[5].header
        assert ccd5["THRESH"] == epoch_mask.threshold[4]
        assert ccd5["AREAFRAC"] == pytest.approx(epoch_mask.mask[4].mean())
        assert ccd5["LIVE"] is True and ccd5["DEMO"] is True and ccd5["EPOCH"] == "Y2E1"
        dead = hdul[61].header
        assert dead["LIVE"] is False and dead["THRESH"] == -1 and dead["AREAFRAC"] == 1.0


def test_plain_masks_and_a_des_bit_as_masked_value(epoch_mask, tmp_path):
    path = str(tmp_path / "plain.fits")
    epoch_mask.write_masks(path, compress=False, masked_value=tm.MASK_BITS["SUSPECT"])
    with fits.open(path) as hdul:
        assert isinstance(hdul[5], fits.ImageHDU) and not isinstance(hdul[5], fits.CompImageHDU)
        data = hdul[5].data
        assert data.dtype.kind == "i" and data.dtype.itemsize == 2
        assert set(np.unique(data)) == {0, 2048}
        np.testing.assert_array_equal(data == 2048, epoch_mask.pixel_mask(5))
        assert hdul[0].header["MASKVAL"] == 2048
    assert os.path.getsize(path) > 500e6  # the plain form really is plain


def test_refuses_to_overwrite_and_leaves_no_partial_file(epoch_mask, tmp_path, monkeypatch):
    path = tmp_path / "m.fits.fz"
    path.write_text("precious")
    with pytest.raises(tm.BadInputError, match="output exists"):
        epoch_mask.write_masks(str(path))
    assert path.read_text() == "precious"
    with pytest.raises(tm.BadInputError, match="masked_value=0"):
        epoch_mask.write_masks(str(tmp_path / "other.fits"), masked_value=0)

    def crash(hdu):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tm, "_extension_bytes", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        epoch_mask.write_masks(str(path), overwrite=True)
    assert path.read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["m.fits.fz"]
