// Keel's dashboard in headless Chromium, as an operator uses it. Run by
// tests/dashboard.rs against a `keel dev` with a full and a read token:
//   KEEL_URL, KEEL_BIN (the CLI), FULL_TOKEN, READ_TOKEN, SHOTS (a folder),
//   CHROMIUM (default /usr/bin/chromium).
// Every wait is bounded; the first failed check ends the script with exit 1.
import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import assert from "node:assert/strict";

const url = process.env.KEEL_URL;
const bin = process.env.KEEL_BIN;
const full = process.env.FULL_TOKEN;
const read = process.env.READ_TOKEN;
const shots = process.env.SHOTS;
for (const [k, v] of Object.entries({ KEEL_URL: url, KEEL_BIN: bin, FULL_TOKEN: full, READ_TOKEN: read, SHOTS: shots })) {
  if (!v) { console.error(`dashboard.mjs: ${k} is not set`); process.exit(2); }
}
mkdirSync(shots, { recursive: true });
const WAIT = 20_000;

function cli(...args) {
  const out = execFileSync(bin, [...args, "--url", url], { env: { ...process.env, KEEL_TOKEN: full }, encoding: "utf8" });
  return out;
}
function start(input, ...extra) {
  return JSON.parse(cli("run", "demo", "--input", JSON.stringify(input), ...extra)).run_id;
}
function step(text) { console.log("dashboard: " + text); }

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
});
let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push("page error: " + e.message));
  // (A refused fetch is logged as "Failed to load resource": the login and
  // the read token's checks make those on purpose.)
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) problems.push("console: " + m.text());
  });
  page.on("dialog", (d) => d.accept());

  step("the token is asked for, kept in the tab, never in the address");
  await page.goto(url + "/");
  assert.match(page.url(), /\/ui\/$/, "the root redirects to /ui/");
  await page.locator("#login").waitFor({ state: "visible", timeout: WAIT });
  await page.getByLabel("API or read token").fill(full);
  await page.getByRole("button", { name: "Open" }).click();
  await page.locator("h1", { hasText: "Runs" }).waitFor({ timeout: WAIT });
  assert.ok(!page.url().includes(full), "no token in the address");
  assert.equal(await page.evaluate(() => sessionStorage.getItem("keel.token")), full);
  assert.equal(await page.evaluate(() => localStorage.length), 0, "nothing in localStorage");

  step("a run started from the CLI appears and progresses live, without a reload");
  const marker = await page.evaluate(() => (window.__notReloaded = true));
  const sleeper = start({ steps: 2, sleep_ms: 600_000 }, "--label", "team=ui");
  const row = page.locator(`tr[data-run="${sleeper}"]`);
  await row.waitFor({ timeout: WAIT });
  await row.locator(".badge", { hasText: "sleeping" }).waitFor({ timeout: WAIT });
  assert.equal(await page.evaluate(() => window.__notReloaded), marker, "the page was not reloaded");
  await page.screenshot({ path: `${shots}/runs.png`, fullPage: true });

  step("the run's page: its steps on the timeline");
  await row.locator("a").first().click();
  await page.locator(".run-head h1").waitFor({ timeout: WAIT });
  for (const id of ["step-1", "step-2", "nap"]) {
    await page.locator(`svg g.bar[data-step="${id}"] rect`).waitFor({ timeout: WAIT });
  }
  assert.ok(await page.locator(".run-head .badge", { hasText: "sleeping" }).isVisible());
  assert.match(await page.locator("section[aria-label=input]").innerText(), /600000/);
  await page.screenshot({ path: `${shots}/run.png`, fullPage: true });

  step("cancel the sleeping run from the page");
  await page.getByRole("button", { name: "Cancel" }).click();
  await page.locator("#action-result", { hasText: "Cancel: cancelled" }).waitFor({ timeout: WAIT });
  await page.locator(".run-head .badge", { hasText: "cancelled" }).waitFor({ timeout: WAIT });
  assert.ok(await page.getByRole("button", { name: "Cancel" }).isDisabled(), "a finished run cannot be cancelled");

  step("retry a failed run");
  const failing = start({ steps: 2, fail_at: 2 });
  await page.goto(`${url}/ui/#/runs/${failing}`);
  await page.locator(".run-head .badge", { hasText: "failed" }).waitFor({ timeout: WAIT });
  assert.match(await page.locator("section.error").innerText(), /step 2 fails, as asked/);
  await page.locator('svg g.bar.s-failed[data-step="step-2"]').waitFor({ timeout: WAIT });
  await page.getByRole("button", { name: "Retry" }).click();
  await page.locator("#action-result", { hasText: "Retry: retried" }).waitFor({ timeout: WAIT });
  // It fails again at the same step (the demo is told to): the second claim shows.
  await page.locator("dd", { hasText: "2 claims by a worker" }).waitFor({ timeout: WAIT });
  await page.screenshot({ path: `${shots}/failed.png`, fullPage: true });

  step("send the event a waiting run waits for");
  const waiting = start({ steps: 1, wait_for: "ui-approve" });
  await page.goto(`${url}/ui/#/runs/${waiting}`);
  await page.locator(".run-head .badge", { hasText: "waiting" }).waitFor({ timeout: WAIT });
  // (The form is filled in when the page loads: load it again now that the run waits.)
  await page.reload();
  await page.locator(".run-head .badge", { hasText: "waiting" }).waitFor({ timeout: WAIT });
  assert.equal(await page.getByLabel("Key").inputValue(), "ui-approve", "the key it waits for, filled in");
  await page.getByLabel("Data (JSON)").fill("{not json");
  await page.getByRole("button", { name: "Send" }).click();
  await page.locator("#action-result", { hasText: "The data is not JSON" }).waitFor({ timeout: WAIT });
  await page.getByLabel("Data (JSON)").fill('{"approved": "yes"}');
  await page.getByRole("button", { name: "Send" }).click();
  await page.locator("#action-result", { hasText: "1 run(s) woken" }).waitFor({ timeout: WAIT });
  await page.locator(".run-head .badge", { hasText: "completed" }).waitFor({ timeout: WAIT });
  assert.match(await page.locator("section[aria-label=output]").innerText(), /approved/);

  step("filter by label");
  await page.goto(`${url}/ui/#/runs`);
  await page.getByLabel("Label").fill("team=ui");
  await page.getByRole("button", { name: "Filter" }).click();
  await page.waitForURL(/label=team%3Dui/, { timeout: WAIT });
  // The unfiltered list shows that run too: wait for the filtered one.
  await page.locator("input[name=label][value='team=ui']").waitFor({ timeout: WAIT });
  await page.waitForFunction(() => document.querySelectorAll("table.runs tbody tr").length === 1, null, { timeout: WAIT });
  await page.locator(`tr[data-run="${sleeper}"]`).waitFor({ timeout: WAIT });
  assert.equal(await page.locator(`tr[data-run="${failing}"]`).count(), 0);

  step("filter by creation time (the browser's local time)");
  await page.getByLabel("Created from").fill("2099-01-01T00:00");
  await page.getByRole("button", { name: "Filter" }).click();
  await page.waitForURL(/created_after=\d+/, { timeout: WAIT });
  await page.locator("p.empty", { hasText: "No runs." }).waitFor({ timeout: WAIT });
  assert.equal(await page.getByLabel("Created from").inputValue(), "2099-01-01T00:00", "the form keeps the range");
  const after = Number(new URL(page.url().replace("#", "")).searchParams.get("created_after"));
  assert.equal(after, await page.evaluate(() => new Date("2099-01-01T00:00").getTime()), "sent as Unix ms");

  step("a bad filter says what is wrong");
  await page.goto(`${url}/ui/#/runs?label=nolabel`);
  await page.locator(".problem", { hasText: "name=value" }).waitFor({ timeout: WAIT });

  step("the overview and the system pages");
  await page.goto(`${url}/ui/#/overview`);
  await page.locator("h2", { hasText: "Runs per minute" }).waitFor({ timeout: WAIT });
  await page.locator("table.overview td a", { hasText: "demo" }).waitFor({ timeout: WAIT });
  await page.screenshot({ path: `${shots}/overview.png`, fullPage: true });
  await page.goto(`${url}/ui/#/system`);
  await page.locator("h2", { hasText: "Workflows" }).waitFor({ timeout: WAIT });
  await page.locator("td a", { hasText: "demo" }).first().waitFor({ timeout: WAIT });
  await page.screenshot({ path: `${shots}/system.png`, fullPage: true });

  step("every form control has a label");
  await page.goto(`${url}/ui/#/runs`);
  await page.locator("#run-filters").waitFor({ timeout: WAIT });
  const unlabelled = await page.evaluate(() => [...document.querySelectorAll("input, select")]
    .filter((e) => e.type !== "hidden" && !e.closest("label") && !e.getAttribute("aria-label") &&
      !(e.id && document.querySelector(`label[for="${e.id}"]`)))
    .map((e) => e.name || e.id));
  assert.deepEqual(unlabelled, []);

  step("a narrow screen and the dark preference");
  await page.setViewportSize({ width: 390, height: 800 });
  await page.emulateMedia({ colorScheme: "dark" });
  await page.goto(`${url}/ui/#/runs/${sleeper}`);
  await page.locator(".run-head h1").waitFor({ timeout: WAIT });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `no sideways scrolling on a narrow screen (${overflow} px too wide)`);
  const background = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.equal(background, "rgb(13, 17, 23)", "dark when the OS prefers dark");
  await page.screenshot({ path: `${shots}/run-narrow-dark.png`, fullPage: true });
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.emulateMedia({ colorScheme: "light" });

  step("a read token sees everything and cannot act");
  await page.getByRole("button", { name: "Forget token" }).click();
  await page.locator("#login").waitFor({ state: "visible", timeout: WAIT });
  await page.getByLabel("API or read token").fill(read);
  await page.getByRole("button", { name: "Open" }).click();
  const live = start({ steps: 1, sleep_ms: 600_000 });
  await page.goto(`${url}/ui/#/runs/${live}`);
  await page.locator(".run-head .badge", { hasText: "sleeping" }).waitFor({ timeout: WAIT });
  await page.locator("#access", { hasText: "read-only token" }).waitFor({ timeout: WAIT });
  for (const name of ["Cancel", "Pause", "Retry", "Send"]) {
    assert.ok(await page.getByRole("button", { name }).isDisabled(), `${name} is disabled for a read token`);
  }
  const status = await page.evaluate(async (id) => (await fetch(`/v1/runs/${id}/cancel`, {
    method: "POST", headers: { Authorization: "Bearer " + sessionStorage.getItem("keel.token") },
  })).status, live);
  assert.equal(status, 403, "the API refuses the read token's action too");
  await page.screenshot({ path: `${shots}/read-only.png`, fullPage: true });

  step("a wrong token is refused and asked for again");
  await page.evaluate(() => sessionStorage.setItem("keel.token", "wrong"));
  await page.reload();
  await page.locator("#login-why", { hasText: "refused" }).waitFor({ timeout: WAIT });

  assert.deepEqual(problems, [], "no script errors");
  step("all checks passed");
} catch (e) {
  failed = true;
  console.error("dashboard: FAILED: " + (e.stack || e));
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
