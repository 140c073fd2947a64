"""The one place Skiff's version string comes from.

The installed distribution's metadata is the truth; a tree run without
installing (no metadata) says so instead of pretending a version.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def skiff_version() -> str:
    try:
        return version("skiff")
    except PackageNotFoundError:
        return "0.0.0+unknown"
