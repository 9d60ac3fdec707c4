"""CIANNA's MNIST example in the original interface, run through ``cianna.compat``.

Only two things differ from a script written for the original CIANNA V-1.0:

* the import line (``import CIANNA as cnn`` → ``import cianna.compat as cnn``), and
* the data loading: scikit-learn's 8×8 digits up-sampled and padded to 28×28
  (:func:`cianna.demo.load_digits_28`) instead of the MNIST files (no network access needed).

The network, training and forward calls are those of the example (``framework.md`` §12): conv 5×5×8 pad 2
→ max-pool → conv 5×5×16 pad 2 → max-pool → dense 256 (dropout 0.5) → dense 128 (dropout 0.2) → dense 10
softmax, ``train(nb_iter=20, learning_rate=0.004, momentum=0.8, confmat=1, save_every=10)``. It writes
``net_save/net0_s0010.dat``, ``net_save/net0_s0020.dat``, ``fwd_res/net0_0020.dat`` and ``error.txt`` in the
working directory.

Environment variable ``CIANNA_EXAMPLE_NB_ITER`` overrides the number of iterations (tests use it to stay
fast); ``save_every`` is then half of it.
"""
import os

import numpy as np

import cianna.compat as cnn  # was: import CIANNA as cnn
from cianna.demo import load_digits_28  # was: reading the MNIST files

nb_iter = int(os.environ.get("CIANNA_EXAMPLE_NB_ITER", 20))
save_every = max(nb_iter // 2, 1)


# ---- data loading (changed: scikit-learn digits, 28x28, one-hot targets) ----
def i_ar(int_list):
    return np.array(int_list, dtype="int")


def f_ar(float_list):
    return np.array(float_list, dtype="float32")


data = load_digits_28(seed=0)


def flat_and_onehot(split):
    x, labels = data[split]
    inputs = f_ar(x.reshape(x.shape[0], -1))  # (N, 1*28*28): channel-first flat rows
    targets = np.zeros((x.shape[0], 10), dtype="float32")
    targets[np.arange(x.shape[0]), labels] = 1.0
    return inputs, targets


data_train, target_train = flat_and_onehot("train")
data_valid, target_valid = flat_and_onehot("valid")
data_test, target_test = flat_and_onehot("test")
nb_train, nb_valid, nb_test = data_train.shape[0], data_valid.shape[0], data_test.shape[0]

# ---- unchanged part of the example ----
cnn.init(in_dim=i_ar([28, 28]), in_nb_ch=1, out_dim=10, bias=0.1, b_size=16, comp_meth="C_CUDA",
         dynamic_load=1, mixed_precision="FP32C_FP32A")

cnn.create_dataset("TRAIN", nb_train, data_train, target_train)
cnn.create_dataset("VALID", nb_valid, data_valid, target_valid)
cnn.create_dataset("TEST", nb_test, data_test, target_test)

cnn.conv(f_size=i_ar([5, 5]), nb_filters=8, padding=i_ar([2, 2]), activation="RELU")
cnn.pool(p_size=i_ar([2, 2]), p_type="MAX")
cnn.conv(f_size=i_ar([5, 5]), nb_filters=16, padding=i_ar([2, 2]), activation="RELU")
cnn.pool(p_size=i_ar([2, 2]), p_type="MAX")
cnn.dense(nb_neurons=256, activation="RELU", drop_rate=0.5)
cnn.dense(nb_neurons=128, activation="RELU", drop_rate=0.2)
cnn.dense(nb_neurons=10, strict_size=1, activation="SMAX")

cnn.train(nb_iter=nb_iter, learning_rate=0.004, momentum=0.8, confmat=1, save_every=save_every)
cnn.perf_eval()

cnn.forward(repeat=1, drop_mode="AVG_MODEL")

# ---- read back the forward file like the original example's analysis ----
pred = np.loadtxt(f"fwd_res/net0_{nb_iter:04d}.dat")[:, :10]
accuracy = float(np.mean(np.argmax(pred, axis=1) == np.argmax(target_test, axis=1)))
print(f"Test accuracy: {100 * accuracy:.2f} %")
