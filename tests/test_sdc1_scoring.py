"""Tests of cianna.scoring.sdc1: SDC1 catalogue I/O and the ska-sdc scorer wrapper."""
import numpy as np
import pytest
from astropy import units as u
from astropy.table import Table

from cianna.scoring.sdc1 import (CAT_COLUMNS, TRAIN_BOXES, in_train_box, read_sdc1_catalog, score_sdc1,
                                 write_sdc1_catalog)

pytest.importorskip("ska_sdc")


def _catalog(n, rng, ra=(0.05, 0.4), dec=(-30.3, -29.7), start_id=1):
    """Synthetic SFG-like truth: Gaussian sources with resolved sizes."""
    t = Table()
    t["id"] = np.arange(start_id, start_id + n)
    t["ra_core"] = rng.uniform(*ra, n)
    t["dec_core"] = rng.uniform(*dec, n)
    t["ra_cent"] = t["ra_core"]
    t["dec_cent"] = t["dec_core"]
    t["flux"] = 10 ** rng.uniform(-5, -3, n)
    t["core_frac"] = np.zeros(n)
    t["b_maj"] = rng.uniform(1.0, 4.0, n)
    t["b_min"] = t["b_maj"] * rng.uniform(0.3, 1.0, n)
    t["pa"] = rng.uniform(-90, 90, n)
    t["size"] = np.full(n, 2)
    t["class"] = np.full(n, 3)
    return t


def _vstack(*tables):
    from astropy.table import vstack
    out = vstack(tables)
    out["id"] = np.arange(1, len(out) + 1)
    return out


def test_roundtrip_with_and_without_header(tmp_path):
    t = _catalog(25, np.random.default_rng(0))
    for header in (False, True):
        path = write_sdc1_catalog(t, tmp_path / f"c{header}.txt", header=header)
        lines = open(path).read().splitlines()
        assert len(lines) == 25 + header
        assert lines[0].startswith("#") == header
        back = read_sdc1_catalog(path)
        assert back.colnames == CAT_COLUMNS and len(back) == 25
        assert back.meta["n_header_lines"] == int(header)
        assert back["flux"].unit == u.Jy and back["b_maj"].unit == u.arcsec and back["ra_core"].unit == u.deg
        np.testing.assert_allclose(back["ra_core"], t["ra_core"], atol=1e-8)
        np.testing.assert_allclose(back["flux"], t["flux"], rtol=1e-5)
        np.testing.assert_array_equal(back["class"], t["class"])
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cFalse.txt", "cTrue.txt"]


def test_read_15_column_training_file_with_skao_header(tmp_path):
    path = tmp_path / "train.txt"
    rows = ["COLUMN1:    ID    [none]    Source ID", "COLUMN10:    PA    [degs]    ",
            "PA (measured clockwise from the longitude-wise direction)",
            "        ID      RA (core)     DEC (core) ...",
            "  24121695 -0.64222741 -29.77524185 -0.64231591 -29.77521061 3.47129e-05 0.0 5.600 5.551 328.554 "
            "1 1 1 19704.519 17712.942",
            "  20167150 -0.39047295 -29.86749268 -0.39066725 -29.86885131 2.95553e-02 0.01692422 107.110 43.263 "
            "191.258 1 1 1 18401.338 17160.919"]
    path.write_text("\n".join(rows) + "\n")
    t = read_sdc1_catalog(path)
    assert t.meta["n_header_lines"] == 4 and len(t) == 2 and t.colnames == CAT_COLUMNS
    assert t["id"][1] == 20167150 and t["pa"][1] == pytest.approx(191.258)


def test_write_refuses_nan_and_missing_columns(tmp_path):
    t = _catalog(3, np.random.default_rng(1))
    t["flux"][1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_sdc1_catalog(t, tmp_path / "x.txt")
    with pytest.raises(ValueError, match="missing SDC1 column"):
        write_sdc1_catalog(t[["id", "flux"]], tmp_path / "x.txt")


def test_perfect_catalogue_scores_n(tmp_path):
    truth = _catalog(200, np.random.default_rng(2))
    path = write_sdc1_catalog(truth, tmp_path / "truth.txt")
    score = score_sdc1(path, path, area="test")
    assert score.n_det == score.n_match == score.n_truth == 200
    assert score.value == pytest.approx(200.0, abs=1e-6)
    assert score.purity == 1.0 and score.completeness == 1.0 and score.acc_pc == pytest.approx(100.0)
    for term in ("position", "flux", "b_maj", "b_min", "pa", "core_frac", "class_"):
        assert getattr(score, term) == pytest.approx(1.0)


def test_false_and_degraded_detections():
    rng = np.random.default_rng(3)
    truth = _catalog(100, rng)
    sub = truth.copy()
    sub["flux"] = sub["flux"] * 1.5        # 50 % flux error -> flux term 0.2
    sub["class"] = 1                       # wrong class -> class term 0
    false = _catalog(10, rng, ra=(1.0, 1.2), start_id=1000)
    score = score_sdc1(_vstack(sub, false), truth, area="test", detail=True)
    assert score.n_det == 110 and score.n_match == 100 and score.n_false == 10
    assert score.flux == pytest.approx(0.2, rel=1e-6) and score.class_ == 0.0
    assert score.score_det == pytest.approx(100 * (5 + 0.2) / 7, rel=1e-6)
    assert score.value == pytest.approx(score.score_det - 10)
    assert score.purity == pytest.approx(100 / 110)
    assert len(score.matches) == 100 and "score_flux" in score.matches


def test_area_handling_train_test_all():
    rng = np.random.default_rng(4)
    ra_min, ra_max, dec_min, dec_max = TRAIN_BOXES[560]
    inside = _catalog(30, rng, ra=(ra_min + 0.01, ra_max - 0.01), dec=(dec_min + 0.01, dec_max - 0.01))
    outside = _catalog(20, rng)
    truth = _vstack(inside, outside)
    assert in_train_box(truth["ra_core"], truth["dec_core"]).sum() == 30
    s_train = score_sdc1(truth, truth, area="train")
    s_test = score_sdc1(truth, truth, area="test")
    s_all = score_sdc1(truth, truth, area="all")
    assert (s_train.n_det, s_test.n_det, s_all.n_det) == (30, 20, 50)
    assert s_all.value == pytest.approx(50.0, abs=1e-6)
    assert s_all.value == pytest.approx(s_train.value + s_test.value, abs=1e-6)


def test_all_area_matches_across_the_box_edge():
    """A truth source just inside the box and its detection just outside only match with area='all'."""
    ra_min, ra_max, dec_min, dec_max = TRAIN_BOXES[560]
    truth = _catalog(1, np.random.default_rng(5))
    truth["ra_core"] = truth["ra_cent"] = -0.3
    truth["dec_core"] = truth["dec_cent"] = dec_max - 0.1 / 3600
    truth["b_maj"], truth["b_min"] = 2.0, 1.0
    sub = truth.copy()
    sub["dec_core"] = sub["dec_cent"] = dec_max + 0.2 / 3600
    assert score_sdc1(sub, truth, area="all").n_match == 1
    assert score_sdc1(sub, truth, area="train").n_det == 0
    assert score_sdc1(sub, truth, area="test").n_match == 0
    # also works with RA given in [0, 360)
    sub360 = sub.copy()
    sub360["ra_core"] = sub360["ra_cent"] = 360.0 - 0.3
    assert score_sdc1(sub360, truth, area="all").n_match == 1


def test_empty_catalogues_do_not_crash(tmp_path):
    rng = np.random.default_rng(6)
    outside = _catalog(15, rng)
    # nothing in the training box: the official scorer would raise ValueError
    s = score_sdc1(outside, outside, area="train")
    assert (s.n_det, s.n_match, s.n_truth, s.value) == (0, 0, 0, 0.0)
    # empty truth in the area, 15 detections -> each one is false
    ra_min, ra_max, dec_min, dec_max = TRAIN_BOXES[560]
    inside = _catalog(5, rng, ra=(ra_min + 0.01, ra_max - 0.01), dec=(dec_min + 0.01, dec_max - 0.01))
    s = score_sdc1(outside, inside, area="test")
    assert s.n_det == 15 and s.n_truth == 0 and s.n_false == 15 and s.value == -15.0
    # empty submission file
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    s = score_sdc1(empty, outside, area="test")
    assert s.n_det == 0 and s.n_truth == 15 and s.value == 0.0 and s.completeness == 0.0
    # no match at all: value follows score_det - n_false (ska-sdc itself would report 0)
    far = _catalog(4, rng, ra=(2.0, 2.1))
    s = score_sdc1(far, outside, area="test")
    assert s.n_match == 0 and s.value == -4.0


def test_dataframe_quantity_and_bad_inputs():
    import pandas as pd
    truth = _catalog(20, np.random.default_rng(7))
    df = truth.to_pandas()
    q = truth.copy()
    q["b_maj"] = (np.asarray(truth["b_maj"]) / 60.0) * u.arcmin   # units are converted
    q["flux"] = (np.asarray(truth["flux"]) * 1e3) * u.mJy
    assert score_sdc1(df, q, area="test").value == pytest.approx(20.0, abs=1e-6)
    with pytest.raises(ValueError, match="area"):
        score_sdc1(df, df, area="everywhere")
    with pytest.raises(ValueError, match="freq"):
        score_sdc1(df, df, freq=700)
    bad = df.copy()
    bad.loc[3, "flux"] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        score_sdc1(bad, df)
    with pytest.raises(ValueError, match="submission.*missing"):
        score_sdc1(df.drop(columns=["pa"]), df)
    with pytest.raises(TypeError):
        score_sdc1(42, df)
    assert isinstance(df, pd.DataFrame)
