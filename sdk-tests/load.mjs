// A small load of an Upstash SDK app through Keel (the figures of issue 14's
// closing note): N runs of app.mjs's three-step `sequential` workflow started
// with client.trigger, C at a time; each run's latency is Keel's finished -
// created time; CPU is read from /proc for the Keel server and the app.
//
//   KEEL=http://127.0.0.1:7400 APP=http://127.0.0.1:3000 TOKEN=… \
//   KEEL_PID=… APP_PID=… RUNS=500 CONCURRENCY=50 node load.mjs
import fs from "node:fs";
import { Client } from "@upstash/workflow";

const keel = process.env.KEEL;
const app = process.env.APP;
const token = process.env.TOKEN ?? "";
const runs = Number(process.env.RUNS ?? 500);
const concurrency = Number(process.env.CONCURRENCY ?? 50);
const client = new Client({ baseUrl: keel, token });
const ticks = 100; // USER_HZ

const cpu = (pid) => {
  if (!pid) return 0;
  const fields = fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) / ticks; // utime + stime, seconds
};
const headers = { authorization: `Bearer ${token}` };

async function one(i) {
  const { workflowRunId } = await client.trigger({ url: `${app}/plain/sequential`, body: { n: i } });
  for (;;) {
    const response = await fetch(`${keel}/v1/runs/${workflowRunId}/result?wait=60s`, { headers });
    if (response.status === 200) break;
  }
  const run = await (await fetch(`${keel}/v1/runs/${workflowRunId}`, { headers })).json();
  if (run.status !== "completed" || run.output !== `c(b(a(${i})))`) throw new Error(`run ${workflowRunId}: ${JSON.stringify(run)}`);
  return run.finished_at_ms - run.created_at_ms;
}

const cpuBefore = { keel: cpu(process.env.KEEL_PID), app: cpu(process.env.APP_PID) };
const started = Date.now();
const latencies = [];
let next = 0;
await Promise.all(
  Array.from({ length: concurrency }, async () => {
    while (next < runs) {
      const i = next++;
      latencies.push(await one(i));
    }
  }),
);
const seconds = (Date.now() - started) / 1000;
const cpuAfter = { keel: cpu(process.env.KEEL_PID), app: cpu(process.env.APP_PID) };
latencies.sort((a, b) => a - b);
const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))];
console.log(
  JSON.stringify({
    runs,
    concurrency,
    seconds: Number(seconds.toFixed(2)),
    runs_per_s: Number((runs / seconds).toFixed(1)),
    p50_ms: at(0.5),
    p99_ms: at(0.99),
    keel_cpu_s: Number((cpuAfter.keel - cpuBefore.keel).toFixed(2)),
    app_cpu_s: Number((cpuAfter.app - cpuBefore.app).toFixed(2)),
  }),
);
