"""YOLO-CIANNA SDC1 training data: normalisation, box targets, regressed parameters, augmented patches.

Follows ``sdc1.md`` §3.3–§3.7 of the specification:

* input normalisation (§3.5): clip to ``[0.4e-6, 0.4e-4]`` Jy/beam, min-max to [0, 1], then ``tanh(3 x)``;
* selection of the training targets ("perscut", §3.3) on the apparent (PB-attenuated) flux;
* boxes (§3.6): ``W = 2 b_maj / pixel``, ``H = 2 b_min / pixel`` rotated by the position angle, axis-aligned
  extents clipped to [5, 64] px;
* five regressed parameters (§3.6): ln-min-max normalised apparent flux, b_maj, b_min, ``cos(PA')`` and
  ``(sin(PA') + 1)/2`` with ``PA'`` folded to [−90°, 90°];
* patches (§3.7): random crops, rotation by ±90° (1/3 each) and horizontal / vertical flips (1/2 each), with the
  position-angle transforms (rotation: PA → PA ± 90°, flip: PA → −PA, modulo 180°).

Pixel and angle conventions
---------------------------
Catalogue positions are converted to **0-based** pixel coordinates with the image WCS; CIANNA target rows
add 0.5 (:func:`cianna.detection.targets.encode_targets`). SDC1 PA is "clockwise from west"; with west = +x
the major axis of a source of PA θ points along the pixel direction ``(cos θ, −sin θ)`` (``docs/sdc1.md``
§1.3), which fixes the augmentation transforms below.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

__all__ = ["MIN_PIX", "MAX_PIX", "PARAM_LIMITS", "normalize", "box_extents", "encode_params", "decode_params",
           "fold_pa", "perscut", "pixel_scale_arcsec", "param_limits", "TrainingField", "load_field", "sample_patches", "grid_patches"]

log = logging.getLogger(__name__)

#: Input clip range in Jy/beam (``sdc1.md`` §3.5).
MIN_PIX, MAX_PIX = 0.4e-6, 0.4e-4
#: (min, max) clip bounds of the regressed quantities before the ln / min-max step (``sdc1.md`` §3.6):
#: apparent flux [Jy], b_maj [arcsec], b_min [arcsec].
#: A model or training run may use other bounds (``param_limits``, stored in the model file): the spec's
#: b_maj >= 0.9" clip makes the network regress 0.9" for faint sources whose true b_maj is ~0.3".
PARAM_LIMITS = {"flux": (1.97e-6, 2.0e-3), "bmaj": (0.9, 60.0), "bmin": (0.3, 30.0)}
#: b_maj (arcsec) at or below which the PA is not resolvable and regressed as 0 (``pa_res_lim``).
PA_RES_LIM = 1.8
#: Box size clip range in pixels.
BOX_MIN, BOX_MAX = 5.0, 64.0


def param_limits(overrides: dict | None = None) -> dict:
    """:data:`PARAM_LIMITS` updated by ``overrides`` (``{name: (min, max)}``), checked."""
    out = dict(PARAM_LIMITS)
    for k, v in (overrides or {}).items():
        if k not in PARAM_LIMITS:
            raise ValueError(f"param_limits: unknown quantity {k!r} (expected one of {sorted(PARAM_LIMITS)})")
        lo, hi = (float(a) for a in v)
        if not 0 < lo < hi:
            raise ValueError(f"param_limits[{k!r}] must be 0 < min < max, got {v}")
        out[k] = (lo, hi)
    return out


def normalize(x: np.ndarray, min_pix: float = MIN_PIX, max_pix: float = MAX_PIX) -> np.ndarray:
    """Spec normalisation ``tanh(3·(clip(x) − min)/(max − min))``; non-finite pixels become 0.

    Parameters
    ----------
    x : numpy.ndarray, any shape
        Pixel values in Jy/beam.

    Returns
    -------
    numpy.ndarray, same shape, float32, values in [0, tanh(3)]
    """
    x = np.nan_to_num(np.asarray(x, dtype=np.float32), nan=min_pix, posinf=max_pix, neginf=min_pix)
    x = (np.clip(x, min_pix, max_pix) - np.float32(min_pix)) / np.float32(max_pix - min_pix)
    return np.tanh(3.0 * x, dtype=np.float32)


def fold_pa(pa) -> np.ndarray:
    """Fold position angles (deg) to [−90, 90) (orientation modulo 180°)."""
    return (np.asarray(pa, dtype=np.float64) + 90.0) % 180.0 - 90.0


def box_extents(bmaj, bmin, pa, pixel_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box width and height (px) of the rotated ``2 b_maj × 2 b_min`` rectangle.

    Parameters
    ----------
    bmaj, bmin : array_like, shape (N,)
        Axes in arcsec (raw catalogue sizes).
    pa : array_like, shape (N,)
        SDC1 position angle in deg (major axis along pixel direction ``(cos pa, −sin pa)``).
    pixel_arcsec : float
        Pixel size in arcsec.

    Returns
    -------
    w, h : numpy.ndarray, shape (N,)
        Extents along x and y in pixels, each clipped to [5, 64].
    """
    w0 = 2.0 * np.asarray(bmaj, float) / pixel_arcsec
    h0 = 2.0 * np.asarray(bmin, float) / pixel_arcsec
    t = np.deg2rad(np.asarray(pa, float))
    c, s = np.abs(np.cos(t)), np.abs(np.sin(t))
    w = np.clip(w0 * c + h0 * s, BOX_MIN, BOX_MAX)
    h = np.clip(w0 * s + h0 * c, BOX_MIN, BOX_MAX)
    return w, h


def _lnorm(v, name, limits=None):
    lo, hi = (limits or PARAM_LIMITS)[name]
    return (np.log(np.clip(v, lo, hi)) - np.log(lo)) / (np.log(hi) - np.log(lo))


def _lden(p, name, limits=None):
    lo, hi = (limits or PARAM_LIMITS)[name]
    return np.exp(np.asarray(p, float) * (np.log(hi) - np.log(lo)) + np.log(lo))


def encode_params(flux_app, bmaj, bmin, pa, limits: dict | None = None) -> np.ndarray:
    """The five regressed parameters (``sdc1.md`` §3.6).

    Parameters
    ----------
    flux_app : array_like, shape (N,)
        Apparent (PB-attenuated) integrated flux in Jy.
    bmaj, bmin : array_like, shape (N,)
        Arcsec.
    pa : array_like, shape (N,)
        Deg (any range; folded to [−90, 90)).
    limits : dict, optional
        Clip bounds (:func:`param_limits`); default :data:`PARAM_LIMITS`.

    Returns
    -------
    numpy.ndarray, shape (N, 5), float32
        ``[ln-norm flux, ln-norm bmaj, ln-norm bmin, cos PA', (sin PA' + 1)/2]``.
    """
    bmaj = np.asarray(bmaj, float)
    pa = np.deg2rad(np.where(np.clip(bmaj, *(limits or PARAM_LIMITS)["bmaj"]) <= PA_RES_LIM, 0.0, fold_pa(pa)))
    return np.stack([_lnorm(flux_app, "flux", limits), _lnorm(bmaj, "bmaj", limits), _lnorm(bmin, "bmin", limits),
                     np.cos(pa), (np.sin(pa) + 1.0) / 2.0], axis=-1).astype(np.float32)


def decode_params(p, limits: dict | None = None) -> dict:
    """Inverse of :func:`encode_params` on network outputs (``sdc1.md`` §3.11).

    Parameters
    ----------
    p : array_like, shape (N, 5)
    limits : dict, optional
        The clip bounds the network was trained with; default :data:`PARAM_LIMITS`.

    Returns
    -------
    dict of numpy.ndarray, shape (N,)
        ``flux_app`` (Jy), ``bmaj``, ``bmin`` (arcsec), ``pa`` (deg in [−90, 90]).
    """
    p = np.asarray(p, dtype=np.float64).reshape(-1, 5)
    pa = np.rad2deg(np.arctan2(2.0 * np.clip(p[:, 4], 0, 1) - 1.0, np.clip(p[:, 3], 0, 1)))
    return {"flux_app": _lden(p[:, 0], "flux", limits), "bmaj": _lden(p[:, 1], "bmaj", limits),
            "bmin": _lden(p[:, 2], "bmin", limits),
            "pa": np.clip(pa, -90.0, 90.0)}


def perscut(flux_app, bmaj, bmin, pixel_arcsec: float) -> np.ndarray:
    """Training-target selection of ``sdc1.md`` §3.3 (bool mask, shape (N,))."""
    s = np.asarray(flux_app, float)
    surface = (2 * np.maximum(bmaj, 1.2) / pixel_arcsec) * (2 * np.maximum(bmin, 0.6) / pixel_arcsec)
    d = s / surface
    return ((d > 1e-7) & (s >= 7e-6)) | ((d > 2.5e-7) & (s > 1.65e-6) & (s < 7e-6))


@dataclass
class TrainingField:
    """A simulated field held in memory for patch sampling.

    Attributes
    ----------
    image : numpy.ndarray, shape (Y, X), float32
        **Normalised** image (:func:`normalize`).
    x, y : numpy.ndarray, shape (N,)
        0-based pixel positions of the selected sources (core positions).
    params : numpy.ndarray, shape (N, 5)
        Encoded parameters (PA of the untransformed image is in ``pa``).
    flux_app, bmaj, bmin, pa : numpy.ndarray, shape (N,)
        Apparent flux (Jy), axes (arcsec), SDC1 PA (deg).
    pixel_arcsec : float
    name : str
    limits : dict or None
        Clip bounds of the encoded parameters (:func:`param_limits`; None = :data:`PARAM_LIMITS`).
    """

    image: np.ndarray
    x: np.ndarray
    y: np.ndarray
    flux_app: np.ndarray
    bmaj: np.ndarray
    bmin: np.ndarray
    pa: np.ndarray
    pixel_arcsec: float
    name: str = ""
    limits: dict | None = None


def pixel_scale_arcsec(wcs) -> float:
    """Mean pixel side (arcsec) of a celestial WCS."""
    from astropy.wcs.utils import proj_plane_pixel_scales

    return float(np.mean(np.abs(proj_plane_pixel_scales(wcs)[:2])) * 3600.0)


def load_field(directory: str | os.PathLike, *, select: bool = True, limits: dict | None = None) -> TrainingField:
    """Load ``image.fits``, ``pb.fits`` and ``truth.txt`` of a simulated field (:mod:`cianna.sim.continuum`).

    Parameters
    ----------
    directory : str or os.PathLike
        Field directory.
    select : bool
        Apply :func:`perscut` to the truth.
    limits : dict, optional
        Clip bounds of the encoded parameters (:func:`param_limits`).

    Returns
    -------
    TrainingField
    """
    from cianna.io.fits import read_image
    from cianna.pipelines.sdc1.baseline import pb_at
    from cianna.scoring.sdc1 import read_sdc1_catalog

    directory = os.fspath(directory)
    image, _, wcs, _ = read_image(os.path.join(directory, "image.fits"), memmap=False)
    truth = read_sdc1_catalog(os.path.join(directory, "truth.txt"))
    ra = np.asarray(truth["ra_core"], float)
    dec = np.asarray(truth["dec_core"], float)
    x, y = wcs.all_world2pix(ra % 360.0, dec, 0)
    pb_path = os.path.join(directory, "pb.fits")
    pb = pb_at(pb_path, ra, dec) if os.path.exists(pb_path) else np.ones(len(ra))
    flux_app = np.asarray(truth["flux"], float) * pb
    bmaj, bmin = np.asarray(truth["b_maj"], float), np.asarray(truth["b_min"], float)
    pa = np.asarray(truth["pa"], float)
    pixel_arcsec = pixel_scale_arcsec(wcs)
    keep = perscut(flux_app, bmaj, bmin, pixel_arcsec) if select else np.ones(len(ra), bool)
    log.info("%s: %d of %d truth sources selected as targets", directory, keep.sum(), len(ra))
    return TrainingField(normalize(image), x[keep], y[keep], flux_app[keep], bmaj[keep], bmin[keep], pa[keep],
                         pixel_arcsec, name=directory, limits=limits)


def _augment(patch, x, y, pa, rot, fx, fy):
    """Apply rotation ``rot`` in {−1, 0, 1} (np.rot90 k), then flips; transform 0-based positions and PA."""
    p = patch.shape[-1] - 1
    if rot == 1:  # new[i, j] = old[j, P-1-i]
        patch, x, y, pa = np.rot90(patch, 1), y, p - x, pa + 90.0
    elif rot == -1:  # new[i, j] = old[P-1-j, i]
        patch, x, y, pa = np.rot90(patch, -1), p - y, x, pa - 90.0
    if fx:
        patch, x, pa = patch[:, ::-1], p - x, -pa
    if fy:
        patch, y, pa = patch[::-1, :], p - y, -pa
    return patch, x, y, pa


def _patch_targets(field: TrainingField, x0: int, y0: int, size: int, rng, augment: bool):
    patch = field.image[y0:y0 + size, x0:x0 + size]
    sel = (field.x >= x0 - 40) & (field.x < x0 + size + 40) & (field.y >= y0 - 40) & (field.y < y0 + size + 40)
    x, y, pa = field.x[sel] - x0, field.y[sel] - y0, field.pa[sel]
    if augment:
        rot = int(rng.integers(-1, 2))
        patch, x, y, pa = _augment(patch, x, y, pa, rot, bool(rng.random() < 0.5), bool(rng.random() < 0.5))
    w, h = box_extents(field.bmaj[sel], field.bmin[sel], pa, field.pixel_arcsec)
    inside = (x + 0.5 - w / 2 >= 0) & (x + 0.5 + w / 2 <= size) & (y + 0.5 - h / 2 >= 0) & (y + 0.5 + h / 2 <= size)
    params = encode_params(field.flux_app[sel], field.bmaj[sel], field.bmin[sel], pa, field.limits)
    cat = {"x": x[inside], "y": y[inside], "w": w[inside], "h": h[inside], "params": params[inside]}
    return np.ascontiguousarray(patch, dtype=np.float32), cat


def _rows(cats, max_nb_obj):
    from cianna.detection.targets import encode_targets

    for c in cats:
        n = len(c["x"])
        if n > max_nb_obj:  # keep the brightest (first param = ln-norm flux)
            order = np.argsort(-c["params"][:, 0])[:max_nb_obj]
            log.warning("patch with %d targets > max_nb_obj %d: keeping the brightest", n, max_nb_obj)
            for k in c:
                c[k] = c[k][order]
    return encode_targets(cats, ndim=2, max_nb_obj_per_image=max_nb_obj, nb_param=5).numpy()


def sample_patches(fields: list, n: int, size: int, rng: np.random.Generator, *, max_nb_obj: int,
                   augment: bool = True, empty_prob: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Random augmented training patches with their CIANNA target rows.

    Parameters
    ----------
    fields : list of TrainingField
    n : int
        Number of patches.
    size : int
        Patch side in pixels.
    rng : numpy.random.Generator
    max_nb_obj : int
        Target-row capacity per patch.
    augment : bool
        Random ±90° rotation / flips (``sdc1.md`` §3.7).
    empty_prob : float
        Probability of an all-zero patch without targets (stands in for NaN / blanked regions and the
        empty strips beyond the PB null).

    Returns
    -------
    inputs : numpy.ndarray, shape (n, 1, size, size), float32
    targets : numpy.ndarray, shape (n, 1 + max_nb_obj·12), float32
    """
    inputs = np.zeros((n, 1, size, size), np.float32)
    cats = []
    for i in range(n):  # one crop per patch
        if rng.random() < empty_prob:
            cats.append({"x": np.zeros(0), "y": np.zeros(0), "w": np.zeros(0), "h": np.zeros(0),
                         "params": np.zeros((0, 5))})
            continue
        f = fields[int(rng.integers(len(fields)))]
        ny, nx = f.image.shape
        x0, y0 = int(rng.integers(0, nx - size + 1)), int(rng.integers(0, ny - size + 1))
        inputs[i, 0], cat = _patch_targets(f, x0, y0, size, rng, augment)
        cats.append(cat)
    return inputs, _rows(cats, max_nb_obj)


def grid_patches(field: TrainingField, size: int, n_side: int, *, max_nb_obj: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed, non-augmented validation patches on a regular ``n_side × n_side`` grid over a field.

    Returns
    -------
    inputs : numpy.ndarray, shape (n_side², 1, size, size), float32
    targets : numpy.ndarray, shape (n_side², 1 + max_nb_obj·12), float32
    """
    ny, nx = field.image.shape
    xs = np.linspace(0, nx - size, n_side).astype(int)
    ys = np.linspace(0, ny - size, n_side).astype(int)
    inputs, cats = [], []
    for y0 in ys:
        for x0 in xs:
            p, c = _patch_targets(field, int(x0), int(y0), size, None, False)
            inputs.append(p[None])
            cats.append(c)
    return np.stack(inputs), _rows(cats, max_nb_obj)
