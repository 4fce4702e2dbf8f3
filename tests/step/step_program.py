"""A step command for the runtime tests: `step_program.py ACTION ARG OUT`, behaviour chosen per run.

Actions: `argv` writes its argv and XPIPE_* env as JSON to OUT; `exit` exits with code ARG; `sleep`
appends a line to OUT, then sleeps ARG seconds; `hang` ignores SIGTERM and sleeps forever; `escape`
leaves a child holding the output pipe (in a new session when ARG is `setsid`, else in the command's
process group), writes its pid to OUT and exits; `block` appends a line to OUT, then waits until the
FIFO at ARG is opened for writing and closed (the test's go-ahead).
"""

import json
import os
import signal
import sys
import time

action, arg, out = sys.argv[1], sys.argv[2], sys.argv[3]
print(f"step_program {action} {arg}", flush=True)
if action == "argv":
    env = {key: value for key, value in os.environ.items() if key.startswith(("XPIPE_", "GREETING"))}
    with open(out, "w") as handle:
        json.dump({"argv": sys.argv[1:], "env": env}, handle)
elif action == "exit":
    print("failing on purpose", file=sys.stderr, flush=True)
    sys.exit(int(arg))
elif action == "sleep":
    with open(out, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    time.sleep(float(arg))
elif action == "hang":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(out, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    while True:
        time.sleep(3600)
elif action == "escape":
    child = os.fork()
    if child == 0:
        if arg == "setsid":
            os.setsid()
        time.sleep(300)
        os._exit(0)
    with open(out, "w") as handle:
        handle.write(f"{child}\n")
elif action == "block":
    with open(out, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    with open(arg) as go_ahead:  # blocks until a writer opens the FIFO, then reads to its close
        go_ahead.read()
