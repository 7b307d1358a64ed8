"""The runtime's configuration: one typed object, read from the files the roles write."""
from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass, fields, replace
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
        return self

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
