"""``civicsignals-classifier``: run the service; train, evaluate and apply topic models.

Commands (tools outside the project call the first three; their form is fixed)::

    civicsignals-classifier train    --data FILE.csv --out DIR [--text-column text]
                                     [--topic-column topic] [--subtopic-column subtopic]
    civicsignals-classifier evaluate --model DIR --data FILE.csv [--report DIR]
    civicsignals-classifier predict  --model DIR --data FILE.csv --out FILE.csv
    civicsignals-classifier retrain  --tenant CODE [--base FILE.csv] [--activate] [--taxonomy FILE.yaml]
    civicsignals-classifier register --tenant CODE --model DIR [--activate]
    civicsignals-classifier coldstart --out DIR [--taxonomy FILE.yaml]
    civicsignals-classifier serve

Every command that reads a CSV also takes ``--split-column COLUMN --split VALUE`` to use only the
rows of one split of a file. Errors (a missing column, an unreadable file, a broken bundle, a file
without a usable row) are one line on stderr and exit status 1; ``evaluate`` prints its JSON on
stdout and nothing else. A column option that is given names a column that must be there: a typo
is an error, never silently ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from civicsignals.common.app import build_cli, run_database_command, serve

EXIT_ERROR = 1


def _add_columns(parser: argparse.ArgumentParser, *, labels: bool = True) -> None:
    parser.add_argument("--text-column", default="text", help="column with the text (default: text)")
    if labels:
        parser.add_argument("--topic-column", default="topic", help="column with the label (default: topic)")
        # None means "not given": the default column is then optional (an export with one category
        # column has none), while a column the user names must be there.
        parser.add_argument(
            "--subtopic-column",
            default=None,
            help="column with the subtopic (default: subtopic, used when the file has it; "
            "a column given here must be there)",
        )
    parser.add_argument(
        "--split-column", default=None, help="use only rows whose COLUMN has the --split value"
    )
    parser.add_argument(
        "--split", default=None, help="the value of --split-column to keep (e.g. train, test)"
    )


def _add_training(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--date-column",
        default=None,
        help="hold out the newest rows by this column (ISO 8601, or dd-mm-yyyy [HH:MM] with - or /)",
    )
    parser.add_argument(
        "--no-encoder", action="store_true", help="n-gram features only, without the sentence encoder"
    )
    parser.add_argument(
        "--no-cascade",
        action="store_true",
        help="send every text through the sentence encoder (no n-gram head that lets sure texts skip it)",
    )
    parser.add_argument("--class-weight", choices=("none", "balanced"), default="none")
    parser.add_argument("--holdout", type=float, default=0.1, help="share held out for metrics (default 0.1)")
    parser.add_argument(
        "--review-share",
        type=float,
        default=0.05,
        help="the review threshold is set so that about this share of the held-out predictions that "
        "were right fall below it (split-conformal; default 0.05)",
    )
    parser.add_argument(
        "--target-precision",
        type=float,
        default=None,
        help="also raise the threshold to where held-out precision reaches this (default: off)",
    )
    parser.add_argument("--no-learning-curve", action="store_true", help="skip the learning curve")
    parser.add_argument("--version", default=None, help="the bundle's version (default: time and data hash)")


def _parser() -> argparse.ArgumentParser:
    parser, commands = build_cli("civicsignals-classifier", __doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter

    train = commands.add_parser("train", help="train a model bundle on a labelled CSV")
    train.add_argument("--data", required=True, type=Path, metavar="FILE.csv")
    train.add_argument("--out", required=True, type=Path, metavar="DIR")
    _add_columns(train)
    _add_training(train)

    evaluate = commands.add_parser("evaluate", help="measure a model bundle on a labelled CSV")
    evaluate.add_argument("--model", required=True, type=Path, metavar="DIR")
    evaluate.add_argument("--data", required=True, type=Path, metavar="FILE.csv")
    evaluate.add_argument("--report", type=Path, default=None, metavar="DIR", help="default: <model>/report")
    _add_columns(evaluate)

    predict = commands.add_parser("predict", help="add topic, subtopic, confidence, needs_review to a CSV")
    predict.add_argument("--model", required=True, type=Path, metavar="DIR")
    predict.add_argument("--data", required=True, type=Path, metavar="FILE.csv")
    predict.add_argument("--out", required=True, type=Path, metavar="FILE.csv")
    predict.add_argument("--threshold", type=float, default=None, help="override the card's review threshold")
    _add_columns(predict, labels=False)

    retrain = commands.add_parser(
        "retrain", help="train a new version for a tenant from staff's corrections (plus a base CSV)"
    )
    retrain.add_argument("--tenant", required=True)
    retrain.add_argument("--base", type=Path, default=None, metavar="FILE.csv", help="labelled data to add")
    retrain.add_argument("--activate", action="store_true", help="make the new version the active one")
    retrain.add_argument(
        "--min-examples",
        type=int,
        default=20,
        help="refuse to train on fewer corrections and base examples (default 20)",
    )
    retrain.add_argument(
        "--taxonomy",
        type=Path,
        default=None,
        metavar="FILE.yaml",
        help="without --base: the taxonomy whose cold-start examples are added (default: the tenant "
        "folder's taxonomy.yaml, else the default taxonomy)",
    )
    _add_columns(retrain)
    _add_training(retrain)

    register = commands.add_parser("register", help="add a trained bundle to a tenant's registry")
    register.add_argument("--tenant", required=True)
    register.add_argument("--model", required=True, type=Path, metavar="DIR")
    register.add_argument("--activate", action="store_true")

    coldstart = commands.add_parser("coldstart", help="build the cold-start model of a taxonomy")
    coldstart.add_argument("--out", required=True, type=Path, metavar="DIR")
    coldstart.add_argument("--taxonomy", type=Path, default=None, metavar="FILE.yaml")
    return parser


def _options(args: argparse.Namespace) -> Any:
    from civicsignals.classifier.pipeline import TrainOptions

    if not 0 <= args.holdout < 1:
        raise ValueError("--holdout must be in [0, 1)")
    if not 0 < args.review_share < 1:
        raise ValueError("--review-share must be in (0, 1)")
    if args.target_precision is not None and not 0 < args.target_precision <= 1:
        raise ValueError("--target-precision must be in (0, 1]")
    return TrainOptions(
        encoder=not args.no_encoder,
        class_weight=None if args.class_weight == "none" else "balanced",
        holdout=args.holdout,
        review_share=args.review_share,
        target_precision=args.target_precision,
        learning_curve=not args.no_learning_curve,
        cascade=not args.no_cascade,
    )


def _check_split(args: argparse.Namespace) -> None:
    """One of ``--split-column`` and ``--split`` alone would filter nothing: refuse it."""
    if args.split is not None and args.split_column is None:
        raise ValueError(
            "--split needs --split-column, the column to filter on (e.g. --split-column split --split test)"
        )
    if args.split_column is not None and args.split is None:
        raise ValueError(
            "--split-column needs --split, the value to keep (e.g. --split-column split --split test)"
        )


def _refuse_no_usable_row(
    args: argparse.Namespace,
    path: Path,
    what: str,
    *,
    rows: int,
    dropped_by_split: int,
    split_values: list[str],
    skipped_empty: int = 0,
    skipped_unlabelled: int = 0,
) -> None:
    """One line saying why no row of ``path`` could be used: an outside tool would otherwise record
    a figure of nothing (accuracy 0.0 of 0 rows) as a real result."""
    total = rows + dropped_by_split
    if args.split_column is not None:
        why = f"the split filter {args.split_column} = {args.split!r} kept {rows} of its {total} rows"
        if not rows:
            why += f" (that column has {', '.join(repr(v) for v in split_values) or 'no values'})"
    else:
        why = f"it has {total} rows" if total else "it has no rows below its header"
    skips = [
        f"{count} {reason}"
        for count, reason in (
            (skipped_empty, "with an empty text"),
            (skipped_unlabelled, "with a text but no topic"),
        )
        if count
    ]
    if skips:
        why += ", " + " and ".join(skips)
    raise ValueError(f"{path}: no usable row to {what}: {why}")


def _read_labelled(args: argparse.Namespace, path: Path, what: str, *, date_column: str | None = None) -> Any:
    """Read a labelled CSV as the column options say; refuse one without a usable row."""
    from civicsignals.classifier.data import DEFAULT_SUBTOPIC_COLUMN, read_labelled

    _check_split(args)
    data = read_labelled(
        path,
        text_column=args.text_column,
        topic_column=args.topic_column,
        subtopic_column=args.subtopic_column or DEFAULT_SUBTOPIC_COLUMN,
        subtopic_required=args.subtopic_column is not None,
        split_column=args.split_column,
        split=args.split,
        date_column=date_column,
    )
    if not len(data):
        _refuse_no_usable_row(
            args,
            path,
            what,
            rows=data.rows,
            dropped_by_split=data.dropped_by_split,
            split_values=data.split_values,
            skipped_empty=data.skipped_empty,
            skipped_unlabelled=data.skipped_unlabelled,
        )
    if data.skipped_empty or data.skipped_unlabelled:
        print(
            f"{path}: skipped {data.skipped_empty} rows with an empty text and "
            f"{data.skipped_unlabelled} without a topic",
            file=sys.stderr,
        )
    return data


def _train(args: argparse.Namespace) -> int:
    from civicsignals.classifier.pipeline import train_bundle

    options = _options(args)
    data = _read_labelled(args, args.data, "train on", date_column=args.date_column)
    card = train_bundle(data, args.out, options=options, version=args.version)
    held = card.get("heldout", {})
    print(
        f"wrote {args.out}: version {card['version']}, {card['training_data']['examples']} examples, "
        f"{card['labels']} labels, held-out accuracy per topic {held.get('accuracy', 'n/a')}, "
        f"macro-F1 {held.get('macro_f1', 'n/a')}"
        + (f" (per topic and subtopic {held['subtopic']['accuracy']})" if "subtopic" in held else "")
        + f", threshold {card['threshold']}",
        file=sys.stderr,
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from civicsignals.classifier.model.inference import TopicModel
    from civicsignals.classifier.pipeline import evaluate, write_report

    model = TopicModel(args.model)
    data = _read_labelled(args, args.data, "evaluate")
    metrics, notes = evaluate(model, data)
    report_dir = args.report or (Path(args.model) / "report")
    report = write_report(report_dir, metrics, notes, model.card, data)
    result = {
        **metrics.to_dict(),
        "level": notes["level"],
        "model_version": model.version,
        "threshold": notes["threshold"],
        "accepted": notes["accepted"],
        "accuracy_accepted": notes["accuracy_accepted"],
        "skipped_empty": data.skipped_empty,
        "skipped_unlabelled": data.skipped_unlabelled,
        "report": str(report),
    }
    by_label = notes.get("subtopic")
    if by_label is not None:
        result["subtopic"] = {**by_label.to_dict(), "accuracy_accepted": notes["subtopic_accuracy_accepted"]}
    print(json.dumps(result, ensure_ascii=False))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from civicsignals.classifier.data import read_texts
    from civicsignals.classifier.model.inference import TopicModel
    from civicsignals.classifier.pipeline import predict_rows, write_predictions

    model = TopicModel(args.model)
    _check_split(args)
    rows = read_texts(
        args.data, text_column=args.text_column, split_column=args.split_column, split=args.split
    )
    if not rows.rows:
        # Rows with an empty text are written back blank (documented); no row at all is refused.
        _refuse_no_usable_row(
            args,
            args.data,
            "predict",
            rows=0,
            dropped_by_split=rows.dropped_by_split,
            split_values=rows.split_values,
        )
    labels, confidences, review = predict_rows(model, rows.texts, threshold=args.threshold)
    write_predictions(rows, labels, confidences, review, args.out)
    print(
        f"wrote {args.out}: {len(rows.texts)} texts classified, {sum(review)} need review, "
        f"{rows.skipped_empty} rows with an empty text skipped",
        file=sys.stderr,
    )
    return 0


async def _register_async(tenant: str, bundle: Path, *, kind: str, activate: bool, actor: str) -> str:
    from sqlmodel import SQLModel

    from civicsignals.classifier import models as _tables  # noqa: F401 - registers the tables
    from civicsignals.classifier import service
    from civicsignals.classifier.settings import ClassifierSettings
    from civicsignals.common import audit
    from civicsignals.common.db import create_engine, create_schema, session_factory
    from civicsignals.common.events import check_code

    check_code(tenant, "tenant")
    settings = ClassifierSettings()
    version, target = service.install_bundle(settings.models_dir, tenant, bundle)
    from civicsignals.classifier.model.inference import TopicModel, read_card

    TopicModel(target)  # refuse a bundle that does not load before anything is recorded
    engine = create_engine(settings.database_url)
    try:
        await create_schema(engine, SQLModel.metadata)
        sessions = session_factory(engine)
        async with sessions() as session, session.begin():
            await service.register(session, tenant, read_card(target), kind=kind, actor=actor)
            audit.record(
                session,
                tenant=tenant,
                actor=actor,
                action="model.register",
                object=f"model:{version}",
                result="ok",
                service="classifier",
            )
            if activate:
                await service.activate(session, tenant, version, actor=actor)
                audit.record(
                    session,
                    tenant=tenant,
                    actor=actor,
                    action="model.activate",
                    object=f"model:{version}",
                    result="ok",
                    service="classifier",
                )
    finally:
        await engine.dispose()
    return version


async def _corrections(tenant: str) -> Any:
    from sqlmodel import SQLModel

    from civicsignals.classifier import models as _tables  # noqa: F401
    from civicsignals.classifier import service
    from civicsignals.classifier.settings import ClassifierSettings
    from civicsignals.common.db import create_engine, create_schema, session_factory

    settings = ClassifierSettings()
    engine = create_engine(settings.database_url)
    try:
        await create_schema(engine, SQLModel.metadata)
        async with session_factory(engine)() as session:
            return service.corrections_as_data(await service.corrections(session, tenant))
    finally:
        await engine.dispose()


def _retrain_taxonomy(args: argparse.Namespace) -> Any:
    """The taxonomy whose cold-start examples ``retrain`` adds: ``--taxonomy``, else the one the
    tenant is served with (its folder's ``taxonomy.yaml``), else the default one."""
    from civicsignals.classifier.settings import ClassifierSettings
    from civicsignals.classifier.taxonomy import load_taxonomy

    if args.taxonomy is not None:
        return load_taxonomy(args.taxonomy)
    path = ClassifierSettings().tenants_dir / args.tenant / "taxonomy.yaml"
    return load_taxonomy(path if path.is_file() else None)


def _retrain(args: argparse.Namespace) -> int:
    from civicsignals.classifier.data import LabelledData
    from civicsignals.classifier.pipeline import retraining_data, train_bundle

    options = _options(args)
    if args.base is None:
        for flag, value in (
            ("--subtopic-column", args.subtopic_column),
            ("--date-column", args.date_column),
            ("--split-column", args.split_column),
            ("--split", args.split),
        ):
            if value is not None:
                raise ValueError(f"{flag} applies to the --base file, and no --base was given")
    elif args.taxonomy is not None:
        raise ValueError(
            "--taxonomy applies without --base only (cold-start examples are not mixed with a base)"
        )
    corrections: LabelledData = asyncio.run(_corrections(args.tenant))
    if args.base is not None:
        base = _read_labelled(args, args.base, "retrain on", date_column=args.date_column)
        data = retraining_data(corrections, base=base)
    else:
        data = retraining_data(corrections, taxonomy=_retrain_taxonomy(args))
    parts = data.extra["parts"]
    reports = len(data) - sum(data.train_only or [])
    if reports < args.min_examples:
        raise ValueError(
            f"only {reports} examples ({parts}; cold-start examples do not count); retrain needs at least "
            f"{args.min_examples} (--min-examples)"
        )
    with tempfile.TemporaryDirectory(prefix="retrain-") as tmp:
        bundle = Path(tmp) / "bundle"
        card = train_bundle(
            data,
            bundle,
            options=options,
            version=args.version,
            card_extra={"tenant": args.tenant, "retrained": parts},
        )
        version = asyncio.run(
            _register_async(
                args.tenant, bundle, kind="retrained", activate=args.activate, actor="cli:retrain"
            )
        )
    held = card.get("heldout", {})
    print(
        f"tenant {args.tenant}: registered version {version} ({parts}), held-out accuracy "
        f"{held.get('accuracy', 'n/a')}{', now active' if args.activate else ''}",
        file=sys.stderr,
    )
    return 0


def _register(args: argparse.Namespace) -> int:
    version = asyncio.run(
        _register_async(args.tenant, args.model, kind="trained", activate=args.activate, actor="cli:register")
    )
    print(
        f"tenant {args.tenant}: registered version {version}{', now active' if args.activate else ''}",
        file=sys.stderr,
    )
    return 0


def _coldstart(args: argparse.Namespace) -> int:
    from civicsignals.classifier.model.coldstart import build_default_bundle
    from civicsignals.classifier.taxonomy import load_taxonomy

    taxonomy = load_taxonomy(args.taxonomy)
    out = Path(args.out)
    staging = out.with_name(f".{out.name}.building")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        build_default_bundle(staging, taxonomy)
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote the cold-start model of taxonomy {taxonomy.version} to {args.out}", file=sys.stderr)
    return 0


COMMANDS = {
    "train": _train,
    "evaluate": _evaluate,
    "predict": _predict,
    "retrain": _retrain,
    "register": _register,
    "coldstart": _coldstart,
}


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from civicsignals.classifier.app import create_app
        from civicsignals.classifier.settings import ClassifierSettings

        settings = ClassifierSettings()
        serve(lambda: create_app(settings), settings.host, settings.port, settings.log_level)
        return
    if args.command in ("migrate", "makemigration"):
        from civicsignals.classifier.settings import ClassifierSettings

        run_database_command(args, ClassifierSettings())
        return
    from civicsignals.classifier.data import CsvError
    from civicsignals.classifier.model.encoder import EncoderUnavailable
    from civicsignals.classifier.model.inference import BundleError
    from civicsignals.classifier.taxonomy import TaxonomyError

    try:
        code = COMMANDS[args.command](args)
    except (CsvError, BundleError, EncoderUnavailable, TaxonomyError, ValueError, OSError) as exc:
        print(f"civicsignals-classifier {args.command}: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    sys.exit(code)
