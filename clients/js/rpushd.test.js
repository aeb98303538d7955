// Unit tests of rpushd.js under node (node --test), with fake transports.
// The real thing, in Chromium against the daemon, is tests/test_browser.py.

import assert from "node:assert/strict";
import { afterEach, describe, test } from "node:test";

import {
  FrameDecoder,
  RpushdError,
  backoffDelay,
  parseId,
  subscribe,
} from "./rpushd.js";

const encoder = new TextEncoder();

function frame(text) {
  const payload = encoder.encode(text);
  const bytes = new Uint8Array(2 + payload.length);
  bytes[0] = payload.length >> 8;
  bytes[1] = payload.length & 0xff;
  bytes.set(payload, 2);
  return bytes;
}

function concat(...parts) {
  const bytes = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let at = 0;
  for (const part of parts) {
    bytes.set(part, at);
    at += part.length;
  }
  return bytes;
}

async function until(predicate, what, timeout = 2000) {
  const deadline = Date.now() + timeout;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

describe("FrameDecoder", () => {
  const texts = ["", '{"type":"hello"}', "", '{"a":"é€😀"}', "x".repeat(300)];
  const stream = concat(...texts.map(frame));

  test("decodes frames split at every possible byte", () => {
    for (let cut = 0; cut <= stream.length; cut += 1) {
      const decoder = new FrameDecoder();
      const got = [
        ...decoder.feed(stream.subarray(0, cut)),
        ...decoder.feed(stream.subarray(cut)),
      ];
      assert.deepEqual(got, texts, `cut at ${cut}`);
      assert.equal(decoder.pending, 0);
    }
  });

  test("decodes a stream fed one byte at a time", () => {
    const decoder = new FrameDecoder();
    const got = [];
    for (let i = 0; i < stream.length; i += 1) {
      got.push(...decoder.feed(stream.subarray(i, i + 1)));
    }
    assert.deepEqual(got, texts);
  });

  test("decodes the largest frame across chunks and keeps a partial tail", () => {
    const big = "y".repeat(0xffff);
    const bytes = concat(frame(big), frame("{}"), frame("tail"));
    const decoder = new FrameDecoder();
    assert.deepEqual(decoder.feed(bytes.subarray(0, 40000)), []);
    const middle = bytes.subarray(40000, bytes.length - 2);
    assert.deepEqual(decoder.feed(middle), [big, "{}"]);
    assert.equal(decoder.pending, 4);
    assert.deepEqual(decoder.feed(bytes.subarray(bytes.length - 2)), ["tail"]);
  });

  test("decodes many frames in one chunk in order", () => {
    const many = Array.from({ length: 5000 }, (_, i) => `{"n":${i}}`);
    assert.deepEqual(new FrameDecoder().feed(concat(...many.map(frame))), many);
  });
});

describe("helpers", () => {
  test("parseId splits epoch and sequence", () => {
    assert.deepEqual(parseId("1a2b3c4d-42"), { epoch: "1a2b3c4d", seq: 42 });
    assert.equal(parseId("1a2b3c4d"), null);
    assert.equal(parseId("XYZ-1"), null);
    assert.equal(parseId("1a2b3c4d-99999999999999999999"), null);
    assert.equal(parseId(42), null);
  });

  test("backoffDelay grows exponentially to its cap, with full jitter", () => {
    const top = () => 0.999999;
    assert.equal(backoffDelay(0, 500, 30000, top), 499);
    assert.equal(backoffDelay(3, 500, 30000, top), 3999);
    assert.equal(backoffDelay(10, 500, 30000, top), 29999);
    assert.equal(backoffDelay(1000, 500, 30000, top), 29999);
    assert.equal(backoffDelay(5, 500, 30000, () => 0), 0);
  });
});

// A WebSocket stand-in that the tests drive by hand.
class FakeSocket {
  static all = [];

  constructor(url) {
    this.url = new URL(url);
    this.closedWith = null;
    FakeSocket.all.push(this);
  }

  get last() {
    return this.url.searchParams.get("last_id");
  }

  send(envelope) {
    this.onmessage?.({ data: JSON.stringify(envelope) });
  }

  // The daemon's hello names its newest id, at least every id it sent.
  hello(heartbeat = 15, epoch = "aaaa0001", lastId = `${epoch}-0`) {
    this.send({ type: "hello", heartbeat_secs: heartbeat, epoch, last_id: lastId });
  }

  message(id, channel = "a", message = { id }) {
    this.send({ type: "message", id, channel, message });
  }

  serverClose(code, reason = "") {
    this.onclose?.({ code, reason });
  }

  close(code) {
    this.closedWith = code;
  }
}

// Every subscription a test opens is closed after it, passed or failed,
// so that no timer of a failed test keeps the process alive.
const opened = [];
afterEach(() => {
  for (const subscription of opened.splice(0)) subscription.close();
});

function record(options = {}) {
  const seen = { messages: [], gaps: [], statuses: [], tokens: 0 };
  const subscription = subscribe({
    baseUrl: "https://example.test/push",
    channels: ["a", "b"],
    transport: "websocket",
    initialDelay: 1,
    maxDelay: 4,
    token: async (channel) => {
      seen.tokens += 1;
      return `token-${channel}-${seen.tokens}`;
    },
    onMessage: (message, { channel, id }) => seen.messages.push([channel, id]),
    onGap: (gap) => seen.gaps.push(gap),
    onStatus: (status) => seen.statuses.push(status),
    ...options,
  });
  opened.push(subscription);
  return { seen, subscription };
}

describe("Subscription over a WebSocket", () => {
  globalThis.WebSocket = FakeSocket;
  afterEach(() => {
    FakeSocket.all.length = 0;
  });

  async function socket(n) {
    await until(() => FakeSocket.all.length > n, `connection ${n + 1}`);
    return FakeSocket.all[n];
  }

  test("connects with paired channels and tokens", async () => {
    record();
    const first = await socket(0);
    assert.equal(first.url.href.split("?")[0], "wss://example.test/push/api/ws");
    assert.deepEqual(first.url.searchParams.getAll("channel"), ["a", "b"]);
    const tokens = first.url.searchParams.getAll("token");
    assert.deepEqual(tokens, ["token-a-1", "token-b-2"]);
    assert.equal(first.last, null);
  });

  test("delivers in order, drops repeated ids and resumes from the last", async () => {
    const { seen, subscription } = record();
    const first = await socket(0);
    first.hello();
    first.message("aaaa0001-1", "a");
    first.message("aaaa0001-2", "b");
    first.serverClose(1006);

    const second = await socket(1);
    assert.equal(second.last, "aaaa0001-2");
    assert.equal(seen.tokens, 4, "each connection asks for fresh tokens");
    second.hello(15, "aaaa0001", "aaaa0001-2");
    second.message("aaaa0001-2", "b");
    second.message("aaaa0001-1", "a");
    second.message("aaaa0001-3", "a");
    assert.deepEqual(seen.messages, [
      ["a", "aaaa0001-1"],
      ["b", "aaaa0001-2"],
      ["a", "aaaa0001-3"],
    ]);
    assert.equal(subscription.lastId, "aaaa0001-3");
  });

  test("a new epoch's ids are delivered after its gaps", async () => {
    const { seen } = record({ lastId: "aaaa0001-9" });
    const first = await socket(0);
    assert.equal(first.last, "aaaa0001-9");
    first.hello(15, "bbbb0002");
    first.send({ type: "gap", channel: "a", reason: "other_epoch" });
    first.message("bbbb0002-1", "a");
    assert.deepEqual(seen.gaps, [{ channel: "a", reason: "other_epoch" }]);
    assert.deepEqual(seen.messages, [["a", "bbbb0002-1"]]);
  });

  test("without a last id, resumes from the hello's position", async () => {
    record();
    const first = await socket(0);
    first.hello(15, "aaaa0001", "aaaa0001-7");
    first.serverClose(1001);
    assert.equal((await socket(1)).last, "aaaa0001-7");
  });

  test("adopts the hello's position only once the replay is complete", async () => {
    const { seen } = record({ transport: "websocket", lastId: "aaaa0001-3" });
    // Cut during the replay: resume from the last message received.
    const first = await socket(0);
    first.hello(15, "aaaa0001", "aaaa0001-9");
    first.message("aaaa0001-5");
    first.serverClose(1006);
    const second = await socket(1);
    assert.equal(second.last, "aaaa0001-5");
    // A live message past the position proves the replay complete.
    second.hello(15, "aaaa0001", "aaaa0001-9");
    second.message("aaaa0001-7");
    second.message("aaaa0001-10");
    second.serverClose(1006);
    assert.equal((await socket(2)).last, "aaaa0001-10");
    assert.deepEqual(
      seen.messages.map(([, id]) => id),
      ["aaaa0001-5", "aaaa0001-7", "aaaa0001-10"],
    );
  });

  test("an id from the future is dropped for the hello's position", async () => {
    const { seen } = record({ lastId: "aaaa0001-99" });
    const first = await socket(0);
    first.hello(15, "aaaa0001", "aaaa0001-5");
    first.send({ type: "gap", channel: "a", reason: "unknown" });
    first.message("aaaa0001-4");
    first.message("aaaa0001-6");
    assert.deepEqual(
      seen.messages.map(([, id]) => id),
      ["aaaa0001-4", "aaaa0001-6"],
    );
    assert.deepEqual(seen.gaps, [{ channel: "a", reason: "unknown" }]);
  });

  test("4400 is final, with the error passed to onStatus", async () => {
    let failure = null;
    const { subscription } = record({
      onStatus: (status, detail) => {
        if (status === "failed") failure = detail.error;
      },
    });
    (await socket(0)).serverClose(4400, "too many channels");
    assert.ok(failure instanceof RpushdError);
    assert.equal(failure.code, 4400);
    assert.equal(subscription.status, "failed");
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(FakeSocket.all.length, 1);
  });

  test("close() closes the socket and silences every callback", async () => {
    const { seen, subscription } = record();
    const first = await socket(0);
    first.hello();
    const before = structuredClone(seen);
    subscription.close();
    assert.equal(first.closedWith, 1000);
    first.message("aaaa0001-1");
    first.serverClose(1006);
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.deepEqual(seen, before);
    assert.equal(FakeSocket.all.length, 1);
    assert.equal(subscription.status, "closed");
  });

  test("a close envelope for an expired token reconnects", async () => {
    record();
    const first = await socket(0);
    first.hello();
    first.send({ type: "close", reason: "token_expired" });
    assert.equal(first.closedWith, 1000);
    await socket(1);
  });

  test("invalid options throw at once", () => {
    const token = async () => "t";
    assert.throws(() => subscribe({ channels: [], token }), TypeError);
    assert.throws(() => subscribe({ channels: ["a b"], token }), TypeError);
    assert.throws(() => subscribe({ channels: ["a"] }), TypeError);
    assert.throws(
      () => subscribe({ channels: ["a"], token, transport: "carrier-pigeon" }),
      TypeError,
    );
  });

  test("delays and callbacks that can never work throw at once", () => {
    const token = async () => "t";
    const options = (extra) => () => subscribe({ channels: ["a"], token, ...extra });
    for (const initialDelay of [0, -1, "x", Number.NaN, Infinity]) {
      assert.throws(options({ initialDelay }), TypeError, String(initialDelay));
    }
    assert.throws(options({ maxDelay: 0 }), TypeError);
    assert.throws(options({ initialDelay: 1000, maxDelay: 10 }), TypeError);
    assert.throws(options({ connectTimeout: 0 }), TypeError);
    assert.throws(options({ healthyAfter: -1 }), TypeError);
    for (const name of ["onMessage", "onGap", "onStatus"]) {
      assert.throws(options({ [name]: 5 }), TypeError, name);
    }
    options({ onMessage: null, healthyAfter: 0 })().close();
  });
});

describe("Subscription over the length-prefixed stream", () => {
  function fakeFetch(answers) {
    const requests = [];
    globalThis.fetch = async (url, init) => {
      requests.push({ url: String(url), body: JSON.parse(init.body), init });
      const answer = answers.shift();
      if (typeof answer === "number") {
        return new Response('{"error":"nope"}', { status: answer });
      }
      if (typeof answer === "string") {
        return new Response(answer, { status: 502 });
      }
      const body = new ReadableStream({
        start(controller) {
          answer(controller);
          const abort = () => controller.error(new Error("aborted"));
          init.signal.addEventListener("abort", abort);
        },
      });
      return new Response(body, { status: 200 });
    };
    return requests;
  }

  const hello = (heartbeat, lastId = "e1-0") =>
    frame(
      JSON.stringify({
        type: "hello",
        heartbeat_secs: heartbeat,
        epoch: "e1",
        last_id: lastId,
      }),
    );
  const message = (seq) =>
    frame(
      JSON.stringify({ type: "message", id: `e1-${seq}`, channel: "a", message: seq }),
    );

  test("posts subscriptions, decodes envelopes, resumes after the end", async () => {
    const requests = fakeFetch([
      (body) => {
        body.enqueue(concat(hello(15), frame(""), message(1)).subarray(0, 30));
        body.enqueue(concat(hello(15), frame(""), message(1)).subarray(30));
        body.close();
      },
      (body) => body.enqueue(concat(hello(15, "e1-1"), message(1), message(2))),
    ]);
    const { seen } = record({ transport: "stream" });
    await until(() => seen.messages.length === 2, "two messages");
    assert.equal(requests[0].url, "https://example.test/push/api/stream");
    assert.deepEqual(requests[0].body, {
      subscriptions: [
        { channel: "a", token: "token-a-1" },
        { channel: "b", token: "token-b-2" },
      ],
    });
    assert.equal(requests[1].body.last_id, "e1-1");
    assert.deepEqual(seen.messages, [
      ["a", "e1-1"],
      ["a", "e1-2"],
    ]);
  });

  test("a heartbeat after the replay adopts the hello's position", async () => {
    const requests = fakeFetch([
      (body) => {
        body.enqueue(concat(hello(15, "e1-8"), message(2), frame("")));
        body.close();
      },
      (body) => {
        body.enqueue(concat(hello(15, "e1-8"), message(9)));
        body.close();
      },
      () => {},
    ]);
    const { seen } = record({ transport: "stream", lastId: "e1-1" });
    await until(() => requests.length === 3, "a third connection");
    assert.equal(requests[0].body.last_id, "e1-1");
    assert.equal(requests[1].body.last_id, "e1-8");
    assert.equal(requests[2].body.last_id, "e1-9");
    assert.deepEqual(
      seen.messages.map(([, id]) => id),
      ["e1-2", "e1-9"],
    );
  });

  test("a refused token is retried, a malformed request is not", async () => {
    const requests = fakeFetch([401, 400]);
    const { seen } = record({ transport: "stream" });
    await until(() => seen.statuses.includes("failed"), "failure");
    assert.equal(requests.length, 2);
    assert.deepEqual(seen.statuses, ["connecting", "waiting", "connecting", "failed"]);
  });

  test("a refusal says the daemon's reason, not a proxy's error page", async () => {
    fakeFetch([401, "<html><body><h1>502 Bad Gateway</h1></body></html>", 400]);
    const errors = [];
    const onStatus = (status, { error }) => errors.push(error);
    record({ transport: "stream", onStatus });
    await until(() => errors.filter(Boolean).length === 3, "three refusals");
    assert.deepEqual(
      errors.filter(Boolean).map((error) => error.message),
      [
        "stream refused: HTTP 401 nope",
        "stream refused: HTTP 502",
        "stream refused: HTTP 400 nope",
      ],
    );
  });

  test("a stream silent for 2.5 heartbeats is dropped and replaced", async () => {
    const requests = fakeFetch([
      (body) => body.enqueue(concat(hello(0.02), message(1))),
      (body) => body.enqueue(hello(15)),
    ]);
    const { seen } = record({ transport: "stream" });
    await until(() => requests.length === 2, "a second connection", 1000);
    assert.equal(requests[1].body.last_id, "e1-1");
    await until(() => seen.statuses.at(-1) === "open", "open");
  });
});
