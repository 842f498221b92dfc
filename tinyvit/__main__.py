"""``python -m tinyvit``: gradient-check every layer of the ViT and print the errors."""

from __future__ import annotations

import sys

from . import backend, kernels
from .checks import NONNEGATIVE_INT
from .cli import ArgumentParser, fail, flag_type
from .gradcheck import check_every_layer


def main(argv=None) -> int:
    parser = ArgumentParser(
        prog="python -m tinyvit",
        description="Check every layer's hand-written backward against central differences.",
    )
    parser.add_argument("--device", default="cpu", choices=backend.DEVICES)
    parser.add_argument("--seed", type=flag_type(NONNEGATIVE_INT), default=0, metavar="N")
    args = parser.parse_args(argv)
    try:
        backend.check_device_name(args.device)
    except backend.DeviceError as error:
        fail(str(error))
    kernels.configure_process()  # OpenBLAS's idle threads and the allocator (kernels/__init__)
    print(kernels.describe(args.device), end="\n\n")
    reports = check_every_layer(seed=args.seed, device=args.device)
    for report in reports:
        print(report, end="\n\n")
    failed = [r.title for r in reports if not r.ok]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    print(f"all {len(reports)} layers agree with their numerical gradients")
    return 0


if __name__ == "__main__":
    sys.exit(main())
