"""The command line: parses, calls the pipeline, renders what it returns (``app``: the commands; ``render``: the terminal).

The top stage: it may import every other; nothing imports it but ``advisor.__main__``.
"""

from advisor.cli.app import main

__all__ = ["main"]
