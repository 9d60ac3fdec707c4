"""YOLO-CIANNA detection in 1D, 2D and 3D: box geometry, configuration, output activation, association
("matcher"), loss, decoding, non-maximum suppression, tiled prediction and evaluation metrics.

One concept per module (``yolo.md``):

* :mod:`~cianna.detection.boxes` — corner/centre conversions, IoU, GIoU, DIoU, DIoU2, prior distances;
* :mod:`~cianna.detection.config` — :class:`YoloConfig` mirroring CIANNA's ``set_yolo_params``;
* :mod:`~cianna.detection.yolo_activation` — :class:`YoloActivation`, the output layer activation and loss;
* :mod:`~cianna.detection.targets` — target rows and target encoding from catalogues;
* :mod:`~cianna.detection.association` — CIANNA's association process with all its options;
* :mod:`~cianna.detection.loss` — :class:`YoloLoss`, per-part deltas and displayed losses;
* :mod:`~cianna.detection.decode` — raw outputs to boxes, scores and parameters;
* :mod:`~cianna.detection.nms` — N-D non-maximum suppression;
* :mod:`~cianna.detection.tiling` — tiled prediction with overlap and two-stage NMS;
* :mod:`~cianna.detection.metrics` — matching, precision-recall, average precision.
"""
from cianna.detection.boxes import as_3d, centers_to_corners, corners_to_centers, iou, pairwise_iou
from cianna.detection.config import YoloConfig
from cianna.detection.decode import cianna_forward_output, decode_predictions
from cianna.detection.loss import YoloLoss
from cianna.detection.metrics import (average_precision, completeness_purity, match_detections,
                                      mean_average_precision, precision_recall_curve)
from cianna.detection.nms import ladder_thresholds, non_max_suppression
from cianna.detection.targets import encode_targets, rows_from_targets, targets_from_rows
from cianna.detection.tiling import iter_tiles, merge_tile_borders, predict_tiled, tile_grid
from cianna.detection.yolo_activation import YoloActivation

__all__ = ["as_3d", "centers_to_corners", "corners_to_centers", "iou", "pairwise_iou", "YoloConfig",
           "YoloActivation", "YoloLoss", "encode_targets", "rows_from_targets", "targets_from_rows",
           "cianna_forward_output", "decode_predictions", "non_max_suppression", "ladder_thresholds",
           "tile_grid", "iter_tiles", "predict_tiled", "merge_tile_borders", "match_detections",
           "precision_recall_curve", "average_precision", "mean_average_precision", "completeness_purity"]
