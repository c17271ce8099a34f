"""Where a trained encoder keeps what it learned: kNN top-1 (cosine, k = 20, T = 0.07, the
protocol of docs/results.md) of several features of a finished run, for the evaluated encoder,
the model's other ViT (the student or the EMA teacher), and the evaluated encoder at its random
initialisation (the run's seed rebuilds the weights it started from):

    mean      the mean of the patch tokens after the final norm (most methods' `encode`)
    cls       the cls token after the final norm (encoders that have one)
    flat      every patch token, concatenated in grid order: the layout kept, no pooling
    centred   `mean` minus the training features' mean (as the raw-pixel baseline is centred)
    blockN    the mean of block N's output tokens (before the final norm)

    .venv/bin/python scripts/feature_diagnostics.py runs/results/ijepa-xavier [RUN ...]

A diagnostic for recipe work, not an evaluation protocol: the scores of record are `encode`'s.
Images only (not V-JEPA 2's clips).
"""

import argparse
import json
import sys
from collections.abc import Callable

import torch
from torch import Tensor, nn

from nexus_fast.eval import extract_features, knn_accuracy
from nexus_fast.models.vit import VisionTransformer
from nexus_fast.train.evaluate import load_trained_model
from nexus_fast.train.pretrain import Split, load_dataset


def encoders(model: nn.Module) -> dict[str, VisionTransformer]:
    """The evaluated encoder first, then the model's other ViTs by attribute name."""
    evaluated = model.evaluation_encoder()
    found = {"evaluated": evaluated}
    for name, module in model.named_modules():
        if isinstance(module, VisionTransformer) and module is not evaluated:
            found[name] = module
    return found


def feature_knn(split: Split, feature: Callable[[Tensor], Tensor], centre: bool = False) -> float:
    with torch.no_grad():
        train = extract_features(feature, split.train, batch_size=500)
        test = extract_features(feature, split.test, batch_size=500)
    if centre:
        mean = train.mean(dim=0)
        train, test = train - mean, test - mean
    return knn_accuracy(train, split.train_labels, test, split.test_labels, k=20)


def diagnose(encoder: VisionTransformer, split: Split) -> dict[str, float]:
    encoder.eval()
    prefix = encoder.num_prefix_tokens

    def patches(x: Tensor) -> Tensor:
        return encoder.forward_features(x).patch_tokens  # (B, L, D)

    def block_mean(index: int) -> Callable[[Tensor], Tensor]:
        def feature(x: Tensor) -> Tensor:
            layers = encoder.forward_features(x, collect="blocks").layers
            return layers[index][:, prefix:].mean(dim=1)

        return feature

    scores = {
        "mean": feature_knn(split, lambda x: patches(x).mean(dim=1)),
        "flat": feature_knn(split, lambda x: patches(x).flatten(1)),
        "centred": feature_knn(split, lambda x: patches(x).mean(dim=1), centre=True),
    }
    if encoder.cls_token is not None:
        scores["cls"] = feature_knn(split, lambda x: encoder.forward_features(x).cls)
    for index in range(len(encoder.blocks)):
        scores[f"block{index}"] = feature_knn(split, block_mean(index))
    return {name: round(100 * value, 2) for name, value in scores.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders written by nexus-fast pretrain")
    parser.add_argument("--seed", type=int, default=0, help="the runs' seed (default 0)")
    args = parser.parse_args(argv)
    for run_dir in args.runs:
        model, run = load_trained_model(run_dir)
        split = load_dataset(
            run.get("dataset", "animal-shapes"),
            False,
            size=model.config.img_size,
            channels=model.config.in_chans,
        )
        torch.manual_seed(args.seed)  # as pretrain seeds before building the model
        untrained = type(model)(model.config)
        found = {**encoders(model), "random_init": untrained.evaluation_encoder()}
        for name, encoder in found.items():
            row = {"run": run_dir, "encoder": name, "knn": diagnose(encoder, split)}
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
