"""edgeai-runtime: serve models, and manage the model store with JSON output for Ansible.

  edgeai-runtime [--root DIR] serve [--host H] [--port P]
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
  edgeai-runtime probe

Every command but ``serve`` prints one JSON object. Exit status 0 means success,
1 a refused or failed operation (the JSON has ``failed: true`` and ``msg``), 2 bad usage.
Activation and rollback go through the running service's loopback admin endpoint when
the service is up, so it switches without a restart; otherwise the same load-and-gate
runs in this process before the store's pointer moves.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional

from . import __version__
from .config import DEFAULT_ROOT, ConfigError, RuntimeConfig, load_config
from .manifest import Manifest, ManifestError


class CommandFailed(Exception):
    pass


def _admin_url(config: RuntimeConfig, path: str) -> str:
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "127.0.0.1", "localhost") or config.loopback_only \
        else config.host
    return "http://%s:%d%s" % (host if ":" not in host else "[%s]" % host, config.port, path)


def _call_service(config: RuntimeConfig, method: str, path: str, body: Optional[Dict[str, Any]] = None,
                  timeout: float = 300.0) -> Optional[Dict[str, Any]]:
    """Call the running service's admin endpoint; None when no service answers."""
    data = json.dumps(body or {}).encode() if method == "POST" else None
    request = urllib.request.Request(_admin_url(config, path), data=data, method=method,
                                     headers={"content-type": "application/json"})
    if config.token:
        request.add_header("authorization", "Bearer %s" % config.token)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise CommandFailed(message) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def _manager(config: RuntimeConfig):
    from .serving import ModelManager
    from .store import open_store
    return ModelManager(open_store(config), config)


def _switch(config: RuntimeConfig, name: str, action: str, version: Optional[str]) -> Dict[str, Any]:
    body = {"version": version} if version else {}
    via_service = _call_service(config, "POST", "/v2/admin/models/%s/%s" % (name, action), body)
    if via_service is not None:
        via_service["via"] = "service"
        return via_service
    manager = _manager(config)
    try:
        if action == "activate":
            result = manager.activate(name, version)
        else:
            result = manager.rollback(name, version)
    finally:
        manager.close()
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


def cmd_model(args: argparse.Namespace, config: RuntimeConfig) -> Dict[str, Any]:
    from .store import open_store
    store = open_store(config)
    if args.action in ("list", "status"):
        result: Dict[str, Any] = {"changed": False, "models": store.status(),
                                  "device_key_id": store.keyring.current_id()}
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
            switched = _switch(config, change.name, "activate", change.version)
            result["changed"] = result["changed"] or bool(switched.get("changed"))
            result["activation"] = switched
        return result
    if args.action == "activate":
        return _switch(config, args.name, "activate", args.version)
    if args.action == "rollback":
        return _switch(config, args.name, "rollback", args.version)
    if args.action == "rekey":
        change = store.rekey(args.name, args.version, _read_json_arg(args.keyslot, "key slot"))
        return {"changed": change.changed, "name": change.name, "version": change.version, "msg": change.message}
    if args.action == "remove":
        change = store.remove(args.name, args.version)
        return {"changed": change.changed, "name": change.name, "version": change.version, "msg": change.message}
    raise CommandFailed("unknown model action %s" % args.action)


def cmd_keys(args: argparse.Namespace, config: RuntimeConfig) -> Dict[str, Any]:
    """The device key pair: created here, its private half never printed or sent anywhere."""
    from .store import open_store
    store = open_store(config)
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
        needed = set()
        for name in store.names():
            for version in store.versions(name):
                if store.is_artifact(name, version):
                    needed.add(store.keyslot(name, version).get("key_id"))
        keep = sorted(k for k in needed if k)
        if args.dry_run:
            removed = [k for k in ring.ids() if k != ring.current_id() and k not in keep]
        else:
            removed = ring.retire(keep=keep)
        result.update(changed=bool(removed), retired=removed, still_needed=sorted(needed - {ring.current_id()}))
    from .artifact import default_cipher
    current = ring.current()
    result["current"] = current.to_dict() if current else None
    result["key_ids"] = ring.ids()
    result["preferred_cipher"] = default_cipher()
    return result


def cmd_artifact(args: argparse.Namespace, config: RuntimeConfig) -> Dict[str, Any]:
    from .artifact import Artifact
    from .store import open_store
    store = open_store(config)
    art = Artifact.open(args.artifact, store.trusted_signers())
    art.check_compatible(config.hardware_class)
    art.verify_payload()
    return {"changed": False, "artifact_id": art.artifact_id, "signer": art.signer,
            "payload_chunks_sha256": art.payload_digest, "manifest": art.manifest.to_dict()}


def cmd_probe(args: argparse.Namespace, config: RuntimeConfig) -> Dict[str, Any]:
    from .backends import probe_all
    return {"changed": False, "runtimes": {k: {"available": v is None, "reason": v} for k, v in probe_all().items()}}


def cmd_serve(args: argparse.Namespace, config: RuntimeConfig) -> int:
    import uvicorn
    from .app import create_app
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="info", access_log=False,
                timeout_graceful_shutdown=int(config.drain_timeout_s))
    return 0


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
    art = sub.add_parser("artifact", help="check a signed artifact against this device's trusted signers")
    art.add_argument("action", choices=["verify"])
    art.add_argument("artifact")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides = {"host": getattr(args, "host", None), "port": getattr(args, "port", None)}
        config = load_config(args.root, **overrides)
        if args.command == "serve":
            return cmd_serve(args, config)
        commands = {"probe": cmd_probe, "model": cmd_model, "keys": cmd_keys, "artifact": cmd_artifact}
        result = commands[args.command](args, config)
    except (CommandFailed, ConfigError, ManifestError, OSError) as exc:
        print(json.dumps({"failed": True, "changed": False, "msg": str(exc)}))
        return 1
    except Exception as exc:  # StoreError, GateFailed, BackendUnavailable, ModelLoadError: one line each
        failure = {"failed": True, "changed": False, "msg": str(exc), "error": type(exc).__name__}
        if getattr(exc, "reason", None):
            failure["reason"] = exc.reason
        print(json.dumps(failure))
        return 1
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
