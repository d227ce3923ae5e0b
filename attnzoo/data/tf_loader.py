"""TensorFlow, imported quietly: the only way attnzoo imports it (inside :mod:`attnzoo.data`)."""

from __future__ import annotations

import os
import sys
from typing import Any


def import_tensorflow() -> Any:
    """``import tensorflow``, without the C++ notices it prints on stderr while it loads
    (oneDNN's "custom operations are on", the CPU features it was built for): they say nothing
    a user acts on, and TensorFlow's absl logging no longer honours ``TF_CPP_MIN_LOG_LEVEL``.
    Import errors still raise; ``ATTNZOO_DEBUG=1`` keeps the notices."""
    if "tensorflow" in sys.modules or os.environ.get("ATTNZOO_DEBUG", "0") not in ("", "0"):
        import tensorflow

        return tensorflow
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w", encoding="utf-8") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return tensorflow
