"""`pretrain`: one call from a method name to a trained encoder and its scores — what the
`nexus-fast pretrain` command runs.

It builds the method's recipe (nexus_fast.train.recipes) with the user's overrides, loads the
data set, scores the encoder at random initialisation, trains with the Trainer, and scores the
trained encoder the same way: kNN (cosine, k = 20, T = 0.07) and a linear probe on the test
split, beside the raw-pixel kNN baseline. Everything lands in the run folder: checkpoints,
metrics.jsonl, plots and results.json.
"""

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import build_config
from ..data.animal_shapes import animal_shapes_split
from ..eval import effective_rank, embedding_std, extract_features, knn_accuracy, linear_probe
from .checkpoint import latest_checkpoint
from .config import TrainConfig
from .recipes import PIXEL_MEAN, PIXEL_STD, get_recipe, make_inputs
from .settings import epoch_overrides
from .trainer import Trainer


@dataclass
class Split:
    """A labelled evaluation split: uint8 images (N, C, H, W) or clips (N, C, T, H, W)."""

    train: Tensor
    train_labels: Tensor
    test: Tensor
    test_labels: Tensor


def load_dataset(name: str, video: bool, *, size: int = 28, channels: int = 1) -> Split:
    """The built-in data sets: "animal-shapes" (images), and its moving-shapes clips for video
    methods; or a folder path (one sub-folder per class), its images decoded with `channels`
    (1 greyscale, 3 RGB) and resized to `size` px (the model's in_chans and img_size)."""
    if video:
        from ..data.moving_shapes import moving_shapes_split

        if name != "animal-shapes":
            raise ValueError(
                f"dataset={name!r} is not allowed for a video method: 'animal-shapes' "
                "(its moving-shapes clips)"
            )
        train, test = moving_shapes_split(num_frames=8, size=32)
        return Split(train.clips, train.classes, test.clips, test.classes)
    if name == "animal-shapes":
        train_images, train_labels = animal_shapes_split("train")
        test_images, test_labels = animal_shapes_split("test")
        # Silhouettes are (N, 28, 28): one channel.
        return Split(train_images[:, None], train_labels, test_images[:, None], test_labels)
    return _folder_split(Path(name), size, channels)


def _folder_split(root: Path, size: int, channels: int) -> Split:
    from ..data.folders import ImageFolder

    if not root.is_dir():
        raise ValueError(
            f"dataset={str(root)!r} is not allowed: 'animal-shapes' or a folder with one "
            "sub-folder per class (optionally train/ and test/ sub-folders)"
        )
    if (root / "train").is_dir() and (root / "test").is_dir():
        train_images, train_labels = ImageFolder(
            root / "train", size=size, channels=channels
        ).load_all()
        test_images, test_labels = ImageFolder(
            root / "test", size=size, channels=channels
        ).load_all()
        return Split(train_images, train_labels, test_images, test_labels)
    images, labels = ImageFolder(root, size=size, channels=channels).load_all()
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * images.shape[0])
    return Split(images[order[:cut]], labels[order[:cut]], images[order[cut:]], labels[order[cut:]])


def score(model: nn.Module, split: Split, device: torch.device, *, linear: bool) -> dict:
    """kNN (and, when `linear`, linear-probe) top-1 on the test split of the model's `encode`
    features, with the collapse indicators of the test features."""

    def features(data: Tensor) -> Tensor:
        return extract_features(
            model, data, normalize=(PIXEL_MEAN, PIXEL_STD), batch_size=500, device=device
        )

    train, test = features(split.train), features(split.test)
    scores = {
        "knn": knn_accuracy(train, split.train_labels, test, split.test_labels, k=_k(split)),
        "embedding_std": float(embedding_std(test)),
        "effective_rank": float(effective_rank(test)),
    }
    if linear:
        scores["linear"] = linear_probe(
            train, split.train_labels, test, split.test_labels, epochs=30
        )
    return scores


def raw_pixel_knn(split: Split) -> float:
    """kNN on centred raw pixels (the METHODS.md baseline, 90.0% on animal-shapes)."""
    train = split.train.flatten(1).float()
    mean = train.mean(dim=0)
    test = split.test.flatten(1).float()
    return knn_accuracy(
        train - mean, split.train_labels, test - mean, split.test_labels, k=_k(split)
    )


def _k(split: Split) -> int:
    """k = 20 (the protocol), unless a small folder data set has fewer training images."""
    return min(20, split.train.shape[0] - 1)


def build_run(method: str, overrides: dict | None = None) -> tuple[Any, nn.Module, TrainConfig]:
    """(recipe, model, train config) of a method with `overrides`: keys "model.<field>" go to
    the model's config, "view.<field>" and "local.<field>" to the augmentation (CropSpec) of the
    global and local views, the others to TrainConfig. Unknown keys raise ValueError listing the
    valid ones."""
    recipe = get_recipe(method)
    model_values, train_values = dict(recipe.model), dict(recipe.train)
    view_values, local_values = dict(recipe.view), dict(recipe.local_view)
    for key, value in (overrides or {}).items():
        if key.startswith("model."):
            model_values[key.removeprefix("model.")] = value
        elif key.startswith("view."):
            view_values[key.removeprefix("view.")] = value
        elif key.startswith("local."):
            local_values[key.removeprefix("local.")] = value
        else:
            train_values[key] = value
    recipe = dataclasses.replace(recipe, view=view_values, local_view=local_values)
    try:
        train_config = build_config(TrainConfig, train_values)
    except ValueError as error:
        raise ValueError(
            f"{error} (or model.<field> for the model's config, view.<field> or local.<field>"
            " for the augmentation)"
        ) from None
    model_values = _scaled_model_values(recipe, model_values, train_config)
    try:
        model_config = build_config(recipe.model_class.config_class, model_values)
    except ValueError as error:
        raise ValueError(f"model config of {method}: {error} (use them as model.<field>)") from None
    return recipe, recipe.model_class(model_config), train_config


def _scaled_model_values(recipe, values: dict, train: TrainConfig) -> dict:
    """Model fields that count steps follow the run's length unless set explicitly: data2vec
    2.0's teacher decay anneals over the whole run (the recipe's value is for its default
    length)."""
    field = "ema_anneal_end_step"
    if recipe.method == "data2vec2" and values.get(field) == recipe.model.get(field):
        values[field] = train.steps
    return values


def pretrain(
    method: str,
    *,
    dataset: str = "animal-shapes",
    overrides: dict | None = None,
    epochs: float | None = None,
    out_dir: str | Path = "runs/run",
    device: str | None = None,
    resume: bool = False,
    progress: bool = True,
    linear: bool = True,
) -> dict:
    """Trains `method` on `dataset` and scores it (for `epochs` passes over the training set
    when given, else for the recipe's or the overrides' steps); returns (and writes to
    results.json)
    {"method", "steps", "minutes", "random_init": scores, "pretrained": scores,
    "raw_pixels_knn"} (scores: knn, linear, embedding_std, effective_rank).

    A resumed run carries over, from the results.json its stopped part wrote, the random-init
    scores and the training minutes (a run stopped by a crash wrote none: its minutes are lost)."""
    out_dir = Path(out_dir)
    previous = latest_checkpoint(out_dir)
    if previous is not None and not resume:
        raise ValueError(
            f"--out {str(out_dir)!r} already holds a run (its checkpoint {previous.name}): "
            "pass --resume to continue it, or another --out for a new run"
        )
    seed = int((overrides or {}).get("seed", TrainConfig.seed))
    torch.manual_seed(seed)  # the initialisation depends on the run's seed only
    recipe, model, config = build_run(method, overrides)
    split = load_dataset(
        dataset, recipe.video, size=model.config.img_size, channels=model.config.in_chans
    )
    # The run's length in steps may depend on the data set's size (--epochs): rebuilt from the
    # same seed, the model is the same.
    sized = epoch_overrides(method, overrides or {}, split.train.shape[0], epochs)
    if sized["steps_per_epoch"] != config.steps_per_epoch or epochs is not None:
        torch.manual_seed(seed)
        recipe, model, config = build_run(method, sized)
    trainer = Trainer(
        model,
        config,
        make_inputs(recipe, model, split.train, _device(device)),
        split.train.shape[0],
        out_dir,
        device=device,
        evaluate=lambda m, step: score(m, split, trainer.device, linear=False),
        find_unused_parameters=method == "dinov2",
        progress=progress,
        run_info={
            "method": method,
            "dataset": dataset,
            "model_config": dataclasses.asdict(model.config),
        },
    )
    stopped_part = stopped_results(out_dir) if resume else {}
    if resume:
        random_init = stopped_part.get("random_init")
    else:
        random_init = score(model, split, trainer.device, linear=linear)
        trainer.rank_monitor.update(0, random_init)  # the rank to keep: the fresh encoder's
    started = time.perf_counter()
    outcome = trainer.fit(resume=resume)
    minutes = stopped_part.get("minutes", 0.0) + (time.perf_counter() - started) / 60
    results = {
        "method": method,
        "dataset": dataset,
        "steps": outcome["step"],
        "batch_size": config.batch_size,
        "minutes": minutes,
        "skipped_steps": outcome["skipped_steps"],
        "interrupted": outcome["interrupted"],
        "random_init": random_init,
        "pretrained": score(model, split, trainer.device, linear=linear),
        "raw_pixels_knn": raw_pixel_knn(split) if not recipe.video else None,
    }
    if trainer.rank == 0:
        (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        if method == "mae":
            from .reconstructions import plot_reconstructions

            plot_reconstructions(
                model, split.test[:8], out_dir / "reconstructions.png", device=trainer.device
            )
    return results


def stopped_results(out_dir: str | Path) -> dict:
    """What the stopped part of a run wrote (results.json with "interrupted": true), else {}."""
    path = Path(out_dir) / "results.json"
    if not path.is_file():
        return {}
    results = json.loads(path.read_text())
    return results if results.get("interrupted") else {}


def _device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def summary(results: dict) -> str:
    """The lines the command prints at the end of a run."""

    def percent(value: float | None) -> str:
        return (
            "  n/a"
            if value is None or (isinstance(value, float) and math.isnan(value))
            else (f"{100 * value:5.1f}%")
        )

    pre, rand = results["pretrained"], results["random_init"] or {}
    lines = [
        f"{results['method']}: {results['steps']} steps in {results['minutes']:.1f} min",
        f"  kNN    pre-trained {percent(pre['knn'])}   random init {percent(rand.get('knn'))}",
    ]
    if "linear" in pre:
        lines.append(
            f"  linear pre-trained {percent(pre['linear'])}   random init "
            f"{percent(rand.get('linear'))}"
        )
    if results.get("raw_pixels_knn") is not None:
        lines.append(f"  raw pixels kNN {percent(results['raw_pixels_knn'])}")
    return "\n".join(lines)
