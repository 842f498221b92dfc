"""A time budget: how many steps fit in the wall time a run is given.

A learner asks for "half an hour", not for a number of steps, and the steps
that fit depend on the machine. So a budgeted run times its own steps, and
once it knows their speed it chooses its length: the largest number of
steps whose training, tests and saves end within the budget. The choice is
made once, during the warm-up, before any learning rate has depended on the
run's length (the cosine decay is laid over the whole run), and it is kept
in the checkpoint, so a resumed run goes on with the same plan.

The arithmetic is here, apart from the trainer, so that it can be checked
without training anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# The first few steps are slower (memory is being allocated, caches warmed): the
# speed is the median of the steps after them, over at least this many steps.
SKIPPED_STEPS, TIMED_STEPS = 5, 25
# What the plan does not time: loading the data, and a speed that drifts over a run.
MARGIN = 0.06


@dataclass
class TimeBudget:
    """``seconds`` of wall time for a whole run, of which ``margin`` is kept in reserve."""

    seconds: float
    margin: float = MARGIN
    step_times: list = field(default_factory=list)  # seconds of each step timed so far

    def record(self, seconds: float) -> None:
        """Time one more step."""
        self.step_times.append(seconds)

    def step_seconds(self) -> float:
        """The median time of a step, leaving out the first few (slower) ones."""
        return float(np.median(self.step_times[SKIPPED_STEPS:] or self.step_times))

    @staticmethod
    def plan_during_epoch(step: int, warmup_steps: int, steps_per_epoch: int) -> bool:
        """Whether to plan after step ``step`` (counting from 0): at the end of the
        warm-up, once enough steps are timed, if that is inside the first epoch; else
        the plan is made at the first epoch's end."""
        return step + 1 == max(TIMED_STEPS, warmup_steps) and step + 1 < steps_per_epoch

    def steps_that_fit(
        self, *, spent, step, epoch, steps_per_epoch, step_seconds, save_seconds,
        test_seconds=0.0, tested=lambda epoch, epochs: True, final_seconds=0.0,
    ) -> int:  # fmt: skip
        """The largest total number of steps that ends within the budget.

        ``spent`` seconds are gone; the run is at ``step`` (in ``epoch``, both
        counted from 0). Each step takes ``step_seconds``; every epoch's end,
        the last one included, takes ``save_seconds`` to save, and
        ``test_seconds`` more where ``tested(epoch, epochs)`` says the run tests
        (``TrainConfig.tests_after``; default: after every epoch);
        ``final_seconds`` more are needed once at the end (a final test). At
        least one more step is always planned.
        """
        left = self.seconds * (1.0 - self.margin) - spent

        def needed(total):  # seconds from now to the end of a run of `total` steps
            epochs = math.ceil(total / steps_per_epoch)
            tests = sum(tested(e, epochs) for e in range(epoch, epochs))
            return ((total - step) * step_seconds + (epochs - epoch) * save_seconds
                    + tests * test_seconds + final_seconds)  # fmt: skip

        low, high = step + 1, step + 2 + int(max(left, 0.0) / step_seconds)
        while high - low > 1:  # needed() grows with the total: a binary search
            middle = (low + high) // 2
            low, high = (middle, high) if needed(middle) <= left else (low, middle)
        return low


__all__ = ["MARGIN", "SKIPPED_STEPS", "TIMED_STEPS", "TimeBudget"]
