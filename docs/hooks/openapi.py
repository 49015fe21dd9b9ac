"""MkDocs hook: the HTTP API page rendered from the server's own OpenAPI document.

``notifications.schema.openapi_schema`` is what ``GET /api/openapi.json`` serves; the page
``api.md`` gets its endpoints in place of ``<!-- openapi -->`` and the site gets the document
itself as ``openapi.json``, so the docs cannot drift from the server.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from notifications.schema import openapi_schema  # noqa: E402  (the repository root first)

PLACEHOLDER = "<!-- openapi -->"
SERVER = "https://statsbot.example.com"


def _schema() -> dict[str, Any]:
    return openapi_schema(SERVER)


def _example(operation: dict[str, Any]) -> str:
    content = (operation.get("requestBody") or {}).get("content") or {}
    for media_type, body in content.items():
        if "example" in body:
            return f"Request (`{media_type}`):\n\n```json\n{json.dumps(body['example'], indent=2)}\n```\n"
    return ""


def render(schema: dict[str, Any]) -> str:
    lines = [f"Version {schema['info']['version']}. {schema['info'].get('description', '')}", ""]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            lines.append(f"### `{method.upper()} {path}`")
            lines.append("")
            lines.append(operation.get("summary", ""))
            if operation.get("description"):
                lines += ["", operation["description"]]
            auth = "none" if operation.get("security") == [] else "`Authorization: Bearer exp_…`"
            lines += ["", f"Authentication: {auth}.", ""]
            params = [p for p in operation.get("parameters", []) if "name" in p]
            if params:
                lines.append("Parameters: " + ", ".join(f"`{p['name']}` ({p.get('in', '')})" for p in params) + ".")
                lines.append("")
            example = _example(operation)
            if example:
                lines.append(example)
            lines += ["| status | meaning |", "|---|---|"]
            for status, response in operation.get("responses", {}).items():
                description = str(response.get("description", "")).replace("|", "\\|").replace("\n", " ")
                lines.append(f"| {status} | {description} |")
            lines.append("")
    return "\n".join(lines)


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    files.append(File.generated(config, "openapi.json", content=json.dumps(_schema(), indent=2)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if PLACEHOLDER in markdown:
        return markdown.replace(PLACEHOLDER, render(_schema()))
    return markdown
