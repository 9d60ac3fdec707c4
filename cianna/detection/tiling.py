"""Tiled prediction over 1D/2D/3D arrays larger than the network input (``yolo.md`` §12.2–12.3).

Geometry (per array axis, N-D generalisation of the SDC1 tiling)
-----------------------------------------------------------------
Tile ``k`` starts at ``k·stride − offset`` with ``stride = tile_size − overlap``; tiles are added until
the array is covered. ``origin="centered"`` picks the ``offset`` in ``[0, stride)`` that puts one tile
exactly on the array centre (SDC1: 32768² image, 512² tiles, overlap 32 → stride 480, offset 192,
69 × 69 tiles, tile ``j`` covering ``j·480 − 192 … j·480 + 320``); ``origin="start"`` starts at 0; an
int/tuple gives the offset itself. Tile parts outside the array are zero-filled; non-finite pixels are
replaced by 0 and reported in a validity mask.

Axis order and pixel convention
-------------------------------
``tile_size``, ``overlap``, shapes and tile starts are in **array axis order** (``(W,)``, ``(H, W)`` or
``(D, H, W)``); boxes are ``[xmin, ymin, zmin, xmax, ymax, zmax]`` with ``x`` the **last** array axis,
``y`` the one before, ``z`` the first of a cube; unused box dims span ``[0, 1]``. Box coordinates
follow CIANNA: pixel ``i`` covers ``[i, i + 1)``, its centre is ``i + 0.5``. A 0-based FITS/astropy pixel
coordinate is the CIANNA coordinate minus 0.5 (:meth:`TiledDetections.pixel_centres`; add 1 more for
1-based FITS/DS9). Global coordinates = tile coordinates + tile start.

Two-stage NMS
-------------
1. Inside each tile: greedy NMS (:func:`cianna.detection.nms.non_max_suppression`).
2. Between tiles (:func:`merge_tile_borders`): a box strictly inside the *core* of its tile
   (``start + margin < box < start + tile − margin`` in every tiled dim, margin = overlap) is kept
   outright — no other tile can see it. A *border* box is dropped if a box of another tile has
   ``overlap > border_threshold`` (SDC1: DIoU > −0.15) and ranks higher. Ranking: higher score; on equal
   scores (translation-equivariant duplicates) the copy farther from its tile edges, then the lower tile
   index — an addition to SDC1, whose strict ``>`` keeps both copies of an exact tie.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from cianna.detection.boxes import as_3d, iou
from cianna.detection.nms import candidate_pairs, interaction_reach, non_max_suppression

__all__ = ["TileGrid", "tile_grid", "TileBatch", "iter_tiles", "TiledDetections", "merge_tile_borders",
           "predict_tiled"]

log = logging.getLogger(__name__)

IntOrSeq = Union[int, Sequence[int]]
PredictFn = Callable[[torch.Tensor], Sequence[tuple]]


def _tuple(v: IntOrSeq, d: int, name: str) -> tuple[int, ...]:
    t = (int(v),) * d if np.isscalar(v) else tuple(int(x) for x in v)
    if len(t) != d:
        raise ValueError(f"{name} has {len(t)} entries for {d} tiled axes")
    return t


@dataclass(frozen=True)
class TileGrid:
    """Regular grid of overlapping tiles (array axis order).

    Attributes
    ----------
    shape : tuple of int
        Spatial shape of the array, e.g. ``(H, W)``.
    tile_size, overlap : tuple of int
        Tile size and overlap between neighbouring tiles (pixels).
    offset : tuple of int
        Tile ``k`` starts at ``k·stride − offset``.
    counts : tuple of int
        Number of tiles per axis.
    """

    shape: tuple[int, ...]
    tile_size: tuple[int, ...]
    overlap: tuple[int, ...]
    offset: tuple[int, ...]
    counts: tuple[int, ...]

    @property
    def ndim(self) -> int:
        """Number of tiled axes."""
        return len(self.shape)

    @property
    def stride(self) -> tuple[int, ...]:
        """``tile_size − overlap`` per axis."""
        return tuple(t - o for t, o in zip(self.tile_size, self.overlap))

    def __len__(self) -> int:
        return int(np.prod(self.counts))

    def starts(self) -> torch.Tensor:
        """Tile starts, shape ``(len(self), ndim)`` int64, tiles in C order (last axis fastest)."""
        axes = [torch.arange(n) * s - o for n, s, o in zip(self.counts, self.stride, self.offset)]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, self.ndim)

    def starts_xyz(self) -> torch.Tensor:
        """Tile starts in box order ``(x, y, z)``, shape ``(len(self), 3)`` float (unused dims 0)."""
        s = self.starts().flip(-1).double()
        return torch.cat([s, s.new_zeros(len(s), 3 - self.ndim)], dim=1)

    def size_xyz(self) -> torch.Tensor:
        """Tile size in box order, shape ``(3,)`` (unused dims 1)."""
        return torch.tensor(list(self.tile_size[::-1]) + [1] * (3 - self.ndim), dtype=torch.float64)


def tile_grid(shape: Sequence[int], tile_size: IntOrSeq, overlap: IntOrSeq = 0,
              origin: Union[str, IntOrSeq] = "centered") -> TileGrid:
    """Build the tile grid covering an array.

    Parameters
    ----------
    shape : sequence of int
        Spatial shape (array axis order), 1 to 3 axes.
    tile_size : int or sequence of int
        Tile (network input) size per axis, pixels.
    overlap : int or sequence of int
        Overlap between neighbouring tiles, ``0 ≤ overlap < tile_size``.
    origin : {"centered", "start"} or int or sequence of int
        Tile placement (module notes); an int is the SDC1 ``orig_offset`` (tile 0 starts at ``−offset``).

    Returns
    -------
    TileGrid
    """
    shape = tuple(int(s) for s in shape)
    d = len(shape)
    if not 1 <= d <= 3:
        raise ValueError(f"1 to 3 tiled axes supported, got shape {shape}")
    ts, ov = _tuple(tile_size, d, "tile_size"), _tuple(overlap, d, "overlap")
    if any(t < 1 or not 0 <= o < t for t, o in zip(ts, ov)):
        raise ValueError(f"need tile_size >= 1 and 0 <= overlap < tile_size, got {ts}, {ov}")
    stride = [t - o for t, o in zip(ts, ov)]
    if origin == "centered":
        off = tuple((-(s // 2 - t // 2)) % st for s, t, st in zip(shape, ts, stride))
    elif origin == "start":
        off = (0,) * d
    else:
        off = _tuple(origin, d, "origin")
        if min(off) < 0:
            raise ValueError("origin offsets must be >= 0 (tile 0 starts at -offset)")
    counts = tuple(max(1, math.ceil((s + o - t) / st) + 1) if s + o > t else 1
                   for s, o, t, st in zip(shape, off, ts, stride))
    return TileGrid(shape, ts, ov, off, counts)


@dataclass
class TileBatch:
    """A batch of tiles from :func:`iter_tiles`.

    Attributes
    ----------
    tiles : torch.Tensor, shape (B, C, *tile_size)
        Pixel data, zero outside the array and at non-finite pixels.
    valid : torch.Tensor of bool, shape (B, *tile_size)
        Inside the array and finite in every channel.
    starts : torch.Tensor of int64, shape (B, ndim)
        Tile starts (array axis order; may be negative).
    index : torch.Tensor of int64, shape (B,)
        Tile indices in the grid.
    """

    tiles: torch.Tensor
    valid: torch.Tensor
    starts: torch.Tensor
    index: torch.Tensor


def _read_tile(array, start, tile_size, n_chan):
    d = len(tile_size)
    shape = array.shape[-d:]
    out = np.zeros((n_chan,) + tuple(tile_size), dtype=np.float32)
    valid = np.zeros(tuple(tile_size), dtype=bool)
    src, dst = [], []
    for s, t, n in zip(start, tile_size, shape):
        lo, hi = max(int(s), 0), min(int(s) + t, n)
        if hi <= lo:
            return out, valid
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(s), hi - int(s)))
    block = np.asarray(array[(Ellipsis,) + tuple(src)], dtype=np.float32).reshape((n_chan,) + tuple(
        sl.stop - sl.start for sl in src))  # only this block is read from a memmap
    fin = np.isfinite(block)
    out[(slice(None),) + tuple(dst)] = np.where(fin, block, 0.0)
    valid[tuple(dst)] = fin.all(axis=0)
    return out, valid


def iter_tiles(array, grid: TileGrid, batch_size: int = 8, *, skip_empty: bool = True,
               device: Optional[Union[str, torch.device]] = None) -> Iterator[TileBatch]:
    """Iterate over the tiles of an array in batches, with bounded memory.

    Parameters
    ----------
    array : numpy.ndarray (possibly memory-mapped) or torch.Tensor
        Shape ``grid.shape`` (one channel) or ``(C, *grid.shape)``.
    grid : TileGrid
    batch_size : int
        Tiles per batch; memory ≈ ``batch_size × C × prod(tile_size) × 4`` bytes.
    skip_empty : bool
        Skip tiles without any valid pixel (entirely outside the array or non-finite).
    device : str or torch.device, optional
        Device of the yielded tensors.

    Yields
    ------
    TileBatch
    """
    if torch.is_tensor(array):
        array = array.detach().cpu().numpy()
    if tuple(array.shape[-grid.ndim:]) != grid.shape or array.ndim not in (grid.ndim, grid.ndim + 1):
        raise ValueError(f"array shape {array.shape} does not match the grid shape {grid.shape}")
    n_chan = 1 if array.ndim == grid.ndim else array.shape[0]
    starts = grid.starts()
    buf, vbuf, sbuf, ibuf = [], [], [], []

    def flush():
        b = TileBatch(torch.from_numpy(np.stack(buf)).to(device), torch.from_numpy(np.stack(vbuf)).to(device),
                      torch.stack(sbuf), torch.tensor(ibuf, dtype=torch.long))
        buf.clear(), vbuf.clear(), sbuf.clear(), ibuf.clear()
        return b

    for k in range(len(grid)):
        tile, valid = _read_tile(array, starts[k].tolist(), grid.tile_size, n_chan)
        if skip_empty and not valid.any():
            continue
        buf.append(tile), vbuf.append(valid), sbuf.append(starts[k]), ibuf.append(k)
        if len(buf) == batch_size:
            yield flush()
    if buf:
        yield flush()


@dataclass
class TiledDetections:
    """Detections over the whole array.

    Attributes
    ----------
    boxes : torch.Tensor, shape (N, 6)
        Global corner boxes, CIANNA pixel convention (pixel ``i`` covers ``[i, i + 1)``).
    scores : torch.Tensor, shape (N,)
        Detection scores, decreasing.
    extra : torch.Tensor, shape (N, K)
        Extra per-box values returned by the predictor (K = 0 if none).
    tile : torch.Tensor of int64, shape (N,)
        Index of the tile each box comes from.
    grid : TileGrid
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    extra: torch.Tensor
    tile: torch.Tensor
    grid: TileGrid

    def __len__(self) -> int:
        return len(self.scores)

    def pixel_centres(self) -> torch.Tensor:
        """Box centres as 0-based FITS/astropy pixel coordinates ``(x, y, z)``, shape (N, 3)
        (CIANNA centre − 0.5; unused dims are 0)."""
        c = (self.boxes[:, :3] + self.boxes[:, 3:]) * 0.5 - 0.5
        c[:, self.grid.ndim:] = 0.0
        return c


def merge_tile_borders(boxes: torch.Tensor, scores: torch.Tensor, tile: torch.Tensor, grid: TileGrid, *,
                       threshold: float = -0.15, kind: str = "DIoU",
                       core_margin: Optional[IntOrSeq] = None) -> torch.Tensor:
    """Second-stage NMS between tiles (SDC1 ``second_NMS_local``, module notes).

    Parameters
    ----------
    boxes : torch.Tensor, shape (N, 6)
        Global corner boxes (after the per-tile NMS).
    scores : torch.Tensor, shape (N,)
    tile : torch.Tensor of int64, shape (N,)
        Tile index of each box in ``grid``.
    grid : TileGrid
    threshold : float
        A border box is dropped if a box of another tile overlaps it by more than this and ranks higher.
    kind : {"IoU", "GIoU", "DIoU", "DIoU2"}
        Overlap measure.
    core_margin : int or sequence of int, optional
        Width of the border band (array axis order); default ``grid.overlap``.

    Returns
    -------
    torch.Tensor of bool, shape (N,)
        Keep mask (on the CPU).

    Notes
    -----
    Pairs are found with the spatial hash of :func:`cianna.detection.nms.candidate_pairs` among the
    boxes that are not deep inside their tile core: ``O(N log N + P)``. The rule is not greedy (a box
    outranked by a dropped box is dropped too), as in SDC1.
    """
    b = as_3d(torch.as_tensor(boxes)).detach().double().cpu()  # small work: done on the CPU
    scores = torch.as_tensor(scores).detach().cpu()
    tile = torch.as_tensor(tile).detach().cpu().long()
    n = b.shape[0]
    keep = torch.ones(n, dtype=torch.bool)
    if n < 2:
        return keep
    m = grid.overlap if core_margin is None else _tuple(core_margin, grid.ndim, "core_margin")
    d = grid.ndim
    start = grid.starts_xyz()[tile]
    size, margin = grid.size_xyz(), torch.tensor(list(m[::-1]) + [0] * (3 - d), dtype=torch.float64)
    lo, hi = b[:, :d] - start[:, :d], b[:, 3:3 + d] - start[:, :d]
    core = ((lo > margin[:d]) & (hi < size[:d] - margin[:d])).all(dim=1)
    centre = (lo + hi) * 0.5
    central = torch.minimum(centre, size[:d] - centre).amin(dim=1)
    # strict total order: score desc, centrality desc, tile asc, index asc
    key = np.lexsort((np.arange(n), tile.numpy(), -central.numpy(), -scores.double().cpu().numpy()))
    rank = torch.empty(n, dtype=torch.long)
    rank[torch.from_numpy(key)] = torch.arange(n)
    reach = interaction_reach(kind, threshold)
    if not math.isfinite(reach):
        raise ValueError(f"threshold {threshold} with kind {kind!r} has an unbounded reach")
    # boxes deep inside their core cannot meet a box of another tile whose centre lies in that tile
    sz = (b[:, 3:] - b[:, :3]).abs()
    r = reach * float(sz.norm(dim=1).max())
    deep = core & ((lo > margin[:d] + r) & (hi < size[:d] - margin[:d] - r)).all(dim=1)
    own = ((centre >= 0) & (centre < size[:d])).all(dim=1)
    sub = (~deep).nonzero().squeeze(1) if bool(own.all()) else torch.arange(n)
    for i, j in candidate_pairs(b[sub], reach):
        i, j = sub[i], sub[j]
        sel = (tile[i] != tile[j]) & ~(core[i] & core[j])
        i, j = i[sel], j[sel]
        hit = iou(b[i], b[j], kind) > threshold
        i, j = i[hit], j[hit]
        low = torch.where(rank[i] > rank[j], i, j)
        keep[low[~core[low]]] = False
    return keep


def _extra(ex, n: int) -> torch.Tensor:
    if ex is None:
        return torch.zeros(n, 0)
    ex = torch.as_tensor(ex).detach().cpu()
    if ex.dim() < 2:
        ex = ex.reshape(n, -1) if n else ex.reshape(0, 0)
    return ex


def _to_global(boxes: torch.Tensor, start_xyz: torch.Tensor) -> torch.Tensor:
    return boxes + torch.cat([start_xyz, start_xyz]).to(boxes.dtype)


def predict_tiled(array, predict_fn: PredictFn, tile_size: IntOrSeq, overlap: IntOrSeq = 0, *,
                  origin: Union[str, IntOrSeq] = "centered", batch_size: int = 8,
                  nms_threshold: Union[None, float, Callable] = 0.3, nms_kind: str = "DIoU",
                  border_threshold: Optional[float] = -0.15, border_kind: Optional[str] = None,
                  clip_to_array: bool = True, drop_invalid: bool = True, skip_empty: bool = True,
                  device: Optional[Union[str, torch.device]] = None, progress: bool = True) -> TiledDetections:
    """Run a detector over overlapping tiles and merge the detections without border duplicates.

    Parameters
    ----------
    array : numpy.ndarray (possibly memory-mapped) or torch.Tensor
        Image ``(H, W)``, cube ``(D, H, W)`` or 1D ``(W,)``, optionally with a leading channel axis.
    predict_fn : callable
        ``predict_fn(tiles)`` with ``tiles`` of shape ``(B, C, *tile_size)`` (float32, on ``device``)
        returns a sequence of ``B`` tuples ``(boxes (N, 6) or (N, 4), scores (N,), extra (N, K) or None)``
        in **tile** pixel coordinates (CIANNA convention).
    tile_size, overlap : int or sequence of int
        Tile size and overlap, array axis order (:func:`tile_grid`).
    origin : {"centered", "start"} or int or sequence of int
        Tile placement (:func:`tile_grid`).
    batch_size : int
        Tiles per ``predict_fn`` call; bounds the memory.
    nms_threshold : float, callable or None
        First (per-tile) NMS threshold; a callable ``f(boxes, scores, extra) -> (N,)`` gives per-box
        thresholds (e.g. ``lambda b, s, e: ladder_thresholds(s)`` for SDC1); ``None`` skips it.
    nms_kind : str
        Overlap measure of the first NMS.
    border_threshold : float or None
        Threshold of the between-tile stage (:func:`merge_tile_borders`); ``None`` skips it.
    border_kind : str, optional
        Overlap measure of the second stage (default ``nms_kind``).
    clip_to_array : bool
        Drop boxes whose centre lies outside the array.
    drop_invalid : bool
        Drop boxes whose centre pixel is non-finite in the array.
    skip_empty : bool
        Do not run the predictor on tiles without valid pixels.
    device : str or torch.device, optional
        Device the tiles are sent to.
    progress : bool
        Show a tqdm progress bar over tiles.

    Returns
    -------
    TiledDetections
        Sorted by decreasing score.

    Examples
    --------
    A detector returning one 8 × 8 box on the brightest pixel of each tile:

    >>> import numpy as np, torch
    >>> def brightest(tiles):
    ...     out = []
    ...     for t in tiles[:, 0]:
    ...         y, x = divmod(int(t.argmax()), t.shape[-1])
    ...         box = torch.tensor([[x - 3.5, y - 3.5, 0.0, x + 4.5, y + 4.5, 1.0]])  # centre x + 0.5
    ...         out.append((box, t.max().reshape(1), None))
    ...     return out
    >>> image = np.zeros((300, 300), np.float32)
    >>> image[150, 100] = 1.0
    >>> det = predict_tiled(image, brightest, (128, 128), (32, 32), progress=False)
    >>> det.pixel_centres()[0].tolist()  # 0-based (x, y, z)
    [100.0, 150.0, 0.0]
    """
    from tqdm.auto import tqdm

    d = array.ndim if np.isscalar(tile_size) else len(tile_size)
    if array.ndim not in (d, d + 1):
        raise ValueError(f"array of shape {array.shape} does not fit {d} tiled axes (+ optional channel axis)")
    spatial = tuple(array.shape[-d:])
    grid = tile_grid(spatial, tile_size, overlap, origin)
    starts_xyz = grid.starts_xyz()
    out_b, out_s, out_e, out_t = [], [], [], []
    with torch.no_grad(), tqdm(total=len(grid), disable=not progress, unit="tile", desc="tiles") as bar:
        n_done = 0
        for batch in iter_tiles(array, grid, batch_size, skip_empty=skip_empty, device=device):
            results = predict_fn(batch.tiles)
            if len(results) != len(batch.index):
                raise ValueError(f"predict_fn returned {len(results)} results for {len(batch.index)} tiles")
            for r, k, valid in zip(results, batch.index.tolist(), batch.valid):
                bx, sc, ex = (list(r) + [None])[:3]
                bx = as_3d(torch.as_tensor(bx)).detach().cpu().double().reshape(-1, 6)
                sc = torch.as_tensor(sc).detach().cpu().double().reshape(-1)
                ex = _extra(ex, len(sc))
                if drop_invalid and len(sc):
                    c = ((bx[:, :d] + bx[:, 3:3 + d]) * 0.5).floor().long().flip(-1)
                    inside = ((c >= 0) & (c < torch.tensor(grid.tile_size))).all(dim=1)
                    ok = torch.zeros(len(sc), dtype=torch.bool)
                    ok[inside] = valid.cpu()[tuple(c[inside].T)]
                    bx, sc, ex = bx[ok], sc[ok], ex[ok]
                if nms_threshold is not None and len(sc) > 1:
                    thr = nms_threshold(bx, sc, ex) if callable(nms_threshold) else nms_threshold
                    kept = non_max_suppression(bx, sc, thr, kind=nms_kind)
                    bx, sc, ex = bx[kept], sc[kept], ex[kept]
                out_b.append(_to_global(bx, starts_xyz[k]))
                out_s.append(sc), out_e.append(ex), out_t.append(torch.full((len(sc),), k, dtype=torch.long))
            bar.update(int(batch.index[-1]) + 1 - n_done)
            n_done = int(batch.index[-1]) + 1
        bar.update(len(grid) - n_done)
    if not out_b:
        return TiledDetections(torch.zeros(0, 6), torch.zeros(0), torch.zeros(0, 0), torch.zeros(0, dtype=torch.long),
                               grid)
    boxes, scores, tiles = torch.cat(out_b), torch.cat(out_s), torch.cat(out_t)
    kk = max(e.shape[1] for e in out_e)
    if any(len(e) and e.shape[1] != kk for e in out_e):
        raise ValueError("predict_fn returned extra values with different widths")
    extra = torch.cat([e.double() if len(e) else torch.zeros(0, kk, dtype=torch.float64) for e in out_e])
    log.info("tiled prediction: %d tiles, %d detections before border merging", len(grid), len(scores))
    idx = torch.arange(len(scores))
    if clip_to_array:  # before merging, so that outside boxes cannot suppress inside ones
        c = (boxes[:, :d] + boxes[:, 3:3 + d]) * 0.5
        idx = idx[((c >= 0) & (c < torch.tensor(spatial[::-1], dtype=c.dtype))).all(dim=1)]
    if border_threshold is not None:
        idx = idx[merge_tile_borders(boxes[idx], scores[idx], tiles[idx], grid, threshold=border_threshold,
                                     kind=border_kind or nms_kind)]
    idx = idx[torch.sort(scores[idx], descending=True, stable=True).indices]
    return TiledDetections(boxes[idx].float(), scores[idx].float(), extra[idx].float(), tiles[idx], grid)

