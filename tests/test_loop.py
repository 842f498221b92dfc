"""The one training step and the one evaluation: a diverging loss or gradient leaves the
weights as they were, dropout masks are a function of (seed, step), evaluation is
in eval mode at the model's resolution, and every loop in tinyvit takes this step."""

from __future__ import annotations

import numpy as np
import pytest

import tinyvit.finetune
import tinyvit.pretrain
import tinyvit.train
from tinyvit import ViT, loop, manual_seed
from tinyvit import functional as F
from tinyvit.loop import Evaluation, TrainingDiverged, evaluate, train_step
from tinyvit.optim import AdamW

SMALL = dict(image_size=8, patch_size=4, num_classes=3, dim=8, depth=1, heads=2, mlp_dim=16)


def setup(dropout=0.0):
    manual_seed(0)
    model = ViT(**SMALL, dropout=dropout)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 4)
    return model, AdamW(model, lr=1e-2), x, y


def forward_of(model, x, y):
    def forward():
        logits = model(x)
        return F.cross_entropy(logits, y), logits

    return forward


def test_a_step_lowers_the_loss_and_sets_the_learning_rate():
    model, optimizer, x, y = setup()
    first, logits = train_step(model, optimizer, forward_of(model, x, y), step=0, lr=3e-3)
    assert logits.shape == (4, 3) and optimizer.param_groups[0]["lr"] == 3e-3
    for step in range(1, 20):
        last, _ = train_step(model, optimizer, forward_of(model, x, y), step=step, lr=3e-3)
    assert last < first


@pytest.mark.parametrize("poison", ["loss", "gradient norm"])
def test_divergence_stops_before_the_weights_change(poison):
    model, optimizer, x, y = setup()
    before = model.state_dict()

    def forward():
        loss, logits = forward_of(model, x, y)()
        if poison == "loss":
            return loss * float("nan"), logits
        # The head's bias is 0, so this adds 0 to the loss, but 3e39 (inf in float32)
        # to the bias's gradient: a finite loss with an infinite gradient.
        return loss + (model.head.bias * np.float32(3e38)).sum() * 10, logits

    with pytest.raises(TrainingDiverged) as info, np.errstate(over="ignore"):
        train_step(model, optimizer, forward, step=7, lr=0.5, clip=1.0, run="fine-tune")
    error = info.value
    assert isinstance(error, FloatingPointError)
    assert error.what == poison and error.step == 7
    assert str(error).startswith(f"fine-tune: the {poison} became ")
    assert "at step 7 (learning rate 0.5)" in str(error)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_dropout_masks_are_a_function_of_seed_and_step():
    outputs = []
    for _ in range(2):
        model, optimizer, x, y = setup(dropout=0.5)
        _, logits = train_step(model, optimizer, forward_of(model, x, y), step=3, lr=0.0, seed=9)
        outputs.append(logits.data.copy())
    np.testing.assert_array_equal(outputs[0], outputs[1])
    model, optimizer, x, y = setup(dropout=0.5)
    _, other = train_step(model, optimizer, forward_of(model, x, y), step=4, lr=0.0, seed=9)
    assert not np.array_equal(other.data, outputs[0])


def test_evaluate_in_eval_mode_at_the_model_resolution():
    model, _, _, _ = setup(dropout=0.5)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (10, 3, 4, 4), dtype=np.uint8)  # half the model's size
    labels = rng.integers(0, 3, 10)
    result = evaluate(model, images, labels, batch_size=3)
    assert isinstance(result, Evaluation) and model.training  # the mode is put back
    whole = evaluate(model, images, labels, batch_size=10)
    assert result.accuracy == whole.accuracy  # no dropout: the same predictions
    assert result.loss == pytest.approx(whole.loss, rel=1e-6)
    assert 0 <= result.accuracy <= 1 and result.loss > 0
    with pytest.raises(TypeError, match=r"uint8 array of images.*float32"):
        evaluate(model, images.astype(np.float32), labels)
    with pytest.raises(ValueError, match="10 images and 9 labels"):
        evaluate(model, images, labels[:9])


def test_every_loop_takes_the_one_step_and_the_one_evaluation():
    from tinyvit.train import parallel, trainer

    for module in (trainer, tinyvit.finetune, tinyvit.pretrain):
        assert module.train_step is loop.train_step, module.__name__
    for module in (parallel, tinyvit.finetune):  # the trainer tests through train.parallel
        assert module.evaluate is loop.evaluate, module.__name__
    assert tinyvit.train.TrainingDiverged is TrainingDiverged


def test_finetuning_and_pretraining_raise_the_one_divergence_error():
    from tinyvit.pretrain import MaskedPatchPrediction, pretrain

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 3, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 3, 8)
    model, _, _, _ = setup()
    model.head.bias.data[:] = np.nan
    with pytest.raises(TrainingDiverged, match=r"^fine-tune: the loss became nan at step 0 "):
        tinyvit.finetune.finetune(model, images, labels, images, labels, 2, batch_size=4,
                                  log=None)  # fmt: skip
    model, _, _, _ = setup()
    mpp = MaskedPatchPrediction(model)
    mpp.head.bias.data[:] = np.inf
    with pytest.raises(TrainingDiverged, match=r"^pretrain: the loss became nan at step 0 "):
        with np.errstate(invalid="ignore"):  # inf - inf in the softmax: the point of the test
            pretrain(mpp, images, 2, batch_size=4, log=None)


def test_flip_tta_averages_each_image_and_its_mirror_image():
    """The loss is that of the averaged distribution, the prediction its largest class."""
    from tinyvit.data import normalize

    model, _, _, _ = setup()
    model.to(np.float64)
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (7, 3, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 3, 7)
    x = normalize(images, dtype=np.float64)

    def probabilities(batch):
        return F.softmax(model.eval()(batch), axis=1).data

    averaged = 0.5 * (probabilities(x) + probabilities(x[..., ::-1]))
    model.train()
    result = evaluate(model, images, labels, batch_size=3, tta=True)
    assert result.loss == pytest.approx(-np.log(averaged[np.arange(7), labels]).mean(), rel=1e-9)
    assert result.accuracy == pytest.approx((averaged.argmax(1) == labels).mean())
    plain = evaluate(model, images, labels, batch_size=3)
    assert plain.loss != pytest.approx(result.loss)
