"""Evaluation: kNN, linear probe and attentive probe on frozen features, fine-tuning, feature
extraction, collapse indicators."""

from .attentive import AttentiveProbe, attentive_probe
from .collapse import effective_rank, embedding_std
from .features import extract_features
from .finetune import FinetuneConfig, finetune
from .knn import knn_accuracy, knn_predict
from .linear import linear_probe

__all__ = [
    "AttentiveProbe",
    "FinetuneConfig",
    "attentive_probe",
    "effective_rank",
    "embedding_std",
    "extract_features",
    "finetune",
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
]
