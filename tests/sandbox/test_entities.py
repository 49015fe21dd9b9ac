"""Formatting rules of the sandbox: bot_command detection, HTML, UTF-16 counting."""

from __future__ import annotations

import pytest

from tg_rules.text import utf16_len
from tg_sandbox.entities import (
    EntityParseError,
    UnsupportedParseModeError,
    find_bot_commands,
    format_text,
    parse_html,
)


def _commands(text: str) -> list[str]:
    """The command substrings, cut out with the UTF-16 offsets the entities carry."""
    raw = text.encode("utf-16-le")
    return [
        raw[e["offset"] * 2 : (e["offset"] + e["length"]) * 2].decode("utf-16-le")
        for e in find_bot_commands(text)
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/start", ["/start"]),
        ("/start@statsbot_sandbox_bot", ["/start@statsbot_sandbox_bot"]),
        ("hello /help please", ["/help"]),
        ("/train now", ["/train"]),
        ("/cancel.", ["/cancel"]),
        ("(/help)", ["/help"]),
        ("/a /b", ["/a", "/b"]),
        ("/1", ["/1"]),
        ("/start_over", ["/start_over"]),
        ("/data.csv", ["/data"]),
        ("/Users/me/data/sales.csv", []),
        ("/data/x.csv", []),
        ("path: /tmp/file.txt", []),
        ("C:/data/sales.csv", []),
        ("~/data/sales.csv", []),
        ("a/b", []),
        ("x/start", []),
        ("//start", []),
        ("</start", []),
        (">/start", []),
        ("/start>", []),
        ("/start<", []),
        ("/", []),
        ("/ start", []),
        ("/stärt", []),
        ("/über", []),
        ("/start@", []),
        ("/start@ab", ["/start@ab"]),
        ("/" + "a" * 64, ["/" + "a" * 64]),
        ("/" + "a" * 65, []),
        ("😀 /go", ["/go"]),
        ("line one\n/help", ["/help"]),
    ],
)
def test_it_marks_bot_commands_like_telegram(text: str, expected: list[str]) -> None:
    assert _commands(text) == expected


def test_it_gives_command_offsets_in_utf16_units() -> None:
    assert find_bot_commands("😀 /go") == [{"offset": 3, "length": 3, "type": "bot_command"}]


@pytest.mark.parametrize(
    ("html", "text", "entities"),
    [
        (
            "<b>bold</b> &amp; <i>it</i>",
            "bold & it",
            [{"offset": 0, "length": 4, "type": "bold"}, {"offset": 7, "length": 2, "type": "italic"}],
        ),
        (
            "<strong>a</strong><em>b</em><u>c</u><ins>d</ins><s>e</s><strike>f</strike><del>g</del>",
            "abcdefg",
            [
                {"offset": 0, "length": 1, "type": "bold"},
                {"offset": 1, "length": 1, "type": "italic"},
                {"offset": 2, "length": 1, "type": "underline"},
                {"offset": 3, "length": 1, "type": "underline"},
                {"offset": 4, "length": 1, "type": "strikethrough"},
                {"offset": 5, "length": 1, "type": "strikethrough"},
                {"offset": 6, "length": 1, "type": "strikethrough"},
            ],
        ),
        (
            '<a href="https://example.org/?a=1&amp;b=2">site</a>',
            "site",
            [{"offset": 0, "length": 4, "type": "text_link", "url": "https://example.org/?a=1&b=2"}],
        ),
        (
            '<pre><code class="language-python">x = 1</code></pre>',
            "x = 1",
            [{"offset": 0, "length": 5, "type": "pre", "language": "python"}],
        ),
        ("<pre>raw</pre>", "raw", [{"offset": 0, "length": 3, "type": "pre"}]),
        (
            "<code>a &lt; b &gt; c &quot;d&quot;</code>",
            'a < b > c "d"',
            [{"offset": 0, "length": 13, "type": "code"}],
        ),
        (
            '<span class="tg-spoiler">s</span><tg-spoiler>t</tg-spoiler>',
            "st",
            [{"offset": 0, "length": 1, "type": "spoiler"}, {"offset": 1, "length": 1, "type": "spoiler"}],
        ),
        (
            "<blockquote>q</blockquote><blockquote expandable>e</blockquote>",
            "qe",
            [
                {"offset": 0, "length": 1, "type": "blockquote"},
                {"offset": 1, "length": 1, "type": "expandable_blockquote"},
            ],
        ),
        (
            '<tg-emoji emoji-id="5368324170671202286">👍</tg-emoji>',
            "👍",
            [{"offset": 0, "length": 2, "type": "custom_emoji", "custom_emoji_id": "5368324170671202286"}],
        ),
        ("&#128512;&#x41;", "😀A", []),
        ("😀 <b>x</b>", "😀 x", [{"offset": 3, "length": 1, "type": "bold"}]),
        ("<B>caps</B>", "caps", [{"offset": 0, "length": 4, "type": "bold"}]),
        (
            "<b>outer <i>inner</i></b>",
            "outer inner",
            [{"offset": 0, "length": 11, "type": "bold"}, {"offset": 6, "length": 5, "type": "italic"}],
        ),
        ("a > b", "a > b", []),
    ],
)
def test_it_parses_telegram_html(html: str, text: str, entities: list[dict[str, object]]) -> None:
    assert format_text(html, "HTML") == (text, entities)


@pytest.mark.parametrize(
    ("html", "reason"),
    [
        ("hello <foo>x</foo>", 'Unsupported start tag "foo" at byte offset 6'),
        ("a < b", 'Unsupported start tag "" at byte offset 2'),
        ("line<br>", 'Unsupported start tag "br" at byte offset 4'),
        ("<b>bold", 'Can\'t find end tag corresponding to start tag "b"'),
        ("<b>x</i>", 'Unmatched end tag at byte offset 4, expected "</b>", found "</i>"'),
        ("x</b>", "Unexpected end tag at byte offset 1"),
        ("<b", "Unclosed start tag at byte offset 0"),
        ("é<b", "Unclosed start tag at byte offset 2"),
        ("Q&A", 'Character "&" must be escaped as "&amp;" at byte offset 1'),
        ("&nbsp;", 'Character "&" must be escaped as "&amp;" at byte offset 0'),
        ('<span class="x">s</span>', 'Tag "span" must have class "tg-spoiler" at byte offset 0'),
        ('<a href="x>y</a>', 'Unclosed end of an attribute value of the tag "a" at byte offset 0'),
        (
            "<a href>y</a>",
            'Expected equal sign in declaration of an attribute of the tag "a" at byte offset 0',
        ),
    ],
)
def test_it_refuses_invalid_html_with_telegrams_reason(html: str, reason: str) -> None:
    with pytest.raises(EntityParseError) as error:
        parse_html(html)
    assert str(error.value) == reason


def test_it_keeps_a_stray_ampersand_when_html_is_lenient() -> None:
    assert parse_html("Q&A", strict_ampersand=False) == ("Q&A", [])


def test_it_trims_whitespace_and_clips_entities() -> None:
    assert format_text("  <b> hi </b>\n\n", "HTML") == ("hi", [{"offset": 0, "length": 2, "type": "bold"}])


def test_it_adds_command_and_url_entities_outside_code() -> None:
    text, entities = format_text("Send /train or see https://example.org/docs. <code>/help</code>", "HTML")
    assert text == "Send /train or see https://example.org/docs. /help"
    assert entities == [
        {"offset": 5, "length": 6, "type": "bot_command"},
        {"offset": 19, "length": 24, "type": "url"},
        {"offset": 45, "length": 5, "type": "code"},
    ]


@pytest.mark.parametrize("mode", ["BBCode", "MarkdownV2", "Markdown"])
def test_it_rejects_parse_modes_the_bot_does_not_use(mode: str) -> None:
    with pytest.raises(UnsupportedParseModeError):
        format_text("x", mode)


def test_it_counts_utf16_code_units() -> None:
    assert utf16_len("a😀é") == 4
