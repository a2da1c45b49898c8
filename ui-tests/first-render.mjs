// The closing figures of the dashboard: page weight and time to first render
// of the runs list with many runs stored. Not a test (timings are not
// asserted): node first-render.mjs against a Keel with auth off.
//   KEEL_URL, RUNS (how many to start first, default 10000), CHROMIUM.
import { chromium } from "playwright-core";

const url = process.env.KEEL_URL;
const runs = Number(process.env.RUNS || 10000);
if (!url) { console.error("first-render.mjs: KEEL_URL is not set"); process.exit(2); }

// Start the runs, 50 at a time.
let next = 0;
const started = Date.now();
async function starter() {
  while (next < runs) {
    next++;
    const r = await fetch(url + "/v1/workflows/demo/runs", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ input: { steps: 1 }, labels: { batch: "measure" } }),
    });
    if (!r.ok) throw new Error("start: HTTP " + r.status + " " + await r.text());
  }
}
await Promise.all(Array.from({ length: 50 }, starter));
console.log(`started ${runs} runs in ${((Date.now() - started) / 1000).toFixed(1)} s`);
const listed = await (await fetch(url + "/v1/runs?limit=1")).json();
console.log("newest run:", listed.runs[0]?.run_id);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
const bytes = {};
page.on("response", async (r) => {
  try { bytes[new URL(r.url()).pathname] = (await r.body()).length; } catch { /* a stream */ }
});
const times = [];
for (let i = 0; i < 5; i++) {
  await page.goto("about:blank"); // a whole load each time, not a same-page hash change
  const t0 = Date.now();
  await page.goto(url + "/ui/#/runs", { waitUntil: "commit" });
  await page.locator("table.runs tbody tr").first().waitFor({ timeout: 30_000 });
  times.push(Date.now() - t0);
}
const rows = await page.locator("table.runs tbody tr").count();
const counts = await page.locator("nav.counts").innerText();
times.sort((a, b) => a - b);
console.log(`first render of the runs list (${rows} rows shown; ${counts.replace(/\s+/g, " ")}):`);
console.log(`  ms per load over 5 loads: min ${times[0]}, median ${times[2]}, max ${times[4]}`);
console.log("bytes:", JSON.stringify(bytes));
await browser.close();
