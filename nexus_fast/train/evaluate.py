"""Scoring a saved run: rebuild the model a checkpoint was trained as, load its weights, and
run the kNN or linear probe on the run's data set (`nexus-fast eval`)."""

from pathlib import Path

import torch
from torch import nn

from ..config import build_config
from ..eval.finetune import finetune, finetune_config
from .checkpoint import latest_checkpoint, load_checkpoint
from .pretrain import _device, load_dataset, score
from .recipes import get_recipe


def load_trained_model(checkpoint: str | Path) -> tuple[nn.Module, dict]:
    """(model with the checkpoint's weights, the run's info) from a run folder (its latest
    checkpoint) or one step_* folder written by `pretrain`.

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: a checkpoint written without the run's info (not by `pretrain`).
    """
    path = Path(checkpoint)
    if not (path / "model.safetensors").is_file():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"--checkpoint {str(path)!r}: no checkpoint in that folder")
        path = found
    loaded = load_checkpoint(path)
    run = loaded.state.get("run") or {}
    if "method" not in run or "model_config" not in run:
        raise ValueError(
            f"{path} holds no run info (method, model_config): it was not written by "
            "nexus-fast pretrain"
        )
    recipe = get_recipe(run["method"])
    model = recipe.model_class(build_config(recipe.model_class.config_class, run["model_config"]))
    model.load_state_dict(loaded.weights, strict=True)
    return model, run


def evaluate_checkpoint(
    checkpoint: str | Path,
    protocols: list[str],
    dataset: str | None = None,
    device: str | None = None,
    finetune_settings: dict | None = None,
) -> dict[str, float]:
    """kNN, linear-probe and/or fine-tuning top-1 of a checkpoint's encoder on the test split
    (fine-tuning with FinetuneConfig(**finetune_settings))."""
    allowed = ("knn", "linear", "finetune")
    for protocol in protocols:
        if protocol not in allowed:
            raise ValueError(f"protocol={protocol!r} is not allowed: one of {allowed}")
    model, run = load_trained_model(checkpoint)
    split = load_dataset(
        dataset or run.get("dataset", "animal-shapes"),
        get_recipe(run["method"]).video,
        size=model.config.img_size,
        channels=model.config.in_chans,
    )
    target = _device(device)
    config = finetune_config(finetune_settings or {})  # bad settings fail before any work
    torch.manual_seed(0)
    scores = {}
    if "knn" in protocols or "linear" in protocols:
        scores = score(model.to(target), split, target, linear="linear" in protocols)
        if "knn" not in protocols:
            scores.pop("knn")
    if "finetune" in protocols:
        tuned = finetune(
            model, split.train, split.train_labels, split.test, split.test_labels, config,
            device=target,
        )  # fmt: skip
        scores["finetune"] = tuned["top1"]
    return scores
