"""Every inline-button prefix is defined once, in ``telegram_app.callbacks``, and no two are equal.

Two features once both took ``"pa"`` (the ⏹/action buttons and the failure digest's 🔎): a
digest tap would have reached the action handler. Equal prefixes are caught here.
"""

from __future__ import annotations

from telegram_app import callbacks


def _prefixes() -> dict[str, str]:
    return {name: value for name, value in vars(callbacks).items() if name.isupper() and isinstance(value, str)}


def test_it_gives_every_button_kind_its_own_prefix():
    by_value: dict[str, list[str]] = {}
    for name, value in _prefixes().items():
        by_value.setdefault(value, []).append(name)
    assert {value: names for value, names in by_value.items() if len(names) > 1} == {}


def test_it_keeps_every_prefix_short_enough_for_an_id_after_it():
    # callback_data is at most 64 bytes; a prefix, a colon and a UUID (36) must fit, with room for an index.
    assert {name: value for name, value in _prefixes().items() if len(value.encode()) > 64 - 1 - 36 - 3} == {}
