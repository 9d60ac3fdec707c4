"""Tests of the objectness x S/N selection table (cianna.pipelines.sdc1.selection) and its use in detect_image."""
import os

import numpy as np
import pytest

from cianna.pipelines.sdc1.selection import (OBJECTNESS_EDGES, SNR_EDGES, SelectionTable, apply_selection,
                                             detection_snr, fit_selection)


def _synthetic(n=6000, seed=0):
    """Detections whose match probability rises with S/N and, less, with objectness; prior 1 is all false."""
    rng = np.random.default_rng(seed)
    obj = rng.uniform(0.02, 1.0, n)
    snr = rng.uniform(0.0, 10.0, n)
    prior = rng.integers(0, 2, n)
    p_match = np.clip(0.1 + 0.12 * snr + 0.1 * obj, 0, 0.98)
    matched = (rng.random(n) < p_match) & (prior == 0)
    gains = np.where(matched, 0.8, -1.0)
    return obj, prior, snr, gains


def test_fit_selection_keeps_reliable_cells_and_meets_the_floor():
    obj, prior, snr, gains = _synthetic()
    table, summ = fit_selection(obj, prior, snr, gains, 3, [0.5, 0.5, 0.7], 0.02)
    keep = apply_selection(table, obj, prior, snr)
    assert summ["kept"] == keep.sum() and summ["expected_score"] == pytest.approx(gains[keep].sum())
    # prior 1 (never matched) is dropped wherever it has detections; its empty cells (S/N >= 12 here) follow
    # the fallback threshold
    assert not keep[prior == 1].any()
    assert table.keep[1, :, :7].sum() == 0 and table.keep[1, -1, 7:].all()   # edges 0.6+ kept there
    assert keep[(prior == 0) & (snr > 8)].mean() > 0.95 and keep[(prior == 0) & (snr < 2)].mean() < 0.05
    # the table beats the best objectness-only cut of prior 0 on the same data
    from cianna.pipelines.sdc1.tune import tune_thresholds

    thr, _ = tune_thresholds(obj, prior, gains, 3, low=0.02)
    assert gains[keep].sum() > gains[obj >= thr[prior]].sum()
    # prior 2 has no detections: its cells follow the fallback threshold 0.7
    lower = np.asarray(OBJECTNESS_EDGES[:-1])
    np.testing.assert_array_equal(table.keep[2].all(axis=1), lower >= 0.7)
    assert table.network_thresholds()[2] == pytest.approx(0.8) and table.network_thresholds()[1] == pytest.approx(0.6)
    floor, _ = fit_selection(obj, prior, snr, gains, 3, [0.5] * 3, 0.02, min_purity=0.9)
    k = apply_selection(floor, obj, prior, snr)
    assert (gains[k] > -1).mean() >= 0.9 > (gains[keep] > -1).mean()


def test_selection_table_roundtrip_and_errors():
    keep = np.zeros((2, len(OBJECTNESS_EDGES) - 1, len(SNR_EDGES)), bool)
    keep[0, 0, 5] = True
    t = SelectionTable(OBJECTNESS_EDGES, SNR_EDGES, keep, 0.02)
    back = SelectionTable.from_dict(t.to_dict())
    np.testing.assert_array_equal(back.keep, t.keep)
    assert back.min_objectness == 0.02 and back.snr_edges == t.snr_edges
    assert t.network_thresholds()[0] == 0.02                   # the [0, 0.03) bin, but never below the fit run
    with pytest.raises(ValueError, match="expected"):
        SelectionTable(OBJECTNESS_EDGES, SNR_EDGES, keep[:, :3])
    with pytest.raises(ValueError, match="increase"):
        SelectionTable((0.0, 0.5, 0.4), (0.0,), np.zeros((1, 2, 1), bool))
    with pytest.raises(ValueError, match="needs objectness_edges"):
        SelectionTable.from_dict({"keep": []})
    with pytest.raises(ValueError, match="priors"):
        apply_selection(t, [0.5], [4], [3.0])
    from astropy.table import Table

    with pytest.raises(ValueError, match="refined catalogue"):
        detection_snr(Table({"fit_snr": [1.0]}))


def test_detect_image_applies_the_models_selection(tmp_path):
    from cianna.pipelines.sdc1.detect import DEFAULT_MODEL, detect_image, load_model, save_model
    from cianna.sim.continuum import simulate_continuum_field

    if not DEFAULT_MODEL.is_file():
        pytest.skip("bundled SDC1 model not present")
    field = simulate_continuum_field(tmp_path / "f", size=256, seed=21, faint_sources=True, dirty_psf=True)
    model = load_model()
    nb = model.config.nb_box
    keep = np.zeros((nb, len(OBJECTNESS_EDGES) - 1, len(SNR_EDGES)), bool)
    keep[:, :, 4:] = True                                      # any objectness >= 0.02, S/N >= 5
    model.selection = SelectionTable(OBJECTNESS_EDGES, SNR_EDGES, keep, 0.02)
    path = save_model(tmp_path / "sel.safetensors", model.network, model.thresholds, size_scale=model.size_scale,
                      refine_options=model.refine_options, selection=model.selection)
    m = load_model(path)
    np.testing.assert_array_equal(m.selection.keep, keep)
    sel = detect_image(field.image, pb=field.pb, model=m, progress=False)
    full = detect_image(field.image, pb=field.pb, model=m, thresholds=[0.02] * nb, progress=False)
    assert sel.meta["SELECT"] == "table" and full.meta["SELECT"] == "thresholds"
    assert len(sel) > 0 and (detection_snr(sel) >= 5).all()
    # the same detections as the low-threshold run, cut at S/N 5 (same network run, same refinement)
    assert len(sel) == int((detection_snr(full) >= 5).sum())
    assert list(sel["id"]) == list(range(1, len(sel) + 1))
    plain = detect_image(field.image, pb=field.pb, model=m, progress=False, refine="none")
    off = detect_image(field.image, pb=field.pb, model=m, progress=False, select=False)
    assert plain.meta["SELECT"] == "thresholds" == off.meta["SELECT"]
    assert len(off) == len(detect_image(field.image, pb=field.pb, model=model, progress=False, select=False))
    assert os.path.getsize(path) > 0


def test_model_refuses_a_table_for_another_number_of_priors(tmp_path):
    from cianna.pipelines.sdc1.detect import SDC1Model, save_model
    from cianna.pipelines.sdc1.model import build_network

    net = build_network(64, seed=1)
    keep = np.ones((2, len(OBJECTNESS_EDGES) - 1, len(SNR_EDGES)), bool)      # the network has 6 priors
    with pytest.raises(ValueError, match="selection table has 2 priors, the network 6"):
        SDC1Model(net, [0.5] * 6, selection=SelectionTable(OBJECTNESS_EDGES, SNR_EDGES, keep))
    with pytest.raises(ValueError, match="needs objectness_edges"):
        save_model(tmp_path / "bad.safetensors", net, [0.5] * 6, selection={"keep": []})
