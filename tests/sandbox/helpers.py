"""Test helpers for the Telegram sandbox: a tiny PNG writer, a raw Bot API caller, and a
python-telegram-bot Application running in its own thread."""

from __future__ import annotations

import asyncio
import struct
import threading
import zlib
from collections.abc import Callable
from typing import Any

import aiohttp
from telegram.ext import Application


def make_png(width: int, height: int, rgb: tuple[int, int, int] = (51, 144, 236)) -> bytes:
    """A valid solid-colour RGB PNG, made with zlib and struct only."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


async def call(
    session: aiohttp.ClientSession, api_base: str, token: str, method: str, **params: Any
) -> tuple[int, dict[str, Any]]:
    """POST a Bot API method with a JSON body; returns (HTTP status, decoded body)."""
    async with session.post(f"{api_base}{token}/{method}", json=params) as response:
        return response.status, await response.json()


class BotThread:
    """Runs a PTB ``Application`` (built by ``build()`` inside the thread) with polling."""

    def __init__(self, build: Callable[[], Application], *, poll_timeout: int = 5) -> None:
        self._build = build
        self._poll_timeout = poll_timeout
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="ptb-bot", daemon=True)
        self.error: BaseException | None = None
        self.application: Application | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:  # surfaced by start()/stop()
            self.error = error
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = self._build()
        self.application = app
        await app.initialize()
        if app.post_init is not None:  # run_polling would call it; start() does not
            await app.post_init(app)
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(timeout=self._poll_timeout, poll_interval=0)
        self._ready.set()
        await self._stop.wait()
        await app.updater.stop()
        await app.stop()
        await app.shutdown()

    def run_coroutine(self, coroutine: Any, timeout: float = 15.0) -> Any:
        """Run a coroutine on the bot's loop (e.g. ``app.bot.send_message(...)``)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def __enter__(self) -> BotThread:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("the bot did not start")
        if self.error is not None:
            raise RuntimeError("the bot failed to start") from self.error
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)
        if self.error is not None:
            raise RuntimeError("the bot failed") from self.error


def build_demo_application(token: str, api_base_url: str, file_base_url: str) -> Application:
    """A small real PTB bot: /start → HTML text + inline keyboard; the "connect" button →
    answer + edit in place; any other text → typing, then a photo; a document → its name."""
    from telegram import BotCommand, InlineKeyboardButton, InlineKeyboardMarkup, Update
    from telegram.constants import ChatAction, ParseMode
    from telegram.ext import CallbackQueryHandler, CommandHandler, ContextTypes, MessageHandler, filters

    async def post_init(app: Application) -> None:
        await app.bot.set_my_commands(
            [BotCommand("start", "Show the worker status"), BotCommand("help", "What I can do")]
        )

    async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None
        name = update.message.from_user.first_name if update.message.from_user else "there"
        keyboard = InlineKeyboardMarkup(
            [
                [InlineKeyboardButton("🔌 Connect Local Worker", callback_data="connect")],
                [InlineKeyboardButton("Docs", url="https://example.org/docs")],
            ]
        )
        await update.message.reply_text(
            f"Hi <b>{name}</b>! Worker: <i>not connected</i>.\nRun <code>/start</code> any time.",
            parse_mode=ParseMode.HTML,
            reply_markup=keyboard,
        )

    async def connect(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        assert query is not None
        await query.answer("Connecting…")
        await query.edit_message_text("✅ <b>Local Worker Connected!</b> 100%", parse_mode=ParseMode.HTML)

    async def photo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None and update.effective_chat is not None
        await context.bot.send_chat_action(update.effective_chat.id, ChatAction.UPLOAD_PHOTO)
        await update.message.reply_photo(make_png(64, 48), caption=f"Chart for: {update.message.text}")

    async def document(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None and update.message.document is not None
        await update.message.reply_text(f"Got {update.message.document.file_name}")

    app = (
        Application.builder()
        .token(token)
        .base_url(api_base_url)
        .base_file_url(file_base_url)
        .post_init(post_init)
        .build()
    )
    app.add_handler(CommandHandler("start", start))
    app.add_handler(CallbackQueryHandler(connect, pattern="^connect$"))
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, photo))
    app.add_handler(MessageHandler(filters.Document.ALL, document))
    return app
