"""cdino: self-supervised speaker verification without speaker labels.

DINO → Cluster-Aware DINO → iterative pseudo-label training with a dynamic loss-gate and
label correction (DLG-LC), audio-only or audio-visual, evaluated after every stage.
"""

__version__ = "0.1.0"


def load_model(path, device="cpu", optimize=False):
    """Load a model folder onto ``device`` ("cpu", "cuda", "cuda:N" or "auto"); see
    :func:`cdino.api.load_model`."""
    from cdino.api import load_model as _load

    return _load(path, device=device, optimize=optimize)


__all__ = ["__version__", "load_model"]
