// Drives the real ComfyUI web UI in headless Chromium (playwright-core) for tests/e2e/test_browser.py.
//
//   node ui_driver.cjs PLAN.json      (NODE_PATH must hold playwright-core; see tools/browser/setup.sh)
//
// PLAN: {url, chromium, artifacts, examples: [names under /api/workflow_templates/driftless/], queue: name,
//        control: a UI workflow with an unknown node type, timeout_s}
// For each workflow it opens, the driver records the node types the frontend reports missing (its
// `afterConfigureGraph` extension hook receives them; nodes whose type is not registered are counted too),
// whether the frontend told the user (its missing-nodes dialog or toast), and a screenshot. It then clicks the Run button on `queue`,
// takes the prompt id from the UI's own POST /prompt, waits on /history for the end and screenshots the
// result. Console errors and uncaught page errors are recorded per step. The report (JSON) is the last
// line of stdout; the Python test asserts on it.

const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const plan = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const deadline = Date.now() + plan.timeout_s * 1000;
const remaining = () => Math.max(1000, deadline - Date.now());
const report = { steps: [], console_errors: [], page_errors: [], timings: {} };
let step = 'boot';

function log(message) {
    process.stderr.write(`[ui] ${message}\n`);
}

async function openApp(page) {
    // Fresh user folder: mark the first-run tutorial done so the Templates dialog does not cover the canvas,
    // and dismiss the "Nodes 2.0" banner (kept in localStorage), as a returning user would have. Full-detail
    // rendering at any zoom, so the fitted screenshots keep their text.
    await page.request.post(`${plan.url}/settings`, {
        data: { 'Comfy.TutorialCompleted': true, 'LiteGraph.Canvas.MinFontSizeForLOD': 0 },
    });
    await page.addInitScript(() => localStorage.setItem('vueNodesBannerDismissed', 'true'));
    await page.goto(plan.url);
    await page.waitForFunction(() => window.app?.graph && window.app.vueAppReady && document.querySelector('#graph-canvas'),
        null, { timeout: remaining() });
    await page.evaluate(() => {
        window.__missing = [];
        window.app.registerExtension({
            name: 'driftless.tests.missingNodes',
            afterConfigureGraph(missing) { window.__missing.push(...(missing || []).map(m => (typeof m === 'string' ? m : m.type))); },
        });
    });
}

async function load(page, name, workflow) {
    // The frontend's own loader, as the Templates dialog and drag-and-drop use it.
    return page.evaluate(async ({ name, workflow }) => {
        window.__missing = [];
        let graph = workflow;
        if (!graph) {
            const response = await window.app.api.fetchApi(`/workflow_templates/driftless/${name}.json`);
            if (!response.ok) return { error: `GET /api/workflow_templates/driftless/${name}.json: ${response.status}` };
            graph = await response.json();
        }
        await window.app.loadGraphData(graph, true, true, name);
        await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
        await new Promise(r => setTimeout(r, 300));  // notices (toasts) the loader raises after the first frames
        const registered = window.LiteGraph.registered_node_types;
        const unregistered = window.app.graph.nodes.filter(n => !(n.type in registered)).map(n => n.type);
        // what the frontend marks deprecated (its [DEPR] badge): the node definition it registered for the type
        const deprecated = window.app.graph.nodes.filter(n => registered[n.type]?.nodeData?.deprecated).map(n => n.type);
        const dialogs = [...document.querySelectorAll('.p-dialog')].map(d => d.innerText.slice(0, 500));
        // newer frontends report missing nodes, replaceable nodes and missing models as toasts, not dialogs
        const toasts = [...document.querySelectorAll('.p-toast-message')].map(t => t.innerText.slice(0, 500));
        return {
            nodes: window.app.graph.nodes.length,
            expected_nodes: graph.nodes.length,
            missing: [...new Set([...window.__missing, ...unregistered])],
            deprecated: [...new Set(deprecated)],
            dialogs,
            toasts,
        };
    }, { name, workflow });
}

async function screenshot(page, name) {
    // the whole graph in view, as the canvas's "Fit view" command shows it
    await page.evaluate(() => window.app.extensionManager.command.execute('Comfy.Canvas.FitView'));
    await page.evaluate(() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r))));
    const file = path.join(plan.artifacts, `${name}.png`);
    await page.screenshot({ path: file });
    return file;
}

async function closeDialogs(page) {
    for (let i = 0; i < 3 && await page.locator('.p-dialog').count(); i++) {
        await page.keyboard.press('Escape');
        await page.waitForTimeout(200);
    }
    // toasts of this workflow must not be read as the next one's
    await page.evaluate(() => window.app.extensionManager?.toast?.removeAll?.());
    for (let i = 0; i < 10 && await page.locator('.p-toast-message').count(); i++) {
        await page.locator('.p-toast-message button').first().click({ timeout: 1000 }).catch(() => {});
        await page.waitForTimeout(100);
    }
}

async function queueFromUi(page, name) {
    const result = await load(page, name);
    const posted = page.waitForResponse(r => r.url().endsWith('/api/prompt') && r.request().method() === 'POST',
        { timeout: remaining() });
    const started = Date.now();
    await page.locator('[data-testid="queue-button"]').first().click();
    const response = await posted;
    const body = await response.json();
    result.http_status = response.status();
    result.posted_prompt = response.request().postDataJSON().prompt;
    result.prompt_id = body.prompt_id;
    result.node_errors = body.node_errors || body;
    if (response.status() !== 200 || !body.prompt_id) return result;
    log(`queued ${name} from the Run button: prompt ${body.prompt_id}`);
    let entry;
    while (Date.now() < deadline) {
        const history = await (await page.request.get(`${plan.url}/history/${body.prompt_id}`)).json();
        entry = history[body.prompt_id];
        if (entry && ['success', 'error'].includes(entry.status?.status_str)) break;
        await page.waitForTimeout(500);
    }
    result.status = entry?.status?.status_str ?? 'timeout';
    result.run_s = (Date.now() - started) / 1000;
    await page.waitForTimeout(500);  // let the UI draw the outputs it was sent
    result.screenshot = await screenshot(page, `${path.basename(name)}_after_run`);
    return result;
}

(async () => {
    fs.mkdirSync(plan.artifacts, { recursive: true });
    const t0 = Date.now();
    const browser = await chromium.launch({ executablePath: plan.chromium, args: ['--no-sandbox'], timeout: remaining() });
    try {
        const page = await browser.newPage({ viewport: { width: 1920, height: 1200 } });
        page.on('console', m => {
            if (m.type() === 'error') report.console_errors.push({ step, text: m.text(), url: m.location().url });
        });
        page.on('pageerror', e => report.page_errors.push({ step, text: String(e.stack || e) }));
        await openApp(page);
        report.timings.app_ready_s = (Date.now() - t0) / 1000;
        log(`app ready in ${report.timings.app_ready_s} s`);

        step = 'control';  // a node type nobody registered: proves the detection below can fail
        const control = await load(page, 'control', plan.control);
        control.name = 'control';
        // what the user is told, wherever the frontend says it: a dialog (frontend 1.32, ComfyUI 0.3.75) or a
        // notice in the corner (1.49, ComfyUI 0.33): the page's visible lines that speak of a missing node
        const said = () => document.body.innerText.split('\n').filter(line => /missing node/i.test(line));
        await page.waitForFunction(() => /missing node/i.test(document.body.innerText), null, { timeout: 5000 }).catch(() => {});
        control.notices = await page.evaluate(said);
        control.reported = await page.evaluate(() => [...window.__missing]);
        control.screenshot = await screenshot(page, 'control');
        await closeDialogs(page);
        report.control = control;

        for (const name of plan.examples) {
            step = name;
            const loaded = Date.now();
            const result = await load(page, name);
            result.name = name;
            result.screenshot = await screenshot(page, path.basename(name));
            await closeDialogs(page);
            result.load_s = (Date.now() - loaded) / 1000;
            report.steps.push(result);
            log(`${name}: ${result.nodes} nodes, missing ${JSON.stringify(result.missing)}`);
        }

        step = `queue ${plan.queue}`;
        report.queued = await queueFromUi(page, plan.queue);
        report.queued.name = plan.queue;
        log(`${plan.queue}: ${report.queued.status} in ${report.queued.run_s} s`);
    } finally {
        await browser.close();
    }
    report.timings.total_s = (Date.now() - t0) / 1000;
    process.stdout.write(JSON.stringify(report) + '\n');
})().catch(e => {
    process.stderr.write(`[ui] failed at step '${step}': ${e.stack || e}\n`);
    process.stdout.write(JSON.stringify({ ...report, fatal: `${step}: ${e.message || e}` }) + '\n');
    process.exit(1);
});
