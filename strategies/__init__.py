"""Executable transfer-learning strategies (linear-probe, layer-probe, partial/full fine-tune)."""
