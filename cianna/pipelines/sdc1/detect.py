"""YOLO-CIANNA SDC1 inference: FITS image -> catalogue (``sdc1.md`` §3.2, §3.11–§3.12, ``yolo.md`` §12.2).

Chain
-----
1. The FITS image is opened **memory-mapped** (:func:`cianna.io.fits.read_image`) and read tile by tile
   (:func:`cianna.detection.tiling.predict_tiled`): 512² tiles (smaller for small images), 32 px overlap,
   one tile on the image centre; tile parts outside the image and NaN pixels are zero-filled.
2. Each tile is normalised (spec clip / min-max / ``tanh(3x)``), run through the network, decoded.
3. Per-tile filtering (``yolo.md`` §12.2): objectness of the outer cell ring lowered by 0.05 (floor 0.03),
   per-prior objectness thresholds, minimum box size 5 px, bright-emission veto on the normalised tile.
4. First NMS in each tile (SDC1 DIoU ladder), second NMS between tiles (border boxes, DIoU > −0.15 and
   higher objectness), boxes whose centre is outside the image or on a NaN pixel dropped.
5. Catalogue: centres (0-based pixels) -> RA/Dec with the image WCS, parameters de-normalised, apparent flux
   divided by the primary beam at the position when a PB image is given (sources with PB < 0.05 dropped).
6. Refinement (``refine="gauss"``, default): a 2-D elliptical Gaussian is fitted to a small stamp around each
   detection, starting from the network's box and parameters; where the fit is sane and bright enough the
   fitted position, flux, beam-deconvolved sizes and PA replace the network's
   (:mod:`cianna.pipelines.sdc1.refine`; the model's ``size_scale`` only applies to network-valued sizes;
   the model's ``refine_options`` are the defaults).
7. Selection (models with a :class:`~cianna.pipelines.sdc1.selection.SelectionTable`, refined catalogues, no
   explicit ``thresholds``): the network ran at the table's lowest admitted objectness in step 3, and the
   table now keeps the detections whose (prior, objectness, refined peak S/N) cell it keeps.

Peak memory is bounded by the tile batch, the network activations of one batch and the detections: the image
itself is never loaded in full.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_MODEL", "SDC1Model", "load_model", "save_model", "detect_image", "write_catalog",
           "write_ds9", "plot_detections", "DEFAULT_THRESHOLDS", "check_refine_options", "merge_refine_options",
           "catalog_stage"]

log = logging.getLogger(__name__)

#: The bundled pretrained model.
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "sdc1_default.safetensors"
#: Objectness thresholds per prior used when a model file carries none.
DEFAULT_THRESHOLDS = (0.3, 0.3, 0.3, 0.2, 0.2, 0.1)
#: Constant catalogue values (``sdc1.md`` §3.11): core fraction, size class (Gaussian), class (SFG).
CORE_FRAC, SIZE_CLASS, SOURCE_CLASS = 0.0375, 2, 3


class SDC1Model:
    """A trained SDC1 network with its inference settings.

    Attributes
    ----------
    network : cianna.nn.Network
        Network as trained (any input size; rebuilt per tile size).
    thresholds : numpy.ndarray, shape (nb_box,)
        Objectness threshold per prior.
    meta : dict
        Training / tuning record stored with the model.
    path : str or None
    """

    def __init__(self, network, thresholds=None, meta=None, path=None, size_scale=(1.0, 1.0), param_limits=None,
                 refine_options=None, selection=None):
        self.network = network
        self.config = network.layers[-1].activation.yolo_config
        nb = self.config.nb_box
        thr = DEFAULT_THRESHOLDS if thresholds is None else thresholds
        self.thresholds = np.asarray(thr, dtype=np.float64).reshape(-1)
        if len(self.thresholds) != nb:
            raise ValueError(f"{len(self.thresholds)} objectness thresholds for {nb} priors")
        self.meta = dict(meta or {})
        self.path = path
        #: Multiplicative (b_maj, b_min) correction of the regressed sizes, fitted on the validation field.
        self.size_scale = tuple(float(v) for v in size_scale)
        #: Clip bounds of the regressed parameters the network was trained with (``data.param_limits``).
        from cianna.pipelines.sdc1.data import param_limits as _limits

        self.param_limits = _limits(param_limits)
        #: Keyword arguments of :func:`~cianna.pipelines.sdc1.refine.refine_catalog` chosen on the validation
        #: field (``min_snr`` overrides, ``unmeasured_scale``); the defaults of :func:`detect_image`'s refinement.
        self.refine_options = check_refine_options(refine_options)
        #: Optional :class:`~cianna.pipelines.sdc1.selection.SelectionTable` (objectness × refined S/N) that
        #: replaces the per-prior thresholds when the catalogue is refined (:func:`detect_image`).
        self.selection = _as_selection(selection)
        if self.selection is not None and self.selection.nb_box != nb:
            raise ValueError(f"selection table has {self.selection.nb_box} priors, the network {nb}")
        self._by_size = {}

    def for_size(self, size: int):
        """The network rebuilt for ``size × size`` tiles (cached)."""
        from cianna.pipelines.sdc1.model import network_for_size

        if size not in self._by_size:
            self._by_size[size] = network_for_size(self.network, size)
        return self._by_size[size]


#: Refinement options a model file may carry (the JSON-storable ones of ``refine_catalog``).
REFINE_OPTION_KEYS = ("min_snr", "unmeasured_scale", "shape_scale", "stamp_scale", "max_half")


def check_refine_options(options) -> dict:
    """Validated copy of a model's refinement options (keys :data:`REFINE_OPTION_KEYS`).

    Raises
    ------
    ValueError
        Not a mapping, an unknown key, or ``min_snr`` not a mapping of numbers.
    """
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ValueError(f"refine_options must be a dict, got {type(options).__name__}")
    bad = sorted(set(options) - set(REFINE_OPTION_KEYS))
    if bad:
        raise ValueError(f"refine_options: unknown key(s) {bad} (allowed: {list(REFINE_OPTION_KEYS)})")
    out = dict(options)
    if "min_snr" in out:
        try:
            out["min_snr"] = {str(k): float(v) for k, v in dict(out["min_snr"]).items()}
        except (TypeError, ValueError):
            raise ValueError(f"refine_options: min_snr must map group names to numbers, "
                             f"got {options['min_snr']!r}") from None
    if "unmeasured_scale" in out:
        out["unmeasured_scale"] = [float(v) for v in out["unmeasured_scale"]]
    return out


def _as_selection(selection):
    from cianna.pipelines.sdc1.selection import SelectionTable

    if selection is None or isinstance(selection, SelectionTable):
        return selection
    return SelectionTable.from_dict(selection)


def merge_refine_options(base: dict, override: dict | None) -> dict:
    """``override`` on top of ``base`` (the model's options); ``min_snr`` is merged key by key."""
    out = dict(base)
    for k, v in (override or {}).items():
        out[k] = {**out.get("min_snr", {}), **v} if k == "min_snr" else v
    return out


def save_model(path, network, thresholds, meta: dict | None = None, size_scale=(1.0, 1.0),
               param_limits: dict | None = None, refine_options: dict | None = None, selection=None) -> Path:
    """Save a network, its per-prior thresholds, size correction, parameter clip bounds, refinement options and
    selection table as one safetensors file (``cianna.load`` reads the network too)."""
    from cianna.pipelines.sdc1.data import param_limits as _limits
    from cianna.train.checkpoint import save_checkpoint

    state = {"sdc1": {"thresholds": [float(t) for t in thresholds], "meta": meta or {},
                      "size_scale": [float(v) for v in size_scale],
                      "param_limits": {k: list(v) for k, v in _limits(param_limits).items()},
                      "refine_options": check_refine_options(refine_options),
                      "selection": None if selection is None else _as_selection(selection).to_dict()}}
    return save_checkpoint(path, network, state=state)


def load_model(path: str | os.PathLike | None = None) -> SDC1Model:
    """Load an SDC1 model (default: the bundled :data:`DEFAULT_MODEL`) or a training checkpoint.

    Raises
    ------
    FileNotFoundError
        No such model file (for the default: the package was installed without its model).
    cianna.train.checkpoint.CheckpointError
        Corrupted file or not a YOLO network.
    """
    from cianna.detection.yolo_activation import YoloActivation
    from cianna.train.checkpoint import CheckpointError, load_network, read_checkpoint

    path = Path(DEFAULT_MODEL if path is None else path)
    if not path.is_file():
        raise FileNotFoundError(f"SDC1 model file not found: {path}")
    _, state, _ = read_checkpoint(path)
    net = load_network(path)
    if not isinstance(getattr(net.layers[-1], "activation", None), YoloActivation):
        raise CheckpointError(f"{path}: not a YOLO network (last layer activation is not YOLO)")
    sd = (state or {}).get("sdc1", {}) if isinstance(state, dict) else {}
    return SDC1Model(net.eval(), sd.get("thresholds"), sd.get("meta"), str(path),
                     sd.get("size_scale", (1.0, 1.0)), sd.get("param_limits"), sd.get("refine_options"),
                     sd.get("selection"))


def _normalize_torch(x):
    import torch

    from cianna.pipelines.sdc1.data import MAX_PIX, MIN_PIX

    x = torch.nan_to_num(x, nan=MIN_PIX)
    return torch.tanh(3.0 * (x.clamp(MIN_PIX, MAX_PIX) - MIN_PIX) / (MAX_PIX - MIN_PIX))


def _veto(norm_tile, boxes, obj):
    """Bright-emission veto (``yolo.md`` §12.2): keep mask, shape (M,)."""
    keep = np.ones(len(obj), bool)
    t = norm_tile.shape[-1]
    for i, (x0, y0, x1, y1) in enumerate(boxes):  # few hundred boxes per tile at most
        xa, xb = max(int(x0) - 5, 0), min(int(math.ceil(x1)) + 5, t)
        ya, yb = max(int(y0) - 5, 0), min(int(math.ceil(y1)) + 5, t)
        if xb <= xa or yb <= ya:
            continue
        med = float(np.median(norm_tile[ya:yb, xa:xb]))
        o = obj[i]
        if (med > 0.6 and o < 0.9) or (med > 0.3 and o < 0.7) or (med > 0.1 and o < 0.5):
            keep[i] = False
    return keep


def make_predict_fn(model: SDC1Model, tile_size: int, thresholds=None, *, veto: bool = True,
                    edge_penalty: float = 0.05):
    """Tile predictor for :func:`cianna.detection.tiling.predict_tiled`.

    Returns
    -------
    callable
        ``f(tiles (B, 1, T, T) Jy/beam) -> [(boxes (M, 4) CIANNA px, objectness (M,), extra (M, 7))]`` with
        ``extra = [5 parameters, prior index, probability]``.
    """
    import torch

    from cianna.detection.decode import decode_predictions

    net = model.for_size(tile_size)
    cfg = model.config
    thr = torch.as_tensor(model.thresholds if thresholds is None else thresholds, dtype=torch.float32)
    grid_n = tile_size // (tile_size // net.layers[-1].out_shape[-1])

    def predict(tiles):
        x = _normalize_torch(tiles.float())
        with torch.no_grad():
            out = net(x)
        dets = decode_predictions(out, cfg, (tile_size, tile_size), score_threshold=float(thr.min()) - edge_penalty,
                                  pixel_convention="cianna")
        results = []
        for b, d in enumerate(dets):
            obj = d["objectness"].clone()
            cell = d["cell"][:, :2]
            ring = (cell == 0).any(dim=1) | (cell == grid_n - 1).any(dim=1)
            obj[ring] = torch.clamp(obj[ring] - edge_penalty, min=0.03)
            k = d["box_index"]
            keep = obj >= thr[k]
            boxes = d["boxes"][keep].clone()
            obj, k = obj[keep], k[keep]
            # minimum size 5 px around the centre
            c = 0.5 * (boxes[:, :2] + boxes[:, 2:])
            half = torch.clamp(0.5 * (boxes[:, 2:] - boxes[:, :2]), min=2.5)
            boxes = torch.cat([c - half, c + half], dim=1)
            extra = torch.cat([d["params"][keep], k[:, None].float(), d["probability"][keep][:, None]], dim=1)
            if veto and len(obj):
                m = torch.from_numpy(_veto(x[b, 0].numpy(), boxes.numpy(), obj.numpy()))
                boxes, obj, extra = boxes[m], obj[m], extra[m]
            results.append((boxes, obj, extra))
        return results

    return predict


def _tile_size(shape, tile: int) -> int:
    need = int(math.ceil(max(shape) / 8.0) * 8)
    return max(64, min(tile, need))


def detect_image(image: str | os.PathLike, *, pb: str | os.PathLike | None = None, model=None, thresholds=None,
                 tile_size: int = 512, overlap: int = 32, batch_size: int = 4, threads: int | None = None,
                 progress: bool = True, pb_min: float = 0.05, veto: bool = True, refine: str = "gauss",
                 refine_options: dict | None = None, select: bool = True):
    """Detect and characterise sources in a 2-D FITS image with the YOLO-CIANNA SDC1 network.

    Parameters
    ----------
    image : str or os.PathLike
        FITS image in Jy/beam (any size; 4-D SDC1 layout with degenerate axes accepted; NaN allowed).
    pb : str or os.PathLike, optional
        Primary-beam FITS image; fluxes are divided by the PB at each position (SDC1 fluxes are intrinsic).
        Without it the apparent fluxes are reported.
    model : SDC1Model or str or os.PathLike, optional
        Model or model file (default: the bundled pretrained model).
    thresholds : sequence of float, shape (nb_box,), optional
        Per-prior objectness thresholds (default: those stored with the model).
    tile_size, overlap : int
        Inference tile side and overlap in pixels (multiples of 8).
    batch_size : int
        Tiles per network call (memory ≈ 60 MB per 512² tile in float32 activations).
    threads : int, optional
        ``torch.set_num_threads`` for the run.
    progress : bool
        tqdm progress bar over tiles.
    pb_min : float
        Drop sources where the PB is below this.
    veto : bool
        Apply the bright-emission veto.
    refine : {"gauss", "none"}
        ``"gauss"``: per-source 2-D Gaussian fits refine position, flux, b_maj, b_min and PA
        (:func:`cianna.pipelines.sdc1.refine.refine_catalog`; adds ``fit_ok, fit_snr, refined`` and the network's
        ``net_flux, net_b_maj, net_b_min, net_pa``). ``"none"``: the network's values only.
    refine_options : dict, optional
        Keyword arguments for :func:`~cianna.pipelines.sdc1.refine.refine_catalog` (e.g. ``min_snr``), on top of
        the model's own :attr:`SDC1Model.refine_options` (``min_snr`` merged key by key).
    select : bool
        Use the model's :attr:`SDC1Model.selection` table when it has one, the catalogue is refined and no
        ``thresholds`` are given: the network runs at the table's lowest admitted objectness per prior, the
        whole catalogue is refined, then the detections of dropped (objectness, S/N) cells are removed
        (``meta['SELECT'] = 'table'``). Otherwise the per-prior thresholds decide (``'thresholds'``).

    Returns
    -------
    astropy.table.QTable
        SDC1 columns with units (``id, ra_core, dec_core, ra_cent, dec_cent`` deg, ``flux`` Jy,
        ``core_frac``, ``b_maj, b_min`` arcsec, ``pa`` deg, ``size``, ``class``) plus ``x, y`` (0-based pixels),
        ``objectness``, ``prior``, ``flux_app`` (Jy), ``pb``; sorted by decreasing objectness, ``id`` from 1.

    Raises
    ------
    FileNotFoundError, cianna.io.fits.FitsImageError
        Missing file, not FITS, no image / no celestial WCS, more than 2 non-degenerate axes, empty image.
    ValueError
        Unknown ``refine``. (An image without restoring beam in its header is not refined: warning, and
        ``meta['REFINE'] = 'none'``, unless ``refine_options`` gives ``beam``.)
    """
    import astropy.units as u
    import torch
    from astropy.table import QTable

    from cianna.detection.nms import ladder_thresholds
    from cianna.detection.tiling import predict_tiled
    from cianna.io.fits import read_image
    from cianna.pipelines.sdc1.data import decode_params

    if refine not in ("gauss", "none"):
        raise ValueError(f"refine must be 'gauss' or 'none', got {refine!r}")
    if threads is not None:
        torch.set_num_threads(int(threads))
    if not isinstance(model, SDC1Model):
        model = load_model(model)
    data, header, wcs, hbeam = read_image(image, memmap=True)
    if refine == "gauss" and hbeam is None and "beam" not in (refine_options or {}):
        log.warning("%s: no restoring beam (BMAJ/BMIN) in the header: Gaussian refinement skipped", image)
        refine = "none"
    if overlap % 8 or tile_size % 8:
        raise ValueError(f"tile_size ({tile_size}) and overlap ({overlap}) must be multiples of 8 pixels")
    tsize = _tile_size(data.shape, tile_size)
    ov = min(overlap, tsize // 4 // 8 * 8)
    selection = model.selection if (select and thresholds is None and refine == "gauss") else None
    if selection is not None:
        thresholds = selection.network_thresholds()
    predict_fn = make_predict_fn(model, tsize, thresholds, veto=veto)
    det = predict_tiled(data, predict_fn, (tsize, tsize), (ov, ov), batch_size=batch_size,
                        nms_threshold=lambda b, s, e: ladder_thresholds(s), nms_kind="DIoU",
                        border_threshold=-0.15, progress=progress)
    xyz = det.pixel_centres().double().numpy()
    x, y = xyz[:, 0], xyz[:, 1]
    extra = det.extra.double().numpy().reshape(len(det), -1)
    par = decode_params(extra[:, :5] if len(det) else np.zeros((0, 5)), model.param_limits)
    ra, dec = wcs.pixel_to_world_values(x, y) if len(det) else (np.zeros(0), np.zeros(0))
    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    ra = np.where(ra > 180.0, ra - 360.0, ra)
    if pb is not None:
        from cianna.pipelines.sdc1.baseline import pb_at

        pbv = pb_at(pb, ra, dec) if len(det) else np.zeros(0)
        good = pbv >= pb_min
        if (~good).any():
            log.info("%d detections dropped where the PB < %g", int((~good).sum()), pb_min)
    else:
        pbv, good = np.ones(len(det)), np.ones(len(det), bool)
    sel = np.nonzero(good)[0]
    n = len(sel)
    t = QTable()
    t["id"] = np.arange(1, n + 1, dtype=np.int64)
    t["ra_core"] = ra[sel] * u.deg
    t["dec_core"] = dec[sel] * u.deg
    t["ra_cent"] = ra[sel] * u.deg
    t["dec_cent"] = dec[sel] * u.deg
    t["flux"] = (par["flux_app"][sel] / pbv[sel]) * u.Jy
    t["core_frac"] = np.full(n, CORE_FRAC)
    smaj, smin = model.size_scale
    t["b_maj"] = par["bmaj"][sel] * smaj * u.arcsec
    t["b_min"] = np.minimum(par["bmin"][sel], par["bmaj"][sel]) * smin * u.arcsec
    t["pa"] = par["pa"][sel] * u.deg
    t["size"] = np.full(n, SIZE_CLASS, dtype=np.int64)
    t["class"] = np.full(n, SOURCE_CLASS, dtype=np.int64)
    t["x"] = x[sel] * u.pix
    t["y"] = y[sel] * u.pix
    t["objectness"] = det.scores.double().numpy()[sel]
    t["prior"] = extra[sel, 5].astype(np.int64) if n else np.zeros(0, np.int64)
    t["flux_app"] = par["flux_app"][sel] * u.Jy
    t["pb"] = pbv[sel]
    from cianna.pipelines.sdc1.data import pixel_scale_arcsec

    t.meta.update(PIXARCS=round(pixel_scale_arcsec(wcs), 6), IMAGE=os.fspath(image), PBIMAGE="" if pb is None else os.fspath(pb),
                  MODEL=str(model.path), FINDER="YOLO-CIANNA", TILE=tsize, OVERLAP=ov,
                  THRESH=",".join(f"{v:.4f}" for v in (model.thresholds if thresholds is None else thresholds)),
                  REFINE=refine)
    t = catalog_stage(t, image, model, refine=refine == "gauss", refine_options=refine_options,
                      selection=selection, progress=progress)
    log.info("%s: %d sources", image, len(t))
    return t


def catalog_stage(table, image, model: SDC1Model, *, refine: bool = True, refine_options: dict | None = None,
                  selection=None, progress: bool = False):
    """The catalogue stage of :func:`detect_image` after the network: refinement, then the selection table.

    Parameters
    ----------
    table : astropy.table.QTable
        Network catalogue (``detect_image(..., refine="none")`` columns).
    image : str or os.PathLike
        The FITS image of the catalogue.
    model : SDC1Model
        Its ``refine_options`` are the refinement defaults.
    refine : bool
        Run :func:`~cianna.pipelines.sdc1.refine.refine_catalog`.
    refine_options : dict, optional
        Overrides of the model's refinement options (:func:`merge_refine_options`).
    selection : SelectionTable, optional
        Keep only the detections of its kept cells (needs ``refine``), renumbering ``id``.

    Returns
    -------
    astropy.table.QTable
        With ``meta['SELECT']`` = ``'table'`` or ``'thresholds'``.
    """
    if refine and len(table):
        from cianna.pipelines.sdc1.refine import refine_catalog

        table = refine_catalog(table, image, progress=progress,
                               **merge_refine_options(model.refine_options, refine_options))
    if selection is not None:
        from cianna.pipelines.sdc1.selection import apply_selection, detection_snr

        keep = apply_selection(selection, table["objectness"], table["prior"], detection_snr(table)) \
            if len(table) else np.zeros(0, bool)
        log.info("selection table: %d of %d detections kept", int(np.sum(keep)), len(table))
        table = table[keep]
        table["id"] = np.arange(1, len(table) + 1, dtype=np.int64)
    table.meta["SELECT"] = "table" if selection is not None else "thresholds"
    return table


def write_catalog(table, path: str | os.PathLike, *, overwrite: bool = True) -> str:
    """Write a catalogue by extension: ``.txt`` -> SDC1 12-column text with one header line;
    ``.ecsv``, ``.fits``, ``.vot``/``.xml``, ``.csv`` -> astropy table with units; ``.reg`` -> DS9 regions.

    Raises
    ------
    ValueError
        Unknown extension (naming the path).
    """
    from cianna.scoring.sdc1 import CAT_COLUMNS, write_sdc1_catalog

    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".txt":
        return write_sdc1_catalog(table[CAT_COLUMNS], path, header=True, overwrite=overwrite)
    if ext == ".reg":
        return write_ds9(table, path)
    fmt = {".ecsv": "ascii.ecsv", ".csv": "ascii.csv", ".vot": "votable", ".xml": "votable",
           ".fits": "fits", ".fit": "fits"}.get(ext)
    if fmt is None:
        raise ValueError(f"{path}: unknown catalogue extension {ext!r} (use .txt, .ecsv, .fits, .vot, .csv, .reg)")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    table.write(path, format=fmt, overwrite=overwrite)
    return path


def write_ds9(table, path: str | os.PathLike) -> str:
    """DS9 region file: one ellipse per source in image coordinates (1-based), semi-axes ``b_maj/2, b_min/2``
    (at least 1.5 px), angle counter-clockwise from +x = −PA (SDC1 PA is clockwise from west = +x)."""
    path = os.fspath(path)
    x = np.asarray(getattr(table["x"], "value", table["x"]), float)
    y = np.asarray(getattr(table["y"], "value", table["y"]), float)
    pix = float(table.meta.get("PIXARCS", 0.6043))
    a = np.maximum(np.asarray(getattr(table["b_maj"], "value", table["b_maj"]), float) / pix / 2, 1.5)
    b = np.maximum(np.asarray(getattr(table["b_min"], "value", table["b_min"]), float) / pix / 2, 1.5)
    ang = (-np.asarray(getattr(table["pa"], "value", table["pa"]), float)) % 180.0
    ids = np.asarray(table["id"])
    lines = ["# Region file format: DS9 version 4.1", "# YOLO-CIANNA SDC1 detections",
             'global color=green width=1 font="helvetica 8 normal"', "image"]
    lines += [f"ellipse({xi + 1:.2f},{yi + 1:.2f},{ai:.2f},{bi:.2f},{gi:.1f}) # text={{{i}}}"
              for xi, yi, ai, bi, gi, i in zip(x, y, a, b, ang, ids)]
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def plot_detections(image: str | os.PathLike, table, path: str | os.PathLike, *, max_side: int = 2048,
                    truth=None, title: str | None = None) -> str:
    """PNG of the image (asinh stretch, strided read for large images) with the detections as ellipses.

    Parameters
    ----------
    image : str or os.PathLike
        FITS image.
    table : astropy.table.Table
        Detections with ``x, y, b_maj, b_min, pa``.
    path : str or os.PathLike
        Output PNG.
    max_side : int
        The image is sub-sampled by an integer stride so its displayed side is at most this.
    truth : astropy.table.Table, optional
        Table with ``x, y`` (0-based pixels) drawn as small crosses.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import EllipseCollection

    from cianna.io.fits import read_image

    data, _, _, _ = read_image(image, memmap=True)
    stride = max(1, int(math.ceil(max(data.shape) / max_side)))
    view = np.asarray(data[::stride, ::stride], dtype=np.float32)
    finite = view[np.isfinite(view)]
    lo, hi = (np.percentile(finite, [1, 99.8]) if finite.size else (0.0, 1.0))
    fig, ax = plt.subplots(figsize=(10, 10 * view.shape[0] / max(view.shape[1], 1) + 0.5), dpi=120)
    ax.imshow(np.arcsinh((view - lo) / max(hi - lo, 1e-12) * 10), origin="lower", cmap="gray_r",
              extent=(-0.5, data.shape[1] - 0.5, -0.5, data.shape[0] - 0.5), interpolation="nearest")
    if len(table):
        x = np.asarray(getattr(table["x"], "value", table["x"]), float)
        y = np.asarray(getattr(table["y"], "value", table["y"]), float)
        pix = float(table.meta.get("PIXARCS", 0.6043))
        a = np.maximum(np.asarray(getattr(table["b_maj"], "value", table["b_maj"]), float) / pix, 3.0) * 1.5
        b = np.maximum(np.asarray(getattr(table["b_min"], "value", table["b_min"]), float) / pix, 3.0) * 1.5
        ang = -np.asarray(getattr(table["pa"], "value", table["pa"]), float)
        ax.add_collection(EllipseCollection(a, b, ang, units="xy", offsets=np.column_stack([x, y]),
                                            transOffset=ax.transData, facecolors="none", edgecolors="tab:red",
                                            linewidths=0.6))
    if truth is not None and len(truth):
        ax.plot(np.asarray(truth["x"]), np.asarray(truth["y"]), "+", color="tab:blue", ms=3, mew=0.5)
    ax.set_xlim(-0.5, data.shape[1] - 0.5)
    ax.set_ylim(-0.5, data.shape[0] - 0.5)
    ax.set_xlabel("x [pixel]")
    ax.set_ylabel("y [pixel]")
    ax.set_title(title or f"{os.path.basename(os.fspath(image))}: {len(table)} YOLO-CIANNA detections")
    fig.tight_layout()
    parent = os.path.dirname(os.path.abspath(os.fspath(path)))
    os.makedirs(parent, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return os.fspath(path)
