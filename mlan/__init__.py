"""mlan: language-based instruction tuning of multimodal LLMs.

The library API, one function per stage (the CLI calls exactly these):
- `mlan.tiny.save_tiny_llava`   a tiny offline LLaVA for tests and the quickstart
- `mlan.quickstart.run_quickstart`  the whole pipeline on bundled data
"""

__version__ = "0.1.0"
