"""The runtime's configuration: one typed object, read from the files the roles write."""
from __future__ import annotations

import ipaddress
import json
import os
import socket
from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, Optional

from edgeai_runtime.format.errors import EdgeAIError

DEFAULT_ROOT = "/opt/edgeai"


class ConfigError(EdgeAIError, ValueError):
    """The configuration is unusable; ``str()`` names the setting."""

    default_reason = "bad_config"


class RootMissing(ConfigError):
    """The device root does not exist (a mistyped ``--root``): nothing is created there."""

    default_reason = "root_missing"


@dataclass(frozen=True)
class RuntimeConfig:
    root: str = DEFAULT_ROOT
    host: str = "127.0.0.1"
    port: int = 8080
    token: Optional[str] = None            # bearer token; required when host is not loopback
    keep_versions: int = 2                 # versions kept besides the active one
    hardware_class: str = "generic"
    runtime: str = "onnxruntime"           # the class profile's runtime (which model variants fit)
    precision: str = "fp32"
    max_batch_size: int = 1
    memory_limit_bytes: int = 2 * 1024 ** 3
    max_queue: int = 64                    # queued requests per model before 503
    max_delay_ms: float = 2.0              # longest a request waits for a batch to fill
    max_body_bytes: int = 16 * 1024 ** 2
    offload_body_bytes: int = 256 * 1024   # bodies above this are decoded (and answered) in a worker process
    header_timeout_s: float = 10.0         # a request head must be complete this long after its first byte
    body_timeout_s: float = 60.0           # and its body this long after the head
    keep_alive_timeout_s: float = 5.0      # a connection idle this long, new or between requests, is closed
    max_connections: int = 256             # requests on connections beyond this many get 503
    threads: Optional[int] = None
    cloud_fallback_url: Optional[str] = None
    cloud_fallback_timeout_s: float = 5.0
    drain_timeout_s: float = 30.0
    require_signed: bool = False           # load and install signed artifacts only (the roles set true)
    registry_url: Optional[str] = None     # pull mode: the https:// model registry the agent polls
    registry_ca_file: Optional[str] = None  # CA bundle for the registry's certificate (default: the system's)
    # mTLS of the service (all three, or none): its certificate and key (the device's fleet identity, in
    # <root>/keys/tls) and the CA whose certificates clients must present; the device's own clients use the same.
    tls_cert_file: Optional[str] = None
    tls_key_file: Optional[str] = None
    tls_client_ca_file: Optional[str] = None

    @property
    def loopback_only(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def check(self) -> "RuntimeConfig":
        if not self.loopback_only and not self.token:
            raise ConfigError("host %s is not loopback: a bearer token (token / EDGEAI_RUNTIME_TOKEN) is required"
                              % self.host)
        if self.max_batch_size < 1 or self.max_queue < 1 or self.keep_versions < 1:
            raise ConfigError("max_batch_size, max_queue and keep_versions must be at least 1")
        if self.max_delay_ms < 0:
            raise ConfigError("max_delay_ms must not be negative")
        timeouts = {"header_timeout_s": self.header_timeout_s, "body_timeout_s": self.body_timeout_s,
                    "keep_alive_timeout_s": self.keep_alive_timeout_s}
        for name, value in timeouts.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ConfigError("%s must be a positive number of seconds, not %r" % (name, value))
        if self.max_connections < 1:
            raise ConfigError("max_connections must be at least 1")
        if self.offload_body_bytes < 0:
            raise ConfigError("offload_body_bytes must not be negative")
        tls = {"tls_cert_file": self.tls_cert_file, "tls_key_file": self.tls_key_file,
               "tls_client_ca_file": self.tls_client_ca_file}
        if any(tls.values()):
            missing = sorted(name for name, path in tls.items() if not path)
            if missing:
                raise ConfigError("mTLS needs tls_cert_file, tls_key_file and tls_client_ca_file together; %s %s unset"
                                  % (", ".join(missing), "is" if len(missing) == 1 else "are"))
            for name, path in tls.items():
                if not os.path.isfile(str(path)):
                    raise ConfigError("%s %s is not a file (the device's TLS identity: edgeai.fleet.device_identity)"
                                      % (name, path))
        return self

    @property
    def tls(self) -> bool:
        """Whether the service speaks mTLS (and its own clients on the device must, too)."""
        return bool(self.tls_cert_file)

    def profile(self) -> Dict[str, str]:
        """The class profile, as the controller chooses model variants by it."""
        return {"hardware_class": self.hardware_class, "runtime": self.runtime, "precision": self.precision}

    def with_overrides(self, **overrides: Any) -> "RuntimeConfig":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise ConfigError("%s is not valid JSON: %s" % (path, exc)) from None
    if not isinstance(data, dict):
        raise ConfigError("%s must hold a JSON object" % path)
    return data


def load_config(root: str = DEFAULT_ROOT, **overrides: Any) -> RuntimeConfig:
    """Defaults, then <root>/etc/profile.json (the provision role's class profile),
    then <root>/etc/runtime.json (the service settings), then ``overrides``;
    the token may also come from EDGEAI_RUNTIME_TOKEN or <root>/etc/token.

    The root must exist: the provision role creates it (with the layout and the runtime's venv in
    it), and the runtime never does, so a mistyped root is refused (RootMissing) instead of
    becoming a fresh, empty device."""
    if not os.path.isdir(root):
        raise RootMissing("the device root %s %s; provision the device first (edgeai.fleet.provision) or pass "
                          "the right --root" % (root, "is not a directory" if os.path.exists(root)
                                                else "does not exist"))
    known = {f.name for f in fields(RuntimeConfig)}
    values: Dict[str, Any] = {"root": root}
    profile = _read_json(os.path.join(root, "etc", "profile.json"))
    for key in ("hardware_class", "runtime", "precision", "max_batch_size", "memory_limit_bytes"):
        if key in profile:
            values[key] = profile[key]
    service = _read_json(os.path.join(root, "etc", "runtime.json"))
    unknown = sorted(set(service) - known)
    if unknown:
        raise ConfigError("%s: unknown settings %s" % (os.path.join(root, "etc", "runtime.json"), ", ".join(unknown)))
    values.update(service)
    token = os.environ.get("EDGEAI_RUNTIME_TOKEN")
    token_file = os.path.join(root, "etc", "token")
    if not token and os.path.exists(token_file):
        with open(token_file, encoding="utf-8") as f:
            token = f.read().strip() or None
    if token:
        values["token"] = token
    try:
        config = RuntimeConfig(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    return config.with_overrides(**overrides).check()


INFERENCE_RESULT_MODES = ("all", "sample", "below_confidence")
OUTBOX_SYNCHRONOUS = ("FULL", "NORMAL")


@dataclass(frozen=True)
class TelemetryConfig:
    """Telemetry, the outbox and its MQTT sync: ``<root>/etc/telemetry.json`` (the inference_service
    role writes it). Without ``mqtt_host`` records are queued and kept (up to the byte cap), never sent."""

    root: str = DEFAULT_ROOT
    device_id: str = ""                    # default: the host name; also the certificate's CN and the topic
    interval_s: float = 60.0               # one telemetry sample this often (the daemon)
    stats_window_s: float = 300.0          # inference p50/p95 over this window
    evidence_root: str = "/"               # where sysfs/procfs sensor files are read (sim devices: their evidence)
    textfile_dir: Optional[str] = None     # node_exporter's textfile collector directory, when it runs here
    outbox_max_bytes: int = 64 * 1024 ** 2
    # SQLite PRAGMA synchronous: FULL loses nothing acknowledged to a power cut, NORMAL its last commits
    # (docs/telemetry.md, measured there)
    outbox_synchronous: str = "FULL"
    mqtt_host: Optional[str] = None
    mqtt_port: int = 8883
    mqtt_topic_prefix: str = "edgeai"      # topics are <prefix>/<device id>/<kind>
    mqtt_ca_file: Optional[str] = None     # default <root>/keys/tls/ca.crt
    mqtt_cert_file: Optional[str] = None   # default <root>/keys/tls/device.crt
    mqtt_key_file: Optional[str] = None    # default <root>/keys/tls/device.key
    mqtt_keepalive_s: int = 30
    sync_batch: int = 100                  # records read from the outbox, and in flight, at a time
    backoff_initial_s: float = 1.0         # reconnect backoff: full jitter, doubling up to backoff_max_s
    backoff_max_s: float = 300.0
    # model name -> {"mode": "all" | "sample" | "below_confidence", "sample_rate": 0..1, "confidence_below": 0..1}
    inference_results: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    @property
    def outbox_path(self) -> str:
        return os.path.join(self.root, "outbox", "outbox.sqlite3")

    def tls_file(self, which: str) -> str:
        """``ca``, ``cert`` or ``key``: the configured path, or the identity role's default."""
        configured = {"ca": self.mqtt_ca_file, "cert": self.mqtt_cert_file, "key": self.mqtt_key_file}[which]
        default = {"ca": "ca.crt", "cert": "device.crt", "key": "device.key"}[which]
        return configured or os.path.join(self.root, "keys", "tls", default)

    def check(self) -> "TelemetryConfig":
        for name in ("interval_s", "stats_window_s", "backoff_initial_s", "backoff_max_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ConfigError("%s must be a positive number of seconds, not %r" % (name, value))
        if self.backoff_max_s < self.backoff_initial_s:
            raise ConfigError("backoff_max_s (%s) is below backoff_initial_s (%s)"
                              % (self.backoff_max_s, self.backoff_initial_s))
        if self.outbox_max_bytes < 1024 ** 2:
            raise ConfigError("outbox_max_bytes must be at least 1 MiB, not %r" % self.outbox_max_bytes)
        if self.outbox_synchronous not in OUTBOX_SYNCHRONOUS:
            raise ConfigError("outbox_synchronous must be one of %s, not %r"
                              % (", ".join(OUTBOX_SYNCHRONOUS), self.outbox_synchronous))
        if not 0 < self.mqtt_port < 65536 or self.sync_batch < 1 or self.mqtt_keepalive_s < 1:
            raise ConfigError("mqtt_port must be 1-65535, sync_batch and mqtt_keepalive_s at least 1")
        if not self.device_id or "/" in self.device_id or "+" in self.device_id or "#" in self.device_id:
            raise ConfigError("device_id %r must be non-empty and hold no MQTT topic characters (/ + #)"
                              % self.device_id)
        for model, policy in self.inference_results.items():
            if not isinstance(policy, dict) or policy.get("mode") not in INFERENCE_RESULT_MODES:
                raise ConfigError("inference_results[%s].mode must be one of %s"
                                  % (model, ", ".join(INFERENCE_RESULT_MODES)))
            for key in ("sample_rate", "confidence_below"):
                value = policy.get(key, 1.0)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                    raise ConfigError("inference_results[%s].%s must be between 0 and 1, not %r" % (model, key, value))
        return self


def load_telemetry_config(root: str = DEFAULT_ROOT, **overrides: Any) -> TelemetryConfig:
    """Defaults, then ``<root>/etc/telemetry.json``, then ``overrides``; the device id defaults to the host name."""
    if not os.path.isdir(root):
        raise RootMissing("the device root %s does not exist; provision the device first" % root)
    path = os.path.join(root, "etc", "telemetry.json")
    values: Dict[str, Any] = _read_json(path)
    unknown = sorted(set(values) - {f.name for f in fields(TelemetryConfig)} - {"root"})
    if unknown:
        raise ConfigError("%s: unknown settings %s" % (path, ", ".join(unknown)))
    values["root"] = root
    values.update({k: v for k, v in overrides.items() if v is not None})
    values.setdefault("device_id", socket.gethostname())
    if not values["device_id"]:
        values["device_id"] = socket.gethostname()
    try:
        config = TelemetryConfig(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    return config.check()
