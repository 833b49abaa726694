"""Packaging of transient_masks: a single-module tool plus its data files.

The module is installed with ``py_modules``; its data (the DES epoch table, the
synthetic demo count maps and the DECam CCD layout) go to
``<prefix>/share/transient_masks`` through ``data_files``, where
``transient_masks.data_path`` finds them after a wheel install.  In a clone or an
editable install they are found beside the module.
"""
import os
import re

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def version():
    with open(os.path.join(HERE, "transient_masks.py")) as source:
        return re.search(r'^__version__ = "([^"]+)"', source.read(), re.M).group(1)


with open(os.path.join(HERE, "README.md")) as readme:
    long_description = readme.read()

DATA_FILES = ["ops_epochs.fits", "demo_transient_maps.fits.gz", "decam_ccds.csv"]

setup(
    name="transient_masks",
    version=version(),
    description="Masks of DECam regions with a significant excess of DES transients",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.9",
    py_modules=["transient_masks", "transient_sim", "des_background"],
    data_files=[("share/transient_masks", DATA_FILES)],
    install_requires=["numpy>=1.22", "scipy>=1.8", "astropy>=5.0", "matplotlib>=3.5", "pyyaml>=5.4",
                      "tqdm>=4.60", "regions>=0.7"],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "fitsio", "h5py", "pyarrow", "pandas", "wheel", "setuptools",
                 "dask[dataframe,distributed]", "distributed", "tqdm"],
        "dask": ["dask[dataframe,distributed]", "pyarrow"],
        "parquet": ["pyarrow", "pandas"],
        "hdf5": ["h5py"],
    },
    entry_points={"console_scripts": [
        "transient-masks = transient_masks:main",
        "transient-sim = transient_sim:main",
        "des-background = des_background:main",
    ]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Astronomy",
        "Intended Audience :: Science/Research",
    ],
)
