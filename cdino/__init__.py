"""cdino: self-supervised speaker verification without speaker labels.

DINO → Cluster-Aware DINO → iterative pseudo-label training with a dynamic loss-gate and
label correction (DLG-LC), audio-only or audio-visual, evaluated after every stage.
"""

from cdino.threads import prefer_passive_waiting as _prefer_passive_waiting

# Before anything loads torch: idle OpenMP threads sleep instead of spinning, so a
# busy core elsewhere does not stall every step (see cdino/threads.py).
_prefer_passive_waiting()

__version__ = "0.1.0"


def load_model(path, device="cpu", optimize=False):
    """Load a model folder onto ``device`` ("cpu", "cuda", "cuda:N" or "auto"); see
    :func:`cdino.api.load_model`."""
    from cdino.api import load_model as _load

    return _load(path, device=device, optimize=optimize)


__all__ = ["__version__", "load_model"]
