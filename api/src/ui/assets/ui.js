// Keel's dashboard: routes the address (#/runs, #/runs/<id>, #/overview,
// #/system) to a server-rendered fragment under /ui/f/, fetched with the
// tab's token; keeps marked regions live; sends actions to the JSON API.
// The token lives in this tab's sessionStorage only, never in an address.
"use strict";

const TOKEN = "keel.token";
const view = document.getElementById("view");
let generation = 0; // bumped on every navigation: stale timers and streams stop
let stream = null; // the run page's SSE reader, aborted on navigation

function token() { return sessionStorage.getItem(TOKEN); }

function call(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const t = token();
  if (t) headers.set("Authorization", "Bearer " + t);
  return fetch(path, { ...options, headers, cache: "no-store" });
}

// The fragment for the current address.
function fragmentPath() {
  let route = location.hash.replace(/^#/, "");
  if (!route.startsWith("/")) route = "/runs";
  return "/ui/f" + route;
}

async function problemText(response) {
  try {
    const p = await response.json();
    return (p.title || response.status) + (p.detail ? ": " + p.detail : "");
  } catch { return "HTTP " + response.status; }
}

function askForToken(why) {
  const dialog = document.getElementById("login");
  document.getElementById("login-why").textContent = why;
  if (!dialog.open) dialog.showModal();
  document.getElementById("token").focus();
}

document.getElementById("login-form").addEventListener("submit", () => {
  const input = document.getElementById("token");
  sessionStorage.setItem(TOKEN, input.value.trim());
  input.value = "";
  showAccess();
  load();
});

document.getElementById("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN);
  document.getElementById("sign-out").hidden = true;
  document.getElementById("access").textContent = "";
  load();
});

async function showAccess() {
  const r = await call("/ui/f/whoami");
  if (!r.ok) return;
  const access = await r.text();
  document.body.dataset.access = access;
  document.getElementById("access").textContent = access === "read" ? "read-only token" : "";
  document.getElementById("sign-out").hidden = !token();
}

// Load the current address's view.
async function load() {
  const mine = ++generation;
  if (stream) { stream.abort(); stream = null; }
  const path = fragmentPath();
  for (const a of document.querySelectorAll("header nav a")) {
    const on = path.startsWith("/ui/f" + a.dataset.nav);
    if (on) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  view.setAttribute("aria-busy", "true");
  let response;
  try { response = await call(path); } catch (e) {
    view.innerHTML = "";
    view.append(problem("Keel did not answer: " + e.message));
    return;
  }
  if (mine !== generation) return;
  if (response.status === 401) {
    const invalid = token() !== null;
    sessionStorage.removeItem(TOKEN);
    askForToken(invalid ? "That token was refused. Enter an API or read token." :
      "This Keel asks for an API token. It is kept in this tab only and sent as a bearer header.");
    view.innerHTML = "";
    return;
  }
  view.innerHTML = await response.text();
  view.setAttribute("aria-busy", "false");
  enhance(view);
  keepLive(mine, path);
}

function problem(text) {
  const p = document.createElement("div");
  p.className = "problem";
  p.setAttribute("role", "alert");
  p.textContent = text;
  return p;
}

// Local times, and collapsed values fetched when opened.
function enhance(root) {
  for (const t of root.querySelectorAll("time[datetime]")) {
    const d = new Date(Number(t.getAttribute("datetime")));
    t.title = t.textContent;
    t.textContent = d.toLocaleString();
  }
  for (const input of root.querySelectorAll("input[type=datetime-local][data-ms]")) {
    const d = new Date(Number(input.dataset.ms));
    d.setMinutes(d.getMinutes() - d.getTimezoneOffset());
    input.value = d.toISOString().slice(0, 16);
  }
  for (const d of root.querySelectorAll("details[data-fetch]")) {
    d.addEventListener("toggle", async () => {
      if (!d.open || d.dataset.loaded) return;
      const r = await call(d.dataset.fetch);
      d.querySelector("pre").textContent = r.ok ? await r.text() : await problemText(r);
      d.dataset.loaded = "1";
    });
  }
}

// Swap the live regions of `path`'s fresh fragment into the page, keeping
// which collapsed values are open.
async function refresh(mine, path) {
  if (mine !== generation) return;
  const r = await call(path);
  if (mine !== generation || !r.ok) return;
  const fresh = document.createElement("div");
  fresh.innerHTML = await r.text();
  for (const region of fresh.querySelectorAll("[data-live]")) {
    const old = document.getElementById(region.id);
    if (!old) continue;
    const open = new Set([...old.querySelectorAll("details[open]")].map(key));
    const result = old.querySelector("#action-result");
    for (const d of region.querySelectorAll("details")) if (open.has(key(d))) d.open = true;
    if (result) {
      const slot = region.querySelector("#action-result");
      if (slot) slot.replaceWith(result);
    }
    old.replaceWith(region);
    enhance(region);
  }
}

function key(details) {
  return details.dataset.fetch || (details.querySelector("summary") || {}).textContent;
}

function keepLive(mine, path) {
  const region = view.querySelector("[data-live]");
  if (!region) return;
  if (region.dataset.live === "sse") { follow(mine, path, region.dataset.run); return; }
  const every = Number(region.dataset.live) || 5000;
  const tick = async () => {
    if (mine !== generation) return;
    if (!document.hidden) await refresh(mine, path).catch(() => {});
    setTimeout(tick, every);
  };
  setTimeout(tick, every);
}

// The run page: its journal over SSE; every batch of entries redraws it.
async function follow(mine, path, run) {
  const controller = new AbortController();
  stream = controller;
  let pending = null;
  const soon = () => {
    if (pending) return;
    pending = setTimeout(() => { pending = null; refresh(mine, path).catch(() => {}); }, 250);
  };
  try {
    const r = await call("/v1/runs/" + encodeURIComponent(run) + "/events", { signal: controller.signal });
    if (!r.ok || !r.body) throw new Error("HTTP " + r.status);
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      if (buffer.includes("\n\n")) {
        // An event (not a keep-alive comment) means the journal grew.
        if (/^data:/m.test(buffer)) soon();
        buffer = buffer.slice(buffer.lastIndexOf("\n\n") + 2);
      }
    }
    soon(); // the run ended: one last redraw
  } catch (e) {
    if (controller.signal.aborted || mine !== generation) return;
    // The stream broke (a restarted server): poll instead.
    const tick = async () => {
      if (mine !== generation) return;
      await refresh(mine, path).catch(() => {});
      setTimeout(tick, 3000);
    };
    setTimeout(tick, 3000);
  }
}

const VERBS = { cancel: "Cancel", pause: "Pause", resume: "Resume", retry: "Retry" };

// Actions: each asks first, then shows what Keel answered.
view.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button || button.disabled) return;
  const action = button.dataset.action, run = button.dataset.run;
  if (!confirm(VERBS[action] + " run " + run + "?")) return;
  const r = await call("/v1/runs/" + encodeURIComponent(run) + "/" + action, { method: "POST" });
  const slot = document.getElementById("action-result");
  if (r.ok) {
    const answer = await r.json();
    slot.textContent = VERBS[action] + ": " + answer.outcome.replace(/_/g, " ") + ".";
  } else {
    slot.textContent = VERBS[action] + " refused: " + await problemText(r);
  }
  // Follow the run again: a retried run's stream had ended with its failure.
  if (stream) stream.abort();
  follow(generation, fragmentPath(), run);
});

view.addEventListener("submit", async (event) => {
  const form = event.target;
  if (form.id === "run-filters") {
    event.preventDefault();
    const params = new URLSearchParams();
    for (const [k, v] of new FormData(form)) {
      let value = String(v).trim();
      // The time range: this browser's local time, sent as Unix ms.
      if (value && form.elements[k].type === "datetime-local") value = String(new Date(value).getTime());
      if (value) params.set(k, value);
    }
    const q = params.toString();
    location.hash = "#/runs" + (q ? "?" + q : "");
  } else if (form.id === "send-event") {
    event.preventDefault();
    const data = new FormData(form);
    const slot = document.getElementById("action-result");
    let body;
    try { body = JSON.stringify(JSON.parse(String(data.get("data") || "null"))); } catch (e) {
      slot.textContent = "The data is not JSON: " + e.message;
      return;
    }
    const k = String(data.get("key")).trim();
    if (!confirm("Send event " + k + "?")) return;
    const r = await call("/v1/events/" + encodeURIComponent(k), {
      method: "POST", headers: { "Content-Type": "application/json" }, body,
    });
    if (r.ok) {
      const answer = await r.json();
      slot.textContent = "Event sent: " + answer.woken.length + " run(s) woken.";
    } else {
      slot.textContent = "Event refused: " + await problemText(r);
    }
  }
});

window.addEventListener("hashchange", load);
showAccess();
load();
