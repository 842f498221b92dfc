# %% [markdown]
# # Lesson 9: fine-tuning at a higher resolution
#
# The paper's models are pre-trained once, on a large data set, and then
# fine-tuned on each downstream task (Section 3.2, "Fine-tuning and higher
# resolution"). Two things change between the two phases:
#
# * **The head.** "We remove the pre-trained prediction head and attach a
#   zero-initialized D x K feedforward layer, where K is the number of
#   downstream classes." A zero head predicts nothing at first and, because
#   its weights are zero, passes no gradient to the body on the first step:
#   the pre-trained features are left alone until the head has learned to
#   read them.
# * **The resolution.** "It is often beneficial to fine-tune at higher
#   resolution than pre-training. When feeding images of higher resolution,
#   we keep the patch size the same, which results in a larger effective
#   sequence length." The encoder does not care how long the sequence is,
#   but the learned position embeddings E_pos (Eq. 1) exist only for the old
#   grid of patches. "We therefore perform 2D interpolation of the
#   pre-trained position embeddings, according to their location in the
#   original image" (``tinyvit.resample.resample_pos_embed``).
#
# Here the pre-trained model is lesson 6's CIFAR-10 model, else the one
# shipped in ``lessons/models/`` (without either, a short run trained now).
# The downstream task is a harder slice of CIFAR-10, the five animals a
# small model confuses most (bird, cat, deer, dog, horse), at 48 x 48
# pixels: the 32 x 32 images are
# upsampled bilinearly, so with 4-pixel patches the sequence grows from
# 8 x 8 = 64 to 12 x 12 = 144 patches. (Upsampling adds no detail; in the
# paper the higher resolution brings real detail too.) We compare, for the
# same number of steps, fine-tuning from the checkpoint with training the
# same architecture from scratch, against the checkpoint as it is.
#
# Run: ``python lessons/09_fine_tuning.py [--out DIR] [--quick] [--device cuda]
# [--data-dir PATH] [--checkpoint PATH] [--resolution 48] [--steps 300]``. The
# full run takes about 6 minutes on a 2-core CPU (about 3 more to train a
# short run when there is no model); ``--quick`` takes seconds.

# %%
import numpy as np

from tinyvit import backend, data, manual_seed, no_grad
from tinyvit.checkpoint import write_npz
from tinyvit.checks import POSITIVE_INT
from tinyvit.cli import flag_type
from tinyvit.finetune import finetune
from tinyvit.interop import for_finetuning, load_official, to_official
from tinyvit.lesson import checkpoint_flags, lesson_arguments, load_data, trained_model
from tinyvit.resample import interpolate
from tinyvit.vit import ViT
from tinyvit.viz import draw_position_similarity, plot_finetune_curves, plt, save_figure

FULL_STEPS = 300  # the full lesson's fine-tuning steps


def flags(parser):
    checkpoint_flags(parser)
    parser.add_argument("--resolution", type=flag_type(POSITIVE_INT), default=48,
                        help="fine-tuning image size, a multiple of the patch size (48)")
    parser.add_argument("--steps", type=flag_type(POSITIVE_INT), default=None,
                        help=f"fine-tuning steps ({FULL_STEPS})")  # fmt: skip


args = lesson_arguments("09_fine_tuning", "Fine-tuning at a higher resolution.", extra=flags)
dataset = load_data(args)
model = trained_model(args, dataset).to(args.device)
steps = args.steps or (6 if args.quick else FULL_STEPS)
batch_size = 32 if args.quick else 64
grid = model.patch_embed.grid
print(f"pre-trained model: {model.num_parameters():,} parameters, {model.image_size} x "
      f"{model.image_size} images, {grid} x {grid} patches")  # fmt: skip

# %% [markdown]
# ## 1. The downstream task
#
# Five of CIFAR-10's classes, relabeled 0-4. The checkpoint was trained
# on all ten, so it already has an answer: restrict its ten logits to these
# five and take the largest. That is the baseline, "the unchanged model at
# its own resolution".

# %%
TASK = ("bird", "cat", "deer", "dog", "horse")
chosen = np.array([dataset.classes.index(name) for name in TASK])


def task_split(x, y, limit):
    keep = np.flatnonzero(np.isin(y, chosen))[:limit]
    return x[keep], np.searchsorted(chosen, y[keep])  # labels 0..4 in TASK's order


x_train, y_train = task_split(dataset.x_train, dataset.y_train, 1024 if args.quick else None)
x_test, y_test = task_split(dataset.x_test, dataset.y_test, 200 if args.quick else 2000)
print(f"task: {', '.join(TASK)}; {len(y_train):,} training and {len(y_test):,} test images")


def accuracy_on_task(net, size):
    """The 10-class model's accuracy on the task: the largest of the five chosen logits."""
    net.eval()
    correct = 0
    with no_grad():
        for x, y in data.batches(x_test, y_test, 500, shuffle=False, augment="none",
                                 drop_last=False, device=args.device):  # fmt: skip
            logits = net(interpolate(x, size)).data[:, backend.to_device(chosen, args.device)]
            correct += int((logits.argmax(axis=1) == y).sum())
    return correct / len(y_test)


baseline = accuracy_on_task(model, model.image_size)
print(f"unchanged model at {model.image_size} x {model.image_size}: {100 * baseline:.1f}%")

# %% [markdown]
# ## 2. A new head, a longer sequence, through the official checkpoint format
#
# The paper's models are published as ``.npz`` files in the layout of the
# original JAX code (``ViT-B_16.npz`` and friends). To walk the same path
# without downloading anything, we write our checkpoint in that layout
# (``tinyvit.interop.to_official``) and read it back with
# ``tinyvit.interop.load_official``, asking for 5 classes at the new
# resolution: the loader removes the head, attaches a zero-initialized one
# and resamples the position embeddings. (The official models use the tanh
# form of GELU; ours uses the exact one, so we say so. Nor does the layout
# record what the head reads: the class token, or, in our default model, the
# average of the patch tokens, ``pool="mean"``; so we say that too.) The same recipe
# applies directly to a tinyvit model with ``interop.for_finetuning``; the
# two give the same weights.

# %%
size = args.resolution
official = write_npz(args.out / "pretrained_official_layout.npz", to_official(model))
tuned = load_official(official, num_classes=len(TASK), image_size=size,
                      gelu=model.config["gelu"], pool=model.pool)  # fmt: skip
tuned.to(args.device)
direct = for_finetuning(model, num_classes=len(TASK), image_size=size)
reference = direct.state_dict()
gap = max(float(np.abs(a - reference[k]).max()) for k, a in tuned.state_dict().items())
print(f"wrote {official}; loaded back for {len(TASK)} classes at {size} x {size}: "
      f"{tuned.patch_embed.grid} x {tuned.patch_embed.grid} = {tuned.patch_embed.num_patches} "
      f"patches; largest difference from for_finetuning: {gap}")  # fmt: skip
print(f"new head: {tuned.head.weight.shape}, all zero: {bool((tuned.head.weight.data == 0).all())}")

# %% [markdown]
# ## 3. What resampling does to the position embeddings
#
# Each tile below is one patch position; inside it, the cosine similarity
# of that position's embedding with every other position's (the paper's
# Figure 7, center). A trained ViT learns embeddings that resemble those of
# nearby positions, the same row and the same column. Bicubic
# interpolation of the grid keeps that structure on the larger grid, which
# is why the model still works at the new resolution before any training:
# with its old head and the resampled embeddings, it is tested at
# ``size x size`` too.


# %%
resampled = for_finetuning(model, image_size=size).to(args.device)  # old head, new grid
at_new_size = accuracy_on_task(resampled, size)
print(f"unchanged weights, embeddings resampled to {size} x {size}: {100 * at_new_size:.1f}%")

fig = plt.figure(figsize=(11, 5.4), layout="constrained")
for panel, net, label in zip(fig.subfigures(1, 2), (model, tuned), ("pre-trained", "resampled")):
    draw_position_similarity(panel, net)  # the paper's Figure 7, center (tinyvit.viz)
    g = net.patch_embed.grid
    panel.suptitle(f"{label}: {g} x {g} positions, {net.image_size} x {net.image_size} pixels")
fig.suptitle("Position embeddings before and after 2-D interpolation (paper Section 3.2)")
print("wrote", save_figure(fig, args.out / "pos_embed_resampled.png"))

# %% [markdown]
# ## 4. Fine-tune, and train from scratch for the same steps
#
# Both runs use ``tinyvit.finetune.finetune``: AdamW, a linear warm-up and
# a cosine decay, label smoothing, gradient clipping, flips, and the
# 48 x 48 images. The pre-trained model takes gentle steps (peak learning
# rate 3e-4, so as not to wash out what it knows); the model from scratch
# takes the larger steps that suit random weights (1e-3, lesson 6's rate).
# Both keep the pre-trained model's configuration, PatchDropout included
# when it was trained with it (the shipped model was: half the patch tokens
# in every training step, all of them in every test).
# (The paper fine-tunes with SGD and momentum at batch 512, with the
# learning rate picked per task from a small sweep.)

# %%
common = dict(batch_size=batch_size, device=args.device)  # tested 8 times a run
fine_tuned = finetune(tuned, x_train, y_train, x_test, y_test, steps, lr=3e-4,
                      name="fine-tune", **common)  # fmt: skip
manual_seed(0)
scratch_model = ViT(**tuned.config).to(args.device)
scratch = finetune(scratch_model, x_train, y_train, x_test, y_test, steps, lr=1e-3,
                   name="scratch", **common)  # fmt: skip

# %%
too_short = (
    f"--quick: {steps} steps are too few to show fine-tuning's gain over the unchanged model; "
    f"the full lesson ({FULL_STEPS} steps) shows it"
    if args.quick and steps < FULL_STEPS
    else None
)
path = plot_finetune_curves(
    {f"fine-tuned from the checkpoint ({size} x {size})": fine_tuned,
     f"from scratch ({size} x {size})": scratch},
    {f"unchanged model ({model.image_size} x {model.image_size})": baseline,
     f"unchanged, embeddings resampled ({size} x {size})": at_new_size,
     "chance": 1 / len(TASK)},
    args.out / "finetune_curves.png",
    title=f"Fine-tuning vs training from scratch on {len(TASK)} animal classes: "
    f"{steps} steps of {batch_size} images",
    accuracy_label=f"test accuracy (%), {len(y_test):,} images",
    loss_label="training cross-entropy (label smoothing 0.1)",
    note=too_short,
)  # fmt: skip
print("wrote", path)

print(f"\n{'model':<52} test accuracy")
for label, value in (
    (f"unchanged, {model.image_size} x {model.image_size}", baseline),
    (f"unchanged, embeddings resampled to {size} x {size}", at_new_size),
    (f"from scratch, {steps} steps at {size} x {size}", scratch[-1]["test_acc"]),
    (f"fine-tuned, {steps} steps at {size} x {size}", fine_tuned[-1]["test_acc"]),
):
    print(f"{label:<52} {100 * value:5.1f}%")
if too_short:
    print(too_short)

# %% [markdown]
# ## What to take away
#
# * A checkpoint carries over to a new resolution with nothing but a 2-D
#   interpolation of its position embeddings: before any fine-tuning the
#   resampled model should already be well above chance, if below the
#   unchanged model (every object now spans 1.5 times as many patches as
#   in training).
# * With a fresh, zero-initialized head and a few hundred steps the
#   fine-tuned model beats the same architecture trained from scratch for
#   the same steps by a wide margin: most of what it needs was learned
#   before. That is the economics of the paper: pre-train once, at great
#   cost, and fine-tune cheaply many times.
# * Here the checkpoint had already seen these classes, so it is a
#   friendly case; the paper's downstream tasks are new to the model, and
#   it needed pre-training on 14M-300M images for the advantage to hold.
