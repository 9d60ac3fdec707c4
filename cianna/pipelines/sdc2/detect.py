"""Streamed, resumable 3D YOLO-CIANNA detection on SDC2-like FITS cubes.

Pipeline (:func:`detect`):

1. :func:`cianna.io.cube.open_cube` memory-maps the cube as ``(Z, Y, X)`` (clear errors for 2D images, cubes
   without a FREQ axis, truncated files; a degenerate Stokes axis is dropped).
2. Noise pass: robust per-channel noise (:func:`~cianna.pipelines.sdc2.data.noise_profile`), read slab by slab
   on a spatial subsample that depends only on the cube shape.
3. **Tiles**: a fixed grid of overlapping tiles (default ``256 x 128 x 128`` voxels, margins ``32 x 16 x 16``)
   that depends only on the cube shape and the model; tiles beyond the cube edge (or larger than a small cube)
   are zero-padded (zero = noise mean after normalisation; NaN-blanked voxels are zeroed too). The *core* of a
   tile is the part of the cube closer to it than to its neighbours (boundaries at the middle of the overlaps);
   a tile only keeps detections whose centre lies in its core, after a first per-tile DIoU-NMS.
4. **Chunks**: tiles are grouped into chunks (rows of tiles along the spectral axis, split further along y and
   x when needed) so that the chunk's data block plus the network activations fit in ``max_memory``. A chunk is
   read from the memory map, noise-normalised, cut into tiles and forwarded one tile at a time; the pages of the
   memory map are then released (``madvise``), so the resident memory does not grow with the cube size.
5. **Resume**: after every chunk, the candidates of its tiles and the list of finished tiles are written
   atomically to ``<out>.partial.json`` (the partial catalogue). A new run with the same cube, model and
   settings skips the finished tiles. Since tiles do not depend on the chunking, chunked, in-memory and resumed
   runs give identical candidates.
6. **Second stage**: score threshold, then a global DIoU-NMS across all tiles (removes duplicates of sources on
   tile boundaries), then conversion to the SDC2 columns with the cube WCS (:func:`candidates_to_catalog`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

__all__ = ["DetectSettings", "DEFAULT_MODEL", "load_model", "save_model", "parse_memory", "tile_starts",
           "apply_calibration",
           "plan_chunks", "detect_candidates", "candidates_to_catalog", "detect", "write_catalog"]

log = logging.getLogger(__name__)

#: Pretrained model shipped with the package.
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "sdc2_default.safetensors"
_STATE_VERSION = 1
#: columns of a candidate row
CAND_COLUMNS = ("x", "y", "z", "sx", "sy", "sz", "objectness", "probability", "p0", "p1", "p2", "p3", "p4", "p5")


@dataclass
class DetectSettings:
    """Inference settings (stored with a model; command-line values override them).

    Attributes
    ----------
    tile : list of int
        Tile size (D, H, W) in voxels (multiples of the grid cell); reduced for cubes smaller than a tile.
    margin : list of int
        Tile overlap on each side (D, H, W).
    score : {"objectness", "obj_x_prob"}
        Detection score.
    pre_threshold : float
        Candidates with a lower score are not kept at all (resume state, tuning).
    threshold : float
        Final score threshold.
    nms_threshold : float
        DIoU threshold of both NMS stages (boxes with a higher DIoU than a better one are removed).
    pixel_arcsec : float
        Pixel size the model was trained for (a warning is given for other cubes).
    calibration : dict
        Linear corrections fitted on validation matches (:func:`cianna.pipelines.sdc2.tune.fit_calibration`):
        ``{name: [a, b]}`` with ``log10 v -> a + b log10 v`` for line_flux_integral, hi_size and w20 and
        ``i -> a + b i`` for the inclination.
    pa_mode : {"kinematic", "side", "network"}
        Where the catalogue's PA comes from (:mod:`cianna.pipelines.sdc2.kinematics`): ``"kinematic"`` measures
        it from the drift of the channel centroids around each detection (the network's PA is kept where that
        cannot be measured), ``"side"`` keeps the network's axis and takes only the receding side from the
        kinematics, ``"network"`` uses the regressed ``cos``/``sin`` as they are.
    pa_clip : float
        Clip level (robust rms of the smoothed box) of the kinematic measurement.
    reliability : dict
        Logistic reliability model (:mod:`cianna.pipelines.sdc2.reliability`) fitted on validation cubes; empty =
        no reliability cut.
    min_reliability : float
        Detections above ``threshold`` are kept only when their reliability reaches this value (used only with a
        ``reliability`` model).
    """

    tile: list = field(default_factory=lambda: [256, 128, 128])
    margin: list = field(default_factory=lambda: [32, 16, 16])
    score: str = "obj_x_prob"
    pre_threshold: float = 0.05
    threshold: float = 0.5
    nms_threshold: float = -0.2
    pixel_arcsec: float = 2.8
    calibration: dict = field(default_factory=dict)
    pa_mode: str = "kinematic"
    pa_clip: float = 4.0
    reliability: dict = field(default_factory=dict)
    min_reliability: float = 0.0

    def __post_init__(self):
        if self.pa_mode not in ("kinematic", "side", "network"):
            raise ValueError(f"DetectSettings.pa_mode must be 'kinematic', 'side' or 'network', got {self.pa_mode!r}")
        if not 0.0 <= self.min_reliability <= 1.0:
            raise ValueError(f"DetectSettings.min_reliability must lie in [0, 1], got {self.min_reliability!r}")

    @classmethod
    def from_dict(cls, data: dict | None) -> "DetectSettings":
        """Settings from a stored dict; unknown keys are ignored and missing ones take their defaults (so
        models saved by older versions load)."""
        data = dict(data or {})
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


# ----------------------------------------------------------------------------------------------- model I/O
def save_model(path, network, settings: DetectSettings, info: dict | None = None) -> Path:
    """Save a trained network with its detection settings (safetensors, atomic)."""
    from cianna.train.checkpoint import save_checkpoint

    return save_checkpoint(path, network, state={"sdc2": {"settings": asdict(settings), "info": info or {}}})


def load_model(path=None):
    """Load an SDC2 detector: ``(network, yolo_config, settings, digest)``.

    Parameters
    ----------
    path : str or os.PathLike, optional
        Model or training checkpoint (default: the packaged :data:`DEFAULT_MODEL`).

    Raises
    ------
    FileNotFoundError
        No such model file (or the packaged model is missing).
    ValueError
        The file is not a cianna checkpoint or has no YOLO output layer.
    """
    from cianna.train.checkpoint import load_network, read_checkpoint

    path = Path(path) if path is not None else DEFAULT_MODEL
    if not path.is_file():
        raise FileNotFoundError(f"SDC2 model not found: {path}")
    _, state, tensors = read_checkpoint(path)
    net = load_network(path)
    act = net.layers[-1].activation
    cfg = getattr(act, "yolo_config", None)
    if cfg is None or cfg.fit_dim != 3 or cfg.nb_param != 6:
        raise ValueError(f"{path}: not an SDC2 3D YOLO model (needs a 3D YOLO output with 6 parameters)")
    settings = DetectSettings.from_dict(((state or {}).get("sdc2") or {}).get("settings"))
    h = hashlib.sha256()
    for k in sorted(tensors):
        if k.startswith("model."):
            h.update(k.encode())
            h.update(tensors[k].contiguous().view(-1).view(torch_uint8()).numpy().tobytes())
    net.eval()
    return net, cfg, settings, h.hexdigest()[:16]


def torch_uint8():
    """``torch.uint8``, imported lazily (keeps ``import cianna.pipelines.sdc2.detect`` light)."""
    import torch

    return torch.uint8


# ------------------------------------------------------------------------------------------- memory sizes
def parse_memory(text) -> int:
    """``"2G"``, ``"512M"``, ``"300MB"``, ``"1.5GiB"`` or a number of bytes -> bytes."""
    if text is None:
        return 0
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if not m:
        raise ValueError(f"--max-memory: cannot parse {text!r} (use e.g. 512M, 2G)")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------------------------------------------- tile geometry
def tile_starts(n: int, tile: int, margin: int) -> tuple[list, list]:
    """Tile starts along one axis and the core boundaries.

    Returns
    -------
    starts : list of int
        ``0, stride, 2 stride, ...`` and a last tile ending at ``n`` (one tile at 0 when ``n <= tile``).
    bounds : list of float
        ``len(starts) + 1`` core boundaries in 0-based voxel coordinates (first ``-inf``, last ``+inf``):
        tile k keeps centres ``c`` with ``bounds[k] <= c + 0.5 < bounds[k + 1]``.
    """
    stride = tile - 2 * margin
    if stride <= 0:
        raise ValueError(f"tile {tile} must be larger than twice the margin {margin}")
    if n <= tile:
        return [0], [-math.inf, math.inf]
    starts = list(range(0, n - tile, stride)) + [n - tile]
    if len(starts) > 1 and starts[-1] == starts[-2]:
        starts.pop()
    bounds = [-math.inf] + [0.5 * (starts[k] + tile + starts[k + 1]) for k in range(len(starts) - 1)] + [math.inf]
    return starts, bounds


def effective_tile(shape, settings: DetectSettings, cell) -> tuple[list, list]:
    """Tile size and margins actually used for a cube ``(Z, Y, X)``: the settings, reduced (to a multiple of
    the cell) along axes where the cube is smaller than a tile."""
    tile, margin = [], []
    for n, t, m, c in zip(shape, settings.tile, settings.margin, cell):
        t = int(t)
        if n < t:
            t = max(int(math.ceil(n / c)) * c, c)
        tile.append(t)
        margin.append(min(int(m), (t - c) // 2 // c * c if t > c else 0))
    return tile, margin


def plan_chunks(shape, tile, margin, budget_bytes: int, bytes_per_voxel: int = 12) -> list[dict]:
    """Group tiles into chunks that fit a memory budget.

    Parameters
    ----------
    shape : tuple of int
        Cube ``(Z, Y, X)``.
    tile, margin : sequence of int
        Tile size and margins (D, H, W).
    budget_bytes : int
        Memory available for the chunk data (0 = unlimited: one chunk per row of tiles along z).
    bytes_per_voxel : int
        Bytes held per voxel of a chunk block (raw read + float32 normalised copy).

    Returns
    -------
    list of dict
        Each chunk: ``tiles`` (list of ``(iz, iy, ix)``) and ``block`` (``((z0, z1), (y0, y1), (x0, x1))``).
    """
    axes = [tile_starts(n, t, m) for n, t, m in zip(shape, tile, margin)]
    (sz, _), (sy, _), (sx, _) = axes

    def block(iz, iys, ixs):
        out = []
        for starts, idx, n, t in ((sz, [iz], shape[0], tile[0]), (sy, iys, shape[1], tile[1]),
                                  (sx, ixs, shape[2], tile[2])):
            out.append((starts[idx[0]], min(starts[idx[-1]] + t, n)))
        return tuple(out)

    def nbytes(b):
        return (b[0][1] - b[0][0]) * (b[1][1] - b[1][0]) * (b[2][1] - b[2][0]) * bytes_per_voxel

    chunks = []
    for iz in range(len(sz)):
        # as many y rows (all x) as fit; if one y row does not fit, split it along x
        iy = 0
        while iy < len(sy):
            ny = 1
            while budget_bytes and iy + ny < len(sy) and nbytes(block(iz, range(iy, iy + ny + 1),
                                                                      range(len(sx)))) <= budget_bytes:
                ny += 1
            if not budget_bytes:
                ny = len(sy)
            iys = list(range(iy, iy + ny))
            if not budget_bytes or nbytes(block(iz, iys, range(len(sx)))) <= budget_bytes:
                chunks.append({"tiles": [(iz, a, b) for a in iys for b in range(len(sx))],
                               "block": block(iz, iys, list(range(len(sx))))})
            else:
                ix = 0
                while ix < len(sx):
                    nx = 1
                    while ix + nx < len(sx) and nbytes(block(iz, iys, range(ix, ix + nx + 1))) <= budget_bytes:
                        nx += 1
                    ixs = list(range(ix, ix + nx))
                    chunks.append({"tiles": [(iz, a, b) for a in iys for b in ixs], "block": block(iz, iys, ixs)})
                    ix += nx
            iy += ny
    return chunks


# ------------------------------------------------------------------------------------------- core
def _forward_tile(net, cfg, x, settings: DetectSettings):
    """Run the network on one normalised tile ``(D, H, W)``; returns candidate rows in tile coordinates."""
    import torch

    from cianna.detection.decode import decode_predictions

    with torch.no_grad():
        out = net(torch.from_numpy(np.ascontiguousarray(x))[None, None])
        res = decode_predictions(out, cfg, x.shape, score_threshold=settings.pre_threshold,
                                 score=settings.score, pixel_convention="fits")[0]
    if not len(res["scores"]):
        return np.zeros((0, len(CAND_COLUMNS))), np.zeros(0)
    rows = torch.cat([res["centers"], res["sizes"], res["objectness"][:, None], res["probability"][:, None],
                      res["params"]], 1).double().numpy()
    return rows, res["scores"].double().numpy()


def _nms(rows: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by a DIoU-NMS on candidate rows (boxes from centre and size)."""
    import torch

    from cianna.detection.nms import non_max_suppression

    if len(rows) <= 1:
        return np.arange(len(rows))
    c, s = rows[:, 0:3], rows[:, 3:6]
    boxes = torch.from_numpy(np.concatenate([c - s / 2, c + s / 2], 1))
    keep = non_max_suppression(boxes, torch.from_numpy(scores), threshold, kind="DIoU")
    keep = np.asarray(keep.cpu().numpy() if hasattr(keep, "cpu") else keep)
    return np.sort(keep)


def _score_of(rows: np.ndarray, score: str) -> np.ndarray:
    if score == "objectness":
        return rows[:, 6]
    if score == "obj_x_prob":
        return rows[:, 6] * rows[:, 7]
    if score == "probability":
        return rows[:, 7]
    raise ValueError(f"unknown detection score {score!r}")


def _atomic_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def detect_candidates(cube_path, *, model=None, max_memory=None, state_path=None, settings=None,
                      progress: bool = True, on_chunk=None, chunk_bytes: int | None = None) -> dict:
    """Stream a cube through the detector and return the per-tile candidates (first NMS stage done).

    Parameters
    ----------
    cube_path : str or os.PathLike
        FITS cube.
    model : str, os.PathLike or tuple, optional
        Model file (default the packaged model) or the tuple returned by :func:`load_model`.
    max_memory : int or str, optional
        Memory budget of the whole process (e.g. ``"2G"``); None = one chunk per row of tiles along z.
    state_path : str or os.PathLike, optional
        Resume file (JSON, rewritten atomically after each chunk); finished tiles found there are skipped.
    settings : DetectSettings, optional
        Override the model's settings.
    progress : bool
        tqdm bar (chunks done, voxels/s).
    on_chunk : callable, optional
        ``on_chunk(index, n_chunks)`` after each chunk is saved (tests use it to interrupt a run).
    chunk_bytes : int, optional
        Chunk data budget in bytes, bypassing ``max_memory`` (tests, benchmarks).

    Returns
    -------
    dict
        ``rows`` (N, 14) candidate rows in cube 0-based voxel coordinates (``CAND_COLUMNS``), ``scores`` (N,),
        ``sigma`` (Z,) channel noise, ``shape``, ``stats`` (seconds, voxels/s, chunks, peak RSS).
    """
    from cianna.io.cube import open_cube
    from cianna.pipelines.sdc2.data import noise_profile, normalise, release_pages
    from cianna.pipelines.sdc2.model import CELL, resize_network

    t_start = time.perf_counter()
    net, cfg, msettings, digest = model if isinstance(model, tuple) else load_model(model)
    settings = settings or msettings
    rss0 = _rss_bytes()
    with open_cube(cube_path) as cube:
        shape = cube.shape
        if cube.pixel_size and abs(cube.pixel_size / settings.pixel_arcsec - 1) > 0.1:
            log.warning("%s: pixel size %.3g arcsec differs from the model's %.3g arcsec", cube_path,
                        cube.pixel_size, settings.pixel_arcsec)
        tile, margin = effective_tile(shape, settings, CELL)
        axes = [tile_starts(n, t, m) for n, t, m in zip(shape, tile, margin)]
        tile_vox = int(np.prod(tile))
        # budget: process baseline + network activations and tile buffers (~ 64 bytes per tile voxel)
        # + 96 MiB allocator slack + chunk blocks (12 bytes per voxel)
        budget = parse_memory(max_memory)
        chunk_budget = 0
        fixed = rss0 + 64 * tile_vox + 96 * (1 << 20)
        if budget:
            chunk_budget = budget - fixed
            min_need = 12 * tile_vox
            if chunk_budget < min_need:
                raise ValueError(f"--max-memory {max_memory}: too small; at least "
                                 f"{(fixed + min_need) / 2**20:.0f} MiB are needed (process {rss0 / 2**20:.0f} MiB"
                                 f" + one {tile} tile)")
        if chunk_bytes is not None:
            chunk_budget = int(chunk_bytes)
        chunks = plan_chunks(shape, tile, margin, chunk_budget)
        st = os.stat(cube.path)
        ident = {"version": _STATE_VERSION, "cube": os.path.abspath(cube.path), "size": st.st_size,
                 "mtime_ns": st.st_mtime_ns, "shape": list(shape), "model": digest, "tile": tile,
                 "margin": margin, "score": settings.score, "pre_threshold": settings.pre_threshold,
                 "nms_threshold": settings.nms_threshold}
        state = None
        if state_path is not None and Path(state_path).is_file():
            try:
                with open(state_path) as fh:
                    state = json.load(fh)
            except (OSError, json.JSONDecodeError) as exc:
                log.warning("ignoring unreadable resume file %s (%s)", state_path, exc)
                state = None
            if state is not None and state.get("ident") != ident:
                log.warning("resume file %s belongs to another cube/model/settings: starting afresh", state_path)
                state = None
        if state is None:
            # noise pass: channels per slab sized so that the slab and its temporaries fit the chunk budget
            nz_, ny_, nx_ = shape
            sub = max(1, int(math.ceil(math.sqrt(nx_ * ny_ / 262144))))
            plane = int(math.ceil(ny_ / sub)) * int(math.ceil(nx_ / sub)) + ny_ * nx_ // sub
            slab = 64 if not chunk_budget else int(min(64, max(1, chunk_budget // (40 * plane))))
            sigma = noise_profile(cube.data, max_pixels=262144, slab_channels=slab)
            state = {"ident": ident, "sigma": sigma.tolist(), "tiles": {}}
        else:
            sigma = np.asarray(state["sigma"], float)
            log.info("resuming from %s: %d tiles already done", state_path, len(state["tiles"]))
        run_net = resize_network(net, (1,) + tuple(tile))
        done = state["tiles"]
        n_vox_total = int(np.prod(shape))
        from tqdm.auto import tqdm

        bar = tqdm(total=len(chunks), unit="chunk", desc="sdc2 detect", disable=not progress)
        t0, vox_done = time.perf_counter(), 0
        peak = _rss_bytes()
        n_computed = 0
        for ci, ch in enumerate(chunks):
            todo = [t for t in ch["tiles"] if "%d,%d,%d" % t not in done]
            if todo:
                (z0, z1), (y0, y1), (x0, x1) = ch["block"]
                raw = np.asarray(cube.data[z0:z1, y0:y1, x0:x1])
                block = normalise(raw, sigma[z0:z1])
                del raw
                release_pages(cube.data)
                for (iz, iy, ix) in todo:
                    s = (axes[0][0][iz], axes[1][0][iy], axes[2][0][ix])
                    x = np.zeros(tile, np.float32)
                    sub = block[s[0] - z0:s[0] - z0 + tile[0], s[1] - y0:s[1] - y0 + tile[1],
                                s[2] - x0:s[2] - x0 + tile[2]]
                    x[:sub.shape[0], :sub.shape[1], :sub.shape[2]] = sub
                    if not x.any():  # fully blank (NaN) or padded tile: nothing to detect
                        done["%d,%d,%d" % (iz, iy, ix)] = []
                        continue
                    rows, sc = _forward_tile(run_net, cfg, x, settings)
                    n_computed += 1
                    if len(rows):
                        rows[:, 0] += s[2]
                        rows[:, 1] += s[1]
                        rows[:, 2] += s[0]
                        c = rows[:, [2, 1, 0]] + 0.5
                        ok = np.ones(len(rows), bool)
                        for d, k in enumerate((iz, iy, ix)):
                            lo, hi = axes[d][1][k], axes[d][1][k + 1]
                            ok &= (c[:, d] >= lo) & (c[:, d] < hi) & (c[:, d] - 0.5 >= -0.5) & \
                                  (c[:, d] - 0.5 < shape[d] - 0.5)
                        # NaN-blanked centres are not detections
                        if ok.any():
                            ci_ = np.clip(np.floor(c[ok]).astype(int), 0, np.array(shape) - 1)
                            bz, by, bx = ci_[:, 0] - z0, ci_[:, 1] - y0, ci_[:, 2] - x0
                            inb = (bz >= 0) & (bz < block.shape[0]) & (by >= 0) & (by < block.shape[1]) & \
                                  (bx >= 0) & (bx < block.shape[2])
                            valid = np.ones(ok.sum(), bool)
                            valid[inb] = block[bz[inb], by[inb], bx[inb]] != 0.0
                            ok[np.nonzero(ok)[0][~valid]] = False
                        rows, sc = rows[ok], sc[ok]
                        keep = _nms(rows, sc, settings.nms_threshold)
                        rows, sc = rows[keep], sc[keep]
                    done["%d,%d,%d" % (iz, iy, ix)] = rows.tolist()
                del block
                peak = max(peak, _rss_bytes())
                if state_path is not None:
                    _atomic_json(Path(state_path), state)
            core = 1
            for d, idxs in enumerate(({t[0] for t in ch["tiles"]}, {t[1] for t in ch["tiles"]},
                                      {t[2] for t in ch["tiles"]})):
                lo = max(axes[d][1][min(idxs)], 0.0)
                hi = min(axes[d][1][max(idxs) + 1], float(shape[d]))
                core *= max(hi - lo, 0.0)
            vox_done += core if todo else 0
            el = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix_str(f"{vox_done / el / 1e6:.2f} Mvox/s" if el > 0 else "")
            if on_chunk is not None:
                on_chunk(ci, len(chunks))
        bar.close()
        elapsed = time.perf_counter() - t0
    rows = [np.asarray(v, float).reshape(-1, len(CAND_COLUMNS)) for k, v in sorted(done.items())]
    rows = np.concatenate(rows) if rows else np.zeros((0, len(CAND_COLUMNS)))
    import resource

    peak = max(peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    stats = {"seconds": time.perf_counter() - t_start, "inference_seconds": elapsed, "voxels": n_vox_total,
             "voxels_per_s": vox_done / elapsed if elapsed > 0 else float("nan"), "chunks": len(chunks),
             "tiles": sum(len(c["tiles"]) for c in chunks), "tiles_computed": n_computed, "peak_rss_bytes": peak, "tile": tile}
    log.info("sdc2 detect: %d chunks, %d candidates, %.1f s, %.3g voxels/s", len(chunks), len(rows),
             stats["seconds"], stats["voxels_per_s"])
    return {"rows": rows, "scores": _score_of(rows, settings.score), "sigma": sigma, "shape": shape,
            "stats": stats, "settings": settings}


def candidates_to_catalog(cube_path, candidates: dict, *, threshold=None, nms_threshold=None,
                          min_reliability=None):
    """Second stage: threshold, global DIoU-NMS across tiles, SDC2 columns with the cube WCS, reliability cut.

    Parameters
    ----------
    cube_path : str or os.PathLike
        The cube (its WCS, frequencies and channel width are read; not its data).
    candidates : dict
        Output of :func:`detect_candidates`.
    threshold, nms_threshold : float, optional
        Override the settings' final score threshold and NMS threshold.
    min_reliability : float, optional
        Override the settings' reliability threshold (only used when the settings hold a reliability model).

    Returns
    -------
    astropy.table.Table
        SDC2 columns ``id ra dec hi_size line_flux_integral central_freq pa i w20`` (deg, arcsec, Jy Hz, Hz,
        deg, deg, km/s) plus ``x y z`` (0-based voxels), ``box_x box_y box_z`` (box sides, voxels), ``score``,
        ``objectness``, ``probability`` and, with a reliability model, ``reliability``; sorted by decreasing
        score.
    """
    from astropy.table import Table

    from cianna.io.cube import open_cube
    from cianna.pipelines.sdc2.data import decode_params

    settings = candidates["settings"]
    if min_reliability is not None:  # validated by DetectSettings
        settings = replace(settings, min_reliability=float(min_reliability))
    thr = settings.threshold if threshold is None else threshold
    nthr = settings.nms_threshold if nms_threshold is None else nms_threshold
    rows, scores = candidates["rows"], candidates["scores"]
    sel = np.nonzero(scores >= thr)[0]
    rows, scores = rows[sel], scores[sel]
    keep = _nms(rows, scores, nthr)
    rows, scores = rows[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    rows, scores = rows[order], scores[order]
    sigma = np.asarray(candidates["sigma"], float)
    with open_cube(cube_path) as cube:
        x, y, z = rows[:, 0], rows[:, 1], rows[:, 2]
        ra, dec = cube.celestial.all_pix2world(x, y, 0) if len(rows) else (np.zeros(0), np.zeros(0))
        freq = np.interp(z, np.arange(len(cube.freqs)), cube.freqs)
        dnu = cube.channel_width
        decreasing = len(cube.freqs) > 1 and cube.freqs[-1] < cube.freqs[0]
    sig = sigma[np.clip(np.round(z).astype(int), 0, len(sigma) - 1)] if len(rows) else np.zeros(0)
    par = decode_params(rows[:, 8:14], sig, dnu)
    par = apply_calibration(par, settings.calibration)
    pa = np.mod(par["pa"] + (180.0 if decreasing else 0.0), 360.0)
    t = Table()
    t["id"] = np.arange(len(rows), dtype=np.int64)
    t["ra"] = np.mod(np.asarray(ra, float), 360.0)
    t["dec"] = np.asarray(dec, float)
    t["hi_size"] = par["hi_size"]
    t["line_flux_integral"] = par["line_flux_integral"]
    t["central_freq"] = freq
    t["pa"] = pa
    t["i"] = par["i"]
    t["w20"] = par["w20"]
    t["x"], t["y"], t["z"] = x, y, z
    t["box_x"], t["box_y"], t["box_z"] = rows[:, 3], rows[:, 4], rows[:, 5]
    t["score"] = scores
    t["objectness"], t["probability"] = rows[:, 6], rows[:, 7]
    units = {"ra": "deg", "dec": "deg", "hi_size": "arcsec", "line_flux_integral": "Jy Hz", "central_freq": "Hz",
             "pa": "deg", "i": "deg", "w20": "km / s"}
    for k, v in units.items():
        t[k].unit = v
    t.meta["threshold"] = float(thr)
    t.meta["nms_threshold"] = float(nthr)
    if settings.reliability:
        from cianna.pipelines.sdc2.reliability import predict_reliability

        t["reliability"] = predict_reliability(settings.reliability, t) if len(t) else np.zeros(0)
        t = t[t["reliability"] >= settings.min_reliability]
        t["id"] = np.arange(len(t), dtype=np.int64)
        t.meta["min_reliability"] = settings.min_reliability
    if settings.pa_mode != "network" and len(t):
        from cianna.pipelines.sdc2.kinematics import refine_pa

        mode = "replace" if settings.pa_mode == "kinematic" else "side"
        t = refine_pa(cube_path, t, mode=mode, clip=settings.pa_clip)
        t.meta["pa_mode"] = settings.pa_mode
    return t


def apply_calibration(par: dict, calibration: dict | None) -> dict:
    """Apply :attr:`DetectSettings.calibration` to decoded parameters (returns a new dict)."""
    out = dict(par)
    for name, (a, b) in (calibration or {}).items():
        v = np.asarray(out[name], float)
        if name == "i":
            out[name] = np.clip(a + b * v, 0.0, 90.0)
        else:
            out[name] = 10.0 ** (a + b * np.log10(np.maximum(v, 1e-6)))
    return out


def write_catalog(table, path) -> str:
    """Write a catalogue atomically: ``.txt`` = SDC2 submission format (header line), otherwise an Astropy
    table in the format given by the extension (``.ecsv``, ``.fits``, ``.csv``, ``.vot`` ...)."""
    from cianna.scoring.sdc2 import write_sdc2_catalog

    path = os.fspath(path)
    if path.lower().endswith(".txt"):
        return write_sdc2_catalog(table, path)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.partial-{os.getpid()}{ext}"
    if ext.lower() in (".fits", ".fit", ".fts"):  # FITS headers take only short scalar keywords
        table = table.copy(copy_data=False)
        meta = table.meta
        table.meta = {"THRESH": meta.get("threshold"), "NMSTHR": meta.get("nms_threshold")}
        if meta.get("min_reliability") is not None:
            table.meta["MINREL"] = meta["min_reliability"]
    try:
        table.write(tmp, overwrite=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def detect(cube_path, out_path=None, *, model=None, max_memory=None, resume: bool = True, settings=None,
           threshold=None, min_reliability=None, progress: bool = True, on_chunk=None,
           chunk_bytes: int | None = None):
    """Detect HI galaxies in a FITS cube and (optionally) write the catalogue.

    Parameters
    ----------
    cube_path : str or os.PathLike
        FITS cube (X, Y, FREQ[, STOKES]).
    out_path : str or os.PathLike, optional
        Catalogue (``.txt`` = SDC2 format, else Astropy by extension). Its resume file is
        ``<out_path>.partial.json``; it is removed once the catalogue is written.
    model : str or os.PathLike, optional
        Model file; default the packaged pretrained model.
    max_memory : int or str, optional
        Memory budget, e.g. ``"1G"``.
    resume : bool
        Use (and keep updating) the resume file.
    settings : DetectSettings, optional
    threshold : float, optional
        Final score threshold (default: the model's).
    min_reliability : float, optional
        Reliability threshold (default: the model's; ignored for models without a reliability model).
    progress : bool
    on_chunk : callable, optional
        See :func:`detect_candidates`.
    chunk_bytes : int, optional
        See :func:`detect_candidates`.

    Returns
    -------
    astropy.table.Table
        The catalogue (``meta['stats']`` holds timing and memory figures).
    """
    state_path = None
    if out_path is not None and resume:
        state_path = Path(os.fspath(out_path) + ".partial.json")
    cand = detect_candidates(cube_path, model=model, max_memory=max_memory, state_path=state_path,
                             settings=settings, progress=progress, on_chunk=on_chunk,
                              chunk_bytes=chunk_bytes)
    table = candidates_to_catalog(cube_path, cand, threshold=threshold, min_reliability=min_reliability)
    table.meta["stats"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cand["stats"].items()}
    if out_path is not None:
        write_catalog(table, out_path)
        if state_path is not None and state_path.exists():
            state_path.unlink()
        log.info("%d sources -> %s", len(table), out_path)
    return table
