"""Upper bounds on the SDC1 score of a simulated field: what an idealised finder could reach.

Usage::

    python benchmarks/sdc1_ceiling.py [--field runs/sdc1/bench_dirty/field] [--snr 5 4 3]
                                      [--reference runs/sdc1/bench_dirty/result_pybdsf.json] [--seed 0]

Three *oracle* catalogues are built from the field's truth catalogue and scored with the official scorer
(:func:`cianna.scoring.sdc1.score_sdc1`, ``area="all"``), for every peak signal-to-noise cut in ``--snr``:

``exact``
    every true source whose expected peak S/N is at least the cut, with all its true parameters: perfect
    detection, no false detection, every term 1. No finder can beat it at that detection depth.
``fit``
    the same sources, exact positions, class and core fraction, but flux, sizes and position angle as an
    ideal elliptical-Gaussian fit would measure them: true values plus Gaussian errors of the sizes given by
    Condon (1997, PASP 109, 166; eqs. 21, 41, 42) for the source convolved with the restoring beam and noise
    correlated on the beam scale; sizes deconvolved from the beam (zero when the measured size is below it).
``fit+prior``
    per source and term, the better of the ``fit`` value and the best *constant* for its S/N bin (the value
    that maximises that term over the bin's sources, i.e. the best any estimator can do without resolving the
    source). Choosing per source with the truth makes this generous: a real finder cannot know which is
    better.
``fit|prior rule``
    the choice a finder could make: the bin constant where the fit's own (Condon) error of the deconvolved
    size exceeds the scorer's 30 % tolerance, or that of the PA its 10 deg, the fit value otherwise. Only
    the bin constants use the truth (a finder would take them from a validation field).
``..., fitted positions``
    the ``fit`` and ``fit|prior rule`` catalogues with the fit's position errors too (Condon's
    sigma(x0) = sigma(theta) / sqrt(8 ln 2) along each axis). The scorer's match radius is the *submitted*
    size convolved with the beam, so small submitted sizes now lose matches: this is the most realistic row.

The expected peak S/N of a source is its apparent (primary-beam attenuated) integrated flux spread over its
Gaussian-equivalent size convolved with the 1.5" beam, divided by the image noise (MAD of the image). It
ignores confusion, blending and the narrower dirty PSF of the faint sources, all of which make real
detection and measurement harder, so these are upper bounds for a finder limited to that depth.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

BEAM_ARCSEC = 1.5  # SDC1 restoring beam FWHM
FWHM_TO_SIGMA = 1.0 / np.sqrt(8.0 * np.log(2.0))


def _gauss_factor(size_id):
    """Factor from the catalogue's size convention to a Gaussian FWHM (ska_sdc.common.utils.constants)."""
    from ska_sdc.common.utils.constants import expo_to_gauss, las_to_gauss

    return np.select([size_id == 1, size_id == 3], [las_to_gauss, expo_to_gauss], 1.0)


def expected_snr(truth, pb_values, noise):
    """Expected peak S/N, Gaussian-equivalent FWHMs (arcsec) and apparent flux (Jy) of every truth source."""
    g = _gauss_factor(truth["size"].to_numpy())
    maj = np.hypot(truth["b_maj"].to_numpy() * g, BEAM_ARCSEC)
    mnr = np.hypot(truth["b_min"].to_numpy() * g, BEAM_ARCSEC)
    flux_app = truth["flux"].to_numpy() * pb_values
    peak = flux_app * BEAM_ARCSEC ** 2 / (maj * mnr)
    return peak / noise, maj, mnr, g


def condon_errors(snr, maj, mnr):
    """Relative errors of amplitude, major and minor FWHM, and PA error (deg) of a Gaussian fit (Condon 1997).

    Parameters
    ----------
    snr : ndarray, shape (N,)
        Peak amplitude over the rms noise.
    maj, mnr : ndarray, shape (N,)
        Fitted (convolved) FWHMs in arcsec; the noise correlation FWHM is the beam.
    """
    def rho2(a_maj, a_min):
        return (maj * mnr / (4 * BEAM_ARCSEC ** 2) * (1 + (BEAM_ARCSEC / maj) ** 2) ** a_maj
                * (1 + (BEAM_ARCSEC / mnr) ** 2) ** a_min * snr ** 2)

    e_amp = np.sqrt(2.0 / rho2(1.5, 1.5))
    e_maj = np.sqrt(2.0 / rho2(2.5, 0.5))
    e_min = np.sqrt(2.0 / rho2(0.5, 2.5))
    with np.errstate(divide="ignore"):
        e_pa = np.degrees(e_min * np.sqrt(2.0) * maj * mnr / np.maximum(maj ** 2 - mnr ** 2, 1e-12))
    # integrated flux error (Condon eq. 42): amplitude and both widths
    e_flux = np.sqrt(e_amp ** 2 + BEAM_ARCSEC ** 2 / (maj * mnr) * (e_maj ** 2 + e_min ** 2))
    return e_flux, e_maj, e_min, np.minimum(e_pa, 1e4)


def _term_score(key, sub, truth):
    """Per-source score of one scorer term (``flux``, ``b_maj``, ``b_min`` or ``pa``), shape (N,).

    Uses the official ``ska_sdc`` accuracy and score functions; the submitted size class is the true one.
    """
    import pandas as pd
    from ska_sdc.common.utils.score_helper import get_acc_series
    from ska_sdc.sdc1.dc_defns import flux_thr, size_thr
    from ska_sdc.sdc1.utils.score_helper import (get_b_min_scores, get_pa_acc_series, get_pa_scores,
                                                 get_size_acc_series)

    sub_s = pd.Series(np.asarray(sub, float))
    true_s = truth[key].reset_index(drop=True).astype(float)
    size_id = truth["size"].reset_index(drop=True)
    if key == "flux":
        return np.minimum(1.0, flux_thr / get_acc_series(sub_s, true_s, true_s).to_numpy())
    if key == "pa":
        return get_pa_scores(get_pa_acc_series(sub_s, true_s), size_id).to_numpy()
    acc = get_size_acc_series(sub_s, true_s, size_id, size_id)
    if key == "b_min":
        return get_b_min_scores(acc, size_id).to_numpy()
    return np.minimum(1.0, size_thr / acc.to_numpy())


def _term_scores(values, truth):
    """:func:`_term_score` of every key of ``values``."""
    return {k: _term_score(k, v, truth) for k, v in values.items()}


def _best_constants(truth, bins, key, grid):
    """Per S/N bin, the constant submitted value that maximises the term ``key`` over the bin's sources."""
    best = np.empty(len(truth))
    for b in np.unique(bins):
        sel = bins == b
        t = truth[sel]
        scores = [_term_score(key, np.full(sel.sum(), c), t).sum() for c in grid]
        best[sel] = grid[int(np.argmax(scores))]
    return best


def oracle_catalogs(truth, snr, maj, mnr, g, cut, rng):
    """The ``exact``, ``fit`` and ``fit+prior`` catalogues (DataFrames) of the sources with S/N >= cut."""
    sel = snr >= cut
    t = truth[sel].reset_index(drop=True)
    s, M, m, gg = snr[sel], maj[sel], mnr[sel], g[sel]
    e_flux, e_maj, e_min, e_pa = condon_errors(s, M, m)
    n = len(t)
    M_fit = M * (1 + e_maj * rng.standard_normal(n))
    m_fit = m * (1 + e_min * rng.standard_normal(n))
    fit = {"flux": t["flux"].to_numpy() * (1 + e_flux * rng.standard_normal(n)),
           "b_maj": np.sqrt(np.clip(M_fit ** 2 - BEAM_ARCSEC ** 2, 0, None)) / gg,
           "b_min": np.sqrt(np.clip(m_fit ** 2 - BEAM_ARCSEC ** 2, 0, None)) / gg,
           "pa": t["pa"].to_numpy() + e_pa * rng.standard_normal(n)}
    bins = np.digitize(np.log10(s), np.arange(np.log10(cut), 4, 0.05))
    prior = {"flux": fit["flux"],
             "b_maj": _best_constants(t, bins, "b_maj", np.geomspace(0.05, 20, 60)),
             "b_min": _best_constants(t, bins, "b_min", np.geomspace(0.02, 10, 60)),
             "pa": _best_constants(t, bins, "pa", np.arange(-44.0, 45.0, 2.0))}
    s_fit, s_prior = _term_scores(fit, t), _term_scores(prior, t)
    both = {k: np.where(s_prior[k] > s_fit[k], prior[k], fit[k]) for k in fit}
    # a rule a finder could apply: the prior constant where the fit's own error estimate says the
    # deconvolved size (or PA) is not measured to the scorer's tolerance
    with np.errstate(divide="ignore", invalid="ignore"):
        e_dec_maj = np.where(M > BEAM_ARCSEC, e_maj * M ** 2 / np.maximum(M ** 2 - BEAM_ARCSEC ** 2, 1e-12), np.inf)
        e_dec_min = np.where(m > BEAM_ARCSEC, e_min * m ** 2 / np.maximum(m ** 2 - BEAM_ARCSEC ** 2, 1e-12), np.inf)
    rule = {"flux": fit["flux"],
            "b_maj": np.where(e_dec_maj < 0.3, fit["b_maj"], prior["b_maj"]),
            "b_min": np.where(e_dec_min < 0.3, fit["b_min"], prior["b_min"]),
            "pa": np.where(e_pa < 10.0, fit["pa"], prior["pa"])}
    # fitted position: Condon's sigma(x0) = sigma(theta_M) / sqrt(8 ln 2) along the major axis, likewise minor
    d_maj = M * e_maj * FWHM_TO_SIGMA * rng.standard_normal(n)
    d_min = m * e_min * FWHM_TO_SIGMA * rng.standard_normal(n)
    pa = np.radians(t["pa"].to_numpy())  # east of north
    d_east = d_maj * np.sin(pa) + d_min * np.cos(pa)
    d_north = d_maj * np.cos(pa) - d_min * np.sin(pa)
    cats = {}
    for name, vals, moved in (("exact", None, False), ("fit", fit, False), ("fit|prior rule", rule, False),
                              ("fit+prior", both, False), ("fit, fitted positions", fit, True),
                              ("fit|prior rule, fitted positions", rule, True)):
        c = t.copy()
        if moved:
            cosd = np.cos(np.radians(c["dec_core"].to_numpy()))
            for ra, dec in (("ra_core", "dec_core"), ("ra_cent", "dec_cent")):
                c[ra] = c[ra].to_numpy() + d_east / 3600.0 / cosd
                c[dec] = c[dec].to_numpy() + d_north / 3600.0
        if vals is not None:
            for k, v in vals.items():
                c[k] = v
            c["flux"] = np.maximum(c["flux"], 1e-12)  # the scorer drops non-positive fluxes
            # a zero size would shrink the scorer's match radius below the (exact) position error of 0
            c["b_maj"] = np.maximum(c["b_maj"], 1e-3)
            c["b_min"] = np.maximum(c["b_min"], 1e-3)
        c["id"] = np.arange(1, len(c) + 1)
        cats[name] = c
    return cats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--field", default="runs/sdc1/bench_dirty/field", help="directory with image.fits, pb.fits, truth.txt")
    p.add_argument("--snr", type=float, nargs="+", default=[5.0, 4.0, 3.0])
    p.add_argument("--reference", default="runs/sdc1/bench_dirty/result_pybdsf.json",
                   help="result JSON of benchmarks/sdc1.py whose score the ratios use (PyBDSF)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    from astropy.io import fits
    from astropy.wcs import WCS

    from cianna.scoring.sdc1 import catalog_to_dataframe, score_sdc1

    truth = catalog_to_dataframe(os.path.join(a.field, "truth.txt"), name="truth")
    with fits.open(os.path.join(a.field, "image.fits"), memmap=True) as hd:
        img = np.squeeze(hd[0].data)
        sample = img[::4, ::4].astype(np.float64)
        sample = sample[np.isfinite(sample)]
        noise = 1.4826 * np.median(np.abs(sample - np.median(sample)))
    with fits.open(os.path.join(a.field, "pb.fits")) as hd:
        pbim = np.squeeze(hd[0].data)
        w = WCS(hd[0].header).celestial
    x, y = w.world_to_pixel_values(truth["ra_core"].to_numpy(), truth["dec_core"].to_numpy())
    xi = np.clip(np.rint(x).astype(int), 0, pbim.shape[1] - 1)
    yi = np.clip(np.rint(y).astype(int), 0, pbim.shape[0] - 1)
    snr, maj, mnr, g = expected_snr(truth, pbim[yi, xi], noise)
    ref = None
    if a.reference and os.path.exists(a.reference):
        with open(a.reference) as fh:
            ref = json.load(fh)["score"]["value"]
    print(f"field {a.field}: {len(truth)} true sources, image noise (MAD) {noise * 1e6:.3f} uJy/beam")
    if ref is not None:
        print(f"reference score ({a.reference}): {ref:.1f}")
    terms = ("position", "flux", "b_maj", "b_min", "pa")
    print("| S/N cut | sources | oracle | score | mean match score | ratio to reference | " + " | ".join(terms) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(terms))
    rng = np.random.default_rng(a.seed)
    for cut in a.snr:
        cats = oracle_catalogs(truth, snr, maj, mnr, g, cut, rng)
        for name, cat in cats.items():
            s = score_sdc1(cat, truth, area="all")
            ratio = f"{s.value / ref:.2f}x" if ref else "-"
            per = " | ".join(f"{getattr(s, k):.3f}" for k in terms)
            print(f"| {cut:g} | {len(cat)} | {name} | {s.value:.1f} | {s.acc_pc:.1f} % | {ratio} | {per} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
