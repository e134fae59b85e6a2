"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol, to look at mail.

``Chromium.start(folder)`` runs one browser with every host name unresolvable (so nothing
remote could load even if a page asked), a fresh profile in ``folder``, and its DevTools port
on loopback. ``page()`` opens a tab: ``Page.show(path, width, scheme)`` loads a file at a
window width in the light or dark colour scheme (as a phone at 360 px, a desktop at 1024),
``measure()`` runs the measuring script below in it, ``screenshot(path)`` saves the whole page,
and ``requests`` lists every URL the page asked for.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

__all__ = ["MEASURE", "Chromium", "Page"]

# What the page looks like, as data: the viewport's width and the document's, every element
# wider than its box or reaching past the viewport, the text whose colour is too close to what
# it stands on, and every attribute or style that would load from elsewhere.
MEASURE = r"""
(() => {
  const root = document.documentElement, width = root.clientWidth;
  const rgba = (text) => (text.match(/[\d.]+/g) || []).map(Number);
  const probe = document.createElement('div');
  probe.style.cssText = 'background-color:Canvas;color:CanvasText';
  document.body.appendChild(probe);
  const canvas = rgba(getComputedStyle(probe).backgroundColor);
  probe.remove();
  const over = (a, b) => { const alpha = a.length > 3 ? a[3] : 1;
    return [0, 1, 2].map(i => a[i] * alpha + b[i] * (1 - alpha)); };
  const light = (c) => { const [r, g, b] = c.map(v => { v /= 255;
    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  const behind = (el) => { const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = rgba(getComputedStyle(e).backgroundColor);
      if (c.length > 3 && c[3] === 0) continue;
      layers.push(c); if (c.length < 4 || c[3] === 1) break; }
    return layers.reverse().reduce((under, layer) => over(layer, under), canvas.slice(0, 3)); };
  const result = {width, scrollWidth: root.scrollWidth, wide: [], faint: [], remote: [],
                  styleSheets: document.querySelectorAll('style, link').length, images: []};
  for (const el of document.body.querySelectorAll('*')) {
    const box = el.getBoundingClientRect(), name = el.tagName.toLowerCase();
    if (box.right > width + 0.5 || box.left < -0.5 ||
        (el.clientWidth > 0 && el.scrollWidth > el.clientWidth + 1))
      result.wide.push(`${name} right=${box.right} scroll=${el.scrollWidth}/${el.clientWidth}`);
    const text = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (text) {
      const a = light(over(rgba(getComputedStyle(el).color), behind(el)));
      const b = light(behind(el));
      const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
      if (ratio < 4.5)
        result.faint.push(`${name} ${ratio.toFixed(2)}: ${el.textContent.slice(0, 40)}`);
    }
    for (const attr of ['src', 'href', 'srcset', 'background', 'poster', 'action'])
      if (el.hasAttribute(attr) && !/^(data|cid):/.test(el.getAttribute(attr)))
        result.remote.push(`${name} ${attr}=${el.getAttribute(attr)}`);
    if (/url\(/i.test(el.getAttribute('style') || '')) result.remote.push(`${name} style url()`);
    if (name === 'img') result.images.push({src: el.getAttribute('src').slice(0, 30),
                                           loaded: el.complete && el.naturalWidth > 0,
                                           width: box.width});
  }
  return result;
})()
"""


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise RuntimeError("these tests need Chromium: `apt-get install chromium` (as root), "
                           "or run scripts/test.sh, which installs it")
    return found


@dataclass
class Page:
    socket: ClientConnection
    requests: list[str] = field(default_factory=list)
    next_id: int = 0

    def call(self, method: str, params: dict[str, Any] | None = None,
             wait_for: str | None = None) -> dict[str, Any]:
        """One DevTools command; with `wait_for`, until that event comes too."""
        self.next_id += 1
        number = self.next_id
        self.socket.send(json.dumps({"id": number, "method": method, "params": params or {}}))
        result: dict[str, Any] | None = None
        seen = wait_for is None
        while result is None or not seen:
            message = json.loads(self.socket.recv(timeout=30))
            if message.get("method") == "Network.requestWillBeSent":
                self.requests.append(message["params"]["request"]["url"])
            seen = seen or message.get("method") == wait_for
            if message.get("id") == number:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result = message["result"]
        return result

    def show(self, path: Path, width: int, scheme: str = "light") -> None:
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": 800, "deviceScaleFactor": 1,
                   "mobile": width < 600})
        self.call("Emulation.setEmulatedMedia",
                  {"features": [{"name": "prefers-color-scheme", "value": scheme}]})
        self.call("Page.navigate", {"url": path.as_uri()}, wait_for="Page.loadEventFired")

    def measure(self) -> dict[str, Any]:
        answer = self.call("Runtime.evaluate", {"expression": MEASURE, "returnByValue": True})
        if "exceptionDetails" in answer:
            raise RuntimeError(f"the measuring script failed: {answer['exceptionDetails']}")
        value: dict[str, Any] = answer["result"]["value"]
        return value

    def screenshot(self, path: Path) -> Path:
        shot = self.call("Page.captureScreenshot",
                         {"format": "png", "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


@dataclass
class Chromium:
    process: subprocess.Popen[bytes]
    port: int

    @classmethod
    def start(cls, folder: Path) -> Chromium:
        profile = folder / "profile"
        profile.mkdir(parents=True, exist_ok=True)
        with (folder / "chromium.log").open("wb") as log:
            process = subprocess.Popen(
                [chromium_path(), "--headless=new", "--no-sandbox", "--disable-gpu",
                 "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                 f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
                 "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-default-apps", "--hide-scrollbars",
                 "--force-color-profile=srgb", "about:blank"],
                stdout=subprocess.DEVNULL, stderr=log)
        ports = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (ports.exists() and ports.read_text().count("\n") >= 1):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"Chromium did not start: {folder / 'chromium.log'}")
            time.sleep(0.1)
        return cls(process, int(ports.read_text().split()[0]))

    @contextlib.contextmanager
    def page(self) -> Iterator[Page]:
        """A new tab, closed on leaving."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?about:blank",
                                         method="PUT")
        with urllib.request.urlopen(request, timeout=30) as response:
            target = json.load(response)
        with connect(target["webSocketDebuggerUrl"], max_size=2**26) as socket:
            page = Page(socket)
            page.call("Page.enable")
            page.call("Network.enable")
            yield page

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
