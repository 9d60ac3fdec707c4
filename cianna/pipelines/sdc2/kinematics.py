"""Kinematic position angle of detected HI galaxies, measured in the cube around each detection.

SDC2 defines a galaxy's PA as the direction of its *receding* side (east of north). A box detector regresses
``cos PA`` and ``sin PA`` from a sub-cube, which recovers the major axis well but often picks the wrong side
(a 180-degree error scores zero). The velocity field settles the side directly: in each channel the emission
centroid moves along the major axis, towards the receding side as the frequency decreases.

:func:`kinematic_pa` measures that drift on a small box read from the (memory-mapped) cube around one
detection; :func:`refine_pa` applies it to a whole catalogue, either to replace the network's PA
(``mode="replace"``, the default) or only to choose the side of the network's axis (``mode="side"``).
On the SDC2 validation cube (129 matches of the packaged model) the PA accuracy of the official scorer went
from 32 % (network) to 40 % (side) and 80 % (replace); the defaults ``clip=4, smooth_xy=0.5, smooth_z=3`` were
chosen there on a small grid. Memory is bounded by one
box at a time, so it streams over cubes of any size.
"""
from __future__ import annotations

import logging
import math

import numpy as np
from scipy import ndimage

from cianna.pipelines.sdc2.baseline import robust_rms

__all__ = ["KinematicPA", "kinematic_pa", "refine_pa", "angle_difference", "centroid_drift", "pa_east_of_north"]

log = logging.getLogger(__name__)
#: refine_pa releases the pages of the memory-mapped cube after this many detections (flat resident memory)
_RELEASE_EVERY = 32

#: speed of light in km/s
C_KMS = 299_792.458


class KinematicPA(tuple):
    """``(pa, significance)``: PA of the receding side (deg east of north, NaN when not measurable) and the
    significance of the centroid drift (slope / its standard error)."""

    __slots__ = ()

    def __new__(cls, pa: float, significance: float):
        return super().__new__(cls, (float(pa), float(significance)))

    @property
    def pa(self) -> float:
        """Receding-side PA in degrees east of north (NaN when not measured)."""
        return self[0]

    @property
    def significance(self) -> float:
        """Centroid-drift slope over its standard error (0 when not measured)."""
        return self[1]


def angle_difference(a, b):
    """Smallest absolute difference between angles ``a`` and ``b`` (deg), in [0, 180]."""
    d = np.mod(np.asarray(a, float) - np.asarray(b, float) + 180.0, 360.0) - 180.0
    return np.abs(d)


def pa_east_of_north(celestial, x: float, y: float, dx: float, dy: float) -> float:
    """PA (deg, east of north) of the pixel-plane direction ``(dx, dy)`` at pixel ``(x, y)`` (0 for a null
    direction)."""
    norm = math.hypot(dx, dy)
    if norm == 0:
        return 0.0
    (ra0, ra1), (de0, de1) = celestial.all_pix2world([x, x + dx / norm], [y, y + dy / norm], 0)
    d_east = ((ra1 - ra0 + 180.0) % 360.0 - 180.0) * math.cos(math.radians(de0))
    return math.degrees(math.atan2(d_east, de1 - de0)) % 360.0


def centroid_drift(weights: np.ndarray):
    """Drift of the per-channel centroid of non-negative weights, by a weighted straight-line fit.

    Parameters
    ----------
    weights : numpy.ndarray, shape (Z, Y, X)
        Non-negative weights (e.g. clipped flux) of a box around one galaxy.

    Returns
    -------
    tuple of float or None
        ``(sx, sy, significance)``: centroid motion in pixels per channel along x and y (towards increasing
        channel index) and the slope over its standard error (from the centroids' scatter about the line);
        ``None`` when fewer than 3 channels carry weight or they all sit at one channel.
    """
    chan_w = weights.sum(axis=(1, 2))
    good = chan_w > 0
    if good.sum() < 3:
        return None
    ny, nx = weights.shape[1:]
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    cw = weights[good]
    cx = (cw * xx).sum(axis=(1, 2)) / chan_w[good]
    cy = (cw * yy).sum(axis=(1, 2)) / chan_w[good]
    zk = np.flatnonzero(good).astype(np.float64)
    wk = chan_w[good] / chan_w[good].sum()
    zm = (wk * zk).sum()
    var = (wk * (zk - zm) ** 2).sum()
    if var <= 0:
        return None
    sx = (wk * (zk - zm) * (cx - (wk * cx).sum())).sum() / var
    sy = (wk * (zk - zm) * (cy - (wk * cy).sum())).sum() / var
    # residual scatter of the centroids around the fitted line -> standard error of the slope
    res_x = cx - (wk * cx).sum() - sx * (zk - zm)
    res_y = cy - (wk * cy).sum() - sy * (zk - zm)
    n_eff = 1.0 / (wk ** 2).sum()
    s2 = ((wk * (res_x ** 2 + res_y ** 2)).sum() / 2) / max(1.0 - 2.0 / n_eff, 1e-3)
    se = math.sqrt(s2 / (var * n_eff))
    slope = math.hypot(sx, sy)
    return float(sx), float(sy), (slope / se if se > 0 else math.inf)


def kinematic_pa(cube, x: float, y: float, z: float, hi_size: float, w20: float, *,
                 clip: float = 4.0, smooth_xy: float = 0.5, smooth_z: float = 3.0) -> KinematicPA:
    """Receding-side PA of one galaxy from the drift of its channel centroids.

    Parameters
    ----------
    cube : cianna.io.cube.Cube
        Opened cube (``data[z, y, x]``, memory-mapped is fine).
    x, y, z : float
        0-based voxel position of the detection.
    hi_size : float
        HI major-axis diameter in arcsec (sets the box radius: half of it plus 1.5 beams).
    w20 : float
        Line width in km/s (sets the box depth: the width plus 3 channels on each side).
    clip : float
        Voxels of the smoothed box below ``clip`` times its robust rms get no weight (0.75 and 0.5 times
        ``clip`` are tried in turn when fewer than 3 channels or 6 voxels are left).
    smooth_xy, smooth_z : float
        Gaussian smoothing sigmas in pixels and channels applied before clipping (strong spectral smoothing and
        a high clip keep only the bright ridge of the rotating disc, which traces the kinematic axis best).

    Returns
    -------
    KinematicPA
        ``(pa, significance)``; ``pa`` is NaN when fewer than 3 channels carry emission.
    """
    nz, ny, nx = cube.shape
    pix = cube.pixel_size
    beam_pix = (cube.beam[0] if cube.beam else 3 * pix) / pix
    r = int(np.clip(round(0.5 * hi_size / pix + 1.5 * beam_pix), 3, 40))
    freq = float(np.interp(z, np.arange(nz), cube.freqs))
    dz_chan = freq * w20 / C_KMS / max(cube.channel_width, 1.0)
    hz = int(np.clip(round(0.5 * dz_chan + 3), 3, 200))
    xi, yi, zi = int(round(x)), int(round(y)), int(round(z))
    x0, x1 = max(xi - r, 0), min(xi + r + 1, nx)
    y0, y1 = max(yi - r, 0), min(yi + r + 1, ny)
    z0, z1 = max(zi - hz, 0), min(zi + hz + 1, nz)
    if x1 - x0 < 3 or y1 - y0 < 3 or z1 - z0 < 3:
        return KinematicPA(math.nan, 0.0)
    box = np.nan_to_num(np.asarray(cube.data[z0:z1, y0:y1, x0:x1], dtype=np.float64))
    sm = ndimage.gaussian_filter(box, (smooth_z, smooth_xy, smooth_xy), mode="constant")
    rms = float(robust_rms(sm))
    if not rms > 0:
        return KinematicPA(math.nan, 0.0)
    for level in (clip, 0.75 * clip, 0.5 * clip):  # lower the clip for faint galaxies
        w = np.where(sm > level * rms, sm, 0.0)
        if (w.sum(axis=(1, 2)) > 0).sum() >= 3 and (w > 0).sum() >= 6:
            break
    else:
        return KinematicPA(math.nan, 0.0)
    drift = centroid_drift(w)
    if drift is None or (drift[0] == 0 and drift[1] == 0):
        return KinematicPA(math.nan, 0.0)
    sx, sy, significance = drift
    if cube.freqs[-1] > cube.freqs[0]:  # ascending axis: receding (lower frequency) = decreasing channel
        sx, sy = -sx, -sy
    return KinematicPA(pa_east_of_north(cube.celestial, x, y, sx, sy), significance)


def refine_pa(cube_path, table, *, mode: str = "replace", min_significance: float = 0.0, clip: float = 4.0,
              progress: bool = False):
    """Correct the PA column of an SDC2 catalogue with the kinematics measured in the cube.

    Parameters
    ----------
    cube_path : str or os.PathLike
        The cube the catalogue was made from.
    table : astropy.table.Table
        Catalogue with ``x y z`` (0-based voxels), ``hi_size`` (arcsec), ``w20`` (km/s) and ``pa`` (deg).
    mode : {"side", "replace"}
        ``"side"``: keep the catalogue's axis and turn it by 180 deg when the kinematic PA lies more than
        90 deg away; ``"replace"``: use the kinematic PA.
    min_significance : float
        Rows whose centroid drift is less significant than this keep their PA.
    clip : float
        Clip level of :func:`kinematic_pa`.
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    astropy.table.Table
        A copy with ``pa`` corrected and a ``pa_kin_signif`` column (drift significance; 0 = not measured).
    """
    from tqdm import tqdm

    from cianna.io.cube import open_cube
    from cianna.pipelines.sdc2.data import release_pages

    if mode not in ("side", "replace"):
        raise ValueError(f"refine_pa: mode must be 'side' or 'replace', got {mode!r}")
    missing = [c for c in ("x", "y", "z", "hi_size", "w20", "pa") if c not in table.colnames]
    if missing:
        raise KeyError(f"refine_pa: catalogue lacks the columns {missing}")
    out = table.copy()
    pa = np.asarray(out["pa"], dtype=float).copy()
    signif = np.zeros(len(out))
    n_flip = 0
    with open_cube(cube_path) as cube:
        rows = range(len(out))
        for k in tqdm(rows, desc="kinematic PA", unit="src", disable=not progress):
            if k % _RELEASE_EVERY == 0:  # bounded memory: drop the memory map's pages read so far
                release_pages(cube.data)
            kin = kinematic_pa(cube, float(out["x"][k]), float(out["y"][k]), float(out["z"][k]),
                               float(out["hi_size"][k]), float(out["w20"][k]), clip=clip)
            if not math.isfinite(kin.pa) or kin.significance < min_significance:
                continue
            signif[k] = kin.significance
            if mode == "replace":
                pa[k] = kin.pa
            elif angle_difference(pa[k], kin.pa) > 90.0:
                pa[k] = (pa[k] + 180.0) % 360.0
                n_flip += 1
    out["pa"] = pa
    out["pa"].unit = table["pa"].unit
    out["pa_kin_signif"] = signif
    log.info("kinematic PA (%s): %d of %d rows measured, %d turned by 180 deg", mode, int((signif > 0).sum()),
             len(out), n_flip)
    return out
