"""The ``kubevents`` command: produce, worker, run, pipelines, replay, topics, schema, config."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from importlib import resources
from typing import Any, NoReturn

from app import __version__
from app.errors import UserError

# The built-in pipeline; every other one is a sink pipeline declared in the settings
# (pipelines: in the YAML file, --sink flags, or KUBEVENTS_ELASTICSEARCH_URL / _MYSQL_URL).
CORE = "core"


def _settings(args: argparse.Namespace, **flags: dict[str, Any]) -> Any:
    """The one Settings of this command: flags > environment > YAML file > defaults. Pipelines
    given as kube-eventer ``--sink`` flags are added to those the file declares."""
    from app.settings import PipelineSettings, load_settings

    settings = load_settings(args.config, flags)
    sinks = getattr(args, "sink", None)
    if sinks:
        from app.sinks.kube_eventer import parse_sinks

        flagged = [PipelineSettings.model_validate(p) for p in parse_sinks(sinks)]
        settings = settings.model_copy(update={"pipelines": [*settings.pipelines, *flagged]})
    return settings


def cmd_produce(args: argparse.Namespace) -> int:
    producer_flags = {
        "namespaces": args.namespace,
        "api": args.api,
        "label_selector": args.label_selector,
        "field_selector": args.field_selector,
        "http_port": args.http_port,
        "leader_election": False if args.no_leader_election else None,
    }
    settings = _settings(args, producer=producer_flags)
    from app.producer import service as producer

    return asyncio.run(producer.run(settings))


def cmd_replay(args: argparse.Namespace) -> int:
    from app.producer.replay import replay

    settings = _settings(args)
    if args.file == "-":
        count = asyncio.run(replay(settings, sys.stdin, "<stdin>", progress=not args.quiet))
    else:
        # Only opening the dump is "cannot read": an OSError from replay() (a TLS file, a
        # socket) must not be blamed on the dump.
        try:
            fh = open(args.file, encoding="utf-8")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise UserError(f"cannot read {args.file}: {exc.strerror}") from None
        with fh:
            count = asyncio.run(replay(settings, fh, args.file, progress=not args.quiet))
    print(f"published {count} events to {settings.topics.raw}")
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from app.kafka.client import ensure_topics

    settings = _settings(args)
    created = asyncio.run(ensure_topics(settings.kafka, settings.topics))
    print("created: " + (", ".join(created) if created else "nothing (all exist)"))
    return 0


def cmd_worker(args: argparse.Namespace) -> NoReturn:
    worker_flags = {
        "web_port": args.web_port,
        "web_host": args.web_host,
        "store": args.store,
        "data_dir": args.data_dir,
    }
    settings = _settings(args, worker=worker_flags)
    # A sink pipeline's settings (an unknown id is a one-line error naming the declared ones).
    pipeline = None if args.pipeline == CORE else settings.pipeline(args.pipeline)
    app_id = settings.core.app_id if pipeline is None else pipeline.app_id
    source = settings.topics.raw if pipeline is None else settings.topics.enriched
    from app.kafka.client import ensure_topics, pin_unstarted_partitions

    # Clear error if Kafka is unreachable; every topic exists with the same partition count
    # (the core's tables are co-partitioned with the raw topic).
    asyncio.run(
        ensure_topics(settings.kafka, settings.topics, raw_partitions_must_match=pipeline is None)
    )
    asyncio.run(pin_unstarted_partitions(settings.kafka, app_id, [source]))
    import faust

    from app.testing import faults
    from app.worker import faust_fixes
    from app.worker.app import HttpService, create_app, http_server

    faust_fixes.apply()  # once, explicitly, before any Faust consumer exists
    faults.configure(settings.faults)
    app = create_app(settings, app_id)
    http = http_server(settings)
    if pipeline is None:
        from agents import core

        core.register(app, settings, http)
    else:
        from agents import sinks

        sinks.register(app, settings, http, pipeline)
    worker = faust.Worker(app, HttpService(http), loglevel=args.loglevel, redirect_stdouts=False)
    # At WARN and above Faust's terminal spinner sets the root logger to DEBUG (and filters in
    # its handler): every debug call of Faust and aiokafka then formats its record, ~7 % of the
    # core worker's CPU in bench/core.py. No spinner: the level is the level.
    worker.spinner = None
    worker.execute_from_commandline()  # runs until stopped, then exits the process


def cmd_pipelines(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(f"{CORE}\tconsumer group {settings.core.app_id}: {settings.topics.raw} -> core")
    for p in settings.sink_pipelines():
        print(f"{p.id}\tconsumer group {p.app_id}: {settings.topics.enriched} -> {p.sink}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from app.supervise import run

    settings = _settings(args)
    return run(settings, args.config, args.sink or [], only=args.only)


def cmd_schema(args: argparse.Namespace) -> int:
    text = resources.files("app").joinpath("schemas/k8s-event.v1.json").read_text()
    print(text, end="")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(json.dumps(settings.model_dump(mode="json"), indent=2))  # SecretStr prints as ****
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    print(__version__)
    return 0


def sink_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sink",
        action="append",
        metavar="URI",
        help="a sink pipeline as kube-eventer's --sink (elasticsearch:, mysql:, kafka:);"
        " repeatable; added to the pipelines of the config file",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubevents",
        description="Keep every Kubernetes Event: API server -> Kafka -> Faust -> sinks.",
    )
    parser.add_argument("--config", help="YAML settings file (also $KUBEVENTS_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("produce", help="list+watch Events and publish them to the raw topic")
    p.add_argument(
        "--namespace",
        "-n",
        action="append",
        help="watch only this namespace (repeatable; default: all)",
    )
    p.add_argument("--api", choices=["core/v1", "events.k8s.io/v1"])
    p.add_argument("--label-selector")
    p.add_argument("--field-selector")
    p.add_argument("--http-port", type=int, help="health/metrics port (0: off)")
    p.add_argument(
        "--no-leader-election",
        action="store_true",
        help="publish without holding the Lease (a single replica only)",
    )
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("worker", help="run stream-processing pipelines (Faust worker)")
    p.add_argument(
        "--pipeline",
        "-p",
        default=CORE,
        help="the pipeline to run, as its own consumer group: core, or a sink pipeline's id"
        " (kubevents pipelines lists them)",
    )
    sink_flag(p)
    p.add_argument("--web-port", type=int)
    p.add_argument("--web-host")
    p.add_argument("--store", help="table store: memory:// or rocksdb://")
    p.add_argument("--data-dir")
    p.add_argument("--loglevel", default="info")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser(
        "run",
        help="run the producer, the core and every sink pipeline as supervised processes",
    )
    p.add_argument(
        "--only",
        action="append",
        help="run only these (producer, core, a pipeline id); repeatable",
    )
    sink_flag(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("pipelines", help="list the pipelines the settings declare")
    sink_flag(p)
    p.set_defaults(func=cmd_pipelines)

    p = sub.add_parser("replay", help="publish a 'kubectl get events -A -o json' dump")
    p.add_argument("file", help="file name, or - for standard input")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("topics", help="create kubevents' topics if missing")
    p.set_defaults(func=cmd_topics)
    p = sub.add_parser("schema", help="print the enriched event's JSON Schema")
    p.set_defaults(func=cmd_schema)
    p = sub.add_parser("config", help="print the effective settings (secrets masked)")
    p.set_defaults(func=cmd_config)
    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=cmd_version)
    for command in sub.choices.values():  # --config after the command works too
        command.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from app.obs import setup_logging

    setup_logging()
    try:
        return int(args.func(args))
    except UserError as exc:
        print(f"kubevents: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"kubevents: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
