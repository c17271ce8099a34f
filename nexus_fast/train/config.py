"""TrainConfig: everything the Trainer needs to know about one pre-training run, method-agnostic.

Build it with `build_config(TrainConfig, {...})` (or pass a dict to the Trainer): an unknown key,
a wrong type or an impossible value raises ValueError naming the key, the value and what is
allowed. Method-specific choices (which parameters get which learning rate, the teacher momentum)
live in the model and in the `param_groups` callable, not here.
"""

from dataclasses import dataclass
from typing import Literal

from ..config import require


@dataclass
class TrainConfig:
    """One run's optimisation, precision, logging and checkpointing settings.

    Steps count optimizer steps. `batch_size` is the global batch: the images of one optimizer
    step over every process and every micro-batch, used for throughput and to check that the
    batch splits evenly; the `inputs` callable given to the Trainer produces the batches.
    Learning rate and weight decay follow per-step schedules: a linear warmup from `start_lr` to
    `lr` over `warmup_steps`, then a half cosine down to `min_lr`; the weight decay is constant,
    or a cosine from `weight_decay` to `weight_decay_end` when that is set (I-JEPA, DINOv2).
    `lars_momentum` and `lars_eta` are used by optimizer="lars" only, `eps` by AdamW only.
    """

    steps: int = 1000
    steps_per_epoch: int = 100
    batch_size: int = 64
    accumulation: int = 1
    optimizer: Literal["adamw", "lars"] = "adamw"
    lr: float = 1e-3
    start_lr: float = 0.0
    min_lr: float = 1e-6
    warmup_steps: int = 0
    weight_decay: float = 0.05
    weight_decay_end: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    lars_momentum: float = 0.9
    lars_eta: float = 0.001
    clip_grad: float | None = None
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = 0
    log_every: int = 10
    eval_every: int | None = None
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    nan_patience: int = 5
    tensorboard: bool = False
    distributed: Literal["ddp", "fsdp"] = "ddp"

    def validate(self) -> None:
        for key in ("steps", "steps_per_epoch", "batch_size", "accumulation", "log_every"):
            require(getattr(self, key) >= 1, key, getattr(self, key), "an integer >= 1")
        for key in ("checkpoint_every", "keep_checkpoints", "nan_patience"):
            require(getattr(self, key) >= 1, key, getattr(self, key), "an integer >= 1")
        require(
            self.batch_size % self.accumulation == 0,
            "batch_size",
            self.batch_size,
            f"a multiple of accumulation={self.accumulation} (each micro-batch is an equal share)",
        )
        for key in ("lr", "start_lr", "min_lr", "weight_decay"):
            require(getattr(self, key) >= 0, key, getattr(self, key), ">= 0")
        require(
            self.weight_decay_end is None or self.weight_decay_end >= 0,
            "weight_decay_end",
            self.weight_decay_end,
            "None (constant weight decay) or >= 0",
        )
        require(
            0 <= self.warmup_steps <= self.steps,
            "warmup_steps",
            self.warmup_steps,
            f"an integer in [0, steps={self.steps}]",
        )
        require(
            all(0 <= beta < 1 for beta in self.betas), "betas", self.betas, "two values in [0, 1)"
        )
        require(self.eps > 0, "eps", self.eps, "> 0")
        require(0 <= self.lars_momentum < 1, "lars_momentum", self.lars_momentum, "in [0, 1)")
        require(self.lars_eta > 0, "lars_eta", self.lars_eta, "> 0 (the LARS trust coefficient)")
        require(
            self.clip_grad is None or self.clip_grad > 0,
            "clip_grad",
            self.clip_grad,
            "None (no clipping) or a positive maximum gradient norm",
        )
        require(
            self.eval_every is None or self.eval_every >= 1,
            "eval_every",
            self.eval_every,
            "None (evaluate at the end only) or an integer >= 1",
        )
