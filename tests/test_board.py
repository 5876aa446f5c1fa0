"""The status board's files: served by the service itself (no CDN, nothing to build), and locked to its origin."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from service.api import board

BOARD_DIR = Path(board.__file__).parent / "board"


@pytest.mark.asyncio
async def test_the_page_is_served_at_the_root(client: httpx.AsyncClient) -> None:
    page = await client.get("/")

    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>Image builds" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-cache"


@pytest.mark.asyncio
async def test_every_file_the_page_names_is_served_by_the_service(client: httpx.AsyncClient) -> None:
    page = (await client.get("/")).text
    named = re.findall(r'(?:src|href)="([^"]+)"', page)

    local = [url for url in named if url.startswith("/")]
    assert sorted(local) == ["/board/board.css", "/board/board.js"]
    assert not [url for url in named if url.startswith(("http:", "https:", "//"))], "nothing from elsewhere"
    for url in local:
        asset = await client.get(url)
        assert asset.status_code == 200, url
    script = await client.get("/board/board.js")
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    # The one URL in the script is SVG's namespace, a name rather than something to fetch.
    urls = set(re.findall(r"https?://[^\s\"'`]+", script.text))
    assert urls == {"http://www.w3.org/2000/svg"}


@pytest.mark.asyncio
async def test_the_script_reads_the_public_api_only(client: httpx.AsyncClient) -> None:
    script = (await client.get("/board/board.js")).text
    paths = set(re.findall(r'[`"](/v3/[a-z/-]+)', script))
    assert paths == {
        "/v3/image-states", "/v3/image-changes", "/v3/images/custom", "/v3/images/custom/", "/v3/session",
        "/v3/image-builds", "/v3/image-builds/summary", "/v3/subscriptions",
    }


@pytest.mark.asyncio
async def test_nothing_the_board_serves_names_another_origin(client: httpx.AsyncClient) -> None:
    """No CDN, no font or chart library from elsewhere: the page, its script and its style name no other origin
    (the script's one URL is SVG's namespace), and the style loads nothing (no url(), no @import)."""
    for path in ("/", "/board/board.js", "/board/board.css"):
        text = (await client.get(path)).text
        urls = set(re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}[^\s\"'`)]*", text, flags=re.IGNORECASE))
        assert urls <= {"http://www.w3.org/2000/svg"}, (path, urls)
    style = (await client.get("/board/board.css")).text
    assert "url(" not in style and "@import" not in style


def test_the_script_writes_api_text_as_text_never_as_markup() -> None:
    """What the API says (image ids, failure reasons) reaches the page through textContent and createElementNS:
    innerHTML and its kin are only ever given a literal of the script's own."""
    script = (BOARD_DIR / "board.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
        for found in re.finditer(re.escape(sink) + r"\s*(=|\()\s*(.)", script):
            assert found.group(2) == "'", f"{sink} given something other than a literal: {found.group(0)!r}"


@pytest.mark.asyncio
async def test_the_page_offers_the_builds_view_beside_the_images(client: httpx.AsyncClient) -> None:
    page = (await client.get("/")).text

    # The images stay the default view; the builds view is a link away (#builds) and starts hidden.
    assert re.search(r'<a id="view-images"[^>]*aria-current="page"', page)
    assert '<a id="view-builds" class="view-link" href="#builds">Builds</a>' in page
    assert re.search(r'<section id="builds"[^>]* hidden>', page)
    windows = re.findall(r'<option value="(\d+[hd])"', page)
    assert windows == ["24h", "7d", "30d", "90d"]
    assert '<option value="7d" selected>' in page


@pytest.mark.asyncio
async def test_assets_revalidate_and_compress(client: httpx.AsyncClient) -> None:
    first = await client.get("/board/board.js", headers={"Accept-Encoding": "gzip"})
    again = await client.get(
        "/board/board.js", headers={"Accept-Encoding": "gzip", "If-None-Match": first.headers["etag"]}
    )

    assert first.headers["content-encoding"] == "gzip"
    assert again.status_code == 304


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["nothing.js", "index.html", "..%2Fboard.py", "board.py"])
async def test_only_the_boards_own_files_are_served(client: httpx.AsyncClient, name: str) -> None:
    response = await client.get(f"/board/{name}")
    assert response.status_code == 404 and set(response.json()) == {"message"}


def test_the_files_are_package_data_of_the_wheel() -> None:
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["service.api"]
    on_disk = {path.name for path in BOARD_DIR.iterdir() if path.is_file()}
    assert on_disk == {"index.html", "board.js", "board.css"}
    assert all(any(Path(name).match(pattern.removeprefix("board/")) for pattern in patterns) for name in on_disk)
