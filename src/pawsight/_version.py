"""pawsight's version: one definition, importable by every layer (the package's __init__ loads the API)."""

__version__ = "0.1.0"
