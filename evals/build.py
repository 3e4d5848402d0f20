"""Write the shipped suites' cases (and the SQuAD paragraphs to ingest) from ../shared/data.

    python -m evals.build [--data ../shared/data] [--out evals] [--suite reviews-json ...]

Deterministic: the same data and seed give the same files, byte for byte. Nothing here is
copied into the repository: SciFact is CC BY-NC, and the reviews and SQuAD files are cheaper
to regenerate than to review. Cases are written in an interleaved order (labels, sources,
answerable and impossible questions take turns), so any `--limit N` prefix is balanced.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
SEED = 12
# Held-out shares: the rest of the reviews is the few-shot pool (and issue 13's training set);
# the rest of the SQuAD paragraphs' questions is left for training a grounded-qa adapter.
REVIEWS_HELD_OUT = 0.2
SQUAD_HELD_OUT = 1 / 3
# The shipped adapters' training sets (issue 13), drawn from the non-scored rows with the seed,
# balanced: reviews per label, SQuAD questions answerable / impossible. Sized for a CPU run of
# minutes, not hours.
REVIEWS_ADAPTER_TRAIN = 200
SQUAD_ADAPTER_TRAIN = 100
REFUSAL = "I don't know"

Row = dict[str, Any]


def _read_jsonl(path: Path) -> list[Row]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path: Path, rows: Iterable[Row]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def interleave(rows: Sequence[Row], key: Callable[[Row], Any]) -> list[Row]:
    """`rows` round-robin over the groups `key` makes (groups in sorted order, rows in order)."""
    groups: dict[Any, list[Row]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    ordered = [groups[k] for k in sorted(groups)]
    out: list[Row] = []
    for i in range(max((len(g) for g in ordered), default=0)):
        out.extend(g[i] for g in ordered if i < len(g))
    return out


def build_reviews(data: Path, out: Path, seed: int = SEED) -> dict[str, int]:
    """reviews-json: held-out cases and a disjoint few-shot pool, split by distinct text."""
    rows = _read_jsonl(data / "reviews" / "reviews.jsonl")
    texts = sorted({r["text"].strip() for r in rows})
    random.Random(seed).shuffle(texts)
    held_out = set(texts[: round(len(texts) * REVIEWS_HELD_OUT)])

    def record(r: Row) -> Row:
        return {
            "text": r["text"].strip(),
            "label_json": {"sentiment": r["label_name"]},
            "source": r["source"],
        }

    seen: set[str] = set()
    cases: list[Row] = []
    pool: list[Row] = []
    for r in rows:
        text = r["text"].strip()
        if text in seen:  # a sentence written twice (sometimes with two labels): keep the first
            continue
        seen.add(text)
        (cases if text in held_out else pool).append(record(r))
    rng = random.Random(seed)
    rng.shuffle(cases)
    ordered = interleave(cases, lambda r: (r["label_json"]["sentiment"], r["source"]))
    folder = out / "reviews-json"
    return {
        "cases": _write_jsonl(
            folder / "cases.jsonl",
            ({"id": f"review-{i}", "vars": r} for i, r in enumerate(ordered)),
        ),
        "few-shot pool": _write_jsonl(folder / "train.jsonl", pool),
        "adapter training chats": _write_jsonl(
            folder / "adapter-train.jsonl", _review_chats(pool, REVIEWS_ADAPTER_TRAIN, seed)
        ),
    }


def _balanced(rows: Sequence[Row], n: int, key: Callable[[Row], Any], seed: int) -> list[Row]:
    """`n` of `rows` drawn with `seed`, the same number from each group of `key` (interleaved)."""
    groups: dict[Any, list[Row]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    rng = random.Random(seed)
    per_group = n // len(groups)
    drawn: list[Row] = []
    for k in sorted(groups):
        pool = list(groups[k])
        rng.shuffle(pool)
        drawn += pool[:per_group]
    return interleave(drawn, key)


def _review_chats(pool: Sequence[Row], n: int, seed: int) -> Iterable[Row]:
    """The review-json adapter's chats: the review alone in the user turn (route `review` sends
    no instruction), the compact label JSON as the answer."""
    for r in _balanced(pool, n, lambda r: r["label_json"]["sentiment"], seed):
        answer = json.dumps(r["label_json"], separators=(",", ":"))
        yield {
            "messages": [
                {"role": "user", "content": r["text"]},
                {"role": "assistant", "content": answer},
            ]
        }


def build_squad(data: Path, out: Path, seed: int = SEED) -> dict[str, int]:
    """squad-qa: every unique paragraph as a corpus document, and the questions of a held-out
    third of the paragraphs as cases (split by paragraph, never by question)."""
    questions = _read_jsonl(data / "squad2-sample" / "questions.jsonl")
    paragraphs: dict[str, Row] = {}
    for q in questions:
        doc_id = f"{q['title']}-{q['paragraph_idx']}"
        paragraphs.setdefault(
            doc_id, {"_id": doc_id, "title": q["title"].replace("_", " "), "text": q["context"]}
        )
    ids = sorted(paragraphs)
    random.Random(seed).shuffle(ids)
    held_out = set(ids[: round(len(ids) * SQUAD_HELD_OUT)])

    cases: list[Row] = []
    rest: list[Row] = []
    for q in questions:
        doc_id = f"{q['title']}-{q['paragraph_idx']}"
        impossible = bool(q["is_impossible"])
        asserts = (
            [{"type": "refusal", "metric": "refusal"}]
            if impossible
            else [{"type": "icontains-any", "value": q["answers"], "metric": "containment"}]
        )
        case = {
            "id": q["id"],
            "vars": {
                "question": q["question"],
                "paragraph": doc_id,
                "answers": q["answers"],
                "is_impossible": impossible,
            },
            "assert": asserts,
        }
        (cases if doc_id in held_out else rest).append(case)
    random.Random(seed).shuffle(cases)
    ordered = interleave(cases, lambda c: c["vars"]["is_impossible"])
    folder = out / "squad-qa"
    return {
        "paragraphs": _write_jsonl(
            folder / "corpus" / "paragraphs.jsonl", (paragraphs[i] for i in sorted(paragraphs))
        ),
        "cases": _write_jsonl(folder / "cases.jsonl", ordered),
        "other paragraphs' questions": _write_jsonl(folder / "train.jsonl", rest),
        "adapter training questions": _write_jsonl(
            folder / "adapter-cases.jsonl", _qa_cases(rest, SQUAD_ADAPTER_TRAIN, seed)
        ),
    }


def _qa_cases(rest: Sequence[Row], n: int, seed: int) -> Iterable[Row]:
    """The grounded-qa adapter's questions, for `ragtune dataset build --route qa`: half
    answerable (the first gold answer), half impossible (exactly the refusal)."""
    for case in _balanced(rest, n, lambda c: c["vars"]["is_impossible"], seed):
        v = case["vars"]
        answer = REFUSAL if v["is_impossible"] else v["answers"][0]
        yield {"id": case["id"], "question": v["question"], "answer": answer}


def build_scifact(data: Path, out: Path, seed: int = SEED) -> dict[str, int]:
    """scifact-retrieval: the 300 test queries with their gold document ids (qrels/test.tsv)."""
    root = data / "scifact"
    claims = {q["_id"]: q["text"] for q in _read_jsonl(root / "queries.jsonl")}
    gold: dict[str, list[str]] = {}
    lines = (root / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()
    for line in lines[1:]:
        query_id, doc_id, score = line.strip().split("\t")
        if int(score) > 0:
            gold.setdefault(query_id, []).append(doc_id)
    ordered = sorted(gold, key=int)
    random.Random(seed).shuffle(ordered)
    # The gold ids go in the case's own assertion: `retrieved` takes a list of doc ids.
    cases = (
        {
            "id": f"claim-{q}",
            "vars": {"claim": claims[q]},
            "assert": [{"type": "retrieved", "value": gold[q], "metric": "hit@10"}],
        }
        for q in ordered
    )
    return {"cases": _write_jsonl(out / "scifact-retrieval" / "cases.jsonl", cases)}


BUILDERS: dict[str, Callable[[Path, Path, int], dict[str, int]]] = {
    "reviews-json": build_reviews,
    "squad-qa": build_squad,
    "scifact-retrieval": build_scifact,
}


def build(data: Path, out: Path, suites: Sequence[str] = (), seed: int = SEED) -> dict[str, Any]:
    """Write the named suites' files (all by default) under `out`; what was written, counted."""
    missing = [s for s in suites if s not in BUILDERS]
    if missing:
        raise ValueError(f"unknown suite {missing[0]!r}; the suites: {', '.join(BUILDERS)}")
    if not data.is_dir():
        raise FileNotFoundError(
            f"no data folder {data}; pass --data (the folder with reviews/, squad2-sample/, "
            "scifact/)"
        )
    return {name: BUILDERS[name](data, out, seed) for name in suites or BUILDERS}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.build", description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--out", type=Path, default=REPO / "evals", help="where the suites are")
    parser.add_argument(
        "--suite", action="append", default=[], choices=list(BUILDERS), help="(repeatable)"
    )
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    try:
        written = build(args.data, args.out, args.suite, args.seed)
    except (OSError, ValueError, KeyError) as exc:
        print(f"evals.build: error: {exc}", file=sys.stderr)
        return 2
    for suite, counts in written.items():
        print(f"{suite}: " + ", ".join(f"{n} {what}" for what, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
