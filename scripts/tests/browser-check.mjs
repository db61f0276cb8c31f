// Browser check of the frontend through the proxy, in headless Chromium (playwright-core).
// Loads the page, waits for the backend's version, posts an entry with the form and waits for
// it in the list; checks that markup in a message is shown as text, and saves a screenshot.
//
//   node scripts/tests/browser-check.mjs URL EXPECTED_VERSION SCREENSHOT.png
// Env: CHROMIUM (default /usr/bin/chromium), PLAYWRIGHT_CORE (path of the installed module).
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(import.meta.url);
const modulePath = process.env.PLAYWRIGHT_CORE || "playwright-core";
const { chromium } = require(modulePath.startsWith("/") ? path.resolve(modulePath) : modulePath);

const [url, expectedVersion, screenshot] = process.argv.slice(2);
if (!url || !expectedVersion || !screenshot) {
  console.error("usage: browser-check.mjs URL EXPECTED_VERSION SCREENSHOT.png");
  process.exit(2);
}

function fail(message) {
  console.error(`browser-check: FAIL: ${message}`);
  process.exitCode = 1;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  timeout: 60_000,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--ignore-certificate-errors",
  ],
});

try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1100, height: 800 } });
  const page = await context.newPage();
  const pageErrors = [];
  page.on("pageerror", (err) => pageErrors.push(String(err)));
  page.on("console", (msg) => {
    if (msg.type() === "error") pageErrors.push(msg.text());
  });
  page.on("response", (response) => {
    if (response.status() >= 400) pageErrors.push(`HTTP ${response.status()} for ${response.url()}`);
  });

  await page.goto(url, { waitUntil: "load", timeout: 30_000 });
  await page.waitForSelector('#backend-version[data-state="ready"]', { timeout: 20_000 });
  const version = (await page.textContent("#backend-version")).trim();
  console.error(`browser-check: page shows backend version ${version}`);
  if (version !== expectedVersion) fail(`version shown is '${version}', expected '${expectedVersion}'`);

  const marker = `${Date.now()}-${Math.random().toString(16).slice(2, 8)}`;
  const message = `browser check <b>${marker}</b>`;
  await page.fill("#message", message);
  await page.click("#submit");
  await page.waitForFunction(
    (text) => [...document.querySelectorAll("#entries .entry-message")].some((e) => e.textContent === text),
    message,
    { timeout: 20_000 },
  );
  console.error(`browser-check: posted entry is listed: ${message}`);
  if ((await page.locator("#entries b").count()) !== 0) fail("markup in a message was rendered as HTML");
  const status = (await page.textContent("#status")).trim();
  if (!status.startsWith("Posted")) fail(`status line says '${status}'`);

  await page.screenshot({ path: screenshot, fullPage: true });
  console.error(`browser-check: screenshot ${screenshot}`);
  if (pageErrors.length > 0) fail(`errors in the page: ${pageErrors.join(" | ")}`);
} catch (err) {
  fail(err.message);
} finally {
  await browser.close();
}
