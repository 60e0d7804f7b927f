"""Training progress as mlan shows it: one rich bar for training (step, loss, tokens/s, elapsed,
ETA) and one for the validation pass, instead of transformers' tqdm bar and the raw dict it
prints at every logging step.

On a terminal (or in a notebook) the bars are live; when the output goes to a file or a pipe a
live bar shows nothing until it ends, so the training is followed in INFO lines instead (a tenth
of the run each, or five minutes, whichever comes first). The bars follow the "mlan" logger:
`mlan -q` (above INFO) shows none. The full log history is in the output folder's loss_log.json
either way.
"""

from __future__ import annotations

import atexit
import logging
import time
from typing import Any

from transformers import TrainerCallback

log = logging.getLogger(__name__)

LINE_EVERY_S = 300.0


def use_mlan_progress(trainer, console=None) -> None:
    """Replace the Trainer's progress display (tqdm bar or printed dicts, and the notebook's) by ours."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in list(trainer.callback_handler.callbacks):
        if isinstance(cb, (ProgressCallback, PrinterCallback)) or type(cb).__name__ == "NotebookProgressCallback":
            trainer.remove_callback(cb)
    trainer.add_callback(TrainingProgress(console))


def _rate(tokens_per_s: float | None) -> str:
    if tokens_per_s is None:
        return "- tok/s"
    if tokens_per_s >= 1000:
        return f"{tokens_per_s / 1000:.1f}k tok/s"
    return f"{tokens_per_s:.0f} tok/s"


class TrainingProgress(TrainerCallback):
    """The Trainer's progress display: live rich bars on a terminal, INFO lines otherwise."""

    def __init__(self, console=None) -> None:
        self._console = console
        self._bar = None  # rich Progress of the running stage
        self._task = None
        self._eval_bar = None
        self._eval_task = None
        self._start_step = 0
        self._last: tuple[float, float] | None = None  # (time, tokens seen) at the previous log
        self._tokens_per_s: float | None = None
        self._t0 = 0.0
        self._line: tuple[float, int] | None = None  # (time, step) of the last INFO line

    # ------------------------------------------------------------------ where it goes

    def _get_console(self):
        if self._console is None:
            from rich import get_console

            # The console mlan's log handler prints on: log lines then appear above the live bar.
            self._console = get_console()
        return self._console

    def _live(self) -> bool:
        """Live bars: shown on a terminal or in a notebook unless the "mlan" logger is set above INFO (-q)."""
        mlan = logging.getLogger("mlan")
        if mlan.level > logging.INFO:
            return False
        con = self._get_console()
        return bool(con.is_terminal or con.is_jupyter)

    def _new_bar(self, *fields: str):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
        columns += [TextColumn("• {task.fields[%s]}" % f) for f in fields]  # noqa: UP031 (a rich template)
        columns += [TextColumn("•"), TimeElapsedColumn(), TextColumn("• ETA"), TimeRemainingColumn()]
        bar = Progress(*columns, console=self._get_console())
        bar.start()
        # A run that fails stops the bar at exit, so the terminal gets its cursor back.
        atexit.register(bar.stop)
        return bar

    @staticmethod
    def _stop(bar) -> None:
        bar.stop()
        atexit.unregister(bar.stop)

    # ------------------------------------------------------------------ training

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self._start_step = state.global_step  # > 0 when resumed from a checkpoint
        self._t0 = time.perf_counter()
        self._last = (self._t0, 0.0) if state.global_step == 0 else None
        self._line = None
        if self._live():
            self._bar = self._new_bar("loss", "speed")
            self._task = self._bar.add_task(
                "training", total=state.max_steps, completed=state.global_step, loss="loss -", speed=_rate(None)
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self._bar is not None:
            self._bar.update(self._task, completed=state.global_step)

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return  # evaluation results and the end-of-training summary go to mlan's own report
        now = time.perf_counter()
        tokens = logs.get("num_tokens")
        if tokens is not None:
            if self._last is not None and now > self._last[0]:
                self._tokens_per_s = (float(tokens) - self._last[1]) / (now - self._last[0])
            self._last = (now, float(tokens))
        loss = float(logs["loss"])
        if self._bar is not None:
            self._bar.update(
                self._task, completed=state.global_step, loss=f"loss {loss:.4g}", speed=_rate(self._tokens_per_s)
            )
            return
        if not self._line_due(state.global_step, state.max_steps, now):
            return
        self._line = (now, state.global_step)
        done = state.global_step - self._start_step
        elapsed = now - self._t0
        eta = elapsed / done * (state.max_steps - state.global_step) if done > 0 else None
        log.info(
            "step %d/%d  loss %.4g  lr %.3g  %s  %s elapsed%s",
            state.global_step,
            state.max_steps,
            loss,
            float(logs.get("learning_rate", 0.0)),
            _rate(self._tokens_per_s),
            _clock(elapsed),
            f", ETA {_clock(eta)}" if eta is not None else "",
        )

    def _line_due(self, step: int, max_steps: int, now: float) -> bool:
        """Without a live bar, a line at the first log, at each tenth of the run, at the end, and at
        least every LINE_EVERY_S seconds: a log file follows a long run without a line per log."""
        if self._line is None or step >= max_steps:
            return True
        tenth = max(1, max_steps // 10)
        return step // tenth > self._line[1] // tenth or now - self._line[0] >= LINE_EVERY_S

    def on_train_end(self, args, state, control, **kwargs):
        if self._bar is not None:
            self._bar.update(self._task, completed=state.global_step)
            self._stop(self._bar)
            self._bar = None

    # ------------------------------------------------------------------ evaluation

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        # An evaluation inside training (an eval_strategy in training.extra) runs under the training bar.
        if not state.is_world_process_zero or self._bar is not None:
            return
        if self._eval_bar is None:
            if not self._live():
                return
            try:
                total = len(eval_dataloader)
            except TypeError:
                total = None
            self._eval_bar = self._new_bar()
            self._eval_task = self._eval_bar.add_task("validation", total=total)
        self._eval_bar.advance(self._eval_task)

    def on_evaluate(self, args, state, control, **kwargs):
        if self._eval_bar is not None:
            self._stop(self._eval_bar)
            self._eval_bar = None


def _clock(seconds: float) -> str:
    s = round(seconds)
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"
