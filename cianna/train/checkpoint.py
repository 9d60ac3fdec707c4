"""Native checkpoints: tensors in safetensors, architecture and training state as JSON (no pickle).

One file holds everything: the safetensors header metadata carries the JSON architecture
(:meth:`Network.config`), the JSON trainer state (iteration, hyper-parameters) and a SHA-256 of the tensor
bytes; the tensors are the weights, the optimiser momentum buffers, the random-generator states and the
training-set order. Files are written atomically (temporary file in the same folder, then
:func:`os.replace`), so an interrupted save never leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from cianna import __version__

__all__ = ["CheckpointError", "save_checkpoint", "read_checkpoint", "load_network", "atomic_write"]

FORMAT = "cianna-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted or not a cianna checkpoint."""


def atomic_write(path, write_fn, *, mode: str = "wb") -> Path:
    """Write a file atomically: ``write_fn(file_object)`` fills a temporary file, then it is renamed.

    Parameters
    ----------
    path : str or pathlib.Path
        Destination; its folder is created if needed.
    write_fn : callable
        Called with an open file object (binary when ``mode="wb"``, text when ``mode="w"``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _digest(tensors: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(path, network, *, state: dict | None = None, tensors: dict | None = None) -> Path:
    """Save a network (and optionally a training state) to one safetensors file, atomically.

    Parameters
    ----------
    path : str or pathlib.Path
    network : cianna.nn.Network
    state : dict, optional
        JSON-serialisable training state (iteration counter, hyper-parameters...).
    tensors : dict of str to torch.Tensor, optional
        Extra tensors (optimiser buffers, RNG states, data order), stored under their own names.
    """
    from safetensors.torch import save

    all_tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    for k, v in (tensors or {}).items():
        all_tensors[k] = v.detach().cpu().contiguous()
    metadata = {"format": FORMAT, "cianna_version": __version__,
                "architecture": json.dumps(network.config()), "state": json.dumps(state),
                "sha256": _digest(all_tensors)}
    blob = save(all_tensors, metadata=metadata)
    return atomic_write(path, lambda f: f.write(blob))


def read_checkpoint(path):
    """Read a checkpoint file.

    Returns
    -------
    architecture : dict
    state : dict or None
    tensors : dict of str to torch.Tensor

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    CheckpointError
        The file is truncated, corrupted (checksum mismatch) or not a cianna checkpoint; the message names it.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        tensors = {}
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except Exception as exc:  # safetensors raises its own error types on truncated/garbled files
        raise CheckpointError(f"{path}: not a readable cianna checkpoint (truncated or corrupted?): {exc}") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cianna checkpoint (format {metadata.get('format')!r}, "
                              f"expected {FORMAT!r})")
    if _digest(tensors) != metadata.get("sha256"):
        raise CheckpointError(f"{path}: checksum mismatch, the file is corrupted")
    try:
        architecture = json.loads(metadata["architecture"])
        state = json.loads(metadata.get("state", "null"))
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable architecture/state metadata: {exc}") from None
    return architecture, state, tensors


def load_network(path):
    """Rebuild a :class:`~cianna.nn.Network` with its weights from a checkpoint file.

    Raises
    ------
    FileNotFoundError, CheckpointError
    """
    from cianna.nn.network import Network

    architecture, _, tensors = read_checkpoint(path)
    try:
        net = Network.from_config(architecture)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the stored architecture: {exc}") from None
    return net
