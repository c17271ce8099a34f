"""The settings of a pretrain command: a config file, --set key=value pairs and --steps or
--epochs, merged in that order into one dict of overrides for `pretrain`.

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
    epochs: float | None = None,
    num_samples: int = 8000,
) -> dict:
    """The merged overrides. --epochs N becomes steps = ceil(N * num_samples / batch_size);
    the warmup is kept within the run (10% of it when the default warmup would not fit)."""
    overrides = read_config_file(config_file) if config_file else {}
    overrides.update(parse_assignment(text) for text in assignments or [])
    recipe = get_recipe(method)
    merged = {**recipe.train, **overrides}
    if epochs is not None:
        if epochs <= 0:
            raise ValueError(f"--epochs {epochs} is not allowed: a positive number")
        steps = math.ceil(epochs * num_samples / merged["batch_size"])
    if steps is not None:
        if steps < 1:
            raise ValueError(f"--steps {steps} is not allowed: an integer >= 1")
        overrides["steps"] = steps
        if "warmup_steps" not in overrides and merged.get("warmup_steps", 0) > steps:
            overrides["warmup_steps"] = steps // 10
    return overrides
