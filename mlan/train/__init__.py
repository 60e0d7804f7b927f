"""Supervised fine-tuning of LLaVA-style models (TRL SFTTrainer): `run_sft` is the entry point."""
