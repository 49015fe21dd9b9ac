"""The Telegram sandbox: a local emulator of the Bot API subset StatsBot uses, a web chat
page and a test driver. Pure aiohttp + standard library (no Django), so it runs inside the
bot process, in tests, or standalone: ``python -m telegram_app.sandbox --port 8081``.

    server = await SandboxServer().start()          # or: with SandboxThread() as server: ...
    Application.builder().token(server.token)
        .base_url(server.api_base_url).base_file_url(server.file_base_url)
"""

from .driver import SandboxDriver, SandboxDriverError, SandboxUserDriver
from .entities import EntityParseError, find_bot_commands, format_text, utf16_len
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
    "SandboxDriver",
    "SandboxDriverError",
    "SandboxServer",
    "SandboxState",
    "SandboxThread",
    "SandboxUserDriver",
    "build_app",
    "find_bot_commands",
    "format_text",
    "utf16_len",
]
