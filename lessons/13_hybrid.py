# %% [markdown]
# # Lesson 13: the hybrid, a CNN's feature map as the sequence
#
# The paper's plain ViT cuts the image into patches of pixels. Section 3.1
# offers a second way in, the **hybrid architecture**: "As an alternative to
# raw image patches, the input sequence can be formed from feature maps of a
# CNN. In this hybrid model, the patch embedding projection E (Eq. 1) is
# applied to patches extracted from a CNN feature map. As a special case,
# the patches can have spatial size 1x1, which means that the input sequence
# is obtained by simply flattening the spatial dimensions of the feature map
# and projecting to the Transformer dimension." Section 4.2 finds hybrids
# ahead of plain ViTs at small compute budgets, and a CPU's half hour is a
# very small budget.
#
# The CNN needs a convolution, which tinyvit did not have. This lesson
# writes it (``tinyvit.conv``): the forward as one matrix product, the
# backward derived and checked, then a small convolutional stem whose
# ``8 x 8`` feature map becomes 64 tokens (``tinyvit.hybrid``), and finally
# the plain ViT against the hybrid for the same minutes on your machine.
#
# Run: ``python lessons/13_hybrid.py [--out DIR] [--quick] [--device cuda]
# [--data-dir PATH] [--minutes 2.5]``. The full lesson trains each model for
# 2.5 minutes (about 6 minutes in all on a 2-core CPU); ``--quick`` takes
# seconds.

# %%
import dataclasses

import numpy as np

from tinyvit import Tensor, backend, conv, data, gradcheck, hybrid, inspection, manual_seed, no_grad
from tinyvit.checks import POSITIVE
from tinyvit.cli import flag_type
from tinyvit.lesson import lesson_arguments, load_data
from tinyvit.train import Trainer, recipe
from tinyvit.viz import plot_attention_grid, plt, save_figure

FULL_MINUTES = 2.5  # each model's training time in the full lesson


def flags(parser):
    parser.add_argument("--minutes", type=flag_type(POSITIVE), default=None,
                        help=f"each model's training time ({FULL_MINUTES:g})")  # fmt: skip


args = lesson_arguments("13_hybrid", "The hybrid: a CNN's feature map as the sequence.",
                        extra=flags)  # fmt: skip
dataset = load_data(args)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. A convolution is one matrix product
#
# A convolution slides a ``kh x kw`` kernel over the image and takes a dot
# product at each place (strictly a cross-correlation, which every deep
# learning library calls a convolution):
#
#     y[b, o, i, j] = sum_{c, u, v} W[o, c, u, v] x[b, c, s i + u, s j + v]
#
# with ``x`` framed by ``padding`` zeros and ``s`` the stride. Lay every
# window the kernel visits out as one column of a matrix (``conv.im2col``:
# ``C kh kw`` rows, one column per output position of every image) and the
# whole convolution is **one matrix product** with the kernel flattened to
# ``(O, C kh kw)``: the same shape of computation as the ViT's patch
# projection E, which is the special case of a kernel as large as its
# stride (lesson 3). Below, ``conv.conv2d`` against the sum written out.

# %%
x = rng.standard_normal((2, 3, 7, 6))  # (B, C, H, W): odd sizes
w = rng.standard_normal((4, 3, 3, 3))  # (O, C, kh, kw)
y = conv.conv2d(Tensor(x), Tensor(w), stride=2, padding=1).data  # (2, 4, 4, 3)
xpad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
by_hand = np.zeros_like(y)
for i in range(y.shape[2]):
    for j in range(y.shape[3]):
        window = xpad[:, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3]  # (B, C, 3, 3)
        by_hand[:, :, i, j] = np.einsum("bcuv,ocuv->bo", window, w)
cols = conv.im2col(xpad, (3, 3), (2, 2))
print(f"im2col: {cols.shape[0]} rows (C kh kw = 3 * 3 * 3) x {cols.shape[1]} columns "
      f"(B H_out W_out = 2 * 4 * 3); conv2d against the loops: largest difference "
      f"{np.abs(y - by_hand).max():.1e}")  # fmt: skip

# %% [markdown]
# ## 2. Its backward is a convolution too: of the gradient, with the flipped kernel
#
# The weight's gradient is a matrix product's (``dL/dW = G X_cols^T``, as in
# ``linear``). For the input, follow one input value ``x[p, q]``: it is read
# by every output whose window covers it, with weight ``W[u, v]`` where
# ``p = s i + u``. So
#
#     dL/dx[p, q] = sum_{o, u, v} W[o, c, u, v] g[o, (p - u)/s, (q - v)/s]
#
# Put ``s - 1`` zeros between the gradient's entries (so that ``(p - u)/s``
# is always a position, zero where it is not a whole one), pad it by
# ``k - 1 - padding``, and substitute ``u' = k - 1 - u``: the sum becomes
# exactly the forward's formula, applied to the gradient with the kernel
# **flipped** in both directions and its two channel axes swapped. The
# forward correlates with ``W``; the backward correlates with ``W``
# flipped, which is a true convolution with ``W``: a single gradient at one
# output lays a copy of the kernel, upright, over the window it came from.
# ``conv.conv2d``'s docstring has the derivation line by line; here it is
# checked two ways: the input gradient against a convolution of the
# gradient with the flipped kernel, and every gradient against central
# differences in float64 (``tinyvit.gradcheck``), on sizes that the stride
# does not divide.

# %%
kernel = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0], [-2.0, 0.0, 0.0]])[None, None]  # (1,1,3,3)
image = Tensor(np.zeros((1, 1, 9, 9)), requires_grad=True)
out = conv.conv2d(image, Tensor(kernel), padding=1)
g = np.zeros(out.shape)
g[0, 0, 2, 2], g[0, 0, 6, 5] = 1.0, -0.5  # a gradient at two outputs only
out.backward(g)
flipped = np.ascontiguousarray(kernel[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
as_convolution = conv.conv2d(Tensor(g), Tensor(flipped), padding=3 - 1 - 1).data
print(f"dL/dx from backward() and conv2d(g, flipped kernel, padding k-1-p): largest "
      f"difference {np.abs(image.grad - as_convolution).max():.1e}")  # fmt: skip

x64 = Tensor(rng.standard_normal((2, 3, 7, 6)), requires_grad=True)
w64 = Tensor(rng.standard_normal((4, 3, 3, 2)), requires_grad=True)
b64 = Tensor(rng.standard_normal(4), requires_grad=True)
report = gradcheck(lambda x, w, b: conv.conv2d(x, w, b, stride=(2, 3), padding=(1, 0)),
                   (x64, w64, b64), names=("x", "weight", "bias"))  # fmt: skip
report.title = "conv2d, stride (2, 3), padding (1, 0), 7 x 6 input, against central differences"
print(report)
pooled = Tensor(rng.standard_normal((2, 3, 7, 6)), requires_grad=True)
print(gradcheck(lambda x: conv.max_pool2d(x, 3, 2, 1), (pooled,), names=("x (max_pool2d)",)))

fig, axes = plt.subplots(1, 4, figsize=(13, 3.4), layout="constrained")
panels = [
    (kernel[0, 0], "the kernel W (forward: correlate with it)"),
    (flipped[0, 0], "W flipped: the backward correlates with it"),
    (g[0, 0], "dL/dy: a gradient at two outputs"),
    (image.grad[0, 0], "dL/dx: W laid upright over each window"),
]
for ax, (values, title) in zip(axes, panels):
    limit = np.abs(values).max()
    ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("The backward of a convolution is a convolution of the gradient with the "
             "flipped kernel")  # fmt: skip
print("wrote", save_figure(fig, args.out / "conv_backward.png"))

# %% [markdown]
# ## 3. The stem: from 32 x 32 pixels to 8 x 8 tokens
#
# ``hybrid_cifar_2x3`` is the convolutional tokenizer of the Compact
# Transformers' CCT-2/3x2 (Hassani et al. 2021): two 3x3 convolutions (3 to
# 64 to 128 channels), each followed by 3x3 max pooling of stride 2 and a
# ReLU. ``--recipe hybrid`` narrows it to 32 and 64 channels, which makes a
# step on two cores about 1.5x faster (the screening runs in
# ``benchmarks/results/cifar10_hybrid/`` found the time better spent on
# more epochs). Each pooling halves the map, so a 32 x 32 image becomes an
# 8 x 8 map: 64 positions, each seeing a 4 x 4-pixel cell of the image and,
# through the two kernels and poolings, its neighborhood.
# The paper's 1x1 patches make each position one token; E projects it to
# width D; the class token and the position embeddings are added, and two
# pre-norm blocks (2 heads, MLP 128) do the rest. (The paper's own hybrids
# put a ResNet there; ``stem_norm="group"`` adds its GroupNorm.)
#
# A ViT must learn from data that nearby pixels belong together; a
# convolution has it built in. That is the inductive bias the paper says a
# ViT lacks (Section 3.1, "Inductive bias"), put back in its first layers
# only.

# %%
full = not args.quick
# Both test after every epoch (the hybrid recipe tests every fifth), to draw their curves.
vit_run = recipe("cpu", device=args.device, tta="none")
hybrid_run = recipe("hybrid", device=args.device, tta="none", test_every=1)
if args.quick:  # small models, so that seconds are enough
    small = {"dim": 32, "depth": 1, "heads": 2, "mlp_dim": 64}
    vit_run = recipe("cpu", device=args.device, tta="none",
                     model_overrides={**small, "patch_size": 8})  # fmt: skip
    hybrid_run = recipe("hybrid", device=args.device, tta="none", test_every=1,
                        model_overrides={**small, "stem_channels": (8, 16)})  # fmt: skip
manual_seed(0)
stem_model = hybrid.HybridViT(hybrid_run.model_config(num_classes=10)).eval()
shapes = [("image", (1, 3, 32, 32))]
with no_grad():
    features = Tensor(np.zeros((1, 3, 32, 32), np.float32))
    for n, stage in enumerate(stem_model.patch_embed.backbone.stages):
        features = stage(features)
        shapes.append((f"stage {n + 1}: conv, pool, ReLU", features.shape))
    tokens = stem_model.patch_embed(np.zeros((1, 3, 32, 32), np.float32))
shapes.append(("tokens x_p E (1x1 patches)", tokens.shape))
for label, shape in shapes:
    print(f"{label:<32} {shape}")
counted = hybrid.count_parameters(stem_model.config)
print(f"the hybrid: {stem_model.num_parameters():,} parameters ({counted:,} counted from "
      "its configuration)")

# %% [markdown]
# ## 4. Plain ViT against hybrid, for the same minutes
#
# Both runs use the trainer with a time budget: each times its first steps
# and fits its length (the warm-up, the cosine decay) to the minutes it is
# given. The plain ViT is the default CPU recipe (``vit_cifar_tiny``, the
# patch tokens' average, PatchDropout 0.5, flips); the hybrid is
# ``--recipe hybrid`` (the stem above, PatchDropout 0.5 on its tokens,
# their average, crops and flips, AdamW at 2e-3). To fit a few minutes both
# train on the first 10,000 training images and are tested on the first
# 2,000 test images.

# %%
minutes = args.minutes or (0.1 if args.quick else FULL_MINUTES)
limits = dict(train_limit=1024, test_limit=256) if args.quick else dict(
    train_limit=10_000, test_limit=2_000)  # fmt: skip
histories = {}
for label, run in (("plain ViT", vit_run), ("hybrid", hybrid_run)):
    run = dataclasses.replace(run, **limits, epochs=None, time_budget=60 * minutes)
    trainer = Trainer(run, dataset, args.out / label.replace(" ", "_"), progress=False)
    histories[label] = (trainer.fit(overwrite=True), trainer.model)
    history = histories[label][0]
    speed = np.median([r["train_images_per_s"] for r in history])
    print(f"{label}: {trainer.model.num_parameters():,} parameters, {speed:.0f} images/s "
          f"(median of the epochs), {100 * history[-1]['test_acc']:.1f}% after "
          f"{history[-1]['elapsed_seconds'] / 60:.1f} min")  # fmt: skip

fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
for (label, (history, model)), color in zip(histories.items(), ("tab:blue", "tab:orange")):
    minutes_at = [r["elapsed_seconds"] / 60 for r in history]
    accuracy = [100 * r["test_acc"] for r in history]
    ax.plot(minutes_at, accuracy, "o-", color=color,
            label=f"{label} ({model.num_parameters():,} parameters)")  # fmt: skip
ax.set_xlabel("wall time (minutes), this machine")
ax.set_ylabel(f"test accuracy (%), first {limits['test_limit']:,} images")
ax.set_title(f"The same {minutes:g} minutes each, {limits['train_limit']:,} training images")
ax.grid(alpha=0.3)
ax.legend()
print("wrote", save_figure(fig, args.out / "equal_time.png"))
if args.quick:
    print("--quick: seconds of training on a slice of the data are too few to compare the two")

# %% [markdown]
# ## 5. Where the trained hybrid looks
#
# The hybrid is a ViT on its stem's feature map, so everything that looks
# inside a ViT looks inside it: its attention maps lie on the 8 x 8 grid of
# tokens, each a 4 x 4-pixel cell of the image (``patch_embed.patch_size``
# is that stride, so the maps sit over the image as a plain ViT's patches
# do). Below: attention rollout and the last block's heads, for the
# average of the tokens that the hybrid classifies.

# %%
model = histories["hybrid"][1].eval()
images = dataset.x_test[:6]
x_test = backend.to_device(data.normalize(images), args.device)
logits, attentions = inspection.attend(model, x_test)
predictions = backend.to_numpy(logits.argmax(axis=1))
path = plot_attention_grid(
    images, attentions, dataset.y_test[:6], predictions, dataset.classes,
    args.out / "hybrid_attention.png", pool=model.pool,
    title="The hybrid's attention on its 8 x 8 tokens (each a 4 x 4-pixel cell)",
)  # fmt: skip
print("wrote", path)

# %% [markdown]
# ## What to take away
#
# * A convolution is im2col and one matrix product; its input gradient is a
#   convolution of the gradient with the flipped kernel, and the checks
#   above confirm the derivation to rounding.
# * The hybrid changes only what the tokens are: a ViT on a CNN's feature
#   map. The stem can cost most of a step's arithmetic at this size (a 3x3
#   convolution from 64 to 128 channels on a 16 x 16 map: hence the
#   recipe's narrower one), but hands the encoder 64 tokens that already
#   know their neighborhood.
# * At equal time on a small budget the hybrid should come out ahead, as
#   Section 4.2 finds at small compute; how far ahead on your machine is
#   what the figure shows.
