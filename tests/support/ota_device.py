"""A device root for OTA tests: v1.0.0 serving from a signed artifact, the service running on 127.0.0.1."""
from __future__ import annotations

import os
import signal

import httpx
import numpy as np

from edgeai_runtime.device.config import load_config
from edgeai_runtime.device.journal import History
from edgeai_runtime.device.ota import Policy, Updater
from edgeai_runtime.device.store import ModelStore

from . import artifacts, modelgen
from .service import start_service, write_config

QUICK = Policy(watch_s=0.6, interval_s=0.2)


class Device:
    """A device root with v1.0.0 serving from a signed artifact, and the service running."""

    def __init__(self, root, signer, digits):
        self.root, self.signer, self.digits = root, signer, digits
        self.ring = artifacts.device(str(root), signer)
        self.art_dir = root.parent / ("%s-artifacts" % root.name)
        self.art_dir.mkdir()
        write_config(root, require_signed=True)
        path, packed, files = self.pack("1.0.0")
        store = ModelStore(str(root), require_signed=True)
        store.install_artifact(path, artifacts.slot_for(packed, self.ring), files)
        store.activate("digits", "1.0.0")
        self.proc = None
        self.start()

    def pack(self, version, model=None, **kwargs):
        model = model if model is not None else modelgen.digits_onnx(self.digits)
        return artifacts.pack_digits(str(self.art_dir), version, model, self.digits, self.signer, **kwargs)

    def start(self):
        self.proc, self.base = start_service(self.root)

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)

    def updater(self):
        return Updater(load_config(str(self.root)))

    def apply(self, version_or_path, policy=QUICK, slot=None, files=None, **kwargs):
        if isinstance(version_or_path, str) and version_or_path.endswith(".eaf"):
            path, packed = version_or_path, None
        else:
            path, packed, files = self.pack(version_or_path, **kwargs)
        slot = slot or artifacts.slot_for(packed, self.ring)
        return self.updater().apply(path, slot, files, policy)

    def serving(self):
        status = httpx.get(self.base + "/v2/admin/status", timeout=30).json()
        [entry] = [e for e in status["serving"] if e["name"] == "digits"]
        return entry["active"]["version"]

    def answers(self, version):
        x = self.digits.X_test[:2].astype(np.float32)
        body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        r = httpx.post(self.base + "/v2/models/digits/versions/%s/infer" % version, json=body, timeout=30)
        return r.status_code == 200

    def store(self):
        return ModelStore(str(self.root), require_signed=True)

    def history(self):
        return History(str(self.root / "state" / "history.sqlite")).rows()

    def assert_previous_serves(self, version="1.0.0"):
        """The fault matrix's invariant: the previous version serves, the store is consistent."""
        assert self.serving() == version and self.answers(version)
        store = self.store()
        assert store.active("digits") == version
        assert not [e for e in os.listdir(self.root / "models" / "digits") if e.startswith(".")
                    and e != ".lock"], "staging left behind"
        for v in store.versions("digits"):
            store.manifest("digits", v)  # every kept version is complete
        assert not (self.root / "state" / "ota.json").exists()
        assert all(row["outcome"] != "in_progress" for row in self.history())
