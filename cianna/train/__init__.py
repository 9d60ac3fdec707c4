"""Training, evaluation, prediction and checkpoints."""
from cianna.train.checkpoint import CheckpointError, load_network, read_checkpoint, save_checkpoint
from cianna.train.confusion import confusion_matrix, format_confusion
from cianna.train.data import ArrayDataset, StreamingDataset
from cianna.train.optim import CiannaSGD, cianna_learning_rate
from cianna.train.precision import CiannaUserWarning, resolve_device, resolve_precision
from cianna.train.predict import Prediction, predict
from cianna.train.trainer import DivergenceError, Evaluation, Trainer

__all__ = ["Trainer", "Evaluation", "DivergenceError", "ArrayDataset", "StreamingDataset", "CiannaSGD",
           "cianna_learning_rate", "predict", "Prediction", "save_checkpoint", "read_checkpoint", "load_network",
           "CheckpointError", "confusion_matrix", "format_confusion", "resolve_device", "resolve_precision",
           "CiannaUserWarning"]
