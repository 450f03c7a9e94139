// Claude Code (`claude -p`, from npm) against the gateway with the mock upstream behind it.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { BIN, startStack, run, cliEnv, tempDir } from "./harness.mjs";

let stack;
before(async () => {
  stack = await startStack();
});
after(() => stack?.stop());

/** `claude -p PROMPT` with the key, HOME in a temp dir and every non-essential call off. */
function claude(key, prompt, timeoutMs) {
  const home = tempDir("claude-home");
  const env = cliEnv(home, {
    ANTHROPIC_BASE_URL: stack.gateway,
    ANTHROPIC_API_KEY: key,
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: "1",
    DISABLE_TELEMETRY: "1",
    DISABLE_AUTOUPDATER: "1",
    DISABLE_ERROR_REPORTING: "1",
    DISABLE_BUG_COMMAND: "1",
    DISABLE_COST_WARNINGS: "1",
    CLAUDE_CONFIG_DIR: join(home, ".claude"),
  });
  return run(join(BIN, "claude"), ["-p", prompt], { env, cwd: home, timeoutMs });
}

test("claude -p answers through the gateway and every token the mock reported is recorded", async () => {
  const key = await stack.key("claude-code");
  const before = (await stack.mockStats()).reported;
  const result = await claude(key, "say hi", 120_000);
  assert.equal(result.code, 0, `claude failed:\n${result.stdout}\n${result.stderr}`);
  assert.match(result.stdout, /tok0 tok1 tok2/, "prints the mock's answer");

  const reported = (await stack.mockStats()).reported;
  const answers = reported.answers - before.answers;
  assert.ok(answers >= 1, "Claude Code's calls reached the mock");
  const rows = await stack.logsOf("claude-code", answers);
  const calls = rows.filter((r) => r.endpoint === "/v1/messages");
  assert.equal(calls.length, answers, "one record per answered call");
  for (const row of calls) {
    assert.equal(row.status, 200, JSON.stringify(row));
    assert.equal(row.estimated, false, "usage came from the mock");
  }
  const sum = (field) => calls.reduce((n, r) => n + r[field], 0);
  const delta = (field) => reported[field] - before[field];
  assert.equal(sum("completion_tokens"), delta("output_tokens"));
  assert.equal(sum("cache_read_tokens"), delta("cache_read_tokens"));
  assert.equal(sum("cache_creation_tokens"), delta("cache_creation_tokens"));
  // Every input token the provider processed (uncached + cache read + cache write) and every
  // output token: one meaning of `prompt_tokens` and `tokens` across protocols (issue 15, item 1).
  const input = delta("input_tokens") + delta("cache_read_tokens") + delta("cache_creation_tokens");
  assert.equal(sum("prompt_tokens"), input);
  assert.equal(sum("tokens"), delta("tokens"));
});

test("claude -p with a spent budget exits at once with the gateway's message", async () => {
  const key = await stack.key("claude-spent", { token_limit: 1 });
  const result = await claude(key, "say hi", 15_000);
  assert.notEqual(result.code, 0, "a refused call is a failure");
  assert.ok(result.ms < 10_000, `claude -p took ${result.ms} ms to give up (retrying?)`);
  assert.match(result.stdout + result.stderr, /token budget is used up/);
});
