"""What the serve tests share: one headless browser for the whole session (starting Chromium
costs seconds; the page tests of every module drive the same one)."""

from __future__ import annotations

import shutil

import pytest

from tests.support.system import apt_install, can_apt, cannot


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium + chromedriver (installed with apt when missing), driven by selenium."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if not can_apt():
            cannot("chromium/chromedriver are missing and apt-get (as root) is not available")
        apt_install("chromium", "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-default-apps", "--window-size=1000,900"):  # fmt: skip
        opts.add_argument(flag)
    # an explicit driver: selenium does not look for (or download) one
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
