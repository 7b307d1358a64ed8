"""Real processes for the outbox's kill -9 test: a parent with the runtime already imported forks one
worker per cycle (so that a cycle costs a fork, not a Python start), and the test kills it with
SIGKILL at a random moment.

Protocol on the parent's stdin/stdout, one line each way:
  ``run MODE SEED ACKFILE`` -> ``<pid>``: fork a worker; MODE is ``enqueue``, ``sync`` or ``both``.
  ``reap PID``             -> ``<wait status>``: collect a worker the test killed (until then its
                               pid stays a zombie, never reused by another process).

A worker appends to ACKFILE with os.write (the page cache keeps it when the process is killed):
  ``E <seq>``       an enqueue returned: the record is acknowledged;
  ``P <seq> ...``   the broker's successful PUBACKs, written before the records are deleted;
  ``D``             the delete after those PUBACKs returned.
"""
from __future__ import annotations

import json
import os
import random
import sys
import threading
from typing import List

from edgeai_runtime.device.config import TelemetryConfig
from edgeai_runtime.device.mqtt_sync import MqttSync, SyncFailed
from edgeai_runtime.device.outbox import Outbox, OutboxError

KINDS = ("telemetry", "inference", "ota", "rollout")


def _note(fd: int, line: str) -> None:
    os.write(fd, (line + "\n").encode())


def _enqueue_forever(box: Outbox, fd: int, rng: random.Random, burst: int = 1) -> None:
    i = 0
    while True:
        kind = rng.choice(KINDS)
        if burst == 1:
            seqs = [box.enqueue(kind, {"i": i, "pid": os.getpid(), "pad": "x" * rng.randrange(0, 400)})]
        else:
            seqs = box.enqueue_many(kind, [{"i": i + n, "pid": os.getpid()} for n in range(burst)])
        for seq in seqs:
            _note(fd, "E %d" % seq)
        i += len(seqs)


def _sync_forever(config: TelemetryConfig, box: Outbox, fd: int, rng: random.Random, refill: bool) -> None:
    sync = MqttSync(config, box)

    def pubacked(seqs: List[int]) -> None:
        _note(fd, "P " + " ".join(map(str, seqs)))

    sync.on_puback = pubacked
    while True:
        try:
            done = sync.publish_batch()
            if done.delivered:
                _note(fd, "D")
            if not done.sent and refill:  # keep a backlog, so that the kill finds the sync busy
                for seq in box.enqueue_many("telemetry", [{"refill": n} for n in range(rng.randrange(50, 300))]):
                    _note(fd, "E %d" % seq)
        except (SyncFailed, OutboxError):
            sync.close()


def work(config_path: str, mode: str, seed: int, ack_file: str) -> None:
    with open(config_path, encoding="utf-8") as f:
        config = TelemetryConfig(**json.load(f)).check()
    rng = random.Random(seed)
    fd = os.open(ack_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    box = Outbox.from_config(config)
    if mode == "enqueue":
        _enqueue_forever(box, fd, rng, burst=rng.choice((1, 1, 1, 20)))
    elif mode == "sync":
        _sync_forever(config, box, fd, rng, refill=True)
    else:  # both, as the telemetry daemon does: a writer beside the sync
        writer = Outbox.from_config(config)
        threading.Thread(target=_enqueue_forever, args=(writer, fd, random.Random(seed + 1)), daemon=True).start()
        _sync_forever(config, box, fd, rng, refill=False)


def zygote(config_path: str) -> None:
    for line in sys.stdin:
        words = line.split()
        if words[0] == "run":
            pid = os.fork()
            if pid == 0:
                devnull = os.open(os.devnull, os.O_RDWR)
                os.dup2(devnull, 0)
                os.dup2(devnull, 1)
                try:
                    work(config_path, words[1], int(words[2]), words[3])
                finally:
                    os._exit(0)
            print(pid, flush=True)
        elif words[0] == "reap":
            _pid, status = os.waitpid(int(words[1]), 0)
            print(status, flush=True)


if __name__ == "__main__":
    zygote(sys.argv[1])
