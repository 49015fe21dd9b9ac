"""Telegram's counting rules, shared by the bot and the Telegram sandbox (standard library only).

The bot must stay within the limits Telegram enforces and the sandbox must enforce them the
same way, so both read them here: text and caption limits counted in UTF-16 units
(``text``), which bytes are an image (``images``), and the token bucket behind flood
control and pacing (``buckets``). This package imports nothing but the standard library, so
the sandbox, which imports nothing of the server, can use it.
"""
