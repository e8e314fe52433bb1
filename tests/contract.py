"""The row type of the input-contract tables (tests/test_contract.py, tests/contract_train.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

CLASSES = ("shape", "dtype", "nan", "range", "empty", "hyper", "dup")


@dataclass(frozen=True)
class Case:
    entry: str  # "module.name" of the entry point
    kind: str  # one of CLASSES
    arg: str  # the argument the message must name
    call: Callable[[object], object]  # receives the entry point, feeds it the bad input

    @property
    def id(self) -> str:
        return f"{self.entry}:{self.kind}:{self.arg}"
