"""Schedules against their closed forms, at every step."""

import math

import pytest
import torch

from nexus_fast.train import cosine_schedule_with_warmup, momentum_schedule


def test_warmup_then_cosine_closed_form() -> None:
    values = cosine_schedule_with_warmup(
        1e-3, 2, 10, steps_per_epoch=5, start_lr=1e-4, final_lr=1e-6
    )
    assert values.shape == (50,)
    for step in range(50):
        if step < 10:
            expected = 1e-4 + (1e-3 - 1e-4) * step / 10
        else:
            t = (step - 10) / 39
            expected = 1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * t))
        assert values[step].item() == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert values[10] == 1e-3 and values[-1] == pytest.approx(1e-6)


def test_no_warmup_and_seed_call() -> None:
    values = cosine_schedule_with_warmup(base_lr=1e-3, warmup_epochs=40, total_epochs=800)
    assert values.shape == (800,) and values[0] == 0.0 and values[40] == 1e-3
    plain = cosine_schedule_with_warmup(0.5, 0, 3)
    assert torch.allclose(plain, torch.tensor([0.5, 0.25, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_momentum_schedules(kind: str) -> None:
    values = momentum_schedule(11, 0.996, 1.0, kind)
    assert values[0] == pytest.approx(0.996) and values[-1] == pytest.approx(1.0)
    for step in range(11):
        t = step / 10
        if kind == "cosine":
            expected = 1.0 - 0.004 * 0.5 * (1 + math.cos(math.pi * t))
        else:
            expected = 0.996 + 0.004 * t
        assert values[step].item() == pytest.approx(expected, rel=1e-12)
    assert bool((values[1:] >= values[:-1]).all())


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: cosine_schedule_with_warmup(1.0, 5, 3), "warmup_epochs=5"),
        (lambda: cosine_schedule_with_warmup(1.0, 0, 0), "must be positive"),
        (lambda: momentum_schedule(10, 0.9, 1.1), "must lie in"),
        (lambda: momentum_schedule(10, kind="step"), "kind='step'"),
    ],
)
def test_bad_arguments(call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call()
