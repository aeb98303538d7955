// rpushd browser client: resumable streams over three transports.
//
// A dependency-free ES module for current browsers. It speaks the wire
// format of docs/STREAMS.md: envelopes (hello, message, gap, close), message
// ids "EPOCH-SEQ", and resume with the last id seen. See README.md beside
// this file for the API and the choices behind it.

const CHANNEL_NAME = /^[A-Za-z0-9:_.-]{1,191}$/;
const MESSAGE_ID = /^([0-9a-f]+)-([0-9]+)$/;
const TRANSPORTS = new Set(["stream", "sse", "websocket"]);

// A stream is declared dead once it has been silent for this many
// heartbeat intervals: one late heartbeat is tolerated, two are not.
const SILENCE_FACTOR = 2.5;

// A reconnection asked for "at once" (an expired token) waits like any
// other unless the connection it replaces lasted this long, so that a
// token that is already stale cannot drive a tight reconnection loop.
const IMMEDIATE_AFTER_MS = 1000;

// HTTP statuses that retrying cannot cure: the request itself is wrong
// (bad channel name, too many channels, no such endpoint).
const FATAL_STATUSES = new Set([400, 404, 405, 413, 415, 422]);

const DEFAULTS = {
  transport: "stream",
  lastId: null,
  initialDelay: 500,
  maxDelay: 30000,
  healthyAfter: 10000,
  connectTimeout: 15000,
};

/**
 * Subscribe to one or more channels; returns a Subscription.
 *
 * Throws a TypeError at once for options that can never work (no channel,
 * an invalid channel name, an unknown transport, no token function, a
 * callback that is no function, a delay that is no positive number).
 */
export function subscribe(options) {
  return new Subscription(options);
}

// Each timing option and the least it may be: a zero or negative delay
// would reconnect in a tight loop against a daemon that refuses.
const TIMINGS = { initialDelay: 1, maxDelay: 1, healthyAfter: 0, connectTimeout: 1 };
const CALLBACKS = ["onMessage", "onGap", "onStatus"];

function checkTimings(options) {
  for (const [name, least] of Object.entries(TIMINGS)) {
    const value = options[name];
    if (typeof value !== "number" || !Number.isFinite(value) || value < least) {
      throw new TypeError(`rpushd: ${name} must be a number of ms, at least ${least}`);
    }
  }
  if (options.maxDelay < options.initialDelay) {
    throw new TypeError("rpushd: maxDelay must not be below initialDelay");
  }
}

function checkCallbacks(options) {
  for (const name of CALLBACKS) {
    const callback = options[name];
    if (callback !== undefined && callback !== null && typeof callback !== "function") {
      throw new TypeError(`rpushd: ${name} must be a function`);
    }
  }
}

/** A message id split into its epoch and sequence number, or null. */
export function parseId(id) {
  const match = typeof id === "string" ? MESSAGE_ID.exec(id) : null;
  if (match === null) return null;
  const seq = Number(match[2]);
  return Number.isSafeInteger(seq) ? { epoch: match[1], seq } : null;
}

// Whether parsed id `a` is past parsed id `b`. An id of another epoch
// counts as newer: the daemon only ever sends ids of its current run.
function isNewer(a, b) {
  if (a === null) return false;
  return b === null || a.epoch !== b.epoch || a.seq > b.seq;
}

/**
 * The wait before reconnection attempt number `attempt` (0 first):
 * "full jitter", uniform between 0 and an exponentially growing bound.
 */
export function backoffDelay(attempt, initialDelay, maxDelay, random = Math.random) {
  const bound = Math.min(maxDelay, initialDelay * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * bound);
}

/**
 * Splits a byte stream into frames: a 2-byte big-endian length, then that
 * many bytes of UTF-8 JSON. `feed` returns the complete frames' texts in
 * order, "" for a heartbeat (a zero-length frame).
 *
 * Whole frames are decoded straight from the received chunk; only a frame
 * cut by a chunk boundary is copied, into one buffer the size of the
 * largest possible frame, so the cost is linear in the bytes received.
 */
export class FrameDecoder {
  static MAX_FRAME = 2 + 0xffff;

  #partial = null; // Uint8Array(MAX_FRAME), allocated on first need
  #held = 0; // bytes of the cut frame held in #partial
  #text = new TextDecoder();

  /** Bytes held of a frame not yet complete. */
  get pending() {
    return this.#held;
  }

  feed(chunk) {
    const frames = [];
    let offset = 0;

    // Complete the frame held from earlier chunks, byte ranges at a time:
    // first its length prefix, then exactly the rest of its payload.
    while (this.#held > 0 && offset < chunk.length) {
      const wanted = this.#held < 2 ? 2 : 2 + this.#size(this.#partial, 0);
      const take = Math.min(wanted - this.#held, chunk.length - offset);
      this.#partial.set(chunk.subarray(offset, offset + take), this.#held);
      this.#held += take;
      offset += take;
      if (this.#held >= 2 && this.#held === 2 + this.#size(this.#partial, 0)) {
        frames.push(this.#decode(this.#partial, 0, this.#held));
        this.#held = 0;
      }
    }

    while (chunk.length - offset >= 2) {
      const end = offset + 2 + this.#size(chunk, offset);
      if (end > chunk.length) break;
      frames.push(this.#decode(chunk, offset, end));
      offset = end;
    }

    if (offset < chunk.length) {
      this.#partial ??= new Uint8Array(FrameDecoder.MAX_FRAME);
      this.#partial.set(chunk.subarray(offset), this.#held);
      this.#held += chunk.length - offset;
    }
    return frames;
  }

  #size(bytes, at) {
    return (bytes[at] << 8) | bytes[at + 1];
  }

  #decode(bytes, start, end) {
    return end - start === 2 ? "" : this.#text.decode(bytes.subarray(start + 2, end));
  }
}

/** Raised for an answer that retrying cannot cure, and passed to onStatus. */
export class RpushdError extends Error {
  constructor(message, { status = null, code = null } = {}) {
    super(message);
    this.name = "RpushdError";
    this.status = status; // HTTP status, when the server answered one
    this.code = code; // WebSocket close code, for that transport
  }
}

/**
 * One subscription: keeps a connection to the daemon open, resumes it
 * after every interruption, and hands messages to the application.
 *
 * Statuses, reported through onStatus(status, detail):
 *   "connecting"  a connection is being made (tokens asked for, request sent)
 *   "open"        the daemon said hello; messages flow
 *   "waiting"     the connection ended; another comes after detail.delay ms
 *                 (detail.error says why the last one ended)
 *   "failed"      the daemon refused the request as malformed; no retry
 * After close(), `status` is "closed" and no callback runs again.
 */
export class Subscription {
  #options;
  #channels;
  #status = "idle";
  #closed = false;

  // Where a new connection resumes (last_id): the newest id known to be
  // covered, by a delivered message or by a hello's position. Ids increase
  // across all channels of one daemon run, so one id serves them all.
  #lastId = null;
  // The last message delivered, as parseId gives it: ids at or below it in
  // its epoch are never delivered again.
  #delivered = null;
  // A hello's position not yet adopted, because the replay sent after it
  // may still be on its way (see #hello), and how many of its items are.
  #pendingPosition = null;
  #replayLeft = 0;

  #link = null; // the current connection: { close() }
  #attempts = 0; // failed connections since the last healthy one
  #retryTimer = null;
  #silenceTimer = null;
  #lastActivity = 0; // performance.now() of the last frame received
  #openedAt = null; // when the current connection said hello
  #heartbeatMs = null;

  constructor(options) {
    // An option given as undefined keeps its default.
    const given = Object.entries(options ?? {}).filter(([, v]) => v !== undefined);
    this.#options = { ...DEFAULTS, ...Object.fromEntries(given) };
    const { channels, token, transport, lastId } = this.#options;
    if (!Array.isArray(channels) || channels.length === 0) {
      throw new TypeError("rpushd: channels must be a non-empty array");
    }
    for (const channel of channels) {
      if (typeof channel !== "string" || !CHANNEL_NAME.test(channel)) {
        throw new TypeError(`rpushd: invalid channel name ${JSON.stringify(channel)}`);
      }
    }
    if (typeof token !== "function") {
      throw new TypeError("rpushd: token must be a function (channel) => token");
    }
    if (!TRANSPORTS.has(transport)) {
      throw new TypeError(`rpushd: unknown transport ${JSON.stringify(transport)}`);
    }
    checkTimings(this.#options);
    checkCallbacks(this.#options);
    this.#channels = [...new Set(channels)];
    if (lastId !== null && lastId !== undefined) {
      this.#lastId = String(lastId);
      this.#delivered = parseId(this.#lastId);
    }
    // Connect once subscribe() has returned, so that callbacks can use the
    // subscription it returns.
    queueMicrotask(() => this.#closed || this.#connect());
  }

  /** "connecting", "open", "waiting", "failed" or "closed". */
  get status() {
    return this.#status;
  }

  /** The id a new connection would resume from, or null before any. */
  get lastId() {
    return this.#lastId;
  }

  /** Stop for good: close the connection, cancel timers, no more callbacks. */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#status = "closed";
    this.#endLink();
    clearTimeout(this.#retryTimer);
  }

  // Connecting.

  async #connect() {
    this.#setStatus("connecting");
    // Each attempt owns a fresh object; callbacks of a superseded attempt
    // compare it with #link and do nothing.
    const attempt = { close() {} };
    this.#link = attempt;
    this.#armSilenceTimer(this.#options.connectTimeout);

    let tokens;
    try {
      tokens = await Promise.all(
        this.#channels.map((channel) => this.#options.token(channel)),
      );
    } catch (error) {
      if (this.#link === attempt) this.#linkEnded(attempt, { retry: "backoff", error });
      return;
    }
    if (this.#link !== attempt) return;

    const subscriptions = this.#channels.map((channel, i) => ({
      channel,
      token: String(tokens[i]),
    }));
    const events = {
      envelope: (text) => this.#linkActive(attempt) && this.#receive(attempt, text),
      heartbeat: () => this.#linkActive(attempt) && this.#heartbeat(),
      end: (outcome) => this.#linkActive(attempt) && this.#linkEnded(attempt, outcome),
    };
    const open = { stream: openStream, sse: openEventSource, websocket: openWebSocket };
    try {
      attempt.close = open[this.#options.transport](
        this.#options.baseUrl,
        subscriptions,
        this.#lastId,
        events,
      ).close;
    } catch (error) {
      // new WebSocket() throws on a malformed URL: a configuration error.
      this.#linkEnded(attempt, { retry: "never", error });
    }
  }

  #linkActive(attempt) {
    return !this.#closed && this.#link === attempt;
  }

  #endLink() {
    const link = this.#link;
    this.#link = null;
    clearTimeout(this.#silenceTimer);
    link?.close();
  }

  #linkEnded(attempt, { retry, error }) {
    const openFor = this.#openedAt === null ? 0 : performance.now() - this.#openedAt;
    this.#openedAt = null;
    this.#pendingPosition = null;
    if (this.#link === attempt) this.#endLink();
    if (openFor >= this.#options.healthyAfter) this.#attempts = 0;

    if (retry === "never") {
      this.#setStatus("failed", { error });
      return;
    }
    let delay;
    if (retry === "now" && openFor >= IMMEDIATE_AFTER_MS) {
      delay = 0;
    } else {
      const { initialDelay, maxDelay } = this.#options;
      delay = backoffDelay(this.#attempts, initialDelay, maxDelay);
      this.#attempts += 1;
    }
    this.#setStatus("waiting", { delay, error });
    this.#retryTimer = setTimeout(() => this.#closed || this.#connect(), delay);
  }

  // Liveness. Only the length-prefixed stream shows its heartbeats to
  // JavaScript: EventSource swallows SSE comments and browsers answer
  // WebSocket pings themselves. The other two transports are watched
  // only until their hello (README.md, "Liveness").

  // One timer per connection, not one per frame: each frame only stamps
  // the time, and the timer, when it fires early, waits for the rest.
  #armSilenceTimer(ms) {
    clearTimeout(this.#silenceTimer);
    if (ms === null) return;
    const link = this.#link;
    this.#lastActivity = performance.now();
    const check = () => {
      if (!this.#linkActive(link)) return;
      const silent = performance.now() - this.#lastActivity;
      if (silent < ms) {
        this.#silenceTimer = setTimeout(check, ms - silent);
        return;
      }
      const error = new RpushdError(`no data for ${Math.round(silent)} ms`);
      this.#linkEnded(link, { retry: "backoff", error });
    };
    this.#silenceTimer = setTimeout(check, ms);
  }

  #heartbeat() {
    // Heartbeats follow the whole opening (hello, gaps, replay).
    this.#adoptPendingPosition();
    this.#alive();
  }

  #adoptPendingPosition() {
    const pending = this.#pendingPosition;
    if (pending !== null && isNewer(parseId(pending), parseId(this.#lastId))) {
      this.#lastId = pending;
    }
    this.#pendingPosition = null;
    this.#replayLeft = 0;
  }

  // One gap or replayed message of the opening has arrived; once the
  // hello's count of them is reached the stream is live.
  #replayItem() {
    if (this.#replayLeft > 0) {
      this.#replayLeft -= 1;
      if (this.#replayLeft === 0) this.#adoptPendingPosition();
    }
  }

  #alive() {
    this.#lastActivity = performance.now();
  }

  // Envelopes.

  #receive(attempt, text) {
    let envelope;
    try {
      envelope = JSON.parse(text);
    } catch (error) {
      this.#linkEnded(attempt, { retry: "backoff", error });
      return;
    }
    this.#alive();
    switch (envelope?.type) {
      case "hello":
        return this.#hello(envelope);
      case "message":
        this.#message(envelope);
        return this.#replayItem();
      case "gap":
        this.#call(this.#options.onGap, {
          channel: envelope.channel,
          reason: envelope.reason,
        });
        return this.#replayItem();
      case "close": {
        // Reconnect now rather than wait for the daemon to hang up.
        const expired = envelope.reason === "token_expired";
        const error = new RpushdError(`closed by the daemon: ${envelope.reason}`);
        return this.#linkEnded(attempt, { retry: expired ? "now" : "backoff", error });
      }
      default:
        // Envelope types added later are not ours to act on.
        return undefined;
    }
  }

  #hello(envelope) {
    const seconds = Number(envelope.heartbeat_secs);
    this.#heartbeatMs = seconds > 0 ? seconds * 1000 : null;
    this.#openedAt = performance.now();
    const watched = this.#options.transport === "stream" && this.#heartbeatMs !== null;
    this.#armSilenceTimer(watched ? SILENCE_FACTOR * this.#heartbeatMs : null);
    this.#helloPosition(envelope);
    this.#setStatus("open");
  }

  // The hello's last_id is the daemon's newest id once the stream is live
  // (docs/STREAMS.md, "Resume"); resuming from it spares gaps on channels
  // that were quiet. It is adopted at once, except when the daemon is
  // replaying what followed our last id in the same epoch: those messages
  // come after the hello, and a connection cut halfway through them must
  // resume from the last one received. The position is then adopted once
  // the hello's `replay` count of items has arrived (or, from a daemon that
  // does not send the count, once a heartbeat shows the opening is over).
  #helloPosition(envelope) {
    const position = parseId(envelope.last_id);
    this.#pendingPosition = null;
    this.#replayLeft = 0;
    if (position === null) return;
    const current = parseId(this.#lastId);
    if (current === null || current.epoch !== position.epoch) {
      this.#lastId = envelope.last_id;
    } else if (current.seq > position.seq) {
      // An id from the future (the daemon answers with "unknown" gaps):
      // it is worthless, and must not hold back what the daemon sends.
      this.#lastId = envelope.last_id;
      this.#delivered = null;
    } else if (current.seq < position.seq) {
      this.#pendingPosition = envelope.last_id;
      const replay = envelope.replay;
      if (Number.isInteger(replay) && replay > 0) {
        this.#replayLeft = replay;
      } else if (replay === 0) {
        this.#adoptPendingPosition();
      }
    }
  }

  #message(envelope) {
    const parsed = parseId(envelope.id);
    // The daemon never repeats an id; this guards against replays that
    // overlap what was delivered, whoever causes them.
    const delivered = this.#delivered;
    if (
      parsed !== null &&
      delivered !== null &&
      parsed.epoch === delivered.epoch &&
      parsed.seq <= delivered.seq
    ) {
      return;
    }
    this.#delivered = parsed;
    if (isNewer(parsed, parseId(this.#lastId))) this.#lastId = envelope.id;
    this.#call(this.#options.onMessage, envelope.message, {
      channel: envelope.channel,
      id: envelope.id,
    });
  }

  // Callbacks.

  #setStatus(status, detail = {}) {
    this.#status = status;
    this.#call(this.#options.onStatus, status, detail);
  }

  #call(callback, ...args) {
    if (this.#closed || typeof callback !== "function") return;
    try {
      callback(...args);
    } catch (error) {
      // An application bug must not break delivery; show it as uncaught.
      (globalThis.reportError ?? console.error)(error);
    }
  }
}

// Transports. Each opens one connection and reports through `events`:
// envelope(text) for each envelope, heartbeat() for each heartbeat, and
// end({ retry, error }) once, with retry "backoff", "now" or "never".
// Each returns { close() }, after which it reports nothing more.

// The daemon explains a refusal in {"error": "..."}; a proxy's error page
// (HTML, often kilobytes of it) says nothing the status does not.
function refusalReason(body) {
  try {
    const error = JSON.parse(body)?.error;
    return typeof error === "string" ? error.slice(0, 200) : "";
  } catch {
    return "";
  }
}

function endpoint(baseUrl, path, query, websocket = false) {
  const base = baseUrl === undefined ? "" : String(baseUrl).replace(/\/+$/, "");
  const url = new URL(base + path, globalThis.location?.href);
  url.search = query === undefined ? "" : query.toString();
  if (websocket) url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url;
}

function pairedQuery(subscriptions, lastId) {
  const query = new URLSearchParams();
  for (const { channel, token } of subscriptions) {
    query.append("channel", channel);
    query.append("token", token);
  }
  if (lastId !== null) query.append("last_id", lastId);
  return query;
}

function openStream(baseUrl, subscriptions, lastId, events) {
  const controller = new AbortController();
  const body = { subscriptions };
  if (lastId !== null) body.last_id = lastId;

  const run = async () => {
    const response = await fetch(endpoint(baseUrl, "/api/stream"), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      cache: "no-store",
      signal: controller.signal,
    });
    if (!response.ok) {
      const detail = refusalReason(await response.text().catch(() => ""));
      const error = new RpushdError(
        `stream refused: HTTP ${response.status} ${detail}`.trim(),
        { status: response.status },
      );
      const retry = FATAL_STATUSES.has(response.status) ? "never" : "backoff";
      events.end({ retry, error });
      return;
    }
    const reader = response.body.getReader();
    const decoder = new FrameDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        events.end({ retry: "backoff", error: new RpushdError("stream ended") });
        return;
      }
      for (const text of decoder.feed(value)) {
        // A callback may have closed this connection mid-chunk.
        if (controller.signal.aborted) return;
        if (text === "") events.heartbeat();
        else events.envelope(text);
      }
    }
  };
  run().catch((error) => {
    if (!controller.signal.aborted) events.end({ retry: "backoff", error });
  });
  return { close: () => controller.abort() };
}

function openEventSource(baseUrl, subscriptions, lastId, events) {
  // EventSource would reconnect by itself with the URL it was given, whose
  // tokens expire, and gives up for good on a refusal such as 401. So on
  // any error it is closed, and the subscription reconnects with fresh
  // tokens and its own last id.
  const source = new EventSource(
    endpoint(baseUrl, "/api/events", pairedQuery(subscriptions, lastId)),
  );
  let ended = false;
  const envelope = (event) => ended || events.envelope(event.data);
  for (const type of ["message", "hello", "gap", "close"]) {
    source.addEventListener(type, envelope);
  }
  source.onerror = () => {
    if (ended) return;
    ended = true;
    source.close();
    events.end({ retry: "backoff", error: new RpushdError("event stream failed") });
  };
  return {
    close() {
      ended = true;
      source.close();
    },
  };
}

// WebSocket close codes (docs/STREAMS.md): 4002 means the token expired
// while the stream was open, so a fresh one lets us back in at once; 4400
// means the request is malformed and retrying cannot help. Everything else
// (1001 shutdown, 4001 refused token, 4008 too slow, a dropped connection)
// is retried after a backoff.
const CLOSE_RETRY = new Map([
  [4002, "now"],
  [4400, "never"],
]);

function openWebSocket(baseUrl, subscriptions, lastId, events) {
  const socket = new WebSocket(
    endpoint(baseUrl, "/api/ws", pairedQuery(subscriptions, lastId), true),
  );
  socket.onmessage = (event) => {
    if (typeof event.data === "string") events.envelope(event.data);
  };
  socket.onclose = (event) => {
    const reason = event.reason ? `: ${event.reason}` : "";
    const error = new RpushdError(`websocket closed with code ${event.code}${reason}`, {
      code: event.code,
    });
    events.end({ retry: CLOSE_RETRY.get(event.code) ?? "backoff", error });
  };
  return {
    close() {
      socket.onmessage = socket.onclose = null;
      socket.close(1000);
    },
  };
}
