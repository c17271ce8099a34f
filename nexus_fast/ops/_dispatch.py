"""Explainable backend choice for every operator.

Each operator has an ordered list of backends (fastest first). A backend says why it cannot run on
this machine at all (`machine_reason`: not built, no GPU, Triton missing) and why it cannot run
given inputs (`input_reasons`: device, dtype, layout). The operator takes the first backend with
no reasons. A backend can be forced with `backend=` or the NEXUS_FAST_BACKEND environment variable;
a forced backend that cannot run raises an error that names the reason, and when no backend fits,
the error lists every backend with its reasons.

NEXUS_FAST_BACKEND holds comma-separated entries: `name` forces that backend on every operator that
has one (e.g. `reference`), `op=name` forces it on one operator (e.g. `ema_update_=foreach`).
"""

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

BACKEND_ENV = "NEXUS_FAST_BACKEND"


class BackendError(RuntimeError):
    """No backend of an operator can run the given inputs, or a forced one cannot."""


@dataclass(frozen=True)
class Backend:
    """One implementation of an operator.

    Attributes:
        name: what `backend=` and NEXUS_FAST_BACKEND call it ("reference", "cpu", "triton", ...).
        run: the implementation; takes the operator's normalised arguments.
        machine_reason: why it cannot run on this machine at all, or None.
        input_reasons: why it cannot run these arguments; empty when it can.
        automatic_reasons: why it is not chosen for these arguments unless forced (e.g. the
            Triton interpreter: right but slow, a test tool); empty when it may be chosen.
    """

    name: str
    run: Callable[..., Any]
    machine_reason: Callable[[], str | None] = field(default=lambda: None)
    input_reasons: Callable[..., list[str]] = field(default=lambda *args: [])
    automatic_reasons: Callable[..., list[str]] = field(default=lambda *args: [])


# Every operator's backends by (operator name, backend name), for _machine_reason.
_BACKENDS: dict[tuple[str, str], Backend] = {}


# What a machine can run does not change while a process lives, so torch.compile evaluates it once
# while tracing and keeps the answer as a constant (the checks query the dispatcher and CUDA,
# which Dynamo cannot trace). The arguments are strings: torch 2.11's Dynamo cannot pass a
# frozen dataclass to an assume_constant_result function (seen on the H200).
@torch.compiler.assume_constant_result
def _machine_reason(op_name: str, backend_name: str) -> str | None:
    return _BACKENDS[(op_name, backend_name)].machine_reason()


def forced_backend(op_name: str, all_names: frozenset[str]) -> str | None:
    """The backend that NEXUS_FAST_BACKEND forces on `op_name`, if any.

    Args:
        op_name: the operator asking.
        all_names: every backend name of every operator, to reject a misspelt global entry.
    """
    value = os.environ.get(BACKEND_ENV, "")
    chosen = None
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        target, _, name = entry.rpartition("=")
        if target == op_name:
            return name
        if not target:
            if name not in all_names:
                raise ValueError(
                    f"{BACKEND_ENV}={value!r}: {name!r} is not a backend of any operator; "
                    f"known backends: {', '.join(sorted(all_names))}"
                )
            chosen = name
    return chosen


class Operator:
    """An operator's ordered backends and the rule that picks one."""

    def __init__(self, name: str, backends: Sequence[Backend]) -> None:
        self.name = name
        self.backends = tuple(backends)
        for backend in self.backends:
            _BACKENDS[(name, backend.name)] = backend

    def reasons(self, backend: Backend, *args: Any) -> list[str]:
        """Why `backend` cannot run `args` here (the machine first, then the inputs)."""
        unavailable = _machine_reason(self.name, backend.name)
        return [unavailable] if unavailable is not None else backend.input_reasons(*args)

    @property
    def backend_names(self) -> tuple[str, ...]:
        return tuple(backend.name for backend in self.backends)

    def backend(self, name: str) -> Backend:
        for candidate in self.backends:
            if candidate.name == name:
                return candidate
        raise ValueError(
            f"{self.name}: unknown backend {name!r}; allowed: {', '.join(self.backend_names)}"
        )

    def select(self, *args: Any, backend: str | None = None) -> Backend:
        """The backend that runs `args`: the forced one, else the first that can."""
        forced = backend if backend is not None else forced_backend(self.name, _all_names())
        if forced is not None and (backend is not None or forced in self.backend_names):
            chosen = self.backend(forced)
            reasons = self.reasons(chosen, *args)
            if reasons:
                source = "backend=" if backend is not None else f"{BACKEND_ENV}="
                raise BackendError(
                    f"{self.name}: {source}{forced!r} cannot run these inputs: {'; '.join(reasons)}"
                )
            return chosen
        rejected = []
        for candidate in self.backends:
            reasons = self.reasons(candidate, *args) or candidate.automatic_reasons(*args)
            if not reasons:
                return candidate
            rejected.append(f"  {candidate.name}: {'; '.join(reasons)}")
        raise BackendError(f"{self.name}: no backend can run these inputs:\n" + "\n".join(rejected))


# Every operator, in the order `nexus-fast info` lists them; each ops module adds its own.
OPERATORS: dict[str, Operator] = {}


def register(operator: Operator) -> Operator:
    if operator.name in OPERATORS:
        raise ValueError(f"operator {operator.name!r} is registered twice")
    OPERATORS[operator.name] = operator
    return operator


def _all_names() -> frozenset[str]:
    return frozenset(name for op in OPERATORS.values() for name in op.backend_names)
