"""What the language detector (``civicsignals.common.language``) costs per text, as intake calls it
on every signal it receives, beside the same detector without its per-word cache, in the same run.

Texts: xSID's Dutch and English sentences and the cold-start bench's Turkish, Polish and Arabic
reports, each set once to warm the cache as a running service's would be, then measured; and the
intake bench's body alone. Printed: microseconds of CPU per text, the lowest of three rounds.

    .venv/bin/python bench/classifier/language_speed.py
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path

from civicsignals.common import language

HERE = Path(__file__).resolve().parent
XSID = HERE.parents[2] / "shared" / "data" / "xsid_nl_en.csv"
BODY = "Er ligt al drie dagen een berg afval naast de container op de Kerkstraat. Bel 06-12345678."


def texts() -> list[str]:
    found = [BODY]
    if XSID.is_file():
        with XSID.open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                found += [row["text_nl"], row["text_en"]]
    for code in ("tr", "pl", "ar"):
        with (HERE / f"coldstart_reports_{code}.csv").open(encoding="utf-8", newline="") as handle:
            found += [row["text"] for row in csv.DictReader(handle)]
    return found


def cpu_us_per_text(samples: list[str], rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for text in samples:
            language.detect_language(text)
        best = min(best, (time.process_time() - started) / len(samples))
    return 1e6 * best


def measured(label: str, uncached: bool, samples: list[str], body: list[str]) -> None:
    original: Callable[[str], tuple[float, float, float, float, float]] = language._word_scores
    if uncached:
        language._word_scores = original.__wrapped__  # type: ignore[attr-defined, assignment]
    try:
        cpu_us_per_text(samples, rounds=1)  # warm up (the cache, when there is one)
        print(
            f"  {label:32s} {cpu_us_per_text(samples):6.1f} us a text; intake bench's body {cpu_us_per_text(body * 2000):5.1f} us"
        )
    finally:
        language._word_scores = original  # type: ignore[assignment]


def main() -> None:
    samples = texts()
    print(f"{len(samples)} texts, one thread, lowest of three rounds (CPU time):")
    measured("without the per-word cache", True, samples, [BODY])
    measured("as shipped (per-word cache)", False, samples, [BODY])


if __name__ == "__main__":
    main()
