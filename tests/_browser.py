"""Debian's headless Chromium for the browser tests (through Playwright), and their screenshots,
which go to test-artifacts/ (not committed; ACESTEP_TEST_ARTIFACTS moves them)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
ARTIFACTS = Path(os.environ.get("ACESTEP_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))


def launch(playwright: Playwright) -> Browser:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is required for the browser tests (scripts/setup.sh installs it)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)


def shot(page: Page, name: str, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.png"
    page.screenshot(path=str(path), full_page=full_page)
