"""Where the training time goes: every optimizer step split into waiting for its batches (loading and
collating), forward + backward, and the optimizer step, with what runs between steps (logging,
checkpoints, evaluation) as a fourth part, so the parts add up to the training loop's time.

Measured with timestamps at the Trainer's callback events and around `get_batch_samples`, where the
Trainer fetches one optimizer step's batches before `on_step_begin`. On a GPU each boundary waits for
the queued kernels (`torch.cuda.synchronize`), or the time of asynchronous GPU work would land in
whichever part happens to wait for it; that costs one sync per boundary, three per step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

PARTS = ("data", "forward_backward", "optimizer", "other")


class StepTimer(TrainerCallback):
    """Seconds per part of the optimizer steps of one `train()` call (see the module's docstring).

    data: fetching the step's batches (reading rows, decoding images, collating; with dataloader workers,
    waiting for them). forward_backward: every micro-batch's forward and backward, gradient clipping
    included. optimizer: the optimizer and scheduler steps, zeroing the gradients. other: the rest
    of the loop between steps.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        # Every timestamp (the events', the fetch's and the collator's) comes from `clock`, seconds as
        # floats; a test passes a fake clock to check the split exactly, without sleeping.
        self.clock = clock
        self._reset()
        self._cuda = False

    def _reset(self) -> None:
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self.steps = 0
        # Inside `data`: the collator's time (chat template, tokenizing, image processor, padding-free
        # flattening; squaring images for `image_aspect_ratio: pad` aside), when it runs in this process.
        self.collate_s = 0.0
        self.collating_here = True
        self.fetching = False
        self._fetched = 0.0  # fetch time since the last boundary
        self._mark: float | None = None

    def _now(self) -> float:
        if self._cuda:
            import torch

            torch.cuda.synchronize()
        return self.clock()

    # ---------------------------------------------------------------- from the trainer and the collator

    def fetch(self, get_batches):
        """Run `get_batches()` (the Trainer's fetch of one step's batches), its time counted as data."""
        start = self.clock()
        self.fetching = True
        try:
            return get_batches()
        finally:
            self.fetching = False
            self._fetched += self.clock() - start

    def add_collate(self, seconds: float) -> None:
        # Evaluation batches are collated too; only those of a training fetch count.
        if self.fetching:
            self.collate_s += seconds

    # ---------------------------------------------------------------- Trainer events

    def on_train_begin(self, args, state, control, **kwargs):
        self._reset()
        self._cuda = args.device.type == "cuda"
        # Worker processes collate with their own copy of the collator: its time is not seen here.
        self.collating_here = args.dataloader_num_workers == 0
        self._mark = self._now()

    def on_step_begin(self, args, state, control, **kwargs):
        if self._mark is None:
            return
        now = self._now()
        gap = now - self._mark
        data = min(self._fetched, gap)
        self.seconds["data"] += data
        self.seconds["other"] += gap - data
        self._fetched = 0.0
        self._mark = now

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._lap("forward_backward")

    def on_step_end(self, args, state, control, **kwargs):
        self._lap("optimizer")
        self.steps += 1

    def _lap(self, part: str) -> None:
        if self._mark is None:
            return
        now = self._now()
        self.seconds[part] += now - self._mark
        self._mark = now

    # ---------------------------------------------------------------- the result

    def summary(self) -> dict[str, Any] | None:
        """{steps, total_s, seconds: {part: s}, fractions: {part: share}, collate_s}; None before a step.
        collate_s (part of data) is None when dataloader workers collate."""
        if not self.steps:
            return None
        total = sum(self.seconds.values())
        return {
            "steps": self.steps,
            "total_s": round(total, 4),
            "seconds": {p: round(s, 4) for p, s in self.seconds.items()},
            "fractions": {p: round(s / total, 4) if total > 0 else 0.0 for p, s in self.seconds.items()},
            "collate_s": round(self.collate_s, 4) if self.collating_here else None,
        }


class TimedCollator:
    """Wraps the training collator to add its time to the step timer's data part.

    A class rather than a closure so that DataLoader workers started with `spawn` can pickle it.
    """

    def __init__(self, collator, timer: StepTimer) -> None:
        self.collator = collator
        self.timer = timer

    def __call__(self, examples):
        start = self.timer.clock()  # the timer's clock, so one fake clock drives both in tests
        try:
            return self.collator(examples)
        finally:
            self.timer.add_collate(self.timer.clock() - start)


def describe(split: dict[str, Any] | None) -> str:
    """One line for a summary: each part's share of the step time."""
    if not split:
        return "n/a"
    f = split["fractions"]
    collate = split.get("collate_s")
    data = f"data {f['data']:.0%}" + (
        f" (collate {collate / split['total_s']:.0%})" if collate is not None and split["total_s"] > 0 else ""
    )
    return (
        f"{data} · forward+backward {f['forward_backward']:.0%} · optimizer {f['optimizer']:.0%} · "
        f"other {f['other']:.0%}  ({split['total_s']:.1f} s over {split['steps']} steps)"
    )
