"""A training step shaped for a GPU: few kernel launches, one synchronization, two copies.

On a GPU every whole-array operation is a kernel launch of some microseconds
of the host's time, every value read back makes the host wait for the device,
and every copy from the host is a trip through the driver; a step of
ViT-Lite-7/4 is bound by those, not by arithmetic. The CuPy stand-in
(``tests/cupy_standin.py``) counts them: these tests hold the step to its
budget (a count, not a time). And the CPU side of the same design: one
buffer for all the parameters (``optim.FlatParameters``) gives the same
numbers as updating each parameter on its own, to the bit.
"""

from __future__ import annotations

import numpy as np
import pytest

import tinyvit
from tinyvit import backend, data, kernels, loop
from tinyvit import functional as F
from tinyvit.ema import ModelEMA
from tinyvit.optim import SGD, AdamW, clip_grad_norm, clip_gradients, decays, whole_buffer
from tinyvit.train import Trainer, recipe

try:
    import cupy_standin  # tests/ is on sys.path
except ImportError:  # no CuPy installed: the counting tests are skipped
    cupy_standin = None

# The budgets of issue 14, for vit_lite_7_4 and the GPU recipe's augmentation.
STEP_LAUNCHES, STEP_SYNCS = 1000, 1
BATCH_LAUNCHES, BATCH_COPIES = 200, 2


def standin():
    if cupy_standin is None or not cupy_standin.installed():
        pytest.skip("counting needs the CuPy stand-in (CuPy installed, no GPU)")


class Synthetic:
    """A tiny data set in CIFAR-10's shapes."""

    def __init__(self, n=64, seed=0):
        rng = np.random.default_rng(seed)
        self.x_train = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        self.y_train = rng.integers(0, 10, n)
        self.x_test, self.y_test = self.x_train[:16], self.y_train[:16]
        self.classes = data.CLASSES


def gpu_trainer(tmp_path, batch_size, **changes):
    config = recipe("gpu", batch_size=batch_size, epochs=1, warmup_epochs=0.5, **changes)
    return Trainer(config, Synthetic(), tmp_path, progress=False)


def count_steps(trainer, steps=2):
    """The counts of each of ``steps`` training steps after the first (which makes the
    optimizer's state), with batches made outside the count; with the kernels on (as a run
    has them unless TINYVIT_KERNELS=reference says otherwise)."""
    batches = data.batches(trainer.x_train, trainer.y_train, trainer.config.batch_size,
                           augment="randaugment", device="cuda")  # fmt: skip
    counts = []
    for i, (x, y) in enumerate(batches):
        with kernels.using("auto"), cupy_standin.counting() as c:
            trainer.train_on_batch(x, y)
            trainer.step += 1
        counts.append(c)
        if i == steps:
            break
    return counts[1:]


def test_a_vit_lite_step_takes_under_1000_launches_and_one_sync(tmp_path):
    """Forward, loss, backward, clipping, AdamW and the count of right answers: about 930
    launches (from about 2,600) and one synchronization (from 5), the same at any batch
    size (the count of launches does not depend on the size of the arrays)."""
    standin()
    per_size = {}
    for batch_size in (4, 8):
        trainer = gpu_trainer(tmp_path / str(batch_size), batch_size)
        assert trainer.model.config["dim"] == 256 and len(trainer.model.blocks) == 7
        for c in count_steps(trainer):
            assert c.launches <= STEP_LAUNCHES, c
            assert c.syncs <= STEP_SYNCS and c.device_to_host <= 1, c
            assert c.host_to_device == 0, c
        per_size[batch_size] = c.launches
    assert per_size[4] == per_size[8]


def test_dropout_and_every_option_stay_on_the_device(tmp_path):
    """With dropout, patch dropout, sin-cos embeddings, mean pooling and an EMA, a step
    still reads one value back; the EMA's update is three launches, not three per
    parameter."""
    standin()
    options = dict(dropout=0.1, patch_dropout=0.25, pos_embed="sincos", pool="mean")
    trainer = gpu_trainer(tmp_path, 4, model_overrides=options, ema=0.99)
    for c in count_steps(trainer):
        assert c.syncs == 1 and c.host_to_device == 0, c
    with cupy_standin.counting() as c:
        trainer.ema.update(trainer.model)
    assert c.launches == 3


def test_an_augmented_batch_of_the_gpu_recipe_is_two_copies_and_under_200_launches():
    """RandAugment (two rounds of one op per image), crop, flip and normalization for
    128 images: the images and the labels with every drawn parameter are the two copies
    from the host (from about 65), about 190 launches (from about 640), no waiting."""
    standin()
    x = np.random.default_rng(0).integers(0, 256, (256, 3, 32, 32), dtype=np.uint8)
    y = np.arange(256) % 10
    batches = data.batches(x, y, 128, augment="randaugment", device="cuda", seed=4)
    next(batches)  # the first batch also makes the normalization's constants
    with cupy_standin.counting() as c:
        images, labels = next(batches)
    assert c.launches <= BATCH_LAUNCHES and c.host_to_device <= BATCH_COPIES, c
    assert c.syncs == 0, c
    assert images.shape == (128, 3, 32, 32) and labels.shape == (128,)


def test_evaluation_reads_back_once_not_per_batch():
    standin()
    tinyvit.manual_seed(0)
    model = tinyvit.ViT(32, 8, 10, dim=16, depth=1, heads=2, mlp_dim=32).to("cuda")
    x = np.random.default_rng(0).integers(0, 256, (40, 3, 32, 32), dtype=np.uint8)
    with cupy_standin.counting() as c:
        loop.evaluate(model, x, np.arange(40) % 10, batch_size=10)
    assert c.syncs == 1, c


# ---------------------------------------------------------------- one buffer, same numbers


def model_and_batch(seed=0):
    tinyvit.manual_seed(seed)
    model = tinyvit.ViT(16, 4, 5, dim=16, depth=2, heads=2, mlp_dim=32, dropout=0.1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((6, 3, 16, 16)).astype(np.float32)
    return model, x, rng.integers(0, 5, 6)


def adamw(params_or_groups):
    return AdamW(params_or_groups, lr=3e-3, weight_decay=0.05)


def sgd(params_or_groups):
    return SGD(params_or_groups, 0.05, 0.9, nesterov=True, weight_decay=1e-3)


def one_group_each(model, make):
    """The optimizer ``make`` builds, with each parameter in a group of its own (AdamW's
    decay as its default grouping has it): the update runs parameter by parameter."""
    if make is adamw:
        return make([{"params": [p], "weight_decay": 0.05 if decays(name, p) else 0.0}
                     for name, p in model.named_parameters()])  # fmt: skip
    return make([{"params": [p]} for p in model.parameters()])


@pytest.mark.parametrize("make", [adamw, sgd], ids=["adamw", "sgd"])
@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_the_flat_step_equals_the_per_parameter_step_to_the_bit(make, clip):
    """The same elementwise maths on one array as on each parameter: the same weights to
    the bit. The per-parameter run updates each parameter on its own (one group each) and
    has each gradient in an array of its own (``model.zero_grad()``: backward makes them),
    so it clips parameter by parameter too; clipping sums the squares in another order
    (one dot product over the buffer, not one per parameter), so with it they agree to
    float32's rounding."""
    runs = []
    for flat in (True, False):
        model, x, y = model_and_batch()
        if flat:  # AdamW's two default groups, SGD's one
            optimizer = make(model if make is adamw else model.parameters())
        else:
            optimizer = one_group_each(model, make)

        def forward(model=model, x=x, y=y):
            return F.cross_entropy(model(x), y), None

        for step in range(4):
            if flat:
                loop.train_step(model, optimizer, forward, step=step, lr=3e-3, clip=clip, seed=1)
                continue
            optimizer.set_lr(3e-3)
            backend.manual_seed(loop.step_seed(1, step))
            loss, _ = forward()
            model.zero_grad()  # .grad = None: backward gives each parameter its own array
            loss.backward()
            assert whole_buffer(p.grad for p in model.parameters()) is None
            if clip:
                clip_gradients(model.parameters(), clip)
            optimizer.step()  # copies the gradients into its buffer first
        runs.append(model.state_dict())
        # the buffers were used: every weight and every gradient is a view of them
        assert all(p.data.base is optimizer.flat.data for p in model.parameters())
        assert whole_buffer(p.grad for p in model.parameters()) is optimizer.flat.grad
        groups = (2 if make is adamw else 1) if flat else len(model.parameters())
        assert len(optimizer.param_groups) == groups
    for name, value in runs[0].items():
        if clip:
            np.testing.assert_allclose(value, runs[1][name], rtol=1e-4, atol=1e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(value, runs[1][name], err_msg=name)


def test_the_flat_adamw_matches_torch():
    torch = pytest.importorskip("torch")
    model, x, y = model_and_batch(seed=2)
    params = model.parameters()
    refs = [torch.tensor(p.data.astype(np.float64), requires_grad=True) for p in params]
    ours = AdamW(params, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)
    theirs = torch.optim.AdamW(refs, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)
    rng = np.random.default_rng(0)
    for _ in range(3):
        ours.zero_grad()
        for p, r in zip(params, refs, strict=True):
            g = rng.standard_normal(p.shape).astype(np.float32)
            p.grad += g  # as backward() adds it, into the optimizer's buffer
            r.grad = torch.tensor(g.astype(np.float64))
        assert whole_buffer(p.grad for p in params) is ours.flat.grad
        ours.step()
        theirs.step()
    for p, r in zip(params, refs, strict=True):
        np.testing.assert_allclose(p.data, r.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_clipping_the_flat_gradient_matches_per_parameter_clipping():
    """With an optimizer the gradients are one buffer, clipped by one dot product and one
    scale; without, each is its own array, clipped one by one: the same gradients."""
    results = []
    for flat in (True, False):
        model, x, y = model_and_batch()
        optimizer = AdamW(model, lr=1e-3) if flat else None
        F.cross_entropy(model(x), y).backward()
        whole = whole_buffer(p.grad for p in model.parameters())
        assert whole is (optimizer.flat.grad if flat else None)
        norm = clip_grad_norm(model.parameters(), 0.05)
        results.append((norm, [p.grad.copy() for p in model.parameters()]))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
    if cupy_standin is not None and cupy_standin.installed():  # as many launches as one array
        counts = []
        for params in ("all", "one"):
            model, x, y = model_and_batch()
            model.to("cuda")
            AdamW(model, lr=1e-3)
            x, y = backend.to_device(x, "cuda"), backend.to_device(y, "cuda")
            F.cross_entropy(model(x), y).backward()
            chosen = model.parameters() if params == "all" else [model.head.bias]
            with cupy_standin.counting() as c:
                clip_gradients(chosen, 0.05)
            assert c.syncs == 0, c
            counts.append(c.launches)
        assert counts[0] == counts[1] and len(model.parameters()) > 20


def test_loading_weights_and_the_ema_keep_the_parameters_in_the_buffer():
    model, x, y = model_and_batch()
    optimizer = AdamW(model, lr=1e-3)
    ema = ModelEMA(model, 0.9)
    assert ema._weights is optimizer.flat.data
    model.load_state_dict({k: v + 1 for k, v in model.state_dict().items()})
    assert all(
        p.data is view for p, view in zip(optimizer.flat.params, optimizer.flat.data_views)
    )
    trained = model.state_dict()
    ema.update(model)
    with ema.applied_to(model):
        for name, p in model.named_parameters():
            np.testing.assert_array_equal(p.data, ema.averages[name])
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, trained[name])
    # the same averages as an EMA of a model whose parameters no optimizer holds
    other, _, _ = model_and_batch()
    plain = ModelEMA(other, 0.9)
    other.load_state_dict(trained)
    plain.update(other)
    assert plain._weights is not optimizer.flat.data and plain._weights.size == ema._weights.size
    for name, value in plain.averages.items():
        np.testing.assert_array_equal(value, ema.averages[name])


def test_an_average_made_before_the_optimizer_follows_the_weights_into_its_buffer():
    """``ModelEMA`` gathers the weights of a model no optimizer holds; an optimizer made
    later moves them into its own buffer (in its groups' order); the average follows at its
    next update, its values unchanged, and updates by whole arrays from then on."""
    model, x, y = model_and_batch()
    ema = ModelEMA(model, 0.5)
    for p in model.parameters():
        p.data += 1.0
    ema.update(model)
    before = ema.averages
    optimizer = AdamW(model, lr=1e-3)
    assert ema._weights is not optimizer.flat.data
    keep = ema.decay_now()
    ema.update(model)
    assert ema._weights is optimizer.flat.data
    for name, p in model.named_parameters():  # the second update, with the same weights
        expected = keep * before[name] + (1 - keep) * p.data
        np.testing.assert_allclose(ema.averages[name], expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="not the model"):
        ema.update(model_and_batch()[0])


def test_numbers_are_not_copied_to_the_device_and_devices_do_not_mix(device):
    """A Python number goes into the kernel as it is (on a GPU: no copy); an array of the
    other device is a DeviceError naming both operands, never a silent copy."""
    xp = backend.module_for(device)
    t = tinyvit.Tensor(xp.ones(3, dtype=np.float32))
    out = (t * 2 + 1) / 3 - 0.5
    assert out.dtype == np.float32 and np.allclose(backend.to_numpy(out.data), 0.5)
    if device == "cpu":
        return
    if cupy_standin is not None and cupy_standin.installed():
        with cupy_standin.counting() as c:
            (t * 2 + 1) / 3 - 0.5  # noqa: B018
            2 - t, 2 / t, 2**t  # noqa: B018
        assert c.host_to_device == 0
    host = np.ones(3, dtype=np.float32)
    for op in (lambda: t + host, lambda: host + t, lambda: t * host, lambda: t @ host,
               lambda: t[np.array([0, 1])], lambda: tinyvit.Tensor(host) + t):  # fmt: skip
        with pytest.raises(backend.DeviceError, match="is on (cuda|cpu).*is on (cpu|cuda)"):
            op()
    total = tinyvit.Tensor([t.data.sum(), t.data.max()])  # 0-d device arrays, joined there
    assert total.device == "cuda" and backend.to_numpy(total.data).tolist() == [3.0, 1.0]
