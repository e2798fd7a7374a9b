"""The real browser as tests drive it — THE helper every browser test uses: Debian's chromium via Playwright
(never a downloaded browser), headless, with the flags this closed network needs, and a page that records
console errors, uncaught exceptions and any request to anywhere but the page's own server."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_or_skip() -> str:
    """The system chromium; missing, the test fails in CI (CI=true) and is skipped elsewhere."""
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if path and importlib.util.find_spec("playwright"):
        return path
    reason = "no chromium at /usr/bin/chromium (apt-get install chromium) or no playwright (pip install " \
             "'pawsight[dev]'): the browser test needs both"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@contextlib.contextmanager
def browser_page(site: str | None = None, allow: tuple[str, ...] = ()) -> Iterator[Any]:
    """A fresh page (opened at `site` when given). `page.problems` lists console errors, page errors,
    dialogs (dismissed) and requests to anywhere but `site`, `allow`ed prefixes (e.g. "file:"), data: and
    blob: URLs (those are aborted)."""
    executable = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=ARGS, headless=True)
        try:
            page = browser.new_page()
            page.problems = []
            page.on("console", lambda m: page.problems.append(f"console {m.type}: {m.text}")
                    if m.type == "error" else None)
            page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
            page.on("dialog", lambda d: (page.problems.append(f"dialog: {d.message}"), d.dismiss()))

            def only_this_server(route: Any, request: Any) -> None:
                url = request.url
                if (site and url.startswith(site)) or url.startswith(("data:", "blob:", *allow)):
                    route.continue_()
                else:
                    page.problems.append(f"request to {request.url}")
                    route.abort()

            page.route("**/*", only_this_server)
            if site:
                page.goto(site + "/")
            yield page
        finally:
            browser.close()
