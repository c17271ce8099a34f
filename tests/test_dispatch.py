"""The backend choice: order, forcing by argument and by NEXUS_FAST_BACKEND, and its errors."""

import pytest
import torch

from nexus_fast.ops import BACKEND_ENV, OPERATORS, Backend, BackendError, Operator
from nexus_fast.ops._dispatch import forced_backend


def _toy_operator() -> Operator:
    return Operator(
        "toy",
        [
            Backend("absent", lambda x: "absent", machine_reason=lambda: "not built here"),
            Backend(
                "picky",
                lambda x: "picky",
                input_reasons=lambda x: [] if x.dtype == torch.float32 else [f"dtype {x.dtype}"],
            ),
            Backend("reference", lambda x: "reference"),
        ],
    )


def test_first_backend_without_reasons_is_chosen() -> None:
    toy = _toy_operator()
    assert toy.select(torch.zeros(1)).name == "picky"
    assert toy.select(torch.zeros(1, dtype=torch.float64)).name == "reference"


def test_forced_backend_that_cannot_run_names_the_reason() -> None:
    toy = _toy_operator()
    with pytest.raises(BackendError, match=r"backend='absent' cannot run .*not built here"):
        toy.select(torch.zeros(1), backend="absent")
    with pytest.raises(BackendError, match=r"dtype torch\.float64"):
        toy.select(torch.zeros(1, dtype=torch.float64), backend="picky")


def test_unknown_backend_lists_the_allowed_ones() -> None:
    with pytest.raises(
        ValueError, match="unknown backend 'fast'; allowed: absent, picky, reference"
    ):
        _toy_operator().select(torch.zeros(1), backend="fast")


def test_no_backend_lists_every_reason() -> None:
    toy = Operator("toy", [Backend("only", lambda x: x, input_reasons=lambda x: ["too big"])])
    with pytest.raises(BackendError, match=r"no backend can run these inputs:\n  only: too big"):
        toy.select(torch.zeros(1))


def test_environment_forces_globally_and_per_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    names = frozenset({"reference", "cpu", "foreach"})
    monkeypatch.setenv(BACKEND_ENV, "reference")
    assert forced_backend("ema_update_", names) == "reference"
    monkeypatch.setenv(BACKEND_ENV, "reference, ema_update_=foreach")
    assert forced_backend("ema_update_", names) == "foreach"
    assert forced_backend("attention", names) == "reference"
    monkeypatch.setenv(BACKEND_ENV, "ema_update_=foreach")
    assert forced_backend("attention", names) is None


def test_environment_rejects_an_unknown_global_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BACKEND_ENV, "refrence")
    with pytest.raises(ValueError, match="'refrence' is not a backend of any operator"):
        forced_backend("ema_update_", frozenset({"reference"}))


def test_environment_forced_backend_reaches_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    ema = OPERATORS["ema_update_"]
    teacher, student = [torch.zeros(3)], [torch.zeros(3, dtype=torch.bfloat16)]
    momentum = torch.tensor(0.5)
    monkeypatch.setenv(BACKEND_ENV, "ema_update_=foreach")
    with pytest.raises(BackendError, match=r"NEXUS_FAST_BACKEND='foreach' cannot run"):
        ema.select(teacher, student, momentum)
    monkeypatch.setenv(BACKEND_ENV, "ema_update_=reference")
    assert ema.select(teacher, student, momentum).name == "reference"
