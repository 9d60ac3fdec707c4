"""Tests of the SDC1 PyBDSF baseline (cianna.pipelines.sdc1.baseline) and the ``cianna sdc1`` CLI."""
import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.table import Table

from cianna.cli import main
from cianna.pipelines.sdc1 import baseline as bl
from cianna.scoring.sdc1 import read_sdc1_catalog, score_sdc1
from cianna.sim import continuum as cs

pytest.importorskip("bdsf")
pytest.importorskip("ska_sdc")


def _pa_diff(a, b):
    """Difference of two axis orientations modulo 180, in (-90, 90]."""
    return (np.asarray(a) - np.asarray(b) + 90.0) % 180.0 - 90.0


def test_pa_conversion_functions():
    # west (+x) = 270 east of north = SDC1 0; north-south axis (EofN 0) = SDC1 90 -> -90
    assert bl.pa_eofn_to_sdc1(270.0) == pytest.approx(0.0)
    assert bl.pa_eofn_to_sdc1(0.0) == pytest.approx(-90.0)
    assert bl.pa_eofn_to_sdc1(45.0) == pytest.approx(45.0)      # NE-SW axis: clockwise 45 from west via south
    pa = np.linspace(-89, 89, 7)
    np.testing.assert_allclose(bl.pa_eofn_to_sdc1(bl.pa_sdc1_to_eofn(pa)), pa, atol=1e-9)


def test_srl_to_sdc1_conversion(tmp_path):
    srl = Table({"Source_id": [0, 1, 2], "RA": [0.01, 359.99, 0.3] * u.deg, "DEC": [-30.0, -30.01, -30.0] * u.deg,
                 "RA_max": [0.0101, 359.9901, 0.3] * u.deg, "DEC_max": [-30.0, -30.01, -30.0] * u.deg,
                 "Total_flux": [1e-4, 2e-4, 3e-4] * u.Jy, "DC_Maj": [2.0 / 3600, 0.0, 1 / 3600] * u.deg,
                 "DC_Min": [1.0 / 3600, 0.0, 1 / 3600] * u.deg, "DC_PA": [30.0, 0.0, 0.0] * u.deg,
                 "PA": [31.0, 100.0, 0.0] * u.deg})
    # PB image: 1 at the centre, 0.5 elsewhere except far away (0)
    w = cs.make_wcs(11, pixel_size=0.05)
    pb = np.full((11, 11), 0.5, np.float32)
    pb[5, 5] = 1.0
    hdr = w.to_header()
    fits.PrimaryHDU(pb, hdr).writeto(tmp_path / "pb.fits")
    cat = bl.srl_to_sdc1(srl, pb=tmp_path / "pb.fits")
    assert len(cat) == 2                                   # the third source is outside the PB image -> PB 0
    assert list(cat["id"]) == [1, 2]
    assert cat["ra_core"][1] == pytest.approx(-0.0099)     # RA wrapped to (-180, 180]
    assert cat["pa"][0] == pytest.approx(60.0)             # 90 - DC_PA
    assert cat["pa"][1] == pytest.approx(-10.0)            # unresolved: convolved PA used, 90 - 100
    assert cat["b_maj"][1] == pytest.approx(0.1) and cat["b_maj"].unit == u.arcsec
    assert cat["flux"][0] == pytest.approx(1e-4 / cat["pb"][0])
    assert 0.5 < cat["pb"][0] < 1.0
    assert cat["flux"].unit == u.Jy and set(cat["class"]) == {3} and set(cat["size"]) == {2}


def test_write_catalog_by_extension(tmp_path):
    cat = bl.srl_to_sdc1(Table({"Source_id": [0], "RA": [0.0], "DEC": [-30.0], "RA_max": [0.0], "DEC_max": [-30.0],
                                "Total_flux": [1e-4], "DC_Maj": [0.0], "DC_Min": [0.0], "DC_PA": [0.0],
                                "PA": [0.0]}))
    for ext in (".txt", ".ecsv", ".fits", ".vot", ".csv"):
        bl.write_catalog(cat, tmp_path / f"c{ext}")
    assert read_sdc1_catalog(tmp_path / "c.txt")["flux"][0] == pytest.approx(1e-4)
    assert Table.read(tmp_path / "c.ecsv")["flux"].unit == u.Jy
    with pytest.raises(ValueError, match="extension"):
        bl.write_catalog(cat, tmp_path / "c.xyz")


def test_pa_convention_on_simulated_resolved_sources(tmp_path):
    """PyBDSF PA (east of north) converted with 90 - PA matches the simulator's SDC1 PA modulo 180."""
    size, step = 240, 48
    pas = np.linspace(-85, 80, 16)
    grid = np.arange(step // 2 + 12, size - 12, step)[:4]
    gx, gy = np.meshgrid(grid, grid)
    n = pas.size
    rng = np.random.default_rng(0)
    cat = {"x": gx.ravel() + rng.uniform(-0.5, 0.5, n), "y": gy.ravel() + rng.uniform(-0.5, 0.5, n)}
    cat.update(x_core=cat["x"], y_core=cat["y"], flux_app=np.full(n, 1e-3), b_maj=np.full(n, 5.0),
               b_min=np.full(n, 2.0), pa=pas, size=np.full(n, 2), core_frac=np.zeros(n), lobe_delta=np.zeros(n))
    img = cs.render_sources((size, size), cat) + rng.normal(0, 2e-6, (size, size)).astype(np.float32)
    wcs = cs.make_wcs(size)
    path = tmp_path / "pa.fits"
    hdr = cs.make_header(wcs, size)
    del hdr["BPA"]                     # like the real SDC1 headers: PyBDSF needs the explicit beam we pass
    fits.PrimaryHDU(img, hdr).writeto(path)
    out = bl.run_baseline(path)
    ra, dec = wcs.all_pix2world(cat["x"], cat["y"], 0)
    ra = np.where(ra > 180, ra - 360, ra)
    sep = np.hypot((np.asarray(out["ra_cent"])[:, None] - ra[None]) * np.cos(np.radians(30)),
                   np.asarray(out["dec_cent"])[:, None] - dec[None]) * 3600
    j = sep.argmin(axis=0)
    assert np.all(sep[j, np.arange(n)] < 1.0), "every injected source is found within 1 arcsec"
    got = np.asarray(out["pa"])[j]
    assert np.max(np.abs(_pa_diff(got, pas))) < 3.0
    assert np.median(np.abs(_pa_diff(-got, pas))) > 20.0        # the opposite sign convention would fail
    np.testing.assert_allclose(np.asarray(out["b_maj"])[j], 5.0, rtol=0.05)
    np.testing.assert_allclose(np.asarray(out["b_min"])[j], 2.0, rtol=0.1)
    np.testing.assert_allclose(np.asarray(out["flux"])[j], 1e-3, rtol=0.03)


def test_baseline_on_simulated_field_via_cli(tmp_path, capsys):
    """simulate -> baseline (with PB correction) -> score, through ``cianna sdc1``."""
    out = tmp_path / "field"
    assert main(["-q", "sdc1", "simulate", "--out", str(out), "--size", "320", "--seed", "4",
                 "--pb-null-radius", "0.08"]) == 0
    assert "truth" in capsys.readouterr().out
    cat_path = tmp_path / "bdsf.txt"
    assert main(["-q", "sdc1", "baseline", str(out / "image.fits"), "--pb", str(out / "pb.fits"),
                 "--out", str(cat_path)]) == 0
    cat = read_sdc1_catalog(cat_path)
    truth = read_sdc1_catalog(out / "truth.txt")
    assert len(cat) > 0.5 * len(truth)
    score = score_sdc1(cat, truth, area="all", detail=True)
    assert score.purity > 0.9 and score.completeness > 0.5
    assert score.value > 0.5 * len(truth)
    assert score.position > 0.9
    # PB correction: matched flux ratio ~1 with the PB, clearly low without it
    m = score.matches
    bright = m["flux_t"] > 2e-5
    ratio = (m["flux"] / m["flux_t"])[bright]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.1)
    pb = bl.pb_at(out / "pb.fits", m["ra_core"][bright], m["dec_core"][bright])
    assert pb.min() < 0.6
    assert np.median(ratio * pb) < 0.9
    # score command prints the table
    assert main(["-q", "sdc1", "score", str(cat_path), str(out / "truth.txt"), "--area", "all"]) == 0
    printed = capsys.readouterr().out
    assert "n_match" in printed and "completeness" in printed


def test_cli_errors(tmp_path, capsys):
    assert main(["-q", "sdc1", "baseline", str(tmp_path / "nope.fits"), "--out", str(tmp_path / "c.txt")]) == 1
    assert "nope.fits" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sdc1", "score", "a.txt", "b.txt", "--area", "nowhere"])
