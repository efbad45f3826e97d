"""The headless browser's availability check: a skip names what is missing."""

from twisted_raft.tools import browser


def test_missing_names_the_browser_and_driver_not_installed(monkeypatch, tmp_path):
    monkeypatch.setattr(browser, "CHROMIUM", str(tmp_path / "chromium"))
    monkeypatch.setattr(browser, "CHROMEDRIVER", str(tmp_path / "chromedriver"))
    why = browser.missing()
    assert str(tmp_path / "chromium") in why and str(tmp_path / "chromedriver") in why
    assert "apt-get install chromium chromium-driver" in why


def test_missing_names_selenium_when_it_does_not_import(monkeypatch, tmp_path):
    import sys

    ok = tmp_path / "ok"
    ok.write_text("#!/bin/sh\n")
    ok.chmod(0o755)
    monkeypatch.setattr(browser, "CHROMIUM", str(ok))
    monkeypatch.setattr(browser, "CHROMEDRIVER", str(ok))
    monkeypatch.setitem(sys.modules, "selenium", None)  # import fails
    assert "selenium" in browser.missing()
    monkeypatch.delitem(sys.modules, "selenium")
    assert browser.missing() is None
