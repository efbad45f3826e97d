"""
A headless Chromium for the dashboard's browser test and its screenshot
tool: Debian's C{chromium} and C{chromium-driver}, driven with selenium.

Why selenium and the distribution's driver: the driver matches the
browser the same package manager installed, and with both paths given
selenium never runs selenium-manager, so nothing is downloaded (this
machine, and CI, may have no network).  CDP over a pipe would need no
Python package, but a hand-written CDP client is more code to keep than
the few selenium calls the test makes.
"""

import os
import shutil
import tempfile

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

FLAGS = (
    "--headless",
    "--no-sandbox",  # CI and this machine run as root, where the sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # a closed network: no update or metrics calls
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # small /dev/shm in containers
)


def missing():
    """
    Why no headless browser can be started here (what is missing, and how
    to get it), or C{None} if one can.
    """
    absent = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        absent.append("the selenium package (pip install 'raftkv[test]')")
    if not absent:
        return None
    return ("no headless browser: missing " + ", ".join(absent)
            + " (apt-get install chromium chromium-driver)")


class HeadlessChromium:
    """
    One headless Chromium with a fresh profile (removed by L{quit}).

    @ivar driver: the selenium WebDriver.
    """

    def __init__(self, width=1200, height=900):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="raftkv-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.profile}")
        options.add_argument(f"--window-size={width},{height}")
        try:
            self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        except Exception:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise

    def rows(self):
        """
        C{[(node id, data-role)]} of every member row the page shows, read
        in one script call (the page redraws between two selenium calls).
        """
        pairs = self.driver.execute_script(
            "return Array.from(document.querySelectorAll('[data-node-id]'))"
            ".map(e => [e.getAttribute('data-node-id'), e.getAttribute('data-role')]);"
        )
        return [(int(nodeId), role) for nodeId, role in pairs]

    def quit(self):
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)
