# %% [markdown]
# # Lesson 6: training a ViT on CIFAR-10
#
# Everything so far comes together: the model of Eq. 1-4, the cross-entropy
# of its logits, ``backward()`` through every layer, and an optimizer that
# follows the gradient. This lesson writes the training loop out, then runs
# the trainer's default CPU recipe (``python -m tinyvit.train`` does the same
# from the command line) and looks at what the trained model gets right and
# wrong.
#
# The recipe is the paper's training setup scaled down to a small data set
# (Section 4.1, Appendix B.1): AdamW with decoupled weight decay, a linear
# learning-rate warm-up followed by a cosine decay, gradient clipping at
# norm 1, and label smoothing. ViTs have none of a CNN's built-in
# assumptions about images (Section 3.1, "Inductive bias"), so on 50,000
# images they need augmentation to generalize. In a half-hour run the model
# is still learning when it stops, so the recipe uses only horizontal flips;
# random crops, RandAugment and mixup pay off in long runs (the GPU recipe).
# Four more choices, each measured in a search of short runs
# (``benchmarks/results/cifar10_cpu/search_v2/``), make the most of the
# half hour; section 1 explains them.
#
# Run: ``python lessons/06_train_cifar10.py [--out DIR] [--quick] [--device cuda]
# [--data-dir PATH]``. The full run takes about half an hour on a 2-core CPU;
# ``--quick`` trains a tiny model on a slice of the data for a few seconds.

# %%
import numpy as np

from tinyvit import data, no_grad
from tinyvit.cli import fail
from tinyvit.lesson import lesson_arguments, load_data
from tinyvit.train import RunError, Trainer, recipe

args = lesson_arguments("06_train_cifar10", "Training a ViT on CIFAR-10.")
dataset = load_data(args)
print(f"CIFAR-10: {len(dataset.y_train):,} training and {len(dataset.y_test):,} test images")

# %% [markdown]
# ## 1. What the recipe adds to the paper's
#
# * **The patch tokens' average instead of the class token** (``pool="mean"``).
#   The paper reads its prediction off the class token (Eq. 4) but notes
#   that averaging the patch tokens works as well once the learning rate is
#   adjusted (Appendix D.3, Figure 9). In our short runs it is 1.3 points
#   better: every patch token's output is trained by the loss directly,
#   instead of through the class token's attention alone.
# * **PatchDropout** (``patch_dropout=0.5``, ``functional.patch_dropout``).
#   During training each image keeps a random half of its 64 patch tokens,
#   after the position embeddings are added, so each kept token still says
#   where it came from. The blocks then work on 32 tokens instead of 64, and
#   a step costs about half as much: in the same half hour the model sees
#   twice as many images. At an equal number of steps it costs only 0.2
#   points; the test sees every token. The figure below shows four training
#   images as the blocks see them.
# * **A time budget** (``--time-budget 30m``). The trainer times its first
#   epoch and a test, then chooses the number of steps, and so the length of
#   the cosine decay, to end within the budget on *your* machine. Its log
#   says how many epochs that made and the ``--steps N`` that repeats the
#   run exactly.
# * **Flip test-time augmentation** (``--tta flip``). The final test shows
#   the model each image and its mirror image and averages the two
#   predicted distributions: 0.6 points for one more pass over the test
#   images.

# %%
import tinyvit.functional as F
from tinyvit import backend
from tinyvit.viz import plt, save_figure

grid = 32 // 4  # 4-pixel patches: an 8 x 8 grid
positions = np.arange(1 + grid * grid, dtype=np.float32)  # the class token, then 64 patches
tokens = np.broadcast_to(positions[None, :, None], (4, 1 + grid * grid, 1))  # (4, 65, 1)
kept = F.patch_dropout(tokens, 0.5, generator=backend.new_generator(0)).data  # (4, 33, 1)
fig, axes = plt.subplots(2, 4, figsize=(8, 4.4))
for i, row in enumerate(kept[:, 1:, 0].astype(int) - 1):  # the kept patches' indices
    image = dataset.x_test[i].transpose(1, 2, 0)  # (32, 32, 3)
    mask = np.zeros(grid * grid, dtype=bool)
    mask[row] = True
    mask = mask.reshape(grid, grid).repeat(4, axis=0).repeat(4, axis=1)  # (32, 32)
    axes[0, i].imshow(image)
    axes[1, i].imshow(np.where(mask[..., None], image, 235).astype(np.uint8))
    axes[1, i].set_title(f"{len(row)} of {grid * grid} patches", fontsize=9)
    for ax in axes[:, i]:
        ax.axis("off")
fig.suptitle("PatchDropout: what the blocks see of a training image")
print("wrote", save_figure(fig, args.out / "patch_dropout.png"))

# %% [markdown]
# ## 2. The training loop
#
# A step is five lines, each a piece of the lessons before: the ViT's
# logits on a batch of augmented images (lesson 5), the cross-entropy with
# label smoothing, ``backward()`` through every hand-written derivative
# (lessons 1-4), the gradient's global norm clipped to at most 1, and an
# AdamW step at the learning rate of a linear warm-up followed by a cosine
# decay (Appendix B.1). Here is that loop, for a couple of hundred steps
# of the recipe's model, written with tinyvit's pieces and nothing else.

# %%
from tinyvit import ViT
from tinyvit.optim import AdamW, WarmupCosine, clip_grad_norm

config = recipe("quick" if args.quick else "cpu", device=args.device)
model = ViT(config.model_config(num_classes=10)).to(args.device)
optimizer = AdamW(model, lr=config.lr, weight_decay=config.weight_decay)
steps = 20 if args.quick else 200
schedule = WarmupCosine(config.lr, steps, warmup_steps=steps // 4, min_lr=config.min_lr)
batches = data.batches(dataset.x_train, dataset.y_train, config.batch_size,
                       augment=config.augment, device=args.device)  # fmt: skip
for step, (images, labels) in zip(range(steps), batches):
    logits = model(images)  # (B, 10): Eq. 1-4 and the head
    loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
    optimizer.zero_grad()
    loss.backward()  # the gradient of every parameter
    clip_grad_norm(model.parameters(), config.clip_grad)  # ||g|| <= 1
    optimizer.set_lr(schedule(step))
    optimizer.step()  # AdamW
    if step % (steps // 5) == 0 or step == steps - 1:
        print(f"step {step:>3}  loss {loss.item():.3f}  learning rate {schedule(step):.2e}")

# %% [markdown]
# ## 3. The real run
#
# A real run needs more around the same step: a test after every epoch, a
# checkpoint after every epoch so that Ctrl-C (or a crash) loses nothing, a
# length chosen to fit the time budget, the curves drawn as it goes, and
# every random draw seeded by where the run is, so that a stopped and
# resumed run ends with the very weights of one that never stopped.
# ``Trainer`` is that loop with those additions (``tinyvit/train/``, one
# concern a module); its step is ``tinyvit.loop.train_step``, the five lines
# above.
#
# The trainer prints one line per epoch, keeps ``metrics.jsonl`` and
# ``curves.png`` up to date, and writes a checkpoint after every epoch, so
# the run can be stopped with Ctrl-C: running the lesson again continues it
# where it stopped (``fit(resume=True)``; ``--resume`` on the command line
# of ``python -m tinyvit.train``), and once it is finished, reuses it.

# %%
try:
    trainer = Trainer(config, dataset, args.out)
    history = trainer.fit(resume=True)
except RunError as error:  # e.g. a --quick run in the folder of a full one
    fail(f"{error} (use another --out)")
if trainer.step < trainer.total_steps:
    fail("stopped by Ctrl-C; run the lesson again to continue", 130)
print("wrote", args.out / "curves.png")

# %% [markdown]
# ## 4. What it confuses
#
# A confusion matrix counts, for every true class (rows), which class the
# model predicted (columns). The diagonal is what it gets right. The big
# off-diagonal cells are the instructive ones: cats and dogs, automobiles
# and trucks, the animals that share a background.

# %%
model = trainer.model.eval()
x_test, y_test = trainer.x_test, trainer.y_test
predictions = []
with no_grad():
    for images, _ in data.batches(
        x_test, y_test, 500, shuffle=False, augment="none", drop_last=False, device=args.device
    ):
        predictions.append(np.asarray(model(images).numpy().argmax(axis=1)))
predictions = np.concatenate(predictions)
classes = dataset.classes
confusion = np.zeros((len(classes), len(classes)), dtype=int)
np.add.at(confusion, (y_test, predictions), 1)
accuracy = np.trace(confusion) / confusion.sum()
print(f"test accuracy {100 * accuracy:.2f}%")
for i, name in enumerate(classes):
    print(f"  {name:<11} {100 * confusion[i, i] / max(1, confusion[i].sum()):5.1f}% right")

fig, ax = plt.subplots(figsize=(7, 6))
shares = confusion / np.maximum(1, confusion.sum(axis=1, keepdims=True))
ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
for i in range(len(classes)):
    for j in range(len(classes)):
        if confusion[i, j]:
            color = "white" if shares[i, j] > 0.5 else "black"
            ax.text(j, i, confusion[i, j], ha="center", va="center", fontsize=7, color=color)
ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
ax.set_yticks(range(len(classes)), classes)
ax.set_xlabel("predicted class")
ax.set_ylabel("true class")
ax.set_title(f"Confusion matrix on {len(y_test):,} test images ({100 * accuracy:.1f}% right)")
print("wrote", save_figure(fig, args.out / "confusion.png"))
