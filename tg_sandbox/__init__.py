"""The Telegram sandbox: a local emulator of the Bot API subset StatsBot uses, and a web chat
page. Pure aiohttp + standard library (no Django, nothing of the server; Telegram's counting
rules come from ``tg_rules``), so it runs inside the bot process, in tests, or standalone:
``python -m tg_sandbox --port 8081``. ``tg_sandbox.testing`` drives it as a user, for tests.

    server = await SandboxServer().start()          # or: with SandboxThread() as server: ...
    Application.builder().token(server.token)
        .base_url(server.api_base_url).base_file_url(server.file_base_url)
"""

from .entities import EntityParseError, find_bot_commands, format_text
from .faults import FaultRule
from .flood import FloodConfig
from .models import BotApiError
from .server import SandboxServer, SandboxThread, build_app
from .state import DEFAULT_BOT_FIRST_NAME, DEFAULT_BOT_USERNAME, DEFAULT_TOKEN, SandboxState

__all__ = [
    "DEFAULT_BOT_FIRST_NAME",
    "DEFAULT_BOT_USERNAME",
    "DEFAULT_TOKEN",
    "BotApiError",
    "EntityParseError",
    "FaultRule",
    "FloodConfig",
    "SandboxServer",
    "SandboxState",
    "SandboxThread",
    "build_app",
    "find_bot_commands",
    "format_text",
]
