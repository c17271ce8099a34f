"""The Trainer: the optimisation loop every method shares.

One optimizer step of a run is a pure function of (seed, step, rank) and the state before it:
the step's sample indices come from `step_batch_indices`, and both torch's global generator (the
model's own draws: masks, drop-path, noise) and the generator handed to the `inputs` callable
(augmentations) are reseeded from `step_seed(seed, step, rank)` (the latter XOR-ed with
`AUGMENT_STREAM`, so that the two never draw the same numbers). A run resumed from a checkpoint
therefore replays exactly the steps the uninterrupted run would have taken; on the CPU the two
end bit for bit equal (tests/test_trainer.py shows it).

A step: set the learning rate and weight decay of every group from the schedules; for each
micro-batch, build its inputs, run forward under autocast and backward (DDP syncs only the last
one); if the loss is not finite on any rank the step is skipped and counted, and `nan_patience`
skipped steps in a row stop the run with a message; else clip, drop DINOv2's frozen last-layer
gradients, step the optimizer, and update the EMA teacher with the method's momentum.
"""

import math
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..config import build_config
from .checkpoint import load_latest, save_checkpoint
from .config import TrainConfig
from .distributed import (
    convert_batchnorm,
    load_model_state,
    load_optimizer_state,
    model_state,
    optimizer_state,
    setup_distributed,
    step_batch_indices,
    unwrap,
    wrap_model,
)
from .guards import CollapseMonitor, RankMonitor, check_statistics_batch
from .logging import HISTORY_FILE, History, ProgressBar, TensorBoard, plot_history
from .optim import build_optimizer, check_param_groups, default_param_groups
from .schedules import cosine_schedule_with_warmup

# inputs(indices, generator) -> (args, kwargs) of the model's forward for those samples.
Inputs = Callable[[Tensor, torch.Generator], tuple[tuple, dict]]
# evaluate(model, step) -> metrics (floats) of the model's features, e.g. kNN accuracy.
Evaluate = Callable[[nn.Module, int], dict[str, float]]
ParamGroups = Callable[[nn.Module, TrainConfig], list[dict]]


class NonFiniteLossError(RuntimeError):
    """Raised after `nan_patience` optimizer steps in a row had a non-finite loss."""


# XOR-ed into a step's seed for the augmentation generator (any constant below 2**63).
AUGMENT_STREAM = 0x2545F4914F6CDD1D


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of one step on one rank: distinct for every (seed, step, rank), below 2**63."""
    return (seed * 1_000_003 + step) * 1_009 + rank


class Trainer:
    """Trains an SSL model for `config.steps` optimizer steps, with checkpoints and logs in
    `out_dir`.

    Args:
        model: a nexus_fast SSL model (its forward returns the loss first, then optionally a
            dict of metrics); it is moved to the device here.
        config: a TrainConfig, or a dict of its fields (validated).
        inputs: builds the forward arguments of a micro-batch from its sample indices and the
            step's generator (the recipes in nexus_fast.train.recipes load, move and augment).
        num_samples: size of the training set the indices point into.
        out_dir: the run folder (checkpoints, metrics.jsonl, plots).
        device: where to train; None picks a GPU when there is one.
        param_groups: the optimizer's parameter groups (default: decay / no-decay).
        evaluate: called every `config.eval_every` steps and at the end, on every rank.
        find_unused_parameters: DDP's option (a method whose step leaves some trainable
            parameter without a gradient).
        progress: show the tqdm bar (rank 0 only).
        run_info: plain data saved in every checkpoint as state["run"] (the pretrain command
            stores the method and the model's config there, so `nexus-fast eval` can rebuild
            the model from the checkpoint alone).
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig | dict,
        inputs: Inputs,
        num_samples: int,
        out_dir: str | Path,
        *,
        device: torch.device | str | None = None,
        param_groups: ParamGroups = default_param_groups,
        evaluate: Evaluate | None = None,
        find_unused_parameters: bool = False,
        progress: bool = True,
        run_info: dict | None = None,
    ) -> None:
        self.run_info = _plain(run_info or {})
        self.config = build_config(TrainConfig, config)
        self.rank, self.world_size, self.device = setup_distributed(device)
        if self.config.batch_size % (self.world_size * self.config.accumulation):
            raise ValueError(
                f"batch_size={self.config.batch_size} is not allowed: a multiple of "
                f"world_size * accumulation = {self.world_size * self.config.accumulation}"
            )
        self.model = model.to(self.device)
        self.inputs, self.num_samples, self.evaluate = inputs, num_samples, evaluate
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.network = self.model
        if self.world_size > 1:
            # Batch-statistics layers (the Barlow Twins / VICReg projectors) see the global batch.
            self.model = convert_batchnorm(self.model, self.device)
            self.network = wrap_model(
                self.model,
                self.config.distributed,
                self.device,
                find_unused_parameters=find_unused_parameters,
            )
        groups = check_param_groups(param_groups(self.model, self.config), self.model)
        self.optimizer = build_optimizer(groups, self.config)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.config.precision == "fp16"
        )
        config = self.config
        self.lr_schedule = cosine_schedule_with_warmup(
            config.lr,
            config.warmup_steps,
            config.steps,
            start_lr=config.start_lr,
            final_lr=config.min_lr,
        )
        wd_end = config.weight_decay if config.weight_decay_end is None else config.weight_decay_end
        self.wd_schedule = cosine_schedule_with_warmup(
            config.weight_decay, 0, config.steps, start_lr=config.weight_decay, final_lr=wd_end
        )
        # Pitfall guards (guards.py): each warns once, on rank 0.
        self._collapse = CollapseMonitor(after_step=max(config.warmup_steps, 1))
        # Fed every evaluation's metrics; pretrain shows it the random-init scores first.
        self.rank_monitor = RankMonitor()
        if self.rank == 0:
            forward_batch = config.batch_size // (self.world_size * config.accumulation)
            check_statistics_batch(self.model, forward_batch, self.world_size)
        self.step = 0
        self.skipped_steps = 0
        self._skipped_in_a_row = 0
        self._stop_signal: int | None = None

    # --- the run --------------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Runs the remaining steps (all of them, or those after the latest checkpoint when
        `resume`), then evaluates, plots and writes the final checkpoint.

        Returns:
            {"step", "skipped_steps", "interrupted", "eval": the last evaluation or {}}.

        Raises:
            NonFiniteLossError: `nan_patience` steps in a row had a non-finite loss (a
                checkpoint of the last good state is kept; lower the lr or use fp32/bf16).
        """
        history_bytes = self._resume() if resume else None
        history = History(self.out_dir / HISTORY_FILE, truncate_to=history_bytes)
        if not resume and self.rank == 0:
            history.sync()
        board = TensorBoard(self.out_dir / "tensorboard") if self.config.tensorboard else None
        bar = ProgressBar(self.config.steps, self.step, self.progress and self.rank == 0)
        previous = self._catch_stop_signals()
        results: dict[str, Any] = {"eval": {}}
        try:
            self._loop(history, board, bar, results)
        except BaseException:
            # A failed run (e.g. NonFiniteLossError) leaves its logs closed and complete.
            if self.rank == 0:
                history.close()
            if board is not None:
                board.close()
            raise
        finally:
            bar.close()
            self._restore_signals(previous)
        interrupted = self._stop_signal is not None
        if not interrupted:
            results["eval"] = self._evaluate(history, board) or results["eval"]
        self._checkpoint(history)
        if self.rank == 0:
            history.close()
            plot_history(self.out_dir / HISTORY_FILE, self.out_dir)
        if board is not None:
            board.close()
        results.update(step=self.step, skipped_steps=self.skipped_steps, interrupted=interrupted)
        return results

    def _loop(self, history: History, board, bar: ProgressBar, results: dict) -> None:
        config = self.config
        losses: list[float] = []
        started, images_since = time.perf_counter(), 0
        while self.step < config.steps and self._stop_signal is None:
            loss, grad_norm = self._train_step()
            self.step += 1
            images_since += config.batch_size
            if loss is not None:
                losses.append(loss)
            bar.update()
            if self.step % config.log_every == 0 or self.step == config.steps:
                elapsed = time.perf_counter() - started
                record = self._record(losses, grad_norm, images_since / max(elapsed, 1e-9))
                bar.show(record["loss"], record["lr"], record["images_per_s"])
                if self.rank == 0:
                    self._collapse.update(self.step, record["metrics"])
                    history.write(record)
                    if board is not None:
                        board.write("train", self.step, {**record, **record["metrics"]})
                losses, started, images_since = [], time.perf_counter(), 0
            if (
                config.eval_every
                and self.step % config.eval_every == 0
                and self.step < config.steps
            ):
                results["eval"] = self._evaluate(history, board)
            if self.step % config.checkpoint_every == 0 and self.step < config.steps:
                self._checkpoint(history)

    def _train_step(self) -> tuple[float | None, float]:
        """One optimizer step; returns (the loss or None when skipped, the gradient norm)."""
        config, model = self.config, self.model
        seed = step_seed(config.seed, self.step, self.rank)
        torch.manual_seed(seed)
        # Another stream for the views: seeded alike, the model's masks (drawn from torch's
        # default generator) would reuse the crops' random numbers.
        generator = torch.Generator().manual_seed(seed ^ AUGMENT_STREAM)
        for group in self.optimizer.param_groups:
            group["lr"] = float(self.lr_schedule[self.step]) * group["lr_scale"]
            group["weight_decay"] = float(self.wd_schedule[self.step]) * group["wd_scale"]
        if hasattr(model, "set_epoch"):
            model.set_epoch(self.step / config.steps_per_epoch)
        self._metrics: dict[str, Tensor] = {}

        indices = step_batch_indices(
            self.step, config.batch_size, self.num_samples, config.seed, self.rank, self.world_size
        )
        # Forward passes update buffers (batch-norm statistics, DINO centers): a skipped step
        # must not keep what a non-finite batch wrote there.
        buffers = [buffer.clone() for buffer in model.buffers()]
        total = torch.zeros((), device=self.device)
        for micro, chunk in enumerate(indices.chunk(config.accumulation)):
            last = micro == config.accumulation - 1
            ddp = isinstance(self.network, nn.parallel.DistributedDataParallel)
            sync = self.network.no_sync() if ddp and not last else nullcontext()
            args, kwargs = self.inputs(chunk, generator)
            with sync, self._autocast():
                output = self.network(*args, **kwargs)
            loss, metrics = _loss_and_metrics(output)
            with sync:
                self.scaler.scale(loss / config.accumulation).backward()
            total += loss.detach().float() / config.accumulation
            for name, value in metrics.items():
                self._metrics[name] = value.detach().float() / config.accumulation + (
                    self._metrics.get(name, 0.0)
                )

        finite = torch.isfinite(total).float()
        if self.world_size > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not bool(finite):
            with torch.no_grad():
                for buffer, saved in zip(model.buffers(), buffers):
                    buffer.copy_(saved)
            return None, self._skip_step()
        self._skipped_in_a_row = 0

        self.scaler.unscale_(self.optimizer)
        parameters = [p for g in self.optimizer.param_groups for p in g["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(
            parameters, config.clip_grad if config.clip_grad is not None else math.inf
        )
        if hasattr(model, "cancel_last_layer_gradients"):
            model.cancel_last_layer_gradients()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if next(iter(model.teacher_pairs()), None) is not None:
            model.update_teacher(model.momentum(self.step, config.steps))
        if self.world_size > 1:
            dist.all_reduce(total)
            total /= self.world_size
        return float(total), float(grad_norm)

    def _skip_step(self) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.update(self.scaler.get_scale() / 2) if self.scaler.is_enabled() else None
        self.skipped_steps += 1
        self._skipped_in_a_row += 1
        if self._skipped_in_a_row >= self.config.nan_patience:
            raise NonFiniteLossError(
                f"the loss was not finite for {self._skipped_in_a_row} optimizer steps in a row "
                f"(steps {self.step + 2 - self._skipped_in_a_row}..{self.step + 1}, "
                f"nan_patience={self.config.nan_patience}); the weights were not updated by "
                "those steps. Lower lr, raise warmup_steps, set clip_grad, or use "
                "precision='bf16' or 'fp32' instead of 'fp16'."
            )
        return math.nan

    def _record(self, losses: list[float], grad_norm: float, images_per_s: float) -> dict:
        group = self.optimizer.param_groups[0]
        model = self.model
        has_teacher = next(iter(model.teacher_pairs()), None) is not None
        return {
            "step": self.step,
            "epoch": self.step / self.config.steps_per_epoch,
            "loss": sum(losses) / len(losses) if losses else None,
            "lr": group["lr"] / group["lr_scale"] if group["lr_scale"] else group["lr"],
            "weight_decay": float(self.wd_schedule[self.step - 1]),
            "momentum": model.momentum(self.step - 1, self.config.steps) if has_teacher else None,
            "grad_norm": grad_norm,
            "images_per_s": images_per_s,
            "skipped_steps": self.skipped_steps,
            "loss_scale": self.scaler.get_scale() if self.scaler.is_enabled() else None,
            "metrics": {name: float(value) for name, value in self._metrics.items()},
        }

    def _autocast(self):
        precision = self.config.precision
        if precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _evaluate(self, history: History, board) -> dict[str, float]:
        if self.evaluate is None:
            return {}
        metrics = self.evaluate(self.model, self.step)
        if self.rank == 0:
            self.rank_monitor.update(self.step, metrics)
            history.write(
                {
                    "step": self.step,
                    "epoch": self.step / self.config.steps_per_epoch,
                    "eval": metrics,
                }
            )
            if board is not None:
                board.write("eval", self.step, metrics)
        return metrics

    # --- checkpoints ----------------------------------------------------------------------------

    def _checkpoint(self, history: History) -> None:
        weights = model_state(self.network)
        optimizer = optimizer_state(self.network, self.optimizer)
        if self.rank != 0:
            return
        state = {
            "optimizer": optimizer,
            "scaler": self.scaler.state_dict(),
            "skipped_steps": self.skipped_steps,
            "skipped_in_a_row": self._skipped_in_a_row,
            "history_bytes": history.sync(),
            "torch_rng": torch.get_rng_state(),
            "config": _plain(asdict(self.config)),
            "model_state": _model_extra_state(self.model),
            "run": self.run_info,
        }
        save_checkpoint(self.out_dir, self.step, weights, state, keep=self.config.keep_checkpoints)

    def _resume(self) -> int | None:
        """Loads the latest checkpoint of out_dir, if any; returns the history length it
        recorded (None when starting afresh)."""
        checkpoint = load_latest(self.out_dir)
        if checkpoint is None:
            return None
        if checkpoint.step > self.config.steps:
            raise ValueError(
                f"{checkpoint.path} is at step {checkpoint.step}, past steps={self.config.steps}"
            )
        state = checkpoint.state
        saved = state.get("config", {})
        current = _plain(asdict(self.config))
        changed = sorted(key for key in current if saved.get(key) != current[key])
        if changed:
            raise ValueError(
                f"cannot resume from {checkpoint.path}: the run's settings differ in "
                + ", ".join(f"{key} ({saved.get(key)!r} -> {current[key]!r})" for key in changed)
                + "; resume with the same settings, or start a new run in another folder"
            )
        load_model_state(self.network, checkpoint.weights)
        load_optimizer_state(self.network, self.optimizer, state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps = state["skipped_steps"]
        self._skipped_in_a_row = state["skipped_in_a_row"]
        torch.set_rng_state(state["torch_rng"])
        _load_model_extra_state(self.model, state.get("model_state", {}))
        self.step = checkpoint.step
        return state["history_bytes"]

    # --- SIGTERM / SIGINT -----------------------------------------------------------------------

    def _catch_stop_signals(self) -> dict:
        """On SIGTERM or SIGINT the current step finishes, a checkpoint is written and fit
        returns with interrupted=True (a second signal of the same kind acts as usual)."""
        previous = {}

        def stop(number: int, frame) -> None:
            self._stop_signal = number
            signal.signal(number, previous[number])

        try:
            for number in (signal.SIGTERM, signal.SIGINT):
                previous[number] = signal.signal(number, stop)
        except ValueError:  # not the main thread: signals cannot be caught here
            pass
        return previous

    @staticmethod
    def _restore_signals(previous: dict) -> None:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _loss_and_metrics(output: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss and the metrics of a model's forward output: a loss tensor, or a tuple whose
    first item is the loss and whose second, when it is a dict, holds the metrics (MAE returns
    its reconstruction and mask there instead)."""
    if isinstance(output, Tensor):
        return output, {}
    loss, *rest = output
    metrics = rest[0] if rest and isinstance(rest[0], dict) else {}
    metrics = {name: value for name, value in metrics.items() if name != "loss"}
    return loss, {n: v for n, v in metrics.items() if isinstance(v, Tensor) and v.numel() == 1}


def _model_extra_state(model: nn.Module) -> dict:
    """Python-side state a model keeps outside its state dict (DINOv2's epoch)."""
    return {"epoch": model.epoch} if hasattr(model, "epoch") else {}


def _load_model_extra_state(model: nn.Module, state: dict) -> None:
    if "epoch" in state and hasattr(model, "set_epoch"):
        model.set_epoch(state["epoch"])


def _plain(value: Any) -> Any:
    """Tuples as lists, so the config is a plain container torch.load(weights_only) accepts."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


__all__ = ["Evaluate", "Inputs", "NonFiniteLossError", "Trainer", "step_seed", "unwrap"]
