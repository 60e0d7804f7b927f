"""The lab's worker processes, in a module that imports no ML library: a spawned worker unpickles
its initializer first, and importing `mlan.lab.run` there would import bitsandbytes (through the
trainer) before the initializer has filtered its import-time warnings."""

from __future__ import annotations

import logging

from mlan import console


def quiet_libraries() -> None:
    """Silence per-row progress bars of datasets/transformers: the lab logs one line per stage."""
    import transformers

    console.quiet_libraries()
    transformers.utils.logging.set_verbosity_error()


def worker_init(verbosity: int, levels: dict[str, int], threads: int) -> None:
    """The parent's console set-up in a worker process (spawned: nothing is inherited), so library
    noise is filtered there too, its mlan log levels, and forked data-loader workers."""
    import multiprocessing as mp

    import torch

    # A spawned process makes spawn its default start method, so its DataLoader workers would be
    # spawned too: each re-imports the training stack (seconds per trainer) without this set-up
    # (bitsandbytes' import-time warning shows). Forked, as in a process started from the shell,
    # they inherit both.
    if "fork" in mp.get_all_start_methods():
        mp.set_start_method("fork", force=True)
    console.setup(verbosity)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    quiet_libraries()
    torch.set_num_threads(threads)


def pool(jobs: int, threads: int):
    """A pool of `jobs` worker processes set up like this one (console, mlan log levels, threads)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    levels = {name: logging.getLogger(name).getEffectiveLevel() for name in ("mlan", "mlan.lab")}
    # spawn: a forked child of a process whose OpenMP/torch threads already started can hang.
    return ProcessPoolExecutor(
        jobs,
        mp_context=mp.get_context("spawn"),
        initializer=worker_init,
        initargs=(console.verbosity(), levels, threads),
    )
