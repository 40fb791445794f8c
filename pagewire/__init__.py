"""pagewire: PDFs into text at scale. This package is the ``pagewire`` command, the composition root that
starts the parts in ``producer``, ``consumer`` and ``tools``."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pagewire")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
