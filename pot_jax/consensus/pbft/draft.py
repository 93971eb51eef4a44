"""The draft of a ``ReplicaState`` that one step builds, copy-on-write: the
state a step was given is never mutated."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

from .state import ReplicaState

EMPTY: Mapping = MappingProxyType({})


class _Tx:
    """Copy-on-write view of a ReplicaState: reads see writes; the original is untouched."""

    __slots__ = ("old", "new", "copied")

    def __init__(self, state: ReplicaState) -> None:
        self.old = state
        self.new: dict[str, object] = {}
        self.copied: set = set()

    def get(self, name: str):
        return self.new[name] if name in self.new else getattr(self.old, name)

    def set(self, name: str, value) -> None:
        self.new[name] = value

    def w(self, name: str) -> dict:
        """A writable copy of dict field ``name``."""
        if name not in self.copied:
            self.new[name] = dict(self.get(name))
            self.copied.add(name)
        return self.new[name]  # type: ignore[return-value]

    def wi(self, name: str, key) -> dict:
        """A writable copy of the inner dict at ``name[key]`` (``key`` None: the outer dict)."""
        outer = self.w(name)
        if key is None:
            return outer
        tag = (name, key)
        if tag not in self.copied:
            outer[key] = dict(outer.get(key, EMPTY))
            self.copied.add(tag)
        return outer[key]

    def finish(self) -> ReplicaState:
        return dataclasses.replace(self.old, **self.new) if self.new else self.old
