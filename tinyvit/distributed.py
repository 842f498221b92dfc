"""Several processes, one training run: who is who, and the sums between them.

Data parallelism is the simplest way past one process. Every process holds
the whole model and computes on an equal share of every batch; after
``backward()`` each holds the gradient of the mean loss over its own rows,
and the mean of those gradients over the processes is the gradient of the
whole batch's mean loss (lesson 14 checks it). An *all-reduce* sums a buffer
over the processes and leaves the sum on every one of them, so one
all-reduce of the optimizer's gradient buffer a step (``optim.FlatParameters``
keeps every gradient in one array), divided by the number of processes,
gives every process the same gradient; the same update then keeps the same
weights everywhere:

    process 0: rows  0..63  -> gradients --+                 +-> the same AdamW step
                                           +-- all-reduce ---+
    process 1: rows 64..127 -> gradients --+                 +-> the same AdamW step

Nothing here is a protocol of tinyvit's own. Processes are started by an MPI
launcher (``mpiexec -n 4 python -m tinyvit.train``, or Slurm's ``srun``),
which says in each process's environment which one it is (``launched``);
they talk through the MPI library (``mpi4py``, installed with ``pip install
-e ".[mpi]"``). On GPUs, one process per GPU, the gradients are summed by
NCCL on the devices themselves (``cupyx.distributed``), and MPI carries only
the host's few numbers. Three communicators say so:

    Communicator       one process: nothing to send (what a plain run uses; needs nothing)
    MPICommunicator    processes started by an MPI launcher: host (NumPy) arrays and objects
    NCCLCommunicator   one process per GPU: device arrays through NCCL, the rest through MPI

``world(device)`` returns the one this process needs. A run needs from it
one message a step (``reduce_step``: the gradients with the loss, the right
answers and whether any process was asked to stop), a few objects from
rank 0 (its settings, its checkpoint), and the sums of a sharded test.

When a process fails the others must not wait for it forever. A process
that fails by itself (an exception, a full disk) says so in one line and
ends the whole job (``exit_job``); the launcher then stops the others. A
process that is killed outright cannot say anything, so every wait here has
a deadline: a collective that has not completed after ``timeout`` seconds
(``$TINYVIT_MPI_TIMEOUT``, default 600), or ``STOP_GRACE`` seconds after a
stop was requested (the launcher passes Ctrl-C and SIGTERM on to every
process), ends in ``PeerLost``: the processes still there find which ranks
no longer answer, and the lowest of them names them.
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
import time
from typing import NamedTuple

import numpy as np

from . import backend

# (launcher, rank variable, size variable, this machine's size variable): how each
# launcher tells a process who it is, and how many of the processes share its machine.
LAUNCHERS = (
    ("mpiexec (MPICH, Intel MPI)", "PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS"),
    ("mpirun (Open MPI)", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
     "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ("srun (Slurm)", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS_PER_NODE"),
)  # fmt: skip
# The variables that set a process's threads; a launch that sets none of them shares the
# machine's cores among its processes (``threads_each``).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
MPI_INSTALL = 'pip install -e ".[mpi]"  (mpi4py with MPICH; or pip install mpi4py mpich)'
TIMEOUT_VARIABLE, TIMEOUT = "TINYVIT_MPI_TIMEOUT", 600.0  # seconds a collective may wait
STOP_GRACE = 10.0  # seconds a collective may still wait once a stop was requested
PROBE_SECONDS = 3.0  # how long the processes left listen for each other after a timeout
SPIN_SECONDS, POLL_SECONDS = 0.002, 0.0005  # a wait tests at once, then between naps


class DistributedError(RuntimeError):
    """The processes of a run cannot work together: a launch without mpi4py, ranks that
    disagree on their settings, a launcher and MPI that disagree on their number."""


class PeerLost(DistributedError):
    """Ranks ``missing`` stopped answering: a collective waited past its deadline.

    ``report`` is True on the one process that prints it (the lowest rank
    that still answers), so that the job ends with one line.
    """

    def __init__(self, missing, what, waited, report=True):
        self.missing, self.what, self.waited, self.report = list(missing), what, waited, report
        ranks = ", ".join(map(str, self.missing)) or "unknown"
        super().__init__(
            f"rank {ranks} stopped answering: {what} waited {waited:.0f} s for it; "
            "the run stops (its last checkpoint is kept: continue with --resume)"
        )


class Launch(NamedTuple):
    """What a launcher told this process: its ``rank`` among ``size`` processes, of which
    ``local_size`` run on this machine."""

    launcher: str
    rank: int
    size: int
    local_size: int = 1


def launched(environ=None) -> Launch | None:
    """This process's rank and the number of processes, as its launcher's environment
    says (``LAUNCHERS``); None for a process started by itself."""
    environ = os.environ if environ is None else environ
    for launcher, rank, size, local in LAUNCHERS:
        if rank in environ and size in environ:
            try:
                rank, size = int(environ[rank]), int(environ[size])
            except ValueError:
                continue
            here = environ.get(local, "")
            return Launch(launcher, rank, size, int(here) if here.isdigit() else size)
    return None


def threads_each(launch: Launch | None, cores: int | None = None, environ=None) -> int | None:
    """The threads each process of ``launch`` should run its products and loops on: the
    machine's ``cores`` shared among its processes, at least one. None (leave the threads
    alone) for a process started by itself, or where the environment sets them
    (``THREAD_VARIABLES``).

    Every process would otherwise start a thread per core for OpenBLAS and another for
    numba, and two processes on two cores would take turns on them.
    """
    environ = os.environ if environ is None else environ
    if launch is None or launch.local_size < 2 or any(v in environ for v in THREAD_VARIABLES):
        return None
    cores = (os.cpu_count() or 1) if cores is None else cores
    return max(1, cores // launch.local_size)


class StepSums(NamedTuple):
    """One step's message, summed: the mean loss, the right answers, whether to stop."""

    loss: object  # a 0-d array on the gradients' device
    correct: object  # a 0-d array on the gradients' device
    stop: bool


class Communicator:
    """One process alone: rank 0 of 1. Every collective returns what it was given.

    The base of the others, and what a run uses when it was not launched as
    several processes: its methods are the whole interface a run needs.
    """

    rank, size, local_rank, local_size = 0, 1, 0, 1
    stop_requested = staticmethod(lambda: False)  # a run's signal handler, for deadlines

    @property
    def root(self) -> bool:
        """Whether this is rank 0, which alone writes and prints."""
        return self.rank == 0

    def describe(self) -> str:
        return "one process"

    def part(self, n: int) -> slice:
        """This process's rows of ``n``: equal contiguous parts (the first ``n % size``
        parts one longer), in rank order."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    # -- objects ----------------------------------------------------------------

    def broadcast(self, obj, what="a broadcast from rank 0"):
        """Rank 0's ``obj`` (any picklable object), on every process."""
        return obj

    def all_gather(self, obj, what="a gather") -> list:
        """Every process's ``obj``, in rank order, on every process."""
        return [obj]

    def from_root(self, fn, *args):
        """``fn(*args)`` run on rank 0 alone; its result on every process, or the exception
        it raised raised on every process (so that all of them stop together)."""
        return fn(*args)

    def everywhere(self, fn, *args):
        """``fn(*args)`` run on every process; when it raised on any, every process raises
        the exception of the lowest such rank, with that rank as its ``rank``."""
        return fn(*args)

    # -- arrays -----------------------------------------------------------------

    def broadcast_array(self, array) -> None:
        """Rank 0's values of ``array``, copied into it on every process."""

    def sum_numbers(self, *values, what="a sum") -> tuple:
        """Each of ``values`` (numbers on the host) summed over the processes, as floats."""
        return tuple(float(v) for v in values)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is True on any process."""
        return bool(flag)

    def reduce_step(self, grad, loss, correct, stop: bool) -> StepSums:
        """A training step's one message: ``grad`` (the flat gradient buffer) averaged in
        place, ``loss`` (this process's mean, a 0-d array) averaged, ``correct`` (a 0-d
        count) summed, and whether ``stop`` is True anywhere."""
        return StepSums(loss, correct, bool(stop))


class MPICommunicator(Communicator):
    """The processes of an MPI job (``mpi4py``'s ``comm``), summing host arrays.

    Every collective is the non-blocking form (``Iallreduce``, ``Ibcast``),
    tested until it completes: a blocking call could not be given up, and
    Python could not run a signal handler while in it. The deadlines and
    what happens at them are in the module's docstring.
    """

    def __init__(self, comm, mpi, timeout=None):
        self.comm, self.MPI = comm, mpi
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        local = comm.Split_type(mpi.COMM_TYPE_SHARED)  # the processes of this machine
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self.probes = comm.Dup()  # a second channel, for finding lost ranks
        if timeout is None:
            timeout = float(os.environ.get(TIMEOUT_VARIABLE, TIMEOUT))
        self.timeout = timeout
        self._message = None

    def describe(self) -> str:
        return f"rank {self.rank} of {self.size} (MPI)"

    # -- waiting, with a deadline ---------------------------------------------

    def wait(self, request, what) -> None:
        """Test ``request`` until it completes: at once for ``SPIN_SECONDS``, then between
        short naps; past the deadline, find the lost ranks (``PeerLost``)."""
        start = time.monotonic()
        stop_seen = None
        while not request.Test():
            now = time.monotonic()
            if now - start < SPIN_SECONDS:
                continue
            if stop_seen is None and self.stop_requested():
                stop_seen = now
            deadline = start + self.timeout
            if stop_seen is not None:
                deadline = min(deadline, stop_seen + STOP_GRACE)
            if now > deadline:
                raise self.lost(what, now - start)
            time.sleep(POLL_SECONDS)

    def lost(self, what, waited) -> PeerLost:
        """After a deadline: every process still here tells every other one so, and listens
        for ``PROBE_SECONDS``; the ranks not heard from are the lost ones."""
        others = [r for r in range(self.size) if r != self.rank]
        for r in others:
            try:
                self.probes.isend(self.rank, dest=r, tag=7)
            except self.MPI.Exception:  # a rank whose process is gone
                pass
        heard, deadline = {self.rank}, time.monotonic() + PROBE_SECONDS
        while len(heard) < self.size and time.monotonic() < deadline:
            for r in others:
                if r not in heard and self.probes.iprobe(source=r, tag=7):
                    self.probes.recv(source=r, tag=7)
                    heard.add(r)
            time.sleep(0.01)
        missing = sorted(set(range(self.size)) - heard)
        return PeerLost(missing, what, waited, report=self.rank == min(heard))

    # -- objects ----------------------------------------------------------------

    def _bytes_from_root(self, data, what) -> bytes:
        length = np.array([len(data) if self.root else 0], dtype=np.int64)
        self.wait(self.comm.Ibcast(length, root=0), what)
        if self.root:
            buffer = np.frombuffer(data, np.uint8).copy()
        else:
            buffer = np.empty(length[0], np.uint8)
        self.wait(self.comm.Ibcast(buffer, root=0), what)
        return buffer.tobytes()

    def broadcast(self, obj, what="a broadcast from rank 0"):
        received = self._bytes_from_root(pickle.dumps(obj) if self.root else b"", what)
        return obj if self.root else pickle.loads(received)

    def all_gather(self, obj, what="a gather") -> list:
        data = np.frombuffer(pickle.dumps(obj), np.uint8)
        lengths = np.empty(self.size, dtype=np.int64)
        self.wait(self.comm.Iallgather(np.array([data.size], np.int64), lengths), what)
        received = np.empty(int(lengths.sum()), np.uint8)
        self.wait(self.comm.Iallgatherv(data, [received, lengths.tolist()]), what)
        ends = np.cumsum(lengths).tolist()
        return [pickle.loads(received[e - n : e].tobytes()) for e, n in zip(ends, lengths.tolist())]

    def from_root(self, fn, *args):
        answer = None
        if self.root:
            try:
                answer = ("ok", fn(*args))
            except Exception as error:
                answer = ("error", error if _picklable(error) else DistributedError(str(error)))
        kind, value = self.broadcast(answer, "rank 0's answer")
        if kind == "error":
            raise value
        return value

    def everywhere(self, fn, *args):
        result = error = None
        try:
            result = fn(*args)
        except Exception as raised:
            error = raised if _picklable(raised) else DistributedError(str(raised))
        errors = self.all_gather(error, "every rank's answer")
        for rank, failed in enumerate(errors):
            if failed is not None:
                failed = error if rank == self.rank else failed
                failed.rank = rank
                raise failed
        return result

    # -- arrays -----------------------------------------------------------------

    def _host(self, array, what):
        if backend.is_cuda_array(array):
            raise DistributedError(
                f"{what}: a device array went to MPI, which sums host arrays; device arrays "
                "go through NCCLCommunicator"
            )
        return array

    def broadcast_array(self, array) -> None:
        array = self._host(array, "broadcast_array")
        self.wait(self.comm.Ibcast(array, root=0), "rank 0's weights")

    def sum_numbers(self, *values, what="a sum") -> tuple:
        sums = np.array([float(v) for v in values], dtype=np.float64)
        self.wait(self.comm.Iallreduce(self.MPI.IN_PLACE, sums, op=self.MPI.SUM), what)
        return tuple(sums.tolist())

    def any(self, flag: bool) -> bool:
        return self.sum_numbers(float(bool(flag)), what="agreeing to stop")[0] > 0

    def reduce_step(self, grad, loss, correct, stop: bool) -> StepSums:
        grad = self._host(grad, "reduce_step")
        n = grad.size
        if self._message is None or self._message.size != n + 3:
            self._message = np.empty(n + 3, dtype=grad.dtype)  # (gradients + loss, right, stop)
        message = self._message
        message[:n] = grad
        message[n:] = (loss, correct, float(bool(stop)))
        self.wait(self.comm.Iallreduce(self.MPI.IN_PLACE, message, op=self.MPI.SUM),
                  "the step's all-reduce")  # fmt: skip
        np.multiply(message[:n], grad.dtype.type(1.0 / self.size), out=grad)
        mean_loss = message[n] / grad.dtype.type(self.size)
        return StepSums(mean_loss, message[n + 1].copy(), bool(message[n + 2] > 0))


class NCCLCommunicator(MPICommunicator):
    """One process per GPU: device arrays summed by NCCL where they are, the rest by MPI.

    ``devices`` is a ``cupyx.distributed`` NCCL communicator
    (``backend.nccl_process_group``): its ``all_reduce`` and ``broadcast``
    take device arrays, and no gradient goes through the host. The stop flag
    is a host number and travels through MPI, beside the NCCL call.
    """

    def __init__(self, comm, mpi, devices, timeout=None):
        super().__init__(comm, mpi, timeout)
        self.devices = devices

    def describe(self) -> str:
        return f"rank {self.rank} of {self.size} (NCCL on GPU {self.local_rank}, MPI)"

    def broadcast_array(self, array) -> None:
        if not backend.is_cuda_array(array):
            return super().broadcast_array(array)
        self.devices.broadcast(array, root=0)

    def reduce_step(self, grad, loss, correct, stop: bool) -> StepSums:
        if not backend.is_cuda_array(grad):
            return super().reduce_step(grad, loss, correct, stop)
        xp = backend.xp_of(grad)
        n = grad.size
        if self._message is None or self._message.size != n + 2:
            self._message = xp.empty(n + 2, dtype=grad.dtype)  # (gradients + loss, right)
        message = self._message
        message[:n] = grad
        message[n] = loss
        message[n + 1] = correct
        flag = np.array([float(bool(stop))])
        request = self.comm.Iallreduce(self.MPI.IN_PLACE, flag, op=self.MPI.SUM)
        self.devices.all_reduce(message, message, op="sum")  # queued on the device
        self.wait(request, "the step's stop flag")
        xp.multiply(message[:n], grad.dtype.type(1.0 / self.size), out=grad)
        mean_loss = message[n] / grad.dtype.type(self.size)
        # A copy: the next step's message reuses the buffer this would be a view of.
        return StepSums(mean_loss, message[n + 1].copy(), bool(flag[0] > 0))


def _picklable(error) -> bool:
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return False
    return True


def import_mpi(launch: Launch):
    """mpi4py's ``MPI`` module; a ``DistributedError`` that says how to install it."""
    try:
        return importlib.import_module("mpi4py.MPI")
    except ImportError as error:
        raise DistributedError(
            f"started by {launch.launcher} as rank {launch.rank} of {launch.size}, but "
            f"mpi4py cannot be imported ({error}): {MPI_INSTALL}"
        ) from None


_worlds: dict = {}


def world(device: str = "cpu", devices=None) -> Communicator:
    """The communicator of this process, made once per device: ``Communicator`` when it
    was started alone (or as the only process), else MPI's, with NCCL for ``"cuda"``.

    With ``"cuda"``, the process first takes GPU ``local_rank`` of its machine
    (``backend.use_gpu``). ``devices`` replaces the NCCL communicator (the
    tests' stand-in for one).
    """
    if device in _worlds:
        return _worlds[device]
    launch = launched()
    if launch is None or launch.size == 1:
        return _worlds.setdefault(device, Communicator())
    mpi = import_mpi(launch)
    comm = mpi.COMM_WORLD
    if comm.Get_size() != launch.size:
        raise DistributedError(
            f"{launch.launcher} started {launch.size} processes, but MPI sees "
            f"{comm.Get_size()}: mpi4py's MPI is not the launcher's (use the mpiexec of the "
            "MPI that mpi4py was built with)"
        )
    if device != "cuda":
        return _worlds.setdefault(device, MPICommunicator(comm, mpi))
    made = NCCLCommunicator(comm, mpi, devices)
    backend.use_gpu(made.local_rank)  # before NCCL, before anything is on a GPU
    made.devices = devices or backend.nccl_process_group(made.size, made.rank)
    return _worlds.setdefault(device, made)


def check_same(comm: Communicator, what: str, value: dict) -> None:
    """A ``DistributedError`` naming the first rank whose ``value`` (a dict) differs from
    rank 0's, and the entries that differ; on every process alike."""
    values = comm.all_gather(value, f"comparing {what}")
    for rank, other in enumerate(values):
        if other != values[0]:
            keys = sorted(set(other) | set(values[0]), key=str)
            differ = [k for k in keys if other.get(k) != values[0].get(k)]
            detail = ", ".join(
                f"{k}: {values[0].get(k)!r} on rank 0, {other.get(k)!r}" for k in differ
            )
            raise DistributedError(
                f"rank {rank} of {comm.size} has other {what} than rank 0 ({detail}); every "
                "process must be started with the same command, and read the same data"
            )


def exit_job(comm: Communicator, message: str | None, status: int, name_rank=True) -> None:
    """End this process at once (no clean-up that would wait for the others), after
    printing ``error: message`` (None: nothing); with several processes the launcher then
    stops the rest. With several processes the line names this rank (``name_rank``)."""
    if message is not None:
        prefix = f"rank {comm.rank}: " if comm.size > 1 and name_rank else ""
        print(f"error: {prefix}{message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(status)


__all__ = [
    "Communicator",
    "DistributedError",
    "LAUNCHERS",
    "Launch",
    "MPICommunicator",
    "NCCLCommunicator",
    "PeerLost",
    "StepSums",
    "THREAD_VARIABLES",
    "check_same",
    "exit_job",
    "import_mpi",
    "launched",
    "threads_each",
    "world",
]
