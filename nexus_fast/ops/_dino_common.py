"""Argument checks shared by the DINO-family operators (sinkhorn, prototype_loss, dino, koleo):
each raises TypeError or ValueError naming the argument, its value and what is allowed."""

import math

from torch import Tensor


def check_positive(name: str, value: object) -> float:
    """value as a float, if it is a positive finite number (a temperature, an eps)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def check_floating(name: str, value: object, shape: str, dims: int = 2) -> Tensor:
    """value, if it is a floating tensor of `dims` dimensions; `shape` names them in errors."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} has dtype {value.dtype}; allowed: a floating dtype")
    if value.dim() != dims:
        raise ValueError(f"{name} must be {shape}, got shape {tuple(value.shape)}")
    return value


def check_same_device(**tensors: Tensor) -> None:
    devices = {tensor.device for tensor in tensors.values()}
    if len(devices) > 1:
        listed = ", ".join(f"{name} on {tensor.device}" for name, tensor in tensors.items())
        raise ValueError(f"tensors must be on one device, got {listed}")
