"""Key hygiene: what the server says about this machine's key, then a long run that survives
a key rotation.

    python manage.py runbot
    python -c "import experiment_bot; experiment_bot.setup()"   # once: writes EXPERIMENT_BOT_KEY to .env
    python examples/key_rotation.py            # the key's state, then 30 steps, one every 10 s

While it runs, rotate the key in the bot: /status → "🔄 Rotate <machine>" → pick a grace period
(1 h / 24 h / 7 days). The bot shows the new key once; put it in .env (or run
``experiment_bot.setup(api_key="exp_…")``, which writes it there). The run keeps sending with
the old key during the grace period; when the old key expires the client gets ``key_expired``,
re-reads .env and goes on with the new key. No restart, no lost messages.

An IP allowlist ("🌐 IPs <machine>" in /status) makes the server refuse the key from other
addresses with 403 ``ip_not_allowed``, naming the address it saw; this script prints it.

    python examples/key_rotation.py --steps 0  # only the key's state
"""

from __future__ import annotations

import argparse
import logging
import time

from experiment_bot import ExperimentBot
from experiment_bot.errors import ApiError, ConfigurationError, TransportError


def describe_key(bot: ExperimentBot) -> bool:
    """Print the key's state as the server sees it; False when the server refuses it."""
    try:
        info = bot.validate()
    except (ApiError, TransportError, ConfigurationError) as exc:
        print(f"key refused: {exc}")
        return False
    print(f"key {info['key_prefix']}… is valid for @{info['account'].get('username') or '?'}")
    if info.get("expires_at"):
        print(f"  rotated: works until {info['expires_at']}; its successor is {info.get('replaced_by_prefix')}…")
    networks = info.get("allowed_networks") or []
    print(f"  accepted from: {', '.join(networks) if networks else 'any address'}")
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="notifications to send (0: only the key's state)")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between them")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    bot = ExperimentBot()
    if not describe_key(bot) or args.steps <= 0:
        return
    with bot.track("key rotation demo", total=args.steps) as run:
        for step in range(1, args.steps + 1):
            run.set_progress(step, args.steps)
            bot.notify(f"step {step}/{args.steps}")
            time.sleep(args.every)  # stands for a slice of real work


if __name__ == "__main__":
    main()
