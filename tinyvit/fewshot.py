"""Few-shot linear probes: how much frozen features know, from a handful of labels.

The paper measures pre-trained representations in two ways (Section 4.1,
"Metrics"): fine-tuning accuracy, and *few-shot* accuracy, "obtained by
solving a regularized least-squares regression problem that maps the
(frozen) representation of a subset of training images to ``{-1, 1}^K``
target vectors", which "allows us to recover the exact solution in closed
form". Figures 3, 4 and 6 of the paper use 5-shot ImageNet probes, and
Section 4.6 uses them to judge masked patch prediction.

With ``k`` examples of each of ``K`` classes, features ``X`` ``(kK, D)`` and
targets ``Y`` ``(kK, K)`` (``+1`` for the example's class, ``-1`` for the
others), the probe is the ridge regression

    minimize  |X W + 1 b - Y|^2 + l2 |W|^2     (the bias b is not penalized)

whose solution solves the normal equations, with ``A = [X, 1]``,

    (A^T A + l2 * diag(1, ..., 1, 0)) [W; b] = A^T Y.

A test image is given the class with the largest score ``x W + b``.
Features are first standardized (each dimension to mean 0 and standard
deviation 1 over the few training examples), so one ``l2`` suits every
model.

* ``features`` runs a model without a graph and returns its representation
  ``y`` of Eq. 4 (the class token after the final LayerNorm).
* ``fit_probe`` solves for a ``LinearProbe``; ``sample_shots`` draws ``k``
  examples per class with a seed; ``fewshot_accuracy`` does both for 1, 5
  and 10 shots and tests on held-out examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import backend, checks, data
from .backend import xp_of
from .resample import interpolate
from .tensor import no_grad


@dataclass
class LinearProbe:
    """``scores = ((x - mean) / std) @ weight + bias``; arrays on the features' device."""

    weight: object  # (D, K)
    bias: object  # (K,)
    mean: object  # (D,)
    std: object  # (D,)

    def scores(self, features):
        features = _check_features(features, "features")
        if features.shape[1] != self.weight.shape[0]:
            raise ValueError(
                f"the probe was fitted on {self.weight.shape[0]}-dimensional features, "
                f"got shape {features.shape}"
            )
        x = (features.astype(self.weight.dtype) - self.mean) / self.std  # (n, D)
        return x @ self.weight + self.bias  # (n, K)

    def predict(self, features):
        """The class with the largest score, ``(n,)`` int64."""
        return self.scores(features).argmax(axis=1)

    def accuracy(self, features, labels) -> float:
        labels = _check_labels(labels, len(features), "labels")
        xp = xp_of(features)
        return float((self.predict(features) == xp.asarray(labels)).mean())


def _check_features(features, name):
    if getattr(features, "ndim", 0) != 2 or features.dtype.kind != "f":
        raise ValueError(
            f"{name} must be a 2-D float array (examples, dims), got shape "
            f"{tuple(getattr(features, 'shape', ()))}, {getattr(features, 'dtype', None)}"
        )
    return features


def _check_labels(labels, n, name, num_classes=None):
    labels = np.asarray(backend.to_numpy(labels))
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"{name} must be {n} integer class labels, one per example, got shape "
            f"{labels.shape}, {labels.dtype}"
        )
    if num_classes is not None and n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}), got values from {labels.min()} "
            f"to {labels.max()}"
        )
    return labels.astype(np.int64)


def pm1_targets(labels, num_classes, xp=np, dtype=np.float64):
    """``(n, K)`` targets: ``+1`` in each example's class, ``-1`` elsewhere."""
    labels = xp.asarray(labels)
    y = -xp.ones((len(labels), num_classes), dtype=dtype)
    y[xp.arange(len(labels)), labels] = 1.0
    return y


def fit_probe(features, labels, num_classes, l2=1.0, standardize=True) -> LinearProbe:
    """The closed-form least-squares probe from ``(n, D)`` features to ``{-1, 1}^K`` targets.

    Solved in float64 whatever the features' dtype: the normal equations
    square the features' condition number, which float32 cannot afford.
    ``standardize=False`` fits the features as they are (mean 0, std 1 kept
    in the probe for uniformity).
    """
    features = _check_features(features, "features")
    n, dim = features.shape
    labels = _check_labels(labels, n, "labels", num_classes)
    if l2 < 0:
        raise ValueError(f"l2 must be at least 0, got {l2}")
    if n == 0:
        raise ValueError("fit_probe needs at least one example")
    xp = xp_of(features)
    x = features.astype(np.float64)  # (n, D)
    if standardize:
        mean = x.mean(axis=0)  # (D,)
        std = x.std(axis=0) + 1e-6  # (D,): a constant dimension stays finite
    else:
        mean, std = xp.zeros(dim), xp.ones(dim)
    x = (x - mean) / std
    a = xp.concatenate([x, xp.ones((n, 1))], axis=1)  # (n, D+1): [X, 1]
    y = pm1_targets(labels, num_classes, xp)  # (n, K)
    penalty = xp.full(dim + 1, float(l2))
    penalty[-1] = 0.0  # the bias is not penalized
    lhs = a.T @ a + xp.diag(penalty)  # (D+1, D+1)
    theta = xp.linalg.solve(lhs, a.T @ y)  # (D+1, K)
    return LinearProbe(weight=theta[:-1], bias=theta[-1], mean=mean, std=std)


def sample_shots(labels, shots, rng, num_classes=None):
    """Indices of ``shots`` examples of every class, drawn without replacement (sorted by class).

    ``rng`` is a ``numpy.random.Generator``; ``num_classes`` defaults to
    ``max(labels) + 1``, and every class must have ``shots`` examples.
    """
    labels = np.asarray(backend.to_numpy(labels))
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be 1-D integers, got shape {labels.shape}, {labels.dtype}")
    if shots < 1:
        raise ValueError(f"shots must be at least 1, got {shots}")
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    picked = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < shots:
            raise ValueError(
                f"class {c} has {len(members)} examples, fewer than the {shots} shots asked for"
            )
        picked.append(rng.choice(members, size=shots, replace=False))
    return np.concatenate(picked)


def fewshot_accuracy(
    train_features,
    train_labels,
    test_features,
    test_labels,
    shots=(1, 5, 10),
    *,
    num_classes=None,
    l2=1.0,
    trials=1,
    seed=0,
) -> dict:
    """Test accuracy of probes fitted on ``k`` examples per class, for each ``k`` in ``shots``.

    The ``k`` examples of each class are drawn from the training features
    with a generator seeded by ``(seed, k, trial)``; the accuracy is averaged
    over ``trials`` draws (a 1-shot probe varies a lot with the one example).
    Returns ``{k: mean accuracy}``.
    """
    train_features = _check_features(train_features, "train_features")
    test_features = _check_features(test_features, "test_features")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train and test features differ in width: {train_features.shape} "
            f"and {test_features.shape}"
        )
    train_labels = _check_labels(train_labels, len(train_features), "train_labels")
    num_classes = int(train_labels.max()) + 1 if num_classes is None else num_classes
    test_labels = _check_labels(test_labels, len(test_features), "test_labels", num_classes)
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    xp = xp_of(train_features)
    results = {}
    for k in shots:
        scores = []
        for trial in range(trials):
            rng = np.random.default_rng([seed, k, trial])
            index = sample_shots(train_labels, k, rng, num_classes)
            probe = fit_probe(
                train_features[xp.asarray(index)], train_labels[index], num_classes, l2
            )
            scores.append(probe.accuracy(test_features, test_labels))
        results[k] = float(np.mean(scores))
    return results


def features(model, images, *, pool="cls", batch_size=500, device="cpu"):
    """The frozen representation of uint8 ``images`` ``(n, C, H, W)``: ``(n, D)`` NumPy float32.

    ``pool="cls"`` is the class token's state after the final LayerNorm
    (``y`` of Eq. 4, what ``forward_head(..., pre_logits=True)`` gives, with
    a ``pre_logits`` layer if the model has one); ``pool="mean"`` averages
    the patch tokens after the final LayerNorm instead. Images are
    normalized as for training and resized to the model's resolution.
    Runs in evaluation mode, without a graph.
    """
    if pool not in ("cls", "mean"):
        raise ValueError(f"pool must be 'cls' or 'mean', not {pool!r}")
    checks.uint8_images(images, "features: images")
    was_training = model.training
    model.eval()
    out = []
    labels = np.zeros(len(images), dtype=np.int64)  # batches() wants labels; unused
    with no_grad():
        for x, _ in data.batches(
            images, labels, batch_size, shuffle=False, augment="none", drop_last=False,
            device=device, dtype=model.pos_embed.dtype,
        ):  # fmt: skip
            tokens = model.forward_features(interpolate(x, model.image_size))  # (B, N+1, D)
            if pool == "cls":
                y = model.forward_head(tokens, pre_logits=True)  # (B, D)
            else:
                y = tokens[:, 1:].mean(axis=1)  # (B, D)
            out.append(y.numpy())
    model.train(was_training)
    return np.concatenate(out).astype(np.float32, copy=False)  # (n, D)


__all__ = [
    "LinearProbe",
    "features",
    "fewshot_accuracy",
    "fit_probe",
    "pm1_targets",
    "sample_shots",
]
