"""Photos and documents: multipart upload, file_id reuse, getFile and download."""

from __future__ import annotations

import aiohttp
import pytest

from tg_rules.images import image_size
from tg_sandbox import SandboxServer

from .helpers import call, make_png

USER = 4004


@pytest.fixture
def user(sandbox: SandboxServer) -> None:
    sandbox.state.user_send_text(USER, "hi", first_name="Ed")


async def _upload(
    http: aiohttp.ClientSession,
    sandbox: SandboxServer,
    method: str,
    field: str,
    data: bytes,
    filename: str,
    content_type: str,
    **params: str,
) -> tuple[int, dict]:
    form = aiohttp.FormData()
    form.add_field("chat_id", str(USER))
    for key, value in params.items():
        form.add_field(key, value)
    form.add_field(field, data, filename=filename, content_type=content_type)
    async with http.post(f"{sandbox.api_base_url}{sandbox.token}/{method}", data=form) as response:
        return response.status, await response.json()


async def test_it_stores_an_uploaded_photo_with_its_real_size_and_serves_it(
    sandbox: SandboxServer, http: aiohttp.ClientSession, user: None
) -> None:
    png = make_png(64, 48)
    status, body = await _upload(
        http,
        sandbox,
        "sendPhoto",
        "photo",
        png,
        "chart.png",
        "image/png",
        caption="<b>Chart</b>",
        parse_mode="HTML",
    )
    assert status == 200
    message = body["result"]
    [size] = message["photo"]
    assert (size["width"], size["height"], size["file_size"]) == (64, 48, len(png))
    assert message["caption"] == "Chart"
    assert message["caption_entities"] == [{"offset": 0, "length": 5, "type": "bold"}]

    status, file_body = await call(
        http, sandbox.api_base_url, sandbox.token, "getFile", file_id=size["file_id"]
    )
    assert status == 200
    info = file_body["result"]
    assert info["file_id"] == size["file_id"]
    assert info["file_unique_id"] == size["file_unique_id"]
    assert info["file_size"] == len(png)
    assert info["file_path"].startswith("photos/") and info["file_path"].endswith(".png")

    async with http.get(f"{sandbox.file_base_url}{sandbox.token}/{info['file_path']}") as response:
        assert response.status == 200
        assert response.content_type == "image/png"
        assert await response.read() == png
    async with http.get(f"{sandbox.url}/sandbox/files/{size['file_id']}") as response:
        assert await response.read() == png
        assert response.headers["Content-Disposition"] == "inline"


async def test_it_reuses_a_file_id_and_refuses_unknown_ones(
    sandbox: SandboxServer, http: aiohttp.ClientSession, user: None
) -> None:
    _, first = await _upload(http, sandbox, "sendPhoto", "photo", make_png(3, 2), "a.png", "image/png")
    file_id = first["result"]["photo"][0]["file_id"]
    status, body = await call(
        http, sandbox.api_base_url, sandbox.token, "sendPhoto", chat_id=USER, photo=file_id
    )
    assert status == 200 and body["result"]["photo"][0]["file_id"] == file_id
    status, body = await call(
        http, sandbox.api_base_url, sandbox.token, "sendPhoto", chat_id=USER, photo="nope"
    )
    assert (status, body["description"]) == (400, "Bad Request: wrong file identifier/HTTP URL specified")
    status, body = await call(http, sandbox.api_base_url, sandbox.token, "sendPhoto", chat_id=USER)
    assert (status, body["description"]) == (400, "Bad Request: there is no photo in the request")
    status, body = await call(http, sandbox.api_base_url, sandbox.token, "getFile", file_id="nope")
    assert (status, body["description"]) == (400, "Bad Request: invalid file_id")


async def test_it_sends_documents_with_name_and_type(
    sandbox: SandboxServer, http: aiohttp.ClientSession, user: None
) -> None:
    data = b"line 1\nline 2\n"
    status, body = await _upload(http, sandbox, "sendDocument", "document", data, "train.log", "text/plain")
    assert status == 200
    document = body["result"]["document"]
    assert document["file_name"] == "train.log"
    assert document["mime_type"] == "text/plain"
    assert document["file_size"] == len(data)
    _, info = await call(http, sandbox.api_base_url, sandbox.token, "getFile", file_id=document["file_id"])
    assert info["result"]["file_path"].startswith("documents/") and info["result"]["file_path"].endswith(
        ".log"
    )
    async with http.get(f"{sandbox.url}/sandbox/files/{document['file_id']}") as response:
        assert await response.read() == data
        assert response.headers["Content-Disposition"] == 'attachment; filename="train.log"'


async def test_it_accepts_attach_uris(
    sandbox: SandboxServer, http: aiohttp.ClientSession, user: None
) -> None:
    status, body = await _upload(
        http,
        sandbox,
        "sendDocument",
        "part1",
        b"a,b\n1,2\n",
        "data.csv",
        "text/csv",
        document="attach://part1",
    )
    assert status == 200 and body["result"]["document"]["file_name"] == "data.csv"


async def test_it_turns_a_user_upload_into_a_document_message(
    sandbox: SandboxServer, http: aiohttp.ClientSession, user: None
) -> None:
    form = aiohttp.FormData()
    form.add_field("file", b"x,y\n1,2\n", filename="sales.csv", content_type="text/csv")
    form.add_field("caption", "/predict please")
    async with http.post(f"{sandbox.url}/sandbox/api/users/{USER}/upload", data=form) as response:
        assert response.status == 200
        message = await response.json()
    assert message["document"]["file_name"] == "sales.csv"
    assert message["caption"] == "/predict please"
    assert message["caption_entities"] == [{"offset": 0, "length": 8, "type": "bot_command"}]
    _, updates = await call(http, sandbox.api_base_url, sandbox.token, "getUpdates")
    assert updates["result"][-1]["message"]["document"] == message["document"]
    _, info = await call(
        http, sandbox.api_base_url, sandbox.token, "getFile", file_id=message["document"]["file_id"]
    )
    async with http.get(f"{sandbox.file_base_url}{sandbox.token}/{info['result']['file_path']}") as response:
        assert await response.read() == b"x,y\n1,2\n"


async def test_it_refuses_downloads_with_a_wrong_token_or_path(
    sandbox: SandboxServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{sandbox.file_base_url}1:bad/photos/file_1.png") as response:
        assert response.status == 401
    async with http.get(f"{sandbox.file_base_url}{sandbox.token}/photos/missing.png") as response:
        assert response.status == 404


def test_it_reads_image_sizes_from_headers() -> None:
    assert image_size(make_png(640, 480)) == (640, 480)
    jpeg = (
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
        b"\xff\xc0\x00\x11\x08\x01\xe0\x02\x80\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01\xff\xd9"
    )
    assert image_size(jpeg) == (640, 480)
    assert image_size(b"GIF89a\x0a\x00\x05\x00rest") == (10, 5)
    assert image_size(b"not an image") is None
