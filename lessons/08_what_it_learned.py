# %% [markdown]
# # Lesson 8: what the model learned (the paper's Figure 7)
#
# Section 4.5 of the paper opens up a trained ViT-L/32 and shows three
# things in Figure 7:
#
# * **left**, the first stage: the patch embedding ``E`` of Eq. 1, a linear
#   filter bank; its principal components look like the basis functions
#   an image coder would use for the fine structure inside a patch;
# * **center**, the position embeddings ``E_pos``: nobody told the model
#   that patches lie on a 2-D grid, yet it learns it;
# * **right**, the attention: how far each head looks, layer by layer, the
#   ViT's answer to a CNN's growing receptive field.
#
# This lesson draws the same three panels for the model lesson 6 trained,
# and compares each with what the paper found at ImageNet scale. The numbers
# printed beside each panel compare the trained model with an untrained one
# of the same shape: the difference is what training put there.
#
# Run: ``python lessons/08_what_it_learned.py [--out DIR] [--quick] [--device cuda]
# [--data-dir PATH] [--checkpoint PATH]``. It looks into lesson 6's model,
# else the one shipped in ``lessons/models/``; without either it trains a
# short run first and says so (``--quick``: seconds).

# %%
import numpy as np

from tinyvit import ViT, backend, data, viz
from tinyvit.lesson import checkpoint_flags, lesson_arguments, load_data, trained_model

args = lesson_arguments(
    "08_what_it_learned", "The paper's Figure 7 for a trained model.", extra=checkpoint_flags
)
dataset = load_data(args)
model = trained_model(args, dataset).eval()
backend.manual_seed(0)
untrained = ViT(**model.config).eval().to(args.device)  # the same shape, fresh weights
P, grid = model.patch_embed.patch_size, model.patch_embed.grid
D = model.config["dim"]
print(f"the model: {P}x{P}-pixel patches on a {grid}x{grid} grid, width {D}")

# %% [markdown]
# ## 1. The patch embedding: a bank of filters
#
# Eq. 1 multiplies every flattened patch by the same matrix ``E``. Each of
# its ``D`` columns is a filter of ``P x P x 3`` numbers, and the patch's
# embedding is the list of the patch's dot products with them: exactly a
# convolution with kernel and stride ``P`` (tinyvit stores ``E`` in that
# shape, ``(D, 3, P, P)``). Looking at ``D`` filters one by one is hard, so
# the paper looks at their principal components: the directions, in the
# space of ``P x P x 3`` patches, along which the filters vary most
# (``viz.embedding_filter_components``: center the filters, take an SVD).
# Each component is shown as a small color image, rescaled to [0, 1].
#
# The paper finds (for ViT-L/32, on 32x32-pixel patches) components that
# "resemble plausible basis functions for a low-dimensional representation
# of the fine structure within each patch": smooth color blobs, then
# gradients and stripes of rising frequency, as in the DCT basis of JPEG.
# Our patches are tiny (``P`` of 4 pixels on CIFAR-10, 8 in the quick
# run), so expect the same family in coarse form: a few color and
# brightness components first (light versus dark, one color versus
# another), then gradients across the patch, and noise-like components
# after that. An untrained ``E`` is random: its variance is spread evenly
# over all directions and its components are all noise. The printed shares
# measure the difference: training concentrates the filters' variance in
# the first few components.

# %%
for name, m in (("trained", model), ("untrained", untrained)):
    _, share = viz.embedding_filter_components(m.patch_embed.proj.weight)
    share = backend.to_numpy(share)
    print(
        f"{name:>9}: the first component holds {share[0]:.0%} of the filters' variance, "
        f"the first five {share[:5].sum():.0%}"
    )
print("wrote", viz.plot_embedding_filters(model, args.out / "embedding_filters.png"))

# %% [markdown]
# ## 2. The position embeddings: the grid, rediscovered
#
# ``E_pos`` gives every position ``1..N`` its own learned vector, added to
# the patch's embedding (Eq. 1). The model is handed these positions as a
# flat list: "2-D" appears nowhere in it. The figure takes each patch
# position in turn and draws, as a small tile laid out on the patch grid,
# the cosine similarity of its embedding with the embeddings of all the
# others (``viz.position_similarity``). The tile in row ``r``, column ``c``
# is bright where the embeddings are like that of patch ``(r, c)``; a red
# square outlines the patch itself, its own cell ``(r, c)`` in its tile
# (similarity 1), so that any other bright spot stands out as another
# position the model finds alike.
#
# In the paper each tile has a bright spot at its own position that fades
# with distance: "closer patches tend to have more similar position
# embeddings", and patches in the same row or column are alike ("row-column
# structure"). So the 2-D layout of the image is learned from data; that is
# why the hand-designed 2-D embeddings of Appendix D.4 gain nothing. At
# initialization the vectors are random and nearly orthogonal: every tile
# is flat except for its own pixel, and the printed similarities are about
# zero. After training, neighboring positions come out clearly more
# similar than distant ones. A small model trained briefly on CIFAR-10 may
# also show a coarser pattern beside the local one: central positions
# alike, border positions alike (CIFAR-10 photos put the object in the
# middle and background around it). The red squares show one more thing:
# each tile is nearly its own mirror image, bright at the patch itself
# and at its mirror position across the middle column. The model was
# trained on randomly flipped images, where a patch's content turns up at
# either place; in the shipped model a position is more alike to its
# mirror position (cosine similarity about 0.95) than to its neighbors
# (about 0.77). The clean row-and-column pattern of the paper needs more
# data and longer training.

# %%
distance = viz.patch_distances(grid, 1, dtype=np.float64)  # (N, N), in patches
near = np.isclose(distance, 1.0)  # left, right, above, below
far = distance >= grid / 2
for name, m in (("trained", model), ("untrained", untrained)):
    sim = backend.to_numpy(viz.position_similarity(m.pos_embed)).reshape(grid**2, grid**2)
    print(
        f"{name:>9}: mean cosine similarity of neighboring positions {sim[near].mean():+.2f}, "
        f"of positions {grid // 2}+ patches apart {sim[far].mean():+.2f}"
    )
print("wrote", viz.plot_position_similarity(model, args.out / "position_similarity.png"))

# %% [markdown]
# ## 3. How far the heads look
#
# A CNN sees the whole image only in its upper layers: its receptive field
# grows a few pixels per layer. Self-attention can reach any patch from the
# first layer on. Does it? For every head, Fig. 7 (right) measures the
# *mean attention distance*: for each query patch, the distance in pixels
# to every other patch weighted by the attention it gives it, averaged over
# query patches and over images (``viz.mean_attention_distance``; the class
# token is left out and each row renormalized over the patches).
#
# Two reference points: a head that looks only at its own patch scores 0; a
# head that spreads its attention evenly over the image scores the mean
# distance between two patches (the dashed line: 16.5 pixels on a 32x32
# image cut into 4-pixel patches).
#
# The paper (ViT-L/16, 24 layers, 224x224 images cut into a 14x14 grid)
# finds, in the lowest layers, heads that already attend to most of the
# image (over 100 pixels) beside heads that stay local (a few tens of
# pixels or less). With depth the spread closes until every head looks far:
# about 100-120 pixels, close to what uniform attention gives on that grid
# (116 pixels). The paper suggests the local heads do the work of a CNN's
# first layers; in hybrid models, whose patches come out of a ResNet, they
# are rarer.
#
# An untrained model attends almost evenly everywhere (its queries and keys
# are small random vectors), so all its heads sit on the dashed line; the
# printed numbers show it. Training moves heads off the line. On 32x32
# images there is far less room between "local" and "global" than at
# 224x224 (the whole image is 8 patches wide), and a short run learns less
# structure, so look for the paper's pattern only roughly: the heads that
# have left the line, how far, and in which layers. A long run (lesson 6's
# full recipe, or the GPU recipe) shows more than a quick one.

# %%
count = 128 if args.quick else 500
x, y = dataset.x_test[:count], dataset.y_test[:count]


def attention_distance(m):
    """(layers, heads) mean attention distance over the first ``count`` test images."""
    total = 0.0
    for images, _ in data.batches(
        x, y, 100, shuffle=False, augment="none", drop_last=False, device=args.device
    ):
        _, attentions = viz.attend(m, images)
        total = total + backend.to_numpy(viz.mean_attention_distance(attentions, P)) * len(images)
    return total / count  # (layers, heads)


distances = attention_distance(model)
untrained_distances = attention_distance(untrained)
print(f"mean attention distance in pixels (uniform: {viz.uniform_attention_distance(grid, P):.1f})")
for layer, (d, d0) in enumerate(zip(distances, untrained_distances), start=1):
    heads = " ".join(f"{v:5.1f}" for v in d)
    print(f"  layer {layer}: heads {heads}   (untrained: {d0.min():.1f} to {d0.max():.1f})")
path = viz.plot_attention_distance(distances, args.out / "attention_distance.png", P, grid)
print("wrote", path)

# %% [markdown]
# ## 4. Figure 7, all three panels
#
# The same three panels side by side, as the paper lays them out.

# %%
title = f"What a ViT learned on CIFAR-10 ({P}x{P} patches, {grid}x{grid} grid, width {D})"
print("wrote", viz.plot_figure7(model, distances, args.out / "figure7.png", title=title))

# %% [markdown]
# ## What to take away
#
# * The first layer of a ViT is a filter bank, like a CNN's first layer,
#   but applied once per patch; its principal components are a learned,
#   JPEG-like basis for what a patch can contain.
# * The model is told nothing about the 2-D layout of the patches; their
#   position embeddings learn it (closer patches, more similar vectors).
# * Attention is free to be global from the first layer; trained heads
#   use that freedom, and some choose to stay local. With depth, attention
#   reaches further: the ViT builds its own receptive fields instead of
#   inheriting them from the architecture.
