"""The web page in a real browser: Debian's chromium driven by Playwright against a real server on 127.0.0.1.

A person picks (or drops) a real cat photo and sees it, the label and one probability bar per class; a
picture of something else reads "Neither"; an unreadable file gets a readable message. The page loads
nothing from anywhere but this server and logs no console errors.
"""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from browser import browser_page
from pawsight.serve.app import background_server, create_app

OTHER = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "not_cats_or_dogs" / "objects" / \
    "n03196217_digital_clock.jpg"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(transfer_run: Path):
    with background_server(create_app(transfer_run)) as url:
        yield url


@pytest.fixture()
def page(site: str):
    with browser_page(site) as page:
        yield page


def shown_bars(page) -> dict[str, float]:
    bars = page.locator("#bars li")
    meters = [bars.nth(i).locator("[role=meter]") for i in range(bars.count())]
    return {bars.nth(i).get_attribute("data-class"): float(m.get_attribute("aria-valuenow"))
            for i, m in enumerate(meters)}


def test_pick_a_cat_photo_shows_it_with_label_and_bars(page, site: str, tiny: Path) -> None:
    from playwright.sync_api import expect

    cat = sorted((tiny / "validation" / "cats").glob("*.jpg"))[0]
    expect(page.locator("#about")).to_contain_text("cats, dogs")
    page.set_input_files("#pick", str(cat))
    expect(page.locator("#label")).to_have_text("cats", timeout=30_000)
    expect(page.locator("#preview")).to_have_attribute("src", __import__("re").compile("^blob:"))
    assert page.locator("#preview").evaluate("img => img.complete && img.naturalWidth > 0")
    api = httpx.post(site + "/predict", files={"file": (cat.name, cat.read_bytes())}, timeout=60)
    record = api.json()["predictions"][0]
    bars = shown_bars(page)
    assert list(bars) == sorted(record["probabilities"], key=record["probabilities"].get, reverse=True)
    for name, value in bars.items():
        assert value == pytest.approx(100 * record["probabilities"][name], abs=0.051)
    assert bars["cats"] > 50 and sum(bars.values()) == pytest.approx(100, abs=0.2)
    assert page.locator("#error").is_hidden()
    assert page.problems == []


def test_drop_a_dog_photo(page, tiny: Path) -> None:
    from playwright.sync_api import expect

    dog = sorted((tiny / "validation" / "dogs").glob("*.jpg"))[0]
    transfer = page.evaluate_handle(
        """b64 => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                    const dt = new DataTransfer();
                    dt.items.add(new File([bytes], "dog.jpg", {type: "image/jpeg"})); return dt; }""",
        base64.b64encode(dog.read_bytes()).decode())
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    expect(page.locator("#label")).to_have_text("dogs", timeout=30_000)
    assert shown_bars(page)["dogs"] > 50
    assert page.problems == []


def test_something_else_reads_neither(page) -> None:
    from playwright.sync_api import expect

    page.set_input_files("#pick", str(OTHER))
    expect(page.locator("#label")).to_have_text("Neither", timeout=30_000)
    expect(page.locator("#detail")).to_contain_text("none of: cats, dogs")
    assert len(shown_bars(page)) == 2
    assert page.problems == []


def test_unreadable_file_shows_a_message(page, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a picture")
    page.set_input_files("#pick", str(bad))
    expect(page.locator("#error")).to_contain_text("not an image", timeout=30_000)
    assert page.locator("#result").is_hidden()
    # the only console line allowed: the browser's own note of the 422 answer
    assert all("422" in p for p in page.problems), page.problems
