"""The foundations every stage stands on: errors, atomic file writes and validated reads, statistics,
this machine (cores, load, switches) and the process group of a torchrun run.

Imports nothing of advisor outside advisor.core.
"""
