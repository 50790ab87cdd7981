// ScaPre front end: live prompt counts on ScaPre Concept Encode, and what each ScaPre node reported after a run.
// Uses only the frontend's public `app` object and LiteGraph node hooks, so it runs on the frontends bundled
// with ComfyUI 0.3.64 (1.27.x) and 0.8.0 (1.35.x).
import { app } from "../../scripts/app.js";

// ------------------------------------------------------------------------------------------------
// plan_prompts (scapre_core/prompts.py), mirrored rule for rule so the count matches what the node encodes
// ------------------------------------------------------------------------------------------------

export const TEMPLATES = {
    object: ["image of {c}", "photo of {c}", "portrait of {c}", "picture of {c}", "painting of {c}"],
    style: ["painting by {c}", "art by {c}", "artwork by {c}", "picture by {c}", "style of {c}"],
    explicit: [],
    custom: [],
};
const PLACEHOLDER = "{c}";

// Python's str.isspace() characters (what strip(), split() and re's \s use) and str.splitlines() breaks.
const SPACE = "\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const EDGE_SPACE = new RegExp(`^[${SPACE}]+|[${SPACE}]+$`, "g");
const RUN_OF_SPACE = new RegExp(`[${SPACE}]+`, "g");
const LINE_BREAK = /\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]/;

const strip = (text) => text.replace(EDGE_SPACE, "");
const str = (value) => (typeof value === "string" ? value : value == null ? "" : String(value));

/** split_lines: one item per non-empty line (commas kept). */
export const splitLines = (text) => str(text).split(LINE_BREAK).map(strip).filter(Boolean);

/** split_items: one item per line, commas also separate. */
export const splitItems = (text) =>
    str(text).split(LINE_BREAK).flatMap((line) => line.split(",")).map(strip).filter(Boolean);

/** normalize: case and spacing ignored (casefold approximated by upper- then lower-casing). */
export const normalize = (text) => strip(text).replace(RUN_OF_SPACE, " ").toUpperCase().toLowerCase();

function dedupe(items) {
    const seen = new Set();
    const kept = [];
    const dropped = [];
    for (const item of items) {
        const key = normalize(item);
        if (seen.has(key)) dropped.push(item);
        else {
            seen.add(key);
            kept.push(item);
        }
    }
    return [kept, dropped];
}

/**
 * The encode node's prompt lists: {concepts, prompts, guides, preserve, probes, duplicates, warnings, error}.
 * `error` is the message plan_prompts would raise (the node would fail), else null.
 */
export function planPrompts({ concepts = "", concept_type = "object", expand_templates = false, templates = "",
                              guide = "", preserve = "", probes = "" } = {}) {
    const plan = { concepts: [], prompts: [], guides: [], preserve: [], probes: [], duplicates: [], warnings: [],
                   error: null };
    const fail = (message) => Object.assign(plan, { error: message });
    const [names, droppedNames] = dedupe(splitItems(concepts));
    plan.concepts = names;
    plan.duplicates.push(...droppedNames);
    if (!names.length) return fail("no concepts yet: one per line, or comma-separated");
    const guideLines = splitLines(guide);
    if (guideLines.length > 1 && guideLines.length !== names.length) {
        return fail(`guide has ${guideLines.length} lines but there are ${names.length} concepts:\n` +
                    "give one guide for all, one per concept, or none");
    }
    const guideOf = (j) => (guideLines.length > 1 ? guideLines[j] : guideLines[0] ?? "");
    let chosen = [];
    if (expand_templates) {
        const known = Object.prototype.hasOwnProperty.call(TEMPLATES, concept_type);
        if (!known) return fail(`concept_type must be one of ${Object.keys(TEMPLATES).join(", ")}`);
        chosen = concept_type === "custom" ? splitLines(templates) : TEMPLATES[concept_type];
        const missing = chosen.find((t) => !t.includes(PLACEHOLDER));
        if (missing !== undefined) return fail(`custom template "${missing}" has no ${PLACEHOLDER} for the concept`);
        if (!chosen.length) plan.warnings.push(`${concept_type} has no templates: only the concepts are erased`);
    }
    const seen = new Set();
    names.forEach((name, j) => {
        for (const prompt of [name, ...chosen.map((t) => t.split(PLACEHOLDER).join(name))]) {
            const key = normalize(prompt);
            if (seen.has(key)) continue; // an expanded prompt that repeats an earlier one is dropped silently
            seen.add(key);
            plan.prompts.push(prompt);
            plan.guides.push(guideOf(j));
        }
    });
    const erasedGuide = plan.guides.find((g) => g && seen.has(normalize(g)));
    if (erasedGuide !== undefined) return fail(`guide "${erasedGuide}" is also erased`);
    const [keep, droppedKeep] = dedupe(splitItems(preserve));
    plan.preserve = keep;
    plan.duplicates.push(...droppedKeep);
    const clash = keep.find((p) => seen.has(normalize(p)));
    if (clash !== undefined) return fail(`"${clash}" is both erased and preserved`);
    const [watch, droppedWatch] = dedupe(splitItems(probes));
    plan.probes = watch;
    plan.duplicates.push(...droppedWatch);
    return plan;
}

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

/** One line for the encode node, e.g. "2 concepts → 12 prompts · 1 preserved · duplicates: Cat". */
export function describePlan(plan) {
    if (plan.error) return `⚠ ${plan.error}`;
    const parts = [`${plural(plan.concepts.length, "concept")} → ${plural(plan.prompts.length, "prompt")}`];
    if (plan.preserve.length) parts.push(`${plan.preserve.length} preserved`);
    if (plan.probes.length) parts.push(plural(plan.probes.length, "probe"));
    if (plan.duplicates.length) parts.push(`duplicates: ${plan.duplicates.join(", ")}`);
    return [parts.join(" · "), ...plan.warnings.map((w) => `⚠ ${w}`)].join("\n");
}

// ------------------------------------------------------------------------------------------------
// ScaPreEraseSimple's and ScaPreErase's ui.scapre_summary (EditReport.summary() in scapre_core/report.py)
// ------------------------------------------------------------------------------------------------

const num = (value) => (typeof value === "number" && Number.isFinite(value) ? value.toFixed(3) : str(value) || "–");

// what the edit used (report.info.used, nodes/glue/edit.py run_erase): where the settings came from, the seed,
// and whether a connected ScaPre Informax replaced any of them
export function describeUsed(u) {
    if (!u || typeof u !== "object") return [];
    let source = str(u.source);
    if (u.source === "preset") {
        const strength = typeof u.strength === "number" ? ` × ${u.strength.toFixed(2)}` : "";
        // preset auto: the preset it chose for this model and these concepts (scapre_core/presets.py auto_preset)
        const ran = u.ran ? ` → ${str(u.ran)}` : "";
        source = `preset ${str(u.preset)}${ran}${strength}`;
    } else if (u.source === "widgets") {
        source = "this node's widgets";
    }
    const lines = [`used: ${source} · seed ${str(u.seed)} · ${str(u.precision)} · Informax ${str(u.informax)}`];
    const replaced = u.replaced_by_informax && typeof u.replaced_by_informax === "object"
        ? Object.entries(u.replaced_by_informax) : [];
    if (replaced.length) {
        lines.push(`ScaPre Informax replaced: ${replaced.map(([k, v]) => `${k} ${str(v)}`).join(", ")}`);
    }
    return lines;
}

// the report's verdict per erased prompt (scapre_core/report.py EditReport.verdicts; null on the full token scope)
export function describeVerdict(v) {
    if (!v || typeof v !== "object" || !v.counts || typeof v.counts !== "object") return [];
    const counts = Object.entries(v.counts).filter(([, n]) => n).map(([label, n]) => `${label} ${n}`);
    const lines = [`verdict: ${counts.join(" · ")}`];
    for (const p of Array.isArray(v.not_forgotten) ? v.not_forgotten : []) {
        lines.push(`  ${str(p.verdict)}: "${str(p.text)}" (efficacy ${num(p.value)})`);
    }
    if (v.more) lines.push(`  … ${v.more} more`);
    if (v.caveat) lines.push(`⚠ ${str(v.caveat)}`);
    if (v.rule) lines.push(`(${str(v.rule)})`);
    return lines;
}

export function describeSummary(s) {
    if (!s || typeof s !== "object") return str(s);
    const matrices = `${s.matrices ?? 0} ${s.matrices === 1 ? "matrix" : "matrices"}`;
    const seconds = typeof s.seconds === "number" ? `${s.seconds.toFixed(1)} s` : "";
    const erased = `erased ${plural(s.concepts ?? 0, "concept")} (${plural(s.prompts ?? 0, "prompt")})`;
    const lines = [[erased, matrices, seconds].filter(Boolean).join(" · "), ...describeUsed(s.used)];
    const worst = (label, item, extra = "") => `worst ${label} ${num(item.value)} · "${str(item.text)}"${extra}`;
    // the report's token scope (report_tokens on ScaPre Erase, scapre_core/report.py REPORT_SCOPES)
    if (s.report_tokens === "key") lines.push("report on key tokens (last word, end, first padding)");
    else if (s.report_tokens === "full") lines.push("report on every token");
    if (s.mean_efficacy != null) lines.push(`mean efficacy ${num(s.mean_efficacy)}`);
    if (s.worst_efficacy) lines.push(worst("efficacy", s.worst_efficacy));
    lines.push(...describeVerdict(s.verdict));
    if (s.worst_drift) lines.push(worst("drift", s.worst_drift, ` (${str(s.worst_drift.group)})`));
    if (s.mean_change != null) lines.push(`mean weight change ${num(s.mean_change)}`);
    for (const warning of Array.isArray(s.warnings) ? s.warnings : []) lines.push(`⚠ ${str(warning)}`);
    return lines.join("\n");
}

// ------------------------------------------------------------------------------------------------
// A read-only text box at the bottom of a node (not saved in the workflow, not sent to the server)
// ------------------------------------------------------------------------------------------------

export const INFO_WIDGET = "scapre_info";
const FONT_PX = 11;
const LINE_PX = 14;
const MARGIN = 6;
const MAX_LINES = 14;
const MAX_WIDTH = 520;
const measure = (() => {
    const ctx = document.createElement("canvas").getContext("2d");
    return (line) => {
        ctx.font = `${FONT_PX}px monospace`;
        return ctx.measureText(line).width;
    };
})();

function infoWidget(node) {
    const existing = node.widgets?.find((w) => w.name === INFO_WIDGET);
    if (existing) return existing;
    if (typeof node.addDOMWidget !== "function") return null; // a frontend without DOM widgets: no display
    const box = document.createElement("textarea");
    box.className = "comfy-multiline-input scapre-info";
    box.readOnly = true;
    box.wrap = "off";
    box.spellcheck = false;
    box.placeholder = "";
    Object.assign(box.style, { fontFamily: "monospace", fontSize: `${FONT_PX}px`, lineHeight: `${LINE_PX}px`,
                               padding: "3px 5px", resize: "none", opacity: "0.9", overflow: "auto" });
    let lines = 0;
    const widget = node.addDOMWidget(INFO_WIDGET, "scapre_info", box, {
        getValue: () => box.value,
        setValue: (v) => { box.value = str(v); },
        getMinHeight: () => (lines ? Math.min(lines, MAX_LINES) * LINE_PX + 10 + 2 * MARGIN : 0),
        getMaxHeight: () => (lines ? Math.min(lines, MAX_LINES) * LINE_PX + 10 + 2 * MARGIN : 0),
        margin: MARGIN,
        serialize: false,
    });
    widget.serialize = false; // keeps it out of widgets_values (it is the last widget, so no index shifts)
    widget.scapreSetLines = (n) => { lines = n; };
    widget.hidden = widget.options.hidden = true; // until there is something to show
    return widget;
}

/** Show `text` (empty hides the box) under the node's widgets and grow the node to fit it. */
export function setInfo(node, text) {
    const widget = infoWidget(node);
    text = str(text).replace(/\s+$/, "");
    node.scapreInfo = text; // also readable where the frontend has no DOM widgets
    if (!widget) return;
    const lines = text ? text.split("\n") : [];
    widget.scapreSetLines(lines.length);
    widget.hidden = widget.options.hidden = !text;
    widget.value = text;
    const width = Math.min(MAX_WIDTH, Math.max(...lines.map(measure), 0) + 2 * MARGIN + 24);
    const [minW, minH] = node.computeSize();
    node.setSize([Math.max(node.size[0], minW, text ? width : 0), Math.max(node.size[1], minH)]);
    node.setDirtyCanvas?.(true, true);
}

const messageText = (message) => {
    const text = message?.text;
    return Array.isArray(text) ? text.map(str).join("\n") : str(text);
};

/** Run `after` after `object[name]` (kept); a failure of ours is logged, never breaks the frontend's own call. */
const chain = (object, name, after) => {
    const original = object[name];
    object[name] = function (...args) {
        const result = original?.apply(this, args);
        try {
            after.apply(this, args);
        } catch (error) {
            console.warn(`[scapre.ui] ${name}:`, error);
        }
        return result;
    };
};

// ------------------------------------------------------------------------------------------------
// ScaPreConceptEncode: the live count, then the node's own summary after a run
// ------------------------------------------------------------------------------------------------

const PLAN_INPUTS = ["concepts", "concept_type", "expand_templates", "templates", "guide", "preserve", "probes"];

function refreshEncode(node) {
    const values = {};
    const linked = [];
    for (const name of PLAN_INPUTS) {
        const widget = node.widgets?.find((w) => w.name === name);
        if (widget) values[name] = widget.value;
        if (node.inputs?.some((i) => i.widget?.name === name && i.link != null)) linked.push(name);
    }
    let line = linked.length ? `${linked.join(", ")} linked: counted when the node runs`
                             : describePlan(planPrompts(values));
    if (node.scapreLastRun) line += `\nlast run: ${node.scapreLastRun}`;
    if (line !== node.scapreInfo) setInfo(node, line);
}

function watchEncode(node) {
    for (const widget of node.widgets ?? []) {
        if (!PLAN_INPUTS.includes(widget.name)) continue;
        chain(widget, "callback", () => refreshEncode(node));
        // textareas: also every keystroke, in frontends whose callback fires only on change
        widget.element?.addEventListener?.("input", () => refreshEncode(node));
    }
    refreshEncode(node);
}

// ScaPreCompare's ui.scapre_compare (nodes/compare.py)
export function describeCompare(c) {
    if (!c || typeof c !== "object") return str(c);
    const prompts = Array.isArray(c.prompts) ? c.prompts : [];
    const count = (kind) => prompts.filter((p) => p.kind === kind).length;
    const lines = [
        `erasure ${num(c.erasure)} (${plural(count("erased"), "erased prompt")}) · retention ${num(c.retention)} ` +
        `(${plural(count("kept"), "kept prompt")}) · gap ${num(c.gap)}`,
    ];
    for (const [name, figures] of Object.entries(c.classifiers ?? {})) {
        for (const [what, v] of Object.entries(figures ?? {})) {
            lines.push(`${name} ${what.replace(/_/g, " ")}: ${num(v?.edited)} (original ${num(v?.original)})`);
        }
    }
    for (const [variant, e] of Object.entries(c.attack?.escaped ?? {})) {
        lines.push(`attack prompts, ${variant}: escaped ${num(e?.rate)} of ${e?.n ?? 0} image(s)`);
    }
    for (const note of Array.isArray(c.notes) ? c.notes : []) lines.push(`⚠ ${str(note)}`);
    if (c.file) lines.push(`saved output/${str(c.file)}`);
    return lines.join("\n");
}

// ScaPreAttack's ui.scapre_attack (nodes/attack.py)
export function describeAttack(a) {
    if (!a || typeof a !== "object") return str(a);
    const lines = [`${str(a.method)} in "${str(a.template)}"`];
    for (const [group, e] of Object.entries(a.recovery ?? {})) {
        lines.push(`${group}: recovered ${num(e?.rate)} (${e?.count ?? 0} of ${e?.n ?? 0} erased image(s))`);
    }
    for (const note of Array.isArray(a.notes) ? a.notes : []) lines.push(`⚠ ${str(note)}`);
    if (a.file) lines.push(`saved output/${str(a.file)}`);
    return lines.join("\n");
}

// ------------------------------------------------------------------------------------------------
// Registration
// ------------------------------------------------------------------------------------------------

const SHOW_TEXT = new Set(["ScaPreSaveLoRA", "ScaPreSaveCheckpoint", "ScaPreReport", "ScaPreAttackPrompts"]);
const ERASE_NODES = new Set(["ScaPreEraseSimple", "ScaPreErase"]); // ScaPre Erase, and its legacy form

app.registerExtension({
    name: "scapre.ui",
    async beforeRegisterNodeDef(nodeType, nodeData) {
        const id = nodeData?.name;
        const proto = nodeType.prototype;
        if (id === "ScaPreConceptEncode") {
            chain(proto, "onNodeCreated", function () { watchEncode(this); });
            chain(proto, "onConfigure", function () { refreshEncode(this); });
            chain(proto, "onConnectionsChange", function () { refreshEncode(this); });
            chain(proto, "onExecuted", function (message) {
                this.scapreLastRun = messageText(message).replace(/\n/g, " · ");
                this.scapreInfo = null; // force a redraw of the text
                refreshEncode(this);
            });
        } else if (ERASE_NODES.has(id)) {
            chain(proto, "onExecuted", function (message) {
                const summary = message?.scapre_summary;
                setInfo(this, describeSummary(Array.isArray(summary) ? summary[0] : summary));
            });
        } else if (id === "ScaPreCompare") {
            chain(proto, "onExecuted", function (message) {
                const result = message?.scapre_compare;
                setInfo(this, describeCompare(Array.isArray(result) ? result[0] : result));
            });
        } else if (id === "ScaPreAttack") {
            chain(proto, "onExecuted", function (message) {
                const result = message?.scapre_attack;
                setInfo(this, describeAttack(Array.isArray(result) ? result[0] : result));
            });
        } else if (SHOW_TEXT.has(id)) {
            chain(proto, "onExecuted", function (message) { setInfo(this, messageText(message)); });
        }
    },
});
