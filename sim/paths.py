"""Where codesign keeps its caches (compiled csim harnesses, RTL builds, Yosys counts).

``cache_dir(kind, env)``: the folder named by the environment variable ``env`` when it is
set, else ``$XDG_CACHE_HOME/codesign/<kind>`` (default ``~/.cache/codesign/<kind>``).
Never inside the repository; not created here.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir(kind: str, env: str) -> Path:
    override = os.environ.get(env)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "codesign" / kind
