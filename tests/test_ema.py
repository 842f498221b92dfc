"""The moving average of the weights: its update rule, its warm-up, swapping it in, saving it."""

from __future__ import annotations

import numpy as np
import pytest

import tinyvit
from tinyvit.ema import ModelEMA


def small_model():
    tinyvit.manual_seed(0)
    return tinyvit.ViT(16, 8, 3, dim=8, depth=1, heads=2, mlp_dim=16)


def test_the_update_is_the_documented_average():
    model = small_model()
    ema = ModelEMA(model, decay=0.9)
    start = {k: v.copy() for k, v in ema.averages.items()}
    for t in range(300):
        for p in model.parameters():
            p.data += 1.0  # every weight moves by one each step
        keep = min(0.9, (1 + t) / (10 + t))
        assert ema.decay_now() == pytest.approx(keep)
        for name, p in model.named_parameters():
            start[name] = keep * start[name] + (1 - keep) * p.data
        ema.update(model)
    for name, average in ema.averages.items():
        np.testing.assert_allclose(average, start[name], rtol=1e-5, atol=1e-6)
    assert ema.updates == 300
    # weights that move by 1 a step: the average lags them by about decay / (1 - decay) = 9
    lag = model.head.bias.data - ema.averages["head.bias"]
    assert np.allclose(lag, lag[0]) and 8.9 < lag[0] < 9.1


def test_the_averaged_weights_go_in_and_come_back_out():
    model = small_model()
    ema = ModelEMA(model, decay=0.5)
    for p in model.parameters():
        p.data = p.data + 1.0
    ema.update(model)
    trained = {k: v.copy() for k, v in model.state_dict().items()}
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with ema.applied_to(model):
        for name, p in model.named_parameters():
            np.testing.assert_array_equal(p.data, ema.averages[name])
        averaged_logits = model(x).data
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, trained[name])
    assert not np.allclose(averaged_logits, model(x).data)


def test_the_state_round_trips_and_checks_shapes():
    model = small_model()
    ema = ModelEMA(model, decay=0.99)
    ema.update(model)
    state = ema.state_dict()
    other = ModelEMA(small_model(), decay=0.99)
    other.load_state_dict(state)
    assert other.updates == 1
    for name, average in ema.averages.items():
        np.testing.assert_array_equal(other.averages[name], average)
    bad = {**state, "head.bias": np.zeros(7)}
    with pytest.raises(ValueError, match="head.bias has shape"):
        other.load_state_dict(bad)
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(model, decay=1.5)


def test_the_averages_are_one_array_laid_out_as_the_weights():
    """Without an optimizer the average gathers the weights into one array (each
    parameter's data a view of it) and keeps the averages in one array like it: an update
    is whole-array arithmetic, the same numbers as weight by weight."""
    model = small_model()
    ema = ModelEMA(model, decay=0.9)
    buffer = ema._weights
    assert all(p.data.base is buffer for p in model.parameters())
    assert buffer.size == model.num_parameters() == ema._average.size
    for p in model.parameters():
        p.data *= 2.0
    ema.update(model)
    np.testing.assert_allclose(ema._average, (0.1 * 0.5 + 0.9) * buffer, rtol=1e-6)


def test_the_trained_weights_come_back_whatever_the_block_did():
    model = small_model()
    ema = ModelEMA(model, decay=0.5)
    trained = model.state_dict()
    with ema.applied_to(model):
        model.head.weight.data = np.zeros((3, 8), dtype=np.float32)  # put another array in
        model.head.bias.data += 5.0  # write into the averaged weights
    assert all(p.data.base is ema._weights for p in model.parameters())
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, trained[name])
    with pytest.raises(ValueError, match="missing"):
        ema.load_state_dict({"updates": 1})
