"""``python -m tinyvit.train`` as one process of a test's MPI job: small data, failures on cue.

    mpiexec -n 2 python tests/mpi_run.py TRAINER-FLAGS... [--standin]

The trainer's own ``main`` runs, with CIFAR-10 replaced by the tests' small
synthetic set (``test_train.synthetic_cifar``), so that a job starts in
seconds and needs no data on disk. ``--standin`` runs ``--device cuda`` on
the CuPy stand-in (``tests/cupy_standin.py``) with ``StandinNCCL`` in place
of CuPy's NCCL communicator. The environment gives the cues of a test:

``TEST_FLAGS_<rank>``, ``TEST_DATA_SEED_<rank>``
    more flags for that rank alone, another synthetic data set (ranks that disagree);
``TEST_CUE=rank:step:what``
    on that rank, once step ``step`` is done: ``SIGTERM`` or ``SIGINT`` (sent to
    itself, as if the launcher had passed it to this process alone), ``kill``
    (SIGKILL: gone without a word), ``raise`` (an exception of its own), ``hang``
    (alive, but never at the next collective: a process stuck in a system call).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # test_train, cupy_standin


class StandinNCCL:
    """CuPy's NCCL communicator (``cupyx.distributed``'s ``NCCLBackend``) for processes
    on the stand-in: each call checks that it was handed device arrays, then sums or
    copies them through MPI on the host, as NCCL would on the GPUs. ``calls`` counts."""

    def __init__(self, cupy):
        from mpi4py import MPI

        self.cupy, self.MPI, self.comm, self.calls = cupy, MPI, MPI.COMM_WORLD, []

    def _check(self, name, *arrays):
        for array in arrays:
            if not isinstance(array, self.cupy.ndarray):
                raise AssertionError(f"NCCL {name} was given a {type(array).__name__}")
        self.calls.append(name)

    def all_reduce(self, in_array, out_array, op="sum", stream=None):
        self._check("all_reduce", in_array, out_array)
        assert op == "sum"
        host = in_array.get()
        self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        out_array.set(host)

    def broadcast(self, in_out_array, root=0, stream=None):
        self._check("broadcast", in_out_array)
        host = in_out_array.get()
        self.comm.Bcast(host, root=root)
        in_out_array.set(host)


def cue_step(rank: int) -> None:
    """Wrap ``Trainer.train_on_batch`` so that the cue in ``$TEST_CUE`` happens on time."""
    if not os.environ.get("TEST_CUE"):
        return
    on_rank, at_step, what = os.environ["TEST_CUE"].split(":")
    if int(on_rank) != rank:
        return
    from tinyvit.train import Trainer

    original = Trainer.train_on_batch

    def train_on_batch(self, x, y):
        result = original(self, x, y)
        if self.step + 1 == int(at_step):
            if what == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if what == "raise":
                raise RuntimeError(f"a fault of rank {rank}'s own at step {at_step}")
            if what == "hang":  # alive, but never at the next collective
                while True:
                    time.sleep(1.0)
            os.kill(os.getpid(), getattr(signal, what))
        return result

    Trainer.train_on_batch = train_on_batch


def main(argv) -> int:
    from test_train import synthetic_cifar

    import tinyvit
    from tinyvit import backend, distributed
    from tinyvit.train import main as train

    standin = "--standin" in argv
    argv = [arg for arg in argv if arg != "--standin"]
    if standin:
        import cupy_standin

        cupy = cupy_standin.install()
        backend.nccl_process_group = lambda size, rank: StandinNCCL(cupy)
    launch = distributed.launched()
    rank = launch.rank if launch else 0
    seed = int(os.environ.get(f"TEST_DATA_SEED_{rank}", "0"))  # another data set, on cue
    tinyvit.data.load_cifar10 = lambda root=None, download=True: synthetic_cifar(
        512, 128, seed=seed
    )
    cue_step(rank)
    status = train([*argv, *os.environ.get(f"TEST_FLAGS_{rank}", "").split()])
    devices = getattr(distributed._worlds.get("cuda"), "devices", None)
    if devices is not None and rank == 0:  # what went through the stand-in's NCCL: counted
        calls = devices.calls
        print(f"StandinNCCL: {calls.count('all_reduce')} all_reduce, "
              f"{calls.count('broadcast')} broadcast", file=sys.stderr)  # fmt: skip
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
