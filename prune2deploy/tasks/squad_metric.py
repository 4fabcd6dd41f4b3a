"""SQuAD v1.1 exact match and F1, the logic of the official evaluate-v1.1.py script.

Normalisation: lower case, strip punctuation, drop the articles a/an/the, collapse whitespace.
Per question, the max over its ground-truth answers; totals are percentages.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score(prediction: str, ground_truth: str) -> float:
    pred = normalize_answer(prediction).split()
    truth = normalize_answer(ground_truth).split()
    common = Counter(pred) & Counter(truth)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred)
    recall = same / len(truth)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def squad_v1(predictions: dict[str, str], answers: dict[str, list[str]]) -> dict[str, float]:
    """EM and F1 (percent) of `predictions` {id: text} against `answers` {id: [texts]}."""
    em = f1 = 0.0
    for qid, truths in answers.items():
        pred = predictions.get(qid, "")
        em += max(exact_match_score(pred, t) for t in truths)
        f1 += max(f1_score(pred, t) for t in truths)
    n = max(1, len(answers))
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}
