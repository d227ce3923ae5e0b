"""How the commands report errors a user can fix: one line on stderr, exit status 2, no
traceback (``--debug`` or ``ATTNZOO_DEBUG=1`` shows it). Other errors keep their traceback."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

# ValueError covers bad arguments, configs, files and ConversionError; commands raise nothing
# else on purpose except these.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, PermissionError)


def debug_requested(flag: bool = False) -> bool:
    """``--debug`` was given or ``ATTNZOO_DEBUG`` is set (to anything but ``0``)."""
    return flag or os.environ.get("ATTNZOO_DEBUG", "0") not in ("", "0")


@contextlib.contextmanager
def one_line_errors(debug: bool = False) -> Iterator[None]:
    """Turn an expected user error (:data:`USER_ERRORS`, or one with ``user_error = True``)
    into ``error: <message>`` and exit status 2, unless debugging."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - re-raised unless it is a user error
        if debug_requested(debug) or not (isinstance(err, USER_ERRORS)
                                          or getattr(err, "user_error", False)):
            raise
        message = " ".join(str(err).split())
        print(f"error: {message}  (--debug or ATTNZOO_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        raise SystemExit(2) from None


def run(main: Callable[[list[str]], Any]) -> None:
    """The ``__main__`` of an argparse command: ``main(argv)`` with ``--debug`` taken out."""
    argv = sys.argv[1:]
    with one_line_errors("--debug" in argv):
        main([a for a in argv if a != "--debug"])
