"""One registry mechanism for blocks, heads, backbones, necks, families and models: a name ->
entry dict filled by decorators, each entry checked against its kind's contract when it is
registered, with a ValueError listing the names (and suggesting the nearest) for an unknown
one."""

from __future__ import annotations

import fnmatch
import inspect
import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from attnzoo._checks import check_choice, check_fields, module_fields

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one kind (``"block"``, ``"head"``, ``"model"``, ...) by name.

    Args:
      kind: what the entries are, for messages.
      check: ``check(name, entry)`` raises ValueError saying what ``entry`` lacks of the
        kind's contract; run by :meth:`add`.
      describe: ``describe(entry)``, one line about an entry (:meth:`describe`).
    """

    def __init__(self, kind: str, *, check: Callable[[str, T], None] | None = None,
                 describe: Callable[[T], str] | None = None) -> None:
        self.kind = kind
        self._check, self._describe = check, describe
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` as ``name``; ValueError if ``name`` is taken or ``entry`` breaks
        the kind's contract."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        if self._check is not None:
            self._check(name, entry)
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add` (returns the decorated object unchanged)."""
        return lambda entry: self.add(name, entry)

    def get(self, name: str) -> T:
        """The entry of ``name``; ValueError listing every registered name (and the nearest to
        ``name``) if unknown."""
        check_choice(name, self.names(), f"{self.kind} name")
        return self._entries[name]

    def build(self, name: str, kwargs: dict[str, Any]) -> Any:
        """``entry(**kwargs)`` for a registry of module classes (heads, necks); ValueError
        naming a keyword that is no field of it (and the nearest field)."""
        cls = self.get(name)
        check_fields(kwargs, [*module_fields(cls), "name"], f"{self.kind} {name!r} "
                                                             f"({cls.__name__})")
        return cls(**kwargs)

    def names(self, pattern: str = "*") -> list[str]:
        """The registered names matching the shell-style ``pattern`` (``"danet_*"``,
        :mod:`fnmatch`, as timm's ``list_models``), sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def describe(self, pattern: str = "*") -> dict[str, str]:
        """Name -> one line about the entry, for the names matching ``pattern``."""
        describe = self._describe or doc_summary
        return {n: describe(self._entries[n]) for n in self.names(pattern)}

    def listing(self, pattern: str = "*", describe: bool = False) -> list[str] | dict[str, str]:
        """What the ``list_*`` functions return: :meth:`names`, or :meth:`describe` when
        ``describe``."""
        return self.describe(pattern) if describe else self.names(pattern)


# a full stop ending a sentence: not one of an abbreviation ("Sec. 3", "et al. 2021", "eq. 2")
_SENTENCE_END = re.compile(r"(?<!\bSec)(?<!\beq)(?<!\bal)(?<!\bFig)(?<!\bcf)(?<!\be\.g)"
                           r"(?<!\bi\.e)\.\s+(?=[A-Z])")
SUMMARY_WIDTH = 110


def doc_summary(entry: Any) -> str:
    """The first sentence of ``entry``'s docstring (its class's for an instance) on one line,
    cut at :data:`SUMMARY_WIDTH` characters; its name when it has none."""
    owner = entry if inspect.isclass(entry) or inspect.isfunction(entry) else type(entry)
    paragraph = (inspect.getdoc(owner) or owner.__name__).strip().split("\n\n")[0]
    text = " ".join(paragraph.split())
    end = _SENTENCE_END.search(text)
    text = text if end is None else text[:end.start() + 1]
    return text if len(text) <= SUMMARY_WIDTH else text[:SUMMARY_WIDTH - 3].rstrip() + "..."


def check_module_contract(what: str, cls: Any, fields: tuple[str, ...], help_on: str,
                          call_keywords: tuple[str, ...] = ("train",)) -> None:
    """Raise ValueError unless ``cls`` is a Flax module class with ``fields`` whose ``__call__``
    takes the keywords ``call_keywords``: the contract of a registered block, head or backbone
    (``what`` names it; ``help_on`` is the function whose help states the contract)."""
    import flax.linen as nn

    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise ValueError(f"{what}: must be a flax.linen.Module class; got {cls!r} "
                         f"(see help({help_on}))")
    missing = [f for f in fields if f not in module_fields(cls)]
    if missing:
        raise ValueError(f"{what} lacks the field(s) {missing}: it is built as "
                         f"{cls.__name__}({', '.join(f'{f}=...' for f in fields)}) "
                         f"(see help({help_on}))")
    params = inspect.signature(cls.__call__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    absent = [k for k in call_keywords if k not in params and not takes_any]
    if absent:
        raise ValueError(f"{what}: its __call__ must take the keyword(s) {absent} "
                         f"(e.g. `def __call__(self, x, *, train: bool = False)`; see "
                         f"help({help_on}))")
