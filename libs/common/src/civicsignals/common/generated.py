"""Data that a service ships, generated from the classifier's default taxonomy.

Services share only ``libs/common``, so a service that needs something of the default taxonomy
(intake's Open311 catalogue, insights' topic names) ships a generated YAML copy, and its script
here writes it or, with ``--check``, fails when the shipped copy is out of date (the tests run it
that way).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

Build = Callable[[dict[str, Any]], dict[str, Any]]
"""From the parsed taxonomy, the generated document's entries beside ``taxonomy_version``."""


def render(taxonomy_path: Path, header: str, build: Build) -> str:
    taxonomy = yaml.safe_load(taxonomy_path.read_text(encoding="utf-8"))
    document = {"taxonomy_version": str(taxonomy.get("version", "")), **build(taxonomy)}
    return header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=110)


def main(
    *,
    description: str,
    script: str,
    header: str,
    build: Build,
    taxonomy: Path,
    output: Path,
    argv: list[str] | None = None,
) -> int:
    """The command line of a generating script: ``[--taxonomy FILE] [--output FILE] [--check]``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--taxonomy", type=Path, default=taxonomy)
    parser.add_argument("--output", type=Path, default=output)
    parser.add_argument("--check", action="store_true", help="only check that the output is up to date")
    args = parser.parse_args(argv)
    text = render(args.taxonomy, header, build)
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date; rerun {script}", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0
