"""Benchmarks (`make bench`): what each method costs per step, our LoRA against PEFT's, merged
inference, and how cost scales with LoRA rank and sequence length. See BENCHMARKS.md."""
