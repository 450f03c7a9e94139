// The openai npm SDK's `responses.stream` helper through the gateway (the mock's full event
// sequence: item and content-part added/done, output_text.done, completed with usage).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { startStack } from "./harness.mjs";

let stack;
before(async () => {
  stack = await startStack();
});
after(() => stack?.stop());

test("openai npm responses.stream gets every event and the final response; usage is recorded", async () => {
  const key = await stack.key("openai-node");
  const client = new OpenAI({ apiKey: key, baseURL: `${stack.gateway}/v1`, maxRetries: 0 });
  const stream = client.responses.stream({ model: "gpt-4o", input: "the node stream helper", max_output_tokens: 7 });
  const kinds = [];
  let text = "";
  stream.on("event", (event) => kinds.push(event.type));
  stream.on("response.output_text.delta", (event) => (text += event.delta));
  const final = await stream.finalResponse();

  assert.equal(final.output_text, "tok0 tok1 tok2 tok3 tok4 tok5 tok6");
  assert.equal(text, final.output_text);
  for (const kind of [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
  ]) {
    assert.ok(kinds.includes(kind), `${kind} is sent`);
  }
  assert.equal(kinds.at(-1), "response.completed");

  const [row] = await stack.logsOf("openai-node", 1);
  assert.equal(row.prompt_tokens, final.usage.input_tokens);
  assert.equal(row.completion_tokens, final.usage.output_tokens);
  assert.equal(row.cache_read_tokens, final.usage.input_tokens_details.cached_tokens);
  assert.equal(row.reasoning_tokens, final.usage.output_tokens_details.reasoning_tokens);
  assert.equal(row.tokens, final.usage.total_tokens);
  assert.equal(row.stream, true);
});
