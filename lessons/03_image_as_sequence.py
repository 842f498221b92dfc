# %% [markdown]
# # Lesson 3: an image as a sequence of words
#
# A Transformer reads a sequence of vectors. An image is a grid of pixels.
# The whole trick of the Vision Transformer (Section 3.1, Eq. 1 and
# Figure 1 of Dosovitskiy et al. 2021) is the step between the two:
#
#     z_0 = [x_class; x_p^1 E; x_p^2 E; ...; x_p^N E] + E_pos
#
# Cut the ``H x W`` image into ``N = HW / P^2`` square patches of ``P x P``
# pixels, flatten each patch to a row of ``P^2 C`` numbers (``x_p^i``), and
# multiply every row by the same learned matrix ``E`` of shape
# ``(P^2 C, D)``. Put a learned class token in front and add a learned
# position embedding ``E_pos`` of shape ``(N + 1, D)``. The result is a
# sequence of ``N + 1`` "words" of width ``D``, and from here on the model is
# an ordinary Transformer encoder.
#
# This lesson follows one small drawn image through those steps, printing
# the shape after each, and checks that "flatten, then multiply by E" is
# exactly a convolution whose kernel and stride are both ``P``, which is
# how libraries implement it (and why tinyvit stores ``E`` in the shape of a
# convolution kernel).
#
# Run: ``python lessons/03_image_as_sequence.py [--out DIR] [--quick] [--device cuda]``
# (no data needed: the image is drawn by the lesson).

# %%
import numpy as np

from tinyvit import Tensor, backend, concatenate, manual_seed, no_grad
from tinyvit.lesson import lesson_arguments
from tinyvit.vit import ViT, patchify
from tinyvit.viz import plt, save_figure

args = lesson_arguments("03_image_as_sequence", "An image as a sequence of patch embeddings.")
xp = backend.module_for(args.device)

# %% [markdown]
# ## 1. An image to cut
#
# A 64 x 64 picture in three color channels, drawn with a few array
# assignments: sky, grass, a sun and a house. Flat colors are on purpose:
# several patches will be pure sky or pure grass, and that will matter when
# we get to the position embedding. With ``P = 16`` (the "16x16 words" of
# the paper's title) the image splits into a 4 x 4 grid, ``N = 16`` patches.
#
# tinyvit keeps images channel first, ``(B, C, H, W)``, as PyTorch does; the
# paper writes ``x`` in ``R^(H x W x C)``. Only the order of the numbers
# inside a flattened patch differs, and ``E`` learns whatever order it is
# given.


# %%
def draw_scene(size=64):
    """A (3, size, size) float32 picture: sky, grass, a sun and a house, values in [0, 1]."""
    rows, cols = np.mgrid[0:size, 0:size] / size  # pixel centers, as fractions of the side
    image = np.empty((3, size, size), dtype=np.float32)
    image[:] = np.array([0.55, 0.75, 0.95], dtype=np.float32)[:, None, None]  # sky
    image[:, rows >= 0.75] = np.array([0.30, 0.65, 0.25], dtype=np.float32)[:, None]  # grass
    sun = (rows - 0.14) ** 2 + (cols - 0.84) ** 2 < 0.085**2
    image[:, sun] = np.array([1.0, 0.85, 0.20], dtype=np.float32)[:, None]
    walls = (rows >= 0.47) & (rows < 0.82) & (cols >= 0.12) & (cols < 0.50)
    image[:, walls] = np.array([0.80, 0.25, 0.20], dtype=np.float32)[:, None]
    roof = (rows >= 0.28) & (rows < 0.47) & (np.abs(cols - 0.31) < rows - 0.28)
    image[:, roof] = np.array([0.40, 0.20, 0.15], dtype=np.float32)[:, None]
    door = (rows >= 0.62) & (rows < 0.82) & (cols >= 0.26) & (cols < 0.36)
    image[:, door] = np.array([0.25, 0.15, 0.10], dtype=np.float32)[:, None]
    return image


P = 16
image = draw_scene(64)  # (C, H, W) = (3, 64, 64)
images = xp.asarray(image[None])  # (B, C, H, W) = (1, 3, 64, 64): a batch of one
C, H, W = image.shape
N = (H // P) * (W // P)
print(f"image: (B, C, H, W) = {tuple(images.shape)};  P = {P}  ->  N = HW/P^2 = {N} patches")

# %% [markdown]
# ## 2. Patches, flattened: ``x_p``
#
# ``tinyvit.vit.patchify`` does the cutting with one reshape and one
# transpose, no loops: split ``H`` into (rows of patches, ``P``) and ``W``
# into (columns of patches, ``P``), bring the two grid axes to the front,
# and flatten the rest. Patches are numbered row by row, left to right, the
# way one reads a page. Each comes out as ``P * P * C = 768`` numbers:
# the red channel's 256 pixels, then the green's, then the blue's.

# %%
patches = patchify(images, P).data  # (B, N, C*P*P) = (1, 16, 768)
print(f"x_p = patchify(image, {P}): (B, N, P^2 C) = {tuple(patches.shape)}")

# The same thing with explicit loops, as a check of the numbering:
by_loops = xp.stack(
    [
        images[0, :, i * P : (i + 1) * P, j * P : (j + 1) * P].reshape(-1)  # (C*P*P,)
        for i in range(H // P)
        for j in range(W // P)
    ]
)  # (N, C*P*P)
print(f"patchify == loops over the grid: {bool((by_loops == patches[0]).all())}")

image_np = image.transpose(1, 2, 0)  # (H, W, C) for plotting
fig, ax = plt.subplots(figsize=(4.6, 4.6))
ax.imshow(image_np, extent=(0, W, H, 0))
for edge in range(0, W + 1, P):
    ax.axvline(edge, color="white", lw=1.5)
    ax.axhline(edge, color="white", lw=1.5)
for n in range(N):
    i, j = divmod(n, W // P)
    ax.text(
        j * P + 2,
        i * P + 4.5,
        str(n + 1),
        color="white",
        fontsize=11,
        weight="bold",
        va="center",
        bbox=dict(facecolor="black", alpha=0.45, pad=1.5, lw=0),
    )
ax.set_xticks(range(0, W + 1, P))
ax.set_yticks(range(0, H + 1, P))
ax.set_xlabel("x (pixels)")
ax.set_ylabel("y (pixels)")
ax.set_title(f"A {H}x{W} image cut into {N} patches of {P}x{P}\n(numbered in reading order)")
print("wrote", save_figure(fig, args.out / "patch_grid.png"))

# %% [markdown]
# The figure below shows the sequence the Transformer will read: the same
# 16 patches side by side (top), and the 16 rows of 768 numbers that they
# become (bottom). Nothing is lost and nothing is added: it is a
# rearrangement of the image's 12,288 numbers. Notice the rows that look
# the same: the patches of pure sky (1, 2, 3, 7, 8, 11, 12) and of pure
# grass (15, 16).

# %%
patches_np = backend.to_numpy(patches[0])  # (N, C*P*P)
fig = plt.figure(figsize=(11, 4.6))
grid = fig.add_gridspec(2, N, height_ratios=[1, 2.3], hspace=0.35, wspace=0.08)
for n in range(N):
    ax = fig.add_subplot(grid[0, n])
    ax.imshow(patches_np[n].reshape(C, P, P).transpose(1, 2, 0))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(str(n + 1), fontsize=9)
fig.text(0.5, 0.97, "The image as a sequence of patches x_p^1 ... x_p^16", ha="center", fontsize=12)
ax = fig.add_subplot(grid[1, :])
shown = ax.imshow(
    patches_np, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest"
)
ax.set_yticks(range(N), [str(n + 1) for n in range(N)], fontsize=7)
ax.set_ylabel("patch i")
for c, name in enumerate(("red", "green", "blue")):
    ax.axvline(c * P * P - 0.5, color="white", lw=1)
    ax.text(
        (c + 0.5) * P * P,
        -0.9,
        f"{name} channel: {P}x{P} pixels, row by row",
        ha="center",
        fontsize=8,
    )
ax.set_xlabel(f"position in the flattened patch (P\u00b2C = {C * P * P} numbers)")
fig.colorbar(shown, ax=ax, label="pixel value", pad=0.01)
print("wrote", save_figure(fig, args.out / "patch_sequence.png"))

# %% [markdown]
# ## 3. The linear projection ``E``
#
# Each row ``x_p^i`` is multiplied by the same matrix ``E``, giving a
# ``D``-wide patch embedding. Here is a small ViT with ``D = 32``;
# ``model.patch_embed`` is Eq. 1's ``x_p^i E`` (plus a bias, as in the
# official code). Its weight is stored as ``(D, C, P, P)``; flattening the
# last three axes and transposing gives the paper's ``E`` of shape
# ``(P^2 C, D)``.

# %%
manual_seed(0)
D = 32
model = ViT(image_size=H, patch_size=P, num_classes=10, dim=D, depth=1, heads=4, mlp_dim=64)
model.to(args.device).eval()
weight = model.patch_embed.proj.weight.data  # (D, C, P, P)
bias = model.patch_embed.proj.bias.data  # (D,)
E = weight.reshape(D, C * P * P).T  # (P^2 C, D): the paper's E
print(f"\nthe model's weight: (D, C, P, P) = {tuple(weight.shape)};  E = {tuple(E.shape)}")

with no_grad():
    embedded = model.patch_embed(images).data  # (B, N, D) = (1, 16, 32)
by_hand = patches @ E + bias  # (1, N, P^2 C) @ (P^2 C, D) -> (1, N, D)
print(
    f"x_p E: (B, N, D) = {tuple(embedded.shape)};  "
    f"max |model - patches @ E| = {float(abs(embedded - by_hand).max()):.1e}"
)

# %% [markdown]
# ## 4. ... is a convolution with kernel and stride ``P``
#
# A convolution slides a ``(C, K, K)`` kernel over the image, ``s`` pixels
# at a time, and at each stop takes the dot product of the kernel with the
# pixels under it; ``D`` kernels give ``D`` output channels:
#
#     out[d, i, j] = b[d] + sum over c, u, v of W[d, c, u, v] * x[c, i s + u, j s + v]
#
# With ``K = s = P`` the stops are exactly the patches, side by side and
# not overlapping, and the sum over ``(c, u, v)`` is the dot product of
# the flattened patch with one column of ``E``. The function below is that
# formula with plain loops over the stops: slow, but nothing hidden. It
# works for any stride; the patch embedding is the case ``stride = P``.


# %%
def convolve(image, weight, bias, stride):
    """A plain 2-D convolution without padding: (C, H, W) image, (D, C, K, K) kernels."""
    D, C, K, _ = weight.shape
    _, H, W = image.shape
    rows, cols = (H - K) // stride + 1, (W - K) // stride + 1
    out = xp.empty((D, rows, cols), dtype=image.dtype)  # (D, rows, cols)
    for i in range(rows):
        for j in range(cols):
            window = image[:, i * stride : i * stride + K, j * stride : j * stride + K]  # (C,K,K)
            out[:, i, j] = xp.einsum("dcuv,cuv->d", weight, window) + bias  # (D,)
    return out


feature_map = convolve(images[0], weight, bias, stride=P)  # (D, H/P, W/P) = (32, 4, 4)
as_sequence = feature_map.reshape(D, N).T  # (N, D): stops in reading order, like the patches
difference = float(abs(as_sequence - embedded[0]).max())
print(f"\nconvolution, kernel {P}, stride {P}: output (D, H/P, W/P) = {tuple(feature_map.shape)}")
print(f"flattened to a sequence: (N, D) = {tuple(as_sequence.shape)}")
print(f"max |convolution - patch embedding| = {difference:.1e}  (float32 rounding)")
assert difference < 1e-5, difference
print(
    f"with stride {P // 2} the kernels would overlap: "
    f"{tuple(convolve(images[0], weight, bias, stride=P // 2).shape)} outputs instead"
)

# %% [markdown]
# The two computations group the same multiply-adds differently, so they
# agree to float32 rounding, about 1e-7. The convolution's output is a
# ``D x 4 x 4`` feature map; reading its 16 positions row by row gives the
# sequence.
#
# Note what "the same ``E`` for every patch" implies: patches with the
# same pixels get the same embedding, wherever they are in the image.

# %%


def identical_groups(rows):
    """Groups (of two or more) of row numbers, counted from 1, whose rows are exactly equal."""
    groups = {}
    for n, row in enumerate(rows):
        groups.setdefault(row.tobytes(), []).append(n + 1)
    return [g for g in groups.values() if len(g) > 1]


emb = backend.to_numpy(embedded[0])  # (N, D)
print(f"patches whose embeddings are identical: {identical_groups(emb)}")

# %% [markdown]
# ## 5. The class token and the position embedding
#
# A Transformer is blind to order: permute its input tokens and its outputs
# are permuted the same way, nothing more (lesson 4 shows why: attention
# is a weighted average over a set). So the model adds a learned vector per
# position, ``E_pos``, a different one for patch 1, patch 2, ... and for
# the class token. In front of the patches goes ``x_class``, a learned
# embedding that belongs to no patch; after the encoder, its state is the
# image's representation (Eq. 4). Both start as small random numbers (the
# class token at about 1e-6, ``E_pos`` at 0.02) and are learned with
# everything else.

# %%
with no_grad():
    tokens = Tensor(embedded)  # (B, N, D) = (1, 16, 32)
    cls = model.cls_token  # (1, 1, D)
    sequence = concatenate([cls, tokens], axis=1)  # (B, N+1, D) = (1, 17, 32)
    z0 = sequence + model.pos_embed  # (B, N+1, D) + (1, N+1, D)
shapes = [
    ("images", images.shape),
    ("x_p (patchify)", patches.shape),
    ("x_p E (patch embedding)", tokens.shape),
    ("x_class (class token)", cls.shape),
    ("[x_class; x_p E]", sequence.shape),
    ("E_pos (position embedding)", model.pos_embed.shape),
    ("z_0 = [x_class; x_p E] + E_pos", z0.shape),
]
print()
for name, shape in shapes:
    print(f"  {name:<32} {str(tuple(shape)):>16}")

z0_np = backend.to_numpy(z0.data[0])  # (N+1, D)
print(f"tokens of z_0 that are identical: {identical_groups(z0_np)} (none: E_pos differs per row)")

# %% [markdown]
# The last figure shows the three matrices of Eq. 1, one row per token:
# the patch embeddings, the position embedding, and their sum ``z_0`` with
# the class token as row 0. The pure-sky rows of ``x_p E`` are identical
# stripes; ``E_pos`` is what tells them apart. At initialization it does so
# only faintly (its color scale is 25 times smaller: the rows of ``z_0``
# still look alike, but no two are equal), and training makes it count.
# In a trained model the position embeddings of nearby patches become
# similar to one another (the paper's Figure 7, center): the model learns
# the 2-D layout of the patches that nobody told it about.

# %%
labels = ["cls"] + [str(n + 1) for n in range(N)]
fig, axes = plt.subplots(1, 3, figsize=(12, 4.6))
panels = [
    (np.vstack([np.full((1, D), np.nan), emb]), "patch embeddings x_p^i E\n(no row for the class)"),
    (backend.to_numpy(model.pos_embed.data[0]), "position embedding E_pos"),
    (z0_np, "z_0 = [x_class; x_p E] + E_pos"),
]
for ax, (matrix, title) in zip(axes, panels):
    limit = np.nanmax(np.abs(matrix))
    shown = ax.imshow(
        matrix, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest"
    )
    ax.set_yticks(range(N + 1), labels, fontsize=7)
    ax.set_xlabel(f"embedding dimension (D = {D})")
    ax.set_title(title, fontsize=10)
    fig.colorbar(shown, ax=ax, fraction=0.05, pad=0.02)
axes[0].set_ylabel("token")
fig.suptitle(
    f"Eq. 1: {N} patches + 1 class token = a sequence of {N + 1} vectors of width {D}", fontsize=12
)
fig.tight_layout()
print("wrote", save_figure(fig, args.out / "embedding.png"))
