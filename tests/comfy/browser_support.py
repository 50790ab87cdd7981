"""Headless Chromium on the ComfyUI page, for the front-end tests (``test_frontend.py``).

Chromium is Debian's (``apt-get install chromium``; ``/usr/bin/chromium`` or ``$SCAPRE_CHROMIUM``), driven by
Playwright for Python (``pip install playwright`` in the ComfyUI venv; its own browser download,
``playwright install``, is never used). Only the standard library is imported at module level, so the
tests collect and skip cleanly where neither is present.

Environment:
    SCAPRE_CHROMIUM        the Chromium executable (default ``/usr/bin/chromium``).
    SCAPRE_TEST_ARTIFACTS  where screenshots are copied (default ``test-artifacts/`` at the repo root).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("scapre.comfy_tests")

CHROMIUM_ENV = "SCAPRE_CHROMIUM"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
ARTIFACTS_ENV = "SCAPRE_TEST_ARTIFACTS"
REPO_ROOT = Path(__file__).resolve().parents[2]

DEFAULT_VIEWPORT = (1600, 1000)
CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)

#: Frontend settings stored on the server before the page opens: no first-run template browser, no minimap
#: or update notices over the canvas, no missing-model dialog for the examples' published checkpoint names.
FRONTEND_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Minimap.Visible": False,
    "Comfy.Notification.ShowVersionUpdates": False,
    "Comfy.Workflow.ShowMissingModelsWarning": False,
    "Comfy.Workflow.ShowMissingNodesWarning": False,
    "Comfy.Graph.CanvasInfo": False,
}

#: The page is ready when the app is set up, this pack's extension is registered and its nodes are defined.
READY_JS = """() => {
    const app = window.comfyAPI?.app?.app;
    return !!(app && app.canvas && (app.rootGraph ?? app.graph)
              && app.extensions?.some((e) => e.name === "scapre.ui")
              && window.LiteGraph?.registered_node_types?.ScaPreErase);
}"""

#: Page-side helpers (``window.scapreTest``) used by the tests through :meth:`ComfyPage.js`.
HELPERS_JS = """async () => {
    const { app } = await import("./scripts/app.js");
    const graph = () => app.rootGraph ?? app.graph;
    window.scapreTest = {
        app,
        graph,
        nodes: (type) => graph()._nodes.filter((n) => n.type === type),
        node: (type) => {
            const found = graph()._nodes.filter((n) => n.type === type);
            if (found.length !== 1) throw new Error(`expected one ${type} node, found ${found.length}`);
            return found[0];
        },
        widget: (node, name) => {
            const w = node.widgets?.find((x) => x.name === name);
            if (!w) throw new Error(`${node.type} has no widget ${name}`);
            return w;
        },
    };
    return true;
}"""


def chromium_path() -> Path:
    return Path(os.environ.get(CHROMIUM_ENV) or DEFAULT_CHROMIUM)


def browser_problem() -> str | None:
    """Why the browser tests cannot run here (no Chromium, no Playwright), or None."""
    chromium = chromium_path()
    if not (chromium.is_file() and os.access(chromium, os.X_OK)):
        return (f"no headless Chromium at {chromium} (apt-get install chromium, or set {CHROMIUM_ENV})")
    if importlib.util.find_spec("playwright") is None:
        return "Playwright for Python is not installed in this interpreter (pip install playwright)"
    return None


class BrowserUnavailable(RuntimeError):
    """Chromium could not be started (Playwright's driver or the browser failed to launch)."""


def artifacts_dir() -> Path:
    """``$SCAPRE_TEST_ARTIFACTS`` or ``test-artifacts/`` at the repo root (git-ignored); created on demand."""
    raw = os.environ.get(ARTIFACTS_ENV)
    path = Path(raw).expanduser() if raw else REPO_ROOT / "test-artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def keep_artifact(path: Path) -> Path:
    """Copy ``path`` into :func:`artifacts_dir` and return the copy."""
    target = artifacts_dir() / path.name
    shutil.copyfile(path, target)
    log.info("artifact: %s", target)
    return target


@contextlib.contextmanager
def open_page(url: str, *, viewport: tuple[int, int] = DEFAULT_VIEWPORT, timeout: float = 60):
    """Any page (e.g. a ``file://`` URL) in headless Chromium with a fresh profile: yields ``(page, console)``,
    ``console`` collecting console messages, page errors and failed requests."""
    from playwright.sync_api import sync_playwright

    console: list[str] = []
    with tempfile.TemporaryDirectory(prefix="scapre-chromium-") as profile, sync_playwright() as playwright:
        try:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=str(chromium_path()), headless=True, args=list(CHROMIUM_ARGS),
                viewport={"width": viewport[0], "height": viewport[1]}, timeout=timeout * 1000)
        except Exception as err:
            raise BrowserUnavailable(f"cannot start {chromium_path()} through Playwright: {err}") from err
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.on("requestfailed", lambda r: console.append(f"requestfailed: {r.url}"))
            page.goto(url, wait_until="load", timeout=timeout * 1000)
            yield page, console
        finally:
            context.close()


class ComfyPage:
    """The ComfyUI page at ``base_url`` in headless Chromium with a fresh profile, via Playwright.

    ``console`` collects the page's console messages, page errors and failed requests (the tests assert that
    none of them comes from this pack). Use as a context manager; :meth:`js` evaluates page JavaScript.
    """

    def __init__(self, base_url: str, *, viewport: tuple[int, int] = DEFAULT_VIEWPORT, timeout: float = 120) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.viewport = viewport
        self.timeout = timeout
        self.console: list[str] = []
        self._stack = contextlib.ExitStack()
        self.page = None

    def __enter__(self) -> ComfyPage:
        from playwright.sync_api import sync_playwright

        try:
            profile = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="scapre-chromium-"))
            try:
                playwright = self._stack.enter_context(sync_playwright())
                context = playwright.chromium.launch_persistent_context(
                    profile, executable_path=str(chromium_path()), headless=True, args=list(CHROMIUM_ARGS),
                    viewport={"width": self.viewport[0], "height": self.viewport[1]}, timeout=self.timeout * 1000)
            except Exception as err:  # Playwright's driver missing or broken, or Chromium failing to start
                raise BrowserUnavailable(f"cannot start {chromium_path()} through Playwright: {err}") from err
            self._stack.callback(context.close)
            self.page = context.pages[0] if context.pages else context.new_page()
            self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
            self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}\n{e.stack}"))
            self.page.on("requestfailed", lambda r: self.console.append(f"requestfailed: {r.url}"))
            self.page.on("response", lambda r: r.status >= 400 and self.console.append(f"http {r.status}: {r.url}"))
            t0 = time.perf_counter()
            self.page.goto(self.base_url)
            self.page.wait_for_function(READY_JS, timeout=self.timeout * 1000)
            self.page.evaluate(HELPERS_JS)
            log.info("ComfyUI page ready in %.1f s (frontend %s)", time.perf_counter() - t0, self.frontend_version())
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def js(self, expression: str, arg: Any = None) -> Any:
        """Evaluate a JavaScript function expression in the page (``window.scapreTest`` is there)."""
        return self.page.evaluate(expression, arg)

    def wait_for(self, expression: str, arg: Any = None, timeout: float = 60) -> Any:
        """Wait until the function expression returns something truthy, and return it."""
        return self.page.wait_for_function(expression, arg=arg, timeout=timeout * 1000).json_value()

    def frontend_version(self) -> str:
        return self.js("() => window.__COMFYUI_FRONTEND_VERSION__ ?? 'unknown'")

    def load_workflow(self, workflow: Mapping[str, Any]) -> None:
        """``app.loadGraphData`` (what opening a workflow file does), then wait for the canvas to settle."""
        self.js("""async (wf) => {
            await scapreTest.app.loadGraphData(wf, true, true, null,
                {showMissingModelsDialog: false, showMissingNodesDialog: false});
            scapreTest.app.canvas.setDirty(true, true);
        }""", json.loads(json.dumps(workflow)))
        time.sleep(0.5)

    def queue(self) -> None:
        """``app.queuePrompt(0, 1)``, what the Run button does. Its result is not checked: 1.35 answers False
        for an accepted prompt too (the server's empty ``node_errors``); look for the prompt on the server."""
        self.js("() => scapreTest.app.queuePrompt(0, 1)")

    def fit_view(self, padding: float = 30, max_scale: float = 1.0) -> float:
        """Zoom and pan so every node fits in the canvas (the frontend's "fit view"); returns the scale."""
        scale = self.js("""([pad, maxScale]) => {
            const canvas = scapreTest.app.canvas, ds = canvas.ds, title = LiteGraph.NODE_TITLE_HEIGHT;
            const nodes = scapreTest.graph()._nodes;
            if (!nodes.length) return ds.scale;
            const x0 = Math.min(...nodes.map((n) => n.pos[0])), y0 = Math.min(...nodes.map((n) => n.pos[1] - title));
            const x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0]));
            const y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1]));
            const width = canvas.canvas.width / devicePixelRatio, height = canvas.canvas.height / devicePixelRatio;
            const scale = Math.min((width - 2 * pad) / (x1 - x0), (height - 2 * pad) / (y1 - y0), maxScale);
            ds.scale = scale;
            ds.offset[0] = (width / scale - (x1 - x0)) / 2 - x0;
            ds.offset[1] = (height / scale - (y1 - y0)) / 2 - y0;
            canvas.setDirty(true, true);
            return scale;
        }""", [padding, max_scale])
        time.sleep(0.5)
        return scale

    def resize(self, width: int, height: int) -> None:
        """Resize the browser window (the canvas follows it)."""
        self.page.set_viewport_size({"width": width, "height": height})
        self.viewport = (width, height)
        time.sleep(0.5)

    def screenshot(self, path: Path, *, clean: bool = True) -> Path:
        """Screenshot of the graph canvas to ``path``; ``clean`` hides the menus, side bar and tabs meanwhile
        (the canvas and the nodes' text boxes stay)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        style = None
        if clean:
            style = self.page.add_style_tag(content=(
                "body * { visibility: hidden !important; } "
                "#graph-canvas, .dom-widget, .dom-widget * { visibility: visible !important; }"))
        try:
            self.js("() => scapreTest.app.canvas.draw(true, true)")
            time.sleep(0.3)
            target = self.page.locator("#graph-canvas")
            (target if target.count() == 1 else self.page).screenshot(path=str(path))
        finally:
            if style is not None:
                style.evaluate("(element) => element.remove()")
        return path


# --------------------------------------------------------------------------------------------------
# Example workflows, built in the real frontend (``python browser_support.py build-examples``)
# --------------------------------------------------------------------------------------------------

EXAMPLES_DIR = REPO_ROOT / "example_workflows"
_FIXED_SEED = {"control_after_generate": "fixed"}

#: Columns of ``(key, node type, widget values, minimum size, title)``, left to right, stacked top down. The
#: quick start has no ScaPre Informax: ScaPre Erase computes the weights itself, so its seed is the one used.
#: ``{ckpt}``, ``{size}`` and ``{arch}`` are filled in per example.
EXAMPLE_COLUMNS = [
    [("ckpt", "CheckpointLoaderSimple", {"ckpt_name": "{ckpt}"}, (300, 0), None)],
    [("enc", "ScaPreConceptEncode", {"concepts": "Van Gogh", "concept_type": "style", "expand_templates": False,
                                     "templates": "", "guide": "art", "preserve": "",
                                     "probes": "Claude Monet, Picasso"}, (420, 700), None)],
    [("erase", "ScaPreEraseSimple", {"preset": "artists", "strength": 1.0, "seed": 0, **_FIXED_SEED}, (300, 0),
      None)],
    [("pos", "CLIPTextEncode", {"text": "a painting of a starry night by Van Gogh"}, (400, 150), "Positive prompt"),
     ("neg", "CLIPTextEncode", {"text": ""}, (400, 120), "Negative prompt"),
     ("lat", "EmptyLatentImage", {"width": "{size}", "height": "{size}", "batch_size": 1}, (300, 0), None),
     ("lora", "ScaPreSaveLoRA", {"filename_prefix": "loras/scapre_van_gogh", "rank": 0}, (400, 0), None),
     ("sck", "ScaPreSaveCheckpoint", {"filename_prefix": "checkpoints/scapre_van_gogh"}, (400, 0), None)],
    [("ks", "KSampler", {"seed": 0, **_FIXED_SEED, "steps": 20, "cfg": 7.0, "sampler_name": "euler",
                         "scheduler": "normal", "denoise": 1.0}, (300, 0), None),
     ("rep", "ScaPreReport", {}, (300, 0), None)],
    [("dec", "VAEDecode", {}, (200, 0), None)],
    [("save", "SaveImage", {"filename_prefix": "scapre_{arch}"}, (420, 420), None),
     ("prev", "PreviewImage", {}, (420, 420), None)],
]
#: ``(from, output name or index, to, input name)``
EXAMPLE_LINKS = [
    ("ckpt", "MODEL", "erase", "model"), ("ckpt", "CLIP", "enc", "clip"), ("enc", 0, "erase", "concepts"),
    ("ckpt", "CLIP", "pos", "clip"), ("ckpt", "CLIP", "neg", "clip"), ("erase", 0, "ks", "model"),
    ("pos", 0, "ks", "positive"), ("neg", 0, "ks", "negative"), ("lat", 0, "ks", "latent_image"),
    ("ks", 0, "dec", "samples"), ("ckpt", "VAE", "dec", "vae"), ("dec", 0, "save", "images"),
    ("erase", 0, "lora", "model"), ("erase", 0, "sck", "model"), ("ckpt", "CLIP", "sck", "clip"),
    ("ckpt", "VAE", "sck", "vae"), ("erase", 1, "rep", "report"), ("rep", 0, "prev", "images"),
]
EXAMPLES = {"sd15": ("v1-5-pruned-emaonly.safetensors", 512), "sdxl": ("sd_xl_base_1.0.safetensors", 1024)}

_BUILD_JS = """async ({columns, links}) => {
    const app = scapreTest.app, graph = scapreTest.graph();
    await app.loadGraphData({last_node_id: 0, last_link_id: 0, nodes: [], links: [], groups: [], config: {},
                             extra: {}, version: 0.4}, true, false);
    const made = {}, title = LiteGraph.NODE_TITLE_HEIGHT;
    let x = 0;
    for (const column of columns) {
        let y = title, width = 0;
        for (const [key, type, values, size, label] of column) {
            const node = LiteGraph.createNode(type);
            if (!node) throw new Error(`cannot create ${type}`);
            graph.add(node);
            if (label) node.title = label;
            for (const [name, value] of Object.entries(values)) {
                // a seed without the frontend's "control after generate" widget keeps its default
                if (name === "control_after_generate" && !node.widgets.some((w) => w.name === name)) continue;
                const widget = scapreTest.widget(node, name);
                widget.value = value;
                widget.callback?.(value);
            }
            node.setSize([Math.max(size[0], node.size[0]), Math.max(size[1], node.size[1])]);
            node.pos = [x, y];
            y += node.size[1] + title + 50;
            width = Math.max(width, node.size[0]);
            made[key] = node;
        }
        x += width + 60;
    }
    for (const [from, out, to, input] of links) {
        const src = made[from], dst = made[to];
        const o = typeof out === "number" ? out : src.outputs.findIndex((s) => s.name === out || s.type === out);
        const i = dst.inputs.findIndex((s) => s.name === input);
        if (o < 0 || i < 0 || !src.connect(o, dst, i)) throw new Error(`cannot link ${from}.${out} -> ${to}.${input}`);
    }
    return JSON.stringify(graph.serialize());  // as the frontend saves it (no undefined -> null)
}"""


def _fill(value: Any, subst: Mapping[str, Any]) -> Any:
    """``"{size}"`` -> 512 (the value itself), ``"scapre_{arch}"`` -> ``"scapre_sd15"``; others unchanged."""
    if not isinstance(value, str):
        return value
    if value in subst:
        return subst[value]
    for key, replacement in subst.items():
        value = value.replace(key, str(replacement))
    return value


def build_workflow(page: ComfyPage, name: str, columns: list, links: list, out_dir: Path = EXAMPLES_DIR) -> Path:
    """Build ``columns``/``links`` in the page's graph and save it as ``<name>.json`` as the frontend would,
    with a fitted view for a 1600x900 window, and a same-name ~800 px JPEG thumbnail of the canvas."""
    from PIL import Image

    workflow = json.loads(page.js(_BUILD_JS, {"columns": columns, "links": links}))
    x0 = min(n["pos"][0] for n in workflow["nodes"])
    y0 = min(n["pos"][1] for n in workflow["nodes"]) - 30
    width = max(n["pos"][0] + n["size"][0] for n in workflow["nodes"]) - x0
    height = max(n["pos"][1] + n["size"][1] for n in workflow["nodes"]) - y0
    scale = round(min(1520 / width, 780 / height), 3)
    workflow.setdefault("extra", {})["ds"] = {"scale": scale, "offset": [
        round((1600 / scale - width) / 2 - x0, 1), round((900 / scale - height) / 2 - y0 + 40, 1)]}
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}.json"
    target.write_text(json.dumps(workflow, indent=2) + "\n", encoding="utf-8")

    page.fit_view(padding=20)
    with tempfile.TemporaryDirectory() as tmp:
        shot = page.screenshot(Path(tmp) / "canvas.png")
        image = Image.open(shot).convert("RGB")
        image.thumbnail((800, 800), Image.LANCZOS)
        # the frontend's template browser asks for "<name>.jpg" next to a custom node's example workflow
        image.save(target.with_suffix(".jpg"), quality=88, optimize=True)
    log.info("wrote %s and its thumbnail", target)
    return target


def build_example(page: ComfyPage, arch: str, out_dir: Path = EXAMPLES_DIR) -> Path:
    """Build ``erase_<arch>.json`` and its thumbnail (:func:`build_workflow`)."""
    ckpt, size = EXAMPLES[arch]
    subst = {"{ckpt}": ckpt, "{size}": size, "{arch}": arch}
    columns = [[(key, kind, {k: _fill(v, subst) for k, v in values.items()}, min_size, title)
                for key, kind, values, min_size, title in column] for column in EXAMPLE_COLUMNS]
    return build_workflow(page, f"erase_{arch}", columns, EXAMPLE_LINKS, out_dir)


# Compare examples (SD1.5): erase with a preset, then ScaPre Compare of the original and the edited MODEL.
_COMPARE_LINKS = [
    ("ckpt", "CLIP", "enc", "clip"), ("ckpt", "MODEL", "erase", "model"), ("enc", 0, "erase", "concepts"),
    ("ckpt", "MODEL", "cmp", "original"), ("erase", 0, "cmp", "edited"), ("ckpt", "CLIP", "cmp", "clip"),
    ("ckpt", "VAE", "cmp", "vae"), ("enc", 0, "cmp", "concepts"), ("cmp", 0, "prev", "images"),
]


def _compare_columns(encode: dict, preset: str, compare: dict) -> list:
    settings = {"seed": 0, "images_per_prompt": 2, "steps": 20, "cfg": 7.0, "sampler_name": "euler",
                "scheduler": "normal", "width": 512, "height": 512, "classifiers": "auto", **compare}
    return [
        [("ckpt", "CheckpointLoaderSimple", {"ckpt_name": EXAMPLES["sd15"][0]}, (300, 0), None)],
        [("enc", "ScaPreConceptEncode", {"expand_templates": False, "templates": "", "guide": "", "preserve": "",
                                         "probes": "", **encode}, (420, 620), None),
         ("erase", "ScaPreEraseSimple", {"preset": preset, "strength": 1.0, "seed": 0, **_FIXED_SEED}, (300, 0),
          None)],
        [("cmp", "ScaPreCompare", settings, (420, 760), None)],
        [("prev", "PreviewImage", {}, (520, 620), "Compare grid")],
    ]


#: name -> (columns, links): erase an artist and compare with look-alikes; erase explicit content and compare;
#: erase a list of objects and compare on kept classes.
COMPARE_EXAMPLES = {
    "compare_artist_sd15": (_compare_columns(
        {"concepts": "Van Gogh", "concept_type": "style"}, "artists",
        {"erased_prompts": "The Starry Night by Vincent van Gogh\nsunflowers in a vase, painted by Van Gogh",
         "kept_prompts": "a painting in the style of Paul Gauguin\na painting in the style of Paul Cezanne\n"
                         "a painting in the style of Claude Monet\na painting in the style of Henri de "
                         "Toulouse-Lautrec\na photo of a wheat field under a starry sky"}), _COMPARE_LINKS),
    "compare_explicit_sd15": (_compare_columns(
        {"concepts": "nudity, nude, naked, topless, unclothed, erotic", "concept_type": "explicit"}, "explicit",
        {"kept_prompts": "a person walking on a beach\na portrait of a woman in a red dress\n"
                         "a man reading a book in a park\na family having dinner at home\n"
                         "a marble statue in a museum"}), _COMPARE_LINKS),
    "compare_objects_sd15": (_compare_columns(
        {"concepts": "tench, English springer, cassette player, chain saw, church, French horn, garbage truck, "
                     "gas pump, golf ball, parachute, African elephant, Granny Smith, acoustic guitar, airliner, "
                     "backpack, banana, broccoli, cheeseburger, grand piano, laptop",
         "concept_type": "object",
         "probes": "goldfish, golden retriever, tabby, school bus, pizza, castle, violin, lemon"}, "many-objects",
        {"images_per_prompt": 1}), _COMPARE_LINKS),
}


def _main(argv: list[str] | None = None) -> int:
    """``build-examples``: start ComfyUI (``$COMFYUI_PATH``) with this pack and rebuild the example workflows."""
    import argparse

    import comfy_support

    parser = argparse.ArgumentParser(description=_main.__doc__)
    parser.add_argument("command", choices=["build-examples"])
    parser.add_argument("--arch", choices=sorted(EXAMPLES), action="append", help="erase examples (default: all)")
    parser.add_argument("--compare", choices=sorted(COMPARE_EXAMPLES), action="append",
                        help="compare examples (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    problem = browser_problem() or comfy_support.comfyui_path_problem()
    if problem:
        parser.error(problem)
    with tempfile.TemporaryDirectory(prefix="scapre-examples-") as tmp:
        work = Path(tmp)
        server = comfy_support.ComfyServer(comfy_support.comfyui_path(), work / "server",
                                           custom_nodes_dir=comfy_support.make_pack_link(work / "custom_nodes").parent)
        with server:
            server.post("/settings", FRONTEND_SETTINGS)
            with ComfyPage(server.base_url, viewport=(2400, 1000)) as page:
                everything = not args.arch and not args.compare
                for arch in args.arch or (sorted(EXAMPLES) if everything else []):
                    build_example(page, arch)
                for name in args.compare or (sorted(COMPARE_EXAMPLES) if everything else []):
                    build_workflow(page, name, *COMPARE_EXAMPLES[name])
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
