# %% [markdown]
# # Lesson 5: the whole Vision Transformer
#
# Lesson 3 turned an image into a sequence (Eq. 1), lesson 4 built the
# attention that mixes it. The rest of the model (Section 3.1) is a stack
# of ``L`` identical encoder blocks and a small head:
#
#     Eq. 1   z_0  = [x_class; x_p^1 E; ...; x_p^N E] + E_pos
#     Eq. 2   z'_l = MSA(LN(z_{l-1})) + z_{l-1}          l = 1 ... L
#     Eq. 3   z_l  = MLP(LN(z'_l)) + z'_l                l = 1 ... L
#     Eq. 4   y    = LN(z_L^0)
#
# and the logits are a linear layer on ``y``. Each block normalizes first
# ("pre-norm", the paper's LN), then adds its result back to what came in
# (the residual connection), so the sequence keeps its shape ``(N + 1, D)``
# from the first block to the last. Only the class token's row, ``z_L^0``,
# is used at the end.
#
# This lesson runs a small ViT by hand, module by module, printing each
# step's shape and parameters, and checks that the result is the model's
# own output. Then it counts the parameters of the paper's ViT-Base, Large
# and Huge (Table 1) from their configurations, without building them.
#
# Run: ``python lessons/05_the_whole_vit.py [--out DIR] [--quick] [--device cuda]``
# (no data needed; the full run also builds ViT-B/16 and runs one image through it).

# %%
import numpy as np

from tinyvit import Tensor, backend, concatenate, manual_seed, no_grad
from tinyvit.lesson import lesson_arguments
from tinyvit.vit import config, count_parameters, create, patchify
from tinyvit.viz import plt, save_figure

args = lesson_arguments("05_the_whole_vit", "The whole Vision Transformer, shape by shape.")
xp = backend.module_for(args.device)

# %% [markdown]
# ## 1. A small ViT and a batch of images
#
# ``vit_cifar_tiny`` is the model lesson 6 trains on CIFAR-10: 32 x 32
# images in patches of 4 x 4 (so ``N = 64``), width ``D = 96``, ``L = 6``
# blocks of 3 heads, an MLP of 192, and 10 classes. The shapes do not care
# what the pixels show, so the "images" are random numbers with the
# statistics of normalized pixels.

# %%
manual_seed(0)
model = create("vit_cifar_tiny").to(args.device).eval()
settings = model.config
print(f"ViT({model.extra_repr()}); each of its {settings['depth']} blocks is")
print(model.blocks[0])
images = xp.asarray(np.random.default_rng(0).standard_normal((2, 3, 32, 32)), dtype=np.float32)

# %% [markdown]
# ## 2. Through the model, one module at a time
#
# The same calls ``ViT.forward`` makes, written out, with the shape and
# the parameters of each step. The first block is shown in full; the
# other blocks are the same six steps with their own weights. Inside the
# MLP the width grows to ``mlp_dim`` and comes back to ``D``; inside the
# attention the heads split ``D`` into ``heads x D_h`` and join again
# (lesson 4). Everything else keeps the shape ``(B, N + 1, D)``.

# %%
rows = []  # (step, paper, shape, parameters)
updates = []  # per block: size of the MSA and MLP updates relative to the stream


def size(module_or_parameter):
    """The number of parameters of a module, or of one parameter."""
    if isinstance(module_or_parameter, Tensor):
        return module_or_parameter.size
    return module_or_parameter.num_parameters()


def norm(t):
    """Mean length of the token vectors of a (B, N+1, D) tensor."""
    return float(xp.sqrt((t.data**2).sum(axis=-1)).mean())


with no_grad():
    x = Tensor(images)
    rows.append(("input images", "", x.shape, 0))
    patches = patchify(x, settings["patch_size"])  # (B, N, P^2 C)
    rows.append(("cut into patches, flattened: x_p", "Eq. 1", patches.shape, 0))
    tokens = model.patch_embed.proj(patches)  # (B, N, D)
    rows.append(("patch embedding: x_p E", "Eq. 1", tokens.shape, size(model.patch_embed)))
    B, _, D = tokens.shape
    cls = model.cls_token.broadcast_to((B, 1, D))  # (B, 1, D)
    z = concatenate([cls, tokens], axis=1)  # (B, N+1, D)
    rows.append(("class token in front: [x_class; x_p E]", "Eq. 1", z.shape, D))
    z = z + model.pos_embed  # (B, N+1, D)
    rows.append(("+ position embedding E_pos: z_0", "Eq. 1", z.shape, size(model.pos_embed)))
    for l, block in enumerate(model.blocks, start=1):
        first = l == 1
        h = block.norm1(z)  # (B, N+1, D)
        msa = block.attn(h)  # (B, N+1, D)
        z_mid = msa + z  # (B, N+1, D): z'_l
        h2 = block.norm2(z_mid)  # (B, N+1, D)
        hidden = block.mlp.act(block.mlp.fc1(h2))  # (B, N+1, mlp_dim)
        mlp = block.mlp.fc2(hidden)  # (B, N+1, D)
        updates.append((norm(msa) / norm(z), norm(mlp) / norm(z_mid)))
        z_next = mlp + z_mid  # (B, N+1, D): z_l
        if first:
            rows += [
                (f"block {l}: LN", "Eq. 2", h.shape, size(block.norm1)),
                (
                    f"block {l}: MSA (U_qkv, heads, U_msa)",
                    "Eq. 2, 5-8",
                    msa.shape,
                    size(block.attn),
                ),
                (f"block {l}: + residual: z'_{l}", "Eq. 2", z_mid.shape, 0),
                (f"block {l}: LN", "Eq. 3", h2.shape, size(block.norm2)),
                (f"block {l}: MLP, first layer + GELU", "Eq. 3", hidden.shape, size(block.mlp.fc1)),
                (f"block {l}: MLP, second layer", "Eq. 3", mlp.shape, size(block.mlp.fc2)),
                (f"block {l}: + residual: z_{l}", "Eq. 3", z_next.shape, 0),
            ]
        else:
            rows.append((f"block {l}: the same six steps", "Eq. 2-3", z_next.shape, size(block)))
        z = z_next
    y = model.norm(z[:, 0])  # (B, D): LN of the class token's final state
    rows.append(("class token z_L^0, LN: y", "Eq. 4", y.shape, size(model.norm)))
    logits = model.head(y)  # (B, num_classes)
    rows.append(("head: Linear(D, classes)", "", logits.shape, size(model.head)))
    reference = model(images)  # the model's own forward

print(f"\n{'step':<44} {'paper':<11} {'output shape':<16} {'parameters':>10}")
for step, paper, shape, count in rows:
    print(f"{step:<44} {paper:<11} {str(tuple(shape)):<16} {count:>10,}")
total = sum(count for *_, count in rows)
print(f"{'total':<73} {total:>10,}")
gap = float(abs(logits.data - reference.data).max())
print(
    f"\nmax |by hand - model(images)| = {gap:.1e};  model.num_parameters() = "
    f"{model.num_parameters():,}"
)
assert gap < 1e-5 and total == model.num_parameters()

# %% [markdown]
# Two details of Eq. 4. The model normalizes every token and then keeps
# the class token's row (``forward_features`` returns all ``N + 1``
# normalized tokens, which lesson 8 uses); the hand version takes the row
# first and normalizes only it. LayerNorm works on each token separately,
# so the two agree (to float32 rounding). And the class token never sees the image
# directly: it starts as the same learned vector for every image and
# gathers everything it knows through attention, block by block.
#
# ## 3. The residual stream
#
# Written out, Eq. 2-3 say ``z_L = z_0 + (what block 1 adds) + ... + (what
# block L adds)``: each block reads a normalized copy of the sequence and
# adds an *update* to it; nothing ever overwrites the stream. With the
# 0.02-standard-deviation initialization the updates start small next to
# the stream (the figure). The attention's are tiny: its rows are still
# nearly uniform (lesson 4), so every token receives about the same average
# of the value vectors. So an untrained ViT is close to the identity plus
# small corrections, however deep, and the gradient reaches every block
# through the additions unchanged. Training makes the updates grow.

# %%
ratios = np.array(updates)  # (L, 2)
for l, (a, m) in enumerate(ratios, start=1):
    print(f"block {l}: |MSA update| / |z| = {a:.3f},  |MLP update| / |z'| = {m:.3f}")
fig, ax = plt.subplots(figsize=(6.5, 3.6))
blocks = np.arange(1, len(ratios) + 1)
ax.bar(blocks - 0.18, 100 * ratios[:, 0], width=0.36, label="MSA(LN(z)) (Eq. 2)")
ax.bar(blocks + 0.18, 100 * ratios[:, 1], width=0.36, label="MLP(LN(z')) (Eq. 3)")
ax.set_xticks(blocks)
ax.set_xlabel("encoder block l")
ax.set_ylabel("update size, % of the stream's size")
ax.set_title(
    "What each block adds to the residual stream, at initialization\n"
    "(mean token-vector lengths; untrained vit_cifar_tiny)"
)
ax.set_ylim(0, 100 * ratios.max() * 1.35)
ax.legend(frameon=False, ncol=2, loc="upper center")
ax.grid(axis="y", alpha=0.3)
print("wrote", save_figure(fig, args.out / "residual_updates.png"))

# %% [markdown]
# ## 4. Where the parameters are
#
# Counting by hand, for width ``D``, MLP width ``M``, ``L`` blocks,
# ``N`` patches of ``P x P x C``:
#
# * patch embedding ``E`` and its bias: ``P^2 C D + D``;
# * class token ``D``; position embedding ``(N + 1) D``;
# * per block: attention ``U_qkv`` and ``U_msa`` with biases,
#   ``3D^2 + 3D + D^2 + D``; the MLP, ``2 D M + M + D``; two LayerNorms,
#   ``4D``;
# * the final LayerNorm ``2D`` and the head, ``D * classes + classes``.
#
# The blocks hold nearly everything: ``12 D^2`` per block when ``M = 4D``,
# two thirds in the MLP, one third in attention. The function below
# computes these counts from a configuration alone, and the lesson checks
# them against the model's own parameters and against
# ``tinyvit.vit.count_parameters``.


# %%
def parameters_by_component(
    image_size, patch_size, num_classes, dim, depth, mlp_dim, channels=3, **_
):
    """Parameters of a ViT (without pre-logits) per component, from its configuration."""
    N, D, M, L = (image_size // patch_size) ** 2, dim, mlp_dim, depth
    return {
        "patch embedding E": patch_size**2 * channels * D + D,
        "class token + E_pos": D + (N + 1) * D,
        "attention (U_qkv, U_msa)": L * (3 * D * D + 3 * D + D * D + D),
        "MLP": L * (2 * D * M + M + D),
        "LayerNorms": L * 4 * D + 2 * D,
        "head": D * num_classes + num_classes,
    }


prefixes = {
    "patch embedding E": ("patch_embed.",),
    "class token + E_pos": ("cls_token", "pos_embed"),
    "attention (U_qkv, U_msa)": (".attn.",),
    "MLP": (".mlp.",),
    "LayerNorms": (".norm1.", ".norm2.", "norm."),
    "head": ("head.",),
}
in_model = dict.fromkeys(prefixes, 0)
for name, p in model.named_parameters():
    (component,) = [c for c, keys in prefixes.items() if any(k in name for k in keys)]
    in_model[component] += p.size
counted = parameters_by_component(**settings)
print(f"\n{'vit_cifar_tiny':<26} {'in the model':>13} {'counted':>10}")
for component in counted:
    print(f"{component:<26} {in_model[component]:>13,} {counted[component]:>10,}")
assert in_model == counted
assert sum(counted.values()) == count_parameters(**settings) == model.num_parameters()

# %% [markdown]
# ## 5. The paper's Table 1
#
# | Model | Layers | Hidden size D | MLP size | Heads | Params |
# | --- | --- | --- | --- | --- | --- |
# | ViT-Base | 12 | 768 | 3072 | 12 | 86M |
# | ViT-Large | 24 | 1024 | 4096 | 16 | 307M |
# | ViT-Huge | 32 | 1280 | 5120 | 16 | 632M |
#
# The table does not fix the patch size or the resolution, which change
# the patch embedding (``P^2 C D``) and ``E_pos`` (``(N + 1) D``); at
# 224 x 224 with 1000 classes, as in ``tinyvit.vit.CONFIGS``, the counts
# match Base and Huge to the million. For Large the paper's 307M is close
# to ViT-L/32 (306.5M); ViT-L/16 has 304.3M. Nothing is built to count
# them: ViT-H/14 would take 2.5 GB of memory in float32.

# %%
paper = {"ViT-B/16": 86, "ViT-B/32": 86, "ViT-L/16": 307, "ViT-L/32": 307, "ViT-H/14": 632}
print(
    f"\n{'model':<10} {'layers':>6} {'D':>6} {'MLP':>6} {'heads':>6} {'N+1':>5} "
    f"{'parameters':>13} {'paper':>7}"
)
for name, millions in paper.items():
    c = config(name)
    count = count_parameters(**c)
    tokens_in = (c["image_size"] // c["patch_size"]) ** 2 + 1
    print(
        f"{name:<10} {c['depth']:>6} {c['dim']:>6} {c['mlp_dim']:>6} {c['heads']:>6} "
        f"{tokens_in:>5} {count:>13,} {millions:>6}M"
    )
    assert abs(count / 1e6 - millions) / millions < 0.03, name
assert count_parameters(**config("ViT-B/16")) == 86_567_656

if not args.quick:
    # ViT-B/16 built for real: the count agrees, and one 224 x 224 image goes through it.
    manual_seed(0)
    base = create("ViT-B/16").to(args.device).eval()
    one = xp.asarray(np.random.default_rng(1).standard_normal((1, 3, 224, 224)), dtype=np.float32)
    with no_grad():
        features = base.forward_features(one)  # (1, 197, 768)
        scores = base.forward_head(features)  # (1, 1000)
    print(
        f"\nViT-B/16 built: {base.num_parameters():,} parameters; image (1, 3, 224, 224) -> "
        f"tokens {features.shape} -> logits {scores.shape}"
    )
    assert base.num_parameters() == 86_567_656
    del base

# %% [markdown]
# The figure compares the models: total size on the left (a log scale: the
# tiny CIFAR model is a thousand times smaller than ViT-Huge), and on the
# right how each splits between the components. In the big models the
# encoder blocks hold over 98% of the parameters; in the small ones the
# embeddings and the head take a few percent. The MLP of ``vit_cifar_tiny``
# is only twice as wide as ``D`` rather than four times, so its attention
# and MLP are the same size.

# %%
models = ["vit_cifar_tiny", "DeiT-Ti", "ViT-B/16", "ViT-L/16", "ViT-H/14"]
breakdowns = {name: parameters_by_component(**config(name)) for name in models}
components = list(counted)
colors = ["C1", "C4", "C0", "C2", "C7", "C3"]

fig, (left, right) = plt.subplots(
    1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [1, 1.6]}, constrained_layout=True
)
totals = [sum(b.values()) for b in breakdowns.values()]
positions = np.arange(len(models))
left.barh(positions, totals, color="0.55", label="counted from the configuration")
for i, (name, total_count) in enumerate(zip(models, totals)):
    left.text(total_count * 1.3, i, f"{total_count / 1e6:.2f}M", va="center", fontsize=8)
    if name in paper:
        left.plot(paper[name] * 1e6, i, "|", color="C3", ms=22, mew=2.5)
left.plot([], [], "|", color="C3", ms=10, mew=2.5, label="paper, Table 1")
left.set_xscale("log")
left.set_xlim(1e5, 5e9)
left.set_yticks(positions, models)
left.invert_yaxis()
left.set_xlabel("parameters (log scale)")
left.set_title("Model size")
left.legend(frameon=False, fontsize=8, loc="upper right")

start = np.zeros(len(models))
for component, color in zip(components, colors):
    share = np.array([100 * breakdowns[m][component] / t for m, t in zip(models, totals)])
    right.barh(positions, share, left=start, color=color, label=component)
    for i, value in enumerate(share):
        if value > 6:
            right.text(
                start[i] + value / 2,
                i,
                f"{value:.0f}%",
                ha="center",
                va="center",
                fontsize=8,
                color="white",
            )
    start += share
right.set_yticks(positions, models)
right.invert_yaxis()
right.set_xlim(0, 100)
right.set_xlabel("share of the parameters (%)")
right.set_title("Where the parameters are")
right.legend(frameon=False, fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2))
print("wrote", save_figure(fig, args.out / "parameters.png"))
