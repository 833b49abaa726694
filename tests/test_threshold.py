"""The Poisson threshold without scipy.stats: same values to the bit, faster start-up."""
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import poisson

import transient_masks as tm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Poisson means the rule uses (mode + 1): every small one, then up to fully re-binned maps.
MEANS = np.concatenate([np.arange(1.0, 1001.0), np.unique(np.geomspace(1000, 65535.0 * 65536, 120).round())])
RATES = np.concatenate([np.geomspace(1.2e-16, 0.999, 40), [1e-4, 1e-5, 1e-6, 1e-3, 0.5, 2.0 ** -52]])


@pytest.mark.parametrize("fp_rate", RATES)
def test_poisson_quantile_is_bit_identical_to_scipy_stats(fp_rate):
    expected = poisson.isf(fp_rate, MEANS)
    got = tm.poisson_threshold(MEANS - 1.0, np.zeros_like(MEANS), fp_rate)
    np.testing.assert_array_equal(got, expected)


def test_threshold_is_the_larger_of_the_floor_and_the_quantile():
    mode = np.array([0.0, 3.0, 3.0, 10.0])
    centre = np.array([0.5, 3.2, 9.1, 12.0])
    expected = np.maximum(np.ceil(2 * centre), poisson.isf(1e-4, mode + 1))
    np.testing.assert_array_equal(tm.poisson_threshold(mode, centre, 1e-4), expected)
    assert tm.poisson_threshold(3, 3.2).shape == ()


def test_masks_match_the_scipy_stats_rule(rng):
    counts = rng.poisson(4.0, size=(62, 256, 256))
    counts[7, :, 3] += 30
    mask = tm.EpochMask(counts, fp_rate=3e-5)
    live = mask.live
    expected = np.maximum(np.ceil(2 * mask.centre[live]), poisson.isf(3e-5, mask.mode[live] + 1))
    np.testing.assert_array_equal(mask.threshold[live], expected)


@pytest.mark.parametrize("fp_rate", [1e-17, 0.0, 1.0, -1e-4, np.nan, np.inf, "1e-4", None, [1e-4]])
def test_unusable_fp_rates_are_clear_errors(fp_rate):
    with pytest.raises(tm.BadInputError, match="fp_rate="):
        tm.poisson_threshold(3, 3.0, fp_rate)


def test_import_and_masking_do_not_import_scipy_stats():
    code = ("import sys, numpy as np, transient_masks as tm\n"
            "mask = tm.EpochMask(np.random.default_rng(1).poisson(3, (62, 256, 256)))\n"
            "mask.apply([5], [10.0], [10.0])\n"
            "print(sorted(name for name in sys.modules if name.startswith('scipy.stats')))\n")
    env = dict(os.environ, PYTHONPATH=ROOT)
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert run.stdout.strip() == "[]"
