// Codex CLI (`codex exec`, from npm) with a custom provider on the gateway's /v1/responses.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { BIN, startStack, run, cliEnv, tempDir } from "./harness.mjs";

let stack;
before(async () => {
  stack = await startStack();
});
after(() => stack?.stop());

/** `codex exec PROMPT` with a CODEX_HOME whose config.toml names the gateway as provider `tc`. */
function codex(key, prompt) {
  const home = tempDir("codex-home");
  const codexHome = join(home, ".codex");
  mkdirSync(codexHome, { recursive: true });
  writeFileSync(
    join(codexHome, "config.toml"),
    [
      'model = "gpt-mock-codex"',
      'model_provider = "tc"',
      "",
      "[model_providers.tc]",
      'name = "token-console"',
      `base_url = "${stack.gateway}/v1"`,
      'env_key = "TC_KEY"',
      'wire_api = "responses"',
      "request_max_retries = 0",
      "stream_max_retries = 0",
      "",
    ].join("\n"),
  );
  const env = cliEnv(home, { CODEX_HOME: codexHome, TC_KEY: key, RUST_LOG: "error" });
  const args = ["exec", "--skip-git-repo-check", "--sandbox", "read-only", prompt];
  return run(join(BIN, "codex"), args, { env, cwd: home, timeoutMs: 120_000, input: "" });
}

test("codex exec answers through the gateway and every token the mock reported is recorded", async () => {
  const key = await stack.key("codex");
  const before = (await stack.mockStats()).reported;
  const result = await codex(key, "say hi");
  assert.equal(result.code, 0, `codex failed:\n${result.stdout}\n${result.stderr}`);
  assert.match(result.stdout, /tok0 tok1 tok2/, "prints the mock's answer");

  const reported = (await stack.mockStats()).reported;
  const answers = reported.answers - before.answers;
  assert.ok(answers >= 1, "Codex's calls reached the mock");
  const rows = await stack.logsOf("codex", answers);
  const calls = rows.filter((r) => r.endpoint === "/v1/responses" && r.status === 200);
  assert.equal(calls.length, answers, "one record per answered call");
  const sum = (field) => calls.reduce((n, r) => n + r[field], 0);
  assert.equal(sum("tokens"), reported.tokens - before.tokens);
  const delta = (field) => reported[field] - before[field];
  // The mock reports OpenAI's cached input tokens apart from the uncached ones.
  assert.equal(sum("prompt_tokens"), delta("input_tokens") + delta("cache_read_tokens"));
  assert.equal(sum("cache_read_tokens"), delta("cache_read_tokens"));
  assert.equal(sum("reasoning_tokens"), delta("reasoning_tokens"));
  assert.equal(sum("completion_tokens"), delta("output_tokens"));
  assert.ok(calls.every((r) => r.estimated === false && r.stream === true));
});

test("codex exec with a spent budget prints its quota error", async () => {
  const key = await stack.key("codex-spent", { token_limit: 1 });
  const result = await codex(key, "say hi");
  assert.notEqual(result.code, 0, "a refused call is a failure");
  assert.match(result.stdout + result.stderr, /quota/i);
});
