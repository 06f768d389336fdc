"""Kappa from Python: the model registry of a Kappa mesh (publish, sign, aliases, watch) and
scoring through its predictors."""

from kappa.connection import Security
from kappa.errors import ConfigurationError, KappaError, NotFound, PermissionDenied, Unauthenticated

__all__ = [
    "Backtest",
    "ConfigurationError",
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


def __getattr__(name: str) -> object:
    # The registry and signing modules import the generated stubs; loaded when first used.
    if name in ("Registry", "load_manifest", "onnx_manifest"):
        from kappa import models

        return getattr(models, name)
    if name in ("Predictor", "Prediction", "Scores"):
        from kappa import scoring

        return getattr(scoring, name)
    if name in ("Trainer", "Range", "Inspection", "Backtest", "training_spec"):
        from kappa import training

        return getattr(training, name)
    if name == "SigningKey":
        from kappa.signing import SigningKey

        return SigningKey
    raise AttributeError(name)
