"""What a video encoder's features tell apart: kNN top-1 (cosine, k = 20, T = 0.07) of a finished
V-JEPA 2 run's `encode` features on moving-shapes clips, against both labels the clips carry:
the animal (`classes`, the score of record in docs/results.md) and the motion (`directions`),
for the trained encoder and for the same encoder at its random initialisation (the run's seed
rebuilds the weights it started from). With --attentive, also the official evaluation's kind of
score: an attentive probe (nexus_fast.eval.attentive_probe) trained on the target encoder's
frozen tokens, for each label.

    .venv/bin/python scripts/video_diagnostics.py runs/results/vjepa2-recipe [RUN ...] [--attentive]

A diagnostic for recipe work, not an evaluation protocol.
"""

import argparse
import json
import sys

import torch

from nexus_fast.data.moving_shapes import moving_shapes_split
from nexus_fast.eval import attentive_probe, extract_features, knn_accuracy
from nexus_fast.train.evaluate import load_trained_model
from nexus_fast.train.recipes import PIXEL_MEAN, PIXEL_STD


def label_knn(model: torch.nn.Module, num_frames: int, size: int) -> dict[str, float]:
    train, test = moving_shapes_split(num_frames=num_frames, size=size)
    with torch.no_grad():
        normalize = (PIXEL_MEAN, PIXEL_STD)
        train_features = extract_features(model, train.clips, normalize=normalize, batch_size=250)
        test_features = extract_features(model, test.clips, normalize=normalize, batch_size=250)
    return {
        label: round(
            100
            * knn_accuracy(
                train_features, getattr(train, label), test_features, getattr(test, label), k=20
            ),
            2,
        )
        for label in ("classes", "directions")
    }


def label_attentive(model: torch.nn.Module, num_frames: int, size: int) -> dict[str, float]:
    """Top-1 of an attentive probe on the frozen tokens (N, L, D) of the evaluated encoder."""
    train, test = moving_shapes_split(num_frames=num_frames, size=size)
    encoder = model.evaluation_encoder()
    with torch.no_grad():
        normalize = (PIXEL_MEAN, PIXEL_STD)

        def tokens(clips: torch.Tensor) -> torch.Tensor:
            features = encoder.forward_features(clips)
            return features.tokens[:, features.num_prefix_tokens :]  # patch tokens, final norm

        train_tokens = extract_features(tokens, train.clips, normalize=normalize, batch_size=250)
        test_tokens = extract_features(tokens, test.clips, normalize=normalize, batch_size=250)
    return {
        label: round(
            100
            * attentive_probe(
                train_tokens, getattr(train, label), test_tokens, getattr(test, label)
            ),
            2,
        )
        for label in ("classes", "directions")
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="V-JEPA 2 run folders written by pretrain")
    parser.add_argument("--seed", type=int, default=0, help="the runs' seed (default 0)")
    parser.add_argument(
        "--attentive", action="store_true", help="also an attentive probe on the frozen tokens"
    )
    args = parser.parse_args(argv)
    for run_dir in args.runs:
        model, _ = load_trained_model(run_dir)
        config = model.config
        torch.manual_seed(args.seed)  # as pretrain seeds before building the model
        untrained = type(model)(config)
        for name, encoder in (("pretrained", model), ("random_init", untrained)):
            scores = {"knn": label_knn(encoder, config.num_frames, config.img_size)}
            if args.attentive:
                scores["attentive"] = label_attentive(encoder, config.num_frames, config.img_size)
            print(json.dumps({"run": run_dir, "encoder": name, **scores}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
