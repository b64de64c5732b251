"""Models every client trains, built only from layers Opacus supports.

Every protocol works on one flat float32 vector, so each model's parameters flatten to
that vector and load back from it exactly (``flatten_parameters`` / ``load_flat``).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

MODEL_KINDS = ("logreg", "mlp")


class LogisticRegression(nn.Module):
    """Logistic regression: one linear layer producing class logits.

    With two classes it learns a single logit z and returns ``[0, z]``, so cross-entropy is
    exactly the binary logistic loss. Softmax over two learned logits has one redundant
    row; under DP-SGD that row still receives noise, so dropping it halves the noised
    coordinates for the same signal (measured: +1 point of accuracy at ε = 1).
    """

    def __init__(self, n_features: int, n_classes: int) -> None:
        super().__init__()
        self.binary = n_classes == 2
        self.linear = nn.Linear(n_features, 1 if self.binary else n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x)
        return torch.cat([torch.zeros_like(logits), logits], dim=1) if self.binary else logits


class MLP(nn.Module):
    """A small two-layer perceptron with a tanh hidden layer (bounded activations suit DP-SGD)."""

    def __init__(self, n_features: int, n_classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.hidden = nn.Linear(n_features, hidden)
        self.activation = nn.Tanh()
        self.out = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.activation(self.hidden(x)))


def build_model(kind: str, n_features: int, n_classes: int, *, seed: int = 0) -> nn.Module:
    """Build a model deterministically for ``seed``."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    if n_features < 1 or n_classes < 2:
        raise ValueError(f"need n_features >= 1 and n_classes >= 2, got {n_features}, {n_classes}")
    # Layers initialise from the CPU generator: seed it, build, put its state back. (Not
    # torch.manual_seed: it also seeds every accelerator back end, capturing a stack trace
    # for each, about a millisecond per model, and leaves them seeded.)
    generator = torch.default_generator
    generator_state = generator.get_state()
    generator.manual_seed(seed)
    try:
        return LogisticRegression(n_features, n_classes) if kind == "logreg" else MLP(n_features, n_classes)
    finally:
        generator.set_state(generator_state)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flatten_parameters(model: nn.Module) -> np.ndarray:
    """All parameters, in ``model.parameters()`` order, as one float32 vector."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).cpu().numpy().astype(np.float32)


def load_flat(model: nn.Module, flat: np.ndarray) -> None:
    """Overwrite the model's parameters from a flat vector made by ``flatten_parameters``."""
    vector = np.asarray(flat)
    expected = parameter_count(model)
    if vector.ndim != 1 or vector.shape[0] != expected:
        raise ValueError(f"flat parameter vector has shape {vector.shape}, model needs ({expected},)")
    if not np.all(np.isfinite(vector)):
        raise ValueError("flat parameter vector has non-finite values")
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(torch.from_numpy(vector[offset : offset + n].astype(np.float32)).reshape(p.shape))
            offset += n


def classes_for(kind: str, n_features: int, n_parameters: int) -> int:
    """The class count whose ``kind`` model on ``n_features`` has ``n_parameters`` parameters
    (the ledger records the flat vector and the features, not the shape); ValueError if none."""
    n_classes = 2
    while (count := parameter_count(build_model(kind, n_features, n_classes))) <= n_parameters:
        if count == n_parameters:
            return n_classes
        n_classes += 1
    raise ValueError(f"no {kind} model on {n_features} features has {n_parameters} parameters")
