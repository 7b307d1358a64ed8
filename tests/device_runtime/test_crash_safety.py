"""Crash and disk-full safety of the one update path (`edgeai-runtime ota apply` and the store under
it), on real files: real tmpfs filesystems for a full disk, real SIGKILLs for crashes.

- kill -9 exactly between every pair of store writes (the write points the runtime marks,
  edgeai_runtime.fsutil.write_point), enumerated by a trace run and killed at one by one: the next
  command of any kind finds a consistent store with a valid rollback target and sweeps what the kill
  left, and recovery ends the transaction committed or rolled back, as its journal says;
- a full disk at every free-space level (one page apart) across the whole `ota apply`: refused
  before anything is written, with a message naming the filesystem, the bytes needed and free and
  the version that stays serving, or applied; never a state and a result that disagree;
- the disk filling up after the switch (the history write fails): the result says changed, names
  the active version and the bookkeeping failure, and the next run writes the missing row;
- what every command reports: ``swept``, ``changed`` only for a change, a missing root refused.

No service runs here: every store write is then made by the CLI process that is killed (the OTA
tests in test_ota.py cover the service's side of the switch).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgeai_runtime import cli
from edgeai_runtime.device.config import load_config
from edgeai_runtime.fsutil import CRASH_ENV, TRACE_ENV
from edgeai_runtime.device.journal import History, Journal
from edgeai_runtime.device.ota import Policy, Updater
from edgeai_runtime.device.store import ModelStore
from support import artifacts
from support.service import write_config
from support.tmpfs import Tmpfs, fill, free_bytes, leave_free, unfill

PAGE = 4096


class Template:
    """A device root with no service: digits 0.9.0 then 1.0.0 applied through `ota apply` (1.0.0
    active, 0.9.0 its rollback target, two history rows), ``keep_versions: 1``; digits 2.0.0 packed
    beside it with its key slot and gate files on disk. Tests copy it (``copy_to``)."""

    def __init__(self, base: Path, signer, digits, model: bytes) -> None:
        self.root = base / "root"
        self.art_dir = base / "artifacts"
        self.art_dir.mkdir(parents=True)
        ring = artifacts.device(str(self.root), signer)
        write_config(self.root, require_signed=True, keep_versions=1)
        self.paths = {}
        for version in ("0.9.0", "1.0.0", "2.0.0"):
            path, packed, files = artifacts.pack_digits(str(self.art_dir), version, model, digits, signer)
            slot = self.art_dir / ("slot-%s.json" % version)
            slot.write_text(json.dumps(artifacts.slot_for(packed, ring)))
            self.paths[version] = (path, str(slot))
        for name, data in files.items():  # the same gate files for every version
            (self.art_dir / name).write_bytes(data)
        self.files = sorted(files)
        updater = Updater(load_config(str(self.root)))
        for version in ("0.9.0", "1.0.0"):
            updater.apply(self.paths[version][0], json.loads(Path(self.paths[version][1]).read_text()),
                          dict(files), Policy(watch_s=0))

    def source(self, version: str = "2.0.0") -> list:
        path, slot = self.paths[version]
        return ["--artifact", path, "--keyslot", slot] + [
            "--file=%s=%s" % (name, self.art_dir / name) for name in self.files]

    def apply_args(self, version: str = "2.0.0") -> list:
        return ["ota", "apply"] + self.source(version) + ["--watch", "0"]

    def copy_to(self, dest: Path, legacy: bool = False) -> Path:
        """A copy of the root at ``dest``; ``legacy``: with the two pointer symlinks an older runtime wrote."""
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(self.root, dest, symlinks=True)
        if legacy:
            models = dest / "models" / "digits"
            os.unlink(models / "pointers")
            os.symlink("1.0.0", models / "active")
            os.symlink("0.9.0", models / "previous")
        return dest


@pytest.fixture(scope="module")
def template(tmp_path_factory, signer, digits, digits_onnx):
    return Template(tmp_path_factory.mktemp("crash-template"), signer, digits, digits_onnx)


@pytest.fixture
def tmpfs(tmp_path):
    mounts = Tmpfs(tmp_path)
    yield mounts
    mounts.close()


def run_cli(capsys, root, *args):
    """`edgeai-runtime --root ROOT ARGS` in this process (the CLI's main, its JSON line parsed)."""
    code = cli.main(["--root", str(root)] + [str(a) for a in args])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    return code, json.loads(lines[-1])


def store_of(root) -> ModelStore:
    return ModelStore(str(root), require_signed=True)


def leftovers(root, state=True) -> list:
    """What a writer leaves only while it runs: staging directories, pointer and journal temp files."""
    found = []
    for dirpath, dirs, names in os.walk(Path(root) / "models"):
        for entry in dirs + names:
            if entry.startswith((".staging-", ".ptr-", ".tmp-")):
                found.append(os.path.relpath(os.path.join(dirpath, entry), root))
    if state and (Path(root) / "state").is_dir():
        found += ["state/%s" % e for e in os.listdir(Path(root) / "state") if e.startswith(".tmp-")]
    return sorted(found)


def consistent_pair(root) -> tuple:
    """The pointer pair is one of the two a transaction may leave, and both versions are complete
    and decrypt to their signed sha256 (what the service would load)."""
    store = store_of(root)
    pair = store.pointers("digits")
    assert pair in (("1.0.0", "0.9.0"), ("2.0.0", "1.0.0")), pair
    for version in pair:
        assert store.read_model("digits", version)
    return pair


def journal(root):
    path = Path(root) / "state" / "ota.json"
    return json.loads(path.read_text()) if path.exists() else None


# -- kill -9 at every write point ------------------------------------------------------------

#: The command that runs next after a kill, by turns: every kind, reading or writing.
NEXT = (("ota", "recover"), ("model", "list"), ("ota", "apply"), ("keys", "show"), ("ota", "history"),
        ("model", "status"), ("artifact", "verify"), ("probe",))


def cli_process(root, args, trace, crash_at=None):
    env = dict(os.environ, **{TRACE_ENV: str(trace)})
    if crash_at is not None:
        env[CRASH_ENV] = str(crash_at)
    return subprocess.run([sys.executable, "-m", "edgeai_runtime.cli", "--root", str(root)] + list(args),
                          capture_output=True, text=True, env=env, timeout=120, check=False)


def test_kill_9_between_every_pair_of_store_writes(template, tmp_path, capsys):
    """The store starts in the layout an older runtime wrote (two pointer symlinks), so that the
    migration to the pointer record is among the writes; keep_versions: 1, so that the commit's
    pruning is too. A trace run lists every write point of `ota apply`; then, for each point n,
    a fresh copy of that store, the installer killed with SIGKILL just before write n, and:

    - right after the kill, the pointer pair is valid (old pair or new pair, never a mix);
    - the next command (by turns each of NEXT) succeeds, removes and reports every staging
      directory or temp file the kill left, and leaves a valid pair;
    - after recovery the transaction is committed exactly when the kill came after the journal's
      commit rename, and otherwise rolled back to 1.0.0 with 0.9.0 as its rollback target again;
      the journal is gone and no history row is left in progress.
    """
    pristine = template.copy_to(tmp_path / "pristine", legacy=True)
    root, trace = tmp_path / "root", tmp_path / "trace"
    args = template.apply_args()

    shutil.copytree(pristine, root, symlinks=True)
    done = cli_process(root, args, trace)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["outcome"] == "committed"
    points = trace.read_text().splitlines()
    for expected in ("write journal phase verify (rename)", "history: begin", "stage model.eaf",
                     "stage digits 2.0.0 (rename into place)", "pointers digits (rename the record into place)",
                     "pointers digits (remove the old active symlink)", "write journal phase commit (rename)",
                     "remove digits 0.9.0 (rename out of place)", "history: finish (committed)", "journal: remove"):
        assert expected in points, (expected, points)
    commit_point = points.index("write journal phase commit (rename)") + 1  # 1-based, like CRASH_AT
    with capsys.disabled():
        print("\nwrite points of ota apply (%d):\n  %s" % (len(points), "\n  ".join(
            "%2d %s" % (i + 1, label) for i, label in enumerate(points))))

    outcomes = {}
    for n in range(1, len(points) + 1):
        shutil.rmtree(root)
        shutil.copytree(pristine, root, symlinks=True)
        trace.unlink()
        killed = cli_process(root, args, trace, crash_at=n)
        assert killed.returncode == -signal.SIGKILL, (n, killed.stdout, killed.stderr[-2000:])
        assert trace.read_text().splitlines() == points[:n], n  # the same writes, in the same order, up to n
        consistent_pair(root)
        left = leftovers(root)

        kind = NEXT[n % len(NEXT)]
        extra = {"ota apply": template.source(), "artifact verify": [template.paths["2.0.0"][0]]}
        next_args = list(kind) + extra.get(" ".join(kind), [])
        if kind == ("ota", "apply"):
            next_args += ["--watch", "0"]
        code, out = run_cli(capsys, root, *next_args)
        assert code == 0, (n, kind, out)
        models_left = [p for p in left if p.startswith("models/")]
        assert sorted("models/%s" % p for p in out["swept"]) == models_left, (n, kind, left, out["swept"])
        assert leftovers(root, state=kind[0] == "ota") == [], (n, kind)
        if kind[0] == "ota" and kind[1] in ("recover", "apply"):
            reported = sorted(e["path"] for e in out["recovered"] if e.get("outcome") == "swept")
            assert reported == left, (n, kind, left, out["recovered"])
        consistent_pair(root)

        if kind not in (("ota", "recover"), ("ota", "apply")):
            code, out = run_cli(capsys, root, "ota", "recover")
            assert code == 0, (n, out)
        assert leftovers(root) == [] and journal(root) is None, n
        rows = History(str(root / "state" / "history.sqlite")).rows("digits")
        assert all(row["outcome"] != "in_progress" for row in rows), (n, rows[:2])
        store = store_of(root)
        if kind == ("ota", "apply") or n > commit_point:
            assert store.pointers("digits") == ("2.0.0", "1.0.0"), n
            assert store.versions("digits") == ["1.0.0", "2.0.0"], n  # 0.9.0 pruned at the commit
            assert rows[0]["version"] == "2.0.0" and rows[0]["outcome"] == "committed", (n, rows[0])
            outcomes["committed"] = outcomes.get("committed", 0) + 1
        else:
            assert store.pointers("digits") == ("1.0.0", "0.9.0"), n  # the rollback target is back too
            assert store.versions("digits") == ["0.9.0", "1.0.0"], n
            if n > points.index("write journal phase verify (rename)") + 1:  # the journal existed
                assert rows[0]["version"] == "2.0.0" and rows[0]["outcome"] == "interrupted", (n, rows[0])
                assert rows[0]["reason"].startswith("interrupted in phase "), rows[0]
            else:
                assert rows[0]["version"] == "1.0.0", (n, rows[0])  # nothing was started
            outcomes["rolled back"] = outcomes.get("rolled back", 0) + 1
        consistent_pair(root)
    with capsys.disabled():
        print("kill points tested: %d %s" % (len(points), outcomes))
    assert outcomes.get("committed") and outcomes.get("rolled back")


# -- a full disk -----------------------------------------------------------------------------

def test_disk_full_at_every_free_space_level_of_ota_apply(template, tmpfs, capsys):
    """The whole device root on a real tmpfs, filled so that exactly N bytes stay free, for every
    page from 0 to 320 KiB (the artifact is 22 KiB, its gate files 120 KiB) and a few levels above.
    At each level `ota apply` either refuses before writing anything (changed: false, the device as
    it was, 1.0.0 active with its rollback target, a message naming the filesystem, the bytes
    needed and the bytes free, and 1.0.0 as the version that stays serving) or applies with every
    write of it fitting (changed: true, 2.0.0 active, no bookkeeping failure). Refusals stop at one
    threshold, so the space check is never too optimistic and never far too cautious."""
    mnt = tmpfs.mount(8 << 20)
    root = mnt / "root"
    levels = list(range(0, 320 * 1024 + 1, PAGE)) + [384 * 1024, 512 * 1024, 1 << 20]
    results = []
    for free in levels:
        unfill(mnt)
        template.copy_to(root)
        leave_free(mnt, free)
        code, out = run_cli(capsys, root, *template.apply_args())
        store = store_of(root)
        assert leftovers(root) == [], (free, leftovers(root))
        assert journal(root) is None, (free, journal(root))
        if code == 0:
            assert out["changed"] and out["outcome"] == "committed", (free, out)
            assert out["active_version"] == "2.0.0" and "bookkeeping_failed" not in out, (free, out)
            assert store.pointers("digits") == ("2.0.0", "1.0.0"), free
            assert History(str(root / "state" / "history.sqlite")).rows("digits")[0]["outcome"] == "committed"
            results.append("applied")
        else:
            assert not out["changed"] and out["outcome"] == "refused" and out["phase"] == "verify", (free, out)
            assert out["reason_code"] == "disk_full" and out["active_version"] == "1.0.0", (free, out)
            msg = out["msg"]
            assert "filesystem at %s " % mnt in msg and "bytes needed, %d free" % free in msg, (free, msg)
            assert "1.0.0 still serves" in msg and "[Errno" not in msg and "disk I/O" not in msg, msg
            assert store.pointers("digits") == ("1.0.0", "0.9.0") and "2.0.0" not in store.versions("digits")
            needed = int(msg.split(" bytes needed")[0].split()[-1])
            results.append("refused")
    threshold = results.index("applied")
    assert results == ["refused"] * threshold + ["applied"] * (len(levels) - threshold), list(zip(levels, results))
    assert needed == levels[threshold]  # refused exactly below what the check asks for
    with capsys.disabled():
        print("free-space levels: %d (every page from 0 to 320 KiB, then 384 KiB, 512 KiB, 1 MiB); refused below "
              "%d bytes free (what the check asks for), applied from there" % (len(levels), needed))
    # The artifact and its gate files take 37 pages; with the manifest, the key slot and 2 spare pages 41, plus the
    # bookkeeping's 64 KiB: 228 KiB asked for.
    assert 150 * 1024 < levels[threshold] <= 320 * 1024


def test_an_update_that_switched_says_so_when_the_history_write_fails(template, tmpfs, capsys, monkeypatch):
    """The disk fills up (another writer) after the commit point, just before the history row is
    written, so that writing it fails. The update stands and the result says so (changed, 2.0.0
    active, the bookkeeping failure named); reading the history still works on the full disk; once
    there is room again the next command writes the missing row."""
    mnt = tmpfs.mount(8 << 20)
    root = template.copy_to(mnt / "root")
    finish = History.finish

    def filled_first(self, txid, outcome, *args, **kwargs):
        if outcome == "committed":
            fill(mnt)
        return finish(self, txid, outcome, *args, **kwargs)

    monkeypatch.setattr(History, "finish", filled_first)
    code, out = run_cli(capsys, root, *template.apply_args())
    monkeypatch.undo()
    assert code == 0, out
    assert out["changed"] and out["outcome"] == "committed" and out["active_version"] == "2.0.0"
    assert "writing the history row failed: no space left on device" in out["bookkeeping_failed"], out
    assert "filesystem at %s " % mnt in out["bookkeeping_failed"] and "next run records it" in out["bookkeeping_failed"]
    assert out["warnings"] == [out["bookkeeping_failed"]]
    assert store_of(root).pointers("digits") == ("2.0.0", "1.0.0")
    assert journal(root)["phase"] == "commit"

    code, shown = run_cli(capsys, root, "ota", "history")  # still full: reading needs no room
    assert code == 0 and free_bytes(mnt) == 0, shown
    assert shown["in_progress"]["phase"] == "commit" and shown["repaired"] == []
    assert shown["history"][0]["version"] == "2.0.0" and shown["history"][0]["outcome"] == "in_progress"

    unfill(mnt)
    code, shown = run_cli(capsys, root, "ota", "history")
    assert code == 0 and shown["in_progress"] is None, shown
    assert [(e["outcome"], e["version"]) for e in shown["repaired"]] == [("committed", "2.0.0")]
    newest = shown["history"][0]
    assert (newest["version"], newest["outcome"], newest["phase"]) == ("2.0.0", "committed", "commit")
    assert journal(root) is None and store_of(root).pointers("digits") == ("2.0.0", "1.0.0")


def test_history_begin_failing_leaves_no_journal_that_reads_as_a_dead_installer(template, tmpfs, capsys,
                                                                                monkeypatch):
    """The disk fills up right after the journal is written, so that the history's first write
    (``History.begin``) fails: the update is refused inside the transaction's error handling, and
    what it leaves (a journal holding the outcome) is recorded by the next run as refused, with its
    real reason, not as "installer pid died"."""
    mnt = tmpfs.mount(8 << 20)
    root = template.copy_to(mnt / "root")
    journal_write = Journal.write

    def filled_after_verify(self, tx, phase):
        journal_write(self, tx, phase)
        if phase == "verify" and tx.outcome is None:
            fill(mnt)

    monkeypatch.setattr(Journal, "write", filled_after_verify)
    code, out = run_cli(capsys, root, *template.apply_args())
    monkeypatch.undo()
    assert code == 1 and not out["changed"] and out["outcome"] == "refused" and out["phase"] == "verify", out
    assert out["reason"].startswith("verify: no space left on device: recording a deployment in the history")
    assert "filesystem at %s " % mnt in out["reason"] and "1.0.0 still serves" in out["msg"]
    assert "keeps the outcome" in out["bookkeeping_failed"], out
    assert store_of(root).pointers("digits") == ("1.0.0", "0.9.0") and "2.0.0" not in store_of(root).versions("digits")
    left = journal(root)
    assert left["outcome"] == "refused" and left["reason"] == out["reason"], left

    code, failed = run_cli(capsys, root, "ota", "recover")  # still full: it says so, and keeps the journal
    assert code == 1 and failed["reason"] == "disk_full" and "filesystem at %s " % mnt in failed["msg"], failed
    assert "active now: digits 1.0.0" in failed["msg"] and journal(root) is not None

    unfill(mnt)
    code, done = run_cli(capsys, root, "ota", "recover")
    assert code == 0 and done["changed"], done
    assert [(e["outcome"], e.get("repaired")) for e in done["recovered"]] == [("refused", "history")]
    newest = History(str(root / "state" / "history.sqlite")).rows("digits")[0]
    assert (newest["version"], newest["outcome"], newest["reason"]) == ("2.0.0", "refused", out["reason"])
    assert "died" not in newest["reason"] and journal(root) is None


def test_no_bare_errno_at_zero_bytes_free(template, tmpfs, capsys):
    """At 0 bytes free every command that must write fails naming the disk and what is active, and
    the commands that only read, or switch the pointer record back, still work: the record is a
    symlink whose target lives in its inode."""
    mnt = tmpfs.mount(8 << 20)
    root = template.copy_to(mnt / "root")
    fill(mnt)
    refused = [
        template.apply_args(),
        ["model", "install"] + template.source(),
        ["keys", "rotate"],
    ]
    for args in refused:
        code, out = run_cli(capsys, root, *args)
        assert code == 1 and out.get("reason_code", out["reason"]) == "disk_full" and not out["changed"], (args, out)
        msg = out["msg"]
        assert "filesystem at %s " % mnt in msg and (", 0 free" in msg or ": 0 bytes free" in msg), msg
        assert "[Errno" not in msg and "disk I/O" not in msg, msg
        assert "1.0.0 still serves" in msg or "active now: digits 1.0.0" in msg, msg
        assert store_of(root).pointers("digits") == ("1.0.0", "0.9.0") and leftovers(root) == []
    for args in (["model", "list"], ["ota", "history"], ["keys", "show"]):
        code, out = run_cli(capsys, root, *args)
        assert code == 0 and not out["changed"], (args, out)
    code, out = run_cli(capsys, root, "ota", "rollback", "digits")
    assert code == 0 and out["changed"] and out["active_version"] == "0.9.0", out
    assert "this rollback is not recorded" in out["bookkeeping_failed"]
    assert "filesystem at %s " % mnt in out["warnings"][0]
    assert store_of(root).pointers("digits") == ("0.9.0", "1.0.0")
    assert free_bytes(mnt) == 0


# -- the pointer record ----------------------------------------------------------------------

def test_the_pointer_pair_is_one_record_and_older_stores_are_read_and_migrated(template, tmp_path, capsys):
    root = template.copy_to(tmp_path / "root", legacy=True)
    digits_dir = root / "models" / "digits"
    code, listed = run_cli(capsys, root, "model", "list")
    assert code == 0
    [model] = listed["models"]
    assert (model["active"], model["previous"], model["versions"]) == ("1.0.0", "0.9.0", ["0.9.0", "1.0.0"])
    assert sorted(os.listdir(digits_dir)) == ["0.9.0", "1.0.0", "active", "previous"]  # reading changes nothing

    code, out = run_cli(capsys, root, "ota", "apply", *template.source(), "--watch", "0")
    assert code == 0 and out["outcome"] == "committed"
    assert sorted(os.listdir(digits_dir)) == ["1.0.0", "2.0.0", "pointers"]
    assert json.loads(os.readlink(digits_dir / "pointers")) == {"active": "2.0.0", "previous": "1.0.0"}
    code, back = run_cli(capsys, root, "ota", "rollback", "digits")
    assert code == 0 and back["changed"] and back["active_version"] == "1.0.0"
    assert json.loads(os.readlink(digits_dir / "pointers")) == {"active": "1.0.0", "previous": "2.0.0"}
    code, status = run_cli(capsys, root, "model", "status")
    [model] = status["models"]
    assert (model["active"], model["previous"]) == ("1.0.0", "2.0.0") and set(model["installed"]) == {"1.0.0", "2.0.0"}


# -- what every command reports --------------------------------------------------------------

def every_command(template):
    """One command of every kind (the state each starts from: the template's)."""
    path2 = template.paths["2.0.0"][0]
    return [["model", "list"], ["model", "status"], ["model", "install"] + template.source(),
            ["model", "activate", "digits", "1.0.0"], ["model", "rollback", "digits"],
            ["model", "rekey", "digits", "1.0.0", "--keyslot", template.paths["1.0.0"][1]],
            ["keys", "show"], ["keys", "ensure"], ["keys", "retire", "--dry-run"], ["artifact", "verify", path2],
            ["ota", "history"], ["ota", "recover"], template.apply_args(), ["ota", "rollback", "digits"],
            ["probe"], ["agent", "--once"]]


def test_a_staging_directory_left_by_a_kill_is_gone_after_the_next_command_of_any_kind(
        template, tmp_path, capsys):
    """A `model install` killed while staging leaves ``.staging-<pid>-*`` with the encrypted model in
    it. Every kind of command, run next on a copy of that device, removes it and lists it in ``swept``
    (``ota recover`` and ``ota apply`` in ``recovered`` too)."""
    root, trace = template.copy_to(tmp_path / "traced"), tmp_path / "trace"
    install = ["model", "install"] + template.source()
    assert cli_process(root, install, trace).returncode == 0
    points = trace.read_text().splitlines()
    trace.unlink()
    root = template.copy_to(tmp_path / "killed")
    killed = cli_process(root, install, trace, crash_at=points.index("stage manifest.json") + 1)
    assert killed.returncode == -signal.SIGKILL
    [left] = leftovers(root)
    assert left.startswith("models/digits/.staging-")
    assert sorted(os.listdir(root / left)) == ["golden.npz", "keyslot.json", "model.eaf", "validation.npz"]

    for args in every_command(template):
        copy = tmp_path / "next"
        if copy.exists():
            shutil.rmtree(copy)
        shutil.copytree(root, copy, symlinks=True)
        code, out = run_cli(capsys, copy, *args)
        assert leftovers(copy) == [], args
        assert out["swept"] == [left[len("models/"):]], (args, out)
        if args[0] == "agent":
            assert code == 1 and "no registry" in out["msg"]
        else:
            assert code == 0, (args, out)
        if args[:2] in (["ota", "recover"], ["ota", "apply"]):
            assert {"outcome": "swept", "path": left} in out["recovered"], out


def test_a_live_writers_staging_directory_is_left_alone(template, tmp_path, capsys):
    root = template.copy_to(tmp_path / "root")
    staging = root / "models" / "digits" / ".staging-1-inflight"
    staging.mkdir()
    fd = os.open(root / "models" / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a writer holds the store lock: its staging is in use
        code, out = run_cli(capsys, root, "model", "list")
        assert code == 0 and out["swept"] == [] and staging.is_dir()
    finally:
        os.close(fd)
    code, out = run_cli(capsys, root, "model", "list")
    assert out["swept"] == ["digits/.staging-1-inflight"] and not staging.exists()


def test_changed_is_true_only_when_the_device_changed(template, tmp_path, capsys):
    root = template.copy_to(tmp_path / "root")
    before = snapshot(root)
    for args in (["model", "list"], ["model", "status"], ["keys", "show"], ["keys", "ensure"],
                 ["keys", "retire", "--dry-run"], ["artifact", "verify", template.paths["1.0.0"][0]],
                 ["model", "activate", "digits", "1.0.0"],
                 ["ota", "apply"] + template.source("1.0.0") + ["--watch", "0"],
                 ["ota", "rollback", "digits", "--version", "1.0.0"], ["ota", "recover"], ["ota", "history"],
                 ["model", "install"] + template.source("1.0.0"), ["model", "remove", "digits", "7.0.0"],
                 ["model", "rekey", "digits", "1.0.0", "--keyslot", template.paths["1.0.0"][1]]):
        code, out = run_cli(capsys, root, *args)
        assert code == 0 and out["changed"] is False, (args, out)
        assert snapshot(root) == before, args
    install = ["model", "install"] + template.source() + ["--activate"]
    code, out = run_cli(capsys, root, *install)
    assert code == 0 and out["changed"] and store_of(root).active("digits") == "2.0.0"
    after = snapshot(root)
    code, out = run_cli(capsys, root, *install)  # the version that is already active: nothing to do
    assert code == 0 and out["changed"] is False and out["activation"]["changed"] is False, out
    assert snapshot(root) == after


def snapshot(root) -> dict:
    """Every file and symlink under the root with its content (the lock files aside)."""
    found = {}
    for dirpath, _dirs, names in os.walk(root):
        for fname in names:
            path = os.path.join(dirpath, fname)
            rel = os.path.relpath(path, root)
            if fname.endswith(".lock"):
                continue
            if os.path.islink(path):
                found[rel] = "-> " + os.readlink(path)
            else:
                with open(path, "rb") as f:
                    found[rel] = f.read()
    return found


def test_a_root_that_does_not_exist_is_an_error_naming_it(template, tmp_path, capsys):
    missing = tmp_path / "typo" / "edgeai"
    for args in every_command(template) + [["keys", "rotate"], ["serve"]]:
        code, out = run_cli(capsys, missing, *args)
        assert code == 1 and out["reason"] == "root_missing" and not out["changed"], (args, out)
        assert str(missing) in out["msg"] and "does not exist" in out["msg"]
        assert not (tmp_path / "typo").exists(), args
    a_file = tmp_path / "file"
    a_file.write_text("")
    code, out = run_cli(capsys, a_file, "keys", "ensure")
    assert code == 1 and out["reason"] == "root_missing" and "is not a directory" in out["msg"]


def test_reading_commands_create_nothing_in_a_bare_root(tmp_path, capsys):
    """A root that exists but holds nothing yet (provisioning in progress) is read as empty, and
    reading it creates no store, state or keys there."""
    root = tmp_path / "bare"
    root.mkdir()
    for args in (["model", "list"], ["keys", "show"], ["ota", "history"], ["ota", "history", "--name", "digits"]):
        code, out = run_cli(capsys, root, *args)
        assert code == 0 and not out["changed"] and out["swept"] == [], (args, out)
    assert os.listdir(root) == []
