"""Parameter groups and optimizers: AdamW (fused where the device has the kernel) and LARS.

A parameter group is a dict in torch.optim's format ("params" and options) that may also carry
`lr_scale` and `wd_scale`: the Trainer sets each group's learning rate to `schedule[step] *
lr_scale` and its weight decay to `wd_schedule[step] * wd_scale` before every step. They carry
per-group multipliers such as DINOv2's layer-wise decay and patch-embedding x0.2 or Barlow
Twins' separate bias learning rate, passed as `Trainer(param_groups=...)`; the built-in recipes
use the default groups (`wd_scale = 0` for the parameters that should not decay, 1 otherwise).
"""

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .config import TrainConfig


def no_weight_decay(name: str, parameter: Tensor) -> bool:
    """Whether a parameter is one that is not decayed: biases, every 1-D parameter (norm scales
    and shifts, LayerScale gammas), tokens (cls, register, mask) and position embeddings.

    Tokens and position tables are matrices, so the 1-D rule alone would decay them; timm and
    the brief of this project exclude them by name.
    """
    if parameter.ndim <= 1 or name.endswith(".bias"):
        return True
    return any(part.endswith(("token", "tokens", "pos_embed")) for part in name.split("."))


def default_param_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """Two groups of the parameters that require grad: "decay" and "no_decay" (wd_scale 0, and
    no LARS trust-ratio adaptation, as the official Barlow Twins and VICReg exclude biases and
    norms from both). Frozen parameters (EMA teachers, fixed sin-cos tables) are left out.

    Args:
        model: the model whose parameters are trained (not a DDP wrapper).
        config: the run's config (unused by the default; part of the param_groups signature so
            that recipes can read it).
    """
    del config
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if no_weight_decay(name, parameter) else decay).append(parameter)
    groups = [
        {"name": "decay", "params": decay},
        {"name": "no_decay", "params": no_decay, "wd_scale": 0.0, "lars_adaptation": False},
    ]
    return [group for group in groups if group["params"]]


def check_param_groups(groups: list[dict], model: nn.Module) -> list[dict]:
    """The groups with lr_scale and wd_scale filled in (1.0), after checking that every
    parameter that requires grad is in exactly one group and no frozen one is in any.

    Raises:
        ValueError: a group without "params", a negative scale, a parameter in two groups, a
            frozen parameter in a group, or a trainable parameter in none (the message names it).
    """
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    seen: set[int] = set()
    checked = []
    for index, group in enumerate(groups):
        if "params" not in group:
            raise ValueError(f"param group {index} has no 'params' (keys: {sorted(group)})")
        group = {"lr_scale": 1.0, "wd_scale": 1.0, **group, "params": list(group["params"])}
        for key in ("lr_scale", "wd_scale"):
            if not isinstance(group[key], (int, float)) or group[key] < 0:
                raise ValueError(
                    f"param group {index}: {key}={group[key]!r} is not allowed: a number >= 0"
                )
        for parameter in group["params"]:
            name = names.get(id(parameter), "<a tensor that is not a parameter of the model>")
            if id(parameter) in seen:
                raise ValueError(f"parameter {name} is in more than one param group")
            if not parameter.requires_grad:
                raise ValueError(
                    f"parameter {name} does not require grad and must not be in a param group "
                    "(an EMA teacher or a fixed table: the optimizer would decay it)"
                )
            seen.add(id(parameter))
        checked.append(group)
    missing = [
        name
        for name, parameter in model.named_parameters()
        if parameter.requires_grad and id(parameter) not in seen
    ]
    if missing:
        raise ValueError(
            f"{len(missing)} trainable parameter(s) are in no param group, e.g. {missing[:3]}; "
            "add them to a group or set requires_grad=False"
        )
    return checked


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (You et al., 2017), as the official Barlow
    Twins and VICReg code uses it.

    For each parameter p with gradient g, in a group with learning rate lr:

        d = g + weight_decay * p
        d = d * eta * ||p|| / ||d||     if adaptation and both norms are positive
        buffer = momentum * buffer + d
        p = p - lr * buffer

    Biases and norms are excluded from decay and adaptation by putting them in a group with
    weight_decay 0 and adaptation False (default_param_groups does this).

    Args:
        params: parameters or parameter groups.
        lr: the learning rate (the Trainer overwrites it every step).
        weight_decay: the L2 coefficient added to the gradient before adaptation.
        momentum: the heavy-ball momentum.
        eta: the trust coefficient (0.001 in the official code).
        adaptation: whether to scale the update by the trust ratio; a group may override it
            with a "lars_adaptation" key.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        eta: float = 0.001,
        adaptation: bool = True,
    ) -> None:
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or eta <= 0:
            raise ValueError(
                f"LARS: lr={lr}, weight_decay={weight_decay}, momentum={momentum}, eta={eta} are "
                "not allowed: lr >= 0, weight_decay >= 0, momentum in [0, 1), eta > 0"
            )
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "eta": eta,
            "lars_adaptation": adaptation,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns closure's loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                update = parameter.grad
                if group["weight_decay"] != 0:
                    update = update.add(parameter, alpha=group["weight_decay"])
                if group["lars_adaptation"]:
                    param_norm = torch.linalg.vector_norm(parameter)
                    update_norm = torch.linalg.vector_norm(update)
                    # A zero parameter (a fresh bias) or a zero update keeps its raw step:
                    # the ratio would be 0 or undefined.
                    ratio = torch.where(
                        (param_norm > 0) & (update_norm > 0),
                        group["eta"] * param_norm / update_norm,
                        torch.ones_like(param_norm),
                    )
                    update = update * ratio
                state = self.state[parameter]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(parameter)
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(update)
                parameter.add_(buffer, alpha=-group["lr"])
        return loss


def build_optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer of config.optimizer over checked parameter groups.

    AdamW uses the fused kernel where torch has one for the parameters' device (CUDA and, in
    recent torch, CPU), else the foreach implementation. Learning rate and weight decay are
    placeholders here: the Trainer sets them from the schedules before every step.
    """
    if config.optimizer == "lars":
        return LARS(
            groups,
            lr=config.lr,
            weight_decay=config.weight_decay,
            momentum=config.lars_momentum,
            eta=config.lars_eta,
        )
    options = {
        "lr": config.lr,
        "betas": config.betas,
        "eps": config.eps,
        "weight_decay": config.weight_decay,
    }
    parameters = [parameter for group in groups for parameter in group["params"]]
    if all(_has_fused_adamw(parameter) for parameter in parameters):
        return torch.optim.AdamW(groups, fused=True, **options)
    # No fused kernel for some parameter: the multi-tensor path is the next best.
    return torch.optim.AdamW(groups, foreach=True, **options)


# Devices with torch's fused Adam(W) kernels (torch >= 2.4 has the CPU one). torch checks this only
# at the first step, so it is decided here, before building the optimizer.
_FUSED_ADAMW_DEVICES = ("cuda", "cpu", "xpu", "mps", "hpu")


def _has_fused_adamw(parameter: Tensor) -> bool:
    return parameter.is_floating_point() and parameter.device.type in _FUSED_ADAMW_DEVICES
