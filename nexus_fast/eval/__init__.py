"""Evaluation of frozen features: kNN, linear probe, feature extraction, collapse indicators."""

from .attentive import AttentiveProbe, attentive_probe
from .collapse import effective_rank, embedding_std
from .features import extract_features
from .knn import knn_accuracy, knn_predict
from .linear import linear_probe

__all__ = [
    "AttentiveProbe",
    "attentive_probe",
    "effective_rank",
    "embedding_std",
    "extract_features",
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
]
