"""Tests of cianna.detection.tiling: geometry, tile iterator, tiled prediction vs a full-image pass."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cianna.detection.boxes import as_3d
from cianna.detection.nms import ladder_thresholds, non_max_suppression
from cianna.detection.tiling import iter_tiles, merge_tile_borders, predict_tiled, tile_grid


def local_max_detector(threshold=0.5, margin=6, half=4.0):
    """Translation-equivariant fake detector: a box of side ``2·half`` around every local maximum above
    ``threshold`` that is at least ``margin`` pixels inside the tile; score = peak value."""
    def predict(tiles):
        x = tiles[:, 0]
        d = x.dim() - 1
        pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[d - 1](x[:, None], 3, 1, 1)[:, 0]
        peak = (x == pool) & (x > threshold)
        inner = torch.zeros_like(peak)
        inner[(slice(None),) + (slice(margin, -margin),) * d] = True
        peak &= inner
        out = []
        for b in range(len(x)):
            idx = peak[b].nonzero()
            centre = idx.flip(-1).double() + 0.5  # CIANNA convention: pixel i centred at i + 0.5
            lo = torch.zeros(len(idx), 3, dtype=torch.float64)
            hi = torch.ones(len(idx), 3, dtype=torch.float64)
            lo[:, :d], hi[:, :d] = centre - half, centre + half
            out.append((torch.cat([lo, hi], 1), x[b][peak[b]], centre[:, :1]))
        return out
    return predict


def point_sources(shape, n, seed, edge=10, min_sep=14.0, sigma=1.3):
    """Gaussian point sources (random sub-pixel positions and peaks) on a zero background."""
    g = np.random.default_rng(seed)
    img, pos = np.zeros(shape, np.float32), []
    while len(pos) < n:
        p = g.uniform(edge, np.array(shape) - edge)
        if all(np.linalg.norm(p - q) > min_sep for q in pos):
            pos.append(p)
    r = int(np.ceil(5 * sigma))
    for p in pos:
        win = tuple(slice(max(int(c) - r, 0), min(int(c) + r + 1, s)) for c, s in zip(p, shape))
        grids = np.meshgrid(*[np.arange(w.start, w.stop, dtype=np.float32) for w in win], indexing="ij")
        r2 = sum((gr - pc) ** 2 for gr, pc in zip(grids, p))
        img[win] += g.uniform(1, 5) * np.exp(-r2 / (2 * sigma ** 2)).astype(np.float32)
    return img


def full_pass(img, predict, nms_threshold=0.3):
    boxes, scores, extra = predict(torch.from_numpy(img)[None, None])[0]
    keep = non_max_suppression(boxes, scores, nms_threshold, kind="DIoU")
    return boxes[keep].float(), scores[keep].float()


def as_set(boxes, scores):
    rows = torch.cat([boxes.float(), scores.float()[:, None]], 1).tolist()
    assert len(rows) == len({tuple(r) for r in rows})
    return sorted(map(tuple, rows))


def test_sdc1_geometry():
    g = tile_grid((32768, 32768), 512, 32)
    assert g.stride == (480, 480) and g.offset == (192, 192) and g.counts == (69, 69) and len(g) == 4761
    starts = g.starts()
    assert starts[0].tolist() == [-192, -192] and starts[1].tolist() == [-192, 288]  # j·480 − 192
    assert starts[-1].tolist() == [68 * 480 - 192] * 2
    assert [16384 - 256] * 2 in starts.tolist()  # one tile centred on the image
    assert tile_grid((1000,), 100, 10, origin="start").starts()[:, 0].tolist()[:3] == [0, 90, 180]
    assert tile_grid((1000,), 100, 10, origin=40).starts()[0].tolist() == [-40]
    with pytest.raises(ValueError):
        tile_grid((100, 100), 32, 32)


@pytest.mark.parametrize("shape,tile,overlap,origin", [
    ((333,), (64,), (16,), "centered"), ((300, 257), (64, 50), (16, 10), "centered"),
    ((37, 90, 61), (16, 32, 32), (4, 8, 0), "start"), ((50, 70), (64, 64), (8, 8), "centered"),
    ((200, 200), (48, 48), (12, 12), (5, 30))])
def test_tiles_cover_minimally(shape, tile, overlap, origin):
    g = tile_grid(shape, tile, overlap, origin)
    starts = g.starts().numpy()
    assert len(starts) == len(g) == np.prod(g.counts)
    for ax, (s, t, o) in enumerate(zip(shape, tile, overlap)):
        first = np.unique(starts[:, ax])
        assert np.all(np.diff(first) == t - o)
        assert first[0] <= 0 and first[-1] + t >= s  # covers the axis
        assert len(first) == 1 or first[-2] + t < s  # the last tile is needed
    cover = np.zeros(shape, bool)
    for st in starts:
        cover[tuple(slice(max(a, 0), max(a + t, 0)) for a, t in zip(st, tile))] = True
    assert cover.all()


def test_iter_tiles_reassembles_with_nan_and_memmap(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(2, 70, 90)).astype(np.float32)
    data[:, 10:14, 20:25] = np.nan
    data[1, 40, 40] = np.inf
    mm = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.float32, shape=data.shape)
    mm[:] = data
    mm.flush()
    arr = np.load(tmp_path / "a.npy", mmap_mode="r")
    g = tile_grid((70, 90), (32, 40), (8, 8))
    pad = 64
    clean = np.zeros((2, 70 + 2 * pad, 90 + 2 * pad), np.float32)
    clean[:, pad:-pad, pad:-pad] = np.where(np.isfinite(data), data, 0.0)
    ok = np.zeros(clean.shape[1:], bool)
    ok[pad:-pad, pad:-pad] = np.isfinite(data).all(axis=0)
    seen = []
    for batch in iter_tiles(arr, g, batch_size=3):
        assert batch.tiles.shape[0] <= 3 and batch.tiles.shape[1:] == (2, 32, 40)
        for tile, valid, st in zip(batch.tiles.numpy(), batch.valid.numpy(), batch.starts.tolist()):
            win = (slice(st[0] + pad, st[0] + pad + 32), slice(st[1] + pad, st[1] + pad + 40))
            assert np.array_equal(tile, clean[(slice(None),) + win])  # zero-filled outside, NaN/inf -> 0
            assert np.array_equal(valid, ok[win])
        seen += batch.index.tolist()
    assert seen == list(range(len(g)))
    assert g.starts().min() < 0  # some tiles stick out of the array
    # a grid far larger than the image: empty tiles are skipped
    big = tile_grid((70, 90), (16, 16), (0, 0), origin=(64, 64))
    n_yield = sum(len(b.index) for b in iter_tiles(arr, big, 8))
    assert n_yield < len(big) == sum(len(b.index) for b in iter_tiles(arr, big, 8, skip_empty=False))


def test_global_coordinates_round_trip():
    img = np.zeros((96, 96), np.float32)
    img[37, 61] = 3.0  # 0-based FITS pixel (x=61, y=37)
    det = predict_tiled(img, local_max_detector(margin=2), (32, 32), (12, 12), progress=False)
    assert len(det) == 1
    assert det.pixel_centres()[0].tolist() == [61.0, 37.0, 0.0]
    assert det.boxes[0].tolist() == [61.5 - 4, 37.5 - 4, 0, 61.5 + 4, 37.5 + 4, 1]
    raw = predict_tiled(img, local_max_detector(margin=2), (32, 32), (12, 12), progress=False,
                        border_threshold=None)
    assert len(raw) > 1 and torch.all(raw.boxes == det.boxes[0])  # same global box from every tile


def sdc1_ladder(boxes, scores, extra):
    return ladder_thresholds(scores / 5.0)  # peak values in [1, 5] -> objectness-like [0.2, 1]


@pytest.mark.parametrize("tile,overlap,origin,nms", [((128, 128), (32, 32), "centered", 0.3),
                                                      ((100, 90), (24, 20), "centered", 0.3),
                                                      ((96, 128), (16, 40), (40, 10), sdc1_ladder)])
def test_tiled_equals_full_image_2d(tile, overlap, origin, nms):
    img = point_sources((512, 512), 260, seed=1)
    predict = local_max_detector(margin=6)
    boxes, scores, extra = predict(torch.from_numpy(img)[None, None])[0]
    thr = nms(boxes, scores, extra) if callable(nms) else nms
    keep = non_max_suppression(boxes, scores, thr, kind="DIoU")
    ref = as_set(boxes[keep], scores[keep])
    det = predict_tiled(img, predict, tile, overlap, origin=origin, batch_size=5, progress=False,
                        nms_threshold=nms)
    assert as_set(det.boxes, det.scores) == ref
    assert det.extra.shape == (len(det), 1)
    assert torch.all(det.scores[:-1] >= det.scores[1:])
    raw = predict_tiled(img, predict, tile, overlap, origin=origin, batch_size=5, progress=False,
                        border_threshold=None)
    assert len(raw) > len(ref) + 20  # there were border duplicates to remove


def test_tiled_equals_full_cube_3d():
    cube = point_sources((40, 72, 80), 40, seed=2, edge=6, min_sep=10.0)
    predict = local_max_detector(margin=4, half=3.0)
    ref = as_set(*full_pass(cube, predict))
    det = predict_tiled(cube, predict, (24, 32, 32), (8, 10, 8), batch_size=4, progress=False)
    assert as_set(det.boxes, det.scores) == ref and len(ref) == 40
    raw = predict_tiled(cube, predict, (24, 32, 32), (8, 10, 8), progress=False, border_threshold=None)
    assert len(raw) > len(ref)


def test_nan_regions_and_progress_bar(capsys):
    img = point_sources((160, 160), 20, seed=3)
    predict = local_max_detector(margin=4)
    ref = as_set(*full_pass(img, predict))
    bad = img.copy()
    bad[:, :6] = np.nan  # blank edge columns (no source there: edge = 10)
    det = predict_tiled(bad[None], predict, (64, 64), (16, 16), progress=True)
    assert as_set(det.boxes, det.scores) == ref
    assert "tile" in capsys.readouterr().err


def test_detections_on_invalid_pixels_dropped():
    def centre_box(tiles):  # one box centred on tile pixel (y=20, x=30) in every tile
        box = torch.tensor([[26.5, 16.5, 0, 34.5, 24.5, 1]])
        return [(box, torch.ones(1), None) for _ in range(len(tiles))]

    img = np.ones((100, 100), np.float32)
    g = tile_grid((100, 100), 64, 16)
    centres = g.starts() + torch.tensor([20, 30])
    inside = ((centres >= 0) & (centres < 100)).all(dim=1)
    assert 1 < int(inside.sum()) < len(g)
    y, x = centres[inside][0].tolist()
    img[y, x] = np.nan
    kw = dict(progress=False, border_threshold=None, nms_threshold=None, clip_to_array=False)
    # centres on the NaN pixel or outside the array are invalid
    assert len(predict_tiled(img, centre_box, 64, 16, **kw)) == int(inside.sum()) - 1
    assert len(predict_tiled(img, centre_box, 64, 16, drop_invalid=False, **kw)) == len(g)
    kw["clip_to_array"] = True
    assert len(predict_tiled(img, centre_box, 64, 16, drop_invalid=False, **kw)) == int(inside.sum())


def test_merge_tile_borders_rules():
    g = tile_grid((200,), 100, 20, origin="start")  # tiles [0, 100) and [80, 180), [160, 260)
    boxes = torch.tensor([[50.0, 0, 0, 60, 1, 1],     # tile 0 core
                          [84.0, 0, 0, 94, 1, 1],     # tile 0 border
                          [85.0, 0, 0, 95, 1, 1],     # tile 1 border, higher score -> wins
                          [55.0, 0, 0, 58, 1, 1]])    # tile 1 box overlapping the core box of tile 0
    scores = torch.tensor([0.2, 0.5, 0.6, 0.9])
    keep = merge_tile_borders(boxes, scores, torch.tensor([0, 0, 1, 1]), g, threshold=-0.15)
    assert keep.tolist() == [True, False, True, True]
    # equal scores: the copy farther from its tile edge wins
    # (box 1 is 11 px from its tile edge, box 2 only 10 px)
    keep = merge_tile_borders(boxes[1:3], torch.tensor([0.5, 0.5]), torch.tensor([0, 1]), g)
    assert keep.tolist() == [True, False]


def test_real_yolo_network_tiled_equals_full_image():
    """A fully convolutional cianna YOLO network (zero biases, so zero-filled borders act as zero padding)
    gives the same detections tiled as in one full-image pass once the tile cells whose receptive field
    crosses the tile edge are dropped (3 cells = 12 px > receptive-field radius)."""
    from cianna.detection.config import YoloConfig
    from cianna.detection.decode import decode_predictions
    from cianna.detection.yolo_activation import YoloActivation
    from cianna.nn import Network

    cfg = YoloConfig(nb_box=1, priors=[[12.0], [12.0]], IoU_type="DIoU", prior_dist_type="OFFSET")

    def build(size):
        net = Network((1, size, size), seed=0)
        return net.conv(4, 3, padding=1).pool(2).conv(8, 3, padding=1).pool(2).conv(
            8, 1, activation=YoloActivation(cfg))

    full_net = build(512)
    g = torch.Generator().manual_seed(0)
    convs = [layer for layer in full_net.layers if layer.kind == "conv"]
    with torch.no_grad():
        for layer in convs:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.2)
            layer.bias_weight.zero_()
        for layer in convs[:2]:  # channel 0 carries the image; other channels random
            layer.weight[0].zero_()
            layer.weight[0, 0, 1, 1] = 1.0
        convs[2].weight[7].zero_()
        convs[2].weight[7, 0] = 1.0  # objectness = sigmoid(max-pooled image), unsaturated: no score ties
    tile_net = build(128)
    tile_net.load_state_dict(full_net.state_dict())

    def detect(net, x, margin_cells):
        out = net(x)
        res = decode_predictions(out, cfg, x.shape[2:], score_threshold=0.75, pixel_convention="cianna")
        n = out.shape[-1]
        keep = [((r["cell"][:, :2] >= margin_cells) & (r["cell"][:, :2] < n - margin_cells)).all(1) for r in res]
        return [(r["boxes"][k], r["scores"][k], r["cell"][k]) for r, k in zip(res, keep)]

    img = point_sources((512, 512), 60, seed=4, edge=24, min_sep=40.0)
    with torch.no_grad():
        boxes, scores, _ = detect(full_net, torch.from_numpy(img)[None, None], 0)[0]
    keep = non_max_suppression(boxes, scores, -0.3, kind="DIoU")
    ref_b, ref_s = as_3d(boxes[keep]).double(), scores[keep].double()
    kw = dict(nms_threshold=-0.3, border_threshold=-0.3, batch_size=6, progress=False)
    det = predict_tiled(img, lambda x: detect(tile_net, x, 3), 128, 32, **kw)
    raw = predict_tiled(img, lambda x: detect(tile_net, x, 3), 128, 32, **{**kw, "border_threshold": None})
    assert len(det) == len(ref_s) >= 50 and len(raw) > len(det) + 10
    j = torch.cdist(ref_b[:, :2], det.boxes[:, :2].double()).argmin(dim=1)
    assert sorted(j.tolist()) == list(range(len(j)))
    assert torch.allclose(det.boxes[j].double(), ref_b, atol=1e-3)
    assert torch.allclose(det.scores[j].double(), ref_s, atol=1e-6)


@pytest.mark.parametrize("threshold,kind", [(-0.15, "DIoU"), (0.2, "IoU")])
def test_merge_tile_borders_matches_bruteforce(threshold, kind):
    from cianna.detection.boxes import pairwise_iou
    g = tile_grid((900, 700), (256, 200), (48, 40))
    gen = torch.Generator().manual_seed(1)
    n = 1000
    tile = torch.randint(0, len(g), (n,), generator=gen)
    size_xy = torch.tensor(g.tile_size[::-1], dtype=torch.float64)
    centre = g.starts_xyz()[tile, :2] + torch.rand(n, 2, generator=gen, dtype=torch.float64) * size_xy
    half = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 18 + 2
    boxes = torch.zeros(n, 6, dtype=torch.float64)
    boxes[:, :2], boxes[:, 3:5], boxes[:, 5] = centre - half, centre + half, 1.0
    scores = torch.rand(n, generator=gen, dtype=torch.float64)
    keep = merge_tile_borders(boxes, scores, tile, g, threshold=threshold, kind=kind)
    lo = boxes[:, :2] - g.starts_xyz()[tile, :2]
    hi = boxes[:, 3:5] - g.starts_xyz()[tile, :2]
    margin = torch.tensor(g.overlap[::-1], dtype=torch.float64)
    core = ((lo > margin) & (hi < size_xy - margin)).all(dim=1)
    hit = (pairwise_iou(boxes, boxes, kind) > threshold) & (tile[:, None] != tile[None, :])
    beaten = (hit & (scores[None, :] > scores[:, None])).any(dim=1)  # row i beaten by a better column j
    ref = core | ~beaten
    assert torch.equal(keep, ref)
    assert 30 < int((~ref).sum()) and int(core.sum()) > 100


def test_tiled_equals_full_spectrum_1d():
    spec = point_sources((3000,), 80, seed=5, min_sep=14.0)
    predict = local_max_detector(margin=6)
    ref = as_set(*full_pass(spec, predict))
    det = predict_tiled(spec, predict, 256, 40, batch_size=4, progress=False)
    assert as_set(det.boxes, det.scores) == ref and len(ref) == 80
    assert torch.all(det.boxes[:, [1, 2]] == 0) and torch.all(det.boxes[:, [4, 5]] == 1)
