"""Argument checks and the command lines' flag types: one range, one message, for a
constructor argument and the flag that sets it."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

from tinyvit import checks, cli
from tinyvit.checks import FRACTION, NONNEGATIVE_INT, POSITIVE, POSITIVE_INT, Range


def test_ranges_in_words():
    assert POSITIVE_INT.describe() == "an integer >= 1"
    assert NONNEGATIVE_INT.describe() == "an integer >= 0"
    assert POSITIVE.describe() == "a number > 0"
    assert FRACTION.describe() == "a number in [0, 1)"
    assert Range(float).describe() == "a finite number"
    assert Range(int, high=3, high_open=True).describe() == "an integer < 3"


@pytest.mark.parametrize(
    "kind,good,bad",
    [
        (POSITIVE_INT, [1, 7, np.int64(3)], [0, -1]),
        (POSITIVE, [1e-9, 2.0, 3], [0.0, -1.0, math.nan, math.inf]),
        (FRACTION, [0, 0.5, 0.999], [1.0, -0.1, 2]),
    ],
)
def test_check_keeps_good_values_and_names_bad_ones(kind, good, bad):
    for value in good:
        assert kind.check("x", value) == value
    for value in bad:
        with pytest.raises(ValueError, match=rf"^x must be {kind.describe()[:8]}.*got {value!r}$"):
            kind.check("x", value)


def test_wrong_types_are_type_errors():
    for value in (2.5, "3", True, None):
        with pytest.raises(TypeError, match=f"depth must be an integer >= 1, got {value!r}"):
            POSITIVE_INT.check("depth", value)
    assert isinstance(POSITIVE.check("lr", 1), float)


def test_one_of_and_divisors():
    assert checks.one_of("pool", "cls", ("cls", "mean")) == "cls"
    with pytest.raises(ValueError, match="pool must be one of 'cls', 'mean', got 'avg'"):
        checks.one_of("pool", "avg", ("cls", "mean"))
    assert checks.divisors(32) == [1, 2, 4, 8, 16, 32]
    assert checks.divisors(1) == [1]


def test_uint8_images_names_what_was_expected_and_given(xp):
    images = xp.zeros((2, 3, 8, 8), dtype=np.uint8)
    assert checks.uint8_images(images, on_host=False) is images
    host = np.zeros((2, 3, 8, 8), dtype=np.uint8)
    assert checks.uint8_images(host, "x_train") is host
    expected = r"x_train: expected a NumPy uint8 array of images \(n, C, H, W\), got "
    float32 = r"a numpy.ndarray of shape \(2, 3, 8, 8\), float32"
    with pytest.raises(TypeError, match=expected + float32):
        checks.uint8_images(host.astype(np.float32), "x_train")
    with pytest.raises(TypeError, match=expected + r"a numpy.ndarray of shape \(3, 8, 8\), uint8"):
        checks.uint8_images(host[0], "x_train")
    with pytest.raises(TypeError, match=expected + "a list$"):
        checks.uint8_images([[1]], "x_train")
    if xp is not np:  # a batch on the GPU is no data set
        with pytest.raises(TypeError, match=expected + r"a cupy\w*\.ndarray of shape"):
            checks.uint8_images(images, "x_train")
    with pytest.raises(TypeError, match=r"expected a uint8 array \(NumPy or CuPy\) .*int16"):
        checks.uint8_images(xp.zeros((2, 3, 8, 8), dtype=np.int16), on_host=False)


def test_flag_types_parse_and_check():
    parse = cli.flag_type(POSITIVE)
    assert parse("3e-4") == 3e-4
    for text in ("0", "-1", "nan", "inf", "abc"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"must be a number > 0, got '{text}'"):
            parse(text)
    with pytest.raises(argparse.ArgumentTypeError, match="an integer >= 1, got '2.5'"):
        cli.flag_type(POSITIVE_INT)("2.5")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown model 'vit_x'; known: a, b"):
        cli.choice_type(("a", "b"), "model")("vit_x")


def test_the_parser_fails_in_one_line(capsys):
    parser = cli.ArgumentParser(prog="demo")
    parser.add_argument("--lr", type=cli.flag_type(POSITIVE))
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--lr", "-1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: argument --lr: must be a number > 0, got '-1' (see demo --help)\n"


def test_the_gradient_check_command_refuses_a_bad_seed_in_one_line(capsys):
    from tinyvit.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(["--seed", "-1"])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: argument --seed: must be an integer >= 0, got '-1' (see python -m tinyvit --help)"
    ]
