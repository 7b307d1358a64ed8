"""edgeai-runtime: serve models, and manage the model store with JSON output for Ansible.

  edgeai-runtime [--root DIR] serve [--host H] [--port P]
  edgeai-runtime model init MODEL_FILE --name N --version V [--golden F] [--validation F] [--min-accuracy X]
                            [--label-output O] [--precision P] [--force]
  edgeai-runtime [--root DIR] model list|status
  edgeai-runtime [--root DIR] model install --manifest M --model FILE [--file NAME=PATH ...] [--activate] [--force]
  edgeai-runtime [--root DIR] model install --artifact A --keyslot S|- [--file NAME=PATH ...] [--activate] [--force]
  edgeai-runtime [--root DIR] model rekey NAME VERSION --keyslot S|-
  edgeai-runtime [--root DIR] model activate NAME VERSION
  edgeai-runtime [--root DIR] model rollback NAME [--version V]
  edgeai-runtime [--root DIR] model remove NAME VERSION
  edgeai-runtime [--root DIR] keys show|ensure|rotate [--type x25519|rsa]
  edgeai-runtime [--root DIR] keys retire
  edgeai-runtime [--root DIR] artifact verify A
  edgeai-runtime [--root DIR] ota apply --artifact A|--delta D --keyslot S [--file NAME=PATH ...] [--force] ...
  edgeai-runtime [--root DIR] ota apply --check --artifact A|--installed NAME VERSION
  edgeai-runtime [--root DIR] ota plan NAME [VERSION] [--state present|active|absent|rolled_back] [--sha256 S]
                                        [--key-id K|--current-key]
  edgeai-runtime [--root DIR] ota rollback NAME [--version V] [--reason R]
  edgeai-runtime [--root DIR] ota recover|history [--name N]
  edgeai-runtime [--root DIR] outbox status
  edgeai-runtime probe
  edgeai-runtime [--root DIR] telemetry collect [--textfile DIR]
  edgeai-runtime [--root DIR] telemetry run
  edgeai-runtime [--root DIR] rollout status --rollout ID --name N --version V
  edgeai-runtime [--root DIR] rollout mark --rollout ID --attempt A --name N --version V --mark M [--from-version F]
                                           [--reason R] [--details JSON]
  edgeai-runtime [--root DIR] rollout soak --rollout ID --attempt A --name N --version V [--from-version F]
                                           --seconds S [--p95-ms X] [--max-error-rate R] [--max-restarts K]
                                           [--min-requests M] [--interval I]
  edgeai-runtime [--root DIR] rollout ready [--windows JSON] [--hook PATH] [--hook-timeout S] [--max-wait S]
                                            [--interval S] [--check]

Every command but ``serve`` prints one JSON object. Exit status 0 means success,
1 a refused or failed operation (the JSON has ``failed: true``, ``msg`` and, where there is one,
a stable ``reason`` code), 2 bad usage. ``changed`` is true only when the device changed. Every
command sweeps what killed writers left in the store and lists it in ``swept``. The root must
exist (``reason: root_missing`` otherwise). A full disk fails with ``reason: disk_full`` and a
message naming the filesystem, the bytes free and the versions active after the failure.
``model init`` reads an .onnx or .tflite file and writes manifest.json beside it (it needs no
device root). Activation and rollback go through the running service's loopback admin endpoint
when a service is running (the address it announced in <root>/cache/service.json, see
device.client), so it switches without a restart; otherwise the same load-and-gate runs in this
process before the store's pointer moves.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set

from edgeai_runtime.format.errors import EdgeAIError
from edgeai_runtime import __version__
from edgeai_runtime.device.config import DEFAULT_ROOT, RuntimeConfig, load_config
from edgeai_runtime.format.manifest import Manifest
from edgeai_runtime.format.modelfile import add_init_arguments, init_from_args
from edgeai_runtime.device.store import DiskFull, ModelStore, StoreError, open_store

if TYPE_CHECKING:  # pragma: no cover - imported where a command needs it
    from edgeai_runtime.device.ota import Updater


#: What this runtime can do that older ones could not; controllers ask before using it.
FEATURES = ("delta",)


class CommandFailed(EdgeAIError):
    """A command whose arguments do not fit, or that cannot do what it was asked."""

    default_reason = "usage"


def _call_service(config: RuntimeConfig, method: str, path: str, body: Optional[Dict[str, Any]] = None,
                  timeout: float = 300.0) -> Optional[Dict[str, Any]]:
    """Call the running service's admin endpoint; None when no service answers."""
    from edgeai_runtime.device.client import ServiceClient, ServiceDown, ServiceError
    try:
        return ServiceClient(config, timeout).call(method, path, body)
    except ServiceError as exc:
        raise CommandFailed(str(exc)) from None
    except ServiceDown:
        return None


def _switch(config: RuntimeConfig, store: ModelStore, name: str, action: str,
            version: Optional[str]) -> Dict[str, Any]:
    body = {"version": version} if version else {}
    via_service = _call_service(config, "POST", "/v2/admin/models/%s/%s" % (name, action), body)
    if via_service is not None:
        via_service["via"] = "service"
        return via_service
    from edgeai_runtime.service.serving import ModelManager
    manager = ModelManager(store, config)
    before = store.pointers(name)
    try:
        if action == "activate":
            if version is None:
                raise CommandFailed("activating %s needs a version" % name)
            result = manager.activate(name, version)
        else:
            result = manager.rollback(name, version)
    finally:
        manager.close()
    # This process's manager is new, so it always "switches": what changed is the store's pointers.
    result["changed"] = store.pointers(name) != before
    result["via"] = "store"
    return result


def _read_json_arg(path: str, what: str) -> Any:
    try:
        if path == "-":
            return json.load(sys.stdin)
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        raise CommandFailed("reading %s %s: %s" % (what, path, exc.strerror)) from None
    except ValueError as exc:
        raise CommandFailed("%s %s is not JSON: %s" % (what, path, exc)) from None


def _gate_files(specs: Optional[List[str]]) -> Dict[str, bytes]:
    files = {}
    for spec in specs or []:
        fname, sep, path = spec.partition("=")
        if not sep:
            raise CommandFailed("--file takes NAME=PATH, got %r" % spec)
        with open(path, "rb") as f:
            files[fname] = f.read()
    return files


def cmd_model(args: argparse.Namespace, config: RuntimeConfig, store: ModelStore) -> Dict[str, Any]:
    from edgeai_runtime.format.artifact import default_cipher
    if args.action in ("list", "status"):
        current = store.keyring.current()
        result: Dict[str, Any] = {"changed": False, "models": store.status(),
                                  "device_key_id": current.key_id if current else None,
                                  "device_public_key": current.public_pem if current else None,
                                  "trusted_signers": sorted(store.trusted_signers()),
                                  "preferred_cipher": default_cipher(), "features": list(FEATURES),
                                  "profile": config.profile()}
        if args.action == "status":
            result["service"] = _call_service(config, "GET", "/v2/admin/status", timeout=10)
        return result
    if args.action == "install":
        files = _gate_files(args.file)
        if args.artifact:
            if args.manifest or args.model or not args.keyslot:
                raise CommandFailed("--artifact takes --keyslot, and neither --manifest nor --model")
            change = store.install_artifact(args.artifact, _read_json_arg(args.keyslot, "key slot"), files,
                                            force=args.force)
        else:
            if not (args.manifest and args.model):
                raise CommandFailed("install takes --artifact and --keyslot, or --manifest and --model")
            try:
                with open(args.manifest, encoding="utf-8") as f:
                    manifest = Manifest.from_json(f.read())
            except OSError as exc:
                raise CommandFailed("reading manifest %s: %s" % (args.manifest, exc.strerror)) from None
            with open(args.model, "rb") as f:
                model = f.read()
            change = store.install(manifest, model, files, force=args.force)
        result = {"changed": change.changed, "name": change.name, "version": change.version, "msg": change.message}
        if args.activate:
            switched = _switch(config, store, change.name, "activate", change.version)
            result["changed"] = result["changed"] or bool(switched.get("changed"))
            result["activation"] = switched
        return result
    if args.action == "activate":
        return _switch(config, store, args.name, "activate", args.version)
    if args.action == "rollback":
        return _switch(config, store, args.name, "rollback", args.version)
    if args.action == "rekey":
        change = store.rekey(args.name, args.version, _read_json_arg(args.keyslot, "key slot"))
        return {"changed": change.changed, "name": change.name, "version": change.version, "msg": change.message}
    if args.action == "remove":
        change = store.remove(args.name, args.version)
        return {"changed": change.changed, "name": change.name, "version": change.version, "msg": change.message}
    raise CommandFailed("unknown model action %s" % args.action)


def cmd_keys(args: argparse.Namespace, config: RuntimeConfig, store: ModelStore) -> Dict[str, Any]:
    """The device key pair: created here, its private half never printed or sent anywhere."""
    ring = store.keyring
    changed = False
    if args.action == "ensure" and ring.current() is None:
        ring.create(args.type)
        changed = True
    elif args.action == "rotate":
        ring.create(args.type)
        changed = True
    result: Dict[str, Any] = {"changed": changed}
    if args.action == "retire":
        # Keep every key an installed artifact's slot still needs: retiring never strands a model.
        needed: Set[str] = set()
        for name in store.names():
            for version in store.versions(name):
                if store.is_artifact(name, version):
                    slot_key = store.keyslot(name, version).get("key_id")
                    if isinstance(slot_key, str) and slot_key:
                        needed.add(slot_key)
        keep = sorted(needed)
        if args.dry_run:
            removed = [k for k in ring.ids() if k != ring.current_id() and k not in keep]
        else:
            removed = ring.retire(keep=keep)
        # --dry-run changes nothing: it says what would go (would_change), not changed.
        result.update(changed=bool(removed) and not args.dry_run, retired=removed,
                      still_needed=sorted(needed - {ring.current_id()}))
        if args.dry_run:
            result["would_change"] = bool(removed)
    from edgeai_runtime.format.artifact import default_cipher
    current = ring.current()
    result["current"] = current.to_dict() if current else None
    result["key_ids"] = ring.ids()
    result["preferred_cipher"] = default_cipher()
    result["profile"] = config.profile()  # what the controller chooses a model variant by (publish)
    return result


def cmd_artifact(args: argparse.Namespace, config: RuntimeConfig, store: ModelStore) -> Dict[str, Any]:
    from edgeai_runtime.format.artifact import Artifact
    art = Artifact.open(args.artifact, store.trusted_signers())
    art.check_compatible(config.hardware_class)
    art.verify_payload()
    return {"changed": False, "artifact_id": art.artifact_id, "signer": art.signer,
            "payload_chunks_sha256": art.payload_digest, "manifest": art.manifest.to_dict()}


def cmd_ota(args: argparse.Namespace, config: RuntimeConfig, store: ModelStore) -> Dict[str, Any]:
    """Update transactions (edgeai_runtime.device.ota): apply, rollback, recover, history."""
    from edgeai_runtime.device.ota import Policy, Updater
    updater = Updater(config, store=store)
    if args.action == "plan" or (args.action == "apply" and args.check):
        return _plan(args, updater)
    if args.action == "apply":
        policy = Policy(watch_s=args.watch, interval_s=args.interval, max_error_rate=args.max_error_rate,
                        min_requests=args.min_requests, latency_p95_ms=args.latency_p95_ms, force=args.force)
        try:
            policy.check()
        except ValueError as exc:
            raise CommandFailed(str(exc)) from None
        if args.installed:
            if args.artifact or args.delta or args.keyslot or args.file:
                raise CommandFailed("--installed NAME VERSION takes no --artifact, --delta, --keyslot or --file")
            return updater.apply_installed(args.installed[0], args.installed[1], policy, mode=args.mode)
        if not ((args.artifact or args.delta) and args.keyslot):
            raise CommandFailed("ota apply takes --artifact and/or --delta with --keyslot, or --installed NAME VERSION")
        keyslot, files = _read_json_arg(args.keyslot, "key slot"), _gate_files(args.file)
        common = dict(mode=args.mode, stage_s=args.stage_seconds, bytes_transferred=args.bytes_transferred)
        if args.delta and not args.artifact:  # a delta alone: DeltaFailed says why, and the caller sends the artifact
            return updater.apply_delta(args.delta, keyslot, files, policy, **common)
        return updater.apply_delta_or_full(args.delta, lambda: str(args.artifact), keyslot, files, policy, **common)
    if args.action == "rollback":
        return updater.rollback(args.name, args.version, args.reason)
    if args.action == "recover":
        done = updater.recover()
        return {"changed": bool(done), "recovered": done}
    repaired = updater.repair()  # the history row a full disk kept an ended update from writing
    return {"changed": any(e.get("outcome") != "swept" for e in repaired),
            "history": updater.history.rows(args.name, args.limit), "in_progress": updater.journal.read(),
            "repaired": repaired}


def _plan(args: argparse.Namespace, updater: "Updater") -> Dict[str, Any]:
    """``ota plan`` and ``ota apply --check``: what the device would do, from edgeai_runtime.device.plan (the
    one rule every caller asks). Changes nothing: ``changed`` is false, ``would_change`` says."""
    from edgeai_runtime.device.plan import Want
    if args.action == "plan":
        key = updater.store.keyring.current_id() if args.current_key else args.key_id
        want = Want(args.name, args.version, args.state, sha256=args.sha256, key_id=key)
    elif args.installed:
        want = Want(args.installed[0], args.installed[1], "active")
    elif args.artifact:  # the header's claims: --check verifies nothing and opens no key slot
        from edgeai_runtime.format.artifact import read_header
        manifest = read_header(args.artifact).get("manifest") or {}
        if not (manifest.get("name") and manifest.get("version")):
            raise CommandFailed("%s names no model and version in its header" % args.artifact)
        want = Want(manifest["name"], manifest["version"], "active", sha256=manifest.get("sha256"))
    else:
        raise CommandFailed("ota apply --check takes --artifact A or --installed NAME VERSION")
    decided = updater.plan(want)
    return dict(decided, changed=False, would_change=decided["changed"], check=True)


def cmd_agent(args: argparse.Namespace, config: RuntimeConfig, store: ModelStore) -> Dict[str, Any]:
    """Pull mode: poll the registry once (--once) or every --interval seconds."""
    import time
    from edgeai_runtime.device.ota import Policy
    from edgeai_runtime.device.agent import Agent, Downloader
    url = args.registry or config.registry_url
    if not url:
        raise CommandFailed("no registry: pass --registry or set registry_url in %s/etc/runtime.json" % config.root)
    policy = Policy(watch_s=args.watch, interval_s=min(1.0, args.watch or 1.0))
    agent = Agent(config, Downloader(url, args.ca_file or config.registry_ca_file, retries=args.retries), policy)
    while True:
        result = agent.run_once()
        if args.once:
            if result.get("failed"):
                raise CommandFailed(result["msg"] or "the update failed")
            return result
        print(json.dumps(result, default=str), flush=True)
        time.sleep(args.interval)


def cmd_probe(args: argparse.Namespace, config: RuntimeConfig, store: ModelStore) -> Dict[str, Any]:
    from edgeai_runtime.service.backends import probe_all
    return {"changed": False, "runtimes": {k: {"available": v is None, "reason": v} for k, v in probe_all().items()}}


# -- telemetry (issue 15) ----------------------------------------------------------------------------------------

def add_telemetry_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    telemetry = sub.add_parser("telemetry", help="the device's health: one sample of CPU, memory, sensors, "
                                                 "inference stats, models and the last OTA outcome")
    actions = telemetry.add_subparsers(dest="action", required=True)
    collect = actions.add_parser("collect", help="print one telemetry sample (docs/telemetry.md)")
    collect.add_argument("--textfile", metavar="DIR", help="also write DIR/edgeai.prom for node_exporter's textfile "
                                                           "collector (changed: true when it differs)")
    actions.add_parser("run", help="the telemetry daemon (edgeai-telemetry.service): a sample into the outbox every "
                                   "interval_s, the outbox synced to the MQTT broker (telemetry.json)")


def cmd_telemetry(args: argparse.Namespace, config: RuntimeConfig, store: ModelStore) -> Dict[str, Any]:
    """``telemetry collect``: {"changed": false, "telemetry": <sample>}; changed only when --textfile wrote a new file."""
    from edgeai_runtime.device.config import load_telemetry_config
    from edgeai_runtime.device.exposition import write_textfile
    from edgeai_runtime.device.telemetry import Collector
    sample = Collector(load_telemetry_config(config.root), config).sample()
    changed = False
    if args.textfile:
        try:
            changed = write_textfile(args.textfile, sample)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:  # reported as disk_full, naming the filesystem
                raise
            raise CommandFailed("writing the node_exporter textfile in %s: %s" % (args.textfile, exc.strerror or exc),
                                reason="textfile_failed") from None
    return {"changed": changed, "telemetry": sample}


def cmd_telemetry_run(config: RuntimeConfig) -> int:
    """``telemetry run``: runs until SIGTERM; logs, prints no JSON (like ``serve``)."""
    from edgeai_runtime.device import telemetry_daemon
    from edgeai_runtime.device.config import load_telemetry_config
    from edgeai_runtime.device.exposition import write_textfile
    from edgeai_runtime.device.telemetry import Collector
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    telemetry = load_telemetry_config(config.root)
    textfile_dir = telemetry.textfile_dir
    textfile = (lambda sample: write_textfile(textfile_dir, sample)) if textfile_dir else None
    return telemetry_daemon.run(telemetry, Collector(telemetry, config).sample, textfile)


# -- the outbox (issue 15: records waiting for the fleet's MQTT broker; edgeai_runtime.device.outbox) -------------

def cmd_outbox(args: argparse.Namespace, config: RuntimeConfig, store: ModelStore) -> Dict[str, Any]:
    """``outbox status``: records and bytes per kind, the oldest record's age, evictions and refusals."""
    from edgeai_runtime.device.config import load_telemetry_config
    from edgeai_runtime.device.outbox import Outbox
    telemetry = load_telemetry_config(config.root)
    return {"changed": False, "outbox": Outbox.from_config(telemetry).status()}


def add_outbox_parser(sub: Any) -> None:
    outbox = sub.add_parser("outbox", help="the telemetry outbox: records waiting for the fleet's MQTT broker")
    outbox.add_argument("action", choices=["status"])

# -- end of the outbox -------------------------------------------------------------------------------------------


# -- staged rollouts (issue 16: the device's side; edgeai_runtime.device.rollout) ----------------------------------

def add_rollout_parser(sub: Any) -> None:
    rollout = sub.add_parser("rollout", help="the device's side of a staged rollout: its marks, and the soak")
    actions = rollout.add_subparsers(dest="action", required=True)
    parsers = {
        "status": actions.add_parser("status", help="this device's marks for a rollout, what serves, the update"),
        "mark": actions.add_parser("mark", help="record what the rollout did or found here"),
        "soak": actions.add_parser("soak", help="watch the serving version under real traffic; record the verdict"),
    }
    ready = actions.add_parser("ready", help="may this device be updated now? its maintenance windows, then its "
                                             "defer hook, asked until it says yes or the cap passes")
    ready.add_argument("--windows", default="[]",
                       help='JSON: {"cron", "duration", "timezone"} or a list of them; none: always open')
    ready.add_argument("--hook", help="the defer hook: exit 0 go, exit 75 not now, anything else broken")
    ready.add_argument("--hook-timeout", type=float, default=30.0, help="seconds one run of the hook may take")
    ready.add_argument("--max-wait", type=float, default=600.0, help="the cap: seconds of not now before failing")
    ready.add_argument("--interval", type=float, default=15.0, help="seconds between two runs of the hook")
    ready.add_argument("--check", action="store_true", help="read the windows only; never run the hook")
    for action, parser in parsers.items():
        parser.add_argument("--rollout", required=True, help="the rollout's id (<model>-<version>)")
        parser.add_argument("--name", required=True)
        parser.add_argument("--version", required=True)
        if action != "status":
            parser.add_argument("--attempt", type=int, required=True)
            parser.add_argument("--from-version", help="the version that served before the rollout")
    mark = parsers["mark"]
    mark.add_argument("--mark", required=True, choices=["installing", "installed", "rolled_back", "deferred", "failed"])
    mark.add_argument("--reason")
    mark.add_argument("--details", default="{}", help="a JSON object kept with the mark")
    soak = parsers["soak"]
    soak.add_argument("--seconds", type=float, required=True)
    soak.add_argument("--p95-ms", type=float, default=100.0)
    soak.add_argument("--max-error-rate", type=float, default=0.05)
    soak.add_argument("--max-restarts", type=int, default=0)
    soak.add_argument("--min-requests", type=int, default=20)
    soak.add_argument("--interval", type=float, default=5.0)


def cmd_rollout(args: argparse.Namespace, config: RuntimeConfig, store: ModelStore) -> Dict[str, Any]:
    """``rollout status`` and ``rollout ready`` read; ``rollout mark`` and ``rollout soak`` record one mark
    (changed: true)."""
    import os
    from edgeai_runtime.device import readiness, rollout
    if args.action == "ready":
        try:
            check = readiness.Readiness(readiness.parse_windows(json.loads(args.windows)),
                                        readiness.Hook(args.hook, args.hook_timeout) if args.hook else None,
                                        args.max_wait, args.interval)
            check.check()
        except ValueError as exc:  # json's errors and ReadinessError
            raise CommandFailed("rollout ready: %s" % exc) from None
        return {"changed": False, "ready": check.wait(ask=not args.check)}
    from edgeai_runtime.device.client import ServiceClient
    from edgeai_runtime.device.journal import History
    history = History(os.path.join(config.root, "state", "history.sqlite"))
    client = ServiceClient(config, timeout=60)
    if args.action == "status":
        return dict(rollout.status(history, store, client, args.rollout, args.name, args.version), changed=False)
    if args.action == "mark":
        details = json.loads(args.details)
        if not isinstance(details, dict):
            raise CommandFailed("--details takes a JSON object, got %r" % args.details)
        row = history.mark_rollout(args.rollout, args.attempt, args.name, args.version, args.from_version,
                                   args.mark, args.reason, details)
        return {"changed": True, "mark": row}
    limits = rollout.SoakLimits(seconds=args.seconds, p95_ms=args.p95_ms, max_error_rate=args.max_error_rate,
                                max_restarts=args.max_restarts, min_requests=args.min_requests,
                                interval_s=args.interval)
    try:
        limits.check()
    except ValueError as exc:
        raise CommandFailed(str(exc)) from None
    verdict = rollout.Soak(client).run(args.name, args.version, limits)
    mark = "soaked" if verdict["passed"] else "soak_failed"
    row = history.mark_rollout(args.rollout, args.attempt, args.name, args.version, args.from_version, mark,
                               "; ".join(verdict["reasons"]) or None, verdict)
    return {"changed": True, "soak": verdict, "mark": dict(row, details={})}

# -- end of staged rollouts ---------------------------------------------------------------------------------------


# -- serving ------------------------------------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace, config: RuntimeConfig) -> int:
    from edgeai_runtime.service.app import announce_bound, create_app
    from edgeai_runtime.service.http_server import mtls_settings, serve
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tls = mtls_settings(str(config.tls_cert_file), str(config.tls_key_file), str(config.tls_client_ca_file)) \
        if config.tls else {}
    # uvicorn answers 503 once its connections reach limit_concurrency, counting the one asking:
    # + 1 serves max_connections of them.
    return serve(create_app(config), lambda addresses: announce_bound(config, addresses),
                 host=config.host, port=config.port, log_level="info", access_log=False,
                 timeout_graceful_shutdown=int(config.drain_timeout_s), header_timeout_s=config.header_timeout_s,
                 body_timeout_s=config.body_timeout_s, timeout_keep_alive=config.keep_alive_timeout_s,
                 limit_concurrency=config.max_connections + 1, **tls)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeai-runtime", description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("--root", default=DEFAULT_ROOT, help="device layout root (default %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the inference service")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    sub.add_parser("probe", help="which runtime backends can load models here, and why not")
    model = sub.add_parser("model", help="manage the model store")
    actions = model.add_subparsers(dest="action", required=True)
    add_init_arguments(actions.add_parser(
        "init", help="write manifest.json beside an .onnx or .tflite file, read from the model (needs no root)"))
    actions.add_parser("list")
    actions.add_parser("status")
    install = actions.add_parser("install")
    install.add_argument("--manifest", help="plaintext model: its manifest.json")
    install.add_argument("--model", help="plaintext model: the model file")
    install.add_argument("--artifact", help="signed artifact (.eaf)")
    install.add_argument("--keyslot", help="the artifact's key slot for this device (JSON file, - for stdin)")
    install.add_argument("--file", action="append", metavar="NAME=PATH", help="gate data file to store beside")
    install.add_argument("--activate", action="store_true", help="activate after installing")
    install.add_argument("--force", action="store_true", help="allow a version older than the active one")
    rekey = actions.add_parser("rekey")
    rekey.add_argument("name")
    rekey.add_argument("version")
    rekey.add_argument("--keyslot", required=True)
    activate = actions.add_parser("activate")
    activate.add_argument("name")
    activate.add_argument("version")
    rollback = actions.add_parser("rollback")
    rollback.add_argument("name")
    rollback.add_argument("--version")
    remove = actions.add_parser("remove")
    remove.add_argument("name")
    remove.add_argument("version")
    keys = sub.add_parser("keys", help="this device's key pair (private half never leaves the device)")
    keys.add_argument("action", choices=["show", "ensure", "rotate", "retire"])
    keys.add_argument("--type", choices=["x25519", "rsa"], default="x25519")
    keys.add_argument("--dry-run", action="store_true", help="retire: say what would go, remove nothing")
    ota = sub.add_parser("ota", help="model updates: phased, health-gated, rolled back on any failure")
    ota_actions = ota.add_subparsers(dest="action", required=True)
    apply = ota_actions.add_parser("apply", help="install a signed artifact and switch to it through every phase")
    apply.add_argument("--artifact")
    apply.add_argument("--delta", help="a delta against a version held here; with --artifact, that is the fallback")
    apply.add_argument("--keyslot", help="the artifact's key slot for this device (JSON file, -)")
    apply.add_argument("--installed", nargs=2, metavar=("NAME", "VERSION"), help="a version the store holds already")
    apply.add_argument("--file", action="append", metavar="NAME=PATH", help="gate data file")
    apply.add_argument("--force", action="store_true", help="allow a version older than the active one")
    apply.add_argument("--watch", type=float, default=10.0, help="seconds to watch after the switch (0: none)")
    apply.add_argument("--interval", type=float, default=1.0, help="seconds between checks while watching")
    apply.add_argument("--max-error-rate", type=float, default=0.05)
    apply.add_argument("--min-requests", type=int, default=20, help="requests before the error rate counts")
    apply.add_argument("--latency-p95-ms", type=float, help="p95 latency budget (default: the manifest's)")
    apply.add_argument("--mode", choices=["push", "pull"], default="push")
    apply.add_argument("--stage-seconds", type=float, default=0.0, help="how long the transfer took (reported)")
    apply.add_argument("--bytes-transferred", type=int, default=0, help="bytes the transfer moved (reported)")
    apply.add_argument("--check", action="store_true",
                       help="change nothing: print the plan (would_change, reason, steps, what would be sent)")
    ota_plan = ota_actions.add_parser("plan", help="what the device would do for a wanted state (changes nothing)")
    ota_plan.add_argument("name")
    ota_plan.add_argument("version", nargs="?", help="(state rolled_back: default the previous version)")
    ota_plan.add_argument("--state", choices=["present", "active", "absent", "rolled_back"], default="active")
    ota_plan.add_argument("--sha256", help="the wanted build's plaintext model sha256 (default: any build)")
    judged = ota_plan.add_mutually_exclusive_group()
    judged.add_argument("--key-id", help="the device key the key slot must be for (default: not judged)")
    judged.add_argument("--current-key", action="store_true", help="the key slot must be for this device's current key")
    ota_rollback = ota_actions.add_parser("rollback", help="serve the previous (or a kept) version again")
    ota_rollback.add_argument("name")
    ota_rollback.add_argument("--version")
    ota_rollback.add_argument("--reason", help="why (recorded in the history)")
    ota_actions.add_parser("recover", help="roll back an update a killed installer left behind")
    history = ota_actions.add_parser("history", help="the deployment history (newest first)")
    history.add_argument("--name")
    history.add_argument("--limit", type=int, default=20)
    agent = sub.add_parser("agent", help="pull mode: install what the registry's update document says")
    agent.add_argument("--registry", help="https:// URL of the registry (default: registry_url in runtime.json)")
    agent.add_argument("--ca-file", help="CA bundle for the registry's certificate (default: registry_ca_file)")
    agent.add_argument("--once", action="store_true", help="poll once and exit (what the systemd timer runs)")
    agent.add_argument("--interval", type=float, default=300.0, help="seconds between polls without --once")
    agent.add_argument("--watch", type=float, default=10.0, help="seconds to watch each new version")
    agent.add_argument("--retries", type=int, default=5, help="attempts per download before giving up this run")
    add_outbox_parser(sub)
    art = sub.add_parser("artifact", help="check a signed artifact against this device's trusted signers")
    art.add_argument("action", choices=["verify"])
    art.add_argument("artifact")
    add_telemetry_parser(sub)
    add_rollout_parser(sub)
    return parser


def _failure(exc: Exception, args: argparse.Namespace, store: Optional[ModelStore]) -> Dict[str, Any]:
    """The JSON of a failed command: ``msg``, a stable ``reason`` where there is one, and what the
    failure carries (UpdateFailed: what happened, ``changed`` included)."""
    failure = dict(getattr(exc, "result", None) or {})
    failure["changed"] = bool(failure.get("changed"))
    full = DiskFull.from_error(exc, "edgeai-runtime %s" % " ".join(
        a for a in (args.command, getattr(args, "action", None)) if isinstance(a, str)), args.root)
    msg = str(full or exc) or type(exc).__name__
    if full is not None and store is not None:
        try:
            active = ", ".join("%s %s" % item for item in sorted(store.serving().items()) if item[1]) or "none"
        except (OSError, StoreError, ValueError):
            active = "unknown (the store is unreadable)"
        msg += "; active now: %s" % active
    failure.update(failed=True, msg=msg, error=type(exc).__name__)
    # The error's code, unless what it carries says why itself (a failed update: the phase and cause,
    # with the cause's code in reason_code).
    reason = getattr(full or exc, "reason", None)
    if isinstance(reason, str) and reason and not (full is None and failure.get("reason")):
        failure["reason"] = reason
    if store is not None:
        failure["swept"] = store.swept
    return failure


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    store: Optional[ModelStore] = None
    try:
        if args.command == "model" and args.action == "init":  # a file beside a model: no device root
            print(json.dumps(init_from_args(args), default=str))
            return 0
        overrides = {"host": getattr(args, "host", None), "port": getattr(args, "port", None)}
        config = load_config(args.root, **overrides)
        if args.command == "serve":
            return cmd_serve(args, config)
        if args.command == "telemetry" and args.action == "run":
            return cmd_telemetry_run(config)
        store = open_store(config)  # sweeps what dead writers left; every command reports it in "swept"
        commands = {"probe": cmd_probe, "model": cmd_model, "keys": cmd_keys, "artifact": cmd_artifact,
                    "ota": cmd_ota, "agent": cmd_agent, "telemetry": cmd_telemetry, "outbox": cmd_outbox,
                    "rollout": cmd_rollout}
        result = commands[args.command](args, config, store)
    except Exception as exc:  # CommandFailed, ConfigError, StoreError, UpdateFailed, OSError ...: one line each
        print(json.dumps(_failure(exc, args, store), default=str))
        return 1
    result.setdefault("swept", store.swept)
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
