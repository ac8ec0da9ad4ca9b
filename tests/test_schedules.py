import keras
import numpy as np
import pytest

import keras_gss as gss
from tests.conftest import compile_classifier, mlp


def test_attention_warmup_ramps_strength_and_restores_it(toy_data):
    x, y = toy_data
    model = compile_classifier(gss.attach(mlp(), gss.GuidedStructuredSparsity(1e-3, 0.04)))
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(self.model.layers[0].kernel.regularizer.variance)

    model.fit(x, y, epochs=3, verbose=0, callbacks=[gss.AttentionWarmup(2), Spy()])
    np.testing.assert_allclose(seen, [0.02, 0.04, 0.04])
    assert model.layers[0].kernel.regularizer.variance == 0.04


def test_warmup_changes_the_trained_loss(toy_data):
    x, y = toy_data
    model = compile_classifier(gss.attach(mlp(), gss.GuidedStructuredSparsity(0.0, 1.0)))
    history = model.fit(x, y, epochs=1, verbose=0, callbacks=[gss.AttentionWarmup(100)])
    model2 = compile_classifier(gss.attach(mlp(), gss.GuidedStructuredSparsity(0.0, 1.0)))
    history2 = model2.fit(x, y, epochs=1, verbose=0)
    assert history.history["loss"][0] < history2.history["loss"][0]


def test_bad_warmup():
    with pytest.raises(ValueError, match="`warmup_epochs`"):
        gss.AttentionWarmup(0)
