"""Classical smooth-and-clip HI source finder for SDC2 cubes (a SoFiA-2-like baseline, written here).

Steps (on spectral slabs x spatial tiles with overlaps, reading a memory-mapped FITS cube):

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

Chunking and tiling: the cube is cut into spectral slabs (core ``chunk_channels`` channels, ``overlap`` extra
channels on both sides) and each slab into spatial tiles (core ``tile_xy`` x ``tile_xy`` pixels, ``overlap_xy``
extra pixels on all sides); one padded tile is in memory at a time. A component is kept by the slab and tile
whose cores hold the first corner (lowest channel, row, column) of its bounding box, so every source is reported
once. The noise levels stay properties of whole channel planes: the per-channel rms of step 1 is measured once
on the full plane (strided reads of the memory map, a few channels at a time), and with several tiles the rms of
each smoothed cube is measured by a first pass over the tiles that keeps only the samples of a fixed spatial grid
(``smooth_noise_samples`` per channel). The result equals the in-memory run (one slab, one tile) when components
span fewer than ``overlap - max(spectral kernel)`` channels and ``overlap_xy - r`` pixels, with ``r`` the
truncation radius of the widest spatial kernel (10 px for FWHM 6).
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

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
    tile_xy : int or None
        Side of the spatial tile core [pixels]; ``None`` = the whole channel plane (no tiling). Planes up to
        ``tile_xy`` pixels on a side are processed as one tile.
    overlap_xy : int
        Spatial overlap added on all sides of a tile [pixels]; keep it above the largest component extent plus
        the truncation radius of the widest spatial kernel (10 px for FWHM 6).
    noise_stride : int
        Spatial subsampling used for the MAD noise estimate of the input channels.
    smooth_noise_samples : int
        Maximum number of spatial samples per channel for the MAD of the smoothed cubes: the sampling stride is
        ``max(2 noise_stride, ceil(sqrt(X Y / smooth_noise_samples)))`` (depends on the plane size only, so not
        on the tiling; the default changes nothing on planes up to 512 x 512 pixels).
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
    tile_xy: int | None = 512
    overlap_xy: int = 32
    noise_stride: int = 2
    smooth_noise_samples: int = 16384

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid parameter."""
        if self.threshold <= 0:
            raise ValueError(f"BaselineConfig.threshold must be > 0, got {self.threshold}")
        if self.chunk_channels < 1:
            raise ValueError(f"BaselineConfig.chunk_channels must be >= 1, got {self.chunk_channels}")
        if self.overlap < 0:
            raise ValueError(f"BaselineConfig.overlap must be >= 0, got {self.overlap}")
        if self.tile_xy is not None and (not _is_int(self.tile_xy) or self.tile_xy < 1):
            raise ValueError(f"BaselineConfig.tile_xy must be None or an integer >= 1, got {self.tile_xy!r}")
        if not _is_int(self.overlap_xy) or self.overlap_xy < 0:
            raise ValueError(f"BaselineConfig.overlap_xy must be an integer >= 0, got {self.overlap_xy!r}")
        if not _is_int(self.smooth_noise_samples) or self.smooth_noise_samples < 1:
            raise ValueError(f"BaselineConfig.smooth_noise_samples must be an integer >= 1, got "
                             f"{self.smooth_noise_samples!r}")
        for k in self.spatial_kernels:
            if k < 0:
                raise ValueError(f"BaselineConfig.spatial_kernels must be >= 0, got {self.spatial_kernels}")
        for k in self.spectral_kernels:
            if int(k) != k or k < 0:
                raise ValueError(f"BaselineConfig.spectral_kernels must be integers >= 0, got "
                                 f"{self.spectral_kernels}")


def _is_int(value) -> bool:
    """True for Python/numpy integers (``bool`` excluded)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


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


def _smoothed(norm: np.ndarray, cfg: BaselineConfig):
    """Yield ``(fwhm, width, smoothed)`` for every spatial x spectral kernel pair, in config order.

    The consumer must drop its reference to ``smoothed`` before asking for the next one (memory).
    """
    pad = max([int(w) for w in cfg.spectral_kernels] + [0])
    for fwhm in cfg.spatial_kernels:
        sm_xy = norm if fwhm <= 0 else ndimage.gaussian_filter(norm, (0, fwhm / 2.3548, fwhm / 2.3548),
                                                               mode="constant")
        cs = None
        for width in cfg.spectral_kernels:
            width = int(width)
            if width <= 1:
                sm = sm_xy
            else:
                if cs is None:
                    cs = _padded_cumsum(sm_xy, pad)
                sm = _boxcar_z(cs, width, pad, sm_xy.shape[0])
            yield fwhm, width, sm
            del sm  # free before the next kernel is computed
        del cs, sm_xy


def _is_plain(fwhm: float, width: int) -> bool:
    """True for the unsmoothed kernel pair (its rms is 1 by construction)."""
    return fwhm <= 0 and width <= 1


def _smooth_stride(shape: tuple, cfg: BaselineConfig) -> int:
    """Spatial sampling stride of the smoothed cubes' rms; depends on the plane size only (not the tiling)."""
    ny, nx = shape[-2:]
    cap = int(math.ceil(math.sqrt(ny * nx / cfg.smooth_noise_samples)))
    return max(max(cfg.noise_stride, 1) * 2, cap)  # smoothed cubes are spatially correlated: fewer samples


def _smooth_and_clip(norm: np.ndarray, cfg: BaselineConfig, stride: int,
                     levels: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative masks of ``norm`` OR-ed over the kernels.

    Parameters
    ----------
    norm : numpy.ndarray, shape (Z, Y, X)
        Noise-normalised slab or tile.
    cfg : BaselineConfig
        Kernels and threshold.
    stride : int
        Spatial sampling of the rms measured on ``norm`` itself (when ``levels`` is None: whole plane only).
    levels : list of numpy.ndarray, optional
        Per-channel rms of every smoothed cube (:func:`_smoothed` order), measured on the whole plane by
        :func:`_smoothed_noise`; required when ``norm`` is a tile of a larger plane.
    """
    pos = np.zeros(norm.shape, dtype=bool)
    neg = np.zeros(norm.shape, dtype=bool)
    k = -1  # no enumerate(): its cached result tuple would keep the previous smoothed cube alive
    for fwhm, width, sm in _smoothed(norm, cfg):
        k += 1
        if levels is not None:
            rms = levels[k].copy()
        elif _is_plain(fwhm, width):
            rms = np.ones(sm.shape[0], dtype=np.float32)
        else:
            rms = robust_rms(sm, axis=(1, 2), stride=stride).astype(np.float32)
        rms[rms <= 0] = np.inf
        level = (cfg.threshold * rms)[:, None, None]
        pos |= sm > level
        neg |= sm < -level
        del sm
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


class _Span(NamedTuple):
    """Core ``[a, b)`` and padded ``[pa, pb)`` index ranges of a slab or tile along one axis."""

    a: int
    b: int
    pa: int
    pb: int


def _spans(n: int, core: int | None, overlap: int) -> list:
    """Cores of ``core`` pixels (``None`` = one core of ``n``) covering ``[0, n)``, padded by ``overlap``."""
    core = n if core is None else core
    return [_Span(a, min(a + core, n), max(0, a - overlap), min(n, a + core + overlap))
            for a in range(0, n, core)]


def _channel_step(data, max_bytes: int = 1 << 26) -> int:
    """Channels read from the memory map at once: whole planes within ``max_bytes`` (at least one).

    The kernel maps large file folios around every page read, so a read maps about as much as the channel
    planes it touches; those pages are released after each read (:func:`~cianna.pipelines.sdc2.data.release_pages`).
    """
    plane = int(np.prod(data.shape[1:])) * data.dtype.itemsize
    return max(1, max_bytes // max(plane, 1))


def _plane_noise(data, stride: int, max_bytes: int = 1 << 26) -> np.ndarray:
    """Robust rms of every channel plane of ``data`` (NaN and inf count as 0), read in bounded blocks.

    Parameters
    ----------
    data : array_like, shape (Z, Y, X)
        Cube (memory map); every ``stride``-th row and column is read, :func:`_channel_step` channels at a time.
    stride : int
        Spatial subsampling (``<= 1``: every pixel), as in :func:`robust_rms`.
    max_bytes : int, optional
        Bound on the file span read at once (see :func:`_channel_step`).

    Returns
    -------
    numpy.ndarray, shape (Z,), float32
        Same values as ``robust_rms(cube, axis=(1, 2), stride=stride)`` on the whole in-memory cube.
    """
    from cianna.pipelines.sdc2.data import release_pages

    s = max(int(stride), 1)
    step = _channel_step(data, max_bytes)
    out = np.empty(data.shape[0], dtype=np.float32)
    for z0 in range(0, data.shape[0], step):
        block = np.array(data[z0:z0 + step, ::s, ::s], dtype=np.float32)
        release_pages(data)
        np.nan_to_num(block, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        out[z0:z0 + step] = robust_rms(block, axis=(1, 2))
    return out


def _read_tile(data, zs: _Span, ys: _Span, xs: _Span, rms: np.ndarray) -> np.ndarray:
    """Padded tile of ``data`` as float32 divided by the channel rms ``rms`` (length ``zs.pb - zs.pa``)."""
    from cianna.pipelines.sdc2.data import release_pages

    norm = np.empty((zs.pb - zs.pa, ys.pb - ys.pa, xs.pb - xs.pa), dtype=np.float32)  # private copy
    step = _channel_step(data)
    for z0 in range(zs.pa, zs.pb, step):
        z1 = min(z0 + step, zs.pb)
        norm[z0 - zs.pa:z1 - zs.pa] = data[z0:z1, ys.pa:ys.pb, xs.pa:xs.pb]
        release_pages(data)
    np.nan_to_num(norm, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    norm /= rms[:, None, None]
    return norm


def _grid(span: _Span, stride: int) -> slice:
    """Local slice of the padded tile selecting the core pixels on the global ``stride`` grid."""
    first = -(-span.a // stride) * stride
    return slice(first - span.pa, span.b - span.pa, stride)


def _smoothed_noise(data, zs: _Span, rms: np.ndarray, tiles: list, stride: int, cfg: BaselineConfig) -> list:
    """Whole-plane per-channel rms of every smoothed cube of a slab, from a first pass over its tiles.

    Each tile contributes the smoothed values of its core pixels on the global ``stride`` grid, so the samples
    (hence the medians) are those :func:`_smooth_and_clip` takes on the untiled slab. Memory: one padded tile
    plus ``n_kernels x channels x smooth_noise_samples`` float32 values.
    """
    ny, nx = data.shape[1:]
    n_samples = (-(-ny // stride)) * (-(-nx // stride))
    pairs = [(f, int(w)) for f in cfg.spatial_kernels for w in cfg.spectral_kernels]
    buf = [None if _is_plain(*p) else np.empty((zs.pb - zs.pa, n_samples, 1), np.float32) for p in pairs]
    at = 0
    for ys, xs in tiles:
        norm = _read_tile(data, zs, ys, xs, rms)
        gy, gx = _grid(ys, stride), _grid(xs, stride)
        n, k = 0, -1
        for fwhm, width, sm in _smoothed(norm, cfg):
            k += 1
            if buf[k] is not None:
                vals = sm[:, gy, gx].reshape(sm.shape[0], -1)
                n = vals.shape[1]
                buf[k][:, at:at + n, 0] = vals
            del sm
        at += n
        del norm
    ones = np.ones(zs.pb - zs.pa, dtype=np.float32)
    return [ones if b is None else robust_rms(b, axis=(1, 2)).astype(np.float32) for b in buf]


def _run(cb, cfg: BaselineConfig) -> Table:
    nz, ny, nx = cb.shape
    if cb.beam is None:
        raise ValueError(f"{cb.path}: the baseline needs BMAJ/BMIN in the header")
    beam_area, pixel, beam = cb.beam_area_pix, cb.pixel_size, math.sqrt(cb.beam[0] * cb.beam[1])
    tiles = [(ys, xs) for ys in _spans(ny, cfg.tile_xy, cfg.overlap_xy)
             for xs in _spans(nx, cfg.tile_xy, cfg.overlap_xy)]
    _check_overlap_xy(len(tiles), cfg)
    stride = _smooth_stride(cb.shape, cfg)
    chan_rms = _plane_noise(cb.data, cfg.noise_stride)
    out = _Found([], [], [])
    for zs in _spans(nz, cfg.chunk_channels, cfg.overlap):
        rms = chan_rms[zs.pa:zs.pb].copy()
        rms[rms <= 0] = np.inf
        levels = _smoothed_noise(cb.data, zs, rms, tiles, stride, cfg) if len(tiles) > 1 else None
        rms_jy = np.where(np.isfinite(rms), rms, 0.0).astype(np.float32)  # Jy/beam = norm * rms (blank -> 0)
        for ys, xs in tiles:
            norm = _read_tile(cb.data, zs, ys, xs, rms)
            pos, neg = _smooth_and_clip(norm, cfg, stride, levels)
            for sign, mask in ((1.0, pos), (-1.0, neg)):
                _collect(sign, mask, norm, rms_jy, (zs, ys, xs), cb, (beam_area, pixel, beam), cfg, out)
            del norm, pos, neg
        log.info("channels %d-%d: %d candidate sources so far", zs.a, zs.b, len(out.rows))
    return _select(out, cfg)


def _check_overlap_xy(n_tiles: int, cfg: BaselineConfig) -> None:
    """Warn when tiles are used with an overlap below the widest spatial kernel's truncation radius."""
    radius = max([int(4.0 * f / 2.3548 + 0.5) for f in cfg.spatial_kernels if f > 0] + [0])
    if n_tiles > 1 and cfg.overlap_xy < radius + cfg.merge_xy:
        log.warning("overlap_xy=%d is below the spatial kernel radius + merge_xy (%d px): sources near tile "
                    "borders depend on the tiling", cfg.overlap_xy, radius + cfg.merge_xy)


class _Found(NamedTuple):
    """Accumulators of :func:`_run`: parametrised positive rows and features of all components."""

    rows: list
    pos_feats: list
    neg_feats: list


def _owned(sl: tuple, spans: tuple, shape: tuple) -> bool:
    """Ownership of a component with bounding box ``sl`` (tile-local slices) by the tile ``spans``.

    True when the first corner of the box lies in the tile core (its other copies, in neighbouring tiles, are
    then dropped); warns when the box reaches a padded edge that is not a cube edge.
    """
    if not all(sp.a <= sp.pa + s.start < sp.b for s, sp in zip(sl, spans)):
        return False
    if any(s.stop == sp.pb - sp.pa and sp.pb < n for s, sp, n in zip(sl, spans, shape)):
        log.warning("component at (channel, row, column) = (%d, %d, %d) reaches the slab/tile overlap; "
                    "increase overlap / overlap_xy", *(sp.pa + s.start for s, sp in zip(sl, spans)))
    return True


def _collect(sign: float, mask: np.ndarray, norm: np.ndarray, rms: np.ndarray, spans: tuple, cb, beam_info,
             cfg: BaselineConfig, out: _Found) -> None:
    """Link ``mask`` of one tile and add the components it owns to ``out`` (parametrised if positive)."""
    labels, objects = _link(mask, cfg)
    for lab, sl in enumerate(objects, start=1):
        if sl is None:
            continue
        zs, ys, xs = sl
        if (zs.stop - zs.start < cfg.min_size_z or ys.stop - ys.start < cfg.min_size_xy
                or xs.stop - xs.start < cfg.min_size_xy):
            continue
        if not _owned(sl, spans, cb.shape):  # owned by another slab or tile
            continue
        m = labels[sl] == lab
        feat, snr, npix = _features(norm[sl], m, sign)
        if sign < 0:
            out.neg_feats.append(feat)
            continue
        out.pos_feats.append(feat)
        row = {"snr": snr, "n_pix": npix, "_k": len(out.pos_feats) - 1}
        if snr >= cfg.min_snr and npix >= cfg.min_npix:
            d, dz = cfg.dilate_xy, cfg.dilate_z
            box = (slice(max(zs.start - dz, 0), min(zs.stop + dz, norm.shape[0])),
                   slice(max(ys.start - d, 0), min(ys.stop + d, norm.shape[1])),
                   slice(max(xs.start - d, 0), min(xs.stop + d, norm.shape[2])))
            mbox = labels[box] == lab
            origin = tuple(sp.pa + b.start for sp, b in zip(spans, box))
            data_box = norm[box] * rms[box[0], None, None]
            row.update(_parametrise(data_box, mbox, norm[box], origin, cb.freqs, cb.celestial, *beam_info, cfg))
            out.rows.append(row)


def _select(found: _Found, cfg: BaselineConfig) -> Table:
    """Reliability over all components, cuts, sorting by frequency; the output table."""
    rel_all = reliability(np.array(found.pos_feats).reshape(-1, 3), np.array(found.neg_feats).reshape(-1, 3),
                          cfg.rel_kernel_scale, cfg.min_negatives)
    keep = [r for r in found.rows if rel_all[r["_k"]] >= cfg.rel_threshold]
    for r in keep:
        r["rel"] = float(rel_all[r["_k"]])
    keep.sort(key=lambda r: (r["central_freq"], r["ra"], r["dec"]))
    log.info("%d positive / %d negative components, %d reliable sources", len(found.pos_feats),
             len(found.neg_feats), len(keep))
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
