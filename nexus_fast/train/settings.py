"""The settings of a pretrain command: a config file, --set key=value pairs and --steps, merged
in that order into one dict of overrides for `pretrain`; --epochs and the epoch length, which
depend on the data set's size, once it is loaded (`epoch_overrides`).

Keys are TrainConfig fields (steps, batch_size, lr, ...) or model.<field> for the method's model
config; `build_run` rejects unknown ones with the list of valid keys. Values on the command line
are Python literals (2e-3, (512, 512), None, True), anything else is a string.
"""

import ast
import json
import math
from pathlib import Path

from .recipes import get_recipe


def parse_assignment(text: str) -> tuple[str, object]:
    """ "key=value" -> (key, value), the value read as a Python literal when it is one.

    Raises:
        ValueError: no "=" or an empty key.
    """
    key, separator, value = text.partition("=")
    if not separator or not key.strip():
        raise ValueError(f"--set {text!r} is not allowed: KEY=VALUE, e.g. --set lr=1e-3")
    try:
        parsed = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        parsed = value.strip()
    return key.strip(), parsed


def read_config_file(path: str | Path) -> dict:
    """The settings of a .json or .toml file: a flat table of key = value (model settings as
    "model.<field>" keys, or as a [model] table in TOML / a "model" object in JSON)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {str(path)!r}: no such file")
    if path.suffix == ".json":
        values = json.loads(path.read_text())
    elif path.suffix == ".toml":
        import tomllib

        values = tomllib.loads(path.read_text())
    else:
        raise ValueError(f"--config {str(path)!r} is not allowed: a .json or .toml file")
    if not isinstance(values, dict):
        raise ValueError(f"--config {str(path)!r}: expected a table of settings")
    model = values.pop("model", {})
    if not isinstance(model, dict):
        raise ValueError(f"--config {str(path)!r}: 'model' must be a table of model settings")
    return {**values, **{f"model.{key}": value for key, value in model.items()}}


def run_overrides(
    method: str,
    config_file: str | None = None,
    assignments: list[str] | None = None,
    steps: int | None = None,
) -> dict:
    """The merged overrides of a config file, --set assignments and --steps (--epochs depends on
    the data set's size: `epoch_overrides` converts it once the data is loaded)."""
    overrides = read_config_file(config_file) if config_file else {}
    overrides.update(parse_assignment(text) for text in assignments or [])
    if steps is not None:
        if steps < 1:
            raise ValueError(f"--steps {steps} is not allowed: an integer >= 1")
        overrides = _with_steps(method, overrides, steps)
    return overrides


def epoch_overrides(
    method: str, overrides: dict, num_samples: int, epochs: float | None = None
) -> dict:
    """`overrides` with the epoch length of a training set of `num_samples`: steps_per_epoch =
    round(num_samples / batch_size) unless set (what the epoch-based schedules and the logged
    epoch count read), and for --epochs N, steps = ceil(N * num_samples / batch_size)."""
    batch_size = {**get_recipe(method).train, **overrides}["batch_size"]
    overrides = dict(overrides)
    overrides.setdefault("steps_per_epoch", max(1, round(num_samples / batch_size)))
    if epochs is not None:
        if not epochs > 0:
            raise ValueError(f"--epochs {epochs} is not allowed: a positive number")
        overrides = _with_steps(method, overrides, math.ceil(epochs * num_samples / batch_size))
    return overrides


def _with_steps(method: str, overrides: dict, steps: int) -> dict:
    """overrides with `steps`, the warmup kept within the run (10% of it when the default
    warmup would not fit)."""
    merged = {**get_recipe(method).train, **overrides}
    overrides = {**overrides, "steps": steps}
    if "warmup_steps" not in overrides and merged.get("warmup_steps", 0) > steps:
        overrides["warmup_steps"] = steps // 10
    return overrides
