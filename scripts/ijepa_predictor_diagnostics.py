"""Does a trained I-JEPA predictor use the image? Compares, on the same images and masks, the
smooth-L1 loss of the run's predictor against a predictor that sees only positions:

    position_only       predict every target token by the mean target at its grid position
                        (over the images scored): the best any image-blind predictor can do
    position_share      the share of the targets' variance that position alone explains
    model               the trained predictor on the real context (the training loss)
    shuffled_context    the trained predictor given another image's context tokens

for the run's target encoder and the same encoder at its random initialisation, on augmented
training views (what the loss sees) and on plain test images.

    .venv/bin/python scripts/ijepa_predictor_diagnostics.py runs/results/ijepa-recipe

A model loss near `position_only` and well below `shuffled_context` says the predictor uses the
context but has not learned much beyond where a token sits (docs/results.md, 2026-12-06).
"""

import argparse
import json
import sys

import torch
import torch.nn.functional as F
from torch import Tensor

from nexus_fast.models.ssl.ijepa import JEPAModel
from nexus_fast.train.evaluate import load_trained_model
from nexus_fast.train.pretrain import load_dataset
from nexus_fast.train.recipes import get_recipe, make_inputs


def position_scores(encoder: torch.nn.Module, images: Tensor) -> dict[str, float]:
    """How far position alone goes in predicting this encoder's layer-normed targets."""
    tokens = encoder.forward_features(images).patch_tokens
    targets = F.layer_norm(tokens, tokens.shape[-1:])  # what jepa_loss regresses onto
    per_position = targets.mean(dim=0, keepdim=True)
    total = (targets - targets.mean(dim=(0, 1), keepdim=True)).pow(2).mean()
    within = (targets - per_position).pow(2).mean()
    return {
        "position_only": F.smooth_l1_loss(per_position.expand_as(targets), targets).item(),
        "position_share": 1.0 - (within / total).item(),
    }


def predictor_loss(model: JEPAModel, images: Tensor, shuffle: bool, seed: int) -> float:
    """The training loss on `images`, the context optionally taken from other images."""
    torch.manual_seed(seed)  # the same masks for the real and the shuffled context
    masks = model.sample_masks(images.shape[0])
    context = masks.context
    context_tokens = model.encoder.forward_features(
        images, ids=context.ids, valid=context.valid
    ).patch_tokens
    if shuffle:
        context_tokens = context_tokens[torch.randperm(images.shape[0])]
    target_tokens = model.target_encoder.forward_features(images).patch_tokens
    return model.prediction_loss(context_tokens, target_tokens, masks).item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="an I-JEPA run folder written by nexus-fast pretrain")
    parser.add_argument("--images", type=int, default=1000, help="images scored (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed (default 0)")
    args = parser.parse_args(argv)
    model, run = load_trained_model(args.run)
    if not isinstance(model, JEPAModel):
        raise SystemExit(f"{args.run} is a {type(model).__name__} run; this script reads I-JEPA")
    model.eval()
    split = load_dataset(run.get("dataset", "animal-shapes"), False, size=model.config.img_size)
    torch.manual_seed(args.seed)  # as pretrain seeds before building the model
    untrained = type(model)(model.config).eval()

    indices = torch.arange(args.images)
    inputs = make_inputs(get_recipe("ijepa"), model, split.train, torch.device("cpu"))
    (views,), _ = inputs(indices, torch.Generator().manual_seed(args.seed))
    test = (split.test[indices].float() / 255.0 - 0.5) / 0.5  # extract_features' normalisation
    with torch.no_grad():
        for name, images in (("augmented_views", views), ("test_images", test)):
            row = {
                "images": name,
                "trained": position_scores(model.target_encoder, images),
                "random_init": position_scores(untrained.target_encoder, images),
                "model": predictor_loss(model, images, shuffle=False, seed=args.seed + 1),
                "shuffled_context": predictor_loss(model, images, True, seed=args.seed + 1),
            }
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
