// The scenario tests/it/recipes.rs runs against a live daemon.
"use strict";
const express = require("express");
const { createClient } = require("./tenantwatch");

async function main() {
  const tw = createClient({
    url: process.env.TW_URL,
    udp: process.env.TW_UDP,
    timeoutMs: Number(process.env.TW_TIMEOUT_MS) || 50,
  });
  const app = express();
  app.use(tw.middleware((req) => req.get("X-Tenant")));
  app.get("/patients/:id", async (req, res) => {
    await tw.timed(req, "read", async () => ({ rowCount: 3 }));
    await tw.timed(req, "write", async () => ({ rowCount: 1 }));
    res.send("ok");
  });
  const server = app.listen(0, "127.0.0.1");
  await new Promise((r) => server.once("listening", r));
  const base = `http://127.0.0.1:${server.address().port}`;
  const out = {};
  for (const [tenant, n] of [["clinic1", 5], ["tiny", 3]]) {
    out[tenant] = [];
    for (let i = 0; i < n; i++) {
      const res = await fetch(`${base}/patients/7`, { headers: { "X-Tenant": tenant } });
      await res.text();
      out[tenant].push(res.status);
      if (res.status === 429) {
        out.retry_after = res.headers.get("retry-after");
        out.ratelimit = res.headers.get("ratelimit");
      }
    }
  }
  server.close();
  // The cost of one check, for docs/integration.md: the median of 200.
  const took = [];
  for (let i = 0; i < 200; i++) {
    const start = process.hrtime.bigint();
    await tw.check("bench");
    took.push(Number(process.hrtime.bigint() - start) / 1000);
  }
  took.sort((a, b) => a - b);
  out.check_us_median = Math.round(took[100]);
  out.failures = tw.stats.failures;
  await tw.close();
  console.log(JSON.stringify(out));
}
main();
