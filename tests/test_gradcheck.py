"""The gradient check itself: it must fail on broken backwards, including the
ones a check on ``sum(f(x))`` lets through."""

from __future__ import annotations

import numpy as np
import pytest

import tinyvit.functional as F
from tinyvit import GradcheckError, Tensor, gradcheck, no_grad
from tinyvit.__main__ import main
from tinyvit.backend import xp_of

# ---------------------------------------------------------------- broken backwards


def softmax_with_zero_backward(x):
    y = F.softmax(x).data
    return Tensor.from_op(y, (x,), lambda g: (g * 0.0,))


def softmax_missing_the_normalizer_term(x):
    """Backward forgets ``- y * sum(g * y)``: the path through the denominator."""
    y = F.softmax(x).data
    return Tensor.from_op(y, (x,), lambda g: (g * y,))


def gelu_with_flipped_sign(x):
    y = F.gelu(x)
    return Tensor.from_op(y.data, (x,), lambda g: (-y._backward(g)[0],))


def layer_norm_missing_the_variance_term(x):
    """Backward keeps the path through the mean but drops the one through the variance."""
    xp = xp_of(x.data)
    xc = x.data - x.data.mean(-1, keepdims=True)
    rstd = 1 / xp.sqrt((xc * xc).mean(-1, keepdims=True) + 1e-6)

    def backward(g):
        return (rstd * (g - g.mean(-1, keepdims=True)),)

    return Tensor.from_op(xc * rstd, (x,), backward)


def attention_without_softmax_jacobian(q, k, v):
    """Backward treats the attention probabilities as constants for q and k: only v learns."""
    out = F.scaled_dot_product_attention(q, k, v)
    backward = out._backward

    def broken(g):
        gq, gk, gv = backward(g)
        return gq * 0.0, gk * 0.0, gv

    return Tensor.from_op(out.data, (q, k, v), broken)


BROKEN = [
    ("zero softmax backward", softmax_with_zero_backward, 1),
    ("softmax without the normalizer term", softmax_missing_the_normalizer_term, 1),
    ("gelu with a flipped sign", gelu_with_flipped_sign, 1),
    ("layer_norm without the variance term", layer_norm_missing_the_variance_term, 1),
    ("attention without the softmax Jacobian", attention_without_softmax_jacobian, 3),
]


@pytest.mark.parametrize("name,fn,n_inputs", BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_backward_is_caught(name, fn, n_inputs, make):
    inputs = [make(2, 3, 4) for _ in range(n_inputs)]
    with pytest.raises(GradcheckError, match="gradient mismatch"):
        gradcheck(fn, inputs)


def test_sum_alone_would_miss_a_zero_softmax_backward(make):
    """Why the check weights the outputs with a random R: sum(softmax(x)) is constant."""
    x = make(2, 5)
    y = softmax_with_zero_backward(x)
    y.sum().backward()
    analytic = x.grad  # all zeros
    with no_grad():
        base = F.softmax(x).data.sum()
        x.data[0, 0] += 1e-6
        bumped = F.softmax(x).data.sum()
        x.data[0, 0] -= 1e-6
    assert abs((bumped - base) / 1e-6 - analytic[0, 0]) < 1e-8  # the naive check is fooled
    with pytest.raises(GradcheckError):
        gradcheck(softmax_with_zero_backward, (x,))  # ours is not


def test_the_error_names_input_index_and_both_values(make):
    x = make(3, 4)
    with pytest.raises(GradcheckError) as info:
        gradcheck(gelu_with_flipped_sign, (x,), names=["x"])
    message = str(info.value)
    assert "x (3, 4): at index" in message
    assert "backward() gives" in message and "numerical gradient is" in message


def test_report_without_raising(make):
    x, w = make(3, 4), make(2, 4)
    good = gradcheck(F.linear, (x, w), names=["x", "weight"])
    assert good.ok and [r.name for r in good.rows] == ["x", "weight"]
    assert all(r.max_abs_error < 1e-8 for r in good.rows)
    assert "weight" in str(good) and "max abs err" in str(good)
    bad = gradcheck(gelu_with_flipped_sign, (x,), raise_on_failure=False)
    assert not bad.ok and bad.rows[0].max_abs_error > 0.1


def test_params_and_sampled_coordinates(make):
    weight, bias = make(50, 40), make(50)
    x = make(3, 40, requires_grad=False)

    def layer(inp):  # closes over the weights, like a module
        return F.gelu(F.linear(inp, weight, bias))

    report = gradcheck(layer, (x,), params={"weight": weight, "bias": bias}, max_coords=25)
    assert [(r.name, r.checked) for r in report.rows] == [("weight", 25), ("bias", 25)]


def test_the_gradient_of_each_tensor_is_left_as_it_was(make):
    x = make(2, 3)
    x.grad = x.data * 0 + 7.0
    gradcheck(F.softmax, (x,))
    assert np.all(x.grad == 7.0)


def test_float32_is_refused(make):
    x = make(2, 3, dtype=np.float32)
    with pytest.raises(TypeError, match="float64.*float32"):
        gradcheck(F.softmax, (x,))


def test_nothing_to_check(make):
    with pytest.raises(ValueError, match="nothing to check"):
        gradcheck(F.softmax, (make(2, 3, requires_grad=False),))


def test_the_command_line_checks_every_layer(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for layer in ("linear", "softmax", "cross_entropy", "layer_norm", "gelu", "attention"):
        assert layer in out
    assert "all 8 layers agree" in out
