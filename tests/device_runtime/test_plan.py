"""The one rule of "anything to do" (edgeai_runtime.device.plan): the rule itself over store entries, and
what asks it on the device: ``ota plan`` / ``ota apply --check`` against a real store with the
service running on 127.0.0.1, and the OTA installer refusing another build under a held version."""
from __future__ import annotations

import json

import pytest

from edgeai_runtime.device.ota import UpdateFailed
from edgeai_runtime.device.plan import PlanRefused, Want, plan
from support import artifacts, modelgen
from support.ota_device import QUICK
from support.service import runtime

SHA1, SHA2 = "1" * 64, "2" * 64
STORE = [{"name": "digits", "versions": ["1.0.0", "2.0.0"], "active": "2.0.0", "previous": "1.0.0",
          "installed": {"1.0.0": {"sha256": SHA1, "signed": True, "key_id": "old"},
                        "2.0.0": {"sha256": SHA2, "signed": True, "key_id": "new"}}}]


@pytest.mark.parametrize("want, serving, steps, reason, send, after", [
    (Want("digits", "2.0.0", "active", SHA2, "new"), None, [], "serving", "nothing", "2.0.0"),
    (Want("digits", "2.0.0", "active", SHA2, "new"), True, [], "serving", "nothing", "2.0.0"),
    (Want("digits", "2.0.0", "active", SHA2, "new"), False, ["activate"], "not_serving", "nothing", "2.0.0"),
    (Want("digits", "2.0.0", "active"), None, [], "serving", "nothing", "2.0.0"),  # any build, key not judged
    (Want("digits", "1.0.0", "active", SHA1), None, ["activate"], "held", "nothing", "1.0.0"),
    (Want("digits", "1.0.0", "active", SHA1, "new"), None, ["rekey", "activate"], "stale_key", "keyslot", "1.0.0"),
    (Want("digits", "1.0.0", "present", SHA1, "new"), None, ["rekey"], "stale_key", "keyslot", "2.0.0"),
    (Want("digits", "1.0.0", "present", SHA1, "old"), None, [], "installed", "nothing", "2.0.0"),
    (Want("digits", "3.0.0", "present", "3" * 64, "new"), None, ["install"], "missing", "artifact", "2.0.0"),
    (Want("digits", "3.0.0", "active", "3" * 64, "new"), None, ["install", "activate"], "missing", "artifact", "3.0.0"),
    (Want("other", "1.0.0", "active"), None, ["install", "activate"], "missing", "artifact", "1.0.0"),
    (Want("digits", "1.0.0", "absent"), None, ["remove"], "removable", "nothing", "2.0.0"),
    (Want("digits", "9.0.0", "absent"), None, [], "absent", "nothing", "2.0.0"),
    (Want("digits", None, "rolled_back"), None, ["rollback"], "rollback", "nothing", "1.0.0"),
    (Want("digits", "2.0.0", "rolled_back"), None, [], "serving", "nothing", "2.0.0"),
])
def test_the_rule(want, serving, steps, reason, send, after):
    decided = plan(STORE, want, serving=serving)
    got = (decided["steps"], decided["reason"], decided["send"], decided["active_after"])
    assert got == (steps, reason, send, after)
    assert decided["changed"] is bool(steps)
    assert decided["active_version"] == ("2.0.0" if want.name == "digits" else None)
    assert decided["msg"].startswith("would " if steps else want.name)


@pytest.mark.parametrize("want, reason, words", [
    (Want("digits", "2.0.0", "active", SHA1), "different_build", "a different build is held as digits 2.0.0"),
    (Want("digits", "1.0.0", "present", SHA2), "different_build", "sha256 " + SHA1),
    (Want("digits", "2.0.0", "absent"), "is_active", "it is the active version"),
    (Want("digits", "7.0.0", "rolled_back"), "no_previous", "version 7.0.0 is not held here"),
    (Want("other", None, "rolled_back"), "no_previous", "no previous version is kept"),
    (Want("digits", None, "active"), "bad_state", "needs a version"),
    (Want("digits", "1.0.0", "installed"), "bad_state", "is none of present, active, absent, rolled_back"),
])
def test_what_cannot_be_done_is_refused_with_a_reason(want, reason, words):
    with pytest.raises(PlanRefused, match=words) as caught:
        plan(STORE, want)
    assert caught.value.reason == reason


def cli(device, *args):
    done = runtime(device.root, "ota", *args)
    return done.returncode, json.loads(done.stdout)


def test_the_device_asks_the_rule_and_changes_nothing(device):
    """ota plan / ota apply --check on a real store with the service serving 1.0.0: the plan, no change."""
    before = device.store().status()
    rc, serving = cli(device, "plan", "digits", "1.0.0", "--current-key")
    assert rc == 0 and not serving["changed"] and not serving["would_change"], serving
    assert (serving["reason"], serving["steps"], serving["send"]) == ("serving", [], "nothing")

    path, _packed, _files = device.pack("2.0.0", model=modelgen.digits_onnx(modelgen.train_digits_mlp(seed=3)))
    rc, new = cli(device, "apply", "--check", "--artifact", path)
    assert rc == 0 and not new["changed"] and new["would_change"] and new["check"], new
    assert (new["version"], new["steps"], new["send"], new["active_after"]) == ("2.0.0", ["install", "activate"],
                                                                                "artifact", "2.0.0")
    rc, installed = cli(device, "apply", "--check", "--installed", "digits", "1.0.0")
    assert rc == 0 and not installed["would_change"] and installed["reason"] == "serving", installed
    rc, other_key = cli(device, "plan", "digits", "1.0.0", "--state", "present", "--key-id", "another-key")
    assert rc == 0 and other_key["would_change"] and other_key["send"] == "keyslot", other_key

    rc, refused = cli(device, "plan", "digits", "1.0.0", "--sha256", "0" * 64)
    assert rc == 1 and refused["failed"] and refused["reason"] == "different_build" and not refused["changed"]
    assert "a different build is held as digits 1.0.0" in refused["msg"]
    rc, refused = cli(device, "plan", "digits", "--state", "rolled_back")
    assert rc == 1 and refused["reason"] == "no_previous", refused
    assert device.store().status() == before and device.history() == []


def test_a_version_the_service_does_not_serve_is_activated_again(device):
    """The store's pointer says 2.0.0 while the running service still serves 1.0.0 (the pointer moved
    behind its back): the rule says activate, from what the device holds."""
    path, packed, files = device.pack("2.0.0", model=modelgen.digits_onnx(modelgen.train_digits_mlp(seed=3)))
    store = device.store()
    store.install_artifact(path, artifacts.slot_for(packed, device.ring), files)
    store.activate("digits", "2.0.0")
    assert device.serving() == "1.0.0"
    rc, decided = cli(device, "plan", "digits", "2.0.0")
    assert rc == 0 and decided["would_change"] and (decided["reason"], decided["steps"]) == ("not_serving",
                                                                                             ["activate"]), decided
    result = device.updater().apply_installed("digits", "2.0.0", QUICK)
    assert result["changed"] and result["outcome"] == "committed" and device.serving() == "2.0.0"
    rc, decided = cli(device, "plan", "digits", "2.0.0")
    assert rc == 0 and not decided["would_change"] and decided["reason"] == "serving"


def test_the_installer_refuses_another_build_under_a_held_version(device):
    """Another model packed as 1.0.0 (the version that serves): refused before anything is written,
    with the rule's reason code, and recorded."""
    path, packed, files = device.pack("1.0.0", model=modelgen.digits_onnx(modelgen.train_digits_mlp(seed=5)))
    with pytest.raises(UpdateFailed, match="a different build is held as digits 1.0.0") as caught:
        device.updater().apply(path, artifacts.slot_for(packed, device.ring), files, QUICK)
    assert not caught.value.result["changed"] and caught.value.result["reason_code"] == "different_build"
    device.assert_previous_serves("1.0.0")
    [row] = device.history()
    assert row["outcome"] == "refused" and "different build" in row["reason"]
