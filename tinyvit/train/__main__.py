"""``python -m tinyvit.train``: train a ViT on CIFAR-10 (``tinyvit.train.command``)."""

import sys

from .command import main

sys.exit(main())
