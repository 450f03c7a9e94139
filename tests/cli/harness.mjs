// The real gateway binary and the mock upstream on port 0, a fresh SQLite file, and helpers to
// read what the console recorded. Shared by the node:test files of tests/cli (see run.sh).
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, openSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

export const HERE = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(HERE, "..", "..");
export const BIN = join(HERE, "node_modules", ".bin");
const TC_BIN = process.env.TC_BIN ?? join(REPO, "target", "debug", "token-console");
const MOCK_BIN = process.env.MOCK_BIN ?? join(REPO, "target", "debug", "mock-upstream");
export const PROVIDER_KEY = "provider-secret-key-cli";
export const DEADLINE_MS = 60_000;

/** Starts `bin args`, resolves with the first stdout line starting with `prefix`. */
function startUntil(bin, args, prefix, options = {}) {
  const child = spawn(bin, args, { stdio: ["ignore", "pipe", options.stderr ?? "inherit"], ...options });
  return new Promise((resolveLine, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${bin} did not print ${JSON.stringify(prefix)} in time`));
    }, DEADLINE_MS);
    let found = false;
    createInterface({ input: child.stdout }).on("line", (line) => {
      if (!found && line.startsWith(prefix)) {
        found = true;
        clearTimeout(timer);
        resolveLine({ child, line: line.trim() });
      }
    });
    child.on("exit", (code) => {
      if (!found) {
        clearTimeout(timer);
        reject(new Error(`${bin} exited (${code}) before printing ${JSON.stringify(prefix)}`));
      }
    });
  });
}

/** A temporary directory that the test run owns. */
export function tempDir(name) {
  return mkdtempSync(join(tmpdir(), `tc-cli-${name}-`));
}

/**
 * The mock upstream and the gateway in front of it: OpenAI-shaped models (`gpt-*`) and every
 * Claude model name (`claude-*`) routed to the mock.
 */
export async function startStack() {
  const mock = await startUntil(MOCK_BIN, ["--port", "0", "--require-key", PROVIDER_KEY], "mock-upstream listening on ");
  const mockUrl = mock.line.replace("mock-upstream listening on ", "").trim();
  const dir = tempDir("gateway");
  const config = join(dir, "config.yaml");
  writeFileSync(
    config,
    [
      "port: 0",
      `database_url: sqlite://${join(dir, "tc.db")}`,
      "providers:",
      `  - { name: mock-openai, kind: openai, base_url: "${mockUrl}/v1", api_key: "${PROVIDER_KEY}", models: ["gpt-*", "mock-*"] }`,
      `  - { name: mock-anthropic, kind: anthropic, base_url: "${mockUrl}", api_key: "${PROVIDER_KEY}", models: ["claude-*"] }`,
      "",
    ].join("\n"),
  );
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith("CONSOLE_") && k !== "OPENAI_API_KEY" && k !== "ANTHROPIC_API_KEY"),
  );
  const stderr = openSync(join(dir, "stderr.log"), "w");
  const gateway = await startUntil(TC_BIN, ["--config", config], "token-console ready ", { cwd: dir, env, stderr });
  const fields = Object.fromEntries(gateway.line.split(/\s+/).slice(2).map((p) => p.split(/=(.*)/s).slice(0, 2)));
  return new Stack(mockUrl, fields.gateway, [mock.child, gateway.child]);
}

export class Stack {
  constructor(mockUrl, gatewayUrl, children) {
    this.mock = mockUrl;
    this.gateway = gatewayUrl;
    this.children = children;
  }

  stop() {
    for (const child of this.children) child.kill("SIGKILL");
  }

  /** A console API call; returns `data` of the `{code: 0, data}` envelope. */
  async api(method, path, body) {
    const response = await fetch(`${this.gateway}${path}`, {
      method,
      headers: { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const answer = await response.json();
    if (answer.code !== 0) throw new Error(`${method} ${path}: ${JSON.stringify(answer)}`);
    return answer.data;
  }

  /** A new console-issued key (its value), with optional limits. */
  async key(name, limits) {
    const key = await this.api("POST", "/api/console/keys", { name });
    if (limits) await this.api("PATCH", `/api/console/keys/${key.id}`, limits);
    return key.value;
  }

  /** The mock's statistics, with `reported`: the usage it put in its answers. */
  async mockStats() {
    return (await fetch(`${this.mock}/_mock/stats`)).json();
  }

  /** The requests the mock received, oldest first. */
  async mockRequests() {
    return (await fetch(`${this.mock}/_mock/requests`)).json();
  }

  /** Forgets the mock's requests and reported usage. */
  async resetMock() {
    await fetch(`${this.mock}/_mock/requests`, { method: "DELETE" });
  }

  /** The console's log rows of `keyName`, once their number stops growing past `atLeast`. */
  async logsOf(keyName, atLeast) {
    const started = Date.now();
    for (;;) {
      const rows = (await this.api("GET", "/api/console/logs?limit=200")).filter((r) => r.key_name === keyName);
      if (rows.length >= atLeast) return rows;
      if (Date.now() - started > DEADLINE_MS) throw new Error(`only ${rows.length} calls of ${keyName} recorded`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/** Runs a CLI to its end: `{code, stdout, stderr, ms}`; killed after `timeoutMs`. */
export function run(bin, args, { env, cwd, timeoutMs = DEADLINE_MS, input } = {}) {
  const started = Date.now();
  return new Promise((done) => {
    const child = spawn(bin, args, { env, cwd, stdio: [input === undefined ? "ignore" : "pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    if (input !== undefined) child.stdin.end(input);
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      done({ code, signal, stdout, stderr, ms: Date.now() - started });
    });
  });
}

/** The base environment for a CLI: no inherited keys or proxies, HOME in a temp dir. */
export function cliEnv(home, extra) {
  const keep = ["PATH", "LANG", "TERM", "TMPDIR", "SHELL"];
  const env = Object.fromEntries(keep.filter((k) => process.env[k]).map((k) => [k, process.env[k]]));
  return { ...env, HOME: home, XDG_CONFIG_HOME: join(home, ".config"), NO_COLOR: "1", CI: "1", ...extra };
}
