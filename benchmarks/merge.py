"""Merge benchmark: mlan's streaming merge vs mergekit vs a naive load-both-models merge.

Generates a LLaVA-format pair of about 1 GB each (bf16, old on-disk layout, two shards; random
weights: the arithmetic does not care), plus the multimodal model's language model extracted as
a plain causal-LM folder (mergekit has no LLaVA architecture, see the README), and merges with
task arithmetic at alpha 0.1 three ways, each in its own process:

- mlan:     `mlan merge --multimodal MM --original LLM --method task_arithmetic --alpha 0.1`
- mergekit: `mergekit-yaml` with task_arithmetic, the extracted multimodal LLM as base, default options
- naive:    both models loaded with transformers' from_pretrained, merged in memory, save_pretrained

Wall time and peak resident memory (ru_maxrss of each child, from os.wait4) are printed with
ratios against the naive merge and mergekit, and mlan's merged weights are checked against
mergekit's. Everything generated is deleted at the end.

Run: .venv/bin/python benchmarks/merge.py [--layers 7] [--keep] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALPHA = 0.1

NAIVE = textwrap.dedent(
    """
    import sys, torch
    from transformers import LlamaForCausalLM, LlavaForConditionalGeneration
    mm_dir, llm_dir, out, alpha = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    mm = LlavaForConditionalGeneration.from_pretrained(mm_dir, dtype=torch.bfloat16)
    llm = LlamaForCausalLM.from_pretrained(llm_dir, dtype=torch.bfloat16)
    theirs = llm.state_dict()
    with torch.no_grad():
        for name, p in mm.named_parameters():
            if name.startswith("model.language_model."):
                o = theirs["model." + name[len("model.language_model."):]]
            elif name == "lm_head.weight":
                o = theirs[name]
            else:
                continue
            p.copy_((p.float() + alpha * (o.float() - p.float())).to(p.dtype))
    mm.save_pretrained(out)
    """
)


def configs(layers: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    text = LlamaConfig(
        vocab_size=32064,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=16,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=4,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
    )
    llava = LlavaConfig(text_config=text, vision_config=vision, image_token_index=32000, dtype="bfloat16")
    return text, llava


def generate(work: Path, layers: int) -> dict[str, Path]:
    """Write MM (LLaVA, old layout, 2 shards), LLM (causal LM) and MM-LM (MM's language model)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM, LlavaForConditionalGeneration

    text, llava = configs(layers)
    with torch.device("meta"):
        lm_shapes = {k: v.shape for k, v in LlamaForCausalLM(text).state_dict().items()}
        mm_shapes = {k: v.shape for k, v in LlavaForConditionalGeneration(llava).state_dict().items()}
    vision = {
        k.removeprefix("model."): s for k, s in mm_shapes.items() if "language_model" not in k and k != "lm_head.weight"
    }
    paths = {"mm": work / "mm", "llm": work / "llm", "mm_lm": work / "mm-lm"}
    for p in paths.values():
        p.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)

    def rand(shape):
        return (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)

    names = sorted(lm_shapes)
    halves = [names[: len(names) // 2], names[len(names) // 2 :]]
    for i, group in enumerate(halves):
        shard = f"model-{i + 1:05d}-of-00002.safetensors"
        mm_lm = {k: rand(lm_shapes[k]) for k in group}
        save_file(mm_lm, paths["mm_lm"] / shard, metadata={"format": "pt"})
        mm = {("language_model." + k): v for k, v in mm_lm.items()}
        if i == 1:
            mm |= {k: rand(s) for k, s in vision.items()}
        save_file(mm, paths["mm"] / shard, metadata={"format": "pt"})
        del mm, mm_lm
        llm = {k: rand(lm_shapes[k]) for k in group}
        save_file(llm, paths["llm"] / shard, metadata={"format": "pt"})
        del llm
    for p in paths.values():
        weight_map = {}
        for shard in sorted(p.glob("*.safetensors")):
            from safetensors import safe_open

            with safe_open(shard, "pt") as f:
                weight_map |= {k: shard.name for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        (p / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (paths["mm"] / "config.json").write_text(llava.to_json_string())
    for key in ("llm", "mm_lm"):
        cfg = text.to_dict() | {"architectures": ["LlamaForCausalLM"]}
        (paths[key] / "config.json").write_text(json.dumps(cfg))
    return paths


def measure(cmd: list[str], label: str) -> tuple[float, float]:
    """Run one command in its own process; (wall seconds, peak RSS in MB) of that process."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed ({proc.returncode}):\n{out[-3000:]}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def lm_tensors(folder: Path, old_layout: bool):
    from safetensors import safe_open

    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(shard, "pt") as f:
            for k in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                if old_layout and k.startswith("language_model."):
                    yield k[len("language_model.") :], f.get_tensor(k)
                elif not old_layout:
                    yield k, f.get_tensor(k)


def compare(mlan_out: Path, mergekit_out: Path) -> tuple[int, float]:
    """Number of language-model tensors compared and their largest difference (mlan vs mergekit)."""
    from safetensors import safe_open

    theirs = {}
    for shard in sorted(mergekit_out.glob("*.safetensors")):
        with safe_open(shard, "pt") as f:
            theirs |= {k: shard for k in f.keys()}  # noqa: SIM118
    n, worst = 0, 0.0
    for k, v in lm_tensors(mlan_out, old_layout=True):
        with safe_open(theirs[k], "pt") as f:
            other = f.get_tensor(k)
        worst = max(worst, (v.float() - other.float()).abs().max().item())
        n += 1
    return n, worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=7, help="decoder layers (7 gives about 1 GB per model)")
    ap.add_argument("--workdir", type=Path, default=None, help="where to generate the models (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated models")
    ap.add_argument("--generate", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate:
        generate(args.generate, args.layers)
        return
    work = Path(tempfile.mkdtemp(prefix="mlan-merge-bench-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        # Generated in a child: a forked child inherits the parent's resident pages into its peak
        # (Linux keeps the pre-exec high-water mark), so the measuring parent must stay small.
        gen = [sys.executable, __file__, "--generate", str(work), "--layers", str(args.layers)]
        subprocess.run(gen, check=True)
        paths = {"mm": work / "mm", "llm": work / "llm", "mm_lm": work / "mm-lm"}
        sizes = {k: sum(f.stat().st_size for f in p.glob("*.safetensors")) / 1e9 for k, p in paths.items()}
        print(
            f"generated in {time.perf_counter() - t0:.0f} s: LLaVA {sizes['mm']:.2f} GB, original LLM {sizes['llm']:.2f} GB, "
            f"extracted LLaVA LLM {sizes['mm_lm']:.2f} GB (bf16, {args.layers} layers x 2048, vocab 32064)"
        )
        for p in paths.values():  # warm the page cache equally for every contender
            for f in p.glob("*.safetensors"):
                with open(f, "rb") as fh:
                    while fh.read(64 << 20):
                        pass
        mk_cfg = work / "mergekit.yml"
        mk_cfg.write_text(
            f"merge_method: task_arithmetic\nbase_model: {paths['mm_lm']}\ndtype: bfloat16\n"
            f"models:\n  - model: {paths['llm']}\n    parameters:\n      weight: {ALPHA}\n"
        )
        naive = work / "naive.py"
        naive.write_text(NAIVE)
        bindir = Path(sys.executable).parent
        mlan_args = ["--multimodal", str(paths["mm"]), "--original", str(paths["llm"]), "--method", "task_arithmetic"]
        mlan_args += ["--alpha", str(ALPHA), "--out", str(work / "out-mlan")]
        runs = {
            "mlan": [sys.executable, "-m", "mlan", "-q", "merge", *mlan_args],
            "mergekit": [str(bindir / "mergekit-yaml"), str(mk_cfg), str(work / "out-mergekit"), "--quiet"],
            "naive": [
                sys.executable,
                str(naive),
                str(paths["mm"]),
                str(paths["llm"]),
                str(work / "out-naive"),
                str(ALPHA),
            ],
        }
        results = {}
        for label, cmd in runs.items():
            results[label] = measure(cmd, label)
            print(f"{label:>9}: {results[label][0]:6.1f} s wall, peak RSS {results[label][1]:7.0f} MB", flush=True)
            if label == "naive":
                shutil.rmtree(work / "out-naive")
        n, worst = compare(work / "out-mlan", work / "out-mergekit")
        if n == 0:
            raise SystemExit("mlan vs mergekit: no language-model tensor compared (did a key layout change?)")
        print(f"mlan vs mergekit: {n} language-model tensors compared, max abs difference {worst:.3g}")
        (tm, rm), (tk, rk), (tn, rn) = results["mlan"], results["mergekit"], results["naive"]
        print(f"mlan peak memory: {rm / rn:.2f}x the naive merge's, {rm / rk:.2f}x mergekit's (target < 0.25x naive)")
        print(f"mlan time: {tm / tk:.2f}x mergekit's, {tm / tn:.2f}x the naive merge's (target <= 1.0x mergekit)")
    finally:
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
