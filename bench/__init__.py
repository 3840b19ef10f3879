"""Benchmarks: commands that print ratio tables against baselines measured in the same run."""
