"""Score calibration: cosine scores to log-likelihood ratios, ``llr = a·score + b``.

A cosine score says which of two trials is more likely a target; an LLR also says how
much more likely, so that decisions can be made for any prior by the Bayes rule (accept
when ``llr >= -logit(p)``, :func:`cdino.metrics.bayes_threshold`) and scores from
different conditions mean the same.

The map is linear logistic regression fitted by minimising the *prior-weighted
cross-entropy* at an effective target prior ``p`` (the objective of Cllr):

    C(a, b) = p / N_tar · Σ_tar log2(1 + e^-(a·s + b + logit p))
            + (1 - p) / N_non · Σ_non log2(1 + e^(a·s + b + logit p))

It is convex in ``(a, b)``; scipy's BFGS minimises it with the exact gradient. A tiny
ridge term ``RIDGE · a²`` (1e-9) keeps ``a`` finite when the trials separate perfectly; it
moves an ordinary fit by about 0.01 %.

Fitted *without labels* at export (:func:`pseudo_label_calibration`): on the same trials
as the model folder's threshold, built from k-means pseudo labels of training utterances
(:func:`cdino.eval.threshold.pseudo_label_trials`). Those trials come from the training
data and from clusters of the model's own embeddings, so they are easier than real
trials and the calibration is only approximate (typically over-confident);
``cdino calibrate`` refits it from a labelled development list where one exists.

Stored in a model folder as ``calibration.json`` (see ``docs/model_folder.md``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cdino.atomic import write_text
from cdino.errors import ModelFormatError
from cdino.metrics import check_scores_and_labels, bayes_threshold

#: Effective target prior of the fit unless told otherwise.
DEFAULT_PRIOR = 0.5
#: Ridge penalty on the scale ``a`` (per unit of the objective, in bits).
RIDGE = 1e-9
#: The file of a model folder that holds the calibration.
CALIBRATION_FILE = "calibration.json"

PathLike = str | os.PathLike


@dataclass
class Calibration:
    """``llr = a · score + b`` for cosine scores (training mean subtracted, no AS-norm)."""

    a: float  # scale (> 0: a higher score is more likely a target)
    b: float  # offset: the LLR of a score of 0
    prior: float = DEFAULT_PRIOR  # effective target prior the fit weighted the trials with
    n_target: int = 0  # target trials it was fitted on
    n_nontarget: int = 0  # non-target trials it was fitted on
    source: str = ""  # how it was fitted, in words
    created: str = ""  # when (ISO 8601, UTC)
    domain: str = ""  # the data it was fitted on (a data folder; "" = the model's training data): scores of other data may need another

    def llr(self, scores):
        """LLRs of cosine scores (a float for a float, float64 array for an array)."""
        if np.ndim(scores) == 0:
            return self.a * float(scores) + self.b
        return self.a * np.asarray(scores, dtype=np.float64) + self.b

    def score_threshold(self, prior: float = DEFAULT_PRIOR) -> float:
        """The cosine score at which the LLR reaches the Bayes threshold for ``prior``:
        ``score >= score_threshold(p)`` exactly when ``llr >= -logit(p)``."""
        return (bayes_threshold(prior) - self.b) / self.a

    def check(self, where: str = "calibration") -> "Calibration":
        """This calibration when usable, else :class:`ModelFormatError` naming ``where``."""
        if not (math.isfinite(self.a) and math.isfinite(self.b)):
            raise ModelFormatError(f"{where}: a and b must be finite numbers (a={self.a}, b={self.b})")
        if self.a <= 0:
            raise ModelFormatError(f"{where}: scale a must be positive (got {self.a}): higher scores "
                                   "must mean more likely the same speaker")
        if not 0.0 < self.prior < 1.0:
            raise ModelFormatError(f"{where}: prior must lie in (0, 1), got {self.prior}")
        return self

    def describe(self) -> str:
        """One line: the map and what it was fitted on."""
        return (f"llr = {self.a:.4f} * score + {self.b:.4f} (prior {self.prior:g}, "
                f"{self.n_target} target / {self.n_nontarget} non-target trials)")


def _objective(params: np.ndarray, s: np.ndarray, tar: np.ndarray, w_tar: float, w_non: float,
               offset: float, ridge: float) -> tuple[float, np.ndarray]:
    """Prior-weighted cross-entropy (bits) of ``llr = a·s + b`` and its gradient."""
    from scipy.special import expit

    a, b = params
    z = a * s + b + offset  # log posterior odds at the effective prior
    sign = np.where(tar, -1.0, 1.0)  # targets pay for low z, non-targets for high z
    weight = np.where(tar, w_tar, w_non)
    loss = float(np.sum(weight * np.logaddexp(0.0, sign * z))) / math.log(2.0) + ridge * a * a
    dz = weight * sign * expit(sign * z) / math.log(2.0)  # d loss / d z
    grad = np.array([float(np.dot(dz, s)) + 2.0 * ridge * a, float(dz.sum())])
    return loss, grad


def fit_calibration(scores, labels, prior: float = DEFAULT_PRIOR, source: str = "") -> Calibration:
    """Fit ``llr = a·score + b`` to labelled trials (1 target / 0 non-target) by minimising
    the prior-weighted cross-entropy at ``prior``. Raises ``ValueError`` when the fit gives
    no positive scale (scores that do not rank targets above non-targets)."""
    from scipy.optimize import minimize

    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior must lie in (0, 1); got {prior}")
    s, tar = check_scores_and_labels(scores, labels)
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite to fit a calibration")
    n_tar = int(tar.sum())
    n_non = int(s.size - n_tar)
    # Standardise the scores for the optimiser, map the result back.
    centre = float(s.mean())
    spread = float(s.std()) or 1.0
    x = (s - centre) / spread
    offset = math.log(prior) - math.log1p(-prior)
    ridge = RIDGE / (spread * spread)  # RIDGE · a² in the original units (a = a_std / spread)
    res = minimize(_objective, np.zeros(2), jac=True, method="BFGS",
                   args=(x, tar, prior / n_tar, (1.0 - prior) / n_non, offset, ridge),
                   options={"maxiter": 1000, "gtol": 1e-10})
    a_std, b_std = (float(v) for v in res.x)
    a = a_std / spread
    b = b_std - a * centre
    if not (math.isfinite(a) and math.isfinite(b)) or a <= 0:
        raise ValueError(f"calibration fit gave scale a={a:.4g}: the scores do not rank target "
                         "trials above non-target trials")
    return Calibration(a=a, b=b, prior=float(prior), n_target=n_tar, n_nontarget=n_non,
                       source=str(source),
                       created=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def pseudo_label_calibration(emb: np.ndarray, labels: np.ndarray, mean: np.ndarray | None,
                             n_trials: int = 20000, seed: int = 0,
                             prior: float = DEFAULT_PRIOR) -> Calibration:
    """A calibration fitted without speaker labels: on the trials that set the model
    folder's threshold (:func:`cdino.eval.threshold.pseudo_label_trials` from k-means
    pseudo labels of training utterances), scored as evaluation scores them."""
    from cdino.eval.threshold import pseudo_label_scores

    scores, is_target = pseudo_label_scores(emb, labels, mean, n_trials, seed)
    emb, labels = np.asarray(emb), np.asarray(labels)
    n_clusters = int(np.unique(labels[labels >= 0]).size)
    source = (f"fitted without labels on {len(scores)} trials built from k-means ({n_clusters} "
              f"clusters) pseudo labels of {emb.shape[0]} training utterances")
    return fit_calibration(scores, is_target, prior=prior, source=source)


def read_calibration(path: PathLike) -> Calibration | None:
    """The calibration in ``path`` (a model folder's ``calibration.json``), or ``None`` when
    the file does not exist. Unknown or missing keys, wrong types and unusable values are a
    :class:`ModelFormatError` naming the file."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{path}: not readable JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path}: expected a JSON object")
    known = {f.name: f for f in fields(Calibration)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ModelFormatError(f"{path}: unknown key '{unknown[0]}' (known: {', '.join(known)})")
    for key in ("a", "b"):
        if key not in data:
            raise ModelFormatError(f"{path}: key '{key}' missing")
    values = {}
    for key, value in data.items():
        kind = known[key].type
        if kind == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str)
        if not ok:
            raise ModelFormatError(f"{path}: {key} must be a{'n' if kind == 'int' else ''} {kind}, "
                                   f"got {value!r}")
        values[key] = value
    return Calibration(**values).check(str(path))


def calibration_text(cal: Calibration) -> str:
    """The JSON text of ``calibration.json``."""
    return json.dumps(asdict(cal), indent=2) + "\n"


def write_calibration(path: PathLike, cal: Calibration) -> Path:
    """Write ``calibration.json`` atomically (a temporary file beside it, then renamed)."""
    path = Path(path)
    cal.check(str(path))
    write_text(path, calibration_text(cal))
    return path
