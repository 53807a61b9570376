"""The soak's outside observer, in its own process so the driver's threads
(and Python's global lock) never stretch what it measures: /healthz every
0.5 s and /api/v1/flags every 2 s on each daemon, one JSON line per answer.

    probe.py OUT NAME:PORT [NAME:PORT ...]   (runs until SIGTERM)"""

import json
import signal
import sys
import time
import urllib.request

# Open for the life of the process, which ends at SIGTERM.
out = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115
daemons = [a.split(":") for a in sys.argv[2:]]
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
i = 0
while True:
    i += 1
    for name, port in daemons:
        t = time.time()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                r.read()
                if r.status == 200:
                    out.write(json.dumps({"t": t, "d": name, "healthz": time.time() - t}) + "\n")
        except OSError:
            pass
        if i % 4 == 0:
            t = time.time()
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/v1/flags", timeout=5
                ) as r:
                    body = json.loads(r.read())
                items = body.get("flags", []) if isinstance(body, dict) else body
                out.write(
                    json.dumps(
                        {"t": t, "d": name, "flags": [[f["tenant"], f["reason"]] for f in items]}
                    )
                    + "\n"
                )
            except (OSError, ValueError, KeyError, TypeError):
                pass
    time.sleep(max(0.0, 0.5 - (time.time() - t)))
