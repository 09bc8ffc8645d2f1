"""The OTA commands: ``edgekit serve``, ``edgekit publish``, ``edgekit pull`` and ``edgekit ota ...``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from edgekit.cli._app import _wrapped, app
from edgekit.errors import AuthError, OtaRequestError
from edgekit.ota.operator import bundle_tar, call, retrying

ota_app = typer.Typer(help="OTA keys, repository, tokens and rollouts (the service itself: edgekit serve).",
                      no_args_is_help=True)
TOKEN_ENV = "EDGEKIT_OTA_TOKEN"


Server = Annotated[str, typer.Option("--server", help="The OTA service's URL, e.g. http://127.0.0.1:8080")]
Model = Annotated[str, typer.Option("--model", help="Model name")]
Channel = Annotated[str, typer.Option("--channel", help="Channel name, e.g. stable or beta")]
Token = Annotated[str | None, typer.Option("--token", help=f"API token (default: ${TOKEN_ENV})", show_default=False)]
RegistryUrl = Annotated[str | None, typer.Option("--registry", help="postgresql://... (default: SQLite in --data)")]
StorageUrl = Annotated[str | None, typer.Option(
    "--storage", help="s3://BUCKET or s3://BUCKET/PREFIX, with ?endpoint=URL&region=R, credentials from AWS_* variables "
                      "(default: files in --data)")]
Data = Annotated[Path | None, typer.Option("--data", help="The service's data directory")]


def _token(token: str | None) -> str:
    token = token or os.environ.get(TOKEN_ENV)
    if not token:
        raise AuthError(f"this command needs an API token: pass --token or set {TOKEN_ENV} "
                        "(create one with `edgekit ota token`)")
    return token


def _echo(result: Any, as_json: bool, line: str) -> None:
    typer.echo(json.dumps(result, indent=2) if as_json else line)


@ota_app.command()
def keygen(keys: Annotated[Path, typer.Argument(help="Directory for the five role keys (created, mode 0700)")]) -> None:
    """Generate ed25519 keys for root, targets, bins, snapshot and timestamp (development; see the README for production)."""
    from edgekit.ota.service.repository import generate_keys

    ids = generate_keys(keys)
    for role, keyid in ids.items():
        typer.echo(f"{role:9} {keyid}")
    typer.echo(f"keys written to {keys}; keep root.pem and targets.pem offline once the repository exists")


@ota_app.command()
def init(
    keys: Annotated[Path, typer.Option("--keys", help="The directory edgekit ota keygen wrote")],
    data: Data = None, registry: RegistryUrl = None, storage: StorageUrl = None,
) -> None:
    """Create the TUF repository and the first admin token (printed once)."""
    from edgekit.ota.service.backends import open_backends
    from edgekit.ota.service.repository import Repository

    files, db = open_backends(data, registry, storage)
    repo = Repository.create(files, keys)
    token = db.create_token("admin", ["admin"])
    root = (data or Path(".")) / "root.json"
    root.parent.mkdir(parents=True, exist_ok=True)
    root.write_bytes(repo.root_bytes())
    typer.echo(f"repository created\ntrusted root (ship it with your apps): {root}\nadmin token (shown once): {token}")


def _registry(data: Path | None, registry: str | None) -> Any:
    from edgekit.ota.service.database import SqliteRegistry

    if registry:
        from edgekit.ota.service.postgres import PostgresRegistry

        return PostgresRegistry(registry)
    if data is not None:
        return SqliteRegistry(data / "registry.sqlite3")
    raise OtaRequestError("give --data or --registry")


@ota_app.command()
def token(
    name: Annotated[str, typer.Option("--name", help="Who uses it, e.g. ci")],
    scope: Annotated[list[str], typer.Option("--scope", help="read, publish, rollout or admin; repeat")],
    data: Data = None, registry: RegistryUrl = None,
) -> None:
    """Create an API token with scopes (printed once; only its hash is stored)."""
    typer.echo(_registry(data, registry).create_token(name, scope))


@ota_app.command()
def enrolment(
    name: Annotated[str, typer.Option("--name", help="The fleet batch it enrols, e.g. factory-2026-12")],
    max_devices: Annotated[int, typer.Option("--max-devices", help="How many devices it may enrol")],
    data: Data = None, registry: RegistryUrl = None,
) -> None:
    """Create an enrolment token (printed once): a device enrols its id with it and gets its own token
    for reports. Ship it with a fleet batch (app config, provisioning); it enrols at most --max-devices."""
    typer.echo(_registry(data, registry).create_enrolment(name, max_devices))


@ota_app.command()
def rollout(server: Server, model: Model, channel: Channel,
            percent: Annotated[float, typer.Option("--percent", min=0, max=100, help="Share of the fleet")],
            token: Token = None, json_: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Set the current release's rollout share."""
    r = call(server, "POST", f"/v1/models/{model}/channels/{channel}/rollout", token=_token(token), body={"percent": percent})
    _echo(r, json_, f"{model}/{channel} release {r['release']}: {r['basis_points'] / 100:g}% of devices")


@ota_app.command()
def halt(server: Server, model: Model, channel: Channel,
         reason: Annotated[str, typer.Option("--reason")] = "halted by an operator",
         token: Token = None, json_: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Halt the current rollout: no more devices take it; those that have it keep it."""
    r = call(server, "POST", f"/v1/models/{model}/channels/{channel}/halt", token=_token(token), body={"reason": reason})
    _echo(r, json_, f"{model}/{channel} release {r['release']} halted: {r['halted_reason']}")


@ota_app.command()
def resume(server: Server, model: Model, channel: Channel, token: Token = None,
           json_: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Resume a halted rollout."""
    r = call(server, "POST", f"/v1/models/{model}/channels/{channel}/resume", token=_token(token))
    _echo(r, json_, f"{model}/{channel} release {r['release']} resumed at {r['basis_points'] / 100:g}%")


@ota_app.command()
def rollback(server: Server, model: Model, channel: Channel,
             to_release: Annotated[int | None, typer.Option("--to-release", help="Default: the stable release")] = None,
             token: Token = None, json_: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Publish an earlier release's files as a new release for every device of the channel."""
    r = call(server, "POST", f"/v1/models/{model}/channels/{channel}/rollback", token=_token(token),
             body={"to_release": to_release})
    _echo(r, json_, f"{model}/{channel} release {r['release']} rolls back release {r['rollback_of']} "
                    f"to version {r['version']}")


@ota_app.command()
def status(server: Server, model: Model, channel: Channel, token: Token = None,
           json_: Annotated[bool, typer.Option("--json", help="The channel and fleet figures as JSON")] = False) -> None:
    """A channel's releases, device outcomes, and the current release against the stable one on the fleet
    (P95 and error rate per device class, the guard's verdict); any operator token reads it."""
    token = _token(token)
    state = call(server, "GET", f"/v1/models/{model}/channels/{channel}", token=token)
    fleet = call(server, "GET", f"/v1/models/{model}/channels/{channel}/fleet", token=token)
    if json_:
        typer.echo(json.dumps({**state, "fleet": fleet}, indent=2))
        return
    typer.echo(_status_text(model, channel, state, fleet))


def _status_text(model: str, channel: str, state: dict[str, Any], fleet: dict[str, Any]) -> str:
    from edgekit.cli._app import table

    rows = [["release", "version", "share", "state", "outcomes"]]
    for r in state["releases"]:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r.get("outcomes", {}).items())) or "-"
        rows.append([str(r["release"]), r["version"], f"{r['basis_points'] / 100:g}%",
                     "halted" if r["halted"] else "live", outcomes])
    lines = [f"{model}/{channel}", table(rows, last_free=True)]
    current = state["releases"][-1] if state["releases"] else None
    if current and current["halted"]:
        lines.append(f"halted: {current['halted_reason']}")
    cmp = fleet["comparison"]
    guard = cmp["guard"]
    lines.append("")
    lines.append(f"fleet: release {cmp['canary']} against release {cmp['baseline']}" if cmp["baseline"] else
                 f"fleet: release {cmp['canary']} (no staged rollout to compare)")
    lines.append("guard: " + (f"P95 at most {guard['p95_ratio']}x, error rate at most {guard['error_rate']:.2%}, "
                              f"from {guard['min_devices']} devices per class" if guard else "none"))
    if cmp["classes"]:
        rows = [["device class", "devices", "P95 ms", "base P95", "ratio", "errors", "verdict"]]
        for c in cmp["classes"]:
            k, b = c["canary"] or {}, c["baseline"] or {}
            rows.append([c["device_class"], f"{k.get('devices', 0)}/{b.get('devices', 0)}",
                         f"{k['p95_ms']:.3g}" if k else "-", f"{b['p95_ms']:.3g}" if b else "-",
                         f"{c['p95_ratio']:.2f}x" if c["p95_ratio"] is not None else "-",
                         f"{k['error_rate']:.2%}" if k else "-", c["verdict"]])
        lines.append(table(rows, last_free=True))
    else:
        lines.append("no telemetry yet")
    return "\n".join(lines)


@ota_app.command()
def guard(server: Server, model: Model, channel: Channel,
          p95_ratio: Annotated[float, typer.Option("--p95-ratio", min=1, max=100,
                                                   help="Halt when a class's P95 passes this times the stable one's")] = 1.2,
          error_rate: Annotated[float, typer.Option("--error-rate", min=0, max=100,
                                                    help="Halt when a class's failed runs pass this percent")] = 1.0,
          min_devices: Annotated[int, typer.Option("--min-devices", min=1,
                                                   help="Judge a class from this many reporting devices")] = 10,
          off: Annotated[bool, typer.Option("--off", help="Remove the channel's guard")] = False,
          token: Token = None, json_: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Set the rollout guard of a channel: a staged release halts when, on any device class, its P95 or its
    error rate (from device telemetry) breaks the guard against the stable release."""
    path = f"/v1/models/{model}/channels/{channel}/guard"
    if off:
        _echo(call(server, "PUT", path, token=_token(token), body={"p95_ratio": None, "error_rate": None}), json_,
              f"{model}/{channel}: no guard")
        return
    r = call(server, "PUT", path, token=_token(token),
             body={"p95_ratio": p95_ratio, "error_rate": error_rate / 100, "min_devices": min_devices})
    _echo(r, json_, f"{model}/{channel}: halt a staged release when P95 > {p95_ratio:g}x or errors > {error_rate:g}% "
                    f"on a device class with {min_devices}+ devices")


def serve(
    keys: Annotated[Path, typer.Option("--keys", help="Directory holding bins.pem, snapshot.pem, timestamp.pem")],
    data: Data = None, registry: RegistryUrl = None, storage: StorageUrl = None,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8080,
    halt_failure_rate: Annotated[float, typer.Option("--halt-failure-rate",
                                                     help="Percent of failed reports that halts a rollout")] = 20.0,
    halt_min_reports: Annotated[int, typer.Option("--halt-min-reports", help="Reports needed before halting")] = 5,
    workers: Annotated[int, typer.Option("--workers", help="Worker processes")] = 1,
    server: Annotated[str, typer.Option(
        "--server", help="granian (Rust HTTP, the default: device paths near a static server's speed) or uvicorn")] = "granian",
) -> None:
    """Run the OTA service (TUF metadata and files for devices; publish and rollout API; /metrics; /docs)."""
    import dataclasses
    import json
    import logging

    from edgekit.errors import UserError
    from edgekit.ota.service.app import ENV_PREFIX, Limits, configure_logging

    if server not in ("granian", "uvicorn"):
        raise UserError(f"--server {server!r}: choose granian or uvicorn")
    configure_logging()
    limits = Limits()
    settings = {"data": str(data) if data else "", "keys": str(keys), "registry": registry or "",
                "storage": storage or "", "halt_bp": str(round(halt_failure_rate * 100)), "halt_min": str(halt_min_reports)}
    os.environ.update({ENV_PREFIX + k.upper(): v for k, v in settings.items()})
    os.environ.setdefault(ENV_PREFIX + "LIMITS", json.dumps(dataclasses.asdict(limits)))
    limits = Limits(**json.loads(os.environ[ENV_PREFIX + "LIMITS"]))
    from edgekit.ota.service.app import app_from_env

    app_from_env()  # fails here, with a clear message, on bad keys or backends (before any worker starts)
    logging.getLogger("edgekit.ota").info("serving", extra={
        "event": "serving", "url": f"http://{host}:{port}", "workers": workers, "server": server,
        "registry": "postgresql" if registry else "sqlite", "storage": "s3" if storage else "files"})
    if server == "uvicorn":
        import uvicorn

        uvicorn.run("edgekit.ota.service.app:app_from_env", factory=True, host=host, port=port, workers=max(1, workers),
                    http="edgekit.ota.service.guards:GuardedHttpProtocol",  # header and body deadlines (guards.Limits)
                    log_level="warning", access_log=False)  # events are logged as JSON lines; per-request lines cost
        return
    import importlib.util

    from granian.constants import Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    from granian.server import Server

    # Measured in benchmarks/bench_ota.py: uvloop and one Python thread per worker keep the P99 of device
    # checks near nginx's. Each worker holds up to backlog/workers connections (as nginx's
    # worker_connections); the header deadline is granian's own, the body deadline the app's
    # (guards.receive_upload).
    loop = Loops.uvloop if importlib.util.find_spec("uvloop") else Loops.auto
    os.environ[ENV_PREFIX + "WORKER_OF"] = str(os.getpid())  # workers end with this process (app._die_with)
    Server("edgekit.ota.service.app:app_from_env", address=host, port=port, interface=Interfaces.ASGI, factory=True,
           workers=max(1, workers), loop=loop, blocking_threads=1, backlog=4096, log_level=LogLevels.warning,
           http1_settings=HTTP1Settings(header_read_timeout=max(1, round(limits.header_timeout_s * 1000)))).serve()


def publish(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory (edgekit convert made it)")],
    server: Server, model: Model, channel: Channel,
    percent: Annotated[float, typer.Option("--percent", min=0, max=100, help="Initial rollout share")] = 0,
    token: Token = None, json_: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Publish BUNDLE as the next release of MODEL on CHANNEL."""
    from edgekit.ota.contract import check_name

    check_name(model)
    check_name(channel, "channel name")
    data = bundle_tar(bundle)
    path = f"/v1/models/{model}/channels/{channel}/releases?basis_points={round(percent * 100)}"
    r = retrying(lambda: call(server, "POST", path, token=_token(token), data=data, content_type="application/x-tar"))
    done = f"{bundle} is already" if r.get("already_published") else f"published {bundle} as"
    _echo(r, json_, f"{done} {model}/{channel} release {r['release']} (version {r['version']}), "
                    f"{r['basis_points'] / 100:g}% of devices")


def pull(
    server: Server, model: Model, channel: Channel,
    cache: Annotated[Path, typer.Option("--cache", help="The device's update directory")],
    device_id: Annotated[str, typer.Option("--device-id", help="This device's stable id")],
    root: Annotated[Path, typer.Option("--root", help="The trusted root.json this device ships with")],
    enrolment_token: Annotated[str | None, typer.Option(
        "--enrolment-token", envvar="EDGEKIT_ENROLMENT_TOKEN", show_default=False,
        help="Enrols this device on its first report (edgekit ota enrolment makes one); without it and "
             "without an earlier enrolment, outcome reports wait in the outbox")] = None,
    target: Annotated[str | None, typer.Option(
        "--target", "-t", help="Install this target's artifact instead of the best one this host runs, also one it "
                               "cannot run (coreml-fp16 for an Apple device): verified, not smoke-tested")] = None,
    json_: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Update MODEL on this device: check, download (resumable), verify, install, smoke-test, switch, report."""
    from edgekit._progress import LiveProgress
    from edgekit.ota.device import Updater

    with LiveProgress() as live:  # a bar per file downloaded, on a terminal
        result = Updater(server, cache, device_id, root, enrolment_token=enrolment_token).update(
            model, channel, progress=lambda name, have, total: live.bar(f"downloading {name}", have, total),
            target=target)
    payload = {k: str(v) if isinstance(v, Path) else v for k, v in result.__dict__.items()}
    line = {"installed": f"installed {model} release {result.release} ({result.version}): {result.detail} in {result.path}",
            "up_to_date": f"{model} is up to date (release {result.release})",
            "failed": f"release {result.release} failed here and was not activated: {result.detail}"}[result.status]
    _echo(payload, json_, line)
    if result.status == "failed":
        raise typer.Exit(1)


def _register() -> None:
    for registered in ota_app.registered_commands:
        registered.callback = _wrapped(registered.callback)
    app.add_typer(ota_app, name="ota")
    for fn in (serve, publish, pull):
        app.command(fn.__name__)(_wrapped(fn))


_register()
