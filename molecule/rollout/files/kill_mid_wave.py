"""Run 4 of the rollout scenario: start playbooks/rollout.yml, wait until the ledger shows the canary done and a
device of wave 1 soaking (mid-wave), kill ansible-playbook and its forks with SIGKILL, then delete the ledger (the
controller lost it, as a fresh AWX execution environment would). Prints one JSON object: the states at the kill and
which devices had finished. Run from the project directory (converge.yml does).

The modules the killed run had started on the devices go on there (a soak ends with its verdict mark, as it would on
a real device). This waits for them before it returns: on the simulated fleet the devices share the controller's
CPUs, and a resumed run starting at once (its forks, its modules) would slow their service's answers enough to fail a
soak that real hardware, which shares nothing with the controller, would pass."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

work, release, ledger_dir = sys.argv[1:4]
ledger_path = os.path.join(ledger_dir, "ledger.json")
log = open(os.path.join(work, "run4-killed.log"), "w", encoding="utf-8")
proc = subprocess.Popen(["ansible-playbook", "playbooks/rollout.yml", "-i", os.path.join(work, "inventory"),
                         "-e", "rollout_release=" + release], stdout=log, stderr=subprocess.STDOUT,
                        start_new_session=True)
deadline = time.monotonic() + 900
states = {}
while time.monotonic() < deadline and proc.poll() is None:
    try:
        with open(ledger_path, encoding="utf-8") as f:
            ledger = json.load(f)
    except (OSError, ValueError):
        time.sleep(0.5)
        continue
    states = {host: entry["state"] for host, entry in ledger["devices"].items()}
    waves = {host: entry["wave"] for host, entry in ledger["devices"].items()}
    if any(waves[h] == 1 and s == "soaking" for h, s in states.items()):
        break
    time.sleep(0.5)
if proc.poll() is not None:
    print(json.dumps({"failed": True, "msg": "the rollout ended (rc %s) before it could be killed mid-wave"
                      % proc.returncode, "states": states}))
    sys.exit(1)
os.killpg(proc.pid, signal.SIGKILL)
proc.wait()
shutil.rmtree(ledger_dir)
killed = time.monotonic()
running = sorted(states)
while running and time.monotonic() < killed + 180:
    time.sleep(1)
    running = [h for h in running if b"AnsiballZ_" in subprocess.run(
        ["podman", "exec", h, "sh", "-c", "cat /proc/[0-9]*/cmdline 2>/dev/null"], stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, check=False).stdout]
print(json.dumps({"killed_at": states, "finished": sorted(h for h, s in states.items() if s == "succeeded"),
                  "ledger_deleted": not os.path.exists(ledger_dir), "orphans_ended_after_s":
                  round(time.monotonic() - killed, 1), "orphans_still_running": running}))
