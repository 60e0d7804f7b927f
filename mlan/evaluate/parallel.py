"""Evaluation over several processes: `accelerate launch -m mlan eval ...` or `torchrun -m mlan eval ...`.

Every process runs the same evaluation with its own copy of the model; the work of each task is split:
- generate suites: the batches the one-process run would form (same rows, same padding) are dealt out
  round-robin, one per process per round, and the answers gathered after each round, so every process
  ends with exactly the one-process answers (and the main process can show one bar over all of them);
- lm-eval suites: lm-eval's own data parallelism (HFLM shards the requests by rank and gathers them on
  rank 0). mlan hands HFLM a loaded model, for which HFLM assumes one process, so `share_with_lm_eval`
  sets what HFLM sets itself when it loads a model under accelerate (rank, world size, accelerator), and
  rank 0's results are sent to the others.
Only the main process writes (results, samples, cache); every process computes the same report.

Why by hand: lm-eval's harness splits only its own tasks; the generate suites are mlan's own harness
(mlan.evaluate.generate explains why), so their split is mlan's too. accelerate's PartialState starts
the process group from the launcher's environment (gloo on a CPU, nccl on GPUs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Processes:
    """This process's place in the evaluation: rank, how many, and the rank on this machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def many(self) -> bool:
        return self.world > 1

    def all_gather(self, obj: Any) -> list[Any]:
        """`obj` of every process, in rank order (every process gets the list)."""
        if not self.many:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """The main process's `obj`, on every process."""
        if not self.many:
            return obj
        import torch.distributed as dist

        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.many:
            import torch.distributed as dist

            dist.barrier()


ONE = Processes()


def launched_processes() -> int:
    """How many processes the launcher started (accelerate launch and torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def main_process() -> bool:
    """Whether this is the main process (rank 0, or the only one), from the launcher's environment; for the
    CLI, which decides what to draw and print before the process group exists."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def current(cuda: bool) -> Processes:
    """This process's place; starts the process group when launched as several (gloo without `cuda`)."""
    if launched_processes() <= 1:
        return ONE
    from accelerate import PartialState

    state = PartialState(cpu=not cuda)
    return Processes(state.process_index, state.num_processes, state.local_process_index)


def share_with_lm_eval(lm, procs: Processes) -> None:
    """Make an HFLM built around a loaded model take its share of every task, as HFLM does when it loads
    the model itself under accelerate (lm_eval/models/huggingface.py, HFLM.__init__: `_rank`,
    `_world_size` and `accelerator`, which its gather and barrier use).

    lm-eval deals each task's documents out interleaved (rank r: documents r, r + W, ...; its
    `doc_iterator`) and joins the per-document metrics on rank 0 rank after rank, so the standard error
    is summed in another order than in one process and can differ in its last bit. The gather is made
    to return them in document order, so the scores are exactly the one-process scores."""
    if not procs.many:
        return
    from accelerate import Accelerator

    lm._rank, lm._world_size = procs.rank, procs.world
    lm.accelerator = Accelerator(cpu=str(lm.device) == "cpu")
    gather = lm.gather_object

    def gather_in_document_order(obj, dst=0):
        parts = gather(obj, dst=dst)
        if parts is None:  # not the destination
            return None
        merged = interleave(parts)
        return [merged] + [_emptied(merged) for _ in parts[1:]]

    lm.gather_object = gather_in_document_order


def interleave(parts: list[Any]) -> Any:
    """Per-rank results of interleaved shards, merged in document order: lists are interleaved (rank 0's
    first item, rank 1's first, ..., rank 0's second, ...), dicts merged key by key."""
    first = parts[0]
    if isinstance(first, dict):
        return {k: interleave([p[k] for p in parts]) for k in first}
    if isinstance(first, list):
        return [p[i] for i in range(max(len(p) for p in parts)) for p in parts if i < len(p)]
    return first


def _emptied(obj: Any) -> Any:
    """The same keys with empty lists: what the other ranks contribute once rank 0's part holds everything."""
    if isinstance(obj, dict):
        return {k: _emptied(v) for k, v in obj.items()}
    return [] if isinstance(obj, list) else obj
