"""entrain: what a language model's internals say about how hard an input is for it."""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("entrainment-cli")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"


def assets_dir() -> Path:
    """Bundled samples and prompt templates: ``entrainment_cli/assets`` inside a built wheel,
    the checkout's top-level ``assets/`` in a source tree or an editable install."""
    here = Path(__file__).resolve().parent
    inside = here / "assets"
    return inside if inside.is_dir() else here.parent / "assets"
