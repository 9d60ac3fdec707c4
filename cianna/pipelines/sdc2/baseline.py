"""Classical smooth-and-clip HI source finder for SDC2 cubes (a SoFiA-2-like baseline, written here).

Steps (all on channel slabs with spectral overlap, reading a memory-mapped FITS cube):

1. **Noise normalisation**: each channel is divided by its robust rms (1.4826 x MAD).
2. **Smooth and clip**: for every spatial Gaussian kernel (FWHM in pixels, 0 = none) and spectral boxcar
   (width in channels, 0 = none) the normalised slab is smoothed, its per-channel rms re-measured (MAD) and
   voxels above ``+threshold`` (positive mask) or below ``-threshold`` (negative mask) sigma are flagged;
   masks are OR-ed over kernels.
3. **Linking**: voxels closer than the merge radii (``merge_xy`` pixels, ``merge_z`` channels) are joined
   into 3-D components; components smaller than ``min_size_xy`` x ``min_size_xy`` x ``min_size_z`` are dropped.
4. **Reliability** (as SoFiA): positive and negative components are placed in the space of log10 peak,
   sum and mean signal-to-noise; with kernel density estimates ``P`` (positives) and ``N`` (negatives),
   ``rel = (P - N) / P``. Noise produces as many negative as positive components, so real sources sit where
   negatives are absent. Components with ``rel >= rel_threshold`` and integrated SNR ``>= min_snr`` and
   at least ``min_npix`` voxels are kept. With fewer than ``min_negatives`` negative components the density
   test is skipped and only the SNR/size cuts apply.
5. **Parametrisation** in SDC2 conventions: ra/dec (flux-weighted centroid through the WCS), central_freq
   (flux-weighted spectral centroid), line_flux_integral (sum of the dilated mask x channel width / beam
   area, Jy Hz), w20 from the integrated spectrum (20 % of peak from the edges inwards, ``c nu0 / nu^2``),
   hi_size from the beam-deconvolved second-moment ellipse of the moment-0 map (Gaussian-equivalent FWHM x
   ``size_factor``), inclination from its axis ratio (``cos^2 i = (q^2 - a^2) / (1 - a^2)``, a = 0.2) and PA
   from the kinematic gradient of the per-channel centroids (receding = low-frequency side, east of north).

Chunking: a slab core ``[z0, z1)`` is processed with ``overlap`` extra channels on both sides; a component is
kept by the slab holding its first channel, so every source is reported once. The result equals the
in-memory run (one slab) when components span fewer than ``overlap - max(spectral kernel)`` channels.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
from astropy import units as u
from astropy.table import Table
from scipy import ndimage

__all__ = ["BaselineConfig", "find_sources", "robust_rms", "reliability"]

log = logging.getLogger(__name__)

NU0 = 1.420405752e9
C_KMS = 299792.458
MAD_TO_SIGMA = 1.482602218505602


@dataclass
class BaselineConfig:
    """Parameters of :func:`find_sources` (defaults tuned on simulated SDC2-like cubes, see docs/sdc2.md).

    Attributes
    ----------
    spatial_kernels : tuple of float
        Gaussian FWHM of the spatial smoothing kernels [pixels]; 0 = no smoothing.
    spectral_kernels : tuple of int
        Boxcar widths of the spectral smoothing kernels [channels]; 0 or 1 = no smoothing.
    threshold : float
        Clip level in units of the smoothed cube's rms.
    merge_xy, merge_z : int
        Linker merge radii [pixels, channels].
    min_size_xy, min_size_z : int
        Minimum component extent [pixels, channels].
    rel_threshold : float
        Minimum reliability.
    rel_kernel_scale : float
        Scale of the density kernel relative to the negative components' covariance.
    min_negatives : int
        Minimum number of negative components to run the density reliability.
    min_snr : float
        Minimum integrated SNR ``sum / sqrt(n_pix)`` (normalised units).
    min_npix : int
        Minimum number of mask voxels.
    dilate_xy, dilate_z : int
        Mask dilation before flux/size/width measurement [pixels, channels].
    size_factor : float
        hi_size = size_factor x deconvolved Gaussian-equivalent FWHM of the moment-0 ellipse (2.0 ~ median
        truth/measured ratio on simulated cubes, see docs/sdc2.md).
    min_pixel_snr : float
        Only pixels whose masked spectrum reaches this SNR enter the moment ellipse and the kinematic PA.
    w20_core : bool
        Measure w20 on the spectrum of the undilated mask (True) instead of the dilated one.
    alpha : float
        Intrinsic disc thickness for the inclination.
    unresolved_size, unresolved_incl : float
        hi_size [arcsec] and i [deg] reported when the source is not resolved.
    chunk_channels, overlap : int
        Slab core size and overlap [channels].
    noise_stride : int
        Spatial subsampling used for the MAD noise estimates.
    """

    spatial_kernels: tuple = (0, 3, 6)
    spectral_kernels: tuple = (0, 3, 7, 15)
    threshold: float = 4.0
    merge_xy: int = 2
    merge_z: int = 2
    min_size_xy: int = 3
    min_size_z: int = 3
    rel_threshold: float = 0.8
    rel_kernel_scale: float = 0.4
    min_negatives: int = 10
    min_snr: float = 4.0
    min_npix: int = 150
    dilate_xy: int = 1
    dilate_z: int = 2
    size_factor: float = 2.0
    w20_core: bool = True
    min_pixel_snr: float = 2.0
    alpha: float = 0.2
    unresolved_size: float = 5.0
    unresolved_incl: float = 57.3
    chunk_channels: int = 256
    overlap: int = 64
    noise_stride: int = 2

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid parameter."""
        if self.threshold <= 0:
            raise ValueError(f"BaselineConfig.threshold must be > 0, got {self.threshold}")
        if self.chunk_channels < 1:
            raise ValueError(f"BaselineConfig.chunk_channels must be >= 1, got {self.chunk_channels}")
        if self.overlap < 0:
            raise ValueError(f"BaselineConfig.overlap must be >= 0, got {self.overlap}")
        for k in self.spatial_kernels:
            if k < 0:
                raise ValueError(f"BaselineConfig.spatial_kernels must be >= 0, got {self.spatial_kernels}")
        for k in self.spectral_kernels:
            if int(k) != k or k < 0:
                raise ValueError(f"BaselineConfig.spectral_kernels must be integers >= 0, got "
                                 f"{self.spectral_kernels}")


def robust_rms(data: np.ndarray, axis=None, stride: int = 1) -> np.ndarray:
    """Robust rms ``1.4826 * median(|x - median(x)|)``.

    Parameters
    ----------
    data : numpy.ndarray, shape (Z, Y, X) or any
        Values; NaNs must be removed beforehand.
    axis : None or tuple of int, optional
        Axes reduced; ``(1, 2)`` gives one value per channel.
    stride : int, optional
        Spatial subsampling ``data[:, ::stride, ::stride]`` (3-D input only) to save time.

    Returns
    -------
    numpy.ndarray
        rms, shape of ``data`` with ``axis`` removed.
    """
    d = data[:, ::stride, ::stride] if (stride > 1 and data.ndim == 3) else data
    if axis == (1, 2) and d.ndim == 3:
        d = d.reshape(d.shape[0], -1)
        med = np.median(d, axis=1, keepdims=True)
        return MAD_TO_SIGMA * np.median(np.abs(d - med), axis=1)
    med = np.median(d, axis=axis, keepdims=True)
    return MAD_TO_SIGMA * np.median(np.abs(d - med), axis=axis)


def _padded_cumsum(x: np.ndarray, pad: int) -> np.ndarray:
    """Cumulative sum along axis 0 of ``x`` zero-padded by ``pad`` channels on both sides (float64).

    ``out[j] = sum(xp[:j])`` for the padded array ``xp`` (length ``Z + 2 pad``); computed plane by plane,
    which is much faster than ``np.cumsum(axis=0)`` on large slabs.
    """
    nz = x.shape[0]
    cs = np.empty((nz + 2 * pad + 1,) + x.shape[1:], dtype=np.float64)
    cs[:pad + 1] = 0.0
    for k in range(nz):
        np.add(cs[pad + k], x[k], out=cs[pad + k + 1])
    cs[pad + nz + 1:] = cs[pad + nz]
    return cs


def _boxcar_z(cs: np.ndarray, width: int, pad: int, nz: int) -> np.ndarray:
    """Centred moving mean over ``width`` channels (zeros beyond the edges) from :func:`_padded_cumsum`."""
    h = width // 2
    a = pad - h
    out = np.empty((nz,) + cs.shape[1:], dtype=np.float32)
    np.subtract(cs[a + width:a + width + nz], cs[a:a + nz], out=out, casting="same_kind")
    out *= 1.0 / width
    return out


def _smooth_and_clip(norm: np.ndarray, cfg: BaselineConfig) -> tuple[np.ndarray, np.ndarray]:
    pos = np.zeros(norm.shape, dtype=bool)
    neg = np.zeros(norm.shape, dtype=bool)
    stride = max(cfg.noise_stride, 1) * 2  # smoothed cubes are spatially correlated: fewer samples suffice
    for fwhm in cfg.spatial_kernels:
        sm_xy = norm if fwhm <= 0 else ndimage.gaussian_filter(norm, (0, fwhm / 2.3548, fwhm / 2.3548),
                                                               mode="constant")
        cs = None
        for width in cfg.spectral_kernels:
            width = int(width)
            if width <= 1:
                sm = sm_xy
            else:
                pad = max(int(w) for w in cfg.spectral_kernels)
                if cs is None:
                    cs = _padded_cumsum(sm_xy, pad)
                sm = _boxcar_z(cs, width, pad, sm_xy.shape[0])
            if fwhm <= 0 and width <= 1:
                rms = np.ones(sm.shape[0], dtype=np.float32)
            else:
                rms = robust_rms(sm, axis=(1, 2), stride=stride).astype(np.float32)
            rms[rms <= 0] = np.inf
            level = (cfg.threshold * rms)[:, None, None]
            pos |= sm > level
            neg |= sm < -level
            del sm  # free before the next kernel is computed
        del cs
    return pos, neg


def _link(mask: np.ndarray, cfg: BaselineConfig):
    """Label components of ``mask`` joining voxels within the merge radii (box dilation, then labelling)."""
    grown = mask
    if cfg.merge_z > 0:
        grown = mask.copy()
        for sft in range(1, cfg.merge_z + 1):
            grown[sft:] |= mask[:-sft]
            grown[:-sft] |= mask[sft:]
    if cfg.merge_xy > 0:
        size = 2 * cfg.merge_xy + 1
        grown = ndimage.maximum_filter1d(grown.view(np.uint8), size, axis=2, mode="constant")
        grown = ndimage.maximum_filter1d(grown, size, axis=1, mode="constant").view(bool)
    labels, n = ndimage.label(grown)
    labels[~mask] = 0
    return labels, ndimage.find_objects(labels, max_label=n)


def _parametrise(data_box: np.ndarray, mask_box: np.ndarray, norm_box: np.ndarray, origin: tuple,
                 freqs: np.ndarray, celestial, beam_area: float, pixel: float, beam: float,
                 cfg: BaselineConfig) -> dict:
    """SDC2 parameters of one component.

    ``data_box`` (Jy/beam), ``norm_box`` (noise-normalised) and ``mask_box`` have shape (nz, ny, nx); ``origin``
    is the (z, y, x) position of the box in the full cube.
    """
    core = np.where(mask_box, data_box, 0.0).astype(np.float64)
    core_spec = core.sum(axis=(1, 2))
    # pixels whose masked spectrum is significant (moment-0 SNR >= min_pixel_snr) define shape and kinematics
    n_chan = mask_box.sum(axis=0)
    pix_snr = np.where(mask_box, norm_box, 0.0).sum(axis=0) / np.sqrt(np.maximum(n_chan, 1))
    shape_pix = (pix_snr >= cfg.min_pixel_snr) & (n_chan > 0)
    if shape_pix.sum() < 3:
        shape_pix = n_chan > 0
    if cfg.dilate_xy > 0 or cfg.dilate_z > 0:
        st = np.ones((2 * cfg.dilate_z + 1, 2 * cfg.dilate_xy + 1, 2 * cfg.dilate_xy + 1), dtype=bool)
        mask_box = ndimage.binary_dilation(mask_box, structure=st)
    md = np.where(mask_box, data_box, 0.0).astype(np.float64)
    z0, y0, x0 = origin
    dnu = abs(float(freqs[1] - freqs[0])) if freqs.size > 1 else 30e3
    spec = md.sum(axis=(1, 2))
    flux = float(spec.sum()) * dnu / beam_area
    mom0 = core.sum(axis=0)
    w = np.where(shape_pix, np.clip(mom0, 0, None), 0.0)
    if w.sum() <= 0:
        w = shape_pix.astype(float)
    yy, xx = np.indices(mom0.shape, dtype=float)
    wsum = w.sum()
    xc, yc = (w * xx).sum() / wsum, (w * yy).sum() / wsum
    sp = np.clip(spec, 0, None)
    zc = (sp * np.arange(spec.size)).sum() / sp.sum() if sp.sum() > 0 else 0.5 * (spec.size - 1)
    xg, yg, zg = x0 + xc, y0 + yc, z0 + zc
    nu_c = float(np.interp(zg, np.arange(freqs.size), freqs))
    ra, dec = celestial.all_pix2world([xg], [yg], 0)
    # w20 on the integrated spectrum
    from cianna.pipelines.sdc2.kinematics import centroid_drift, pa_east_of_north  # (kinematics imports us)
    from cianna.sim.hi_cube import measure_w20

    w_spec = core_spec if cfg.w20_core else spec
    w20 = measure_w20(w_spec, freqs[z0:z0 + spec.size], nu_c) if spec.size > 1 else 0.0
    # second-moment ellipse of the moment-0 map -> deconvolved Gaussian FWHM
    cxx = (w * (xx - xc) ** 2).sum() / wsum
    cyy = (w * (yy - yc) ** 2).sum() / wsum
    cxy = (w * (xx - xc) * (yy - yc)).sum() / wsum
    evals, evecs = np.linalg.eigh(np.array([[cxx, cxy], [cxy, cyy]]))
    fwhm = 2.3548 * np.sqrt(np.clip(evals, 0, None)) * pixel  # (minor, major) arcsec
    dec_maj = math.sqrt(max(fwhm[1] ** 2 - beam ** 2, 0.0))
    dec_min = math.sqrt(max(fwhm[0] ** 2 - beam ** 2, 0.0))
    if dec_maj > 0:
        hi_size = cfg.size_factor * dec_maj
        q = dec_min / dec_maj
        incl = math.degrees(math.acos(math.sqrt(min(max((q * q - cfg.alpha ** 2) / (1 - cfg.alpha ** 2), 0), 1))))
    else:
        hi_size, incl = cfg.unresolved_size, cfg.unresolved_incl
    # kinematic PA: per-channel centroids regressed against channel; receding = decreasing frequency
    pa = None
    drift = centroid_drift(np.where(shape_pix[None], np.clip(core, 0, None), 0.0))
    if drift is not None:
        sx, sy, _ = drift
        if freqs[-1] > freqs[0]:  # ascending axis: receding (low frequency) side = decreasing channel
            sx, sy = -sx, -sy
        if math.hypot(sx, sy) > 0:
            pa = pa_east_of_north(celestial, xg, yg, sx, sy)
    if pa is None:  # fall back to the (180 deg ambiguous) ellipse major axis
        pa = pa_east_of_north(celestial, xg, yg, evecs[0, 1], evecs[1, 1])
    return {"ra": float(ra[0]), "dec": float(dec[0]), "hi_size": hi_size, "line_flux_integral": flux,
            "central_freq": nu_c, "pa": pa, "i": incl, "w20": w20, "x": xg, "y": yg, "z": zg}


def reliability(pos_feat: np.ndarray, neg_feat: np.ndarray, kernel_scale: float = 0.4,
                min_negatives: int = 10) -> np.ndarray:
    """SoFiA-style reliability of positive components from positive/negative densities in feature space.

    Parameters
    ----------
    pos_feat : numpy.ndarray, shape (P, F)
        Features of the positive components (log10 peak, sum and mean SNR).
    neg_feat : numpy.ndarray, shape (N, F)
        Same features of the negative components (sign flipped).
    kernel_scale : float, optional
        Gaussian kernel covariance = (kernel_scale^2) x covariance of the negatives.
    min_negatives : int, optional
        With fewer negatives, every positive gets reliability 1 (no density test).

    Returns
    -------
    numpy.ndarray, shape (P,)
        ``max(0, (P - N) / P)`` with P, N the kernel-summed densities at each positive component.
    """
    if len(pos_feat) == 0:
        return np.zeros(0)
    if len(neg_feat) < max(min_negatives, pos_feat.shape[1] + 1):
        return np.ones(len(pos_feat))
    cov = np.cov(neg_feat, rowvar=False) * kernel_scale ** 2
    cov += 1e-6 * np.eye(cov.shape[0])
    inv = np.linalg.inv(cov)

    def density(points, at):
        d = at[:, None, :] - points[None, :, :]
        return np.exp(-0.5 * np.einsum("ijk,kl,ijl->ij", d, inv, d)).sum(axis=1)

    p = density(pos_feat, pos_feat)
    n = density(neg_feat, pos_feat)
    return np.clip((p - n) / p, 0.0, 1.0)


def _features(norm_box: np.ndarray, m: np.ndarray, sign: float) -> tuple[np.ndarray, float, int]:
    vals = sign * norm_box[m]
    npix = vals.size
    s = float(vals.sum())
    peak = float(vals.max())
    feat = np.log10(np.clip([peak, s, s / npix], 1e-3, None))
    return feat, s / math.sqrt(npix), npix


def find_sources(cube, config: BaselineConfig | None = None, **overrides) -> Table:
    """Run the smooth-and-clip baseline on a cube and return an SDC2 catalogue.

    Parameters
    ----------
    cube : str, os.PathLike or cianna.io.cube.Cube
        FITS cube (memory-mapped) or an opened :class:`~cianna.io.cube.Cube`; data (Z, Y, X) in Jy/beam.
    config : BaselineConfig, optional
        Parameters (defaults when omitted).
    **overrides
        Fields of :class:`BaselineConfig` to override (e.g. ``chunk_channels=64``).

    Returns
    -------
    astropy.table.Table
        SDC2 columns ``id ra dec hi_size line_flux_integral central_freq pa i w20`` with units
        (deg, deg, arcsec, Jy Hz, Hz, deg, deg, km/s) plus ``x y z`` (0-based pixels), ``n_pix``, ``snr``,
        ``rel``; sorted by central frequency; ``meta['config']`` holds the parameters used.
    """
    from cianna.io.cube import Cube, open_cube

    cfg = BaselineConfig(**{**asdict(config or BaselineConfig()), **overrides})
    cfg.validate()
    own = not isinstance(cube, Cube)
    cb = open_cube(cube) if own else cube
    try:
        return _run(cb, cfg)
    finally:
        if own:
            cb.close()


def _run(cb, cfg: BaselineConfig) -> Table:
    nz = cb.shape[0]
    if cb.beam is None:
        raise ValueError(f"{cb.path}: the baseline needs BMAJ/BMIN in the header")
    beam_area, pixel, beam = cb.beam_area_pix, cb.pixel_size, math.sqrt(cb.beam[0] * cb.beam[1])
    rows, pos_feats, neg_feats = [], [], []
    for a in range(0, nz, cfg.chunk_channels):
        b = min(a + cfg.chunk_channels, nz)
        pa_, pb_ = max(0, a - cfg.overlap), min(nz, b + cfg.overlap)
        norm = np.array(cb.data[pa_:pb_], dtype=np.float32)  # private copy, normalised in place below
        np.nan_to_num(norm, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        rms = robust_rms(norm, axis=(1, 2), stride=cfg.noise_stride).astype(np.float32)
        rms[rms <= 0] = np.inf
        norm /= rms[:, None, None]
        rms[~np.isfinite(rms)] = 0.0  # Jy/beam = norm * rms (blank channels -> 0)
        pos, neg = _smooth_and_clip(norm, cfg)
        for sign, mask in ((1.0, pos), (-1.0, neg)):
            labels, objects = _link(mask, cfg)
            for lab, sl in enumerate(objects, start=1):
                if sl is None:
                    continue
                zs, ys, xs = sl
                if (zs.stop - zs.start < cfg.min_size_z or ys.stop - ys.start < cfg.min_size_xy
                        or xs.stop - xs.start < cfg.min_size_xy):
                    continue
                gz0 = pa_ + zs.start
                if not (a <= gz0 < b):  # owned by another slab
                    continue
                if zs.stop == pb_ - pa_ and pb_ < nz:
                    log.warning("component at channel %d reaches the slab overlap; increase overlap", gz0)
                m = labels[sl] == lab
                feat, snr, npix = _features(norm[sl], m, sign)
                if sign < 0:
                    neg_feats.append(feat)
                    continue
                pos_feats.append(feat)
                row = {"snr": snr, "n_pix": npix, "_k": len(pos_feats) - 1}
                if snr >= cfg.min_snr and npix >= cfg.min_npix:
                    d = cfg.dilate_xy
                    dz = cfg.dilate_z
                    box = (slice(max(zs.start - dz, 0), min(zs.stop + dz, norm.shape[0])),
                           slice(max(ys.start - d, 0), min(ys.stop + d, norm.shape[1])),
                           slice(max(xs.start - d, 0), min(xs.stop + d, norm.shape[2])))
                    mbox = labels[box] == lab
                    origin = (pa_ + box[0].start, box[1].start, box[2].start)
                    data_box = norm[box] * rms[box[0], None, None]
                    row.update(_parametrise(data_box, mbox, norm[box], origin, cb.freqs, cb.celestial,
                                            beam_area, pixel, beam, cfg))
                    rows.append(row)
        log.info("channels %d-%d: %d candidate sources so far", a, b, len(rows))
    rel_all = reliability(np.array(pos_feats).reshape(-1, 3), np.array(neg_feats).reshape(-1, 3),
                          cfg.rel_kernel_scale, cfg.min_negatives)
    keep = [r for r in rows if rel_all[r["_k"]] >= cfg.rel_threshold]
    for r in keep:
        r["rel"] = float(rel_all[r["_k"]])
    keep.sort(key=lambda r: (r["central_freq"], r["ra"], r["dec"]))
    log.info("%d positive / %d negative components, %d reliable sources", len(pos_feats), len(neg_feats),
             len(keep))
    return _to_table(keep, cfg)


def _to_table(rows: list, cfg: BaselineConfig) -> Table:
    units = {"ra": u.deg, "dec": u.deg, "hi_size": u.arcsec, "line_flux_integral": u.Jy * u.Hz,
             "central_freq": u.Hz, "pa": u.deg, "i": u.deg, "w20": u.km / u.s}
    t = Table()
    t["id"] = np.arange(len(rows), dtype=np.int64)
    for name, unit in units.items():
        t[name] = np.array([r[name] for r in rows], dtype=np.float64) * unit
    for name in ("x", "y", "z", "snr", "rel"):
        t[name] = np.array([r[name] for r in rows], dtype=np.float64)
    t["n_pix"] = np.array([r["n_pix"] for r in rows], dtype=np.int64)
    t.meta["config"] = asdict(cfg)
    return t
