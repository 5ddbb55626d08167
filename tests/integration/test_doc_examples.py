"""Every `curl` example in README.md and docs/*.md runs as written against a node.

The examples of one page run in page order against one fresh node (the HTTP API `worcr dev`
serves, on `localhost:7400` in the docs), so a page may build on its earlier examples. An id an
example needs is a shell variable named after what it identifies (`$JOB_ID`, `$RULE_ID`): the
test sets it from the `id` of the latest example that created one (`POST /api/v1/jobs` ->
`JOB_ID`), as a reader copies it from the output. Each example must answer 2xx, unless the
comment on its first line names the status it shows (`# 409: ...`). Event streams (`curl -N`)
must start streaming. The curl options the docs may use are the ones `Curl.parse` knows; any
other option fails the test, so the docs stay within what is checked.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from worcr_node.node import Node

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOC_HOST = "localhost:7400"
_FENCE = re.compile(r"^```(\w*)\s*$")
_STATUS_NOTE = re.compile(r"#\s*(?:->\s*)?([1-5]\d\d)\b")
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass
class Curl:
    """One curl command from a page: what it asks, and where it is."""

    where: str
    text: str
    method: str = "GET"
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    data: str | None = None
    stream: bool = False
    expect: int | None = None  # a status the example says it shows; else any 2xx

    @classmethod
    def parse(cls, where: str, text: str) -> Curl:
        first = text.split("\n", 1)[0]
        note = _STATUS_NOTE.search(first[first.find("#") :]) if "#" in first else None
        curl = cls(where, text, expect=int(note.group(1)) if note else None)
        words = shlex.split(text.replace("\\\n", " "), comments=True)  # joined as bash does
        assert words[0] == "curl"
        rest = iter(words[1:])
        for word in rest:
            if word in ("-X", "--request"):
                curl.method = next(rest)
            elif word in ("-H", "--header"):
                name, _, value = next(rest).partition(":")
                curl.headers[name.strip().lower()] = value.strip()
            elif word in ("-d", "--data", "--data-raw"):
                curl.data = next(rest)
                if curl.method == "GET":
                    curl.method = "POST"  # as curl does
            elif word in ("-N", "--no-buffer"):
                curl.stream = True
            elif word in ("-s", "--silent", "-S", "--show-error", "-i", "--include"):
                pass
            elif word.startswith("-"):
                pytest.fail(f"{where}: curl option {word} is not one the docs test knows")
            else:
                assert not curl.url, f"{where}: two URLs in one curl command"
                curl.url = word
        assert curl.url, f"{where}: curl without a URL"
        return curl


def shell_commands(page: Path) -> list[tuple[str, str]]:
    """(where, command) for each command in the page's shell blocks; a command spans the lines
    its quotes and trailing backslashes join."""
    commands: list[tuple[str, str]] = []
    in_shell = False
    pending: list[str] = []
    start = 0
    for number, line in enumerate(page.read_text().splitlines(), 1):
        fence = _FENCE.match(line)
        if fence:
            in_shell = not in_shell and fence.group(1) in ("sh", "bash", "shell")
            if not in_shell and pending:
                pytest.fail(f"{page.name}:{start}: unfinished command in a shell block")
            continue
        if not in_shell or (not pending and not line.strip()):
            continue
        if not pending:
            start = number
        pending.append(line)
        text = "\n".join(pending)
        if text.endswith("\\"):
            continue
        try:
            shlex.split(text, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        commands.append((f"{page.relative_to(ROOT)}:{start}", text))
        pending = []
    return commands


def curl_examples(page: Path) -> list[Curl]:
    return [
        Curl.parse(where, text)
        for where, text in shell_commands(page)
        if text.lstrip().startswith("curl ")
    ]


def test_the_docs_have_curl_examples() -> None:
    """The parser finds what a reader sees (guards against a change that finds none)."""
    found = {page.name: len(curl_examples(page)) for page in PAGES}
    assert found["README.md"] >= 10, found
    assert sum(found.values()) >= 20, found


def _substitute(text: str, variables: dict[str, str], where: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            pytest.fail(f"{where}: ${name} is set by no earlier example on the page")
        return variables[name]

    return _VARIABLE.sub(value, text)


def _remember_ids(curl: Curl, path: str, body: object, variables: dict[str, str]) -> None:
    """`POST /api/v1/rules` answering `{"id": ...}` sets RULE_ID, and so on."""
    if curl.method != "POST" or not isinstance(body, dict):
        return
    collection = path.removeprefix("/api/v1/").split("?")[0]
    if "/" in collection:
        return
    created = body.get("jobs", [body])  # a batch enqueue answers {"jobs": [...]}
    if isinstance(created, list) and created and isinstance(created[-1], dict):
        if (ident := created[-1].get("id")) is not None:
            variables[f"{collection.removesuffix('s').upper()}_ID"] = str(ident)


async def run(curl: Curl, http: aiohttp.ClientSession, base: str, variables: dict) -> None:
    url = _substitute(curl.url, variables, curl.where)
    url = url if "://" in url else f"http://{url}"
    assert DOC_HOST in url, f"{curl.where}: examples address the dev node at {DOC_HOST}"
    path = url.split(DOC_HOST, 1)[1]
    headers = {k: _substitute(v, variables, curl.where) for k, v in curl.headers.items()}
    async with http.request(
        curl.method, base + path, headers=headers, data=curl.data, allow_redirects=False
    ) as answer:
        if curl.stream:
            assert answer.status == 200, f"{curl.where}: {answer.status}\n{curl.text}"
            assert answer.content_type == "text/event-stream", curl.where
            await answer.content.readuntil(b"\n\n")  # the stream started
            return
        text = await answer.text()
        if curl.expect is not None:
            assert answer.status == curl.expect, f"{curl.where}: {answer.status} {text}"
        else:
            assert 200 <= answer.status < 300, f"{curl.where}: {answer.status} {text}\n{curl.text}"
        body = json.loads(text) if text and answer.content_type == "application/json" else None
        _remember_ids(curl, path, body, variables)


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
async def test_curl_examples_run_as_written(page: Path, node: Node) -> None:
    examples = curl_examples(page)
    variables: dict[str, str] = {"WORCR_TOKEN": ""}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        for curl in examples:
            await run(curl, http, node.http_address, variables)
