"""Wings on a GPU: the checks of tests/test_wings.py that depend on the attention kernel and device,
run on CUDA (SDPA's fused kernels, bf16) where the CPU suite cannot reach. Not part of CI (no GPU
there); run by hand on a machine with one:

    python scripts/gpu_check_wings.py        # (python scripts/gpu_check_wings.py cpu: a dry run)

Prints one line per check and exits 1 if any fails. Checks, for each router/kernel pair: fresh
learners leave the logits bit-identical (float32 and bfloat16); in float32, generation with the KV
cache equals generation without it and a mixed batch (text + image rows, left padding) generates
what each row alone does. In bfloat16 those two are exact only where the base model's own are (a
different kernel shape rounds differently), so they are printed for the base model beside Wings.
"""

from __future__ import annotations

import sys

import torch
from PIL import Image

from mlan.config.wings import WingsConfig
from mlan.paths import BUNDLED_DATA_DIR
from mlan.tiny import build_tiny_llava
from mlan.wings import add_wings, wings_layers

ROWS = [("What is two plus two? Answer briefly please.", False), ("What is shown?", True)]


def batch(processor, image, rows, device):
    texts = []
    for text, with_image in rows:
        content = [{"type": "image"}, {"type": "text", "text": text}] if with_image else text
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True))
    images = [image for _, with_image in rows if with_image] or None
    return processor(text=texts, images=images, return_tensors="pt", padding=True).to(device)


def model_for(router, attn, dtype, device):
    torch.manual_seed(0)
    model, processor = build_tiny_llava("tiny", seed=0)
    model.set_attn_implementation(attn)
    model = model.to(device, dtype).eval()
    return model, processor


def randomize(model, std=0.3):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in wings_layers(model).values():
            for p in layer.parameters():
                p.copy_((torch.randn(p.shape, generator=g) * std).to(p.device, p.dtype))


def _generation_checks(model, processor, image, device) -> dict[str, bool]:
    same = True
    for rows in ([ROWS[0]], [ROWS[1]], ROWS):
        inputs = batch(processor, image, rows, device)
        cached = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        uncached = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=False)
        same &= torch.equal(cached, uncached)
    together = model.generate(**batch(processor, image, ROWS, device), max_new_tokens=5, do_sample=False)[:, -5:]
    alone = [
        model.generate(**batch(processor, image, [r], device), max_new_tokens=5, do_sample=False)[0, -5:] for r in ROWS
    ]
    return {
        "cache == no cache": same,
        "mixed batch == rows alone": all(torch.equal(together[i], a) for i, a in enumerate(alone)),
    }


def main() -> int:
    device = sys.argv[1] if len(sys.argv) > 1 else "cuda"  # `cpu`: a dry run of the script itself
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    name = torch.cuda.get_device_name() if device == "cuda" else device
    print(f"device: {name}, torch {torch.__version__}")
    image = Image.open(BUNDLED_DATA_DIR / "images" / "skimage_coins.png").convert("RGB")
    failures = 0
    for dtype in (torch.float32, torch.bfloat16):
        for router, attn in (("modality", "sdpa"), ("modality", "eager"), ("attention", "eager")):
            model, processor = model_for(router, attn, dtype, device)
            mixed = batch(processor, image, ROWS, device)
            with torch.no_grad():
                base = model(**mixed).logits
                add_wings(model, WingsConfig(rank=8, router=router))
                fresh = model(**mixed).logits
            checks = {"zero init bit-identical": torch.equal(base, fresh)}
            randomize(model)
            with torch.no_grad():
                checks["learners change logits"] = not torch.equal(model(**mixed).logits, base)
                wings = _generation_checks(model, processor, image, device)
            if dtype == torch.float32:
                checks |= wings
            else:
                plain, _ = model_for(router, attn, dtype, device)
                with torch.no_grad():
                    control = _generation_checks(plain, processor, image, device)
                for name, ok in wings.items():
                    print(f"info {'bfloat16':8} {router:8} {attn:5} {name}: Wings {ok}, base model {control[name]}")
            for name, ok in checks.items():
                failures += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {str(dtype).removeprefix('torch.'):8} {router:8} {attn:5} {name}")
    print("all checks passed" if not failures else f"{failures} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
