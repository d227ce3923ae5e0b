"""JAX's persistent compilation cache for attnzoo's commands and notebooks: a train step that
took tens of seconds to compile is read back from disk on the next start.

The directory is, in this order: the ``directory`` argument, ``$ATTNZOO_COMPILATION_CACHE``,
``$XDG_CACHE_HOME/attnzoo/jax`` (``~/.cache/attnzoo/jax``). ``ATTNZOO_COMPILATION_CACHE=off``
(or ``0``, or an empty value) turns it off, as do ``--nouse_compilation_cache`` (``train.py``) and
``--no-compilation-cache`` (``evaluate``, ``predict``). JAX keeps only compilations that took
at least ``jax_persistent_cache_min_compile_time_secs`` (1 s), keyed by the program, the
backend, the JAX version and the flags, so a cached program is the one that would be compiled.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

OFF = ("", "0", "off", "false", "no")


def default_directory() -> Path | None:
    """The cache directory from the environment (see the module docstring); ``None`` if off."""
    value = os.environ.get("ATTNZOO_COMPILATION_CACHE")
    if value is not None:
        return None if value.strip().lower() in OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "attnzoo" / "jax"


def use_compilation_cache(directory: str | Path | None = None, *, enabled: bool = True
                          ) -> Path | None:
    """Point JAX's persistent compilation cache at ``directory`` (default
    :func:`default_directory`) and return it; ``enabled=False`` (or the environment saying
    off) leaves JAX without one and returns ``None``. Call it before the first compilation:
    JAX decides at its first compilation whether a cache is used."""
    path = Path(directory).expanduser() if directory else default_directory()
    if not enabled or path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"compilation cache directory {path} cannot be created: "
                              f"{err.strerror}") from None
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path
