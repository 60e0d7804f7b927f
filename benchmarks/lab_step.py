"""The lab's SFT step time on a CPU: what the lab's settings buy over run_sft's defaults.

One world and one tiny lab LLaVA; the stage-1 recipe (captions, 64 images per batch) and the
pretraining recipe (128 text rows per batch) each run `--steps` steps through `mlan.train.sft.run_sft`
under four settings, measured in the same process after a warm-up run:
- baseline: torch's default thread count, no dataloader worker (run_sft's defaults);
- 1 thread: `torch.set_num_threads(1)`;
- default threads + 1 dataloader worker (the next batch is rendered, tokenized and its images
  decoded while this process computes);
- 1 thread + 1 dataloader worker (what `mlan lab` uses, quick and full).
On an idle 2-core machine the default threads win by 15-20%; with other processes on the cores
(several seeds at once, or other users) one thread was 3x faster per step and the worker 25% more,
so the lab takes the setting that degrades least.
Printed: seconds per optimizer step of each setting and its speed-up over the baseline.

    python benchmarks/lab_step.py            # about 3 minutes on 2 CPU cores
    python benchmarks/lab_step.py --steps 20
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    from mlan.config.base import validate_config
    from mlan.config.recipe import SFTRecipe
    from mlan.lab.plan import LabPlan, resolved
    from mlan.lab.run import SeedRun, quiet_libraries
    from mlan.lab.world import vocabulary, write_world
    from mlan.tiny import build_word_tokenizer, save_tiny_llava, vicuna_chat_template
    from mlan.train.sft import run_sft

    quiet_libraries()
    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plan = LabPlan(seeds=[0], variants=[], n_train=8000, n_images=1000)
        s = SeedRun(root, 0, plan)
        s.configs.mkdir(parents=True)
        write_world(s.world, 0, n_train=plan.n_train, n_test=10, n_images=plan.n_images)
        tok = build_word_tokenizer(vocabulary(), chat_template="{{- bos_token -}}" + vicuna_chat_template(system=""))
        init = save_tiny_llava(root / "init", "lab", 0, tokenizer=tok)
        mixtures = {
            "lab_pretrain": s.mixture("lab_pretrain", 4000, init),
            "lab_stage1": s.mixture("lab_captions", 1000, init),
        }

        def step_time(recipe: str, threads: int, workers: int, steps: int) -> float:
            torch.set_num_threads(threads)
            base, _ = resolved("recipes", recipe, SFTRecipe, s.world, s.configs, {}, f"bench_{recipe}")
            data = base.model_dump(mode="json")
            data["model"]["path"] = str(init)
            data["data"]["mixture"] = str(mixtures[recipe])
            data["output"]["dir"] = str(root / "out")
            data["training"].update(max_steps=steps, dataloader_num_workers=workers)
            if not workers:
                data["training"]["extra"] = {}
            res = run_sft(validate_config(data, SFTRecipe, recipe), resume=False, overwrite=True)
            return res.runtime_s / res.steps

        settings = [
            ("baseline (default threads, no worker)", default_threads, 0),
            ("1 thread", 1, 0),
            ("default threads + 1 dataloader worker", default_threads, 1),
            ("1 thread + 1 dataloader worker", 1, 1),
        ]
        for recipe, what in (("lab_pretrain", "128 text rows"), ("lab_stage1", "64 image rows")):
            step_time(recipe, 1, 0, 3)  # warm-up: imports, kernels
            times = [(name, step_time(recipe, th, w, args.steps)) for name, th, w in settings]
            print(f"\n{recipe} ({what} per step, {args.steps} steps, torch default threads {default_threads}):")
            for name, t in times:
                print(f"  {name:40s} {t:6.3f} s/step   x{times[0][1] / t:4.2f}")


if __name__ == "__main__":
    main()
