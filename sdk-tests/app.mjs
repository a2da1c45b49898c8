// An app written with the unmodified @upstash/workflow SDK, as a team moving
// to Keel would have it: the same workflows served by the SDK's plain
// `serve` (/plain/...), its Express adapter (/express/...), its Hono adapter
// (/hono/...) and `serveMany` (/many/...). QSTASH_URL points at Keel.
//
// The tests drive it over HTTP on PORT:
//   POST /control/trigger {path, body?, options?}   client.trigger from this app
//   POST /control/notify {eventId, data, runId?}    client.notify
//   POST /control/cancel {ids} | {request}          client.cancel (by ids, or as given: {filter}, {all})
//   GET  /control/logs?<filter>                     client.logs
//   GET  /control/seen/<runId>                      what the workflow code saw (its side of the outcome)
//   ANY  /third-party                               a service `context.call` calls (answers with what it got)
//   ANY  /flaky?key=K&fail=N                        fails its first N calls per key, then answers 200
import http from "node:http";
import express from "express";
import { Hono } from "hono";
import { getRequestListener } from "@hono/node-server";
import { Client, WorkflowNonRetryableError, WorkflowRetryAfterError, serve } from "@upstash/workflow";
import { serve as serveExpress } from "@upstash/workflow/express";
import { serve as serveHono } from "@upstash/workflow/hono";
import { createWorkflow, serveMany } from "@upstash/workflow/express";

const port = Number(process.env.PORT ?? 3000);
const base = `http://127.0.0.1:${port}`;
const client = new Client({ baseUrl: process.env.QSTASH_URL, token: process.env.QSTASH_TOKEN });

// What the workflow code saw, by run id: steps run (each time the body ran),
// results, failure functions called.
const seen = new Map();
const note = (runId, what, value) => {
  const entry = seen.get(runId) ?? { runs: {}, events: [] };
  if (what === "ran") entry.runs[value] = (entry.runs[value] ?? 0) + 1;
  else entry.events.push({ what, value });
  seen.set(runId, entry);
};
const flaky = new Map();
// The traffic of each run, both ways: what Keel delivered to the app and what
// the SDK sent to Keel (QSTASH_URL), by run id (the recorded fixture).
const traffic = new Map();
const record = (runId, entry) => {
  if (!runId) return;
  const list = traffic.get(runId) ?? [];
  list.push(entry);
  traffic.set(runId, list);
};
const pick = (headers, name) => (typeof headers.get === "function" ? headers.get(name) : headers[name]) ?? null;
const headerObject = (headers) =>
  Object.fromEntries(typeof headers.entries === "function" ? [...headers.entries()] : Object.entries(headers ?? {}));
const sdkFetch = globalThis.fetch;
globalThis.fetch = async (input, init = {}) => {
  const url = typeof input === "string" ? input : input.url;
  const response = await sdkFetch(input, init);
  if (url.startsWith(process.env.QSTASH_URL ?? "\0")) {
    const headers = headerObject(new Headers(init.headers ?? {}));
    let runId = headers["upstash-workflow-runid"] ?? null;
    const body = typeof init.body === "string" ? init.body : null;
    if (!runId && body?.startsWith("[")) {
      try { runId = JSON.parse(body)[0]?.headers?.["upstash-workflow-runid"] ?? null; } catch {}
    }
    if (!runId) runId = url.match(/\/v2\/workflows\/runs\/([^/?]+)/)?.[1] ?? null;
    record(runId, { direction: "to-keel", method: init.method ?? "GET", path: url.slice(process.env.QSTASH_URL.length), headers, body, status: response.status });
  }
  return response;
};
const attempts = new Map();

// The workflows, by name; each is served by every adapter.
const workflows = {
  // Three sequential steps.
  sequential: async (ctx) => {
    const n = ctx.requestPayload?.n ?? 0;
    const a = await ctx.run("step-1", () => { note(ctx.workflowRunId, "ran", "step-1"); return `a(${n})`; });
    const b = await ctx.run("step-2", () => { note(ctx.workflowRunId, "ran", "step-2"); return `b(${a})`; });
    const c = await ctx.run("step-3", () => { note(ctx.workflowRunId, "ran", "step-3"); return `c(${b})`; });
    note(ctx.workflowRunId, "result", c);
    note(ctx.workflowRunId, "headers", { tenant: ctx.headers.get("x-tenant"), labels: ctx.labels ?? null });
    return c;
  },
  // Parallel steps (the SDK's plan / result protocol), then one more.
  parallel: async (ctx) => {
    const results = await Promise.all([1, 2, 3].map((i) =>
      ctx.run(`branch-${i}`, async () => { note(ctx.workflowRunId, "ran", `branch-${i}`); return i * 10; })));
    const total = await ctx.run("sum", () => results.reduce((a, b) => a + b, 0));
    note(ctx.workflowRunId, "result", total);
    return { results, total };
  },
  // sleep and sleepUntil, and a parallel group holding a sleep.
  sleep: async (ctx) => {
    const started = await ctx.run("start", () => Date.now());
    await ctx.sleep("nap", 1);
    await ctx.sleepUntil("until", Math.floor(Date.now() / 1000) + 1);
    const [, x] = await Promise.all([ctx.sleep("par-nap", "1s"), ctx.run("par-step", () => "x")]);
    const elapsed = await ctx.run("end", () => Date.now() - started);
    note(ctx.workflowRunId, "result", { elapsed, x });
    return { elapsed, x };
  },
  // context.call to a third party; its answer comes back in the next delivery.
  call: async (ctx) => {
    const ok = await ctx.call("call-ok", {
      url: `${base}/third-party`, method: "POST", body: { ping: 1 }, headers: { "x-call": "yes" },
    });
    const flakyKey = `call-${ctx.workflowRunId}`;
    const retried = await ctx.call("call-flaky", { url: `${base}/flaky?key=${flakyKey}&fail=1`, method: "GET", retries: 2, retryDelay: "100" });
    const notFound = await ctx.call("call-404", { url: `${base}/missing`, method: "GET" });
    const result = { ok: { status: ok.status, body: ok.body }, retried: retried.status, notFound: notFound.status };
    note(ctx.workflowRunId, "result", result);
    return result;
  },
  // waitForEvent, notified (from outside) or timed out.
  wait: async (ctx) => {
    const { eventId, timeout } = ctx.requestPayload;
    const { eventData, timeout: timedOut } = await ctx.waitForEvent("wait-evt", eventId, { timeout: timeout ?? "20s" });
    note(ctx.workflowRunId, "result", { eventData, timedOut });
    return { eventData, timedOut };
  },
  // notify from inside a workflow (wakes a `wait` run).
  notifier: async (ctx) => {
    const { eventId, data } = ctx.requestPayload;
    const { notifyResponse } = await ctx.notify("notify-evt", eventId, data);
    note(ctx.workflowRunId, "result", notifyResponse.length);
    return notifyResponse.length;
  },
  // createWebhook / waitForWebhook: a third party calls the URL.
  webhook: async (ctx) => {
    const webhook = await ctx.createWebhook("make-hook");
    await ctx.run("announce", () => { note(ctx.workflowRunId, "webhook", webhook.webhookUrl); return webhook.webhookUrl; });
    const { request, timeout } = await ctx.waitForWebhook("hook-called", webhook, "20s");
    if (timeout) return { timeout };
    const result = { method: request.method, body: await request.text(), header: request.headers.get("x-hook") };
    note(ctx.workflowRunId, "result", result);
    return result;
  },
  // Fails while the flaky service fails for its key (once): for the DLQ.
  dlq: async (ctx) => {
    const key = ctx.requestPayload.key;
    const status = await ctx.run("flaky", async () => {
      const response = await fetch(`${base}/flaky?key=${key}&fail=1`);
      if (!response.ok) throw new Error(`the service answered ${response.status}`);
      return response.status;
    });
    note(ctx.workflowRunId, "result", status);
    return status;
  },
  // context.cancel() in the middle.
  cancel: async (ctx) => {
    await ctx.run("before", () => "x");
    await ctx.cancel();
    await ctx.run("after", () => { note(ctx.workflowRunId, "ran", "after"); return "never"; });
  },
  // A slow step (for flow control): when it ran, from the app's clock.
  slow: async (ctx) => {
    return await ctx.run("slow", async () => {
      const start = Date.now();
      await new Promise((r) => setTimeout(r, 300));
      note(ctx.workflowRunId, "span", { start, end: Date.now() });
      return "done";
    });
  },
  // A step that throws until its third delivery (retries with a retryDelay expression).
  retry: async (ctx) => {
    const value = await ctx.run("sometimes", () => {
      const n = (attempts.get(ctx.workflowRunId) ?? 0) + 1;
      attempts.set(ctx.workflowRunId, n);
      if (n < 3) throw new Error(`attempt ${n} fails`);
      return n;
    });
    note(ctx.workflowRunId, "result", { value, retried: ctx.retried ?? null });
    return value;
  },
  // A step that fails for good: WorkflowNonRetryableError (489), then the failure function.
  nonretryable: async (ctx) => {
    await ctx.run("doomed", () => { throw new WorkflowNonRetryableError("not worth retrying"); });
  },
  // Always throws: retries run out, then the failure function.
  failing: async (ctx) => {
    await ctx.run("boom", () => { throw new Error("my-error"); });
  },
  // WorkflowRetryAfterError: retried after the given delay.
  retryafter: async (ctx) => {
    const value = await ctx.run("later", () => {
      const n = (attempts.get(ctx.workflowRunId) ?? 0) + 1;
      attempts.set(ctx.workflowRunId, n);
      if (n < 2) throw new WorkflowRetryAfterError("busy", 1);
      return n;
    });
    note(ctx.workflowRunId, "result", value);
    return value;
  },
};

const failureFunction = async ({ context, failStatus, failResponse }) => {
  note(context.workflowRunId, "failure", { failStatus, failResponse, payload: context.requestPayload ?? null });
  return "handled";
};
const options = (name) => (["nonretryable", "failing"].includes(name) ? { failureFunction } : {});

// serveMany: a parent invoking a child by its workflow id.
const child = createWorkflow(async (ctx) => {
  const doubled = await ctx.run("double", () => ctx.requestPayload.x * 2);
  if (ctx.requestPayload.fail) throw new WorkflowNonRetryableError("the child gives up");
  return { doubled };
});
const parent = createWorkflow(async (ctx) => {
  const { body, isFailed, isCanceled } = await ctx.invoke("invoke-child", { workflow: child, body: { x: 21, fail: ctx.requestPayload?.fail ?? false } });
  note(ctx.workflowRunId, "result", { body, isFailed, isCanceled });
  return { body, isFailed };
});

// Plain serve(): a Fetch-API handler per workflow.
const plain = Object.fromEntries(Object.entries(workflows).map(([name, fn]) => [name, serve(fn, options(name)).handler]));

const expressApp = express();
expressApp.use(express.json());
expressApp.use(express.text());
for (const [name, fn] of Object.entries(workflows)) expressApp.use(`/express/${name}`, serveExpress(fn, options(name)));
expressApp.use("/many", serveMany({ parent, child }));
const expressListener = expressApp;

const hono = new Hono();
for (const [name, fn] of Object.entries(workflows)) hono.post(`/hono/${name}`, serveHono(fn, options(name)));
const honoListener = getRequestListener(hono.fetch);

const readBody = async (req) => { const chunks = []; for await (const c of req) chunks.push(c); return Buffer.concat(chunks); };
const json = (res, status, value) => { res.writeHead(status, { "content-type": "application/json" }); res.end(JSON.stringify(value ?? null)); };

async function control(req, res, url) {
  const body = req.method === "POST" ? JSON.parse((await readBody(req)).toString() || "{}") : {};
  try {
    if (url.pathname === "/control/trigger") {
      const result = await client.trigger({ url: `${base}${body.path}`, body: body.body, ...(body.options ?? {}) });
      return json(res, 200, result);
    }
    if (url.pathname === "/control/notify") return json(res, 200, await client.notify({ eventId: body.eventId, eventData: body.data, workflowRunId: body.runId }));
    if (url.pathname === "/control/cancel") return json(res, 200, await client.cancel(body.request ?? { ids: body.ids }));
    if (url.pathname === "/control/dlq/list") return json(res, 200, await client.dlq.list({ filter: body.filter }));
    if (url.pathname === "/control/dlq/resume") return json(res, 200, await client.dlq.resume({ dlqId: body.dlqId }));
    if (url.pathname === "/control/dlq/restart") return json(res, 200, await client.dlq.restart({ dlqId: body.dlqId }));
    if (url.pathname === "/control/dlq/delete") return json(res, 200, await client.dlq.delete(body.dlqIds));
    if (url.pathname === "/control/logs") return json(res, 200, await client.logs(Object.fromEntries(url.searchParams)));
    if (url.pathname.startsWith("/control/seen/")) return json(res, 200, seen.get(url.pathname.slice("/control/seen/".length)) ?? null);
    if (url.pathname.startsWith("/control/traffic/")) return json(res, 200, traffic.get(url.pathname.slice("/control/traffic/".length)) ?? []);
    return json(res, 404, { error: "no such control" });
  } catch (e) {
    return json(res, 500, { error: String(e?.message ?? e), status: e?.status ?? null });
  }
}

http.createServer(async (req, res) => {
  const url = new URL(req.url, base);
  try {
    if (url.pathname.startsWith("/control/")) return await control(req, res, url);
    if (url.pathname === "/third-party") {
      const got = (await readBody(req)).toString();
      return json(res, 200, { got, method: req.method, header: req.headers["x-call"] ?? null });
    }
    if (url.pathname === "/failure-sink") {
      // A failureUrl that is not a workflow: records what Keel sent.
      const got = JSON.parse((await readBody(req)).toString() || "null");
      note(req.headers["upstash-workflow-runid"], "failure-url", { status: got?.status, sourceBody: got?.sourceBody, isFailure: req.headers["upstash-workflow-is-failure"] ?? null });
      return json(res, 200, {});
    }
    if (url.pathname === "/flaky") {
      const key = url.searchParams.get("key");
      const n = (flaky.get(key) ?? 0) + 1;
      flaky.set(key, n);
      return json(res, n <= Number(url.searchParams.get("fail") ?? 0) ? 503 : 200, { n });
    }
    if (url.pathname.startsWith("/express/") || url.pathname.startsWith("/many/")) return expressListener(req, res);
    if (url.pathname.startsWith("/hono/")) return honoListener(req, res);
    const name = url.pathname.replace(/^\/plain\//, "");
    const handler = url.pathname.startsWith("/plain/") ? plain[name] : undefined;
    if (!handler) return json(res, 404, { error: `no workflow at ${url.pathname}` });
    const body = req.method === "GET" || req.method === "HEAD" ? undefined : await readBody(req);
    // What Keel delivered, as it came (plain routes; the adapters read their own bodies).
    record(req.headers["upstash-workflow-runid"], { direction: "to-app", method: req.method, path: url.pathname, headers: { ...req.headers }, body: body?.toString() ?? null });
    const response = await handler(new Request(url, { method: req.method, headers: req.headers, body }));
    res.writeHead(response.status, Object.fromEntries(response.headers));
    res.end(Buffer.from(await response.arrayBuffer()));
  } catch (e) {
    console.error(e);
    if (!res.headersSent) json(res, 500, { error: String(e) });
  }
}).listen(port, "127.0.0.1", () => console.log(`app listening on ${base}`));
