"""A resolved model and its weights' identity: what ingest/models.py resolves and ingest/objects.py registers."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from torch import nn

__all__ = ["ResolvedModel", "state_dict_sha256"]


@dataclass
class ResolvedModel:
    model: nn.Module
    model_spec: str
    weights_spec: str
    weights_sha256: str
    import_root: str | None = None  # the folder that made a module:callable importable


def state_dict_sha256(model: nn.Module) -> str:
    """A hash of every parameter and buffer: the weights' identity, whatever their source."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
