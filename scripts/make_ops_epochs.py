#!/usr/bin/env python
"""Write ``ops_epochs.fits``: the DES observing epochs (the OPS_EPOCH table).

The values are the public DES epoch boundaries. The columns and types follow
the DES database table: NAME (string, up to 32 characters), MINNITE and MAXNITE
(8-character strings, YYYYMMDD), MINEXPNUM and MAXEXPNUM (64-bit integers), in a
FITS binary table in HDU 1.

    python scripts/make_ops_epochs.py            # rewrites ./ops_epochs.fits
    python scripts/make_ops_epochs.py -o other.fits

The test suite regenerates the table and checks the shipped file against it.
"""
import argparse
import os
import sys
import tempfile

import numpy as np
from astropy.io import fits

# NAME, MINNITE, MAXNITE, MINEXPNUM, MAXEXPNUM
OPS_EPOCHS = [
    ("SVE1", "20120911", "20121228", 133757, 164457),
    ("SVE2", "20130104", "20130228", 165290, 182695),
    ("Y1E1", "20130815", "20131128", 226353, 258564),
    ("Y1E2", "20131129", "20140209", 258621, 284018),
    ("Y2E1", "20140807", "20141129", 345031, 382973),
    ("Y2E2", "20141205", "20150518", 383751, 438346),
    ("Y3E1", "20150731", "20151125", 459809, 496788),
    ("Y3", "20151126", "20160212", 496794, 516846),
    ("Y4E1", "20160813", "20161017", 563912, 583618),
    ("Y4E1.5", "20161018", "20170102", 583693, 605988),
    ("Y4E2", "20170103", "20170218", 605796, 622099),
    ("Y5E1", "20170803", "20170902", 664648, 674856),
    ("Y5E2", "20170906", "20180222", 674865, 724479),
    ("Y6", "20180908", "20190109", 770843, 810381),
]


def epochs_hdu():
    """The epoch table as a FITS BinTableHDU named OPS_EPOCH."""
    names, minnite, maxnite, minexp, maxexp = zip(*OPS_EPOCHS)
    columns = [
        fits.Column(name="NAME", format="32A", array=np.array(names)),
        fits.Column(name="MINNITE", format="8A", array=np.array(minnite)),
        fits.Column(name="MAXNITE", format="8A", array=np.array(maxnite)),
        fits.Column(name="MINEXPNUM", format="K", array=np.array(minexp, dtype=np.int64)),
        fits.Column(name="MAXEXPNUM", format="K", array=np.array(maxexp, dtype=np.int64)),
    ]
    hdu = fits.BinTableHDU.from_columns(columns, name="OPS_EPOCH")
    hdu.header["COMMENT"] = "DES observing epochs (public OPS_EPOCH values)"
    return hdu


def main(argv=None):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default=os.path.join(here, "ops_epochs.fits"))
    args = parser.parse_args(argv)
    hdul = fits.HDUList([fits.PrimaryHDU(), epochs_hdu()])
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.output)), suffix=".tmp")
    os.close(fd)
    try:
        hdul.writeto(tmp, overwrite=True, checksum=True)
        os.replace(tmp, args.output)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
