# %% [markdown]
# # Lesson 7: where the model looks
#
# A convolutional network's filters are easy to point at: each one sees a
# small window. A ViT has no windows. Each of its heads computes, for every
# token, a softmax over all the tokens (Appendix A, Eq. 6): the attention
# matrix ``A``, whose row ``i`` says how much token ``i`` takes from each
# token. Those probabilities are numbers we can read, and Section 4.5 of
# the paper reads them: Figure 6 shows, over the input images, which parts
# of the image reach the class token, the token the classifier looks at
# (Eq. 4). Our default model reads something else: the average of the patch
# tokens (``pool="mean"``, global average pooling, which the paper's
# Appendix D.3 finds as good as the class token once the learning rate
# suits it, and which trained better here). The maps then follow that
# average, *the readout*, instead of the class token; with a class-token
# model (``--checkpoint`` of a ``pool="cls"`` run) they follow the class
# token, as in the paper.
#
# This lesson draws two kinds of map for the trained model (lesson 6's, or
# the one shipped in ``lessons/models/``):
#
# * per head: the readout's row of one layer's attention, over the
#   patches;
# * attention rollout (Abnar & Zuidema 2020, the method behind Fig. 6,
#   Appendix D.8): the attention followed through all the layers at once.
#
# and looks at them for images the model gets right and images it gets
# wrong.
#
# Run: ``python lessons/07_attention_maps.py [--out DIR] [--quick] [--device cuda]
# [--data-dir PATH] [--checkpoint PATH]``. Without a trained model (lesson
# 6's or the shipped one) the lesson trains a short run first and says so.

# %%
import numpy as np

from tinyvit import backend, data, no_grad, viz
from tinyvit.lesson import checkpoint_flags, lesson_arguments, load_data, trained_model

args = lesson_arguments(
    "07_attention_maps", "Attention maps and attention rollout.", extra=checkpoint_flags
)
dataset = load_data(args)
model = trained_model(args, dataset).eval()
c = model.config
grid = model.patch_embed.grid
reader = viz.READERS[model.pool]  # what the classifier reads: the class token, or the average
print(
    f"the model: {c['depth']} layers of {c['heads']} heads, width {c['dim']}, "
    f"{c['patch_size']}x{c['patch_size']}-pixel patches on a {grid}x{grid} grid; "
    f"the classifier reads {reader}"
)

# %% [markdown]
# ## 1. Right and wrong
#
# First the model's verdict on a slice of the test set: its prediction and
# how sure it is (the softmax of the logits). The most confident right
# answers show what the model has learned to look for; the most confident
# wrong ones are where it is fooled, and the maps may show by what.

# %%
count = 500 if args.quick else 2000
x_test, y_test = dataset.x_test[:count], dataset.y_test[:count]
probabilities = []
with no_grad():
    for images, _ in data.batches(
        x_test, y_test, 250, shuffle=False, augment="none", drop_last=False, device=args.device
    ):
        logits = backend.to_numpy(model(images).data).astype(np.float64)  # (B, classes)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        probabilities.append(p / p.sum(axis=1, keepdims=True))
probabilities = np.concatenate(probabilities)  # (count, classes)
predictions = probabilities.argmax(axis=1)
confidence = probabilities.max(axis=1)
right = np.flatnonzero(predictions == y_test)
wrong = np.flatnonzero(predictions != y_test)
print(f"{len(right)} of {count} test images right ({100 * len(right) / count:.1f}%)")
rows = 4 if args.quick else 6
sure_right = right[np.argsort(-confidence[right])][:rows]
sure_wrong = wrong[np.argsort(-confidence[wrong])][:rows]
for name, picked in (("right", sure_right), ("wrong", sure_wrong)):
    print(f"most confident {name}:")
    for i in picked:
        truth, guess = dataset.classes[y_test[i]], dataset.classes[predictions[i]]
        sure = f"{confidence[i]:.0%} sure"
        print(f"  test image {i:4d}: true {truth:<10} predicted {guess:<10} ({sure})")

# %% [markdown]
# ## 2. The attention of every layer
#
# ``viz.attend`` runs the model with ``model.keep_attention()`` switched on:
# every block keeps the softmax probabilities of its last forward pass, and
# ``model.attention_maps()`` hands them back, one array per layer, shaped
# ``(B, heads, N+1, N+1)``: for each image and head, one row per query
# token (the class token first, then the ``N`` patches row by row) and one
# column per key token. Every row sums to 1.


# %%
def attention_of(indices):
    """Normalized test images -> (logits, attentions), the way the model saw them in training."""
    images = data.normalize(backend.to_device(x_test[indices], args.device))  # (B, 3, 32, 32)
    return viz.attend(model, images)


_, attentions = attention_of(sure_right)
print(f"{len(attentions)} layers, each {tuple(attentions[0].shape)} = (B, heads, N+1, N+1)")
print(f"rows sum to 1: largest error {float(abs(attentions[0].sum(axis=-1) - 1).max()):.1e}")

# %% [markdown]
# ## 3. One head's view: the readout's row
#
# Row 0 of a head's matrix is the class token's query. Its entries 1..N
# say how much the class token takes from each patch. For a model that
# classifies the average of the patch tokens, the row to read is the
# average of the patch tokens' rows (``viz.readout_row``): what that
# average takes from each patch. Laid out on the ``g x g`` patch grid
# (``viz.cls_attention``) and stretched over the image, the row shows where
# that head looks. Each head has its own projections (Eq. 5), so each may
# look somewhere else: one at the object, one at the background, one at a
# few sharp edges. Reading the last layer shows what the readout gathers
# just before the classifier reads it.
#
# One layer's map is not the whole story, though. By the last layer every
# token is already a mixture of many patches, so "the class token looks at
# token 17" no longer means "at patch 17 of the image".

# %%
heads = viz.cls_attention(attentions[-1], model.pool)  # (B, heads, g, g)
print(f"the last layer's maps of {reader}: {tuple(heads.shape)} = (B, heads, g, g)")
# How much attention goes to the class token rather than to the patches, per head:
last = backend.to_numpy(attentions[-1])  # (B, heads, N+1, N+1)
to_cls = last[:, :, 0, 0] if model.pool == "cls" else last[:, :, 1:, 0].mean(axis=-1)
for h, share in enumerate(to_cls.mean(axis=0)):
    print(f"  last layer, head {h + 1}: {reader} gives the class token {share:.0%}")

# %% [markdown]
# ## 4. Following the attention through the layers: rollout
#
# Each block adds the attention's output to a copy of its input (the
# residual connection of Eq. 2), so a token leaves a layer as roughly half
# "what it took from the others" and half "itself". Attention rollout
# writes that as a matrix per layer,
#
#     Â_l = (A_l + I) / rowsum(A_l + I),
#
# with ``A_l`` the layer's heads averaged, and multiplies the layers
# together, ``R = Â_L ... Â_2 Â_1``. Entry ``R[i, j]`` estimates how much of
# input patch ``j`` has flowed into token ``i`` at the top; the readout's row
# over the patches (``viz.attention_rollout``; row 0 for the class token, as
# in Fig. 6) is the map. It is a
# heuristic: it ignores the MLPs and the values' own mixing. But it uses
# every layer, and it is what the paper draws.
#
# In the figures each row is one test image: the image, its rollout, and the
# readout's map in each head of the last layer. Bright is where the
# attention goes; each map is scaled to its own range, but a map whose
# largest value is less than twice its mean gets proportionally less of
# the color bar, from its dark end, so a nearly flat map stays dark: no
# place stands out. Below 1.25x a map is called flat and gets no color at
# all (its image stays gray): an even color over the whole image would
# read as strong attention everywhere. The number in a map's corner is
# that ratio: 1.0x for attention spread evenly ("flat" below 1.25x), up to
# N (64 on an 8x8 grid) for attention on a single patch.

# %%
for name, picked in (("right", sure_right), ("wrong", sure_wrong)):
    if len(picked) == 0:
        print(f"no {name} predictions among these test images: nothing to draw")
        continue
    _, attentions = attention_of(picked)
    path = viz.plot_attention_grid(
        x_test[picked],
        attentions,
        y_test[picked],
        predictions[picked],
        dataset.classes,
        args.out / f"attention_{name}.png",
        title=f"Where {reader} looks: the model's most confident {name} answers",
        pool=model.pool,
    )
    print("wrote", path)

# %% [markdown]
# CIFAR-10 photos are taken with the object in the middle, so a model that
# has learned something should send more than its share of the rollout to
# the central patches. We can count that over many test images: the
# central quarter of the image (the middle half of the rows and of the
# columns) holds 25% of the patches.


# %%
def center_share(maps):
    """Mean share of each (B, g, g) map's total that falls on the central quarter."""
    maps = backend.to_numpy(maps)
    lo, hi = grid // 4, grid - grid // 4
    return float((maps[:, lo:hi, lo:hi].sum(axis=(1, 2)) / maps.sum(axis=(1, 2))).mean())


sample = np.arange(min(count, 128 if args.quick else 500))
_, attentions = attention_of(sample)
rollouts = {f: viz.attention_rollout(attentions, f, pool=model.pool) for f in viz.FUSIONS}
central = 100 * ((grid - 2 * (grid // 4)) / grid) ** 2
print(f"share of the rollout on the central {central:.0f}% of the patches:")
for fusion, maps in rollouts.items():
    mask = predictions[sample] == y_test[sample]
    print(
        f"  heads fused by {fusion:<4}: {center_share(maps):.0%} over {len(sample)} images "
        f"({center_share(maps[mask]):.0%} where right, {center_share(maps[~mask]):.0%} "
        "where wrong)"
    )

# %% [markdown]
# ## 5. How to fuse the heads
#
# The average over heads is the rollout paper's choice; other fusions
# answer other questions. ``max`` keeps, for each pair of tokens, the
# strongest head's link: a patch counts if any head carries it. ``min``
# keeps a link only if every head makes it, and with several heads that
# soon leaves little but the residual path: its maps come out flatter,
# drawn dim or, below 1.25x, gray. ``discard_ratio`` (used in
# many rollout implementations) zeroes each layer's weakest links before
# adding ``I``, which sharpens the map; the class token's column is never
# discarded (see ``viz.discard_lowest``).

# %%
shown = np.concatenate([sure_right[:3], sure_wrong[:3]])
_, attentions = attention_of(shown)
columns = {
    f"{f} fusion": viz.attention_rollout(attentions, f, pool=model.pool) for f in viz.FUSIONS
}
columns["mean fusion,\nlowest 90% discarded"] = viz.attention_rollout(
    attentions, "mean", discard_ratio=0.9, pool=model.pool
)
labels = [
    f"true: {dataset.classes[y_test[i]]}\npred: {dataset.classes[predictions[i]]}" for i in shown
]
colors = ["tab:green" if predictions[i] == y_test[i] else "tab:red" for i in shown]
path = viz.plot_attention_overlays(
    x_test[shown],
    columns,
    args.out / "rollout_fusions.png",
    row_labels=labels,
    row_colors=colors,
    title="Attention rollout with the heads fused in different ways",
)
print("wrote", path)

# %% [markdown]
# ## What to take away
#
# * Attention probabilities are plain numbers the model computes anyway;
#   keeping them costs one array per layer.
# * A single head's map is easy to draw and easy to over-read: by the last
#   layer the tokens are mixtures of patches. Rollout accounts for the
#   mixing through the layers, at the price of ignoring the MLPs.
# * A small model trained for half an hour on 32x32 images has coarse maps
#   (an 8x8 grid) and far less focused attention than the paper's ViT-L/16
#   at ImageNet scale: expect maps that pick out a few patches, not the
#   clean object outlines of Fig. 6. The share printed in section 4 says
#   whether the rollout leans toward the middle of the picture, where
#   CIFAR-10's objects are (above 25%), or not at all (about 25%: the
#   quick model, which has hardly learned anything).
# * Where the model is wrong, look at what it looked at. Background is a
#   strong cue on CIFAR-10 (water for ships, sky for aeroplanes, grass for
#   deer and horses), and a small model leans on it: a wrong answer often
#   fits the background better than the object.
