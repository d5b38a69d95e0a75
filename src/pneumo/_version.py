"""The package version, in a module of its own: the model file records it, and it must not import the package."""

__version__ = "0.1.0"
