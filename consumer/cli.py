"""The `microbatch` command line. User mistakes print one clear line and exit 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.table import Table

from consumer import __version__
from consumer.app import StartupError, build_loop, build_target, check_kafka, database_error, describe
from consumer.cli_args import messages_per_second, positive, ratio, timestamp
from consumer.generators import NoGenerator, workload_options
from consumer.health import Health, HealthServer
from consumer.kafka_config import check_passthrough, consumer_config, producer_config
from consumer.logs import mask_secrets, setup_logging
from consumer.loop import EXIT_OK, KafkaRefused, RunLoop
from consumer.metrics import REASONS, Metrics
from consumer.operations import check_config, collect_status
from consumer.position_reset import reset_command
from consumer.produce import Ledger, ProduceError, produce_workload
from consumer.replay import ReplayError, ReplayFilter, replay
from consumer.settings import ConfigError, Settings, load_settings
from consumer.startup import EXIT_GAVE_UP, StartupGaveUp, wait_for_services
from consumer.telemetry import Telemetry
from consumer.watchdog import Watchdog
from pipeline.errors import DatabaseFailure
from pipeline.prepare import transform_of
from pipeline.spec_loader import PipelineFileError, load_pipeline
from pipeline.target import Target

EXIT_USAGE = 2
MAX_LISTED = 20  # dead letters listed one per line by `dlq replay`
log = logging.getLogger("microbatch")


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config, pipeline=getattr(args, "pipeline", None))
    check_passthrough(settings.kafka_config)  # refuse unsafe Kafka overrides before touching anything
    return settings


def cmd_run(args: argparse.Namespace) -> int:
    """Run the consumer until SIGTERM/SIGINT; the process then ends within shutdown_timeout_s."""
    # Signals first: a SIGTERM during start-up ends the process cleanly instead of killing it.
    stopping: list[RunLoop] = []
    watchdogs: list[Watchdog] = []
    requested = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal requested
        requested = True
        log.info("received %s: finishing the current window, then leaving", signal.Signals(signum).name)
        for loop in stopping:
            loop.stop()
        for watchdog in watchdogs:
            watchdog.start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    settings = _settings(args)
    setup_logging(settings.log_level, settings.log_format)
    watchdog = Watchdog(settings.shutdown_timeout_s)
    watchdogs.append(watchdog)
    if requested:
        watchdog.start()
    target = build_target(settings)
    try:
        watchdog.code = _serve(settings, target, stopping, requested=lambda: requested)
        return watchdog.code
    except StartupGaveUp as exc:
        print(f"microbatch: error: {mask_secrets(str(exc))}", file=sys.stderr)
        return EXIT_GAVE_UP
    finally:
        target.close()  # also when start-up fails: no connection is left to the garbage collector


def _serve(settings: Settings, target: Target, stopping: list[RunLoop], requested: Callable[[], bool]) -> int:
    """Serve health and metrics, wait for the services (consumer/startup.py), and run the loop until
    it is stopped. The probes answer from the start: a pod started during an outage stays up."""
    health = Health(stall_after_s=settings.health_stall_s, waiting_for="the start-up checks")
    telemetry = Telemetry(Metrics(), health)
    try:
        server = HealthServer(health, telemetry.metrics.registry, host=settings.metrics_host,
                              port=settings.metrics_port).start()  # fmt: skip
    except OSError as exc:
        raise StartupError(
            f"cannot serve /metrics on {settings.metrics_host}:{settings.metrics_port} ({exc.strerror}): "
            "choose another MICROBATCH_METRICS_PORT, or check MICROBATCH_METRICS_HOST (an address of this host)"
        ) from None
    log.info("serving /metrics, /healthz and /readyz on port %d", server.port)
    describe(telemetry.metrics, target)
    try:
        transform_of(target.spec)  # a hook that does not load is a mistake to say now, not after the waits
        if wait_for_services(settings, target, health, requested) is None:
            log.info("stopped while waiting for the services at start-up")
            return EXIT_OK
        loop = build_loop(settings, target, telemetry)
        stopping.append(loop)
        if requested():
            loop.stop()
        health.waiting_for = None
        telemetry.database(ok=True)
        log.info(
            "consuming %s as group %s into %s (max_records=%d, max_bytes=%d, max_wait_ms=%d)",
            ",".join(target.spec.topics), target.group, target.spec.raw.table,
            settings.max_records, settings.max_bytes, settings.max_wait_ms,
        )  # fmt: skip
        return loop.run()
    finally:
        server.stop()


def cmd_init_db(args: argparse.Namespace) -> int:
    """Create the pipeline's tables (idempotent); list mismatches of existing ones."""
    if args.grant_to == "public":  # refused before anything is read (PUBLIC or Public is a role of its own)
        raise StartupError(
            "--grant-to public: PostgreSQL takes the role name public, even quoted, for PUBLIC, every role: it "
            "would let every role write the pipeline's tables; name the consumer's own role"
        )
    settings = _settings(args)
    setup_logging(settings.log_level, settings.log_format)
    target = build_target(settings)
    try:
        created, mismatches = target.init_tables(grant_to=args.grant_to)
    except DatabaseFailure as error:
        raise database_error(settings, error) from None
    finally:
        target.close()
    for table in created:
        print(f"created table {target.spec.schema_name}.{table}")
    for line in (*target.upgrades, *target.granted):
        print(line)
    if mismatches:
        for mismatch in mismatches:
            print(f"mismatch: {mismatch}", file=sys.stderr)
        print("existing tables differ from the pipeline; nothing was altered or dropped", file=sys.stderr)
        return 1
    print(f"schema ready for pipeline {target.spec.name!r} ({len(created)} table(s) created)")
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    """Produce seeded events (good, bad, duplicates) for an example pipeline, chosen by its name, and
    write the expected totals; a pipeline without a generator is refused before Kafka is touched."""
    settings = _settings(args)
    setup_logging(settings.log_level, settings.log_format)
    spec = load_pipeline(settings.pipeline)
    topic = args.topic or spec.topics[0]
    options = workload_options(
        spec.name, count=args.count, seed=args.seed, bad_ratio=args.bad_ratio,
        duplicate_ratio=args.duplicate_ratio, items=args.items,
    )  # fmt: skip
    with Ledger.open(args.ledger) as ledger:
        result = produce_workload(
            producer_config(settings, "producer"), topic, options,
            partitions=args.partitions, rate=args.rate, expected=args.expected,
            on_ack=ledger.record if args.ledger else None,
        )  # fmt: skip
    rate = result.acked / max(result.seconds, 1e-9)
    print(f"produced {result.acked} messages to {topic} in {result.seconds:.1f} s ({rate:,.0f}/s)")
    if args.expected:
        print(f"expected totals written to {args.expected}")
    return 0


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    """Re-drive dead letters to their source topic (or --to), after the cause was fixed."""
    settings = _settings(args)
    setup_logging(settings.log_level, settings.log_format)
    spec = load_pipeline(settings.pipeline)
    dlq_topic = args.topic or spec.dead_letter_topic
    if not dlq_topic:
        raise StartupError(f"pipeline {spec.name!r} has no dead_letter_topic; pass --topic")
    check_kafka(settings)
    selection = ReplayFilter(
        reasons=frozenset(args.reason) if args.reason else None, since=args.since, until=args.until
    )
    try:
        summary = replay(
            consumer_config(settings, "unused"), producer_config(settings, "dlq-replay"), dlq_topic, selection,
            to_topic=args.to, dry_run=args.dry_run,
        )  # fmt: skip
    except ReplayError as exc:
        raise StartupError(str(exc)) from None
    verb = "would replay" if args.dry_run else "replayed"
    print(f"scanned {summary.scanned} dead letters in {dlq_topic}; {summary.matched} matched; "
          f"{verb} {summary.selected if args.dry_run else summary.replayed}")  # fmt: skip
    for reason, count in sorted(summary.by_reason.items()):
        print(f"  reason {reason}: {count}")
    for target, count in sorted(summary.by_target.items()):
        print(f"  to {target}: {count}")
    if summary.copies:
        print(f"skipped {summary.copies} extra {'copy' if summary.copies == 1 else 'copies'} of messages "
              "already replayed in this run")  # fmt: skip
    if summary.omitted:
        print(f"skipped {len(summary.omitted)} dead letter(s) sent without their value or key (too large for "
              "the dead-letter topic); replay these from their original topic:")  # fmt: skip
        for letter in summary.omitted[:MAX_LISTED]:
            where = f"{letter.original[0]}[{letter.original[1]}]@{letter.original[2]}" if letter.original else "unknown"
            print(f"  original {where} ({letter.size} bytes, sha256 {letter.sha256}, no {' or '.join(letter.parts)} "
                  f"in the letter), dead letter {letter.letter}")  # fmt: skip
        if len(summary.omitted) > MAX_LISTED:
            print(f"  … and {len(summary.omitted) - MAX_LISTED} more")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Per partition: stored position, Kafka-committed offset, high watermark, lag; dead-letter count."""
    settings = _settings(args)
    setup_logging("WARNING", settings.log_format)
    target = build_target(settings)
    check_kafka(settings)
    try:
        status = collect_status(settings, target)
    finally:
        target.close()
    if args.json:
        print(json.dumps(status.as_dict(), indent=2))
        return 0
    table = Table(title=f"group {status.group}")
    for column in ("topic", "partition", "stored position", "kafka committed", "high watermark", "lag"):
        table.add_column(column, justify="left" if column == "topic" else "right", no_wrap=True)
    for p in status.partitions:
        table.add_row(p.topic, str(p.partition), _or_dash(p.stored_position), _or_dash(p.kafka_committed),
                      str(p.high_watermark), str(p.lag))  # fmt: skip
    # Never shorten a topic name to fit 80 columns when the output goes to a pipe or a log: it is
    # read by grep as much as by people.
    console = Console() if sys.stdout.isatty() else Console(width=1000)
    console.print(table)
    total = sum(p.lag for p in status.partitions)
    console.print(f"total lag: {total:,} messages")
    for topic in status.missing_topics:
        console.print(f"topic {topic} does not exist: the consumer waits for it (nothing of it is consumed)")
    if status.dead_letter_topic:
        console.print(f"dead-letter topic {status.dead_letter_topic}: {status.dead_letters or 0:,} messages")
    return 0


def cmd_positions_reset(args: argparse.Namespace) -> int:
    """Move stored positions (out of a position gap, past a re-created topic); audited; see position_reset."""
    settings = _settings(args)
    setup_logging("WARNING", settings.log_format)
    for line in reset_command(settings, args.topic, args.partition, args.to, dry_run=args.dry_run):
        print(line)
    return 0


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the configuration, the pipeline, and every connection; one line per problem."""
    setup_logging("ERROR", "text")
    results = check_config(args.file or args.config, args.pipeline)
    for result in results:
        mark = "ok  " if result.ok else "FAIL"
        print(f"{mark} {result.what}: {mask_secrets(result.detail)}")
    failed = [r for r in results if not r.ok]
    print("configuration OK" if not failed else f"{len(failed)} problem(s) found")
    return 0 if not failed else EXIT_USAGE


CONFIG_HELP = "TOML file with settings (env vars override it; default: $MICROBATCH_CONFIG)"


def _config_parent() -> argparse.ArgumentParser:
    """`--config` for every subcommand (`microbatch run --config FILE`); SUPPRESS keeps a root-level one."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=CONFIG_HELP)
    return parent


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="microbatch",
        description="Kafka → PostgreSQL micro-batching consumer with exactly-once effects.",
    )
    root.add_argument("--config", type=Path, help=CONFIG_HELP)
    root.add_argument("--version", action="version", version=f"microbatch {__version__}")
    config, pipelined = _config_parent(), argparse.ArgumentParser(add_help=False)
    pipelined.add_argument("--pipeline", help="pipeline TOML file or built-in name (default: invoices)")
    commands = root.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", parents=[config, pipelined], help="consume until SIGTERM/SIGINT")
    run.set_defaults(handler=cmd_run)

    init = commands.add_parser("init-db", parents=[config, pipelined], help="create the pipeline's tables (idempotent)")
    init.add_argument("--grant-to", metavar="ROLE", help="also GRANT this role what the consumer needs, nothing more")
    init.set_defaults(handler=cmd_init_db)

    produce = commands.add_parser("produce", parents=[config], help="produce seeded events for an example pipeline")
    produce.add_argument("--count", type=positive, required=True, help="messages to produce")
    produce.add_argument("--rate", type=messages_per_second, help="messages per second (0 or none: no limit)")
    produce.add_argument("--partitions", type=positive, default=4, help="partitions when creating the topic")
    produce.add_argument("--bad-ratio", type=ratio, default=0.0, help="share of invalid messages")
    produce.add_argument("--duplicate-ratio", type=ratio, default=0.0, help="share of producer duplicates")
    produce.add_argument("--seed", type=int, default=1, help="random seed")
    produce.add_argument("--items", type=positive, help="distinct items (default: 1000; vendor-invoices: 2000)")
    produce.add_argument("--topic", help="topic (default: the pipeline's first topic)")
    produce.add_argument("--expected", type=Path, help="write the expected totals (JSON) here")
    produce.add_argument("--ledger", type=Path, help="append one JSON line per acknowledged message (for the oracle)")
    produce.add_argument("--pipeline", help="whose events to make: invoices or vendor-invoices (default: invoices)")
    produce.set_defaults(handler=cmd_produce)

    dlq = commands.add_parser("dlq", parents=[config], help="dead-letter topic tools").add_subparsers(
        dest="dlq_command", required=True
    )
    replay_cmd = dlq.add_parser("replay", parents=[config], help="re-drive dead letters to their source topic")
    replay_cmd.add_argument("--reason", action="append", choices=list(REASONS), help="only this reason (repeatable)")
    replay_cmd.add_argument("--since", type=timestamp, help="only dead letters that failed at or after this time")
    replay_cmd.add_argument("--until", type=timestamp, help="only dead letters that failed before this time")
    replay_cmd.add_argument("--to", help="produce to this topic instead of each message's original topic")
    replay_cmd.add_argument("--topic", help="dead-letter topic (default: the pipeline's)")
    replay_cmd.add_argument("--dry-run", action="store_true", help="count what would be replayed, produce nothing")
    replay_cmd.add_argument("--pipeline", help="pipeline whose dead-letter topic to read (default: invoices)")
    replay_cmd.set_defaults(handler=cmd_dlq_replay)

    positions = commands.add_parser("positions", parents=[config], help="stored position tools").add_subparsers(
        dest="positions_command", required=True
    )
    reset = positions.add_parser(
        "reset", parents=[config, pipelined], help="move stored positions (audited; safe while consumers run)"
    )
    reset.add_argument("--topic", required=True, help="the topic whose stored positions to move")
    reset.add_argument("--partition", type=int, help="only this partition (default: all of the topic's)")
    reset.add_argument("--to", required=True, help="earliest, latest, an offset, or an RFC 3339 timestamp")
    reset.add_argument("--dry-run", action="store_true", help="print what would move, write nothing")
    reset.set_defaults(handler=cmd_positions_reset)

    status = commands.add_parser(
        "status", parents=[config, pipelined], help="positions, lag and dead letters per partition"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=cmd_status)

    check = commands.add_parser(
        "check-config", parents=[config, pipelined], help="validate configuration and connectivity"
    )
    check.add_argument("file", nargs="?", type=Path, help="config file (TOML); default: --config or none")
    check.set_defaults(handler=cmd_check_config)
    return root


USER_ERRORS: tuple[type[Exception], ...] = (
    ConfigError, PipelineFileError, StartupError, ProduceError, NoGenerator, KafkaRefused,
)  # fmt: skip


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    if handler is not cmd_run:  # `run` drains on SIGTERM; the others stop like on Ctrl-C. Handled, not
        signal.signal(signal.SIGTERM, _interrupt)  # left default: PID 1 in a container ignores the default
    try:
        return handler(args)
    except USER_ERRORS as exc:
        print(f"microbatch: error: {mask_secrets(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        print(f"microbatch: interrupted ({exc.args[0] if exc.args else 'SIGINT'}): stopped", file=sys.stderr)
        return 143 if exc.args == ("SIGTERM",) else 130


if __name__ == "__main__":
    sys.exit(main())
