"""advisor: measure a dataset, place it in the transfer-learning 2x2 table, run the advice."""

__version__ = "0.1.0"
