"""A process that goes silent: the dead-man's switch demo (POSIX).

It starts a tracked run that promises a heartbeat every 10 seconds, sends one progress update
and then freezes itself with SIGSTOP: the whole process, heartbeat thread included, sleeps
forever and sends nothing more — exactly what a hung machine or an OOM-frozen box looks like.

    python manage.py runbot
    python -c "import experiment_bot; experiment_bot.setup()"   # once
    python examples/stalled.py       # prints its pid, then freezes

After heartbeat_interval plus the server's grace the chat reports the run as stalled. Then:

    kill -9 <pid>       # end it for good: no finish message ever arrives (it stays stalled)
    kill -CONT <pid>    # or wake it up: heartbeats resume and the chat reports it recovered
                        # (then kill -9 it, or Ctrl-C it in the foreground to report "cancelled")

Server: EXPERIMENT_BOT_URL (default http://127.0.0.1:8000); key: EXPERIMENT_BOT_KEY or .env.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from experiment_bot import bot


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with bot.track("stalled job", heartbeat_interval=10) as run:
        run.set_progress(1, 100)
        bot.flush()  # make sure the start reached the server before going silent
        pid = os.getpid()
        print(f"pid {pid}: started; freezing now. `kill -9 {pid}` to end it, `kill -CONT {pid}` to resume it")
        os.kill(pid, signal.SIGSTOP)  # sleeps here, sending nothing, until SIGCONT or SIGKILL
        print("resumed: heartbeats flow again; Ctrl-C or `kill -9` to stop")
        threading.Event().wait()


if __name__ == "__main__":
    main()
