"""One small registry: register by name (usually with a decorator), get with a one-line error, list.

Mixers, AT methods, datasets and attack suites each keep one `Registry`; it is a read-only
`Mapping`, so `name in REGISTRY`, `REGISTRY[name]` and `list(REGISTRY)` read as they would on a
dict, while adding goes through `add`, which refuses a name registered twice (two plugins or two
modules claiming one name is a bug to surface, not to resolve by import order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from model_zoo.errors import UsageError

T = TypeVar("T")
F = TypeVar("F")


class Registry(Mapping[str, T], Generic[T]):
    """Name -> entry, in registration order.

    kind: what an entry is, as the error messages name it ("training method", "dataset").
    error: the exception `get` and a duplicate `add` raise; a UsageError subclass so that the CLI
    prints it as one line with exit code 2.
    """

    def __init__(self, kind: str, error: type[UsageError] = UsageError) -> None:
        self.kind = kind
        self.error = error
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise self.error(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str, make_entry: Callable[[F], T]) -> Callable[[F], F]:
        """Decorator: register `make_entry(obj)` under `name` and hand back obj unchanged."""

        def decorate(obj: F) -> F:
            self.add(name, make_entry(obj))
            return obj

        return decorate

    def get(self, name: str) -> T:  # type: ignore[override]  # Mapping.get's default: an unknown name is an error here
        try:
            return self._entries[name]
        except KeyError:
            raise self.error(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._entries)}") from None

    def names(self) -> list[str]:
        return list(self._entries)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
