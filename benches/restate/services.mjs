// Restate counterparts of examples/counter (Counter) and examples/steps (Steps), for the
// Kiln-vs-Restate comparison in benches/run.sh (BENCH_RESTATE=1). Plain JavaScript, no build step.
//
//   PORT=9080 [SERVICES=Counter,Steps] node services.mjs
//
// Serves the selected services (default: both) with the SDK's Node HTTP/2 endpoint on
// 127.0.0.1:$PORT. run.sh starts one process per service, like Kiln's counter.jar and steps.jar.
import * as restate from "@restatedev/restate-sdk";

// Virtual object `Counter`: `add(n)` (exclusive) adds n to state "count" and returns the new
// total; `get()` (shared) returns the total, 0 if never added to.
const counter = restate.object({
  name: "Counter",
  handlers: {
    add: async (ctx, n) => {
      const total = ((await ctx.get("count")) ?? 0) + n;
      ctx.set("count", total);
      return total;
    },
    get: restate.handlers.object.shared(async (ctx) => (await ctx.get("count")) ?? 0),
  },
});

// Service `Steps`: `threeStep(input)` runs three journaled steps ("<input>-1".."<input>-3") one
// after the other and returns their results joined by spaces.
const steps = restate.service({
  name: "Steps",
  handlers: {
    threeStep: async (ctx, input) => {
      const results = [];
      for (let k = 1; k <= 3; k++) {
        results.push(await ctx.run(`step-${k}`, () => `${input}-${k}`));
      }
      return results.join(" ");
    },
  },
});

const all = { Counter: counter, Steps: steps };
const names = (process.env.SERVICES ?? "Counter,Steps")
  .split(",")
  .map((s) => s.trim())
  .filter((s) => s.length > 0);
for (const n of names) {
  if (!(n in all)) {
    console.error(`services.mjs: unknown service ${JSON.stringify(n)}; known: ${Object.keys(all).join(",")}`);
    process.exit(2);
  }
}

const port = Number(process.env.PORT ?? 9080);
const host = process.env.BIND_HOST ?? "127.0.0.1";

// Own HTTP/2 server (rather than restate.serve) to bind to loopback only; createEndpointHandler
// uses bidirectional streaming over HTTP/2, as restate.serve does.
const http2 = await import("node:http2");
const server = http2.createServer(
  restate.createEndpointHandler({ services: names.map((n) => all[n]) }),
);
server.listen(port, host, () => {
  console.log(`services.mjs: ${names.join(",")} listening on http://${host}:${port}`);
});

// Restate keeps its HTTP/2 connections open, so server.close() would wait for them: just exit.
process.on("SIGTERM", () => process.exit(0));
process.on("SIGINT", () => process.exit(0));
