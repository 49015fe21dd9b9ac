"""The bot's commands: the one list behind the menu (setMyCommands) and the path steps' filter."""

from __future__ import annotations

from telegram import BotCommand

COMMANDS = [
    BotCommand("start", "Status and your notification key"),
    BotCommand("connect", "Connect your machine as a local worker"),
    BotCommand("train", "Train a model on a file on your machine"),
    BotCommand("predict", "Predict with one of your models"),
    BotCommand("models", "List or delete your models"),
    BotCommand("jobs", "Recent jobs; cancel a running one"),
    BotCommand("worker", "Worker status, autostart, disconnect"),
    BotCommand("status", "Key, worker and running processes"),
    BotCommand("dashboard", "A live list of your running processes"),
    BotCommand("revoke", "Revoke your notification key"),
    BotCommand("help", "What I can do"),
    BotCommand("cancel", "Stop the current step"),
]
