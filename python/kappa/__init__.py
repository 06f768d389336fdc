"""Kappa from Python: history into pandas as the trainer reads it, training jobs, the model
registry (publish, sign, aliases, watch), scoring through the predictors, backtests and drift
windows. See docs/python.md for the manual."""

from kappa.connection import Security
from kappa.errors import ConfigurationError, KappaError, NotFound, PermissionDenied, Unauthenticated
from kappa.models import Registry, load_manifest, onnx_manifest
from kappa.scoring import Contribution, Prediction, Predictor, Scores
from kappa.signing import SigningKey
from kappa.training import Backtest, Inspection, Range, Trainer, training_spec

__all__ = [
    "Backtest",
    "ConfigurationError",
    "Contribution",
    "Inspection",
    "KappaError",
    "NotFound",
    "PermissionDenied",
    "Prediction",
    "Predictor",
    "Range",
    "Registry",
    "Scores",
    "Security",
    "SigningKey",
    "Trainer",
    "Unauthenticated",
    "load_manifest",
    "onnx_manifest",
    "training_spec",
]
