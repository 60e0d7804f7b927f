"""What the command line shows: mlan's own lines, one progress bar per stage, and from the
libraries only what is a real problem (`mlan -v` shows everything).

Log lines and progress bars go to stderr, results (tables, paths written) to stdout, so
`mlan eval ... > out.txt` keeps the results in the file and the log on the terminal.

Nothing here runs on import: `mlan.*` used as a library leaves logging, warnings and the
libraries' progress bars as its caller set them. The CLI calls `setup()` once per invocation and
`quiet_libraries()` when a command that loads models or data starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings

QUIET, NORMAL, VERBOSE = -1, 0, 1

# Library log records that every mlan run meets and that ask nothing of the user; shown with -v.
# (logger name prefix, message pattern)
EXPECTED_RECORDS: tuple[tuple[str, str], ...] = (
    # Without torchvision transformers uses the PIL image processor, the one mlan's CPU path is tested with.
    ("transformers", r"requires torchvision \(not installed\); falling back to"),
    # Checkpoints written less than a second apart (a tiny model) look to transformers like a filesystem
    # without modification times; the numerical order it falls back to is the right one anyway.
    ("transformers.trainer_utils", r"mtime may not be reliable on this filesystem"),
    # mlan hands lm-eval a model it has already loaded, on purpose: one load serves every suite.
    ("lm_eval", r"`pretrained` model kwarg is not of type `str`"),
    ("lm_eval", r"Passed an already-initialized model through `pretrained`"),
)

# Library loggers lowered to ERROR unless -v: they warn at import about optional extras.
QUIET_LOGGERS: tuple[str, ...] = (
    # On a CPU with AVX512-BF16, importing bitsandbytes (transformers' integrations do) looks for the
    # optional `kernels` package's 4-bit matmul and warns when it is absent; its own kernel is used then.
    "bitsandbytes.backends.cpu.ops",
)

# Python warnings one library raises on another's use of it, which nothing mlan passes can avoid;
# shown with -v. (category, message regex, module regex of the warning's origin)
EXPECTED_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` alias on every LoRA/QLoRA
    # model it wraps or loads (training, and merging an adapter into its base).
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated", r"transformers\.modeling_utils"),
    # DeepSpeed 0.19 gathers and reduces ZeRO's shards through torch.distributed calls that torch 2.13
    # renamed: once per collective, thousands of times a run.
    (FutureWarning, r"`torch\.distributed\.\w+` is deprecated", r"torch\.distributed"),
)

_verbosity = NORMAL


class _ExpectedRecords(logging.Filter):
    """Drops the records listed in EXPECTED_RECORDS (attached to the console handler)."""

    def __init__(self) -> None:
        super().__init__()
        self._rules = [(name, re.compile(pattern)) for name, pattern in EXPECTED_RECORDS]

    def filter(self, record: logging.LogRecord) -> bool:
        for name, pattern in self._rules:
            if (record.name == name or record.name.startswith(name + ".")) and pattern.search(record.getMessage()):
                return False
        return True


def log_console():
    """The rich console log lines and progress bars share: rich's global console, which `setup`
    puts on stderr (a bar on the same console as the log handler keeps log lines above it)."""
    from rich import get_console

    return get_console()


def setup(verbosity: int = NORMAL) -> None:
    """Logging and warnings for one CLI invocation: QUIET (-q), NORMAL or VERBOSE (-v).

    Every record goes through one rich handler on stderr, on the console the progress bars use
    (`log_console()`), so log lines print above a running bar and stdout keeps only results.
    Python warnings become log records ("py.warnings") in the same format. NORMAL: mlan at INFO,
    libraries at WARNING, known harmless messages dropped. VERBOSE: everything at DEBUG, every
    warning shown once per place (DeprecationWarning too).
    """
    global _verbosity
    import rich
    from rich.logging import RichHandler

    _verbosity = verbosity
    # rich's global console (the one rich.progress and mlan.train.progress default to) on stderr; it
    # looks sys.stderr up at each write, so a test runner's captured stderr is honoured too.
    rich.reconfigure(stderr=True)
    handler = RichHandler(console=log_console(), show_path=False, show_time=False, markup=False)
    if verbosity < VERBOSE:
        handler.addFilter(_ExpectedRecords())
    logging.basicConfig(
        level=logging.DEBUG if verbosity >= VERBOSE else logging.WARNING,
        format="%(message)s",
        handlers=[handler],
        force=True,
    )
    mlan_level = {QUIET: logging.WARNING, NORMAL: logging.INFO}.get(verbosity, logging.DEBUG)
    if int(os.environ.get("RANK", "0") or 0) > 0 and verbosity < VERBOSE:
        # Under a launcher every process runs the same command: the main process (rank 0) says what they
        # all do; the others say only what stops them (with -v, everything, each process).
        mlan_level = logging.ERROR
    logging.getLogger("mlan").setLevel(mlan_level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbosity >= VERBOSE else logging.ERROR)
    logging.captureWarnings(True)
    if verbosity >= VERBOSE:
        warnings.simplefilter("default")
    else:
        for category, message, module in EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)


def verbosity() -> int:
    """The verbosity `setup` was last called with (for worker processes, which must repeat it)."""
    return _verbosity


def quiet_libraries() -> None:
    """Route transformers' and datasets' logging through mlan's handler at the level `setup` chose,
    and turn off their per-file progress bars (loading weights, writing shards, generating splits)
    unless -v: mlan shows one bar per training or evaluation stage. Hub download bars stay."""
    import torch

    if not torch.cuda.is_available():
        # DeepSpeed looks for an accelerator when imported (transformers imports it wherever it is
        # installed) and, finding no GPU, says so on stdout in its own format; naming the CPU is the same.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import datasets
    import transformers

    verbose = _verbosity >= VERBOSE
    level = logging.DEBUG if verbose else logging.WARNING
    # Both libraries print through a stream handler of their own ("[transformers] ..." without
    # propagation; datasets with propagation, so twice); mlan's handler formats every line alike.
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()
    datasets.utils.logging.set_verbosity(level)
    own = logging.getLogger("datasets")
    for h in list(own.handlers):  # datasets has no disable_default_handler()
        own.removeHandler(h)
    datasets.utils.logging.enable_propagation()
    if not verbose:
        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()


@contextlib.contextmanager
def quiet_logger(name: str, level: int = logging.WARNING):
    """Hold logger `name` at `level` or above for the block: for a library's INFO lines that a
    command's printed summary already says (unless -v, which shows everything)."""
    logger = logging.getLogger(name)
    before = logger.level
    if verbosity() < VERBOSE and logger.getEffectiveLevel() < level:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)
