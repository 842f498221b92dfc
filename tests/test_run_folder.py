"""The run folder and the time budget, apart from any training: a second process is kept
out of a folder a run holds, and the budget's arithmetic fills the time it is given."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tinyvit import files
from tinyvit.train import RunError, RunFolder, TimeBudget, TrainConfig, main
from tinyvit.train.budget import TIMED_STEPS

HOLD = textwrap.dedent(
    """
    import sys, time
    from tinyvit.files import FolderLock
    with FolderLock(sys.argv[1]):
        print("holding", flush=True)
        time.sleep(60)
    """
)


@pytest.fixture
def holder(tmp_path):
    """``(folder, process)``: ``tmp_path / "run"`` locked by a second Python process."""
    folder = tmp_path / "run"
    folder.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "holding"
    yield folder, process
    process.kill()
    process.wait()


@pytest.fixture
def held_by_another_process(holder):
    return holder[0]


def test_a_folder_lock_keeps_a_second_process_out(held_by_another_process):
    lock = files.FolderLock(held_by_another_process)
    with pytest.raises(files.FolderBusy, match="another process .id [0-9]+. is working in"):
        lock.acquire()
    assert not lock.held


def test_a_lock_is_free_again_when_its_holder_dies(holder):
    held_by_another_process, process = holder
    process.kill()  # SIGKILL: no chance to release anything
    for _ in range(100):
        try:
            with files.FolderLock(held_by_another_process):
                break
        except files.FolderBusy:
            __import__("time").sleep(0.05)
    else:
        pytest.fail("the lock outlived its process")


def test_a_lock_nests_and_leaves_no_file_behind(tmp_path):
    lock = files.FolderLock(tmp_path)
    with lock:
        with lock:
            assert (tmp_path / ".lock").read_text().strip().isdigit()
        assert lock.held
    assert not lock.held and list(tmp_path.iterdir()) == []


def test_the_command_line_refuses_a_folder_another_run_holds(
    held_by_another_process, capsys, monkeypatch
):
    loads = []
    monkeypatch.setattr("tinyvit.data.load_cifar10", lambda *a, **k: loads.append(1))
    code = main(["--quick", "--out", str(held_by_another_process), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and loads == []  # refused before the data set was read
    assert len(err) == 1 and err[0].startswith("error: another process")
    assert "two runs cannot write one folder" in err[0]


def test_a_run_folder_names_its_files_and_refuses_resume_with_overwrite(tmp_path):
    folder = RunFolder(tmp_path / "run")
    assert folder.checkpoint.name == "checkpoint.npz" and folder.model.name == "model.npz"
    with pytest.raises(RunError, match="exclude each other"):
        folder.check(resume=True, overwrite=True)
    assert folder.check() == [] and (tmp_path / "run").is_dir()


# ---------------------------------------------------------------- the time budget


def test_the_budget_fills_the_time_left():
    """100 s, 0.1 s a step, 1 s to test and save after each 8-step epoch: 52 epochs
    (93.6 s of the 94 s left after the 6% margin); a 53rd would need 95.4 s."""
    budget = TimeBudget(100.0)
    plan = dict(step=0, epoch=0, steps_per_epoch=8, step_seconds=0.1, test_seconds=0.75,
                save_seconds=0.25)  # fmt: skip
    assert budget.steps_that_fit(spent=0.0, **plan) == 416
    # 84 s left: 46 epochs (82.8 s), then 2 steps and their test (1.2 s) of a 47th
    assert budget.steps_that_fit(spent=10.0, **plan) == 8 * 46 + 2
    assert budget.steps_that_fit(spent=0.0, final_seconds=2.0, **plan) == 8 * 51
    # a partial last epoch: the steps that fit after the last whole epoch's test
    free = {**plan, "test_seconds": 0.0, "save_seconds": 0.0}
    assert budget.steps_that_fit(spent=0.0, **free) == 940


def test_the_budget_counts_only_the_tests_the_run_makes():
    """10 s an epoch of training, 5 s a test, 1 s a save, 200 s. Testing after every
    epoch: 12 epochs (192 s) and 2 steps of a 13th (8 s with its save and test). Testing
    after the first, every fourth and the last epoch: 15 epochs and 9 steps of a 16th
    (159 s of steps, 16 saves, tests after epochs 1, 4, 8, 12 and 16: 200 s)."""
    budget = TimeBudget(200.0, margin=0.0)
    plan = dict(spent=0.0, step=0, epoch=0, steps_per_epoch=10, step_seconds=1.0,
                test_seconds=5.0, save_seconds=1.0)  # fmt: skip
    assert budget.steps_that_fit(**plan) == 122
    every_fourth = TrainConfig(test_every=4).tests_after
    assert [e + 1 for e in range(16) if every_fourth(e, 16)] == [1, 4, 8, 12, 16]
    assert budget.steps_that_fit(**plan, tested=every_fourth) == 159


def test_the_budget_counts_from_where_the_run_is():
    budget = TimeBudget(100.0, margin=0.0)
    plan = dict(steps_per_epoch=10, step_seconds=1.0, save_seconds=0.0)
    assert budget.steps_that_fit(spent=30.0, step=30, epoch=3, **plan) == 100
    assert budget.steps_that_fit(spent=99.0, step=30, epoch=3, **plan) == 31  # at least one


def test_the_step_time_leaves_out_the_first_steps():
    budget = TimeBudget(60.0)
    for seconds in [5.0] * 5 + [0.2, 0.1, 0.3]:
        budget.record(seconds)
    assert budget.step_seconds() == pytest.approx(0.2)
    first = TimeBudget(60.0)
    first.record(2.0)
    assert first.step_seconds() == 2.0  # with only slow steps, those


def test_the_plan_is_made_at_the_end_of_the_warmup_inside_the_first_epoch():
    assert TimeBudget.plan_during_epoch(TIMED_STEPS - 1, warmup_steps=0, steps_per_epoch=390)
    assert TimeBudget.plan_during_epoch(99, warmup_steps=100, steps_per_epoch=390)
    assert not TimeBudget.plan_during_epoch(TIMED_STEPS - 1, warmup_steps=100, steps_per_epoch=390)
    # a warm-up as long as the epoch: planned at the epoch's end instead
    assert not TimeBudget.plan_during_epoch(389, warmup_steps=390, steps_per_epoch=390)
