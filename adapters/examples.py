"""Ready-made training sets: labelled data turned into chat records for a format adapter."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.errors import InvalidInput, NotFound

REVIEWS_SYSTEM = "Classify the sentiment of the review. Reply with JSON only."
SENTIMENTS = {0: "negative", 1: "positive"}


@dataclass(frozen=True)
class Review:
    line: int
    text: str
    label: int
    source: str


@dataclass(frozen=True)
class Split:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    # (source, sentiment) -> (train count, eval count)
    strata: dict[tuple[str, str], tuple[int, int]]


def read_reviews(path: Path) -> list[Review]:
    """Read `{"text", "label": 0|1, "source"}` lines; errors name the line."""
    if not path.is_file():
        raise NotFound(f"reviews file {path} does not exist")
    reviews: list[Review] = []
    with path.open(encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"{path} line {number}: not valid JSON ({exc.msg})") from exc
            text, label, source = (
                (row.get("text"), row.get("label"), row.get("source", ""))
                if isinstance(row, dict)
                else (None, None, None)
            )
            if not isinstance(text, str) or not text.strip() or label not in SENTIMENTS:
                raise InvalidInput(
                    f"{path} line {number}: needs a non-empty string 'text' and a 'label' of 0 "
                    f"(negative) or 1 (positive); fix or remove the line"
                )
            reviews.append(Review(number, text.strip(), int(label), str(source)))
    if not reviews:
        raise InvalidInput(f"{path} holds no reviews")
    return reviews


def review_record(text: str, label: int) -> dict[str, Any]:
    """The chat record for one review: system instruction, review, compact JSON answer."""
    answer = json.dumps({"sentiment": SENTIMENTS[label]}, separators=(",", ":"))
    return {
        "messages": [
            {"role": "system", "content": REVIEWS_SYSTEM},
            {"role": "user", "content": text},
            {"role": "assistant", "content": answer},
        ]
    }


def split_reviews(reviews: list[Review], n_train: int, n_eval: int, seed: int) -> Split:
    """Disjoint train and eval sets, each spread evenly over (source, label) strata.

    Each stratum is shuffled once with `seed`: its first picks go to train, the next to eval.
    """
    if n_train < 0 or n_eval < 0 or n_train + n_eval == 0:
        raise InvalidInput("--n-train and --n-eval must be >= 0 and not both 0")
    strata: dict[tuple[str, str], list[Review]] = defaultdict(list)
    for review in reviews:
        strata[(review.source, SENTIMENTS[review.label])].append(review)
    keys = sorted(strata)
    train_counts = _spread(n_train, len(keys))
    eval_counts = _spread(n_eval, len(keys))
    rng = random.Random(seed)
    train: list[dict[str, Any]] = []
    evaluation: list[dict[str, Any]] = []
    sizes: dict[tuple[str, str], tuple[int, int]] = {}
    for key, n_tr, n_ev in zip(keys, train_counts, eval_counts, strict=True):
        pool = strata[key]
        if n_tr + n_ev > len(pool):
            raise InvalidInput(
                f"stratum source={key[0]!r} sentiment={key[1]} has {len(pool)} reviews but the "
                f"split needs {n_tr + n_ev} from it; lower --n-train/--n-eval"
            )
        rng.shuffle(pool)
        train += [review_record(r.text, r.label) for r in pool[:n_tr]]
        evaluation += [review_record(r.text, r.label) for r in pool[n_tr : n_tr + n_ev]]
        sizes[key] = (n_tr, n_ev)
    # Interleave the strata so every batch sees a mix of sources and labels.
    rng.shuffle(train)
    rng.shuffle(evaluation)
    return Split(train=train, eval=evaluation, strata=sizes)


def _spread(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def write_jsonl(records: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    path.write_text("".join(lines), encoding="utf-8")
