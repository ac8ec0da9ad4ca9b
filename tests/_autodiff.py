"""The one backend-specific helper of the tests: a gradient of a scalar function."""

import keras
import numpy as np


def value_and_grad(fn, x: np.ndarray):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        v = tf.Variable(x)
        with tf.GradientTape() as tape:
            value = fn(v)
        return np.asarray(value), np.asarray(tape.gradient(value, v))
    if backend == "jax":
        import jax

        value, grad = jax.value_and_grad(fn)(x)
        return np.asarray(value), np.asarray(grad)
    if backend == "torch":
        import torch

        t = torch.tensor(x, requires_grad=True)
        value = fn(t)
        value.backward()
        return value.detach().numpy(), t.grad.numpy()
    raise NotImplementedError(backend)
