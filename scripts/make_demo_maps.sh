#!/bin/sh
# Regenerate the synthetic demo count maps shipped with transient_masks
# (demo_transient_maps.fits.gz, DEMO = T in every HDU) from a recorded seed:
# simulate a transient catalog for three epochs, then gather it into DES-format
# count maps.  Y2E1 has CCD 2 dead; Y4E2 has CCD 2 back and no light bulb yet;
# Y6 has the CCD 46 light bulb and the CCD 41 amp B problem.  CCD 61 is dead
# and the right half of CCD 31 unstable throughout.
#
#     sh scripts/make_demo_maps.sh            # from the top of the repository
#
# Takes about a minute and 600 MB of temporary disk (the catalog, deleted after).
set -eu
cd "$(dirname "$0")/.."
SEED=20261123
EPOCHS="Y2E1 Y4E2 Y6"
BACKGROUND=3
tmp=$(mktemp -d "${TMPDIR:-/tmp}/demo_maps.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
python transient_sim.py "$tmp/demo_catalog.fits" --epochs $EPOCHS \
    --seed $SEED --background $BACKGROUND
python transient_masks.py --gather "$tmp/demo_catalog.fits" --demo \
    -o demo_transient_maps.fits.gz --overwrite
