# %% [markdown]
# # Lesson 12: a real ViT
#
# Every lesson so far looked at models we trained ourselves: a few million
# parameters, half an hour of a CPU, 32x32 pictures of CIFAR-10. The paper
# is about something else. Its models are pre-trained on ImageNet-21k (14
# million images) or JFT-300M, then fine-tuned on the task at hand (Section
# 3.2), and its figures look inside those. This lesson loads one of them,
# the paper's ViT-B/16 (86 million parameters, 12 layers of 12 heads, width
# 768, 224x224 images cut into a 14x14 grid of 16x16 patches; pre-trained on
# ImageNet-21k and fine-tuned on ImageNet), and does with it what lessons 7
# and 8 did with the small model:
#
# 1. classifies photos (matplotlib ships one, Grace Hopper's portrait; pass
#    your own with ``--image``);
# 2. draws Figure 6 on them: attention rollout, where the class token's
#    information comes from, at 224x224;
# 3. draws Figure 7 of the real weights: the principal components of the
#    patch embedding's filters, the similarity of the position embeddings,
#    and how far each head looks, layer by layer.
#
# Each beside the same thing for lesson 8's tiny model (the CIFAR-10 model
# shipped in ``lessons/models/``), so the difference that scale makes is in
# front of you.
#
# The weights come without PyTorch (``tinyvit.from_pretrained``): from the
# Hugging Face Hub's cache when timm's copy
# (``timm/vit_base_patch16_224.orig_in21k_ft_in1k``) is there, else from the
# paper's own bucket (``imagenet21k+imagenet2012/ViT-B_16-224``, 330 MB,
# downloaded once into ``$TINYVIT_DATA/vit_models``). ``--model`` names
# any other (a timm name, an official one, a path). Without a network and
# with nothing cached the lesson says so in one line and lets the shipped
# CIFAR-10 model stand in, so that every cell still runs; ``--quick`` does
# the same without trying (seconds, no download).
#
# Run: ``python lessons/12_a_real_vit.py [--model NAME|PATH] [--image PATH ...]
# [--out DIR] [--quick] [--device cuda]``.

# %%
import numpy as np
from matplotlib import cbook

from tinyvit import backend, viz
from tinyvit.cli import fail
from tinyvit.images import prepare, preprocessing_of, read_image, resize_and_crop
from tinyvit.labels import class_names
from tinyvit.lesson import existing_file, lesson_arguments, real_vit, shipped_model
from tinyvit.predict import top_classes

DISPLAY = 224  # pixels: the side at which the photos are drawn


def flags(parser):
    parser.add_argument(
        "--model", metavar="NAME|PATH",
        help="the pre-trained ViT to look into (default: the paper's ViT-B/16, from the Hub's "
        "cache or the paper's bucket)",
    )  # fmt: skip
    parser.add_argument(
        "--image", action="append", type=existing_file, metavar="PATH",
        help="a photo to classify and look at (repeat for more; default: grace_hopper.jpg, "
        "which matplotlib ships)",
    )  # fmt: skip


args = lesson_arguments("12_a_real_vit", "A real pre-trained ViT: Figures 6 and 7.", extra=flags)
model, name, real = real_vit(args.model, args.quick, args.device)
tiny = shipped_model(args.device)  # lesson 8's model
title = name if real else "stand-in: the CIFAR-10 model"
for label, m in ((title, model), ("lesson 8's tiny model", tiny)):
    c = m.config
    rows, cols = m.patch_embed.grid_size
    print(
        f"{label}: {m.num_parameters():,} parameters, {c.depth} layers of {c.heads} heads, "
        f"width {c.dim}, {rows}x{cols} patches of {c.patch_size}x{c.patch_size} pixels, "
        f"{c.num_classes} classes"
    )

# %% [markdown]
# ## 1. Your photos, classified
#
# A photo becomes the model's input by the preprocessing it was trained
# with (``tinyvit.images.prepare``): resized and cropped to 224x224 as its
# preprocessing says, scaled to [0, 1], normalized by its mean and standard
# deviation (0.5 for every channel here: inputs in [-1, 1]). The tiny model
# gets the same part of the photo, shrunk to 32x32.
#
# A model fine-tuned on ImageNet knows its 1000 classes: for Grace Hopper
# in her Navy uniform expect "military uniform" near the top, with some
# probability left for the tie, the suit, or the mortarboard. The tiny model
# knows ten things (airplane to truck) and has seen no person: whatever it
# answers, it answers from colors and blobs at 32x32.

# %%
paths = args.image or [cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)]
try:
    photos = [read_image(path) for path in paths]
except (OSError, ValueError) as error:
    fail(str(error))
shown = preprocessing_of(model).replace(image_size=DISPLAY)  # the model's view, drawn at 224
views = np.stack([resize_and_crop(photo, shown) for photo in photos])  # (B, 224, 224, 3)
inputs = {
    "model": backend.to_device(prepare(photos, model), args.device),  # (B, 3, H, W)
    "tiny": backend.to_device(prepare(list(views), tiny), args.device),  # (B, 3, 32, 32)
}
found = {}
for key, m in (("model", model), ("tiny", tiny)):
    logits, attentions = viz.attend(m, inputs[key])
    found[key] = (backend.to_numpy(logits), attentions)
names = {"model": class_names(model), "tiny": class_names(tiny)}
labels = []
for b, path in enumerate(paths):
    print(f"\n{path}:")
    for key, label in (("model", title), ("tiny", "tiny model")):
        best = top_classes(found[key][0][b], 3)
        guesses = ", ".join(f"{names[key][i]} {100 * p:.1f}%" for i, p in best)
        print(f"  {label}: {guesses}")
    index, probability = top_classes(found["model"][0][b], 1)[0]
    labels.append(f"{names['model'][index]}\n{probability:.0%}")

# %% [markdown]
# ## 2. Figure 6: where the class token's information comes from
#
# Attention rollout (Abnar & Zuidema 2020; the paper's Appendix D.8)
# follows the attention through every layer at once: each layer's heads are
# averaged, the residual connection added as the identity, the rows
# renormalized, and the layers multiplied (``viz.attention_rollout``). What
# the class token ends up with, over the patches, is the map. The paper's
# Figure 6 shows it on ImageNet photos: bright on the object that names the
# class, dark on the background.
#
# On ViT-B/16 the map has 14x14 cells of 16x16 pixels and follows the
# outline of what the model recognizes (the face and the uniform, here);
# the tiny model's 8x8 cells of a 32x32 picture can only point at a region.
# The corner number of each map is its peak over its mean: how much it
# singles out.

# %%
short = "pre-trained" if real else "stand-in"
maps = {}
for label, key, m in ((short, "model", model), ("tiny", "tiny", tiny)):
    attentions, pool, grid = found[key][1], m.config.pool, m.patch_embed.grid_size
    maps[f"{label}:\nrollout"] = viz.attention_rollout(
        attentions, pool=pool, grid=grid
    )
    last = viz.cls_attention(attentions[-1], pool, grid)  # (B, heads, rows, cols)
    maps[f"{label}:\nlast layer"] = last.mean(axis=1)  # the heads' mean
path = viz.plot_attention_overlays(
    views.transpose(0, 3, 1, 2), maps, args.out / "figure6.png", row_labels=labels,
    title=f"Figure 6: attention rollout\n{title} and lesson 8's tiny model",
    note=f"the {short} model's view of the photo, drawn at {DISPLAY} x {DISPLAY};\nthe tiny "
    f"model sees the same part at 32 x 32; left: the {short} model's answer; last layer: "
    "the mean of its heads' maps",
)  # fmt: skip
print("\nwrote", path)

# %% [markdown]
# ## 3. Figure 7: what the weights learned
#
# The three panels of Figure 7, for the real model above and the tiny one
# below (lesson 8 draws them for the tiny model alone):
#
# * **left**, the principal components of the patch embedding ``E``. For
#   ViT-B/16 each filter is a 16x16x3 patch, and the first components are
#   what the paper calls "plausible basis functions for a low-dimensional
#   representation of the fine structure within each patch": smooth
#   blobs, then gradients and stripes of rising frequency, in pairs, much
#   like the DCT basis of JPEG. The tiny model's 4x4 filters can only hint
#   at them.
# * **center**, the cosine similarity of the position embeddings, one tile
#   per patch. Pre-trained at scale, each tile is a bright spot at its own
#   patch that fades with distance, with its row and its column lighter
#   than the rest: the model has learned the 2-D grid it was never told of.
# * **right**, the mean attention distance of every head against depth,
#   measured on the photos (several crops and mirror images of each). In the
#   paper's lowest layers some heads already attend over most of the image
#   while others stay local, a few tens of pixels (a CNN's early layers do
#   the same work); with depth the local heads disappear and every head looks
#   far. These are the local heads that lesson 8 could not find in the tiny
#   model: on 32x32 pictures of 8x8 patches there is too little room, and
#   too little data, for them.

# %%


def crops(views, count=None):
    """Up to ``count`` views of each photo (default: all ten): the whole, its four corners
    (80% of the side), and each of them mirrored."""
    side = views.shape[1]
    inner = int(0.8 * side)
    out = []
    for view in views:
        corners = [view[:inner, :inner], view[:inner, -inner:], view[-inner:, :inner],
                   view[-inner:, -inner:]]  # fmt: skip
        mirrored = [[crop, crop[:, ::-1]] for crop in [view, *corners]]
        out += [np.ascontiguousarray(c) for pair in mirrored for c in pair][:count]
    return out


def attention_distance(m, images, batch=5):
    """(layers, heads) mean attention distance of ``m`` over ``images`` (uint8 (h, w, 3)
    squares, each resized whole to the model's input)."""
    whole = preprocessing_of(m).replace(crop_pct=1.0)
    total = 0.0
    for start in range(0, len(images), batch):
        x = backend.to_device(prepare(images[start : start + batch], whole), args.device)
        _, attentions = viz.attend(m, x)
        total = total + len(x) * backend.to_numpy(viz.mean_attention_distance(
            attentions, m.config.patch_size, grid=m.patch_embed.grid_size))  # fmt: skip
    return total / len(images)


sample = crops(views, 2 if args.quick else None)
print(f"mean attention distance over {len(sample)} views of {len(photos)} photo(s)")
fig = viz.plt.figure(figsize=(17, 10.5), layout="constrained")
both = ((title, model), ("lesson 8's tiny model", tiny))
for panel, (label, m) in zip(fig.subfigures(2, 1), both):  # a row of three panels each
    distances = attention_distance(m, sample)  # (layers, heads)
    P, grid = m.config.patch_size, m.patch_embed.grid_size
    uniform = viz.uniform_attention_distance(grid, P)
    print(
        f"  {label}: layer 1's heads from {distances[0].min():.0f} to "
        f"{distances[0].max():.0f} px, layer {len(distances)}'s from "
        f"{distances[-1].min():.0f} to {distances[-1].max():.0f} px (uniform attention: "
        f"{uniform:.0f} px)"
    )
    left, center, right = panel.subfigures(1, 3, width_ratios=[1.0, 1.15, 1.1])
    viz.draw_embedding_filters(left, m)
    viz.draw_position_similarity(center, m)
    viz.draw_attention_distance(right, distances, P, grid)
    panel.suptitle(label, fontsize=11, fontweight="bold")
fig.suptitle("Figure 7: the patch embedding, the position embeddings, the attention distance")
print("wrote", viz.save_figure(fig, args.out / "figure7.png"))

# %% [markdown]
# ## What to take away
#
# * A pre-trained ViT is a few arrays and a configuration: tinyvit reads
#   them (safetensors from the Hub, ``.npz`` from the paper's bucket) into
#   the same ``ViT`` class the lessons trained, and the same functions
#   look inside it.
# * Scale changes what a ViT learns, not how it is built: a bank of
#   JPEG-like patch filters, position embeddings that know the 2-D grid,
#   and, in the early layers, local heads beside global ones. The tiny
#   model shows each in rough form or not at all.
# * To make it yours: fine-tune it on a folder of your own images,
#   ``python -m tinyvit.finetune --model NAME --data-dir FOLDER`` (the
#   README's "Your own images").
