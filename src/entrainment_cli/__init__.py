"""entrain: what a language model's internals say about how hard an input is for it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("entrainment-cli")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
