"""Classical per-source refinement of SDC1 detections: 2-D elliptical Gaussian fits on small image stamps.

For every detection (network centre and parameters as starting point) a small stamp of the image is read from the
memory-mapped FITS file, a 2-D elliptical Gaussian ``A exp(-Q/2)`` with ``Q = a dx² + 2 b dx dy + c dy²`` is fitted
by a batched Levenberg–Marquardt with analytic Jacobian (all stamps of one size at once, numpy only), the
restoring beam is deconvolved (covariances subtract) and the integrated flux is ``A · 2π sqrt(det C) / Ω_beam``.

Stamps and neighbours
---------------------
The stamp half-side is ``clip(ceil(stamp_scale · FWHM_conv) , min_half, max_half)`` pixels, where ``FWHM_conv``
is the network's b_maj convolved with the beam major axis, in pixels (about 2–3 times the predicted box). Pixels
outside the image or NaN get zero weight; so do pixels nearer (in units of each source's convolved size) to
another detection than to the fitted one (a Voronoi-like mask against blending).

Conventions
-----------
Pixel frame as :mod:`cianna.sim.continuum`: ``x`` grows to the west, ``y`` to the north; an SDC1 PA ``θ``
("clockwise from due west") is the major axis along the pixel direction ``(cos θ, −sin θ)``, so the PA of a
pixel-frame eigenvector ``(vx, vy)`` is ``atan2(−vy, vx)`` folded to [−90, 90). The header ``BPA`` is east of
north; the beam major axis is put in the same frame with ``PA_SDC1 = 90 − BPA`` (as
:func:`cianna.pipelines.sdc1.baseline.pa_eofn_to_sdc1`).

Acceptance
----------
A fit is used only where it converged and is sane (:func:`refine_catalog`): finite, positive amplitude, fitted
centre within ``max(1.5 px, box half-side)`` of the network centre and nearer to it than to any other
detection's centre, convolved axes not narrower than
``0.6 ×`` the beam's and the major axis not larger than the stamp, integrated flux within a factor 10 of the
network's. Each parameter group additionally needs a peak signal-to-noise ratio (fitted amplitude over the rms
of the stamp residual) above its own threshold (``min_snr``): below it the network's value is kept.

Faint sources: below the ``flux`` threshold (or where the free fit is not sane) a second fit with a fixed shape
(amplitude and centre only: a matched filter) gives the flux. The shape is the beam convolved with the network's
ellipse shrunk by ``shape_scale`` (0.5: the network's sizes of faint sources are biased high; 0 = the beam,
which underestimates resolved sources). Validation field: flux term 0.85 -> 0.89 over the free fit alone, whose
widths, hence integrated fluxes, are noise-biased below S/N ~ 20. Below the ``size`` threshold b_maj keeps the
network's value; between ``size`` and ``b_min`` the fitted b_maj times the network's axis ratio gives b_min (the
deconvolved minor axis of a sub-beam source is mostly 0 or noise). The fitted sizes are not multiplied by the
model's ``size_scale`` (a correction of the network's regression bias; the fitted sizes are unbiased at high S/N).

Two options serve the faint majority of a realistic sky (off by default; a model stores the values chosen on its
validation field in :attr:`~cianna.pipelines.sdc1.detect.SDC1Model.refine_options`): ``min_snr["position_beam"]``
takes the centre of the fixed-shape fit (a matched-filter position) where the free fit's is not used, and
``unmeasured_scale`` multiplies the network's b_maj and b_min where no fitted size replaces them (the network's
sizes of sub-beam sources are biased high by the lower clip of its training targets).
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np

__all__ = ["beam_covariance", "fit_gaussians", "deconvolve", "refine_catalog", "DEFAULT_MIN_SNR",
           "FWHM_TO_SIGMA"]

log = logging.getLogger(__name__)

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
_MAX_BATCH_PIX = 1_000_000           # stamp pixels fitted at once (peak memory ~0.2 GB)
#: Peak S/N above which the fitted values replace the network's, per group (chosen on the validation field).
DEFAULT_MIN_SNR = {"position": 7.0, "position_beam": math.inf, "flux": 25.0, "flux_beam": 0.0, "size": 15.0,
                   "b_min": 40.0, "pa": 10.0}


def _cov_from_axes(sig_maj, sig_min, pa_deg):
    """Pixel-frame covariance ``(sxx, sxy, syy)`` of axes ``sig_*`` (px) at SDC1 PA in degrees."""
    from cianna.sim.continuum import axes_covariance

    return axes_covariance(sig_maj, sig_min, np.deg2rad(np.asarray(pa_deg, float)))


def beam_covariance(beam, pixel_arcsec: float) -> tuple[float, float, float]:
    """Pixel-frame covariance of the restoring beam.

    Parameters
    ----------
    beam : cianna.io.fits.Beam or tuple of float
        ``(major, minor, pa)``: FWHM in arcsec and header BPA in deg east of north.
    pixel_arcsec : float
        Pixel size in arcsec.

    Returns
    -------
    tuple of float
        ``(sxx, sxy, syy)`` in px².
    """
    bmaj, bmin, bpa = (float(v) for v in beam)
    if not (bmaj > 0 and bmin > 0 and pixel_arcsec > 0):
        raise ValueError(f"beam axes and pixel size must be positive, got beam={tuple(beam)}, "
                         f"pixel={pixel_arcsec}")
    from cianna.pipelines.sdc1.baseline import pa_eofn_to_sdc1

    s = FWHM_TO_SIGMA / pixel_arcsec
    c = _cov_from_axes(bmaj * s, bmin * s, pa_eofn_to_sdc1(bpa))
    return tuple(float(v) for v in c)


def _eig2(sxx, sxy, syy):
    """Eigen-decomposition of symmetric 2×2 matrices: (λ_max, λ_min, SDC1 PA of the major axis in deg)."""
    tr, d = 0.5 * (sxx + syy), np.sqrt(0.25 * (sxx - syy) ** 2 + sxy**2)
    lmax, lmin = tr + d, tr - d
    # major-axis direction angle phi in the pixel frame (counter-clockwise from +x): tan 2phi = 2sxy/(sxx-syy)
    phi = 0.5 * np.arctan2(2.0 * sxy, sxx - syy)
    pa = (np.rad2deg(-phi) + 90.0) % 180.0 - 90.0
    return lmax, lmin, pa


def deconvolve(sxx, sxy, syy, beam_cov, pixel_arcsec: float):
    """Intrinsic FWHM axes and PA from fitted (convolved) pixel covariances.

    Parameters
    ----------
    sxx, sxy, syy : array_like, shape (N,)
        Fitted covariances in px².
    beam_cov : tuple of float
        Beam ``(sxx, sxy, syy)`` in px² (:func:`beam_covariance`).
    pixel_arcsec : float
        Pixel size in arcsec.

    Returns
    -------
    b_maj, b_min : numpy.ndarray, shape (N,)
        Deconvolved FWHM in arcsec (0 along an unresolved axis).
    pa : numpy.ndarray, shape (N,)
        SDC1 PA in deg in [−90, 90) (of the deconvolved ellipse; of the convolved one when it is unresolved).
    resolved : numpy.ndarray of bool, shape (N,)
        The deconvolved major axis is > 0.
    """
    dxx = np.asarray(sxx, float) - beam_cov[0]
    dxy = np.asarray(sxy, float) - beam_cov[1]
    dyy = np.asarray(syy, float) - beam_cov[2]
    lmax, lmin, pa = _eig2(dxx, dxy, dyy)
    _, _, pa_conv = _eig2(np.asarray(sxx, float), np.asarray(sxy, float), np.asarray(syy, float))
    resolved = lmax > 0
    k = pixel_arcsec / FWHM_TO_SIGMA
    bmaj = np.sqrt(np.clip(lmax, 0.0, None)) * k
    bmin = np.sqrt(np.clip(lmin, 0.0, None)) * k
    return bmaj, bmin, np.where(resolved, pa, pa_conv), resolved


def _model_jac(p, dx, dy):
    """Model (n, P) and Jacobian (n, P, 6) for parameters p (n, 6) = (A, x0, y0, a, b, c)."""
    A, x0, y0, a, b, c = (p[:, i, None] for i in range(6))
    u, v = dx - x0, dy - y0
    q = a * u * u + 2.0 * b * u * v + c * v * v
    e = np.exp(-0.5 * np.minimum(q, 700.0))
    m = A * e
    jac = np.stack([e, m * (a * u + b * v), m * (b * u + c * v), -0.5 * m * u * u, -m * u * v, -0.5 * m * v * v],
                   axis=-1)
    return m, jac


def _lm(data, w, dx, dy, p, n_iter, fix_shape=False):
    """Batched Levenberg–Marquardt on weighted residuals ``w (data − model)``; returns (p, chi2, ok).

    ``fix_shape``: only (A, x0, y0) are fitted, the quadratic form (a, b, c) stays at its initial value.
    """
    n = len(p)
    free = np.array([1, 1, 1, 0, 0, 0] if fix_shape else [1] * 6, float)
    lam = np.full(n, 1e-3)
    m, jac = _model_jac(p, dx, dy)
    chi2 = np.sum((w * (data - m)) ** 2, axis=1)
    done = np.zeros(n, bool)
    eye = np.eye(6)
    for _ in range(n_iter):
        act = np.nonzero(~done)[0]
        if not len(act):
            break
        wa = w[act]
        r = wa * (data[act] - m[act])
        jw = jac[act] * wa[:, :, None] * free
        h = np.einsum("npi,npj->nij", jw, jw) + np.diag(1.0 - free)
        g = np.einsum("npi,np->ni", jw, r)
        dg = np.maximum(np.einsum("nii->ni", h), 1e-30)
        hs = h + lam[act, None, None] * dg[:, :, None] * eye
        try:
            step = np.linalg.solve(hs, g[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            step = np.stack([np.linalg.lstsq(hh, gg, rcond=None)[0] for hh, gg in zip(hs, g)])
        pn = p[act] + step
        valid = ((pn[:, 0] > 0) & (pn[:, 3] > 0) & (pn[:, 5] > 0) & (pn[:, 3] * pn[:, 5] - pn[:, 4] ** 2 > 0)
                 & np.isfinite(pn).all(axis=1))
        mn, jn = _model_jac(pn, dx[act], dy[act])
        chin = np.sum((wa * (data[act] - mn)) ** 2, axis=1)
        better = valid & (chin <= chi2[act])
        acc = act[better]
        small = np.abs(chi2[act] - chin) <= 1e-7 * np.maximum(chi2[act], 1e-300)
        p[acc], m[acc], jac[acc], chi2[acc] = pn[better], mn[better], jn[better], chin[better]
        lam[acc] = np.maximum(lam[acc] / 5.0, 1e-7)
        rej = act[~better]
        lam[rej] = lam[rej] * 10.0
        done[act[(better & small) | (lam[act] > 1e8)]] = True
    ok = np.isfinite(chi2) & (p[:, 0] > 0) & (p[:, 3] * p[:, 5] - p[:, 4] ** 2 > 0)
    return p, chi2, ok


def fit_gaussians(data, x, y, fwhm_px, *, init_cov=None, stamp_scale: float = 1.5, min_half: int = 4,
                  max_half: int = 30, n_iter: int = 30, mask_neighbours: bool = True, chunk: int = 2048,
                  fix_shape: bool = False, progress: bool = False) -> dict:
    """Fit one 2-D elliptical Gaussian per source on small stamps of an image.

    Parameters
    ----------
    data : numpy.ndarray, shape (ny, nx)
        Image in Jy/beam (a memory map is fine: only the stamps are read). NaN pixels are ignored.
    x, y : array_like, shape (N,)
        Initial centres, 0-based pixels.
    fwhm_px : array_like, shape (N,)
        Initial convolved major-axis FWHM in pixels (sets the stamp size and the neighbour mask).
    init_cov : tuple of array_like, shape (N,) each, optional
        Initial convolved covariances ``(sxx, sxy, syy)`` in px²; default circular of FWHM ``fwhm_px``.
    stamp_scale : float
        Stamp half-side = ``clip(ceil(stamp_scale · fwhm_px), min_half, max_half)`` px.
    min_half, max_half : int
        Stamp half-side bounds in px.
    n_iter : int
        Maximum Levenberg–Marquardt iterations.
    mask_neighbours : bool
        Give zero weight to stamp pixels nearer to another source (distance / FWHM) than to this one.
    chunk : int
        Sources read per batch (sorted by row); each batch is fitted in pieces of at most 10⁶ stamp pixels, so
        the peak memory stays below ~0.2 GB whatever the number of sources.
    fix_shape : bool
        Fit only amplitude and centre; the shape stays ``init_cov`` (a low-variance flux for faint sources).
    progress : bool
        tqdm progress bar over batches.

    Returns
    -------
    dict of numpy.ndarray, shape (N,) each
        ``amp`` (Jy/beam), ``x, y`` (px), ``sxx, sxy, syy`` (convolved covariance, px²), ``rms`` (rms of the
        weighted residual, Jy/beam), ``npix`` (pixels used), ``ok`` (fit converged to a valid Gaussian).

    Raises
    ------
    ValueError
        Not a 2-D image, or arrays of different lengths / non-finite inputs.
    """
    from scipy.spatial import cKDTree

    if getattr(data, "ndim", 0) != 2:
        raise ValueError(f"fit_gaussians needs a 2-D image, got shape {getattr(data, 'shape', None)}")
    x, y, fw = (np.asarray(v, float).reshape(-1) for v in (x, y, fwhm_px))
    n = len(x)
    if len(y) != n or len(fw) != n:
        raise ValueError(f"x, y, fwhm_px must have the same length, got {len(x)}, {len(y)}, {len(fw)}")
    if not (np.isfinite(x).all() and np.isfinite(y).all() and np.isfinite(fw).all() and (fw > 0).all()):
        raise ValueError("x, y must be finite and fwhm_px finite and > 0")
    if init_cov is None:
        s2 = (fw * FWHM_TO_SIGMA) ** 2
        init_cov = (s2, np.zeros(n), s2)
    c0 = [np.asarray(v, float).reshape(-1) for v in init_cov]
    ny, nx = data.shape
    out = {k: np.full(n, np.nan) for k in ("amp", "x", "y", "sxx", "sxy", "syy", "rms")}
    out["npix"] = np.zeros(n, np.int64)
    out["ok"] = np.zeros(n, bool)
    if n == 0:
        return out
    half = np.clip(np.ceil(stamp_scale * fw), min_half, max_half).astype(np.int64)
    tree = cKDTree(np.column_stack([x, y]))
    order = np.lexsort((x, y))          # row order: stamps of a batch are close in the file
    it = range(0, n, chunk)
    if progress:
        try:
            from tqdm.auto import tqdm

            it = tqdm(it, desc="gauss fit", unit="batch")
        except ImportError:  # pragma: no cover
            pass
    for start in it:
        idx_c = order[start:start + chunk]
        for h in np.unique(half[idx_c]):
            idx = idx_c[half[idx_c] == h]
            step = max(1, _MAX_BATCH_PIX // (2 * int(h) + 1) ** 2)   # bounds the Jacobian (~50 B / pixel)
            for k in range(0, len(idx), step):
                _fit_batch(data, idx[k:k + step], int(h), x, y, fw, c0, tree, mask_neighbours, n_iter, out, nx, ny,
                           fix_shape)
    return out


def _fit_batch(data, idx, h, x, y, fw, c0, tree, mask_neighbours, n_iter, out, nx, ny, fix_shape=False):
    s = 2 * h + 1
    m = len(idx)
    ix0 = np.rint(x[idx]).astype(np.int64) - h
    iy0 = np.rint(y[idx]).astype(np.int64) - h
    stamps = np.full((m, s, s), np.nan)
    for j in range(m):   # memory-mapped reads, clipped at the image edges
        xa, ya = max(ix0[j], 0), max(iy0[j], 0)
        xb, yb = min(ix0[j] + s, nx), min(iy0[j] + s, ny)
        if xb > xa and yb > ya:
            stamps[j, ya - iy0[j]:yb - iy0[j], xa - ix0[j]:xb - ix0[j]] = data[ya:yb, xa:xb]
    grid = np.arange(s, dtype=float)
    gx = np.broadcast_to(grid[None, None, :], (m, s, s))
    gy = np.broadcast_to(grid[None, :, None], (m, s, s))
    w = np.isfinite(stamps).astype(float)
    xc, yc = x[idx] - ix0, y[idx] - iy0
    if mask_neighbours:
        own = np.hypot(gx - xc[:, None, None], gy - yc[:, None, None]) / fw[idx, None, None]
        lists = tree.query_ball_point(np.column_stack([x[idx], y[idx]]), r=float(h) * 1.5 + 2.0 * fw[idx])
        for j, nb in enumerate(lists):
            nb = [k for k in nb if k != idx[j]]
            if not nb:
                continue
            nb = np.asarray(nb)
            dn = np.hypot(gx[0][None] - (x[nb] - ix0[j])[:, None, None],
                          gy[0][None] - (y[nb] - iy0[j])[:, None, None]) / fw[nb, None, None]
            w[j][(dn < own[j][None]).any(axis=0)] = 0.0
    d = np.nan_to_num(stamps, nan=0.0).reshape(m, -1)
    w = w.reshape(m, -1)
    dxf, dyf = gx.reshape(m, -1), gy.reshape(m, -1)
    # initial amplitude: highest valid pixel within 1 px of the centre (at least a small positive value)
    near = (np.abs(dxf - xc[:, None]) <= 1.0) & (np.abs(dyf - yc[:, None]) <= 1.0) & (w > 0)
    a0 = np.where(near.any(axis=1), np.max(np.where(near, d, -np.inf), axis=1), 0.0)
    a0 = np.maximum(a0, 1e-3 * np.max(np.abs(d), axis=1) + 1e-12)
    sxx, sxy, syy = (v[idx] for v in c0)
    det = sxx * syy - sxy**2
    p = np.column_stack([a0, xc, yc, syy / det, -sxy / det, sxx / det])
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        p, chi2, ok = _lm(d, w, dxf, dyf, p, n_iter, fix_shape)
    npix = w.sum(axis=1)
    ok &= npix > 6
    dt = p[:, 3] * p[:, 5] - p[:, 4] ** 2
    out["amp"][idx] = p[:, 0]
    out["x"][idx] = p[:, 1] + ix0
    out["y"][idx] = p[:, 2] + iy0
    out["sxx"][idx] = p[:, 5] / dt
    out["sxy"][idx] = -p[:, 4] / dt
    out["syy"][idx] = p[:, 3] / dt
    out["rms"][idx] = np.sqrt(chi2 / np.maximum(npix - (3.0 if fix_shape else 6.0), 1.0))
    out["npix"][idx] = npix.astype(np.int64)
    out["ok"][idx] = ok


def _sane(fit, fapp_fit, x, y, half_box, fapp_n, tree):
    """Sanity of fits: valid, positive, centre within the box and in its own detection's cell, flux within ×10
    of the network's (``x, y``: the fitted sources' network centres; ``tree``: over all network centres)."""
    shift = np.hypot(fit["x"] - x, fit["y"] - y)
    ok = (fit["ok"] & np.isfinite(fapp_fit) & (fit["amp"] > 0) & (shift <= np.maximum(1.5, half_box))
          & (fapp_fit > 0.1 * fapp_n) & (fapp_fit < 10.0 * fapp_n) & np.isfinite(fit["rms"]) & (fit["rms"] > 0))
    if tree is not None and ok.any():
        # nearer to its own network centre than to any other: two detections of one blend must not both
        # converge on the brighter component
        k = np.nonzero(ok)[0]
        dist, _ = tree.query(np.column_stack([fit["x"][k], fit["y"][k]]), k=1)
        ok[k[shift[k] > dist * (1 + 1e-9) + 1e-9]] = False
    return ok


def _val(col):
    return np.asarray(getattr(col, "value", col), float)


def refine_catalog(table, image, *, min_snr: dict | None = None, shape_scale: float = 0.5,
                   unmeasured_scale=(1.0, 1.0), stamp_scale: float = 1.5, max_half: int = 30,
                   mask_neighbours: bool = True, beam=None, n_iter: int = 30, progress: bool = False):
    """Refine the parameters of an SDC1 detection catalogue with per-source Gaussian fits.

    Parameters
    ----------
    table : astropy.table.QTable
        Output of :func:`cianna.pipelines.sdc1.detect.detect_image` (N rows; needs ``x, y`` px, ``flux``,
        ``flux_app`` Jy, ``b_maj, b_min`` arcsec, ``pa`` deg, ``pb``).
    image : str or os.PathLike
        The FITS image the catalogue was made from (memory-mapped; only stamps are read).
    min_snr : dict, optional
        Peak S/N thresholds per group ``position``, ``position_beam`` (S/N of the fixed-shape fit, whose centre
        replaces the network's where the free fit's does not: a matched-filter position), ``flux`` (free fit),
        ``flux_beam`` (S/N of the fixed-shape fit, used where the free fit's flux is not), ``size`` (b_maj; b_min
        becomes the fitted b_maj times the network's axis ratio), ``b_min`` (the fitted b_min itself, needs
        ``size`` too), ``pa`` above which the fit replaces the network's value (default
        :data:`DEFAULT_MIN_SNR`; missing keys take the default, ``math.inf`` disables a group).
    shape_scale : float
        Fixed shape of the faint-source flux fit: beam ⊕ (``shape_scale`` × the network's b_maj, b_min at its PA).
    unmeasured_scale : (float, float)
        Multipliers of the network's b_maj and b_min where the fit does not replace them (sources below the
        ``size`` threshold: mostly unresolved, whose network sizes are biased high by the training targets'
        lower clip). Chosen on a validation field by :func:`cianna.pipelines.sdc1.tune.choose_refine_options`.
    stamp_scale, max_half, mask_neighbours, n_iter
        See :func:`fit_gaussians`.
    beam : tuple of float, optional
        ``(major, minor, pa)`` arcsec, arcsec, deg east of north; default from the header.
    progress : bool
        tqdm progress bar.

    Returns
    -------
    astropy.table.QTable
        A copy with the accepted fitted values in ``ra_core, dec_core, ra_cent, dec_cent, x, y, flux, flux_app,
        b_maj, b_min, pa``, plus ``fit_ok`` (bool, sane fit), ``fit_snr`` (peak S/N), ``beam_snr`` (peak S/N of
        the fixed-shape fit; 0 where it did not run), ``refined`` (int bit mask:
        1 position, 2 flux (free fit), 4 b_maj (b_min = refined b_maj × network axis ratio), 8 fitted b_min, 16 PA,
        32 flux from the fixed-shape fit, 64 position from the fixed-shape fit) and the network's values in ``net_flux, net_b_maj, net_b_min,
        net_pa`` (same units). ``meta['REFINE']`` = ``"gauss"``.

    Raises
    ------
    ValueError
        Missing catalogue columns, unknown ``min_snr`` keys, or an image without beam and no ``beam`` given.
    FileNotFoundError, cianna.io.fits.FitsImageError
        Unreadable image.
    """
    import astropy.units as u

    from cianna.io.fits import read_image
    from cianna.pipelines.sdc1.data import pixel_scale_arcsec

    need = ("x", "y", "flux", "flux_app", "b_maj", "b_min", "pa", "pb")
    miss = [c for c in need if c not in table.colnames]
    if miss:
        raise ValueError(f"refine_catalog: catalogue lacks column(s) {miss} (needs {list(need)})")
    thr = dict(DEFAULT_MIN_SNR)
    if min_snr is not None:
        bad = set(min_snr) - set(thr)
        if bad:
            raise ValueError(f"refine_catalog: unknown min_snr key(s) {sorted(bad)} (use {sorted(thr)})")
        thr.update({k: float(v) for k, v in min_snr.items()})
    try:
        s_maj, s_min = (float(v) for v in unmeasured_scale)
    except (TypeError, ValueError):
        raise ValueError(f"refine_catalog: unmeasured_scale must be two numbers (b_maj, b_min), "
                         f"got {unmeasured_scale!r}") from None
    if not (s_maj > 0 and s_min > 0 and np.isfinite(s_maj) and np.isfinite(s_min)):
        raise ValueError(f"refine_catalog: unmeasured_scale must be positive and finite, got {unmeasured_scale!r}")
    t0 = time.perf_counter()
    data, header, wcs, hbeam = read_image(image, memmap=True)
    if beam is None:
        if hbeam is None:
            raise ValueError(f"{image}: no restoring beam (BMAJ/BMIN) in the header; pass beam=(maj, min, pa)")
        beam = (hbeam.major, hbeam.minor, hbeam.pa)
    pix = pixel_scale_arcsec(wcs)
    bcov = beam_covariance(beam, pix)
    out = table.copy()
    n = len(out)
    x, y = _val(out["x"]), _val(out["y"])
    bmaj_n, bmin_n, pa_n = _val(out["b_maj"]), _val(out["b_min"]), _val(out["pa"])
    flux_n, fapp_n, pbv = _val(out["flux"]), _val(out["flux_app"]), _val(out["pb"])
    # initial convolved covariance from the network's parameters (unscaled by the PB)
    s = FWHM_TO_SIGMA / pix
    ic = _cov_from_axes(bmaj_n * s, np.minimum(bmin_n, bmaj_n) * s, pa_n)
    ic = tuple(ic[i] + bcov[i] for i in range(3))
    lmax, _, _ = _eig2(*ic)
    fw = np.sqrt(lmax) / FWHM_TO_SIGMA
    fit = fit_gaussians(data, x, y, fw, init_cov=ic, stamp_scale=stamp_scale, max_half=max_half,
                        mask_neighbours=mask_neighbours, n_iter=n_iter, progress=progress)
    # derived quantities
    from scipy.spatial import cKDTree

    tree = cKDTree(np.column_stack([x, y])) if n > 1 else None
    beam_det = bcov[0] * bcov[2] - bcov[1] ** 2
    _, bmin_b, _ = _eig2(*bcov)
    half_box = np.maximum(bmaj_n / pix, 2.5)
    stamp_half = np.clip(np.ceil(stamp_scale * fw), 4, max_half)
    with np.errstate(invalid="ignore", divide="ignore"):
        fapp_fit = fit["amp"] * np.sqrt((fit["sxx"] * fit["syy"] - fit["sxy"] ** 2) / beam_det)
        cmax, cmin, _ = _eig2(fit["sxx"], fit["sxy"], fit["syy"])
        sane = _sane(fit, fapp_fit, x, y, half_box, fapp_n, tree)
        sane &= (cmin >= 0.36 * bmin_b) & (np.sqrt(cmax) <= stamp_half)
        snr = fit["amp"] / fit["rms"]
    # faint sources: amplitude and centre only, with a fixed compact shape (a matched filter: far less noisy)
    low = np.nonzero(~(sane & (snr >= thr["flux"])))[0]
    fapp_b, snr_b, sane_b = np.full(n, np.nan), np.zeros(n), np.zeros(n, bool)
    xb, yb = x.copy(), y.copy()
    if len(low) and np.isfinite(thr["flux_beam"]):
        kc = _cov_from_axes(shape_scale * bmaj_n[low] * s, shape_scale * np.minimum(bmin_n, bmaj_n)[low] * s,
                            pa_n[low])
        fcov = tuple(kc[i] + bcov[i] for i in range(3))
        fb = fit_gaussians(data, x[low], y[low], fw[low], init_cov=fcov,
                           stamp_scale=stamp_scale, max_half=max_half, mask_neighbours=mask_neighbours,
                           n_iter=n_iter, fix_shape=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            fapp_b[low] = fb["amp"] * np.sqrt((fcov[0] * fcov[2] - fcov[1] ** 2) / beam_det)
            snr_b[low] = np.nan_to_num(fb["amp"] / fb["rms"])
            sane_b[low] = _sane(fb, fapp_b[low], x[low], y[low], half_box[low], fapp_n[low], tree)
        xb[low], yb[low] = fb["x"], fb["y"]
    bmaj_f, bmin_f, pa_f, _ = deconvolve(fit["sxx"], fit["sxy"], fit["syy"], bcov, pix)
    use_pos = sane & (snr >= thr["position"])
    use_pos_b = ~use_pos & sane_b & (snr_b >= thr["position_beam"])
    use_flux = sane & (snr >= thr["flux"])
    use_fbeam = ~use_flux & sane_b & (snr_b >= thr["flux_beam"])
    use_size = sane & (snr >= thr["size"]) & (bmaj_f > 0)
    use_bmin = use_size & (snr >= thr["b_min"]) & (bmin_f > 0)
    use_pa = sane & (snr >= thr["pa"])
    out["net_flux"] = flux_n * u.Jy
    out["net_b_maj"] = bmaj_n * u.arcsec
    out["net_b_min"] = bmin_n * u.arcsec
    out["net_pa"] = pa_n * u.deg
    xn = np.where(use_pos, fit["x"], np.where(use_pos_b, xb, x))
    yn = np.where(use_pos, fit["y"], np.where(use_pos_b, yb, y))
    moved = use_pos | use_pos_b
    if moved.any():
        ra, dec = wcs.pixel_to_world_values(xn[moved], yn[moved])
        ra = np.asarray(ra, float)
        ra = np.where(ra > 180.0, ra - 360.0, ra)
        for col, v in (("ra_core", ra), ("ra_cent", ra), ("dec_core", dec), ("dec_cent", dec)):
            vals = _val(out[col]).copy()
            vals[moved] = v
            out[col] = vals * u.deg
    out["x"] = xn * u.pix
    out["y"] = yn * u.pix
    fapp = np.where(use_flux, fapp_fit, np.where(use_fbeam, fapp_b, fapp_n))
    out["flux_app"] = fapp * u.Jy
    out["flux"] = np.where(use_flux | use_fbeam, fapp / np.where(pbv > 0, pbv, 1.0), flux_n) * u.Jy
    bj = np.where(use_size, bmaj_f, bmaj_n * s_maj)
    # b_min: fitted where well measured, else the refined b_maj times the network's axis ratio
    q_n = np.clip(bmin_n / np.maximum(bmaj_n, 1e-6), 0.0, 1.0)
    bn = np.where(use_bmin, bmin_f, np.where(use_size, bj * q_n, bmin_n * s_min))
    out["b_maj"] = bj * u.arcsec
    out["b_min"] = np.minimum(bn, bj) * u.arcsec
    out["pa"] = np.where(use_pa, pa_f, pa_n) * u.deg
    out["fit_ok"] = sane
    out["fit_snr"] = np.where(np.isfinite(snr), snr, 0.0)
    out["beam_snr"] = snr_b
    out["refined"] = (use_pos * 1 + use_flux * 2 + use_size * 4 + use_bmin * 8 + use_pa * 16
                      + use_fbeam * 32 + use_pos_b * 64).astype(np.int64)
    out.meta["REFINE"] = "gauss"
    dt_s = time.perf_counter() - t0
    log.info("Gaussian refinement of %d sources in %.1f s (%.2f s / 1000): %d sane fits, %d + %d (fixed-shape) "
             "fluxes, %d sizes, %d PAs, %d positions replaced", n, dt_s, 1000.0 * dt_s / max(n, 1), int(sane.sum()),
             int(use_flux.sum()), int(use_fbeam.sum()), int(use_size.sum()), int(use_pa.sum()), int(use_pos.sum()))
    return out
