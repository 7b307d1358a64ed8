"""Run 4 of the rollout scenario: start playbooks/rollout.yml, wait until the ledger shows the canary done and a
device of wave 1 soaking (mid-wave), kill ansible-playbook and its forks with SIGKILL, then delete the ledger (the
controller lost it, as a fresh AWX execution environment would). Prints one JSON object: the states at the kill and
which devices had finished. Run from the project directory (converge.yml does)."""
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
print(json.dumps({"killed_at": states, "finished": sorted(h for h, s in states.items() if s == "succeeded"),
                  "ledger_deleted": not os.path.exists(ledger_dir)}))
