"""Checkpoints: round trip, bit-for-bit resume, corrupted files, bad inputs."""
import numpy as np
import pytest
import torch

import cianna
from cianna.nn import Network
from cianna.train import ArrayDataset, CheckpointError, Trainer, load_network, read_checkpoint


def data(seed=0, n=48):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1, 8, 8)).astype(np.float32)
    labels = (x[:, 0, :4].mean(axis=(1, 2)) > 0).astype(int) + (x[:, 0, 4:].mean(axis=(1, 2)) > 0)
    return ArrayDataset.from_labels(x, labels, 3, name="TRAIN")


def net(seed=0):
    n = Network((1, 8, 8), seed=seed)
    return n.conv(4, 3, padding=1).norm(2).pool(2).dense(12, drop_rate=0.3).dense(3, activation="SMAX")


def trainer(network, out_dir=None):
    return Trainer(network, learning_rate=0.02, momentum=0.9, weight_decay=1e-3, lr_decay=0.1, batch_size=8,
                   shuffle_every=1, out_dir=out_dir, silent=1, seed=7)


def test_save_load_round_trip_gives_identical_predictions(tmp_path):
    n = net()
    trainer(n).fit(data(), nb_iter=2)
    x = data(1).inputs
    before = n.predict(x).mean
    path = n.save(tmp_path / "model.safetensors")
    loaded = cianna.load(path)
    assert loaded.config() == n.config()
    np.testing.assert_array_equal(loaded.predict(x).mean, before)


def test_kill_and_resume_reproduces_the_uninterrupted_run(tmp_path):
    full = trainer(net())
    curve_full = [r["train_loss"] for r in full.fit(data(), nb_iter=6)]
    first = trainer(net(), out_dir=tmp_path)
    first.save_every = 3
    curve_a = [r["train_loss"] for r in first.fit(data(), nb_iter=3)]
    del first  # "killed" after the checkpoint of iteration 3
    resumed = trainer(net(seed=123)).load_checkpoint(tmp_path / "checkpoints" / "iter_0003.safetensors")
    assert resumed.iteration == 3
    curve_b = [r["train_loss"] for r in resumed.fit(data(), nb_iter=3)]
    assert curve_a + curve_b == curve_full  # bit for bit
    for a, b in zip(full.network.state_dict().values(), resumed.network.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_contains_training_state(tmp_path):
    t = trainer(net())
    t.fit(data(), nb_iter=1)
    t.save_checkpoint(tmp_path / "c.safetensors")
    arch, state, tensors = read_checkpoint(tmp_path / "c.safetensors")
    assert state["iteration"] == 1 and state["momentum"] == 0.9
    assert any(k.startswith("optim.") for k in tensors) and "rng.trainer" in tensors
    assert arch["layers"][0]["type"] == "conv"
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temporary file


def test_truncated_checkpoint_gives_clear_error(tmp_path):
    path = net().save(tmp_path / "m.safetensors")
    blob = path.read_bytes()
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        load_network(bad)


def test_corrupted_checkpoint_gives_clear_error(tmp_path):
    path = net().save(tmp_path / "m.safetensors")
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0xFF  # flip bits in the last weight
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="flipped.safetensors.*checksum"):
        load_network(bad)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        load_network(garbage)


def test_missing_file_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.safetensors"):
        cianna.load(tmp_path / "nothere.safetensors")


# --------------------------------------------------------------------------- bad input
def test_wrong_input_shape_is_explained():
    with pytest.raises(ValueError, match=r"shape \(N, 1, 8, 8\) or \(N, 64\)"):
        net()(torch.zeros(2, 1, 9, 9))


def test_nan_in_data_is_rejected():
    x = np.zeros((4, 1, 8, 8), dtype=np.float32)
    x[2, 0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="inputs of dataset TRAIN contain NaN.*index 2"):
        ArrayDataset(x, np.zeros((4, 3)), name="TRAIN")
    with pytest.raises(ValueError, match="NaN"):
        net().predict(x)


def test_unknown_activation_name():
    with pytest.raises(ValueError, match="unknown activation 'SOFTPLUS'"):
        Network((4,)).dense(3, activation="SOFTPLUS")


def test_bad_layer_parameters():
    with pytest.raises(ValueError, match="kernel_size"):
        Network((1, 8, 8)).conv(4, (3, 3, 3))
    with pytest.raises(ValueError, match="two consecutive pool"):
        Network((1, 8, 8)).pool(2).pool(2)
    with pytest.raises(ValueError, match="only allowed on the output layer"):
        Network((4,)).dense(3, activation="SMAX").dense(2)
    with pytest.raises(ValueError, match="input_shape"):
        Network((4,)).dense(16).conv(2, 3)
