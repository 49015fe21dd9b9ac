"""Telegram text formatting: HTML parsing and automatic entities.

Everything here works on Python ``str`` and reports entity offsets and lengths in UTF-16
code units, as the Bot API does. Parse errors carry Telegram's wording; the caller prefixes
``"Bad Request: can't parse entities: "``.

The parser follows the behaviour of TDLib (the library behind the Bot API server):
``parse_html``, then ``fix_formatted_text``-like trimming, then automatic ``bot_command`` and
``url`` entities. StatsBot sends HTML or plain text only (notifications in Markdown are turned
into HTML by the bot), so the sandbox answers the other parse modes (``MarkdownV2``, legacy
``Markdown``) with "unsupported parse_mode" instead of emulating them.
"""

from __future__ import annotations

import re
from typing import Any

from tg_rules.text import utf16_len

Entity = dict[str, Any]

SPACE_CHARS = " \t\r\n\v\f\0"
HTML_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
HTML_SUPPORTED_TAGS = frozenset(
    {
        "a",
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "span",
        "tg-spoiler",
        "code",
        "pre",
        "blockquote",
        "tg-emoji",
    }
)
HTML_TAG_TYPES = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "span": "spoiler",
    "tg-spoiler": "spoiler",
    "code": "code",
    "pre": "pre",
}
# Entities whose content Telegram never scans for automatic entities.
OPAQUE_TYPES = frozenset({"code", "pre", "text_link", "url", "email", "text_mention", "custom_emoji"})


class EntityParseError(ValueError):
    """The formatted text is invalid; ``str(error)`` is Telegram's reason."""


class UnsupportedParseModeError(ValueError):
    """``parse_mode`` is not HTML (the only one the sandbox emulates; empty means plain text)."""


def _u16(ch: str) -> int:
    return 2 if ord(ch) > 0xFFFF else 1


def _byte_offset(text: str, index: int) -> int:
    return len(text[:index].encode("utf-8", "surrogatepass"))


def _entity(kind: str, offset: int, length: int, **extra: Any) -> Entity:
    entity: Entity = {"offset": offset, "length": length, "type": kind}
    entity.update({key: value for key, value in extra.items() if value is not None})
    return entity


def _normalize_url(url: str) -> str | None:
    url = url.strip()
    if not url:
        return None
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", url):
        return url
    return "http://" + url


class _Builder:
    """Accumulates output text while tracking its UTF-16 length."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.u16 = 0

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.u16 += utf16_len(text)

    def text(self) -> str:
        return "".join(self.parts)


# --------------------------------------------------------------------------- HTML


def _decode_html_entity(text: str, i: int) -> tuple[str, int] | None:
    """Decode ``&...;`` at ``text[i]``; returns (character, next index) or None."""
    end = text.find(";", i + 1, i + 12)
    if end == -1:
        return None
    body = text[i + 1 : end]
    if body in HTML_NAMED_ENTITIES:
        return HTML_NAMED_ENTITIES[body], end + 1
    code: int | None = None
    if re.fullmatch(r"#[0-9]{1,7}", body):
        code = int(body[1:])
    elif re.fullmatch(r"#[xX][0-9a-fA-F]{1,6}", body):
        code = int(body[2:], 16)
    if code is None or code == 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        return None
    return chr(code), end + 1


def _read_attributes(text: str, i: int, tag: str, begin: int) -> tuple[dict[str, str], int]:
    """Parse attributes from ``text[i]`` up to the closing ``>``; returns (attrs, index of '>')."""
    n = len(text)
    attrs: dict[str, str] = {}
    while True:
        while i < n and text[i] in SPACE_CHARS:
            i += 1
        if i >= n:
            raise EntityParseError(f"Unclosed start tag at byte offset {_byte_offset(text, begin)}")
        if text[i] == ">":
            return attrs, i
        name_begin = i
        while i < n and text[i] not in SPACE_CHARS and text[i] not in "=>":
            i += 1
        name = text[name_begin:i].lower()
        if not name:
            raise EntityParseError(
                f'Empty attribute name in the tag "{tag}" at byte offset {_byte_offset(text, begin)}'
            )
        while i < n and text[i] in SPACE_CHARS:
            i += 1
        if i >= n or text[i] != "=":
            if tag == "blockquote" and name == "expandable":
                attrs[name] = ""
                continue
            raise EntityParseError(
                f'Expected equal sign in declaration of an attribute of the tag "{tag}" '
                f"at byte offset {_byte_offset(text, begin)}"
            )
        i += 1
        while i < n and text[i] in SPACE_CHARS:
            i += 1
        if i >= n:
            raise EntityParseError(f"Unclosed start tag at byte offset {_byte_offset(text, begin)}")
        value_parts: list[str] = []
        if text[i] in "'\"":
            quote = text[i]
            i += 1
            while i < n and text[i] != quote:
                if text[i] == "&":
                    decoded = _decode_html_entity(text, i)
                    if decoded is not None:
                        value_parts.append(decoded[0])
                        i = decoded[1]
                        continue
                value_parts.append(text[i])
                i += 1
            if i >= n:
                raise EntityParseError(
                    f'Unclosed end of an attribute value of the tag "{tag}" '
                    f"at byte offset {_byte_offset(text, begin)}"
                )
            i += 1
        else:
            while i < n and text[i] not in SPACE_CHARS and text[i] != ">":
                value_parts.append(text[i])
                i += 1
        attrs[name] = "".join(value_parts)


def parse_html(text: str, *, strict_ampersand: bool = True) -> tuple[str, list[Entity]]:
    """Parse Telegram-flavoured HTML into (plain text, entities).

    ``strict_ampersand``: Telegram silently keeps a stray ``&`` that starts no entity; the
    sandbox refuses it by default so an unescaped ``&`` in the bot's output is caught.
    """
    out = _Builder()
    entities: list[Entity] = []
    stack: list[dict[str, Any]] = []
    n = len(text)
    i = 0
    while i < n:
        ch = text[i]
        if ch == "&":
            decoded = _decode_html_entity(text, i)
            if decoded is not None:
                out.add(decoded[0])
                i = decoded[1]
                continue
            if strict_ampersand:
                raise EntityParseError(
                    f'Character "&" must be escaped as "&amp;" at byte offset {_byte_offset(text, i)}'
                )
            out.add(ch)
            i += 1
            continue
        if ch != "<":
            out.add(ch)
            i += 1
            continue
        begin = i
        i += 1
        if i < n and text[i] == "/":
            i = _html_end_tag(text, begin, out, entities, stack)
            continue
        while i < n and text[i] not in SPACE_CHARS and text[i] != ">":
            i += 1
        if i >= n:
            raise EntityParseError(f"Unclosed start tag at byte offset {_byte_offset(text, begin)}")
        tag = text[begin + 1 : i].lower()
        if tag not in HTML_SUPPORTED_TAGS:
            raise EntityParseError(
                f'Unsupported start tag "{tag}" at byte offset {_byte_offset(text, begin)}'
            )
        attrs, i = _read_attributes(text, i, tag, begin)
        i += 1  # skip '>'
        if tag == "span" and attrs.get("class") != "tg-spoiler":
            raise EntityParseError(
                f'Tag "span" must have class "tg-spoiler" at byte offset {_byte_offset(text, begin)}'
            )
        if tag == "tg-emoji" and not attrs.get("emoji-id", "").isdigit():
            raise EntityParseError(
                f'Tag "tg-emoji" must have attribute "emoji-id" at byte offset {_byte_offset(text, begin)}'
            )
        stack.append({"tag": tag, "attrs": attrs, "offset": out.u16, "start": len(out.parts)})
    if stack:
        raise EntityParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1]["tag"]}"')
    return out.text(), entities


def _html_end_tag(
    text: str, begin: int, out: _Builder, entities: list[Entity], stack: list[dict[str, Any]]
) -> int:
    n = len(text)
    if not stack:
        raise EntityParseError(f"Unexpected end tag at byte offset {_byte_offset(text, begin)}")
    i = begin + 2
    while i < n and text[i] not in SPACE_CHARS and text[i] != ">":
        i += 1
    end_name = text[begin + 2 : i].lower()
    while i < n and text[i] in SPACE_CHARS:
        i += 1
    if i >= n or text[i] != ">":
        raise EntityParseError(f"Unclosed end tag at byte offset {_byte_offset(text, begin)}")
    opened = stack.pop()
    tag = opened["tag"]
    if end_name and end_name != tag:
        raise EntityParseError(
            f"Unmatched end tag at byte offset {_byte_offset(text, begin)}, "
            f'expected "</{tag}>", found "</{end_name}>"'
        )
    offset = opened["offset"]
    length = out.u16 - offset
    if length > 0:
        attrs = opened["attrs"]
        if tag == "a":
            inner = "".join(out.parts[opened["start"] :])
            url = _normalize_url(attrs.get("href") or inner)
            if url is not None:
                entities.append(_entity("text_link", offset, length, url=url))
        elif tag == "pre":
            language = None
            last = entities[-1] if entities else None
            if last and last["type"] == "code" and last["offset"] == offset and last["length"] == length:
                entities.pop()
                language = last.get("_language")
            entities.append(_entity("pre", offset, length, language=language))
        elif tag == "code":
            css = attrs.get("class", "")
            language = css[len("language-") :] if css.startswith("language-") else None
            entities.append(_entity("code", offset, length, _language=language or None))
        elif tag == "blockquote":
            kind = "expandable_blockquote" if "expandable" in attrs else "blockquote"
            entities.append(_entity(kind, offset, length))
        elif tag == "tg-emoji":
            entities.append(_entity("custom_emoji", offset, length, custom_emoji_id=attrs["emoji-id"]))
        else:
            entities.append(_entity(HTML_TAG_TYPES[tag], offset, length))
    return i + 1


# --------------------------------------------------------------------------- automatic entities


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _is_command_char(ch: str) -> bool:
    return ch.isascii() and (ch.isalnum() or ch == "_")


def find_bot_commands(text: str) -> list[Entity]:
    """``bot_command`` entities as Telegram marks them (TDLib ``match_bot_commands``).

    A command is ``/`` plus 1–64 of ``[A-Za-z0-9_]``, optionally ``@`` plus 1–32 of the same,
    not preceded by a word character, ``/``, ``<`` or ``>`` and not followed by one.
    """
    found: list[Entity] = []
    n = len(text)
    i = 0
    while True:
        i = text.find("/", i)
        if i == -1:
            return found
        if i > 0:
            prev = text[i - 1]
            if _is_word_char(prev) or prev in "/<>":
                i += 1
                continue
        begin = i
        i += 1
        name_begin = i
        while i < n and _is_command_char(text[i]):
            i += 1
        if i == name_begin or i - name_begin > 64:
            continue
        end = i
        if i < n and text[i] == "@":
            i += 1
            mention_begin = i
            while i < n and _is_command_char(text[i]):
                i += 1
            if i == mention_begin or i - mention_begin > 32:
                continue
            end = i
        if i < n:
            nxt = text[i]
            if _is_word_char(nxt) or nxt in "/<>":
                continue
        offset = utf16_len(text[:begin])
        found.append(_entity("bot_command", offset, utf16_len(text[begin:end])))


_URL_RE = re.compile(r"https?://[^\s<>\"']+", re.IGNORECASE)


def find_urls(text: str) -> list[Entity]:
    """``url`` entities for explicit http(s) links (a subset of Telegram's URL detection)."""
    found: list[Entity] = []
    for match in _URL_RE.finditer(text):
        if match.start() > 0 and _is_word_char(text[match.start() - 1]):
            continue
        url = match.group(0).rstrip(".,;:!?)]}'")
        if len(url) <= len("https://"):
            continue
        found.append(_entity("url", utf16_len(text[: match.start()]), utf16_len(url)))
    return found


def _overlaps(a: Entity, b: Entity) -> bool:
    return a["offset"] < b["offset"] + b["length"] and b["offset"] < a["offset"] + a["length"]


def add_automatic_entities(text: str, entities: list[Entity]) -> list[Entity]:
    """Add ``bot_command`` and ``url`` entities that do not clash with explicit ones."""
    result = list(entities)
    for auto in find_urls(text) + find_bot_commands(text):
        if any(_overlaps(auto, other) for other in result if other["type"] in OPAQUE_TYPES):
            continue
        result.append(auto)
    return result


def sort_entities(entities: list[Entity]) -> list[Entity]:
    """Telegram's order: by offset, longer (outer) entities first."""
    return sorted(entities, key=lambda e: (e["offset"], -e["length"]))


def trim_text(text: str, entities: list[Entity]) -> tuple[str, list[Entity]]:
    """Strip leading/trailing whitespace like Telegram, clipping entities to what remains."""
    stripped = text.strip(SPACE_CHARS)
    if stripped == text:
        return text, entities
    lead = utf16_len(text[: len(text) - len(text.lstrip(SPACE_CHARS))])
    new_len = utf16_len(stripped)
    clipped: list[Entity] = []
    for entity in entities:
        start = max(entity["offset"] - lead, 0)
        end = min(entity["offset"] + entity["length"] - lead, new_len)
        if end > start:
            clipped.append({**entity, "offset": start, "length": end - start})
    return stripped, clipped


def validate_explicit_entities(text: str, raw: Any) -> list[Entity]:
    """Check an ``entities`` / ``caption_entities`` parameter given instead of a parse mode."""
    if not isinstance(raw, list):
        raise EntityParseError("Entities must be an array")
    total = utf16_len(text)
    checked: list[Entity] = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise EntityParseError("Can't parse MessageEntity: type is not specified")
        offset, length = item.get("offset"), item.get("length")
        if not isinstance(offset, int) or not isinstance(length, int) or offset < 0 or length < 0:
            raise EntityParseError("Can't parse MessageEntity: wrong offset or length")
        end = min(offset + length, total)
        if end > offset:
            checked.append({**item, "offset": offset, "length": end - offset})
    return checked


def format_text(
    text: str,
    parse_mode: str | None,
    explicit_entities: Any = None,
    *,
    strict_ampersand: bool = True,
) -> tuple[str, list[Entity]]:
    """Turn the bot's ``text`` + ``parse_mode`` (or explicit entities) into Telegram's stored form."""
    mode = (parse_mode or "").strip().lower()
    if explicit_entities is not None:
        plain, entities = text, validate_explicit_entities(text, explicit_entities)
    elif mode == "html":
        plain, entities = parse_html(text, strict_ampersand=strict_ampersand)
    elif mode:
        raise UnsupportedParseModeError(parse_mode)
    else:
        plain, entities = text, []
    plain, entities = trim_text(
        plain, [{k: v for k, v in e.items() if not k.startswith("_")} for e in entities]
    )
    return plain, sort_entities(add_automatic_entities(plain, entities))
