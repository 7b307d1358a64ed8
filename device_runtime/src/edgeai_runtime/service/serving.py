"""Blue-green serving: which loaded version answers requests for each model.

A new version is loaded beside the serving one, warmed up and gated; only then
is it switched in, in one assignment under a lock. Requests hold a reference on
the version they started on, so in-flight requests finish there; the replaced
version stays loaded as ``previous`` (rollback is a pointer swap) as long as the
class memory limit allows, and is closed once its last request has finished.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional

import numpy as np

from edgeai_runtime.format.errors import EdgeAIError
from edgeai_runtime.service.backends import Backend, BackendOptions, create_backend
from edgeai_runtime.device.config import RuntimeConfig
from edgeai_runtime.service.gate import GateResult, run_gate
from edgeai_runtime.format.manifest import Manifest
from edgeai_runtime.device.store import ModelStore, StoreError
from edgeai_runtime.format.tensors import V2_TO_NUMPY

log = logging.getLogger(__name__)

BackendFactory = Callable[[str, bytes, BackendOptions], Backend]


class ModelNotFound(EdgeAIError, LookupError):
    """No such model, or no such version of it, is loaded."""

    default_reason = "not_found"


class LoadedModel:
    """One version loaded in a backend, with a count of the requests running on it."""

    def __init__(self, manifest: Manifest, backend: Backend, gate: GateResult, load_seconds: float,
                 gate_seconds: float = 0.0) -> None:
        self.manifest = manifest
        self.backend = backend
        self.gate = gate
        self.load_seconds = load_seconds
        self.gate_seconds = gate_seconds
        self.loaded_at = time.time()
        self._inflight = 0
        self._cond = threading.Condition()
        self._closed = False

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def memory_bytes(self) -> int:
        """What this version is charged against the memory limit: its model size."""
        return self.manifest.size

    def infer(self, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return self.backend.infer(inputs)

    def acquire(self) -> "LoadedModel":
        with self._cond:
            if self._closed:
                raise ModelNotFound("%s %s has been unloaded" % (self.name, self.version))
            self._inflight += 1
        return self

    def release(self) -> None:
        with self._cond:
            self._inflight -= 1
            self._cond.notify_all()

    @property
    def inflight(self) -> int:
        return self._inflight

    def close_when_idle(self, timeout: float) -> bool:
        """Wait for in-flight requests to finish, then close. True when it drained in time."""
        with self._cond:
            drained = self._cond.wait_for(lambda: self._inflight == 0, timeout)
            self._closed = True
        self.backend.close()
        return drained

    def describe(self) -> Dict[str, object]:
        return {"name": self.name, "version": self.version, "runtime": self.manifest.runtime,
                "precision": self.manifest.precision, "loaded_at": self.loaded_at,
                "load_seconds": round(self.load_seconds, 4), "gate": self.gate.to_dict(),
                "inflight": self._inflight, "backend": self.backend.details}


@dataclass
class Slot:
    active: Optional[LoadedModel] = None
    previous: Optional[LoadedModel] = None
    candidate: Optional[LoadedModel] = None  # loaded and gated beside the serving version, not serving
    last_error: Optional[str] = None
    history: List[Dict[str, object]] = field(default_factory=list)


class ModelManager:
    def __init__(self, store: ModelStore, config: RuntimeConfig,
                 backend_factory: BackendFactory = create_backend,
                 on_change: Optional[Callable[[LoadedModel], None]] = None) -> None:
        self.store = store
        self.config = config
        self.backend_factory = backend_factory
        self.on_change = on_change
        self._slots: Dict[str, Slot] = {}
        self._lock = threading.RLock()        # guards _slots
        self._switch_lock = threading.Lock()  # one load/switch at a time: loads are memory-heavy

    # -- serving ---------------------------------------------------------------------------

    def acquire(self, name: str, version: Optional[str] = None) -> LoadedModel:
        """The version to run a request on, with a reference held; call ``release()`` after."""
        with self._lock:
            slot = self._slots.get(name)
            candidates = [m for m in (slot.active, slot.previous) if m is not None] if slot else []
            if version is None:
                model = slot.active if slot else None
            else:
                model = next((m for m in candidates if m.version == version), None)
            if model is None:
                raise ModelNotFound("model %s%s is not loaded" % (name, " version %s" % version if version else ""))
            return model.acquire()

    def ready(self, name: str, version: Optional[str] = None) -> bool:
        try:
            self.acquire(name, version).release()
            return True
        except ModelNotFound:
            return False

    def names(self) -> List[str]:
        with self._lock:
            return sorted(n for n, s in self._slots.items() if s.active)

    def loaded(self) -> List[LoadedModel]:
        with self._lock:
            return [m for s in self._slots.values() for m in (s.active, s.previous, s.candidate) if m is not None]

    def status(self) -> List[Dict[str, object]]:
        with self._lock:
            return [{"name": name,
                     "active": slot.active.describe() if slot.active else None,
                     "previous": slot.previous.describe() if slot.previous else None,
                     "candidate": slot.candidate.describe() if slot.candidate else None,
                     "last_error": slot.last_error,
                     "history": list(slot.history[-10:])}
                    for name, slot in sorted(self._slots.items())]

    # -- changing --------------------------------------------------------------------------

    def load(self, name: str, version: str, latency_budget_ms: Optional[float] = None) -> LoadedModel:
        """Load a stored version, warm it up and run its gate. Raises on any failure; nothing is switched."""
        started = time.monotonic()
        manifest = self.store.manifest(name, version)
        self._check_compatible(manifest)
        model_bytes = self.store.read_model(name, version)
        options = BackendOptions(precision=manifest.precision, max_batch_size=self.config.max_batch_size,
                                 threads=self.config.threads)
        backend = self.backend_factory(manifest.runtime, model_bytes, options)
        try:
            self._check_signature(manifest, backend)
            backend.infer(_warmup_inputs(manifest))

            def read_file(filename: str) -> bytes:
                with open(self.store.file_path(name, version, filename), "rb") as f:
                    return f.read()

            loaded = time.monotonic()
            gate = run_gate(backend.infer, manifest, read_file, batch=self.config.max_batch_size,
                            latency_budget_ms=latency_budget_ms, probe_rows=_warmup_inputs(manifest))
        except BaseException:
            backend.close()
            raise
        return LoadedModel(manifest, backend, gate, loaded - started, time.monotonic() - loaded)

    def prepare(self, name: str, version: str, latency_budget_ms: Optional[float] = None) -> Dict[str, object]:
        """Load and gate ``version`` beside the serving one, without switching (blue-green's green).
        ``activate`` then switches to it at once. Raises on any failure; the serving version is untouched."""
        with self._switch_lock:
            slot = self._slot(name)
            for kept in (slot.active, slot.candidate, slot.previous):
                if kept is not None and kept.version == version and kept.gate.latency_budget_ms == latency_budget_ms:
                    return {"changed": False, "name": name, "version": version, "load_s": 0.0, "gate_s": 0.0,
                            "gate": kept.gate.to_dict()}
            started = time.monotonic()
            try:
                new = self.load(name, version, latency_budget_ms)
            except Exception as exc:
                self._record(slot, version, "refused", str(exc), time.monotonic() - started)
                raise
            with self._lock:
                old, slot.candidate = slot.candidate, new
            if old is not None:
                self._retire(old)
            self._enforce_memory_limit(slot)
            return {"changed": True, "name": name, "version": version, "load_s": round(new.load_seconds, 4),
                    "gate_s": round(new.gate_seconds, 4), "gate": new.gate.to_dict()}

    def activate(self, name: str, version: str, write_store: bool = True,
                 latency_budget_ms: Optional[float] = None, prune: bool = True) -> Dict[str, object]:
        """Switch ``name`` to ``version`` after loading and gating it beside the serving one
        (at once when ``prepare`` did that, or when it is the loaded previous version).
        ``prune``: the store then removes versions beyond its ``keep`` (the OTA installer defers
        that to its commit).

        On any failure the serving version keeps serving and the store is unchanged;
        the reason is recorded in the slot and raised.
        """
        with self._switch_lock:
            slot = self._slot(name)
            serving = slot.active.version if slot.active else None
            if serving == version and (not write_store or self.store.active(name) == version):
                return {"changed": False, "name": name, "version": version, "previous": serving}
            started = time.monotonic()
            reused = next((m for m in (slot.candidate, slot.previous) if m is not None and m.version == version), None)
            try:
                new = reused or self.load(name, version, latency_budget_ms)
            except Exception as exc:
                self._record(slot, version, "refused", str(exc), time.monotonic() - started)
                raise
            switched = time.monotonic()
            with self._lock:
                if reused is not None and reused is slot.candidate:
                    slot.candidate = None
                    reused_previous = False
                else:
                    reused_previous = reused is not None
                old_previous = slot.previous if slot.previous is not reused else None
                slot.previous, slot.active = slot.active, new
            if write_store:
                try:
                    self.store.activate(name, version, prune=prune)
                except (StoreError, OSError) as exc:
                    with self._lock:  # put the serving version back: memory and disk must agree
                        slot.active, slot.previous = slot.previous, (new if reused_previous else old_previous)
                    if not reused_previous:
                        new.close_when_idle(0)
                    self._record(slot, version, "refused", "switching the store: %s" % exc,
                                 time.monotonic() - started)
                    raise
            if old_previous is not None:
                self._retire(old_previous)
            self._enforce_memory_limit(slot)
            slot.last_error = None
            self._record(slot, version, "activated", None, time.monotonic() - started)
            if self.on_change:
                self.on_change(new)
            return {"changed": True, "name": name, "version": version, "previous": serving,
                    "seconds": round(time.monotonic() - started, 4), "instant": reused is not None,
                    "load_s": 0.0 if reused else round(new.load_seconds, 4),
                    "gate_s": 0.0 if reused else round(new.gate_seconds, 4),
                    "switch_s": round(time.monotonic() - switched, 4), "gate": new.gate.to_dict()}

    def rollback(self, name: str, version: Optional[str] = None) -> Dict[str, object]:
        """Serve the previous version again (or a given kept one). Instant when it is still loaded."""
        slot = self._slot(name)
        # The store's pointer first: after a failed update the version in memory as previous is the failed one.
        target = version or self.store.pointer(name, "previous") or (slot.previous.version if slot.previous else None)
        if target is None:
            raise StoreError("rolling back %s: no previous version is kept" % name)
        return self.activate(name, target)

    def discard(self, name: str, version: str) -> bool:
        """Unload ``version`` if it is loaded but not serving (a failed update's version), or serving
        although the store no longer points at it (a failed first install). True if it was loaded."""
        with self._switch_lock:
            slot = self._slot(name)
            with self._lock:
                doomed = [m for m in (slot.previous, slot.candidate) if m is not None and m.version == version]
                if slot.active is not None and slot.active.version == version and self.store.active(name) != version:
                    doomed.append(slot.active)
                    slot.active = None
                if slot.previous is not None and slot.previous.version == version:
                    slot.previous = None
                if slot.candidate is not None and slot.candidate.version == version:
                    slot.candidate = None
            for model in doomed:
                self._retire(model)
            return bool(doomed)

    def sync_from_store(self) -> Dict[str, Optional[str]]:
        """Load what the store says is active, for every model. Returns {name: error or None}."""
        errors: Dict[str, Optional[str]] = {}
        for name in self.store.names():
            version = self.store.active(name)
            if version is None:
                continue
            try:
                self.activate(name, version, write_store=False)
                errors[name] = None
            except Exception as exc:  # one bad model must not stop the others
                log.error("loading %s %s: %s", name, version, exc)
                errors[name] = str(exc)
        return errors

    def close(self) -> None:
        for model in self.loaded():
            model.close_when_idle(self.config.drain_timeout_s)

    # -- internals -------------------------------------------------------------------------

    def _slot(self, name: str) -> Slot:
        with self._lock:
            return self._slots.setdefault(name, Slot())

    def _record(self, slot: Slot, version: str, outcome: str, reason: Optional[str], seconds: float) -> None:
        if reason:
            slot.last_error = reason
        slot.history.append({"version": version, "outcome": outcome, "reason": reason,
                             "seconds": round(seconds, 4), "time": time.time()})
        del slot.history[:-50]

    def _retire(self, model: LoadedModel) -> None:
        threading.Thread(target=model.close_when_idle, args=(self.config.drain_timeout_s,),
                         name="retire-%s-%s" % (model.name, model.version), daemon=True).start()

    def _enforce_memory_limit(self, keep: Slot) -> None:
        """Unload previous versions (other models' first) while loaded models exceed the limit."""
        with self._lock:
            total = sum(m.memory_bytes for m in self.loaded())
            order = sorted(self._slots.values(), key=lambda s: s is keep)
            for slot in order:
                if total <= self.config.memory_limit_bytes:
                    break
                if slot.previous is not None:
                    total -= slot.previous.memory_bytes
                    log.info("unloading %s %s to stay within the memory limit", slot.previous.name,
                             slot.previous.version)
                    self._retire(slot.previous)
                    slot.previous = None

    def _check_compatible(self, manifest: Manifest) -> None:
        classes = manifest.hardware_classes
        if classes and self.config.hardware_class not in classes:
            raise StoreError("%s %s is built for %s, not for this %s device"
                             % (manifest.name, manifest.version, ", ".join(classes), self.config.hardware_class))

    @staticmethod
    def _check_signature(manifest: Manifest, backend: Backend) -> None:
        """The manifest's signature must be what the model really takes and gives."""
        real = {t.name: t for t in list(backend.inputs) + list(backend.outputs)}
        for sig in list(manifest.inputs) + list(manifest.outputs):
            got = real.get(sig.name)
            if got is None:
                raise StoreError("%s %s: the model has no tensor %r named in the manifest (it has %s)"
                                 % (manifest.name, manifest.version, sig.name, ", ".join(sorted(real))))
            if got.datatype != sig.datatype:
                raise StoreError("%s %s: tensor %r is %s in the model but %s in the manifest"
                                 % (manifest.name, manifest.version, sig.name, got.datatype, sig.datatype))


def _warmup_inputs(manifest: Manifest) -> Dict[str, np.ndarray]:
    return {t.name: np.zeros([1 if d < 0 else d for d in t.shape], dtype=V2_TO_NUMPY[t.datatype])
            for t in manifest.inputs}
