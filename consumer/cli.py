"""The `microbatch` command line. User mistakes print one clear line and exit 2, never a traceback."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from consumer.app import (
    StartupError,
    build_pipeline,
    build_runner,
    check_database,
    check_kafka,
    database_error,
)
from consumer.kafka_config import producer_config
from consumer.logs import setup_logging
from consumer.produce import ProduceError, produce_workload
from consumer.settings import ConfigError, Settings, load_settings
from consumer.workload import WorkloadOptions
from pipeline.spec_loader import PipelineFileError, load_pipeline
from pipeline.writer import WriteError

EXIT_USAGE = 2
log = logging.getLogger("microbatch")


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, pipeline=getattr(args, "pipeline", None))


def cmd_run(args: argparse.Namespace) -> int:
    """Run the consumer until SIGTERM/SIGINT."""
    settings = _settings(args)
    setup_logging(settings.log_level, settings.log_format)
    pipeline = build_pipeline(settings)
    check_database(settings, pipeline)
    check_kafka(settings)
    runner = build_runner(settings, pipeline)

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: finishing the current window, then leaving", signal.Signals(signum).name)
        runner.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "consuming %s as group %s into %s (max_records=%d, max_bytes=%d, max_wait_ms=%d)",
        ",".join(pipeline.spec.topics), pipeline.group, pipeline.spec.raw.table,
        settings.max_records, settings.max_bytes, settings.max_wait_ms,
    )  # fmt: skip
    try:
        return runner.run()
    finally:
        pipeline.close()


def cmd_init_db(args: argparse.Namespace) -> int:
    """Create the pipeline's tables (idempotent); list mismatches of existing ones."""
    settings = _settings(args)
    setup_logging(settings.log_level, settings.log_format)
    pipeline = build_pipeline(settings)
    try:
        created, mismatches = pipeline.init_tables()
    except WriteError as error:
        raise database_error(settings, error) from None
    finally:
        pipeline.close()
    for table in created:
        print(f"created table {pipeline.spec.schema_name}.{table}")
    if mismatches:
        for mismatch in mismatches:
            print(f"mismatch: {mismatch}", file=sys.stderr)
        print(
            "existing tables differ from the pipeline; nothing was altered or dropped",
            file=sys.stderr,
        )
        return 1
    print(f"schema ready for pipeline {pipeline.spec.name!r} ({len(created)} table(s) created)")
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    """Produce seeded invoice events (good, bad, duplicates) and write the expected totals."""
    settings = _settings(args)
    setup_logging(settings.log_level, settings.log_format)
    spec = load_pipeline(settings.pipeline)
    topic = args.topic or spec.topics[0]
    options = WorkloadOptions(
        count=args.count, seed=args.seed, bad_ratio=args.bad_ratio,
        duplicate_ratio=args.duplicate_ratio, items=args.items,
    )  # fmt: skip
    result = produce_workload(
        producer_config(settings, "producer"), topic, options,
        partitions=args.partitions, rate=args.rate, expected=args.expected,
    )  # fmt: skip
    rate = result.acked / max(result.seconds, 1e-9)
    print(f"produced {result.acked} messages to {topic} in {result.seconds:.1f} s ({rate:,.0f}/s)")
    if args.expected:
        print(f"expected totals written to {args.expected}")
    return 0


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="microbatch",
        description="Kafka → PostgreSQL micro-batching consumer with exactly-once effects.",
    )
    root.add_argument("--config", type=Path, help="TOML file with settings (env vars override it)")
    commands = root.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="consume until SIGTERM/SIGINT")
    run.add_argument("--pipeline", help="pipeline TOML file or built-in name (default: invoices)")
    run.set_defaults(handler=cmd_run)

    init = commands.add_parser("init-db", help="create the pipeline's tables (idempotent)")
    init.add_argument("--pipeline", help="pipeline TOML file or built-in name (default: invoices)")
    init.set_defaults(handler=cmd_init_db)

    produce = commands.add_parser("produce", help="produce seeded invoice events")
    produce.add_argument("--count", type=_positive, required=True, help="messages to produce")
    produce.add_argument("--rate", type=float, help="messages per second (default: as fast as possible)")
    produce.add_argument("--partitions", type=_positive, default=4, help="partitions when creating the topic")
    produce.add_argument("--bad-ratio", type=_ratio, default=0.0, help="share of invalid messages")
    produce.add_argument("--duplicate-ratio", type=_ratio, default=0.0, help="share of producer duplicates")
    produce.add_argument("--seed", type=int, default=1, help="random seed")
    produce.add_argument("--items", type=_positive, default=1000, help="distinct item ids")
    produce.add_argument("--topic", help="topic (default: the pipeline's first topic)")
    produce.add_argument("--expected", type=Path, help="write the expected totals (JSON) here")
    produce.add_argument("--pipeline", help="pipeline whose topic to use (default: invoices)")
    produce.set_defaults(handler=cmd_produce)
    return root


USER_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    PipelineFileError,
    StartupError,
    ProduceError,
)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except USER_ERRORS as exc:
        print(f"microbatch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
