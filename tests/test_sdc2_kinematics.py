"""Tests of the kinematic PA measurement (cianna.pipelines.sdc2.kinematics)."""
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from cianna.io.cube import open_cube
from cianna.pipelines.sdc2.kinematics import angle_difference, kinematic_pa, refine_pa
from sdc2_discs import discs_in_noise

SHAPE = (96, 96, 160)  # X, Y, Z
DISCS = [  # x, y, channel, flux [Jy Hz], hi_size ["], i, pa [deg], v_flat [km/s]
    (22.0, 24.0, 40.0, 150.0, 18.0, 60.0, 35.0, 170.0),
    (70.0, 26.0, 80.0, 150.0, 20.0, 70.0, 125.0, 190.0),
    (26.0, 70.0, 120.0, 150.0, 16.0, 50.0, 215.0, 150.0),
    (70.0, 72.0, 60.0, 150.0, 22.0, 75.0, 300.0, 200.0),
]


@pytest.fixture(scope="module")
def disc_cube(tmp_path_factory):
    """SDC2-noise cube with four bright rotating discs; returns (path, truth table with x y z)."""
    path, _, _, rendered = discs_in_noise(tmp_path_factory.mktemp("kin"), SHAPE, DISCS, seed=5)
    rows = [(x, y, z, size, m.w20, pa) for (x, y, z, _, size, _, pa, _), (_, m) in zip(DISCS, rendered)]
    return str(path), Table(rows=rows, names=("x", "y", "z", "hi_size", "w20", "pa_true"))


def test_kinematic_pa_finds_receding_side(disc_cube):
    path, truth = disc_cube
    with open_cube(path) as cube:
        for row in truth:
            kin = kinematic_pa(cube, row["x"], row["y"], row["z"], row["hi_size"], row["w20"])
            assert kin.significance > 3.0
            assert angle_difference(kin.pa, row["pa_true"]) < 20.0, (row["pa_true"], kin.pa)


def test_descending_frequency_axis_gives_same_pa(disc_cube, tmp_path):
    """Reversing the channel order (and the spectral WCS with it) must not turn the PA around."""
    path, truth = disc_cube
    data = fits.getdata(path)[::-1].copy()
    header = fits.getheader(path)
    nz = data.shape[0]
    w = WCS(header)
    f_last = float(w.spectral.pixel_to_world_values(nz - 1))
    header["CRPIX3"], header["CRVAL3"], header["CDELT3"] = 1.0, f_last, -header["CDELT3"]
    flipped = tmp_path / "flipped.fits"
    fits.writeto(flipped, data, header)
    with open_cube(path) as a, open_cube(flipped) as b:
        assert b.freqs[0] > b.freqs[-1]
        for row in truth:
            pa_a = kinematic_pa(a, row["x"], row["y"], row["z"], row["hi_size"], row["w20"]).pa
            pa_b = kinematic_pa(b, row["x"], row["y"], nz - 1 - row["z"], row["hi_size"], row["w20"]).pa
            assert angle_difference(pa_a, pa_b) < 1.0


def test_refine_pa_modes(disc_cube):
    path, truth = disc_cube
    cat = truth.copy()
    cat["pa"] = np.mod(truth["pa_true"] + 180.0, 360.0)  # right axis, wrong side
    cat["pa"].unit = "deg"
    side = refine_pa(path, cat, mode="side")
    assert np.all(angle_difference(side["pa"], truth["pa_true"]) < 1e-9)  # turned back exactly
    assert side["pa"].unit == "deg" and np.all(side["pa_kin_signif"] > 0)
    cat["pa"] = 0.0
    rep = refine_pa(path, cat, mode="replace")
    assert np.all(angle_difference(rep["pa"], truth["pa_true"]) < 20.0)
    # below the significance floor the catalogue's PA is kept
    kept = refine_pa(path, cat, mode="replace", min_significance=1e9)
    assert np.all(kept["pa"] == 0.0) and np.all(kept["pa_kin_signif"] == 0)


def test_refine_pa_bad_input(disc_cube):
    path, truth = disc_cube
    with pytest.raises(ValueError, match="mode"):
        refine_pa(path, truth, mode="sideways")
    with pytest.raises(KeyError, match="pa"):
        refine_pa(path, truth)  # no 'pa' column


def test_refine_pa_releases_the_memory_map(disc_cube, monkeypatch):
    """The kinematic pass drops the cube's mapped pages every few detections (flat RSS on big cubes) and
    gives the same PAs as without releases."""
    import cianna.pipelines.sdc2.data as sdata
    import cianna.pipelines.sdc2.kinematics as kinematics

    path, truth = disc_cube
    cat = truth.copy()
    cat["pa"] = 0.0
    ref = refine_pa(path, cat, mode="replace")
    calls = []
    real = sdata.release_pages
    monkeypatch.setattr(sdata, "release_pages", lambda a: (calls.append(a), real(a)))
    monkeypatch.setattr(kinematics, "_RELEASE_EVERY", 2)
    again = refine_pa(path, cat, mode="replace")
    assert len(calls) == (len(cat) + 1) // 2 and all(isinstance(a, np.ndarray) for a in calls)
    np.testing.assert_array_equal(again["pa"], ref["pa"])
