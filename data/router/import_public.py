"""Rebuild the public rows of the router's development set from their sources (see README.md).

    python data/router/import_public.py --bitext BITEXT_CSV --hwu64 HWU64_TESTSET_CSV_DIR

``BITEXT_CSV`` is Bitext's "Sample Customer Service Training Dataset" (``flags,utterance,category,
intent``); ``HWU64_TESTSET_CSV_DIR`` the ``KFold_1/testset/csv`` folder of the HWU64 corpus (one
``;``-separated file per intent). Each row gets its label from ``public_intents.csv``; an intent
missing there is an error (every intent must be reviewed), and a text seen twice is kept once.
Writes ``bitext_customer_service.csv`` and ``hwu64_sample.csv`` (``text,intent,label``) beside this
file. The script is kept for provenance: the sources are not downloaded here.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

HERE = Path(__file__).resolve().parent


def mapping() -> dict[tuple[str, str], str]:
    with (HERE / "public_intents.csv").open(newline="", encoding="utf-8") as f:
        return {(r["source"], r["intent"]): r["label"] for r in csv.DictReader(f)}


def label_of(labels: dict[tuple[str, str], str], source: str, intent: str) -> str:
    label = labels.get((source, intent)) or labels.get((source, "*"))
    if label is None:
        raise SystemExit(f"{source} intent {intent!r} is not in public_intents.csv: review it first")
    return label


def write(name: str, rows: list[tuple[str, str, str]]) -> None:
    seen: set[str] = set()
    kept = []
    for text, intent, label in rows:
        key = " ".join(text.lower().split())
        if key and key not in seen:
            seen.add(key)
            kept.append((" ".join(text.split()), intent, label))
    with (HERE / name).open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["text", "intent", "label"])
        w.writerows(kept)
    print(f"{name}: {len(kept)} rows ({len(rows) - len(kept)} duplicates dropped)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bitext", type=Path, required=True)
    ap.add_argument("--hwu64", type=Path, required=True)
    args = ap.parse_args()
    labels = mapping()
    with args.bitext.open(newline="", encoding="utf-8-sig") as f:
        bitext = [
            (r["utterance"], r["intent"], label_of(labels, "bitext", r["intent"])) for r in csv.DictReader(f)
        ]
    write("bitext_customer_service.csv", bitext)
    hwu = []
    for path in sorted(args.hwu64.glob("*.csv")):
        intent = path.stem
        with path.open(newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f, delimiter=";"):
                hwu.append((r["answer_from_anno"], intent, label_of(labels, "hwu64", intent)))
    write("hwu64_sample.csv", hwu)


if __name__ == "__main__":
    main()
