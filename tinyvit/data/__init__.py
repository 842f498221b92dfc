"""Data: CIFAR-10 or your own folder of images; batches shuffled, augmented and normalized.

The data a ViT is trained and tested on, from the bytes of the official
release to the network's inputs, one concept per module, low to high:

    errors        DataError, for a data set that is missing or wrong
    download      a released file: resumed, verified, set aside, unpacked
    cifar10       CIFAR-10's binary release: the reader and its download
    folders       your own images: one subfolder per class, decoded once, cached
    plans         random draws made on the host, moved to the device in one copy
    transforms    normalize; the basic augmentation (random crop, flip)
    image_ops     RandAugment's fourteen image operations (Pillow's, batched)
    randaugment   RandAugment: the op table, a round in three passes
    mixing        one_hot, mixup and CutMix
    augment       the policies: none, flip, basic, randaugment
    loader        batches: seeded order, drawn plans, resumable epochs

Every public name of these modules is here too:

    data = load_cifar10()                    # or load_cifar10("../shared/data")
    x_train, y_train, x_test, y_test, classes = data
    photos = load_image_folder("my_photos", 32)  # the same fields, and its preprocessing
    for images, targets in batches(x_train, y_train, 128, seed=0, epoch=3):
        ...   # images (128, 3, 32, 32) float32, targets (128,) int64
"""

from .augment import (
    AUGMENTS,
    CROP_PADDING,
    AugmentPlan,
    apply_augmentation,
    augment_batch,
    draw_augmentation,
)
from .cifar10 import (
    ARCHIVE,
    CIFAR10,
    CLASSES,
    FILE_BYTES,
    FOLDER,
    IMAGE_SHAPE,
    MD5,
    MEAN,
    META_FILE,
    RECORD_BYTES,
    RECORDS_PER_FILE,
    SIZE,
    STD,
    TEST_FILE,
    TRAIN_FILES,
    URL,
    check_root,
    default_root,
    download_cifar10,
    extract_cifar10,
    find_folder,
    load_cifar10,
    read_batch,
    read_classes,
)
from .download import Release, download_release, extract_folder, md5sum
from .errors import DataError
from .folders import (
    IMAGE_SUFFIXES,
    VAL_FRACTION,
    ImageFolder,
    channel_statistics,
    data_kind,
    find_images,
    load_image_folder,
)
from .image_ops import (
    affine,
    autocontrast,
    brightness,
    color,
    contrast,
    equalize,
    identity,
    posterize,
    rotate,
    sharpness,
    shear_x,
    shear_y,
    solarize,
    translate_x,
    translate_y,
)
from .loader import BatchPlan, batch_rng, batches, epoch_order, num_batches
from .mixing import CutMixPlan, MixupPlan, cutmix, mixup, one_hot
from .randaugment import (
    BLENDS,
    GEOMETRIC,
    RAND_AUGMENT_OPS,
    TABLES,
    RandAugmentOp,
    RandAugmentRound,
    rand_augment,
)
from .transforms import CropPlan, FlipPlan, horizontal_flip, normalize, random_crop

__all__ = [
    "ARCHIVE",
    "AUGMENTS",
    "AugmentPlan",
    "BLENDS",
    "BatchPlan",
    "CIFAR10",
    "CLASSES",
    "CROP_PADDING",
    "CropPlan",
    "CutMixPlan",
    "DataError",
    "FILE_BYTES",
    "FOLDER",
    "FlipPlan",
    "GEOMETRIC",
    "IMAGE_SHAPE",
    "IMAGE_SUFFIXES",
    "ImageFolder",
    "MD5",
    "MEAN",
    "META_FILE",
    "MixupPlan",
    "RAND_AUGMENT_OPS",
    "RECORDS_PER_FILE",
    "RECORD_BYTES",
    "RandAugmentOp",
    "RandAugmentRound",
    "Release",
    "SIZE",
    "STD",
    "TABLES",
    "TEST_FILE",
    "TRAIN_FILES",
    "URL",
    "VAL_FRACTION",
    "affine",
    "apply_augmentation",
    "augment_batch",
    "autocontrast",
    "batch_rng",
    "batches",
    "brightness",
    "channel_statistics",
    "check_root",
    "color",
    "contrast",
    "cutmix",
    "data_kind",
    "default_root",
    "download_cifar10",
    "download_release",
    "draw_augmentation",
    "epoch_order",
    "equalize",
    "extract_cifar10",
    "extract_folder",
    "find_folder",
    "find_images",
    "horizontal_flip",
    "identity",
    "load_cifar10",
    "load_image_folder",
    "md5sum",
    "mixup",
    "normalize",
    "num_batches",
    "one_hot",
    "posterize",
    "rand_augment",
    "random_crop",
    "read_batch",
    "read_classes",
    "rotate",
    "sharpness",
    "shear_x",
    "shear_y",
    "solarize",
    "translate_x",
    "translate_y",
]
