"""How the commands report errors a user can fix: one line on stderr, exit status 2, no
traceback (``--debug`` or ``ATTNZOO_DEBUG=1`` shows it). Other errors keep their traceback."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
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


def show_logs() -> None:
    """Print attnzoo's log records of level INFO and above on stderr, one line each (what a
    command runs with, a checkpoint skipped, a renamed model read)."""
    log = logging.getLogger("attnzoo")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def run(main: Callable[[list[str]], Any]) -> None:
    """The ``__main__`` of an argparse command: ``main(argv)`` with ``--debug`` taken out and
    attnzoo's logs shown (:func:`show_logs`)."""
    show_logs()
    argv = sys.argv[1:]
    with one_line_errors("--debug" in argv):
        main([a for a in argv if a != "--debug"])


def parse_absl_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing for ``train.py`` (``app.run(main, flags_parser=parse_absl_flags)``),
    with a mistake in a flag or a ``--config.*`` override (an unknown field, a value of the
    wrong type, a config file that does not load) reported as the other commands report
    errors: one line, exit status 2, the nearest field suggested (``--debug`` shows the
    traceback)."""
    from absl import flags

    with one_line_errors(any(a in ("--debug", "--debug=true", "--debug=True") for a in argv)):
        try:
            rest = flags.FLAGS(argv)
            for name in flags.FLAGS:  # a config file that failed to load raises when read
                error = getattr(getattr(flags.FLAGS, name), "_error", None)
                if isinstance(error, BaseException):
                    raise error
            return rest
        except (flags.Error, AttributeError, KeyError, TypeError, OSError) as err:
            cause = err.args[0] if err.args and isinstance(err.args[0], BaseException) else err
            if isinstance(cause, KeyError) and cause.args:  # ml_collections: an unknown field
                text = f"the config has no field {cause.args[0]}"
                if "Did you mean" not in text:  # ml_collections found no close name
                    text += _nearest_fields(argv)
            else:
                text = str(cause.__cause__ or cause) if isinstance(cause, OSError) else str(cause)
                if "Traceback (most recent call last)" in text:  # a config file that raised
                    text = f"{text.split(':')[0]}: {text.strip().splitlines()[-1]}"
            raise ValueError(f"bad command line: {text}") from err


def _nearest_fields(argv: list[str]) -> str:
    """``"; nearest fields: a.b, c"`` for the ``--config.<path>=`` overrides in ``argv`` that
    name no field of the default config (the three nearest dotted names of it), else ``""``."""
    import difflib

    from attnzoo.engine.config import default_config
    from attnzoo.engine.workdir import flat_fields

    fields = list(flat_fields(default_config()))
    groups = {f.rsplit(".", 1)[0] for f in fields if "." in f}
    known = set(fields) | groups
    unknown = [a.split("=", 1)[0][len("--config."):] for a in argv if a.startswith("--config.")]
    near = [m for path in unknown if path not in known
            and not any(path.startswith(f + ".") for f in fields)  # inside a dict-valued field
            for m in difflib.get_close_matches(path, sorted(known), n=3, cutoff=0.0)]
    return f"; nearest fields: {', '.join(dict.fromkeys(near))}" if near else ""


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    """``--compilation-cache DIR`` and ``--no-compilation-cache`` (evaluate, predict); applied
    by :func:`use_cache`."""
    parser.add_argument("--compilation-cache", default=None, metavar="DIR",
                        help="JAX's persistent compilation cache (default: "
                             "$ATTNZOO_COMPILATION_CACHE or ~/.cache/attnzoo/jax)")
    parser.add_argument("--no-compilation-cache", action="store_true",
                        help="compile everything afresh, caching nothing")


def use_cache(args: argparse.Namespace) -> None:
    """Turn on the compilation cache as :func:`add_cache_arguments`' flags say."""
    from attnzoo.engine.cache import use_compilation_cache

    use_compilation_cache(args.compilation_cache, enabled=not args.no_compilation_cache)


def add_crf_arguments(parser: argparse.ArgumentParser) -> None:
    """``--crf`` and ``--crf-params`` (evaluate, predict); read back by :func:`crf_arguments`."""
    parser.add_argument("--crf", action="store_true",
                        help="refine with the fully connected CRF (DeepLab's parameters)")
    parser.add_argument("--crf-params", default="", metavar="NAME=VALUE,...",
                        help="CRF parameters: iterations, w_appearance, theta_alpha, theta_beta, "
                             "w_smoothness, theta_gamma, method (lattice|dense), normalization "
                             "(symmetric|row)")


def crf_arguments(args: argparse.Namespace) -> dict[str, Any] | None:
    """None without ``--crf``; else ``--crf-params "w_appearance=5,theta_alpha=80"`` as keyword
    arguments of :func:`attnzoo.ops.dense_crf` (``iterations`` an integer, the rest numbers;
    ``method`` and ``normalization`` names)."""
    if not args.crf:
        if args.crf_params:
            raise ValueError("--crf-params needs --crf")
        return None
    from attnzoo.ops.crf import CRFParams

    names = (*CRFParams._fields, "method", "normalization")
    out: dict[str, Any] = {}
    for item in filter(None, args.crf_params.split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in names:
            raise ValueError(f"--crf-params takes comma-separated name=value with names from "
                             f"{list(names)}; got {item!r}")
        try:
            out[key] = (value.strip() if key in ("method", "normalization")
                        else int(value) if key == "iterations" else float(value))
        except ValueError:
            raise ValueError(f"--crf-params: {key} takes a number; got {value!r}") from None
        if isinstance(out[key], float) and not math.isfinite(out[key]):
            raise ValueError(f"--crf-params: {key} must be finite; got {value.strip()!r}")
    return out
