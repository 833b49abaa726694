"""Tests of the plots (issue 4): rendered headless (Agg), checked as a reader would."""
import re
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

import transient_masks as tm

DEAD_CCD = 61  # N30: no transients
HOT_CCD = 35  # N4: a hot column and a hot spot
HOT_COLUMN = 40  # map cell x of the hot column
HOT_SPOT = (slice(100, 106), slice(200, 206))  # map cells (y, x) of the hot spot


def make_counts(seed=1, background=6.0):
    """A (62, 256, 256) count cube: Poisson background, one hot column, one hot spot, one dead CCD."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(background, size=(tm.N_CCD, tm.MAP_NY, tm.MAP_NX))
    counts[HOT_CCD - 1, 30:, HOT_COLUMN] += rng.poisson(10 * background, size=tm.MAP_NY - 30)
    counts[HOT_CCD - 1][HOT_SPOT] += 50
    counts[DEAD_CCD - 1] = 0
    return counts.astype(np.uint16)


@pytest.fixture(scope="module")
def epoch_mask():
    return tm.EpochMask(make_counts(), epoch="Y2E1", fp_rate=1e-4)


def write_count_file(path, epochs=("Y2E1", "Y2E2")):
    """A tiny DES-format count-map file: empty primary, one uint16 ImageHDU per epoch."""
    table = tm.read_epochs()
    hdus = [fits.PrimaryHDU()]
    for seed, name in enumerate(epochs):
        row = table[list(table["NAME"]).index(name)]
        hdu = fits.ImageHDU(make_counts(seed=seed + 1), name=name)
        hdu.header["EPOCH"] = name
        hdu.header["MIN_EXP"] = int(row["MINEXPNUM"])
        hdu.header["MAX_EXP"] = int(row["MAXEXPNUM"])
        hdus.append(hdu)
    fits.HDUList(hdus).writeto(path)
    return str(path)


def pdf_page_count(path):
    data = Path(path).read_bytes()
    # page objects only: "/Type /Pages" (the page tree) does not match
    return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", data))


def render(figure, dpi=100):
    """Render a figure with Agg; returns the RGBA array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    figure.set_dpi(dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def by_gid(figure, gid):
    found = figure.findobj(lambda artist: artist.get_gid() == gid)
    assert len(found) == 1, f"{gid}: found {len(found)}"
    return found[0]


def all_text(figure):
    """The text a reader sees: visible Text artists (in visible axes)."""
    from matplotlib.text import Text

    def shown(text):
        return text.get_visible() and (text.axes is None or text.axes.get_visible())

    return "\n".join(t.get_text() for t in figure.findobj(Text) if shown(t))


def test_ccd_layout_matches_the_facts():
    layout = tm.read_ccd_layout()
    assert list(layout["CCDNUM"]) == list(range(1, 63))
    assert [str(d) for d in layout["DETPOS"]] == [tm.DETPOS[c] for c in range(1, 63)]
    # 12 columns along x with 3,4,5,6,6,7 | 7,6,6,5,4,3 CCDs
    columns, per_column = np.unique(np.round(layout["X_CENTER_MM"], 2), return_counts=True)
    assert list(per_column) == [3, 4, 5, 6, 6, 7, 7, 6, 6, 5, 4, 3]
    # no two CCDs overlap: centres at least one CCD size apart in x or y
    x, y = np.asarray(layout["X_CENTER_MM"]), np.asarray(layout["Y_CENTER_MM"])
    dx, dy = np.abs(x[:, None] - x), np.abs(y[:, None] - y)
    apart = (dx >= 30.72) | (dy >= 61.44)
    assert apart[~np.eye(62, dtype=bool)].all()


def test_ccd_layout_bad_file(tmp_path):
    bad = tmp_path / "ccds.csv"
    bad.write_text("ccdnum,detpos,x_center_mm,y_center_mm\n1,S29,-185.988,-63.89\n")
    with pytest.raises(tm.BadInputError, match="ccds.csv"):
        tm.read_ccd_layout(str(bad))


def test_ccd_page_title_and_colour_scale(epoch_mask):
    figure = tm.plot_ccd(epoch_mask, HOT_CCD)
    stats = epoch_mask.stats()[HOT_CCD - 1]
    text = all_text(figure)
    threshold = float(epoch_mask.threshold[HOT_CCD - 1])
    assert f"CCD {HOT_CCD} (N4)" in text
    assert f"threshold {threshold:g}" in text
    assert f"area masked {100 * stats['AREA_MASKED']:.2f}%" in text
    assert f"transients masked {100 * stats['TRANSIENTS_MASKED']:.2f}%" in text
    assert 0 < stats["AREA_MASKED"] < 0.05
    image = by_gid(figure, "counts")
    assert image.get_clim() == (0, 3 * threshold)
    # the axes read in CCD pixels
    assert image.get_extent() == [0.5, 2048.5, 0.5, 4096.5]
    np.testing.assert_array_equal(image.get_array(), epoch_mask.counts[HOT_CCD - 1])


def test_masked_cells_drawn_where_the_mask_says(epoch_mask):
    figure = tm.plot_ccd(epoch_mask, HOT_CCD)
    mask = epoch_mask.mask[HOT_CCD - 1]
    overlay = by_gid(figure, "mask")
    np.testing.assert_array_equal(~np.ma.getmaskarray(overlay.get_array()), mask)
    assert mask[HOT_SPOT].all() and mask[40:, HOT_COLUMN].all()
    # the rendered page: pixels inside masked cells change colour when the
    # overlay is hidden; pixels of unmasked cells do not
    outline = by_gid(figure, "mask_outline")
    shown = render(figure)
    overlay.set_visible(False)
    outline.set_visible(False)
    hidden = render(figure)
    overlay.set_visible(True)
    outline.set_visible(True)
    ax = overlay.axes

    def pixel(image, cell_y, cell_x):
        col, row = ax.transData.transform((0.5 + 8 * (cell_x + 0.5), 0.5 + 16 * (cell_y + 0.5)))
        return image[image.shape[0] - int(round(row)), int(round(col)), :3].astype(int)

    cells = [(103, 203), (150, HOT_COLUMN), (20, 203), (150, HOT_COLUMN + 20)]
    for cell_y, cell_x in cells:
        changed = np.abs(pixel(shown, cell_y, cell_x) - pixel(hidden, cell_y, cell_x)).sum() > 30
        assert changed == mask[cell_y, cell_x], (cell_y, cell_x)
    assert [mask[c] for c in cells] == [True, True, False, False]
    # the outline follows the cell edges of the masked cells
    segments = by_gid(figure, "mask_outline").get_segments()
    assert len(segments) > 0
    xs = np.concatenate([s[:, 0] for s in segments])
    assert np.allclose((xs - 0.5) % 8, 0)


def test_mask_outline_of_one_cell():
    mask = np.zeros((4, 4), bool)
    mask[1, 2] = True
    segments = tm._mask_outline(mask, (0, 4, 0, 4))
    assert len(segments) == 4
    corners = {tuple(p) for s in segments for p in s}
    assert corners == {(2, 1), (3, 1), (2, 2), (3, 2)}


def test_dead_ccd_is_labelled_not_drawn(epoch_mask):
    figure = tm.plot_ccd(epoch_mask, DEAD_CCD)
    assert "no transients" in by_gid(figure, "dead").get_text()
    assert "dead CCD" in all_text(figure)
    assert by_gid(figure, "dead").get_visible()
    drawn = figure.findobj(lambda a: a.get_gid() in ("counts", "mask", "mask_outline") and a.get_visible())
    assert drawn == []
    # and the same page object, redrawn for a live CCD, hides the label again
    page = tm._CcdPage(epoch_mask)
    page.draw(DEAD_CCD)
    page.draw(HOT_CCD)
    assert not by_gid(page.figure, "dead").get_visible()
    assert by_gid(page.figure, "counts").get_visible()


def test_ccd31_right_half_shown_masked(epoch_mask):
    figure = tm.plot_ccd(epoch_mask, 31)
    overlay = np.ma.getmaskarray(by_gid(figure, "mask").get_array())
    assert not overlay[:, 128:].any()  # no overlay data hidden on the right half: all masked
    assert "amp A unstable" in all_text(figure)
    assert "amp A unstable" not in all_text(tm.plot_ccd(epoch_mask, 30))


def test_plot_epoch_writes_a_page_per_ccd(tmp_path, epoch_mask):
    # all 62 pages are checked through the command line (test_cli_plot_writes_the_files)
    pdf = tmp_path / "y2e1.pdf"
    returned = tm.plot_epoch(epoch_mask, str(pdf), ccdnums=[1, 31, DEAD_CCD])
    assert returned is epoch_mask
    assert pdf_page_count(pdf) == 3
    assert re.search(rb"/Count 3\b", pdf.read_bytes())
    with pytest.raises(tm.BadInputError, match="exists"):
        tm.plot_epoch(epoch_mask, str(pdf))
    assert list(tmp_path.iterdir()) == [pdf]  # no temporary left behind


def test_plot_epoch_by_name_uses_the_options(tmp_path):
    maps = tm.CountMaps(write_count_file(tmp_path / "maps.fits"))
    pdf = tmp_path / "y2e2.pdf"
    mask = tm.plot_epoch("Y2E2", str(pdf), maps=maps, fp_rate=1e-3, x_bin=2, y_bin=4, ccdnums=[HOT_CCD, DEAD_CCD])
    assert pdf_page_count(pdf) == 2
    assert mask.epoch == "Y2E2" and mask.counts.shape == (62, 64, 128)
    expected = tm.EpochMask.from_maps(maps, "Y2E2", fp_rate=1e-3, x_bin=2, y_bin=4)
    np.testing.assert_array_equal(mask.mask, expected.mask)
    with pytest.raises(tm.BadInputError, match="Y9"):
        tm.plot_epoch("Y9", str(tmp_path / "y9.pdf"), maps=maps)
    with pytest.raises(tm.BadInputError, match="63"):
        tm.plot_epoch(mask, str(tmp_path / "bad.pdf"), ccdnums=[63])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.fits", "y2e2.pdf"]


def test_rebinned_page_still_in_pixels(epoch_mask):
    mask = tm.EpochMask(make_counts(), epoch="Y2E1", x_bin=4, y_bin=2)
    figure = tm.plot_ccd(mask, HOT_CCD)
    image = by_gid(figure, "counts")
    assert image.get_extent() == [0.5, 2048.5, 0.5, 4096.5]
    assert image.get_array().shape == (128, 64)


def test_focal_plane_places_every_ccd(epoch_mask, tmp_path):
    figure = tm.plot_focal_plane(epoch_mask)
    layout = tm.read_ccd_layout()
    text = all_text(figure)
    for row in layout:
        ccdnum, x_c, y_c = int(row["CCDNUM"]), float(row["X_CENTER_MM"]), float(row["Y_CENTER_MM"])
        rectangle = by_gid(figure, f"ccd_{ccdnum}")
        assert rectangle.get_x() == pytest.approx(x_c - 15.36)
        assert rectangle.get_y() == pytest.approx(y_c - 30.72)
        assert rectangle.get_width() == pytest.approx(30.72)
        assert rectangle.get_height() == pytest.approx(61.44)
        label = by_gid(figure, f"label_{ccdnum}")
        assert label.get_text().split("\n")[:2] == [str(row["DETPOS"]), str(ccdnum)]
        assert label.get_position() == pytest.approx((x_c, y_c))
        if ccdnum == DEAD_CCD:
            assert "dead" in label.get_text()
            assert not figure.findobj(lambda a: a.get_gid() == f"counts_{ccdnum}")
            continue
        image = by_gid(figure, f"counts_{ccdnum}")
        assert image.get_extent() == pytest.approx([x_c - 15.36, x_c + 15.36, y_c - 30.72, y_c + 30.72])
        background = tm._ccd_background(epoch_mask)[ccdnum - 1]
        np.testing.assert_allclose(image.get_array(), epoch_mask.counts[ccdnum - 1] / background)
        # the overlay marks a block exactly when one of its cells is masked
        overlay = ~np.ma.getmaskarray(by_gid(figure, f"mask_{ccdnum}").get_array())
        expected = epoch_mask.mask[ccdnum - 1].reshape(overlay.shape[0], -1, overlay.shape[1], 256 // overlay.shape[1])
        np.testing.assert_array_equal(overlay, expected.any(axis=(1, 3)))
    assert "Y2E1" in text and f"{100 * epoch_mask.area_fraction:.2f}%" in text
    assert "DEMO" not in text
    # it renders, and the hot CCD shows the overlay colour where its hot spot is
    rgba = render(figure)
    ax = by_gid(figure, "ccd_1").axes
    x_n4, y_n4 = 16.908, 0.0
    spot = (x_n4 - 15.36 + 0.015 * 8 * 203, y_n4 - 30.72 + 0.015 * 16 * 103)
    col, row = ax.transData.transform(spot)
    pixel = rgba[rgba.shape[0] - int(round(row)), int(round(col)), :3].astype(float)
    assert pixel[0] > 150 and pixel[1] < 100  # magenta-ish, not viridis


def test_focal_plane_files_and_demo_note(epoch_mask, tmp_path):
    demo = tm.EpochMask(make_counts(), epoch="Y2E1", demo=True)
    for suffix, magic in (("png", b"\x89PNG"), ("pdf", b"%PDF")):
        path = tmp_path / f"fp.{suffix}"
        figure = tm.plot_focal_plane(demo, str(path), dpi=40)
        assert path.read_bytes()[:4] == magic
    assert "DEMO DATA" in by_gid(figure, "demo").get_text()


def test_survey_summary(tmp_path):
    maps = tm.CountMaps(write_count_file(tmp_path / "maps.fits"))
    path = tmp_path / "summary.png"
    figure = tm.plot_survey_summary(maps, str(path), fp_rate=1e-4)
    assert path.read_bytes()[:4] == b"\x89PNG"
    image = by_gid(figure, "area_masked")
    data = image.get_array()
    assert data.shape == (2, 62)
    for row, epoch in enumerate(("Y2E1", "Y2E2")):
        mask = tm.EpochMask.from_maps(maps, epoch, fp_rate=1e-4)
        live = np.asarray(mask.live)
        np.testing.assert_allclose(data[row][live], 100 * np.asarray(mask.stats()["AREA_MASKED"])[live])
        assert np.ma.getmaskarray(data[row])[DEAD_CCD - 1]  # dead: drawn grey, not as 100%
    labels = [t.get_text() for t in image.axes.get_yticklabels()]
    assert labels == ["Y2E1", "Y2E2"]
    # beyond the colour scale (CCD 31: half masked) the value is written in the cell
    cell_texts = {tuple(np.round(t.get_position(), 3)): t.get_text() for t in image.axes.texts}
    assert cell_texts[(30, 0)] == f"{data[0, 30]:.0f}" and data[0, 30] >= 50
    assert cell_texts[(DEAD_CCD - 1, 1)] == "dead"
    xlabels = [t.get_text() for t in image.axes.get_xticklabels()]
    assert xlabels[0] == "S29 1" and xlabels[DEAD_CCD - 1] == "N30 61"


def test_cli_plot_writes_the_files(tmp_path, capsys):
    counts_file = write_count_file(tmp_path / "maps.fits")
    out = tmp_path / "plots"
    out.mkdir()
    code = tm.main(["--plot", "Y2E1", "--counts", counts_file, "--plot_dir", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["Y2E1_ccds.pdf", "Y2E1_focal_plane.pdf", "Y2E1_focal_plane.png"]
    assert pdf_page_count(out / "Y2E1_ccds.pdf") == 62
    assert re.search(rb"/Count 62\b", (out / "Y2E1_ccds.pdf").read_bytes())
    summary = captured.err.strip().splitlines()[-1]
    assert summary.startswith("Y2E1: wrote ") and all(name in summary for name in names)
    # again without --overwrite: refused in one line, nothing changed
    code = tm.main(["--plot", "Y2E1", "--counts", counts_file, "--plot_dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "exists" in err and err.count("\n") == 1


def test_cli_summary_overwrite(tmp_path, capsys):
    counts_file = write_count_file(tmp_path / "maps.fits")
    code = tm.main(["--summary", "--counts", counts_file, "--plot_dir", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "survey_summary.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "survey_summary.pdf").read_bytes()[:4] == b"%PDF"
    before = (tmp_path / "survey_summary.png").read_bytes()
    assert tm.main(["--summary", "--counts", counts_file, "--plot_dir", str(tmp_path)]) == 2
    assert "exists" in capsys.readouterr().err
    code = tm.main(["--summary", "--counts", counts_file, "--plot_dir", str(tmp_path), "--overwrite",
                    "--fp_rate", "0.01"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "survey_summary.png").read_bytes() != before  # a looser fp_rate masks more


def test_cli_bad_epoch(tmp_path, capsys):
    counts_file = write_count_file(tmp_path / "maps.fits")
    code = tm.main(["--plot", "Y9", "--counts", counts_file, "--plot_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Y9" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.fits"]


def test_import_does_not_load_matplotlib():
    import subprocess
    import sys

    code = "import sys, transient_masks; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=str(Path(tm.__file__).parent))
    assert result.stdout.strip() == "False"


def test_cli_summary_options_and_bad_values(tmp_path, capsys):
    counts_file = write_count_file(tmp_path / "maps.fits")
    code = tm.main(["--summary", "--counts", counts_file, "--plot_dir", str(tmp_path), "--x_bin", "3"])
    err = capsys.readouterr().err
    assert code == 2 and "x_bin" in err and err.count("\n") == 1
    code = tm.main(["--summary", "--counts", counts_file, "--plot_dir", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 2 and "nowhere" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.fits"]
