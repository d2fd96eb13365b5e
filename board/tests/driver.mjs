// A small bridge from the Rust browser tests (tests/board.rs) to a real headless
// Chromium: one JSON command per stdin line, one JSON answer per stdout line.
// Chromium is Debian's (/usr/bin/chromium, or $CHROMIUM); playwright-core drives it.
//
// Every console error, failed request and uncaught page error is collected from launch
// on; `errors` returns them, so a test can assert there were none.
import { chromium } from "playwright-core";
import readline from "node:readline";

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
const page = await context.newPage();
const errors = [];
page.on("console", (m) => {
  if (m.type() === "error") errors.push(`console: ${m.text()}`);
});
page.on("pageerror", (e) => errors.push(`page: ${e.message}`));
page.on("requestfailed", (r) => {
  // A stream the page closes on navigation is not a failure of the page.
  const failure = r.failure()?.errorText || "";
  if (!(r.url().endsWith("/v1/events") && failure.includes("ERR_ABORTED"))) {
    errors.push(`request: ${r.url()} ${failure}`);
  }
});

async function run(c) {
  const t = c.timeout ?? 10000;
  switch (c.op) {
    case "goto":
      await page.goto(c.url, { waitUntil: "load", timeout: t });
      return null;
    case "wait":
      await page.waitForSelector(c.sel, { state: c.state ?? "visible", timeout: t });
      return Date.now();
    case "waitText":
      await page.waitForFunction(
        ([sel, text]) => Array.from(document.querySelectorAll(sel)).some((e) => (e.textContent || "").includes(text)),
        [c.sel, c.text],
        { timeout: t, polling: 20 },
      );
      return Date.now();
    case "fill":
      await page.fill(c.sel, c.value, { timeout: t });
      return null;
    case "press":
      await page.press(c.sel, c.key, { timeout: t });
      return null;
    case "select":
      await page.selectOption(c.sel, c.value, { timeout: t });
      return null;
    case "click":
      await page.click(c.sel, { timeout: t });
      return null;
    case "text":
      return await page.textContent(c.sel, { timeout: t });
    case "texts":
      return await page.$$eval(c.sel, (es) => es.map((e) => e.textContent || ""));
    case "attrs":
      return await page.$$eval(c.sel, (es, name) => es.map((e) => e.getAttribute(name)), c.name);
    case "eval":
      return await page.evaluate(c.js);
    case "scroll":
      return await page.$eval(c.sel, (e, top) => {
        e.scrollTop = top;
        return e.scrollTop;
      }, c.top);
    case "frame":
      // Two animation frames: whatever the page scheduled has been drawn.
      return await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(() => r(Date.now())))));
    case "screenshot":
      await page.screenshot({ path: c.path, fullPage: false });
      return null;
    case "now":
      return Date.now();
    case "errors":
      return errors.slice();
    default:
      throw new Error(`unknown op ${c.op}`);
  }
}

const lines = readline.createInterface({ input: process.stdin });
process.stdout.write(JSON.stringify({ ok: true, value: "ready" }) + "\n");
for await (const line of lines) {
  if (!line.trim()) continue;
  const c = JSON.parse(line);
  if (c.op === "close") break;
  try {
    const value = await run(c);
    process.stdout.write(JSON.stringify({ ok: true, value: value ?? null }) + "\n");
  } catch (e) {
    process.stdout.write(JSON.stringify({ ok: false, error: String(e && e.message ? e.message : e) }) + "\n");
  }
}
await browser.close();
