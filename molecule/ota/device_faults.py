"""Fault rows that need a process killed inside the device: run as root in the container by verify.yml.

restart   the update is being watched when the service is killed (systemd restarts it): the update
          must roll back by itself and 1.0.0 serve again;
kill9     the installer is killed with SIGKILL at 50 random moments; after `ota recover` the device
          serves 1.0.0, or 2.0.0 when that update had committed (then it is rolled back for the next loop).
Prints one JSON object; exits non-zero on the first broken invariant."""
import json
import os
import pwd
import random
import subprocess
import sys
import time

ROOT = "/opt/edgeai"
EXE = ROOT + "/venv/bin/edgeai-runtime"
JOURNAL = ROOT + "/state/ota.json"
USER = pwd.getpwnam("edgeai")


def as_edgeai():
    os.setgid(USER.pw_gid)
    os.setuid(USER.pw_uid)


def cli(*args):
    proc = subprocess.run([EXE, "--root", ROOT] + list(args), capture_output=True, text=True, preexec_fn=as_edgeai,
                          check=False)
    lines = proc.stdout.strip().splitlines()
    return (json.loads(lines[-1]) if lines else {}), proc.returncode


def start(*args):
    return subprocess.Popen([EXE, "--root", ROOT] + list(args), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, preexec_fn=as_edgeai)


def check(condition, what):
    if not condition:
        print(json.dumps({"failed": True, "msg": what}))
        sys.exit(1)


def state():
    models = cli("model", "list")[0]
    digits = [m for m in models["models"] if m["name"] == "digits"][0]
    history = cli("ota", "history", "--name", "digits")[0]["history"]
    return digits, history


def serving_ok(version):
    answer, rc = cli("model", "status")
    serving = [s for s in (answer.get("service") or {}).get("serving", []) if s["name"] == "digits"]
    return rc == 0 and serving and serving[0]["active"]["version"] == version


def restart_row():
    proc = start("ota", "apply", "--installed", "digits", "2.0.0", "--watch", "30", "--interval", "0.2")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if json.load(open(JOURNAL)).get("phase") == "watch":
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    subprocess.run(["systemctl", "kill", "-s", "KILL", "edgeai-runtime.service"], check=True)
    out = proc.communicate(timeout=300)[0]
    result = json.loads(out.strip().splitlines()[-1])
    check(result.get("failed") and result.get("outcome") == "rolled_back", "restart: %s" % result)
    check("restarted" in result.get("reason", "") or "stopped answering" in result.get("reason", ""),
          "restart reason: %s" % result.get("reason"))
    digits, history = state()
    check(digits["active"] == "1.0.0" and serving_ok("1.0.0"), "restart: 1.0.0 does not serve: %s" % digits)
    check(history[0]["outcome"] == "rolled_back", "restart history: %s" % history[0])
    return {"reason": result["reason"]}


def kill9_rows(loops=50):
    rng = random.Random(20261123)
    started = time.monotonic()
    proc = start("ota", "apply", "--installed", "digits", "2.0.0", "--watch", "0.3", "--interval", "0.1")
    proc.communicate(timeout=300)
    full = time.monotonic() - started
    cli("ota", "rollback", "digits", "--version", "1.0.0", "--reason", "reset")
    seen, committed = {}, 0
    for loop in range(loops):
        proc = start("ota", "apply", "--installed", "digits", "2.0.0", "--watch", "0.3", "--interval", "0.1")
        time.sleep(rng.uniform(0.0, full))
        try:
            phase = json.load(open(JOURNAL)).get("phase")
        except (OSError, ValueError):
            phase = "none" if proc.poll() is None else "finished"
        proc.kill()
        proc.wait()
        seen[phase] = seen.get(phase, 0) + 1
        rc = cli("ota", "recover")[1]
        check(rc == 0, "recover failed after loop %d" % loop)
        digits, history = state()
        check(not os.path.exists(JOURNAL), "journal left after loop %d" % loop)
        check(all(row["outcome"] != "in_progress" for row in history), "in_progress row after loop %d" % loop)
        if digits["active"] == "2.0.0":
            check(history[0]["outcome"] == "committed", "2.0.0 active but not committed (loop %d)" % loop)
            committed += 1
            cli("ota", "rollback", "digits", "--version", "1.0.0", "--reason", "reset")
            digits = state()[0]
        check(digits["active"] == "1.0.0" and serving_ok("1.0.0"), "loop %d (%s): %s" % (loop, phase, digits))
    return {"loops": loops, "phases": seen, "committed": committed, "full_run_s": round(full, 2)}


if __name__ == "__main__":
    results = {"restart": restart_row(), "kill9": kill9_rows()}
    print(json.dumps(dict(results, failed=False)))
