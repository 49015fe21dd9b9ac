"""Several runs failing together: the chat gets one digest message, not one alert per run.

It launches four tracked training runs (each its own Python process, as on a shared GPU node).
After a moment the "node goes down": two runs hit a CUDA error and the scheduler sends SIGTERM
to the other two. Instead of four alerts the chat shows one message listing the four runs,
what happened to each and the first line of each error:

    🚨 4 runs failed within 1s
    🟦 seed 0 · ❌ crashed after 3s · RuntimeError: CUDA error: an illegal memory access …
    🟩 seed 1 · 💀 killed (SIGTERM) after 3s
    …

    python manage.py runbot
    python -c "import experiment_bot; experiment_bot.setup()"   # once
    python examples/failure_digest.py [--runs 4] [--kill]       # --kill: SIGKILL all (no finish
                                                                #  is sent: they are reported stalled)

The server's settings FAILURE_DIGEST_WINDOW (60 s), FAILURE_DIGEST_HOLD (5 s) and
FAILURE_DIGEST_THRESHOLD (3 runs) decide what is grouped; a run failing on its own is still
reported on its own, a few seconds later.

Server: EXPERIMENT_BOT_URL (default http://127.0.0.1:8000); key: EXPERIMENT_BOT_KEY or .env.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time

from experiment_bot import bot


def run(seed: int) -> None:
    """One training run; it crashes (even seeds) or runs until the scheduler kills it."""
    with bot.track(f"seed {seed}", tags=[f"seed={seed}"], heartbeat_interval=1) as tracked:
        tracked.set_progress(0, 1000)
        bot.flush()  # the start reached the server: the parent may pull the plug now
        print("running", flush=True)
        sys.stdin.readline()  # the "node" fails when the parent says so
        if seed % 2 == 0:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        time.sleep(600)  # still training when SIGTERM arrives


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--kill", action="store_true", help="SIGKILL every run (they stall) instead")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        run(args.child)
        return

    children = [
        subprocess.Popen([sys.executable, __file__, "--child", str(seed)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
        for seed in range(args.runs)
    ]
    for child in children:
        assert child.stdout is not None and child.stdin is not None
        if child.stdout.readline().strip() != "running":
            sys.exit("a run did not start; is the server up and the key set?")
    print(f"{args.runs} runs started; the node goes down now")
    for seed, child in enumerate(children):
        if args.kill:
            child.kill()
        elif seed % 2 == 0:
            child.stdin.write("\n")  # type: ignore[union-attr]
            child.stdin.flush()  # type: ignore[union-attr]
        else:
            child.send_signal(signal.SIGTERM)
    for child in children:
        child.wait(60)
    print("all runs ended:", ", ".join(f"seed {i}: exit {c.returncode}" for i, c in enumerate(children)))
    print("the chat shows one message listing them" + (" (after the heartbeat grace)" if args.kill else ""))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if os.name != "posix":
        sys.exit("this demo sends POSIX signals")
    main()
