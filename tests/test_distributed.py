"""Data parallelism: one run shared by processes is the run of one process.

In this process (no MPI needed): the launchers' environments, the parts of a
batch and of its random draws, the step's message through fake MPI and NCCL
communicators (the NCCL one on the CuPy stand-in, its buffers checked to stay
on the device), deadlines. Under ``mpiexec`` (skipped where mpi4py or mpiexec
is missing; CI installs them with the ``mpi`` extra): 1, 2 and 4 processes
train the same weights, a stop on one rank and a resume give the weights of
a run never stopped, a killed, failing or stuck rank ends the job with its
checkpoint kept, ranks that disagree are one line, and the NCCL path runs
end to end on the stand-in. The jobs run ``tests/mpi_run.py``: the trainer's
command line on small synthetic data, with failures on cue.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import DEVICES, STANDIN

import tinyvit
import tinyvit.functional as F
from tinyvit import backend, data, distributed
from tinyvit.tensor import Tensor
from tinyvit.train import RunError, parallel

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "mpi_run.py"
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
HAS_MPI = MPIEXEC is not None and importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(not HAS_MPI, reason='no mpi4py or mpiexec: pip install -e ".[mpi]"')
needs_standin = pytest.mark.skipif("cuda" not in DEVICES, reason="no CuPy: no cuda device")


# ---------------------------------------------------------------- who is who


def test_the_launchers_environment_says_who_is_who():
    assert distributed.launched({}) is None
    mpich = distributed.launched({"PMI_RANK": "1", "PMI_SIZE": "4"})
    assert (mpich.rank, mpich.size) == (1, 4) and "mpiexec" in mpich.launcher
    openmpi = distributed.launched({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"})
    assert (openmpi.rank, openmpi.size) == (0, 2) and "Open MPI" in openmpi.launcher
    slurm = distributed.launched({"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "8"})
    assert (slurm.rank, slurm.size) == (3, 8) and "srun" in slurm.launcher
    # a batch script's job-wide task count is not a launch of several processes
    assert distributed.launched({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}) is None
    # how many share this machine: the launcher's word for it, else all of them
    assert mpich.local_size == 4 and openmpi.local_size == 2
    here = distributed.launched({"PMI_RANK": "1", "PMI_SIZE": "4", "MPI_LOCALNRANKS": "2"})
    assert (here.size, here.local_size) == (4, 2)


def test_the_processes_of_a_machine_share_its_cores():
    two = distributed.Launch("mpiexec", 0, 2, 2)
    assert distributed.threads_each(two, cores=2, environ={}) == 1
    assert distributed.threads_each(two, cores=16, environ={}) == 8
    assert distributed.threads_each(distributed.Launch("mpiexec", 0, 6, 3), 8, {}) == 2
    assert distributed.threads_each(distributed.Launch("mpiexec", 0, 8, 8), 2, {}) == 1
    # alone, alone on its machine, or threads the user set: left as they are
    assert distributed.threads_each(None, cores=2, environ={}) is None
    assert distributed.threads_each(distributed.Launch("srun", 1, 4, 1), 2, {}) is None
    for variable in distributed.THREAD_VARIABLES:
        assert distributed.threads_each(two, cores=2, environ={variable: "2"}) is None


def test_a_process_alone_needs_nothing_and_changes_nothing():
    comm = distributed.world()  # no launcher here: no MPI either
    assert type(comm) is distributed.Communicator and comm.root and comm.size == 1
    assert "mpi4py.MPI" not in sys.modules
    grad, loss, correct = np.ones(3, np.float32), np.float32(2.0), np.int64(5)
    sums = comm.reduce_step(grad, loss, correct, stop=False)
    assert sums.loss is loss and sums.correct is correct and sums.stop is False
    assert comm.part(10) == slice(0, 10) and comm.from_root(lambda: 7) == 7
    assert comm.everywhere(lambda x: x + 1, 1) == 2 and comm.sum_numbers(1, 2) == (1.0, 2.0)
    assert parallel.shard_of(comm, 128) is None


class Rank(distributed.Communicator):
    """Rank ``rank`` of ``size``, for what needs no messages."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size


def test_the_parts_of_the_rows_cover_them_once_in_rank_order():
    for n, size in [(10, 3), (2, 4), (128, 2), (0, 2)]:
        parts = [Rank(r, size).part(n) for r in range(size)]
        assert np.concatenate([np.arange(n)[p] for p in parts]).tolist() == list(range(n))
        assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


def test_a_batch_that_does_not_split_into_equal_parts_is_refused():
    assert parallel.shard_of(Rank(1, 4), 128) == (1, 4)
    with pytest.raises(RunError, match=r"batch size 130 does not split into 4 .*128 or 132"):
        parallel.shard_of(Rank(0, 4), 130)
    x, y = np.zeros((8, 3, 4, 4), np.uint8), np.zeros(8)
    with pytest.raises(ValueError, match="a batch of 6 does not split into 4 equal parts"):
        data.batches(x, y, 6, shard=(0, 4))
    with pytest.raises(ValueError, match=r"shard \(4, 4\) is not part i of n parts"):
        data.batches(x, y, 8, shard=(4, 4))


# ---------------------------------------------------------------- the draws of a part


@pytest.mark.parametrize("mixing", [(0.0, 0.0), (0.8, 0.0), (0.0, 1.0), (0.8, 1.0)],
                         ids=["plain", "mixup", "cutmix", "both"])  # fmt: skip
@pytest.mark.parametrize("augment", data.AUGMENTS)
def test_the_parts_of_a_batch_are_the_whole_batch_cut(augment, mixing):
    """Order, augmentation and mixing are drawn for the whole batch: its parts, put
    together, are the batch one process gets, to the bit (a partner of mixup or CutMix
    may lie in another part)."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (64, 3, 16, 16), dtype=np.uint8), rng.integers(0, 10, 64)
    options = dict(seed=3, epoch=1, augment=augment, mixup_alpha=mixing[0],
                   cutmix_alpha=mixing[1], start=1)  # fmt: skip
    whole = list(data.batches(x, y, 16, **options))
    for parts in (2, 4):
        shards = [list(data.batches(x, y, 16, shard=(i, parts), **options)) for i in range(parts)]
        for b, (images, targets) in enumerate(whole):
            assert all(len(s[b][0]) == 16 // parts for s in shards)
            np.testing.assert_array_equal(np.concatenate([s[b][0] for s in shards]), images)
            np.testing.assert_array_equal(np.concatenate([s[b][1] for s in shards]), targets)


def test_masks_are_drawn_for_the_whole_batch(device):
    """Dropout and PatchDropout under ``batch_shard``: each part's masks are its rows of
    the whole batch's, on either device."""
    xp = backend.module_for(device)
    x = xp.asarray(np.random.default_rng(0).standard_normal((8, 5, 6)).astype(np.float32))

    def masks(rows, part, parts):
        backend.manual_seed(11)
        with backend.batch_shard(part, parts):
            dropped = F.dropout(Tensor(x[rows]), 0.5).data
            kept = F.patch_dropout(Tensor(x[rows]), 0.5).data
        return backend.to_numpy(dropped), backend.to_numpy(kept)

    whole = masks(slice(None), 0, 1)
    for parts in (2, 4):
        k = 8 // parts
        pieces = [masks(slice(i * k, (i + 1) * k), i, parts) for i in range(parts)]
        for j in range(2):
            np.testing.assert_array_equal(np.concatenate([p[j] for p in pieces]), whole[j])
    alone = masks(slice(4, 8), 0, 1)  # without the shard, the second half draws the first's
    assert not np.array_equal(alone[0], whole[0][4:])
    assert not np.array_equal(alone[1], whole[1][4:])
    with pytest.raises(ValueError, match="part 2 of 2"):
        with backend.batch_shard(2, 2):
            pass


# ---------------------------------------------------------------- the step's message


class FakeMPI:
    """What ``MPICommunicator`` uses of mpi4py's ``MPI``: rank 0 of 2, whose peer sends
    ``peer`` (the message a second process would put in)."""

    COMM_TYPE_SHARED, IN_PLACE, SUM = "shared", "in place", "sum"
    Exception = RuntimeError

    def __init__(self, peer=None, complete=True):
        self.peer, self.complete, self.sent = peer, complete, []

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 2

    def Split_type(self, kind):
        return self

    def Free(self):
        pass

    def Dup(self):
        return self

    def Iallreduce(self, where, buffer, op):
        assert where is self.IN_PLACE and op is self.SUM and isinstance(buffer, np.ndarray)
        self.sent.append(buffer.copy())
        if self.complete:
            buffer += self.peer[: buffer.size] if buffer.size > 1 else self.peer[-1:]
        return self

    def Test(self):
        return self.complete

    def isend(self, obj, dest, tag):  # a stuck peer: heard by nobody, and never answers
        pass

    def iprobe(self, source, tag):
        return False


def test_the_step_message_on_the_host_averages_and_counts():
    grad = np.array([1.0, 2.0, 3.0], np.float32)
    peer = np.array([3.0, 2.0, -1.0, 0.5, 4.0, 1.0], np.float32)  # gradients, loss, right, stop
    fake = FakeMPI(peer)
    comm = distributed.MPICommunicator(fake, fake, timeout=5)
    sums = comm.reduce_step(grad, np.float32(1.5), np.int64(3), stop=False)
    np.testing.assert_array_equal(grad, [2.0, 2.0, 1.0])  # the mean, in place
    assert float(sums.loss) == 1.0 and float(sums.correct) == 7 and sums.stop is True
    np.testing.assert_array_equal(fake.sent[0], [1, 2, 3, 1.5, 3, 0])  # one message


class FakeNCCL:
    """CuPy's NCCL communicator as the processes would see it, with a peer whose message is
    ``peer``; it refuses anything but device arrays."""

    def __init__(self, peer):
        self.peer, self.calls = backend.to_device(peer, "cuda"), []

    def all_reduce(self, in_array, out_array, op="sum", stream=None):
        assert backend.is_cuda_array(in_array) and backend.is_cuda_array(out_array), "host"
        self.calls.append(("all_reduce", in_array.size))
        out_array += self.peer

    def broadcast(self, in_out_array, root=0, stream=None):
        assert backend.is_cuda_array(in_out_array), "a host array went to NCCL"
        self.calls.append(("broadcast", in_out_array.size))


def counting():
    if not STANDIN:
        import contextlib

        return contextlib.nullcontext(None)
    import cupy_standin

    return cupy_standin.counting()


@needs_standin
def test_the_nccl_path_keeps_every_buffer_on_the_device():
    peer_flag = np.array([0.0, 0.0, 0.0, 1.0])  # the peer asks to stop (through MPI)
    nccl = FakeNCCL(np.array([3.0, 2.0, -1.0, 0.5, 4.0], np.float32))
    comm = distributed.NCCLCommunicator(FakeMPI(peer_flag), FakeMPI(peer_flag), nccl, timeout=5)
    grad = backend.to_device(np.array([1.0, 2.0, 3.0], np.float32), "cuda")
    loss = backend.to_device(np.array(1.5, np.float32), "cuda")
    correct = backend.to_device(np.array(3), "cuda")
    with counting() as cost:
        sums = comm.reduce_step(grad, loss, correct, stop=False)
    assert all(backend.is_cuda_array(a) for a in (grad, sums.loss, sums.correct))
    if STANDIN:  # nothing came to the host, and the host never waited for the device
        assert cost.syncs == cost.device_to_host == cost.host_to_device == 0, cost
    np.testing.assert_array_equal(backend.to_numpy(grad), [2.0, 2.0, 1.0])
    assert backend.scalars(sums.loss, sums.correct) == (1.0, 7.0) and sums.stop is True
    comm.broadcast_array(grad)
    assert nccl.calls == [("all_reduce", 5), ("broadcast", 3)]
    host = distributed.MPICommunicator(FakeMPI(), FakeMPI(), timeout=5)
    with pytest.raises(distributed.DistributedError, match="a device array went to MPI"):
        host.reduce_step(grad, loss, correct, False)


@needs_standin
def test_each_process_takes_the_gpu_of_its_local_rank():
    """``local_rank`` modulo the GPUs this process sees (the stand-in has one)."""
    count = backend.module_for("cuda").cuda.runtime.getDeviceCount()
    try:
        assert backend.use_gpu(3) == 3 % count
        assert backend.module_for("cuda").cuda.Device().id == 3 % count
    finally:
        backend.use_gpu(0)


def test_a_collective_that_never_completes_names_the_lost_rank(monkeypatch):
    monkeypatch.setattr(distributed, "PROBE_SECONDS", 0.05)
    fake = FakeMPI(complete=False)
    comm = distributed.MPICommunicator(fake, fake, timeout=0.1)
    start = time.monotonic()
    with pytest.raises(distributed.PeerLost, match=r"^rank 1 stopped answering: the step") as lost:
        comm.reduce_step(np.ones(2, np.float32), 0.0, 0, False)
    assert lost.value.missing == [1] and lost.value.report and time.monotonic() - start < 2
    # once a stop is asked for, a wait is short whatever the timeout
    monkeypatch.setattr(distributed, "STOP_GRACE", 0.1)
    comm = distributed.MPICommunicator(fake, fake, timeout=600)
    comm.stop_requested = lambda: True
    with pytest.raises(distributed.PeerLost):
        comm.sum_numbers(1.0, what="a test")
    assert time.monotonic() - start < 3


def test_settings_that_differ_are_named_with_their_rank():
    class Gathered(Rank):
        def all_gather(self, obj, what=""):
            return [obj, {**obj, "lr": 0.002}]

    with pytest.raises(distributed.DistributedError, match=r"rank 1 of 2 has other settings "
                       r"than rank 0 \(lr: 0.001 on rank 0, 0.002\)"):  # fmt: skip
        distributed.check_same(Gathered(0, 2), "settings", {"lr": 0.001, "seed": 0})


def test_started_by_mpiexec_without_mpi4py_is_one_line(tmp_path):
    """Rank 0 says how to install it; the other ranks say nothing; both stop with 2."""
    blocker = tmp_path / "mpi4py"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('no MPI library here')\n")
    results = []
    for rank in (0, 1):
        env = {**os.environ, "PMI_RANK": str(rank), "PMI_SIZE": "2",
               "PYTHONPATH": os.pathsep.join([str(tmp_path), str(HERE.parent)])}  # fmt: skip
        results.append(subprocess.run(
            [sys.executable, "-m", "tinyvit.train", "--quick", "--out", str(tmp_path / "run")],
            env=env, capture_output=True, text=True, timeout=120,
        ))  # fmt: skip
    first, second = results
    assert first.returncode == second.returncode == 2
    assert first.stderr.startswith("error: started by mpiexec") and first.stdout == ""
    assert len(first.stderr.splitlines()) == 1, first.stderr
    assert "rank 0 of 2" in first.stderr and 'pip install -e ".[mpi]"' in first.stderr
    assert second.stderr == second.stdout == "" and not (tmp_path / "run").exists()


# ---------------------------------------------------------------- jobs under mpiexec

# A few steps of a tiny model, with what draws at random on: flips, PatchDropout, dropout.
FLAGS = ["--quick", "--batch-size", "32", "--eval-batch-size", "64", "--augment", "flip",
         "--patch-dropout", "0.5", "--dropout", "0.1", "--no-progress"]  # fmt: skip
THREADS = dict.fromkeys(distributed.THREAD_VARIABLES, "1")


def job(processes, out, *flags, env=None, timeout=180):
    """``tests/mpi_run.py`` with ``FLAGS``, ``flags`` and ``--out out`` as one process
    (``processes=None``: no launcher at all) or under ``mpiexec -n processes``."""
    launcher = [] if processes is None else [MPIEXEC, "-n", str(processes)]
    command = [*launcher, sys.executable, str(RUNNER), *FLAGS, *flags, "--out", str(out)]
    return subprocess.run(command, env={**os.environ, **THREADS, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def ran(result, status=0):
    assert result.returncode == status, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


def weights(out, name="model.npz"):
    with np.load(out / name) as archive:
        return {k: archive[k] for k in archive.files if "/" not in k}


def history(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@needs_mpi
def test_one_two_and_four_processes_train_the_same_weights(tmp_path):
    runs = {n: tmp_path / f"n{n}" for n in (1, 2, 4)}
    ran(job(None, runs[1], "--steps", "4"))
    for n in (2, 4):
        result = ran(job(n, runs[n], "--steps", "4"))
        assert f"{n} processes of {32 // n} images a step" in result.stdout
    for n in (2, 4):
        for key, value in weights(runs[1]).items():
            np.testing.assert_allclose(weights(runs[n])[key], value, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{n} processes: {key}")  # fmt: skip
        (one,), (many,) = history(runs[1]), history(runs[n])
        assert many["train_acc"] == one["train_acc"] and many["test_acc"] == one["test_acc"]
        assert many["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
        assert many["test_loss"] == pytest.approx(one["test_loss"], rel=1e-5)
    # the tolerance is far tighter than what another draw of the masks changes
    ran(job(None, tmp_path / "seed1", "--steps", "4", "--seed", "1"))
    other, first = weights(tmp_path / "seed1"), weights(runs[1])
    assert not all(np.allclose(other[k], v, rtol=1e-4, atol=1e-5) for k, v in first.items())


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """A 2-process run of two epochs (32 steps), never stopped."""
    out = tmp_path_factory.mktemp("straight")
    ran(job(2, out, "--epochs", "2"))
    return weights(out)


def assert_same_weights(out, expected):
    for key, value in expected.items():
        np.testing.assert_array_equal(weights(out)[key], value, err_msg=key)


@needs_mpi
def test_a_stop_asked_of_one_rank_stops_all_and_resumes_to_the_same_weights(straight, tmp_path):
    """SIGTERM reaches rank 1 alone during step 5: its flag travels with step 6's
    gradients, both ranks stop after step 6 and save, and the resumed run ends with the
    weights of the run never stopped, to the bit."""
    stopped = ran(job(2, tmp_path, "--epochs", "2", env={"TEST_CUE": "1:5:SIGTERM"}), 143)
    assert "stopped at epoch 1, batch 6" in stopped.stdout and "--resume" in stopped.stdout
    assert not error_lines(stopped)
    resumed = ran(job(2, tmp_path, "--epochs", "2", "--resume"))
    assert "resuming" in resumed.stdout and "step 6 of 32" in resumed.stdout
    assert_same_weights(tmp_path, straight)


@needs_mpi
def test_a_killed_rank_ends_the_job_at_once_and_the_run_resumes(straight, tmp_path):
    """Rank 1 is killed (SIGKILL) in the second epoch: the launcher stops rank 0 at once,
    the checkpoint of the first epoch is whole, and --resume ends the run as if nothing
    had happened."""
    start = time.monotonic()
    killed = job(2, tmp_path, "--epochs", "2", env={"TEST_CUE": "1:20:kill"}, timeout=60)
    assert killed.returncode != 0 and time.monotonic() - start < 30
    assert "Traceback" not in killed.stderr and not (tmp_path / "model.npz").exists()
    state = tinyvit.checkpoint.read_npz(tmp_path / "checkpoint.npz")["trainer/state"]
    assert json.loads(str(state))["step"] == 16  # the first epoch's, written whole
    ran(job(2, tmp_path, "--epochs", "2", "--resume"))
    assert_same_weights(tmp_path, straight)


@needs_mpi
def test_a_rank_that_stops_answering_is_named_in_one_line(tmp_path):
    """Rank 1 hangs (alive, never at the next collective): within the deadline rank 0
    names it in one line, the job ends, the folder is unlocked and its checkpoint whole."""
    start = time.monotonic()
    result = job(2, tmp_path, "--epochs", "2", env={"TEST_CUE": "1:20:hang",
                                                    distributed.TIMEOUT_VARIABLE: "2"})  # fmt: skip
    assert result.returncode == 1 and time.monotonic() - start < 60
    assert error_lines(result) == [
        "error: rank 1 stopped answering: the step's all-reduce waited 2 s for it; the run "
        "stops (its last checkpoint is kept: continue with --resume)"
    ], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / ".lock").exists()
    tinyvit.train.state.read_state(tmp_path / "checkpoint.npz")


@needs_mpi
def test_a_rank_that_fails_by_itself_ends_the_job_in_one_line(tmp_path):
    start = time.monotonic()
    result = job(2, tmp_path, "--epochs", "2", env={"TEST_CUE": "1:20:raise"}, timeout=60)
    assert result.returncode == 1 and time.monotonic() - start < 30
    (line,) = error_lines(result)
    assert line.startswith("error: rank 1: RuntimeError: a fault of rank 1's own at step 20")
    assert "Traceback" not in result.stderr
    tinyvit.train.state.read_state(tmp_path / "checkpoint.npz")


@needs_mpi
def test_ranks_that_disagree_on_their_settings_are_one_line(tmp_path):
    result = job(2, tmp_path, "--steps", "4", env={"TEST_FLAGS_1": "--lr 0.002"})
    assert result.returncode == 2 and result.stdout == ""
    assert error_lines(result) == result.stderr.splitlines() == [
        "error: rank 1 of 2 has other settings than rank 0 (lr: 0.001 on rank 0, 0.002); every "
        "process must be started with the same command, and read the same data"
    ]
    assert not (tmp_path / "checkpoint.npz").exists()
    other_data = job(2, tmp_path, "--steps", "4", env={"TEST_DATA_SEED_1": "1"})
    assert other_data.returncode == 2 and len(other_data.stderr.splitlines()) == 1
    assert other_data.stderr.startswith("error: rank 1 of 2 has other data than rank 0 (")
    assert "labels (CRC-32): " in other_data.stderr and not (tmp_path / "checkpoint.npz").exists()


SHARED = HERE.parents[1] / "shared" / "data" / "cifar-10-batches-bin"


@needs_mpi
@pytest.mark.skipif(not SHARED.is_dir(), reason="no CIFAR-10 copy beside the repository")
def test_the_command_line_itself_under_mpiexec_on_cifar10(tmp_path):
    """``mpiexec -n 2 python -m tinyvit.train``, as the README says it, without thread
    settings in the environment: each process takes its share of the cores, rank 0
    prints the run's lines once, and writes every file."""
    bare = {k: v for k, v in os.environ.items() if k not in distributed.THREAD_VARIABLES}
    result = ran(subprocess.run(
        [MPIEXEC, "-n", "2", sys.executable, "-m", "tinyvit.train", "--quick", "--epochs", "1",
         "--data-dir", str(SHARED), "--out", str(tmp_path), "--no-progress"],
        env=bare, capture_output=True, text=True, timeout=300,
    ))  # fmt: skip
    assert result.stdout.count("2 processes of 32 images a step") == 1
    threads = max(1, (os.cpu_count() or 1) // 2)
    if "numba" in tinyvit.kernels.describe("cpu"):  # the header names numba's threads
        assert f"numba, {threads} thread{'s' if threads > 1 else ''}" in result.stdout
    assert result.stdout.count("epoch   1/1") == 1 and "done: final test" in result.stdout
    for name in ("checkpoint.npz", "model.npz", "metrics.jsonl", "curves.png"):
        assert (tmp_path / name).is_file()
    assert not (tmp_path / ".lock").exists()


@needs_mpi
@needs_standin
def test_the_nccl_path_trains_the_same_weights_on_the_standin(tmp_path):
    """``--device cuda`` under mpiexec on the CuPy stand-in, with a stand-in for CuPy's
    NCCL communicator that refuses host arrays: one broadcast of the weights, one
    all-reduce a step, and the weights of one process."""
    one, two = tmp_path / "one", tmp_path / "two"
    ran(job(None, one, "--steps", "4", "--device", "cuda", "--standin"))
    result = ran(job(2, two, "--steps", "4", "--device", "cuda", "--standin"))
    assert "StandinNCCL: 4 all_reduce, 1 broadcast" in result.stderr
    for key, value in weights(one).items():
        np.testing.assert_allclose(weights(two)[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
    assert history(two)[0]["train_acc"] == history(one)[0]["train_acc"]
