"""The outbox (edgeai_runtime.device.outbox) on real SQLite files: order, identity of records, the byte
cap and its evictions, several processes writing at once, and a real small filesystem running full."""
from __future__ import annotations

import json
import logging
import multiprocessing
import sqlite3

import pytest

from edgeai_runtime.device.config import ConfigError, TelemetryConfig
from edgeai_runtime.device.outbox import (DISK_RESERVE, MiB, PRIORITIES, RECORD_OVERHEAD, Outbox, OutboxError,
                                          OutboxRefused, read_boot_id)
from support.tmpfs import Tmpfs, fill, leave_free, unfill


def messages(outbox, limit=10 ** 6):
    return [json.loads(r.message) for r in outbox.pending(limit)]


def test_records_carry_device_boot_and_sequence_and_leave_highest_priority_first(tmp_path):
    box = Outbox(str(tmp_path / "outbox.sqlite3"), "dev-a")
    box.enqueue("inference", {"n": 1})
    box.enqueue("telemetry", {"n": 2})
    box.enqueue("ota", {"n": 3})
    box.enqueue("telemetry", {"n": 4})
    got = messages(box)
    assert [(m["kind"], m["data"]["n"]) for m in got] == [("ota", 3), ("telemetry", 2), ("telemetry", 4),
                                                          ("inference", 1)]
    boot = read_boot_id()
    assert boot != "unknown" and len(boot) == 36  # the kernel's (this test runs on Linux)
    assert {(m["device_id"], m["boot_id"]) for m in got} == {("dev-a", boot)}
    assert sorted(m["seq"] for m in got) == [1, 2, 3, 4]
    assert box.pending(2, skip_kinds=("ota",))[0].kind == "telemetry"
    assert box.pending(10, after={PRIORITIES["telemetry"]: 2})[1].seq == 4


def test_kinds_of_one_priority_leave_together_once_each_in_queue_order(tmp_path):
    """``ota`` and ``rollout`` share the top priority: neither is read twice, and holding one back (a broker that
    refuses its topic) holds back only that one."""
    box = Outbox(str(tmp_path / "outbox.sqlite3"), "dev-a")
    assert PRIORITIES["rollout"] == PRIORITIES["ota"] > PRIORITIES["telemetry"]
    box.enqueue("telemetry", {"n": 1})
    box.enqueue("ota", {"n": 2})
    box.enqueue("rollout", {"n": 3})
    box.enqueue("ota", {"n": 4})
    assert [(m["kind"], m["data"]["n"]) for m in messages(box)] == [("ota", 2), ("rollout", 3), ("ota", 4),
                                                                    ("telemetry", 1)]
    assert [r.kind for r in box.pending(10, skip_kinds=("ota",))] == ["rollout", "telemetry"]
    assert [r.seq for r in box.pending(10, after={PRIORITIES["ota"]: 3})] == [4, 1]
    assert box.status()["kinds"]["rollout"] == dict(box.status()["kinds"]["rollout"], records=1, priority=3)


def test_a_sequence_number_is_never_reused_and_bytes_add_up(tmp_path):
    path = str(tmp_path / "outbox.sqlite3")
    box = Outbox(path, "dev-a")
    seqs = box.enqueue_many("telemetry", [{"i": i} for i in range(5)])
    assert seqs == [1, 2, 3, 4, 5]
    assert box.delete(seqs) == 5 and box.status()["bytes"] == 0 and box.status()["delivered"] == 5
    box.close()
    again = Outbox(path, "dev-a")
    assert again.enqueue("telemetry", {}) == 6
    status = again.status()
    record = again.pending(1)[0]
    assert status["bytes"] == len(record.message) + RECORD_OVERHEAD and status["records"] == 1
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA page_size").fetchone()[0] == 16384


@pytest.mark.parametrize("mode, level", [("FULL", 2), ("NORMAL", 1)])
def test_synchronous_is_what_the_config_says(tmp_path, mode, level):
    config = TelemetryConfig(root=str(tmp_path), device_id="dev-a", outbox_synchronous=mode).check()
    box = Outbox.from_config(config)
    box.enqueue("telemetry", {})
    assert box._connect().execute("PRAGMA synchronous").fetchone()[0] == level
    assert box.path == str(tmp_path / "outbox" / "outbox.sqlite3")
    with pytest.raises(ConfigError, match="outbox_synchronous"):
        TelemetryConfig(root=str(tmp_path), device_id="dev-a", outbox_synchronous="OFF").check()


def test_the_byte_cap_evicts_lowest_priority_oldest_first_counts_and_logs(tmp_path, caplog):
    box = Outbox(str(tmp_path / "outbox.sqlite3"), "dev-a", max_bytes=MiB)
    pad = "x" * 10000
    box.enqueue("ota", {"pad": pad})
    box.enqueue_many("telemetry", [{"i": i, "pad": pad} for i in range(30)])
    inference = box.enqueue_many("inference", [{"i": i, "pad": pad} for i in range(60)])
    assert box.status()["evicted"]["inference"]["records"] == 0
    with caplog.at_level(logging.WARNING, logger="edgeai_runtime.device.outbox"):
        newer = box.enqueue_many("telemetry", [{"i": 100 + i, "pad": pad} for i in range(20)])
    status = box.status()
    assert status["bytes"] <= MiB
    kept = {r.seq for r in box.pending(10 ** 6)}
    evicted = [s for s in inference if s not in kept]
    assert evicted and evicted == inference[:len(evicted)]  # the oldest inference results went
    assert set(newer) <= kept
    assert status["kinds"]["ota"]["records"] == 1 and status["kinds"]["telemetry"]["records"] == 50
    assert status["evicted"]["inference"]["records"] == len(evicted) and status["evicted"]["telemetry"]["records"] == 0
    assert status["evicted"]["inference"]["bytes"] > len(evicted) * 10000
    lines = [r.getMessage() for r in caplog.records if "evicted" in r.getMessage()]
    assert len(lines) == 1 and "evicted %d records" % len(evicted) in lines[0] and str(box.path) in lines[0]


def test_a_record_never_evicts_one_of_higher_priority(tmp_path):
    box = Outbox(str(tmp_path / "outbox.sqlite3"), "dev-a", max_bytes=MiB)
    pad = "x" * 10000
    for i in range(120):  # more than the cap holds: telemetry evicts its own oldest
        box.enqueue("telemetry", {"i": i, "pad": pad})
    before = box.status()
    assert before["evicted"]["telemetry"]["records"] > 0 and before["bytes"] > MiB - 10000
    with pytest.raises(OutboxRefused) as refused:
        box.enqueue("inference", {"pad": pad})
    assert refused.value.reason == "outbox_full" and "higher priority" in str(refused.value)
    after = box.status()
    assert after["kinds"]["telemetry"]["records"] == before["kinds"]["telemetry"]["records"]
    assert after["kinds"]["inference"]["records"] == 0 and after["refused"]["inference"]["outbox_full"] == 1
    oldest = json.loads(box.pending(1)[0].message)["data"]["i"]
    box.enqueue("ota", {"pad": pad})  # an OTA outcome does push telemetry out, the oldest first
    assert box.status()["evicted"]["telemetry"]["records"] == before["evicted"]["telemetry"]["records"] + 1
    assert json.loads(box.pending(1, skip_kinds=("ota",))[0].message)["data"]["i"] == oldest + 1


def test_bad_records_are_refused_with_their_reason(tmp_path):
    box = Outbox(str(tmp_path / "outbox.sqlite3"), "dev-a")
    with pytest.raises(OutboxError) as bad:
        box.enqueue("gossip", {})
    assert bad.value.reason == "bad_record" and "gossip" in str(bad.value)
    with pytest.raises(OutboxRefused) as big:
        box.enqueue("telemetry", {"pad": "x" * (300 * 1024)})
    assert big.value.reason == "record_too_large"
    box.enqueue("telemetry", {"temp": float("nan"), "rails": [float("inf"), 1.5]})
    assert messages(box)[0]["data"] == {"temp": None, "rails": [None, 1.5]}


def test_status_of_a_missing_outbox_creates_nothing(tmp_path):
    path = tmp_path / "outbox" / "outbox.sqlite3"
    status = Outbox(str(path), "dev-a").status()
    assert status["exists"] is False and status["records"] == 0 and status["oldest_age_s"] is None
    assert not path.exists()


def _writer(path, count, worker):
    box = Outbox(path, "dev-a")
    for i in range(count):
        box.enqueue(("telemetry", "inference", "ota")[i % 3], {"worker": worker, "i": i})


def test_several_processes_enqueue_at_once(tmp_path):
    path = str(tmp_path / "outbox.sqlite3")
    Outbox(path, "dev-a").enqueue("telemetry", {"worker": -1, "i": 0})  # made before they race
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(path, 150, w)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    box = Outbox(path, "dev-a")
    got = messages(box)
    assert len(got) == 601 and len({m["seq"] for m in got}) == 601
    assert {(m["data"]["worker"], m["data"]["i"]) for m in got} == \
        {(w, i) for w in range(4) for i in range(150)} | {(-1, 0)}
    status = box.status()
    assert status["last_seq"] == 601
    assert status["bytes"] == sum(len(r.message) + RECORD_OVERHEAD for r in box.pending(10 ** 6))


@pytest.fixture
def small_fs(tmp_path):
    mounts = Tmpfs(tmp_path)
    yield mounts.mount(48 * MiB)
    mounts.close()


@pytest.fixture
def small_box(small_fs):
    box = Outbox(str(small_fs / "outbox" / "outbox.sqlite3"), "dev-a")
    yield box
    box.close()  # before the unmount


def test_near_a_full_disk_low_priority_is_refused_first_with_one_log_line(small_fs, small_box, caplog, monkeypatch):
    box = small_box
    box.enqueue("telemetry", {"first": True})
    leave_free(small_fs, DISK_RESERVE[1] - 2 * MiB)  # below the inference reserve, above telemetry's
    with caplog.at_level(logging.WARNING, logger="edgeai_runtime.device.outbox"):
        for _round in range(5):
            with pytest.raises(OutboxRefused) as low:
                box.enqueue("inference", {"x": 1})
            assert low.value.reason == "disk_low"
        box.enqueue("telemetry", {"x": 2})
        box.enqueue("ota", {"x": 3})
        refusals = [r for r in caplog.records if "refusing" in r.getMessage()]
        assert len(refusals) == 1, [r.getMessage() for r in refusals]
        line = refusals[0].getMessage()
        assert "refusing inference records" in line and str(small_fs) in line and "telemetry" in line
        leave_free(small_fs, DISK_RESERVE[2] - MiB)  # below telemetry's reserve too
        with pytest.raises(OutboxRefused) as low:
            box.enqueue("telemetry", {"x": 4})
        assert low.value.reason == "disk_low"
        box.enqueue("ota", {"x": 5})
        fill(small_fs)  # another writer took the last byte: even an OTA outcome has no room
        with pytest.raises(OutboxRefused) as full:
            box.enqueue("ota", {"x": 6})
        assert full.value.reason == "disk_low" and str(small_fs) in str(full.value)
        # Without the reserve, SQLite itself runs out of room: a record passes the check (the disk
        # has room for its bytes) but not the pages its transaction writes to the WAL.
        monkeypatch.setitem(DISK_RESERVE, PRIORITIES["ota"], 0)
        unfill(small_fs)
        leave_free(small_fs, 64 * 1024)
        with pytest.raises(OutboxRefused) as full:
            for i in range(1000):
                box.enqueue("ota", {"x": 6, "i": i, "pad": "y" * 6000})
        assert full.value.reason == "disk_full" and str(small_fs) in str(full.value), full.value
        unfill(small_fs)
        box.enqueue("inference", {"x": 7})
        assert [r.getMessage() for r in caplog.records].count(line) == 1
    status = box.status()
    assert status["refused"]["inference"]["disk_low"] == 5 and status["refused"]["telemetry"]["disk_low"] == 1
    kinds = [(m["kind"], m["data"].get("x")) for m in messages(box)]
    assert ("ota", 3) in kinds and ("ota", 5) in kinds and ("telemetry", 2) in kinds and ("inference", 7) in kinds
    assert box._connect().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
