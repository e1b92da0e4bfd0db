"""Evaluation metrics (NumPy / SciPy only).

Three groups:

* **slice detection** (binary labels, probabilities): confusion counts and rates at a
  threshold (:func:`confusion_at`), :func:`auroc` (rank based, ties count one half),
  :func:`average_precision` (AUPRC), :func:`youden_threshold`,
  :func:`threshold_for_sensitivity`, and :func:`slice_metrics` bundling them.
* **score agreement** (predicted vs reference Agatston / volume / mass): :func:`pearson_r`,
  :func:`icc` (Shrout & Fleiss ICC(1,1), ICC(2,1), ICC(3,1); ICC(2,1) -- two-way random
  effects, absolute agreement, single measures -- is the default used for method
  comparison), :func:`mae`, :func:`bland_altman`, and :func:`agreement_metrics`.
* **risk categories** (``0``, ``1-10``, ``11-100``, ``101-400``, ``>400``):
  :func:`risk_confusion`, :func:`weighted_kappa` (linear by default, quadratic optional),
  :func:`risk_metrics`.

Conventions: a slice is predicted positive when ``probability >= threshold``. A metric that
is undefined for the data (e.g. AUROC with one class only) is returned as ``None``; the
``*_metrics`` helpers add a ``notes`` list saying why. Empty or mismatched input raises
:class:`~..errors.InputError`.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from ..constants import RISK_CATEGORIES
from ..errors import InputError
from ..scoring import risk_category

# ----------------------------------------------------------------------------- helpers


def _binary_inputs(labels, scores, what: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    """Labels as bool and scores as float64 1-D arrays of equal, non-zero length."""
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.size == 0:
        raise InputError("no samples: labels are empty")
    if y.shape != s.shape:
        raise InputError(f"labels ({y.size}) and {what} ({s.size}) differ in length")
    if not np.all(np.isfinite(s)):
        raise InputError(f"{what} contain NaN or infinite values")
    uniq = np.unique(y)
    if not np.all(np.isin(uniq, (0, 1, False, True))):
        raise InputError(f"binary labels must be 0/1, got values {uniq[:5].tolist()}")
    return y.astype(bool), s


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def _one_class_reason(y: np.ndarray) -> str | None:
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return f"only one class present ({n_pos} positive, {n_neg} negative)"
    return None


# ----------------------------------------------------------------------------- slice detection


def confusion_at(labels, probabilities, threshold: float) -> dict:
    """Counts and rates at ``threshold`` (prediction: probability >= threshold).

    Returns ``tp, fp, tn, fn`` and ``sensitivity`` (TP/(TP+FN)), ``specificity``
    (TN/(TN+FP)), ``fn_rate`` (1 - sensitivity), ``fp_rate`` (1 - specificity),
    ``precision`` (TP/(TP+FP)), ``npv``, ``accuracy``; a rate whose denominator is 0 is None.
    """
    y, p = _binary_inputs(labels, probabilities, "probabilities")
    pred = p >= float(threshold)
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    tn = int((~pred & ~y).sum())
    return {
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "fn_rate": _ratio(fn, tp + fn),
        "fp_rate": _ratio(fp, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "accuracy": _ratio(tp + tn, y.size),
    }


def auroc(labels, scores) -> float | None:
    """Area under the ROC curve = P(score of a random positive > random negative).

    Computed from average ranks (Mann-Whitney U), so tied positive/negative pairs count
    one half. ``None`` when only one class is present.
    """
    from scipy.stats import rankdata

    y, s = _binary_inputs(labels, scores)
    if _one_class_reason(y):
        return None
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    ranks = rankdata(s)  # average ranks for ties
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def average_precision(labels, scores) -> float | None:
    """Average precision (AUPRC): sum over distinct thresholds of (R_n - R_{n-1}) * P_n.

    Thresholds run over the distinct scores from high to low; tied scores enter together.
    ``None`` when there is no positive sample (recall undefined).
    """
    y, s = _binary_inputs(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    tp_cum = np.cumsum(y_sorted)
    fp_cum = np.cumsum(~y_sorted)
    # last index of each group of tied scores
    last = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])
    tp = tp_cum[last].astype(np.float64)
    fp = fp_cum[last].astype(np.float64)
    precision = tp / (tp + fp)
    recall = tp / n_pos
    d_recall = np.diff(np.r_[0.0, recall])
    return float(np.sum(d_recall * precision))


def youden_threshold(labels, probabilities) -> float | None:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (ties: the highest).

    Candidates are the observed probabilities. ``None`` with one class only.
    """
    y, p = _binary_inputs(labels, probabilities, "probabilities")
    if _one_class_reason(y):
        return None
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    cand = np.unique(p)
    tp = n_pos - np.searchsorted(np.sort(p[y]), cand, side="left")
    fp = n_neg - np.searchsorted(np.sort(p[~y]), cand, side="left")
    j = tp / n_pos - fp / n_neg
    best = np.flatnonzero(j >= j.max() - 1e-12)
    return float(cand[best[-1]])


def threshold_for_sensitivity(labels, probabilities, target: float = 0.90) -> float | None:
    """Highest threshold whose sensitivity (prob >= t) is at least ``target``.

    With P positives, k = ceil(target * P) of them must reach the threshold, so it is the
    k-th largest positive probability. ``None`` when there is no positive sample.
    """
    if not 0.0 < float(target) <= 1.0:
        raise InputError(f"target sensitivity must be in (0, 1], got {target}")
    y, p = _binary_inputs(labels, probabilities, "probabilities")
    pos = np.sort(p[y])[::-1]
    if pos.size == 0:
        return None
    k = max(1, math.ceil(float(target) * pos.size - 1e-9))
    return float(pos[k - 1])


def choose_thresholds(labels, probabilities, target_sensitivity: float = 0.90) -> dict:
    """A detector's operating points from validation slices.

    ``threshold``: the highest threshold keeping sensitivity >= ``target_sensitivity``;
    ``youden_threshold``: the Youden point (None with one class only). Raises ``ValueError``
    without a positive slice, since then no sensitivity threshold exists.
    """
    thr = threshold_for_sensitivity(labels, probabilities, target_sensitivity)
    if thr is None:
        raise ValueError("no calcified slice among the validation slices: cannot choose a threshold")
    return {
        "threshold": float(thr),
        "youden_threshold": youden_threshold(labels, probabilities),
        "target_sensitivity": float(target_sensitivity),
    }


def slice_metrics(labels, probabilities, threshold: float = 0.5, target_sensitivity: float = 0.90) -> dict:
    """Everything reported for a slice detector, in one JSON-ready dict.

    ``at_threshold`` holds :func:`confusion_at` at the given threshold; ``youden_threshold``
    and ``sensitivity_threshold`` are the thresholds these data would choose (report them
    from validation data, apply them to test data). ``notes`` says why a value is None.
    """
    y, p = _binary_inputs(labels, probabilities, "probabilities")
    notes = []
    reason = _one_class_reason(y)
    if reason:
        notes.append(f"AUROC and Youden threshold undefined: {reason}")
    if not y.any():
        notes.append("AUPRC and sensitivity threshold undefined: no positive sample")
    return {
        "n": int(y.size),
        "n_positive": int(y.sum()),
        "auroc": auroc(y, p),
        "auprc": average_precision(y, p),
        "at_threshold": confusion_at(y, p, threshold),
        "youden_threshold": youden_threshold(y, p),
        "target_sensitivity": float(target_sensitivity),
        "sensitivity_threshold": threshold_for_sensitivity(y, p, target_sensitivity),
        "notes": notes,
    }


# ----------------------------------------------------------------------------- agreement


def _paired(predicted, reference) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(predicted, dtype=np.float64).ravel()
    b = np.asarray(reference, dtype=np.float64).ravel()
    if a.size == 0:
        raise InputError("no samples: scores are empty")
    if a.shape != b.shape:
        raise InputError(f"predicted ({a.size}) and reference ({b.size}) scores differ in length")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise InputError("scores contain NaN or infinite values")
    return a, b


def pearson_r(predicted, reference) -> float | None:
    """Pearson correlation; ``None`` when fewer than 2 pairs or either side is constant."""
    a, b = _paired(predicted, reference)
    if a.size < 2:
        return None
    da, db = a - a.mean(), b - b.mean()
    den = math.sqrt(float(np.sum(da * da)) * float(np.sum(db * db)))
    if den == 0.0:
        return None
    return float(np.sum(da * db) / den)


def mae(predicted, reference) -> float:
    """Mean absolute error."""
    a, b = _paired(predicted, reference)
    return float(np.mean(np.abs(a - b)))


def bland_altman(predicted, reference) -> dict:
    """Bland-Altman statistics of ``predicted - reference``.

    ``bias`` = mean difference, ``sd`` = its sample SD (ddof 1), limits of agreement
    ``bias -/+ 1.96 sd`` (None for the SD and limits with a single pair).
    """
    a, b = _paired(predicted, reference)
    d = a - b
    bias = float(d.mean())
    if d.size < 2:
        return {"n": 1, "bias": bias, "sd": None, "lower_loa": None, "upper_loa": None}
    sd = float(d.std(ddof=1))
    return {"n": int(d.size), "bias": bias, "sd": sd, "lower_loa": bias - 1.96 * sd, "upper_loa": bias + 1.96 * sd}


ICC_FORMS = ("1,1", "2,1", "3,1")


def icc(ratings, form: str = "2,1") -> float | None:
    """Intraclass correlation of an (n targets, k raters) matrix (Shrout & Fleiss, 1979).

    * ``"1,1"``: one-way random effects, single measures.
    * ``"2,1"``: two-way random effects, **absolute agreement**, single measures (default;
      the usual choice for comparing a method against a reference).
    * ``"3,1"``: two-way mixed effects, consistency, single measures.

    ``None`` when the denominator vanishes (e.g. every rating identical).
    """
    if form not in ICC_FORMS:
        raise InputError(f"ICC form must be one of {ICC_FORMS}, got {form!r}")
    x = np.asarray(ratings, dtype=np.float64)
    if x.ndim != 2 or x.size == 0:
        raise InputError(f"ICC needs a non-empty (targets, raters) matrix, got shape {x.shape}")
    n, k = x.shape
    if n < 2 or k < 2:
        raise InputError(f"ICC needs at least 2 targets and 2 raters, got {n} x {k}")
    if not np.all(np.isfinite(x)):
        raise InputError("ratings contain NaN or infinite values")
    grand = x.mean()
    ss_total = float(np.sum((x - grand) ** 2))
    ss_rows = float(k * np.sum((x.mean(axis=1) - grand) ** 2))  # between targets
    ss_cols = float(n * np.sum((x.mean(axis=0) - grand) ** 2))  # between raters
    ss_err = ss_total - ss_rows - ss_cols
    bms = ss_rows / (n - 1)
    wms = (ss_total - ss_rows) / (n * (k - 1))
    jms = ss_cols / (k - 1)
    ems = ss_err / ((n - 1) * (k - 1))
    if form == "1,1":
        den = bms + (k - 1) * wms
        num = bms - wms
    elif form == "2,1":
        den = bms + (k - 1) * ems + k * (jms - ems) / n
        num = bms - ems
    else:
        den = bms + (k - 1) * ems
        num = bms - ems
    if abs(den) < 1e-12 * max(1.0, abs(bms), abs(wms), abs(jms)):
        return None
    return float(num / den)


def agreement_metrics(predicted, reference) -> dict:
    """Pearson r, ICC(2,1) and ICC(3,1), MAE and Bland-Altman of two score lists."""
    a, b = _paired(predicted, reference)
    notes = []
    r = pearson_r(a, b)
    if r is None:
        notes.append("Pearson r undefined: fewer than 2 pairs or a constant score list")
    iccs = {"icc_2_1": None, "icc_3_1": None}
    if a.size >= 2:
        pair = np.stack([a, b], axis=1)
        iccs = {"icc_2_1": icc(pair, "2,1"), "icc_3_1": icc(pair, "3,1")}
        if iccs["icc_2_1"] is None:
            notes.append("ICC undefined: all scores identical")
    else:
        notes.append("ICC undefined: fewer than 2 pairs")
    return {"n": int(a.size), "pearson_r": r, **iccs, "mae": mae(a, b), "bland_altman": bland_altman(a, b), "notes": notes}


# ----------------------------------------------------------------------------- risk categories


def _to_categories(values: Iterable, categories: Sequence[str]) -> np.ndarray:
    """Category indices from category names or from total Agatston scores (numbers)."""
    out = []
    for v in values:
        if isinstance(v, str):
            if v not in categories:
                raise InputError(f"unknown risk category {v!r}; expected one of {list(categories)}")
            out.append(categories.index(v))
        else:
            f = float(v)
            if not math.isfinite(f):
                raise InputError("Agatston scores contain NaN or infinite values")
            out.append(categories.index(risk_category(f)))
    return np.asarray(out, dtype=np.int64)


def risk_confusion(predicted, reference, categories: Sequence[str] = RISK_CATEGORIES) -> np.ndarray:
    """Confusion matrix (rows: reference category, columns: predicted category).

    ``predicted`` / ``reference`` are category names or total Agatston scores.
    """
    p = _to_categories(list(predicted), categories)
    r = _to_categories(list(reference), categories)
    if p.size == 0:
        raise InputError("no samples: risk lists are empty")
    if p.size != r.size:
        raise InputError(f"predicted ({p.size}) and reference ({r.size}) risk lists differ in length")
    m = np.zeros((len(categories), len(categories)), dtype=np.int64)
    np.add.at(m, (r, p), 1)
    return m


def weighted_kappa(confusion, weights: str = "linear") -> float | None:
    """Cohen's weighted kappa of a square confusion matrix of ordered categories.

    kappa_w = 1 - sum(w * O) / sum(w * E), with E the outer product of the marginals / N and
    w_ij = |i - j| / (c - 1) (``"linear"``) or ((i - j) / (c - 1))^2 (``"quadratic"``);
    ``"none"`` gives Cohen's unweighted kappa. ``None`` when the expected disagreement is 0
    (all ratings in one category on both sides).
    """
    o = np.asarray(confusion, dtype=np.float64)
    if o.ndim != 2 or o.shape[0] != o.shape[1] or o.shape[0] < 2:
        raise InputError(f"kappa needs a square confusion matrix with >= 2 categories, got {o.shape}")
    total = o.sum()
    if total <= 0:
        raise InputError("kappa of an empty confusion matrix")
    c = o.shape[0]
    i, j = np.indices(o.shape)
    if weights == "linear":
        w = np.abs(i - j) / (c - 1)
    elif weights == "quadratic":
        w = ((i - j) / (c - 1)) ** 2
    elif weights == "none":
        w = (i != j).astype(np.float64)
    else:
        raise InputError(f"kappa weights must be 'linear', 'quadratic' or 'none', got {weights!r}")
    e = np.outer(o.sum(axis=1), o.sum(axis=0)) / total
    den = float(np.sum(w * e))
    if den == 0.0:
        return None
    return float(1.0 - np.sum(w * o) / den)


def risk_metrics(predicted, reference, categories: Sequence[str] = RISK_CATEGORIES) -> dict:
    """Risk-category agreement: accuracy, confusion matrix, per-category rates, kappas.

    Per category (one vs rest): ``sensitivity`` = correctly predicted / reference count,
    ``specificity`` = correctly not predicted / reference others (None when undefined).
    """
    m = risk_confusion(predicted, reference, categories)
    n = int(m.sum())
    per = {}
    for k, name in enumerate(categories):
        tp = int(m[k, k])
        fn = int(m[k, :].sum() - tp)
        fp = int(m[:, k].sum() - tp)
        tn = n - tp - fn - fp
        per[name] = {"n_reference": tp + fn, "n_predicted": tp + fp,
                     "sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp)}
    notes = []
    kl = weighted_kappa(m, "linear")
    kq = weighted_kappa(m, "quadratic")
    if kl is None:
        notes.append("kappa undefined: every study in one category on both sides")
    return {
        "n": n,
        "categories": list(categories),
        "accuracy": float(np.trace(m) / n),
        "confusion": m.tolist(),
        "per_category": per,
        "kappa_linear": kl,
        "kappa_quadratic": kq,
        "notes": notes,
    }
