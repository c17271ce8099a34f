"""What a run shows and leaves behind: a tqdm progress bar, one JSON line per logged step
(metrics.jsonl), optional TensorBoard scalars, and PNG plots in the run folder at the end.

The JSONL history is the source of truth: plots are drawn from it (so a resumed run plots its
whole history), and checkpoints record its length so that a resumed run drops the lines a killed
run wrote after its last checkpoint.

Training lines hold: step (optimizer steps done), epoch, loss (mean of the finite losses since
the previous line), lr and weight_decay (of the first parameter group, before its lr_scale and
wd_scale), momentum (the teacher's, or null), grad_norm (before clipping), images_per_s,
skipped_steps (non-finite steps so far), elapsed_s, loss_scale (fp16 only) and "metrics": the
model's own metrics as floats. Evaluation lines hold step, epoch and "eval": the evaluate
callable's results.
"""

import json
import math
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

HISTORY_FILE = "metrics.jsonl"


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN or infinity: non-finite numbers are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    return value


class History:
    """The run's metrics.jsonl, appended line by line.

    Args:
        path: the file.
        truncate_to: drop everything after this many bytes first (the length a checkpoint
            recorded), or None to append to the file as it is.
    """

    def __init__(self, path: Path, truncate_to: int | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_to is not None and path.exists():
            with open(path, "r+b") as file:
                file.truncate(truncate_to)
        # Line-buffered, so that `tail -f metrics.jsonl` follows a run as it goes.
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 (kept open for the whole run)

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(_finite_or_none(record)) + "\n")

    def sync(self) -> int:
        """Flushes and fsyncs the file; returns its length in bytes (for a checkpoint)."""
        self._file.flush()
        os.fsync(self._file.fileno())
        return self._file.tell()

    def close(self) -> None:
        self._file.close()


def read_history(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl file, in order."""
    with open(path) as file:
        return [json.loads(line) for line in file if line.strip()]


class TensorBoard:
    """Scalars to TensorBoard under `log_dir` (torch.utils.tensorboard, imported only here).

    Raises:
        ImportError: the tensorboard package is not installed (the message says how to get it).
    """

    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ImportError(
                "tensorboard=True needs the tensorboard package: pip install "
                "'nexus-fast[tensorboard]' (or pip install tensorboard), or set tensorboard=False"
            ) from error
        self._writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, prefix: str, step: int, values: dict[str, float | None]) -> None:
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(f"{prefix}/{name}", value, step)

    def close(self) -> None:
        self._writer.close()


class ProgressBar:
    """A tqdm bar over the run's steps showing loss, lr and images/s (disabled off rank 0)."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self._bar = tqdm(
            total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True
        )

    def update(self, steps: int = 1) -> None:
        self._bar.update(steps)

    def show(self, loss: float | None, lr: float, images_per_s: float) -> None:
        loss_text = "nan" if loss is None or not math.isfinite(loss) else f"{loss:.4g}"
        self._bar.set_postfix(
            loss=loss_text, lr=f"{lr:.3g}", img_s=f"{images_per_s:.1f}", refresh=False
        )

    def close(self) -> None:
        self._bar.close()


def plot_history(history_path: str | Path, out_dir: str | Path) -> list[Path]:
    """PNG plots of a run's history: loss.png (training loss over steps) and eval_<name>.png
    for each evaluation metric (e.g. eval_knn.png). Returns the files written.

    Uses matplotlib's object API with the Agg canvas, so no global backend is changed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_history(history_path)
    out_dir = Path(out_dir)
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        if record.get("loss") is not None:
            steps, values = series.setdefault("loss", ([], []))
            steps.append(record["step"])
            values.append(record["loss"])
        for name, value in (record.get("eval") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                steps, values = series.setdefault(f"eval_{name}", ([], []))
                steps.append(record["step"])
                values.append(value)
    written = []
    for name, (steps, values) in series.items():
        figure = Figure(figsize=(6, 4), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        axes.plot(steps, values, marker="o" if len(steps) < 30 else None)
        axes.set_xlabel("step")
        axes.set_ylabel(name.removeprefix("eval_"))
        axes.set_title("training loss" if name == "loss" else f"evaluation: {name[5:]}")
        axes.grid(alpha=0.3)
        path = out_dir / f"{name}.png"
        figure.savefig(path, bbox_inches="tight")
        written.append(path)
    return written
