"""Training data for the 3D YOLO-CIANNA SDC2 detector: noise normalisation, parameter encoding, sub-cube sampling.

Conventions
-----------
* Cubes are ``(Z, Y, X)`` arrays (channel, row, column; :func:`cianna.io.cube.open_cube`); network inputs are
  ``(1, D, H, W) = (1, Z, Y, X)`` sub-cubes; YOLO boxes are ``(x, y, z)`` = (column, row, channel) in the
  CIANNA pixel convention (pixel ``i`` covers ``[i, i + 1)``, ``yolo.md`` §5).
* The input is divided by the robust per-channel noise :func:`noise_profile` (so the network sees S/N units)
  and clipped to ``[-INPUT_CLIP[0], INPUT_CLIP[1]]``.
* Regressed parameters (``nb_param = 6``, each scaled to about ``[0, 1]``, :func:`encode_params`):
  ``log10(S / (sigma_z dnu))`` (line flux in noise units, sigma_z the channel noise at the source centre),
  ``log10 hi_size``, ``log10 w20``, ``i / 90``, ``(cos PA + 1) / 2``, ``(sin PA + 1) / 2`` (PA of the receding
  side, east of north, 0-360 deg).
* Box: spatial side = beam-convolved size ``sqrt(hi_size^2 + 7^2) / pixel`` (the scorer's ``conv_size``),
  spectral side = w20 in channels (``w20 nu^2 / (c nu0) / dnu``).
* Augmentation: flips along x, y and frequency and x/y transposition. With east = -x and north = +y,
  ``PA -> 360 - PA`` (x flip), ``180 - PA`` (y flip), ``270 - PA`` (transposition), ``PA + 180`` (frequency
  flip: receding and approaching sides swap).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["NU0", "C_KMS", "INPUT_CLIP", "noise_profile", "normalise", "encode_params", "decode_params",
           "w20_channels", "snr_proxy", "TrainingCube", "SubCubeSampler", "flip_pa", "release_pages"]

log = logging.getLogger(__name__)

NU0 = 1.420405752e9  #: HI rest frequency [Hz]
C_KMS = 299792.458  #: speed of light [km/s]
BEAM_ARCSEC = 7.0  #: SDC2 restoring beam FWHM [arcsec]
INPUT_CLIP = (20.0, 200.0)  #: network input clipped to [-20, 200] (S/N units)

# parameter scalings: p = (value - offset) / scale
_FLUX_OFF, _FLUX_SCALE = 0.0, 3.5  # log10(S / (sigma dnu)) in [0, 3.5]
_SIZE_OFF, _SIZE_SCALE = 0.0, 1.8  # log10 hi_size [arcsec] in [0, 1.8]
_W20_OFF, _W20_SCALE = 1.4, 1.6  # log10 w20 [km/s] in [1.4, 3.0]
PARAM_NAMES = ("log_flux_snr", "log_hi_size", "log_w20", "incl", "cos_pa", "sin_pa")


def release_pages(array) -> None:
    """Drop the resident pages of a memory-mapped array (``madvise(MADV_DONTNEED)``); no-op otherwise.

    File-backed pages are re-read from disk on next access, so this only lowers the resident set size
    (streamed reads of a memory-mapped cube then keep a flat RSS).
    """
    import mmap

    base = array
    while base is not None:
        mm = getattr(base, "_mmap", None)
        if isinstance(mm, mmap.mmap):
            try:
                mm.madvise(mmap.MADV_DONTNEED)
            except (AttributeError, OSError, ValueError):
                pass
            return
        if isinstance(base, mmap.mmap):
            try:
                base.madvise(mmap.MADV_DONTNEED)
            except (AttributeError, OSError, ValueError):
                pass
            return
        base = getattr(base, "base", None)


def noise_profile(data, *, max_pixels: int = 262144, slab_channels: int = 64) -> np.ndarray:
    """Robust per-channel noise ``1.4826 * MAD`` of a ``(Z, Y, X)`` cube, read slab by slab.

    Parameters
    ----------
    data : array_like, shape (Z, Y, X)
        Cube (memory-mapped arrays are read ``slab_channels`` channels at a time).
    max_pixels : int
        Spatial subsampling: every ``s``-th row and column with ``s = ceil(sqrt(X Y / max_pixels))``; depends
        only on the cube shape, so the profile does not depend on how the cube is later chunked.
    slab_channels : int
        Channels read at once (bounds the memory).

    Returns
    -------
    numpy.ndarray, shape (Z,), float64
        Noise per channel in the cube unit; channels without finite pixels get the median of the others
        (1 if none).
    """
    nz, ny, nx = data.shape
    s = max(1, int(math.ceil(math.sqrt(nx * ny / max_pixels))))
    out = np.full(nz, np.nan)
    for z0 in range(0, nz, slab_channels):
        z1 = min(z0 + slab_channels, nz)
        slab = np.asarray(data[z0:z1, ::s, ::s], dtype=np.float32).reshape(z1 - z0, -1)
        release_pages(data)
        with np.errstate(all="ignore"):
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                med = np.nanmedian(slab, axis=1)
                mad = np.nanmedian(np.abs(slab - med[:, None]), axis=1)
        out[z0:z1] = 1.4826 * mad
    bad = ~np.isfinite(out) | (out <= 0)
    if bad.all():
        return np.ones(nz)
    out[bad] = np.median(out[~bad])
    return out


def normalise(block: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Divide a ``(z, y, x)`` block by its channel noise ``sigma (z,)``, zero NaNs, clip (float32)."""
    x = np.asarray(block, dtype=np.float32) / sigma.astype(np.float32)[:, None, None]
    np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    np.clip(x, -INPUT_CLIP[0], INPUT_CLIP[1], out=x)
    return x


def w20_channels(w20_kms, freq_hz, channel_hz):
    """w20 [km/s] at frequency ``freq_hz`` -> number of channels of width ``channel_hz`` [Hz]."""
    return np.asarray(w20_kms) * np.asarray(freq_hz) ** 2 / (C_KMS * NU0) / channel_hz


def snr_proxy(flux, hi_size, w20_chan, sigma, channel_hz, pixel_arcsec=2.8, beam_arcsec=BEAM_ARCSEC):
    """Approximate integrated S/N of a galaxy: ``S/(sigma dnu) sqrt(A_beam / (n_chan A_src))``.

    ``A_src`` is the area of the beam-convolved disc in pixels and ``A_beam`` the beam area in pixels; with
    beam-correlated noise the noise of a sum over ``N`` voxels is about ``sigma sqrt(N A_beam)``.
    """
    conv = np.sqrt(np.asarray(hi_size) ** 2 + beam_arcsec ** 2) / pixel_arcsec
    a_src = np.pi / 4 * conv ** 2
    a_beam = np.pi * (beam_arcsec / pixel_arcsec) ** 2 / (4 * np.log(2))
    n_chan = np.maximum(np.asarray(w20_chan), 1.0)
    return np.asarray(flux) / (np.asarray(sigma) * channel_hz) * np.sqrt(a_beam / (n_chan * a_src))


def flip_pa(pa, *, flip_x=False, flip_y=False, transpose=False, flip_z=False):
    """Position angle (deg, receding side, east of north) after the given augmentation (applied in the
    order transpose, x flip, y flip, frequency flip)."""
    pa = np.asarray(pa, dtype=float)
    if transpose:
        pa = 270.0 - pa
    if flip_x:
        pa = 360.0 - pa
    if flip_y:
        pa = 180.0 - pa
    if flip_z:
        pa = pa + 180.0
    return np.mod(pa, 360.0)


def encode_params(flux, sigma, channel_hz, hi_size, w20, incl, pa) -> np.ndarray:
    """SDC2 properties -> the 6 regressed parameters (``(N, 6)``, about [0, 1]; see module notes).

    Parameters
    ----------
    flux : array_like
        line_flux_integral [Jy Hz].
    sigma : array_like
        Channel noise at the source centre [Jy/beam].
    channel_hz : float
        Channel width [Hz].
    hi_size : array_like
        [arcsec]. w20 : [km/s]. incl : [deg]. pa : [deg].
    """
    f = (np.log10(np.maximum(np.asarray(flux) / (np.asarray(sigma) * channel_hz), 1e-3)) - _FLUX_OFF) / _FLUX_SCALE
    s = (np.log10(np.maximum(np.asarray(hi_size), 1.0)) - _SIZE_OFF) / _SIZE_SCALE
    w = (np.log10(np.maximum(np.asarray(w20), 10.0)) - _W20_OFF) / _W20_SCALE
    i = np.asarray(incl) / 90.0
    rad = np.deg2rad(np.asarray(pa))
    return np.stack([f, s, w, i, (np.cos(rad) + 1) / 2, (np.sin(rad) + 1) / 2], axis=-1).astype(np.float32)


def decode_params(params, sigma, channel_hz) -> dict:
    """Inverse of :func:`encode_params`: ``(N, 6)`` -> dict of line_flux_integral [Jy Hz], hi_size [arcsec],
    w20 [km/s], i [deg], pa [deg]."""
    p = np.asarray(params, dtype=float).reshape(-1, 6)
    flux = 10.0 ** (p[:, 0] * _FLUX_SCALE + _FLUX_OFF) * np.asarray(sigma) * channel_hz
    size = 10.0 ** (p[:, 1] * _SIZE_SCALE + _SIZE_OFF)
    w20 = 10.0 ** (p[:, 2] * _W20_SCALE + _W20_OFF)
    incl = np.clip(p[:, 3] * 90.0, 0.0, 90.0)
    pa = np.mod(np.rad2deg(np.arctan2(2 * p[:, 5] - 1, 2 * p[:, 4] - 1)), 360.0)
    return {"line_flux_integral": flux, "hi_size": size, "w20": w20, "i": incl, "pa": pa}


@dataclass
class TrainingCube:
    """A simulated cube held for sampling: normalised data and its truth in pixel units.

    Attributes
    ----------
    data : numpy.ndarray, shape (Z, Y, X), float32
        Noise-normalised cube (:func:`normalise`).
    sigma : numpy.ndarray, shape (Z,)
        Channel noise [Jy/beam].
    xyz : numpy.ndarray, shape (N, 3)
        0-based pixel centres (x, y, z) of the galaxies.
    size : numpy.ndarray, shape (N, 3)
        Box sides (x, y, z) in pixels/channels.
    params : numpy.ndarray, shape (N, 6)
        Encoded parameters (:func:`encode_params`); PA columns are re-encoded after augmentation.
    pa : numpy.ndarray, shape (N,)
    snr : numpy.ndarray, shape (N,)
        :func:`snr_proxy`.
    """

    data: np.ndarray
    sigma: np.ndarray
    xyz: np.ndarray
    size: np.ndarray
    params: np.ndarray
    pa: np.ndarray
    snr: np.ndarray

    @classmethod
    def from_files(cls, cube_path, truth_path) -> "TrainingCube":
        """Read a simulated cube (FITS) and its truth (``truth.ecsv`` from the simulator, or SDC2 text)."""
        from astropy.table import Table

        from cianna.io.cube import open_cube

        with open_cube(cube_path) as cube:
            sigma = noise_profile(cube.data)
            data = normalise(cube.data, sigma)
            ch = cube.channel_width
            pix = cube.pixel_size
            truth = Table.read(truth_path, format="ascii.ecsv" if str(truth_path).endswith(".ecsv") else
                               "ascii.basic")
            x, y = cube.celestial.all_world2pix(np.asarray(truth["ra"], float), np.asarray(truth["dec"], float), 0)
            fz = np.arange(len(cube.freqs), dtype=float)
            freqs = cube.freqs
            order = np.argsort(freqs)
            z = np.interp(np.asarray(truth["central_freq"], float), freqs[order], fz[order])
        hi = np.asarray(truth["hi_size"], float)
        w20 = np.asarray(truth["w20"], float)
        fc = np.asarray(truth["central_freq"], float)
        conv = np.sqrt(hi ** 2 + BEAM_ARCSEC ** 2) / pix
        zc = w20_channels(w20, fc, ch)
        sig = sigma[np.clip(np.round(z).astype(int), 0, len(sigma) - 1)]
        flux = np.asarray(truth["line_flux_integral"], float)
        pa = np.asarray(truth["pa"], float)
        params = encode_params(flux, sig, ch, hi, w20, np.asarray(truth["i"], float), pa)
        snr = snr_proxy(flux, hi, zc, sig, ch, pix)
        return cls(data, sigma, np.stack([x, y, z], 1), np.stack([conv, conv, np.maximum(zc, 2.0)], 1), params,
                   pa, snr)


class SubCubeSampler:
    """``make_data(iteration, rng)`` for :class:`cianna.train.StreamingDataset`: augmented sub-cubes + YOLO rows.

    Parameters
    ----------
    cubes : list of TrainingCube
    crop : tuple of int
        Sub-cube size ``(D, H, W)`` (channels, rows, columns).
    n_per_iter : int
        Sub-cubes per iteration.
    source_fraction : float
        Fraction of sub-cubes centred (with a random offset) on a target galaxy; the rest are random.
    snr_min, snr_difficult : float
        Galaxies with ``snr >= snr_min`` are targets; ``snr_difficult <= snr < snr_min`` are "difficult" targets
        (code 1: only reinforced once the network finds them, ``yolo.md`` §7.2); fainter ones are background.
    max_obj : int
        Maximum targets per sub-cube (YOLO row length).
    """

    def __init__(self, cubes, crop=(128, 32, 32), n_per_iter=256, source_fraction=0.7, snr_min=5.0,
                 snr_difficult=3.0, max_obj=24):
        self.cubes = list(cubes)
        self.crop = tuple(int(c) for c in crop)
        self.n_per_iter = int(n_per_iter)
        self.source_fraction = float(source_fraction)
        self.snr_min, self.snr_difficult = float(snr_min), float(snr_difficult)
        self.max_obj = int(max_obj)
        for c in self.cubes:
            if any(s < k for s, k in zip(c.data.shape, self.crop)):
                raise ValueError(f"training cube {c.data.shape} smaller than the crop {self.crop}")
        self.targets = [np.nonzero(c.snr >= self.snr_min)[0] for c in self.cubes]
        self.row_len = 1 + self.max_obj * (7 + 6 + 1)

    def sample(self, rng: np.random.Generator):
        """One augmented sub-cube: ``(input (1, D, H, W) float32, target row (row_len,) float32)``."""
        k = int(rng.integers(len(self.cubes)))
        c = self.cubes[k]
        d, h, w = self.crop
        nz, ny, nx = c.data.shape
        if rng.random() < self.source_fraction and len(self.targets[k]):
            j = int(rng.choice(self.targets[k]))
            cx, cy, cz = c.xyz[j]
            x0 = int(np.clip(np.floor(cx - rng.uniform(2, w - 2)), 0, nx - w))
            y0 = int(np.clip(np.floor(cy - rng.uniform(2, h - 2)), 0, ny - h))
            z0 = int(np.clip(np.floor(cz - rng.uniform(4, d - 4)), 0, nz - d))
        else:
            x0, y0, z0 = (int(rng.integers(0, n - s + 1)) for n, s in ((nx, w), (ny, h), (nz, d)))
        block = c.data[z0:z0 + d, y0:y0 + h, x0:x0 + w]
        xyz = c.xyz - np.array([x0, y0, z0], float)
        inside = ((xyz >= -0.5) & (xyz < np.array([w, h, d]) - 0.5)).all(1) & (c.snr >= self.snr_difficult)
        idx = np.nonzero(inside)[0]
        xyz, size, params, pa = xyz[idx].copy(), c.size[idx].copy(), c.params[idx].copy(), c.pa[idx]
        diff = (c.snr[idx] < self.snr_min).astype(np.float32)
        fx, fy, fz = (bool(rng.random() < 0.5) for _ in range(3))
        tr = bool(rng.random() < 0.5) and h == w
        if tr:
            block = block.transpose(0, 2, 1)
            xyz = xyz[:, [1, 0, 2]]
            size = size[:, [1, 0, 2]]
        if fx:
            block = block[:, :, ::-1]
            xyz[:, 0] = w - 1 - xyz[:, 0]
        if fy:
            block = block[:, ::-1, :]
            xyz[:, 1] = h - 1 - xyz[:, 1]
        if fz:
            block = block[::-1]
            xyz[:, 2] = d - 1 - xyz[:, 2]
        new_pa = flip_pa(pa, flip_x=fx, flip_y=fy, transpose=tr, flip_z=fz)
        rad = np.deg2rad(new_pa)
        params[:, 4] = (np.cos(rad) + 1) / 2
        params[:, 5] = (np.sin(rad) + 1) / 2
        row = np.zeros(self.row_len, np.float32)
        n = min(len(idx), self.max_obj)
        row[0] = n
        if n:
            order = np.argsort(-c.snr[idx])[:n]
            ctr = xyz[order] + 0.5  # CIANNA pixel convention
            half = size[order] / 2
            obj = np.concatenate([np.ones((n, 1)), ctr - half, ctr + half, params[order], diff[order, None]], 1)
            row[1:1 + n * 14] = obj.astype(np.float32).ravel()
        return np.ascontiguousarray(block)[None].astype(np.float32), row

    def __call__(self, iteration: int, rng: np.random.Generator):
        xs, ys = zip(*(self.sample(rng) for _ in range(self.n_per_iter)))
        return np.stack(xs), np.stack(ys)
