"""The package version (one place; the package face and every artifact read it here)."""

__version__ = "0.1.0"
