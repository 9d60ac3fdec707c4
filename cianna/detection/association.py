"""YOLO-CIANNA target ↔ box association, the "matcher" (``yolo.md`` §7).

Every (image, grid cell) is matched independently, vectorised over images and cells; the only Python
loop of the matching is over the greedy rounds (one target per cell and round; at most ``nb_box`` rounds
take a box, dropped difficult targets may add a few). The good-but-not-best lock runs over memory chunks
of images (sparse pairs inside a chunk).

Random options draw from a seeded CPU ``torch.Generator``: same seed → same association, with the
distributions of CIANNA's ``curand`` draws (not its exact random stream).

Modes
-----
``"train"``
    The training association with every option: strict prior ranges, random start-up phase,
    ``rand_prob``, smallest-prior forcing, low-IoU / random best-theoretical-prior reassociation and
    the difficult thresholds. Random draws use the given ``torch.Generator``.
``"complete"``
    Deterministic display pass mimicking the training rules without randomness (``yolo.md`` §10).
``"natural"``
    Deterministic display pass: plain greedy best-IoU matching over all boxes, every difficult target
    ignored.

Quirks 9 (smallest-prior identity test with the wrong index) and 10 (a prior at distance exactly 0 is
never "closest" under ``strict_box_size``) of ``framework.md`` §10 are fixed unless
``config.compat_prior_index_quirk`` / ``config.compat_zero_distance_quirk`` are set. Cell membership
uses ``floor(centre / cell_size)`` (V-1.0 truncates towards zero, which maps centres in
``(−cell_size, 0)`` to cell 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cianna.detection.boxes import iou, prior_distance
from cianna.detection.config import YoloConfig
from cianna.detection.targets import YoloTargets

__all__ = ["Association", "associate", "good_box_lock", "target_cells", "strict_eligibility", "in_random_startup"]

#: Budget (elements) of one chunk of the all-boxes × all-targets lock computation.
_LOCK_CHUNK = 1 << 23


@dataclass
class Association:
    """Result of the association for a batch.

    Attributes
    ----------
    target_index : torch.Tensor, shape (B, S, K), int64
        Index of the target matched to each box (−1: box not taken).
    iou : torch.Tensor, shape (B, S, K), float
        ``IoU*`` of matched boxes (IoU clipped at 0.98; ``good_IoU_lim`` for class-only targets); 0 else.
    locked : torch.Tensor, shape (B, S, K), int64
        0 background, 1 good-but-not-best (no background loss), 2 taken.
    difficult : torch.Tensor, shape (B, S, K), int64
        Difficult code (0–3) of the matched target (0 when not taken).
    """

    target_index: torch.Tensor
    iou: torch.Tensor
    locked: torch.Tensor
    difficult: torch.Tensor

    @property
    def taken(self) -> torch.Tensor:
        """Boxes matched to a target, shape (B, S, K), bool."""
        return self.locked == 2


def in_random_startup(config: YoloConfig, iteration: int | None, train_size: int) -> bool:
    """True while ``iteration × train_size ≤ rand_startup`` (``iteration`` counted from 1)."""
    if iteration is None:
        return False
    return int(iteration) * int(train_size) <= config.rand_startup


def target_cells(boxes: torch.Tensor, valid: torch.Tensor, grid: torch.Tensor,
                 cell_size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat cell index of every target centre (``floor(centre / cell_size)``).

    Returns
    -------
    cell : torch.Tensor, shape (B, T), int64
        Flat cell index (x fastest); 0 for targets outside the grid or invalid.
    in_grid : torch.Tensor, shape (B, T), bool
        Valid targets whose centre lies inside the grid.
    """
    centre = 0.5 * (boxes[..., :3] + boxes[..., 3:])
    grid = grid.to(boxes.device)
    idx = torch.floor(centre / cell_size.to(boxes.device, boxes.dtype)).long()
    in_grid = valid & ((idx >= 0) & (idx < grid)).all(dim=-1)
    flat = idx[..., 0] + grid[0] * (idx[..., 1] + grid[1] * idx[..., 2])
    return torch.where(in_grid, flat, torch.zeros_like(flat)), in_grid


def strict_eligibility(dist: torch.Tensor, n: int, compat_zero_distance: bool = False) -> torch.Tensor:
    """Boxes a target may use under ``strict_box_size = n`` (``yolo.md`` §7.2 step 3).

    ``n`` times: select the closest not-yet-selected prior and every prior within 0.001 of it.

    Parameters
    ----------
    dist : torch.Tensor, shape (..., K)
        Prior distances.
    n : int
    compat_zero_distance : bool
        Reproduce quirk 10: the minimum is searched among distances ``> 0`` only (a prior at distance
        exactly 0 is selected only when within 0.001 of a positive minimum).

    Returns
    -------
    torch.Tensor, shape (..., K), bool
    """
    selected = torch.zeros_like(dist, dtype=torch.bool)
    for _ in range(n):  # n ≤ nb_box selection rounds
        usable = ~selected & ((dist > 0) if compat_zero_distance else torch.ones_like(selected))
        best = torch.where(usable, dist, torch.full_like(dist, 1e6)).amin(dim=-1, keepdim=True)
        selected |= ~selected & ((dist - best).abs() < 1e-3)
    return selected


def good_box_lock(boxes: torch.Tensor, tboxes: torch.Tensor, valid: torch.Tensor, kind: str,
                  lim: float) -> torch.Tensor:
    """Good-but-not-best flag (``yolo.md`` §7.2 step 2): IoU variant > ``lim`` with any target of the image.

    Parameters
    ----------
    boxes : torch.Tensor, shape (B, S, K, 6)
        Predicted corners.
    tboxes : torch.Tensor, shape (B, T, 6)
        Target corners.
    valid : torch.Tensor, shape (B, T), bool
    kind : str
        IoU variant.
    lim : float
        ``good_IoU_lim``.

    Returns
    -------
    torch.Tensor, shape (B, S, K), bool

    Notes
    -----
    Every IoU variant is ≤ the plain IoU, so for ``lim ≥ 0`` the plain IoU (cheap, no division) selects
    the candidate pairs and the variant is evaluated on those only.
    """
    b, s, k, _ = boxes.shape
    flat = boxes.reshape(b, s * k, 6)
    locked = torch.zeros(b * s * k, dtype=torch.bool, device=boxes.device)
    t = tboxes.shape[1]
    if t == 0:
        return locked.reshape(b, s, k)
    if lim < 0:  # negative limits: even disjoint boxes may pass, evaluate every pair
        chunk = max(1, _LOCK_CHUNK // max(1, b * s * k))
        out = locked.reshape(b, s * k)
        for t0 in range(0, t, chunk):  # memory chunks of targets, vectorised inside
            hit = iou(flat[:, :, None], tboxes[:, None, t0:t0 + chunk], kind) > lim
            out |= (hit & valid[:, None, t0:t0 + chunk]).any(dim=-1)
        return out.reshape(b, s, k)
    # lim ≥ 0 needs a positive overlap: dense test on x only, then sparse pairs
    bx0, bx1 = flat[..., 0].contiguous(), flat[..., 3].contiguous()            # (B, SK)
    tx0 = torch.where(valid, tboxes[..., 0], torch.full_like(tboxes[..., 0], math.inf)).contiguous()
    tx1 = torch.where(valid, tboxes[..., 3], torch.full_like(tboxes[..., 3], -math.inf)).contiguous()
    chunk = max(1, _LOCK_CHUNK // max(1, s * k * t))
    for b0 in range(0, b, chunk):  # memory chunks of images, vectorised inside
        sl = slice(b0, b0 + chunk)
        xo = torch.minimum(bx1[sl, :, None], tx1[sl, None, :]) > torch.maximum(bx0[sl, :, None], tx0[sl, None, :])
        bi, bj, tj = xo.nonzero(as_tuple=True)
        bi = bi + b0
        pb, pt = flat[bi, bj], tboxes[bi, tj]
        inter = (torch.minimum(pb[:, 3:], pt[:, 3:]) - torch.maximum(pb[:, :3], pt[:, :3])).clamp(min=0).prod(-1)
        union = (pb[:, 3:] - pb[:, :3]).prod(-1).abs() + (pt[:, 3:] - pt[:, :3]).prod(-1).abs() - inter
        hit = (inter > lim * union) & (union > 0)                                # plain IoU > lim
        if kind != "IoU":  # every variant ≤ IoU: evaluate it on the surviving pairs only
            idx = hit.nonzero(as_tuple=True)[0]
            hit[idx] = iou(pb[idx], pt[idx], kind) > lim
        locked[(bi * (s * k) + bj)[hit]] = True
    return locked.reshape(b, s, k)


def _first_true(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the first True along the last dim and whether any exists."""
    found = mask.any(dim=-1)
    return mask.to(torch.int8).argmax(dim=-1), found


def _random_free_box(free: torch.Tensor, generator, nb_box: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CIANNA's random box draw: up to ``2·nb_box`` uniform draws, first one not taken.

    free : (n, K) bool → (box index, found) each (n,).
    """
    n = free.shape[0]
    draws = torch.randint(0, nb_box, (n, 2 * nb_box), generator=generator, device="cpu").to(free.device)
    ok = torch.gather(free, 1, draws)
    first, found = _first_true(ok)
    return draws.gather(1, first[:, None])[:, 0], found


def _uniform(n: int, generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device="cpu").to(device)


def _smallest_prior_identity(priors: torch.Tensor, compat: bool) -> tuple[int, torch.Tensor]:
    """Smallest prior (min ‖p‖, first on ties) and which priors count as identical to it."""
    s = int(torch.argmin(priors.norm(dim=-1)))  # torch.argmin returns the first minimum
    k = priors.shape[0]
    if not compat:
        return s, (priors == priors[s]).all(dim=-1)
    flat = priors.reshape(-1)
    idx = 4 * torch.arange(k, device=priors.device)[:, None] + torch.arange(3, device=priors.device)
    inside = idx < flat.numel()  # V-1.0 reads past the table: treated as "not identical"
    vals = flat[idx.clamp(max=flat.numel() - 1)]
    return s, (inside & (vals == priors[s])).all(dim=-1)


def associate(boxes: torch.Tensor, objectness: torch.Tensor, targets: YoloTargets, config: YoloConfig,
              grid: torch.Tensor, cell_size: torch.Tensor, *, mode: str = "train",
              iteration: int | None = None, train_size: int = 1,
              generator: torch.Generator | None = None, lock: torch.Tensor | None = None) -> Association:
    """Associate targets with predicted boxes (``yolo.md`` §7.2).

    Parameters
    ----------
    boxes : torch.Tensor, shape (B, S, K, 6)
        Predicted corners in input pixels, computed with the **clamped** priors
        (:func:`cianna.detection.decode.predicted_boxes`).
    objectness : torch.Tensor, shape (B, S, K)
        Current objectness outputs (difficult-target test).
    targets : YoloTargets
        Padded targets (B, T).
    config : YoloConfig
    grid, cell_size : torch.Tensor, shape (3,)
        Grid size and input pixels per cell, ``(x, y, z)``.
    mode : {"train", "complete", "natural"}
    iteration : int, optional
        Training iteration counted from 1 (random start-up while ``iteration·train_size ≤
        rand_startup``); ``None`` disables the start-up phase.
    train_size : int
        Images per iteration.
    generator : torch.Generator, optional
        CPU generator for the random options (``mode="train"`` only).
    lock : torch.Tensor, shape (B, S, K), bool, optional
        Precomputed :func:`good_box_lock` (shared by the training and display passes).

    Returns
    -------
    Association
    """
    if mode not in ("train", "complete", "natural"):
        raise ValueError(f"mode must be 'train', 'complete' or 'natural', got {mode!r}")
    with torch.no_grad():
        return _associate(boxes.detach().float(), objectness.detach().float(), targets, config, grid,
                          cell_size, mode, iteration, train_size, generator, lock)


def _associate(boxes, objectness, targets, config, grid, cell_size, mode, iteration, train_size, generator, lock):
    dev = boxes.device
    b, s, k, _ = boxes.shape
    lim = config.iou_limits()
    kind = config.IoU_type
    priors = config.prior_tensor(clamped=True).to(dev)
    valid = targets.valid.to(dev)
    t_used = int(valid.any(dim=0).nonzero().max()) + 1 if valid.any() else 0
    valid = valid[:, :t_used]
    tb = targets.boxes.to(dev).float()[:, :t_used]
    difficult = targets.difficult.to(dev)[:, :t_used] if config.diff_flag else torch.zeros_like(valid, dtype=torch.long)
    class_only = targets.class_only.to(dev)

    target_index = torch.full((b, s, k), -1, dtype=torch.long, device=dev)
    iou_star = torch.zeros(b, s, k, device=dev)
    diff_out = torch.zeros(b, s, k, dtype=torch.long, device=dev)
    taken = torch.zeros(b, s, k, dtype=torch.bool, device=dev)
    locked1 = good_box_lock(boxes, tb, valid, kind, lim.good_IoU_lim) if lock is None else lock.to(dev)
    if t_used == 0:
        return Association(target_index, iou_star, locked1.long(), diff_out)

    cell, in_grid = target_cells(tb, valid, grid, cell_size)
    bidx = torch.arange(b, device=dev)[:, None].expand_as(cell)
    tidx = torch.arange(t_used, device=dev)[None, :].expand_as(cell)
    cell_boxes = boxes[bidx, cell]                                          # (B, T, K, 6)
    table = iou(cell_boxes, tb[:, :, None, :], kind)                         # (B, T, K)
    tsize = tb[..., 3:] - tb[..., :3]
    size_sm = config.slopes_and_maxes.size

    def dist_to_priors(sizes):
        return prior_distance(sizes, priors, config.prior_dist_type, iou_type=kind,
                              log_min=size_sm.min, log_max=size_sm.max)

    if config.strict_box_size > 0 and mode != "natural":
        eligible = strict_eligibility(dist_to_priors(tsize), config.strict_box_size,
                                      config.compat_zero_distance_quirk)
    else:
        eligible = torch.ones(b, t_used, k, dtype=torch.bool, device=dev)

    group = bidx * s + cell                                                  # (B, T) flat (image, cell)
    active = in_grid.clone()
    n_groups = b * s
    small_idx, identical = _smallest_prior_identity(priors, config.compat_prior_index_quirk)
    startup = mode == "train" and in_random_startup(config, iteration, train_size)
    per_group = torch.bincount(group[in_grid], minlength=n_groups)
    n_rounds = int(per_group.max()) if in_grid.any() else 0
    if startup:
        rank = _rank_in_group(group, in_grid, t_used)

    for rnd in range(n_rounds):  # greedy rounds: one target per (image, cell) and round
        if startup:
            sel = in_grid & (rank == rnd)
            bb, tt = sel.nonzero(as_tuple=True)
            if bb.numel() == 0:
                break
            free = ~taken[bb, cell[bb, tt]]
            kk, found = _random_free_box(free, generator, k)
            bb, tt, kk = bb[found], tt[found], kk[found]
        else:
            free = ~taken[bidx, cell]                                        # (B, T, K)
            masked = torch.where(active[..., None] & eligible & free, table, torch.full_like(table, -math.inf))
            val, kbest = masked.amax(dim=-1), masked.argmax(dim=-1)          # first max over boxes
            cand = val > -math.inf
            if not cand.any():
                break
            gmax = torch.full((n_groups,), -math.inf, device=dev).scatter_reduce(
                0, group[cand], val[cand], reduce="amax")
            best = cand & (val == gmax[group])
            tsel = torch.full((n_groups,), t_used, dtype=torch.long, device=dev).scatter_reduce(
                0, group[best], tidx[best], reduce="amin")
            g = (tsel < t_used).nonzero(as_tuple=True)[0]
            bb, tt = g // s, tsel[g]
            kk = kbest[bb, tt]
            if mode != "natural":
                kk = _options(kk, bb, tt, val[bb, tt], table, taken, cell, tsize, priors, small_idx, identical,
                              dist_to_priors, config, lim, mode, generator)
        active[bb, tt] = False
        cc = cell[bb, tt]
        score = iou(boxes[bb, cc, kk], tb[bb, tt], kind).clamp(max=0.98)
        score = torch.where(class_only[bb], torch.full_like(score, lim.good_IoU_lim), score)
        code = difficult[bb, tt]
        drop = code > 0
        if mode != "natural":
            drop &= (score < lim.diff_IoU_lim) | (objectness[bb, cc, kk] < lim.diff_obj_lim)
        keep = ~drop
        bb, cc, kk, tt = bb[keep], cc[keep], kk[keep], tt[keep]
        taken[bb, cc, kk] = True
        target_index[bb, cc, kk] = tt
        iou_star[bb, cc, kk] = score[keep]
        diff_out[bb, cc, kk] = code[keep]

    locked = torch.where(taken, torch.full_like(target_index, 2), locked1.long())
    return Association(target_index, iou_star, locked, diff_out)


def _rank_in_group(group: torch.Tensor, in_grid: torch.Tensor, t_used: int) -> torch.Tensor:
    """Position of each in-grid target among the targets of its (image, cell), in list order."""
    key = torch.where(in_grid, group * t_used + torch.arange(t_used, device=group.device), -1).reshape(-1)
    order = torch.argsort(key)
    sorted_g = torch.where(key[order] >= 0, key[order] // t_used, -1)
    first = torch.searchsorted(sorted_g, sorted_g)
    rank = torch.empty_like(key)
    rank[order] = torch.arange(key.numel(), device=key.device) - first
    return torch.where(in_grid, rank.reshape(group.shape), torch.full_like(group, -1))


def _options(kk, bb, tt, best_val, table, taken, cell, tsize, priors, small_idx, identical, dist_to_priors,
             config, lim, mode, generator):
    """Random box, smallest-prior forcing and best-theoretical-prior options (§7.2 step 4 a–c)."""
    n = kk.numel()
    if n == 0:
        return kk
    k = priors.shape[0]
    dev = kk.device
    free = ~taken[bb, cell[bb, tt]]                                          # (n, K)
    row = table[bb, tt]                                                      # (n, K)
    neg = torch.full_like(row, -math.inf)
    if mode == "train":
        use_rand = _uniform(n, generator, dev) < config.rand_prob
        u_best = _uniform(n, generator, dev) < config.rand_prob_best_box_assoc
        if use_rand.any():
            rk, found = _random_free_box(free, generator, k)
            kk = torch.where(use_rand & found, rk, kk)
    else:
        use_rand = torch.zeros(n, dtype=torch.bool, device=dev)
        u_best = use_rand
    ts = tsize[bb, tt]
    if config.min_prior_forced_scaling > 0:
        small = (ts < config.min_prior_forced_scaling * priors[small_idx]).all(dim=-1) & ~use_rand
    else:
        small = torch.zeros(n, dtype=torch.bool, device=dev)
    if small.any():
        cand = torch.where(identical[None, :] & free, row, neg)
        v, fk = cand.amax(dim=-1), cand.argmax(dim=-1)
        kk = torch.where(small & (v > -math.inf), fk, kk)
    reassoc = ~use_rand & ~small & ((best_val < lim.low_IoU_best_box_assoc) | u_best)
    if reassoc.any():
        dist = dist_to_priors(ts)                                            # (n, K)
        near = (dist - dist.amin(dim=-1, keepdim=True)).abs() < 1e-3
        cand = torch.where(near & free, row, neg)
        v, bk = cand.amax(dim=-1), cand.argmax(dim=-1)
        kk = torch.where(reassoc & (v > -math.inf), bk, kk)
    return kk
