"""The pack's web extension (``web/scapre.js``) and example workflows in the real ComfyUI page.

Headless Chromium (Debian's ``chromium``) driven by Playwright opens the page of a ComfyUI server started with
this pack (``comfy_server``). Skips without ``COMFYUI_PATH``, Chromium or Playwright. Run per host::

    COMFYUI_PATH=/path/to/ComfyUI /path/to/comfy-venv/bin/python -m pytest -q tests/comfy/test_frontend.py

Screenshots go to the pytest tmp dir and are copied to ``$SCAPRE_TEST_ARTIFACTS`` (default ``test-artifacts/``).
"""

from __future__ import annotations

import copy
import json
import logging
import time

import browser_support
import comfy_support
import pytest

log = logging.getLogger("scapre.comfy_tests")

EXAMPLES = comfy_support.PACK_ROOT / "example_workflows"
EXTENSION_URL = f"/extensions/{comfy_support.PACK_LINK_NAME}/scapre.js"
PLAN_FIELDS = ("concepts", "prompts", "preserve", "probes")
RUN_TIMEOUT = 1800  # seconds; about 60 s on 2 idle CPU cores, many minutes on a busy machine

# Inputs for the JavaScript mirror of plan_prompts, compared with the Python original.
PLAN_CASES = [
    {"concepts": "Cat"},
    {"concepts": "Cat, dog\ncat\n\n  Van   Gogh ,van gogh", "concept_type": "object", "expand_templates": True},
    {"concepts": "Van Gogh\nPicasso", "concept_type": "style", "expand_templates": True, "guide": "art"},
    {"concepts": "photo of cat, cat", "concept_type": "object", "expand_templates": True},
    {"concepts": "nudity", "concept_type": "explicit", "expand_templates": True},
    {"concepts": "cat", "concept_type": "custom", "expand_templates": True, "templates": "a {c}\n\nthe {c}, fluffy"},
    {"concepts": "cat", "concept_type": "custom", "expand_templates": True, "templates": "a {c}\nno placeholder"},
    {"concepts": "cat", "concept_type": "custom", "expand_templates": False, "templates": "no placeholder"},
    {"concepts": "cat, dog, tiger", "guide": "a\nb"},
    {"concepts": "cat, dog", "guide": "an animal\na pet"},
    {"concepts": "cat, dog", "guide": "cat"},
    {"concepts": "cat", "preserve": "Dog, dog, CAT"},
    {"concepts": "cat", "preserve": "tiger, lion", "probes": "dog\nDOG,  wolf "},
    {"concepts": " , \n"},
    {"concepts": "Straße\u2028STRASSE\u00a0x, strasse  x"},
]


def _python_plan(case: dict) -> dict:
    from comfyui_scapre.scapre_core.prompts import plan_prompts

    try:
        plan = plan_prompts(**case)
    except ValueError as err:
        return {"error": str(err)}
    return {"concepts": list(plan.concepts), "prompts": list(plan.prompts), "preserve": list(plan.preserve),
            "probes": list(plan.probes), "guides": list(plan.guides), "warnings": len(plan.warnings)}


@pytest.fixture(scope="session")
def browser_available() -> None:
    """Skips (before any server starts) without Chromium or Playwright."""
    problem = browser_support.browser_problem()
    if problem:
        pytest.skip(problem)


@pytest.fixture(scope="module")
def comfy_page(browser_available, comfy_server, sd15_ckpt_path):
    """The ComfyUI page of ``comfy_server`` in headless Chromium (fresh profile, first-run dialogs off)."""
    comfy_server.post("/settings", browser_support.FRONTEND_SETTINGS)
    try:
        opened = browser_support.ComfyPage(comfy_server.base_url).__enter__()
    except browser_support.BrowserUnavailable as err:
        pytest.skip(str(err))
    try:
        yield opened
    finally:
        opened.__exit__(None, None, None)


def _example(name: str) -> dict:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def _own_problems(page: browser_support.ComfyPage) -> list[str]:
    """Console lines and page errors (with their stacks) that name this pack or its extension module.

    Others are the frontend's own: 1.27.x, for one, throws while registering its navigation settings."""
    return [line for line in page.console if "scapre" in line.lower()]


def _info(page: browser_support.ComfyPage, node_type: str) -> str:
    """The text shown by the extension on the single ``node_type`` node."""
    return page.js("""(type) => {
        const node = scapreTest.node(type);
        const boxes = node.widgets?.filter((w) => w.name === "scapre_info") ?? [];
        if (boxes.length > 1) throw new Error(`${boxes.length} info boxes on ${type}`);
        return boxes.length ? boxes[0].value : (node.scapreInfo ?? "");
    }""", node_type)


def _wait_info(page: browser_support.ComfyPage, node_type: str, timeout: float = 60) -> str:
    """The extension's text on ``node_type`` once there is some (executed messages arrive over the websocket)."""
    page.wait_for("""(type) => scapreTest.node(type).widgets?.some((w) => w.name === "scapre_info" && w.value)""",
                  node_type, timeout=timeout)
    return _info(page, node_type)


def _new_prompt(server: comfy_support.ComfyServer, before: set[str], page: browser_support.ComfyPage,
                timeout: float = 60) -> str:
    """The id of the prompt the page just queued (in the queue or already in the history)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        queue = server.get("/queue")
        queued = {item[1] for item in queue.get("queue_running", []) + queue.get("queue_pending", [])}
        new = (queued | set(server.get("/history"))) - before
        if new:
            return new.pop()
        time.sleep(0.5)
    try:  # the server refused it: send the page's prompt directly, for its reasons
        server.queue(_frontend_prompt(page))
    except comfy_support.ComfyError as err:
        pytest.fail(f"the server rejected the page's prompt: {err}")
    pytest.fail("the page queued nothing")


def _frontend_prompt(page: browser_support.ComfyPage) -> dict:
    """What the frontend itself would send for the current graph (``app.graphToPrompt().output``)."""
    return page.js("async () => (await scapreTest.app.graphToPrompt()).output")


def _inputs_only(prompt: dict) -> dict:
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


# ------------------------------------------------------------------------------------------------

def test_extension_loaded(comfy_page, comfy_server):
    """The extension is listed, imported and registered, and every pack node is defined in the page."""
    assert EXTENSION_URL in comfy_server.get("/extensions")
    state = comfy_page.js("""() => ({
        ext: scapreTest.app.extensions.map((e) => e.name).filter((n) => n.startsWith("scapre")),
        types: Object.keys(LiteGraph.registered_node_types).filter((t) => t.startsWith("ScaPre")).sort(),
        version: window.__COMFYUI_FRONTEND_VERSION__ ?? "unknown",
    })""")
    log.info("frontend %s: extensions %s, nodes %s", state["version"], state["ext"], state["types"])
    assert state["ext"] == ["scapre.ui"]
    assert state["types"] == sorted(comfy_server.node_ids(comfy_support.NODE_ID_PREFIX))
    assert not _own_problems(comfy_page)


def test_plan_mirrors_python(comfy_page):
    """planPrompts in scapre.js gives the same prompt lists (or the same failure) as plan_prompts."""
    js = comfy_page.js("""async ([url, cases]) => {
        const { planPrompts } = await import(url);
        return cases.map((c) => planPrompts(c));
    }""", [EXTENSION_URL, PLAN_CASES])
    for case, got in zip(PLAN_CASES, js, strict=True):
        want = _python_plan(case)
        if "error" in want:
            assert got["error"], f"{case}: Python fails ({want['error']}), the page does not"
            continue
        assert got["error"] is None, f"{case}: the page fails ({got['error']}), Python does not"
        for field in (*PLAN_FIELDS, "guides"):
            assert got[field] == want[field], f"{case}: {field}"
        assert bool(got["warnings"] or got["duplicates"]) == bool(want["warnings"]), case


def test_encode_counter_updates_live(comfy_page):
    """The encode node counts prompts as its widgets change (callbacks) and as the user types."""
    comfy_page.js("""async () => {
        await scapreTest.app.loadGraphData({last_node_id: 0, last_link_id: 0, nodes: [], links: [], groups: [],
                                           config: {}, extra: {}, version: 0.4}, true, false);
        const node = LiteGraph.createNode("ScaPreConceptEncode");
        node.pos = [80, 80];
        scapreTest.graph().add(node);
    }""")
    comfy_page.fit_view(max_scale=1.0)
    assert _info(comfy_page, "ScaPreConceptEncode").startswith("⚠ no concepts")

    def set_widget(name, value):
        comfy_page.js("""([name, value]) => {
            const w = scapreTest.widget(scapreTest.node("ScaPreConceptEncode"), name);
            w.value = value;
            w.callback?.(w.value);  // what the frontend does after a user edit
        }""", [name, value])
        return _info(comfy_page, "ScaPreConceptEncode")

    assert set_widget("concepts", "Cat, dog\ncat") == "2 concepts → 2 prompts · duplicates: cat"
    set_widget("concept_type", "object")
    assert set_widget("expand_templates", True).startswith("2 concepts → 12 prompts · duplicates: cat")
    assert set_widget("preserve", "tiger") == "2 concepts → 12 prompts · 1 preserved · duplicates: cat"
    assert set_widget("guide", "a\nb\nc").startswith("⚠ guide has 3 lines but there are 2 concepts")
    assert set_widget("guide", "").startswith("2 concepts")
    assert set_widget("preserve", "DOG").startswith("⚠ \"DOG\" is both erased and preserved")
    set_widget("preserve", "")

    # real keystrokes in the concepts text box
    comfy_page.js("() => { const w = scapreTest.widget(scapreTest.node('ScaPreConceptEncode'), 'concepts');"
            " w.element.focus(); w.element.setSelectionRange(w.element.value.length, w.element.value.length); }")
    comfy_page.page.keyboard.type(", Tiger")
    time.sleep(0.2)
    assert _info(comfy_page, "ScaPreConceptEncode") == "3 concepts → 18 prompts · duplicates: cat"
    assert not _own_problems(comfy_page)


def test_info_box_survives_reruns(comfy_page):
    """Executed messages replace the text on the node; the info box is never duplicated nor saved."""
    comfy_page.js("""async () => {
        await scapreTest.app.loadGraphData({last_node_id: 0, last_link_id: 0, nodes: [], links: [], groups: [],
                                           config: {}, extra: {}, version: 0.4}, true, false);
        for (const type of ["ScaPreErase", "ScaPreSaveLoRA", "ScaPreReport"]) {
            scapreTest.graph().add(LiteGraph.createNode(type));
        }
    }""")
    summary = {"concepts": 2, "prompts": 3, "matrices": 32, "seconds": 1.234, "mean_efficacy": 0.9,
               "worst_efficacy": {"text": "art by Cat", "value": 0.81234},
               "worst_drift": {"text": "dog", "group": "probe", "value": 0.05},
               "verdict": {"counts": {"likely forgotten": 2, "unsure": 1, "likely still drawn": 0},
                           "not_forgotten": [{"text": "art by Cat", "verdict": "unsure", "value": 0.61234}],
                           "more": 0, "rule": "efficacy >= 0.7: likely forgotten", "caveat": "the guide is empty"},
               "mean_change": 0.01, "warnings": ["ignored 1 duplicate concept(s): cat"],
               "used": {"source": "preset", "preset": "artists", "strength": 1.5, "seed": 7, "precision": "float32",
                        "edit": "keys and values", "informax": "from ScaPre Informax",
                        "replaced_by_informax": {"p": 8.0, "seed": 0}}}
    for run in range(3):
        summary["matrices"] = 32 + run
        comfy_page.js("""([summary, run]) => {
            scapreTest.node("ScaPreErase").onExecuted({scapre_summary: [summary]});
            scapreTest.node("ScaPreSaveLoRA").onExecuted({text: [`saved loras/scapre_0000${run}_.safetensors`]});
            scapreTest.node("ScaPreReport").onExecuted({text: ["## ScaPre edit\\n\\n- line " + run]});
        }""", [summary, run])
    text = _info(comfy_page, "ScaPreErase")
    assert text.splitlines() == [
        "erased 2 concepts (3 prompts) · 34 matrices · 1.2 s",
        "used: preset artists × 1.50 · seed 7 · float32 · Informax from ScaPre Informax",
        "ScaPre Informax replaced: p 8, seed 0",
        "mean efficacy 0.900",
        'worst efficacy 0.812 · "art by Cat"',
        "verdict: likely forgotten 2 · unsure 1",
        '  unsure: "art by Cat" (efficacy 0.612)',
        "⚠ the guide is empty",
        "(efficacy >= 0.7: likely forgotten)",
        'worst drift 0.050 · "dog" (probe)',
        "mean weight change 0.010",
        "⚠ ignored 1 duplicate concept(s): cat",
    ]
    assert _info(comfy_page, "ScaPreSaveLoRA") == "saved loras/scapre_00002_.safetensors"
    assert _info(comfy_page, "ScaPreReport") == "## ScaPre edit\n\n- line 2"
    saved = json.dumps(comfy_page.js("() => scapreTest.graph().serialize().nodes.map((n) => n.widgets_values)"))
    # the report's heading, not "ScaPre edits" (Save LoRA's contents widget value)
    assert "erased 2 concepts" not in saved and "saved loras" not in saved and "## ScaPre edit" not in saved
    for node in _frontend_prompt(comfy_page).values():
        assert "scapre_info" not in node["inputs"]
    assert not _own_problems(comfy_page)


@pytest.mark.parametrize("name", ["erase_sd15.json", "erase_sdxl.json", "erase_flux.json", "erase_wan.json"])
def test_example_loads_and_matches_schema(comfy_page, comfy_server, name):
    """Each example opens without missing nodes, has its thumbnail, and the prompt the frontend builds from it
    equals the one the test harness builds from the file (so its widgets_values line up with the current node
    schemas, ComfyUI's own loaders for Flux and Wan included)."""
    workflow = _example(name)
    assert (EXAMPLES / name.replace(".json", ".jpg")).is_file()
    alerts = "() => document.body.innerText.split('Invalid workflow').length - 1"  # the schema check's toast
    before = comfy_page.js(alerts)
    comfy_page.load_workflow(workflow)
    assert comfy_page.js(alerts) == before, f"the frontend's workflow schema rejects {name}"
    types = comfy_page.js("""() => scapreTest.graph()._nodes.map(
        (n) => [n.type, !!LiteGraph.registered_node_types[n.type]])""")
    assert sorted(t for t, _ in types) == sorted(n["type"] for n in workflow["nodes"])
    assert all(known for _, known in types), types
    expected = comfy_support.ui_workflow_to_api(workflow, comfy_server.object_info())
    assert _inputs_only(_frontend_prompt(comfy_page)) == _inputs_only(expected)
    assert _info(comfy_page, "ScaPreConceptEncode") == "1 concept → 1 prompt · 2 probes"
    assert not _own_problems(comfy_page)


@pytest.mark.parametrize("name", sorted(browser_support.COMPARE_EXAMPLES))
def test_compare_example_loads_and_matches_schema(comfy_page, comfy_server, name):
    """Each compare example opens without missing nodes, has its thumbnail, and the prompt the frontend builds
    from it equals the one the harness builds from the file."""
    workflow = _example(f"{name}.json")
    assert (EXAMPLES / f"{name}.jpg").is_file()
    comfy_page.load_workflow(workflow)
    types = comfy_page.js("""() => scapreTest.graph()._nodes.map(
        (n) => [n.type, !!LiteGraph.registered_node_types[n.type]])""")
    assert sorted(t for t, _ in types) == sorted(n["type"] for n in workflow["nodes"])
    assert all(known for _, known in types), types
    expected = comfy_support.ui_workflow_to_api(workflow, comfy_server.object_info())
    assert _inputs_only(_frontend_prompt(comfy_page)) == _inputs_only(expected)
    (compare,) = [n for n in expected.values() if n["class_type"] == "ScaPreCompare"]
    assert compare["inputs"]["original"][0] != compare["inputs"]["edited"][0]
    assert not _own_problems(comfy_page)


def test_legacy_erase_workflow_loads_with_its_values(comfy_page, comfy_server):
    """A workflow saved with the legacy ScaPreErase node opens with every widget value under its old name."""
    path = comfy_support.PACK_ROOT / "tests" / "comfy" / "fixtures" / "erase_sd15_legacy_node.json"
    workflow = json.loads(path.read_text())
    comfy_page.load_workflow(workflow)
    (saved,) = [n["widgets_values"] for n in workflow["nodes"] if n["type"] == "ScaPreErase"]
    names = comfy_page.js("() => scapreTest.node('ScaPreErase').widgets.filter((w) => w.name !== 'scapre_info')"
                          ".map((w) => [w.name, w.value])")
    assert [v for _, v in names] == saved
    assert names[0][0] == "edit" and names[-1][0] == "precision"
    expected = comfy_support.ui_workflow_to_api(workflow, comfy_server.object_info())
    assert _inputs_only(_frontend_prompt(comfy_page)) == _inputs_only(expected)
    assert not _own_problems(comfy_page)


def test_erase_workflow_saved_before_report_tokens_keeps_its_values(comfy_page, comfy_server):
    """A ScaPre Erase saved by 0.3.0 (three widget values, no report_tokens) opens with its values in place and the
    new widget at its default, key; the prompt it sends is the quick start's own."""
    workflow = _example("erase_sd15.json")
    old = copy.deepcopy(workflow)
    (node,) = [n for n in old["nodes"] if n["type"] == "ScaPreEraseSimple"]
    node["widgets_values"] = node["widgets_values"][:3]
    node["inputs"] = [i for i in node["inputs"] if i["name"] != "report_tokens"]
    comfy_page.load_workflow(old)
    values = comfy_page.js("() => scapreTest.node('ScaPreEraseSimple').widgets.filter((w) => w.name !== "
                           "'scapre_info').map((w) => [w.name, w.value])")
    assert values == [["preset", "artists"], ["strength", 1], ["seed", 0], ["report_tokens", "key"]], values
    expected = comfy_support.ui_workflow_to_api(workflow, comfy_server.object_info())
    assert _inputs_only(_frontend_prompt(comfy_page)) == _inputs_only(expected)
    assert not _own_problems(comfy_page)


def test_example_runs_and_shows_results(comfy_page, comfy_server, sd15_ckpt_path, tmp_path):
    """erase_sd15.json queued from the page on the random SD1.5 fixture; every ScaPre node shows its result.

    Only these values differ from the example file: ckpt_name (the fixture), EmptyLatentImage 64x64 and
    KSampler steps 1 (CPU time). Everything else, including the erase settings and the save nodes, is as shipped.
    """
    workflow = copy.deepcopy(_example("erase_sd15.json"))
    for node in workflow["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["widgets_values"][0] = sd15_ckpt_path.name
        elif node["type"] == "EmptyLatentImage":
            node["widgets_values"][:2] = [64, 64]
        elif node["type"] == "KSampler":
            node["widgets_values"][2] = 1  # [seed, control_after_generate, steps, ...]
    comfy_page.load_workflow(workflow)

    before = set(comfy_server.get("/history"))
    t0 = time.perf_counter()
    comfy_page.queue()
    prompt_id = _new_prompt(comfy_server, before, comfy_page)
    entry = comfy_server.wait(prompt_id, timeout=RUN_TIMEOUT)
    log.info("erase_sd15 ran in %.1f s from the page", time.perf_counter() - t0)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"]["messages"])[-4000:]

    erase = _wait_info(comfy_page, "ScaPreEraseSimple")
    assert erase.startswith("erased 1 concept (1 prompt) · 32 matrices · "), erase
    # the quick start shows what it used; its seed widget is the seed (no ScaPre Informax connected)
    assert erase.splitlines()[1] == "used: preset artists × 1.00 · seed 0 · float32 · Informax computed here", erase
    assert "report on key tokens (last word, end, first padding)" in erase.splitlines(), erase
    assert 'worst efficacy ' in erase and '"Van Gogh"' in erase
    assert "worst drift " in erase and "(probe)" in erase
    _wait_info(comfy_page, "ScaPreReport")
    encode = _info(comfy_page, "ScaPreConceptEncode")
    assert encode.splitlines()[0] == "1 concept → 1 prompt · 2 probes"
    assert encode.splitlines()[1].startswith("last run: 1 concept(s) -> 1 prompt(s)"), encode
    assert _info(comfy_page, "ScaPreSaveLoRA").startswith("saved loras/scapre_van_gogh_00001_.safetensors")
    assert _info(comfy_page, "ScaPreSaveCheckpoint").startswith("saved checkpoints/scapre_van_gogh_00001_")
    assert _info(comfy_page, "ScaPreReport").startswith("## ScaPre edit: 1 concept(s)")

    for saved in (comfy_server.output_dir / "checkpoints").glob("scapre_van_gogh_*.safetensors"):
        saved.unlink()  # about 4 GiB of fp32 weights on the CPU; nothing else reads it

    # a window large enough for the whole graph at a zoom where the frontend still draws text
    comfy_page.resize(2600, 1250)
    try:
        scale = comfy_page.fit_view(padding=20)
        shot = comfy_page.screenshot(tmp_path / f"frontend_erase_sd15_{comfy_page.frontend_version()}.png")
    finally:
        comfy_page.resize(*browser_support.DEFAULT_VIEWPORT)
    log.info("screenshot at zoom %.2f: %s (copy: %s)", scale, shot, browser_support.keep_artifact(shot))
    assert not _own_problems(comfy_page)
