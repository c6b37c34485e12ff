"""``package://PACKAGE/PATH``: a file that a ROS package installs into its share directory.

An installed config cannot name a path relative to the source tree, so the shipped configs say
``package://mtm_runtime/models/reacher_embedded`` and this module finds it, without importing ROS:

1. every prefix on ``AMENT_PREFIX_PATH`` that holds the ament index marker
   ``share/ament_index/resource_index/packages/PACKAGE`` (a colcon install, a system ROS 2);
2. ``sys.prefix/share/PACKAGE`` (``pip install`` puts ``setup.py``'s ``data_files`` there);
3. for ``mtm_runtime`` itself, the source checkout this module runs from (``pip install -e .``,
   ``colcon build --symlink-install``).

The first that holds PATH wins. PATH must be relative and stay inside the share directory.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path, PurePosixPath

SCHEME = "package://"
PACKAGE = "mtm_runtime"
_CHECKOUT = Path(__file__).resolve().parents[1]


def share_directories(package: str) -> list[Path]:
    """Candidate share directories of ``package``, in search order (existing ones only)."""
    dirs = []
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        if (Path(prefix) / "share" / "ament_index" / "resource_index" / "packages" / package).is_file():
            dirs.append(Path(prefix) / "share" / package)
    dirs.append(Path(sys.prefix) / "share" / package)
    if package == PACKAGE and (_CHECKOUT / "package.xml").is_file():
        dirs.append(_CHECKOUT)
    seen: list[Path] = []
    for d in dirs:
        if d.is_dir() and d not in seen:
            seen.append(d)
    return seen


def resolve(path: str | os.PathLike) -> Path:
    """``package://PACKAGE/PATH`` -> the file or directory; any other path is returned as a Path.

    ValueError (naming the path) for a malformed URL, FileNotFoundError listing where it looked."""
    text = os.fspath(path)
    if not text.startswith(SCHEME):
        return Path(text)
    package, _, rel = text[len(SCHEME):].partition("/")
    parts = PurePosixPath(rel).parts
    if not package or not rel or rel.startswith("/") or ".." in parts:
        raise ValueError(f"{text}: expected {SCHEME}PACKAGE/RELATIVE/PATH inside the package's share directory")
    searched = share_directories(package)
    for share in searched:
        candidate = share.joinpath(*parts)
        if candidate.exists():
            return candidate
    where = ", ".join(str(d) for d in searched) or f"no share directory of {package} found"
    raise FileNotFoundError(f"{text}: {rel} is not in the share directory of {package} (searched: {where})")
