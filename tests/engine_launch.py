"""`mlan` as a launcher starts it, with what the engine tests need and nothing else changed.

Run as `torchrun ... tests/engine_launch.py sft RECIPE` (or under `accelerate launch` / `deepspeed`).
Environment switches, each off unless set:
- MLAN_TEST_FSDP_ON_CPU=1: the test-only FSDP shim of ../shared/reference/distributed.md. accelerate turns
  FSDP on only for GPU-like process groups; this makes a CPU process that a launcher started report a
  gloo group of type MULTI_GPU, so `training.engine fsdp2` really shards on this CPU machine. mlan itself
  refuses FSDP on a CPU (the test of that runs without the shim).
- MLAN_TEST_PROBE=DIR: once training starts, each process writes DIR/rank<r>.json: accelerate's
  distributed type and, for the largest parameter, its full and local sizes (is it really partitioned?);
  when training ends, the main process writes DIR/gathered.safetensors, every trainable parameter
  gathered whole from the engine (what the saved model must equal).
- MLAN_TEST_KILL_AFTER_SAVE=N: every process kills itself (SIGKILL, no clean-up) once the checkpoint of
  step N is written on every process, as a crash would.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


def fsdp_on_cpu() -> None:
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    original = PartialState._prepare_backend
    os.environ["ACCELERATE_TORCH_DEVICE"] = "cpu"

    def prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        if not cpu and int(os.environ.get("LOCAL_RANK", -1)) != -1:
            return "gloo", DistributedType.MULTI_GPU
        return original(self, cpu, sagemaker_dp, backend)

    PartialState._prepare_backend = prepare_backend


def full_tensors(trainer) -> dict:
    """Every trainable parameter of the (wrapped) model, whole, by its unwrapped name."""
    import torch

    from mlan.train.checkpoint import unwrapped_name

    model = trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if hasattr(p, "ds_id"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([p]):
                full = p.detach().clone()
        elif hasattr(p, "full_tensor"):
            full = p.full_tensor().detach().clone()
        else:
            full = p.detach().clone()
        out[unwrapped_name(name)] = full.to(torch.float32).contiguous().cpu()
    return out


def probe_callback(folder: Path):
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        trainer = None

        def on_train_begin(self, args, state, control, **kwargs):
            t = self.trainer
            model = t.model_wrapped if t.is_deepspeed_enabled else t.model
            name, p = max(model.named_parameters(), key=lambda kv: getattr(kv[1], "ds_numel", 0) or kv[1].numel())
            full = getattr(p, "ds_numel", None) or (p.numel())
            local = (
                p.ds_tensor.numel()
                if hasattr(p, "ds_tensor")
                else p.to_local().numel()
                if hasattr(p, "to_local")
                else p.numel()
            )
            info = {
                "distributed_type": str(t.accelerator.distributed_type.value),
                "parameter": name,
                "full": int(full),
                "local": int(local),
                "world_size": t.accelerator.num_processes,
            }
            (folder / f"rank{t.accelerator.process_index}.json").write_text(json.dumps(info))

        def on_train_end(self, args, state, control, **kwargs):
            from safetensors.torch import save_file

            tensors = full_tensors(self.trainer)  # a collective: every process takes part
            if self.trainer.accelerator.is_main_process:
                save_file(tensors, str(folder / "gathered.safetensors"))

    return Probe()


def kill_callback(step: int):
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                import torch.distributed as dist

                if dist.is_initialized():
                    dist.barrier()  # every process has written its part of the checkpoint
                os.kill(os.getpid(), signal.SIGKILL)

    return Kill()


def install_callbacks() -> None:
    """Add the probe and the kill to the trainer `mlan sft` builds."""
    import mlan.train.sft as sft
    import mlan.train.trainer as trainer_module

    build = trainer_module.build_trainer

    def build_trainer(*args, **kwargs):
        trainer = build(*args, **kwargs)
        if os.environ.get("MLAN_TEST_PROBE"):
            probe = probe_callback(Path(os.environ["MLAN_TEST_PROBE"]))
            probe.trainer = trainer
            trainer.add_callback(probe)
        if os.environ.get("MLAN_TEST_KILL_AFTER_SAVE"):
            trainer.add_callback(kill_callback(int(os.environ["MLAN_TEST_KILL_AFTER_SAVE"])))
        return trainer

    trainer_module.build_trainer = build_trainer
    # run_sft imports build_trainer inside itself, from the module: the patched one is what it finds.
    del sft


if __name__ == "__main__":
    if os.environ.get("MLAN_TEST_FSDP_ON_CPU") == "1":
        fsdp_on_cpu()
    install_callbacks()
    from mlan.cli import app

    sys.exit(app(sys.argv[1:], prog_name="mlan"))
