/**
 * `mcp:` entries: the tools an MCP server lists, run through `@modelcontextprotocol/sdk`.
 *
 * One provider keeps one session. It speaks Streamable HTTP and falls back to the older HTTP+SSE
 * transport when the server answers the first with a 4xx (as the MCP spec's compatibility section
 * says). A server that is down never stops the proxy: the provider reports `connecting`/`down`, retries
 * with exponential backoff (0.5 s doubling to 10 s), and its tools appear, through onChange, once the
 * server lists them. A session the server no longer knows (HTTP 404/400) or a stream that drops is
 * initialized again; a call the server never received is sent once more on the fresh session. A dropped
 * Streamable HTTP session is ended on the server (DELETE) unless it answered 404; nothing waits for that.
 */
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { SSEClientTransport, SseError } from '@modelcontextprotocol/sdk/client/sse.js';
import {
  StreamableHTTPClientTransport,
  StreamableHTTPError,
} from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { Transport } from '@modelcontextprotocol/sdk/shared/transport.js';
import {
  ErrorCode,
  McpError,
  type Tool,
  ToolListChangedNotificationSchema,
} from '@modelcontextprotocol/sdk/types.js';
import type { jsonSchemaValidator } from '@modelcontextprotocol/sdk/validation/types.js';
import type { Logger } from '../telemetry/log.js';
import { secretScrubber } from '../telemetry/scrub.js';
import type { ResolvedTool } from '../toolset/defaults.js';
import { LIMIT, type McpToolSpec } from '../toolset/schema.js';
import { resolveValue } from '../toolset/values.js';
import { untilAborted } from './abort.js';
import { toolResultContent } from './mcp-content.js';
import { createSessionFetch } from './mcp-fetch.js';
import {
  type ProvidedTool,
  type ProviderFactory,
  type ProviderOptions,
  type ProviderState,
  type ToolContext,
  ToolError,
  type ToolProvider,
} from './types.js';

const CLIENT_INFO = { name: 'earpiece', version: '0.1.0' };
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 10_000;
/** initialize (tools/list has LIST_TIMEOUT_MS); a server that accepts connections but never answers counts as down. */
const SETUP_TIMEOUT_MS = 10_000;
const PROBE_TIMEOUT_MS = 5_000;
/**
 * How long a closed or dropped session gives the server to hear that it is over, waiting for the answer to
 * initialize included: a server that does not answer in time keeps its session, and nothing hangs on it.
 */
export const END_SESSION_TIMEOUT_MS = 1_000;
/** The registry aborts at the deadline; the SDK's own timer is only a backstop behind it. */
const CALL_TIMEOUT_SLACK_MS = 1_000;
const TOOL_NAME_MAX = 64;
/**
 * The most tools one server's entry offers: every offered tool goes to the model on every turn (OpenAI
 * takes at most 128 in a request), and each has its own metric series. mcp.include chooses others.
 */
export const MAX_TOOLS_PER_SERVER = 64;
/** A tools/list_changed storm lists at most once per this interval; the changes in between are coalesced. */
const RELIST_INTERVAL_MS = 1_000;
/** A server that pages on without end is read no further. */
const MAX_LIST_PAGES = 100;
/**
 * The most one listing holds, as JSON, summed over its pages (each answer may be up to 4 MiB): paging stops
 * once the tools kept pass it. With one page in hand besides, a listing holds at most about 12 MiB.
 */
const MAX_LIST_CHARS = 8 * 1024 * 1024;
/** One listing, every page of it, within this; not per page, or 100 slow pages could take 1000 s. */
const LIST_TIMEOUT_MS = 10_000;
/**
 * A listed tool's input schema goes to the model on every turn, as a declared tool's parameters do: one
 * larger than this (as JSON) costs the voice turn more than the tool can give, and the tool is left out.
 */
export const MAX_MCP_SCHEMA_CHARS = 64 * 1024;
/**
 * The input schemas one server's offered tools may hold in all (as JSON): each is compiled on the tool's
 * first call and costs the voice turn as it goes to the model. The tools past it are left out.
 */
export const MAX_MCP_SCHEMAS_CHARS = 512 * 1024;

/**
 * Without a validator of its own, the SDK compiles the outputSchema of every listed tool on every listing
 * (all of them, into one ajv that keeps them all) and runs it on each result with JavaScript regexes: a
 * server could stall the event loop or grow memory with it. Results go to the model as data and nothing
 * here relies on their shape, so no output schema is compiled or run.
 */
const UNCHECKED_OUTPUT: jsonSchemaValidator = {
  getValidator: () => (input) => ({ valid: true, data: input as never, errorMessage: undefined }),
};

type TransportKind = 'streamable' | 'sse';

/** What one listing kept of the server's tools. */
interface Listing {
  tools: Tool[];
  /** Paging stopped at MAX_LIST_PAGES or MAX_LIST_CHARS: later pages may hold more offerable tools. */
  partial: boolean;
  /** Paging stopped because later pages could not change what is offered. */
  cut?: boolean;
}

interface Session {
  client: Client;
  transport: Transport;
  kind: TransportKind;
  /** A list change arrived before the session became current: list again once it is. */
  stale: boolean;
  probing: boolean;
  /** Settles once initialize has been answered (or has failed): the server's session id is known by then. */
  setup: Promise<unknown>;
  /** Set by the first closeSession: later callers wait for the same close, so a session is ended once. */
  closing?: Promise<void>;
}

/** Why a call failed, which decides whether the session is dropped and the call sent again. */
type Failure =
  | 'unsent' // the server never ran it: unknown session, refused connection, not connected
  | 'lost' // the connection went away, maybe mid-call
  | 'slow' // no answer within the SDK's backstop timeout
  | 'protocol'; // the server answered with a JSON-RPC error

export const createMcpProvider: ProviderFactory = (tool, options) => new McpProvider(tool, options);

class McpProvider implements ToolProvider {
  readonly kind = 'mcp' as const;
  private readonly spec: McpToolSpec;
  private readonly url: URL;
  /** The URL without credentials, query or fragment: safe for logs, errors and /readyz. */
  private readonly displayUrl: string;
  private readonly headers: Record<string, string>;
  /** errorText with the URL's secrets taken out. */
  private readonly errorText: (err: unknown) => string;
  private readonly logger: Logger;
  private state: ProviderState = 'connecting';
  private lastError: string | undefined;
  private provided: ProvidedTool[] = [];
  private fingerprint = '[]';
  private session: Session | undefined;
  /** Every session opened and not yet closed, so close() leaves nothing running. */
  private readonly open = new Set<Session>();
  private connecting: Promise<Session | undefined> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private attempt = 0;
  /** Last connect used the old HTTP+SSE transport: try it first next time. */
  private legacy = false;
  private refreshing = false;
  private refreshAgain = false;
  private relistTimer: NodeJS.Timeout | undefined;
  private listedAt = 0;
  /** Set while the server lists more tools than MAX_TOOLS_PER_SERVER; for the log and /readyz. */
  private capWarning: string | undefined;
  private closed = false;
  private readonly listeners = new Set<() => void>();

  constructor(
    private readonly tool: ResolvedTool,
    options: ProviderOptions,
  ) {
    const spec = tool.spec.mcp;
    if (!spec) throw new Error(`spec.tools[${tool.index}] is not an mcp entry`);
    this.spec = spec;
    this.url = new URL(spec.url);
    this.displayUrl = `${this.url.origin}${this.url.pathname}`;
    this.headers = Object.fromEntries(
      (spec.headers ?? []).map((h, i) => [
        h.name,
        resolveValue(h, `spec.tools[${tool.index}].mcp.headers[${i}]`, options.env),
      ]),
    );
    // fetch refuses a URL with credentials (quoting it whole in its error), so they go as Basic auth,
    // unless an Authorization header is configured.
    const { username, password } = this.url;
    const user = [username, password].map(decodeLoosely);
    if (username || password) {
      this.url.username = '';
      this.url.password = '';
      if (!Object.keys(this.headers).some((name) => name.toLowerCase() === 'authorization')) {
        this.headers.Authorization = `Basic ${Buffer.from(user.join(':')).toString('base64')}`;
      }
    }
    // Error texts reach the log and /readyz, and may quote the server's answer, which may echo the
    // request: keep out header values (and the token after "Bearer"), credentials and query values.
    const queryValues = this.url.search
      .slice(1)
      .split('&')
      .map((p) => p.slice(p.indexOf('=') + 1));
    const scrub = secretScrubber([
      ...Object.values(this.headers),
      ...[username, password, ...user],
      ...[...queryValues, ...this.url.searchParams.values()],
    ]);
    this.errorText = (err) => scrub(errorText(err));
    this.logger = options.logger.child({ mcp: this.displayUrl });
    this.connectNow();
  }

  tools(): ProvidedTool[] {
    return this.provided;
  }

  status(): { url: string; state: ProviderState; lastError?: string; tools: number } {
    return {
      url: this.displayUrl,
      state: this.state,
      ...(this.lastError === undefined ? {} : { lastError: this.lastError }),
      tools: this.provided.length,
    };
  }

  warnings(): string[] {
    return this.capWarning === undefined ? [] : [this.capWarning];
  }

  onChange(listener: () => void): void {
    this.listeners.add(listener);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.state = 'down';
    clearTimeout(this.timer);
    clearTimeout(this.relistTimer);
    this.listeners.clear();
    this.session = undefined;
    // Sessions still being set up too: the server made one as soon as it took initialize.
    await Promise.all([...this.open].map((s) => this.closeSession(s, { end: true })));
  }

  // ---- calls -------------------------------------------------------------------------------------

  private async call(name: string, args: Record<string, unknown>, ctx: ToolContext): Promise<unknown> {
    for (let attempt = 0; ; attempt++) {
      const session = await this.ready(ctx.signal);
      try {
        const result = await session.client.callTool({ name, arguments: args }, undefined, {
          signal: ctx.signal,
          timeout: Math.max(1, ctx.deadline - Date.now()) + CALL_TIMEOUT_SLACK_MS,
        });
        return toolResultContent(result as Parameters<typeof toolResultContent>[0]);
      } catch (err) {
        // Aborted (timeout or barge-in): the SDK already sent notifications/cancelled; the registry labels it.
        if (ctx.signal.aborted || err instanceof ToolError) throw err;
        const failure = classify(err);
        if (failure === 'protocol') {
          throw new ToolError(this.errorText(err).replace(/^MCP error -?\d+: /, ''), 'ERP_MCP_CALL_FAILED');
        }
        if (failure === 'slow') {
          this.probe(session);
          throw new ToolError('the MCP server did not answer in time', 'ERP_MCP_TIMEOUT');
        }
        this.lost(session, err);
        if (failure === 'unsent' && attempt === 0) continue;
        throw new ToolError('the MCP server is unavailable', 'ERP_MCP_UNAVAILABLE');
      }
    }
  }

  /** The current session, or a connection attempt made now (not waiting out the backoff). */
  private async ready(signal: AbortSignal): Promise<Session> {
    if (this.session) return this.session;
    if (this.closed) throw new ToolError('the MCP server is unavailable', 'ERP_MCP_UNAVAILABLE');
    const session = await untilAborted(this.connecting ?? this.connectNow(), signal);
    if (!session) throw new ToolError('the MCP server is unavailable', 'ERP_MCP_UNAVAILABLE');
    return session;
  }

  // ---- connection --------------------------------------------------------------------------------

  private connectNow(): Promise<Session | undefined> {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (!this.connecting) {
      this.connecting = this.connect().finally(() => {
        this.connecting = undefined;
      });
    }
    return this.connecting;
  }

  /** One attempt: open a session, list the tools. Never rejects; on failure schedules the next try. */
  private async connect(): Promise<Session | undefined> {
    if (this.state !== 'down') this.state = 'connecting';
    let session: Session | undefined;
    try {
      session = await this.openSession();
      // A close() that came while initialize was in flight is ending this session: list nothing on it.
      const listing = this.closed ? { tools: [], partial: false } : await this.listTools(session.client);
      if (this.closed) {
        await this.closeSession(session);
        return undefined;
      }
      this.session = session;
      this.state = 'connected';
      this.attempt = 0;
      this.lastError = undefined;
      this.logger.info(
        { transport: session.kind, tools: listing.tools.length },
        'Connected to MCP server and listed its tools',
      );
      this.setTools(listing);
      if (session.stale) this.listChanged(session);
      return session;
    } catch (err) {
      if (session) this.drop(session, err);
      if (this.closed) return undefined;
      const message = this.errorText(err);
      // One warning per outage; repeats while it lasts are debug lines.
      if (this.attempt === 0) this.logger.warn({ err: message }, 'MCP server unreachable; retrying');
      else this.logger.debug({ err: message, attempt: this.attempt }, 'MCP server still unreachable');
      this.lastError = message;
      this.state = 'down';
      this.scheduleReconnect();
      return undefined;
    }
  }

  private scheduleReconnect(): void {
    if (this.closed) return;
    const delay = Math.min(BACKOFF_FIRST_MS * 2 ** this.attempt, BACKOFF_MAX_MS);
    this.attempt++;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.connectNow();
    }, delay);
    this.timer.unref();
  }

  /** Streamable HTTP first (or HTTP+SSE first if that is what worked last); the other after a 4xx. */
  private async openSession(): Promise<Session> {
    const [first, second]: [TransportKind, TransportKind] = this.legacy
      ? ['sse', 'streamable']
      : ['streamable', 'sse'];
    try {
      return await this.openWith(first);
    } catch (err) {
      if (!isHttpClientError(err) || this.closed) throw err;
      try {
        const session = await this.openWith(second);
        this.legacy = second === 'sse';
        return session;
      } catch (secondErr) {
        throw new Error(`${this.errorText(err)}; ${transportName(second)}: ${this.errorText(secondErr)}`);
      }
    }
  }

  private async openWith(kind: TransportKind): Promise<Session> {
    const requestInit = { headers: this.headers };
    const sessionFetch = createSessionFetch(kind);
    const transport =
      kind === 'streamable'
        ? new StreamableHTTPClientTransport(this.url, {
            requestInit,
            fetch: sessionFetch,
            reconnectionOptions: {
              initialReconnectionDelay: BACKOFF_FIRST_MS,
              maxReconnectionDelay: BACKOFF_MAX_MS,
              reconnectionDelayGrowFactor: 2,
              maxRetries: 2,
            },
          })
        : new SSEClientTransport(this.url, { requestInit, fetch: sessionFetch });
    const client = new Client(CLIENT_INFO, { capabilities: {}, jsonSchemaValidator: UNCHECKED_OUTPUT });
    const session: Session = {
      client,
      transport,
      kind,
      stale: false,
      probing: false,
      setup: Promise.resolve(),
    };
    this.open.add(session);
    client.setNotificationHandler(ToolListChangedNotificationSchema, () => this.listChanged(session));
    client.onerror = (err) => this.transportError(session, err);
    const setup = client.connect(transport, { timeout: SETUP_TIMEOUT_MS });
    session.setup = setup.catch(() => undefined);
    try {
      await setup;
    } catch (err) {
      await this.closeSession(session);
      throw err;
    }
    return session;
  }

  /** Closes the client; with `end`, first tells the server the session is over, as close() does. */
  private closeSession(session: Session, options: { end?: boolean } = {}): Promise<void> {
    if (!session.closing) {
      this.open.delete(session);
      const ended = options.end ? endSession(session, (err) => this.endFailed(err)) : Promise.resolve();
      session.closing = ended.then(() => session.client.close()).catch(() => undefined);
    }
    return session.closing;
  }

  /**
   * Lets go of a session that failed with `err`, ending it on the server unless the server said it is gone
   * (404): else it would hold the session until its own expiry. The turn or reconnect does not wait for it.
   */
  private drop(session: Session, err: unknown): void {
    void this.closeSession(session, { end: !isGone(err) });
  }

  /** A server that did not hear the end only keeps a session until it expires it: worth a debug line. */
  private endFailed(err: unknown): void {
    this.logger.debug({ err: this.errorText(err) }, 'Could not end the MCP session on the server');
  }

  private transportError(session: Session, err: Error): void {
    if (this.session !== session) return;
    this.logger.debug({ err: this.errorText(err) }, 'MCP transport error');
    // The old transport's session lives and dies with its event stream; Streamable HTTP may only have
    // lost its optional GET stream, which the SDK resumes itself, so ask the server whether it still
    // knows the session.
    if (session.kind === 'sse') this.lost(session, err);
    else this.probe(session);
  }

  private probe(session: Session): void {
    if (session.probing || this.session !== session) return;
    session.probing = true;
    session.client
      .ping({ timeout: PROBE_TIMEOUT_MS })
      .catch((err: unknown) => this.lost(session, err))
      .finally(() => {
        session.probing = false;
      });
  }

  /** The session is gone: drop it and connect again at once (backoff applies if that fails). */
  private lost(session: Session, err: unknown): void {
    if (this.session !== session || this.closed) return;
    this.session = undefined;
    this.state = 'connecting';
    this.lastError = this.errorText(err);
    this.logger.warn({ err: this.lastError }, 'Lost the MCP session; connecting again');
    this.drop(session, err);
    void this.connectNow();
  }

  // ---- tool list ---------------------------------------------------------------------------------

  /** Lists again soon: at once after a quiet spell, else once RELIST_INTERVAL_MS has passed since the last. */
  private listChanged(session: Session): void {
    if (this.session !== session) {
      session.stale = true;
      return;
    }
    if (this.relistTimer || this.closed) return;
    const wait = Math.max(0, this.listedAt + RELIST_INTERVAL_MS - Date.now());
    this.relistTimer = setTimeout(() => {
      this.relistTimer = undefined;
      void this.refresh(session);
    }, wait);
    this.relistTimer.unref();
  }

  private async refresh(session: Session): Promise<void> {
    if (this.session !== session) return;
    if (this.refreshing) {
      this.refreshAgain = true;
      return;
    }
    this.refreshing = true;
    this.listedAt = Date.now();
    try {
      const listing = await this.listTools(session.client);
      if (this.session === session) this.setTools(listing);
    } catch (err) {
      this.logger.warn({ err: this.errorText(err) }, 'Listing the MCP server tools failed');
      this.probe(session);
    } finally {
      this.refreshing = false;
      if (this.refreshAgain) {
        this.refreshAgain = false;
        this.listChanged(session);
      }
    }
  }

  /**
   * The listed tools mcp.include names (all without it), page by page, stopping as soon as more would not
   * change what is offered: past MAX_TOOLS_PER_SERVER, or once every included name is found. It also stops
   * at MAX_LIST_CHARS held or MAX_LIST_PAGES pages (the listing is then `partial`), and fails at
   * LIST_TIMEOUT_MS for the whole listing.
   */
  private async listTools(client: Client): Promise<Listing> {
    const include = this.spec.include ? new Set(this.spec.include) : undefined;
    const found = new Set<string>();
    const tools: Tool[] = [];
    const deadline = Date.now() + LIST_TIMEOUT_MS;
    let chars = 0;
    let cursor: string | undefined;
    for (let pages = 1; ; pages++) {
      let page: Awaited<ReturnType<Client['listTools']>>;
      try {
        page = await client.listTools(cursor === undefined ? {} : { cursor }, {
          timeout: Math.max(1, deadline - Date.now()),
        });
      } catch (err) {
        if (err instanceof McpError && err.code === ErrorCode.RequestTimeout && raisedBySdk(err)) {
          throw new Error(
            `listing the tools took longer than ${LIST_TIMEOUT_MS / 1000} s (${pages - 1} pages read)`,
          );
        }
        throw err;
      }
      for (const t of page.tools) {
        if (include && !include.has(t.name)) continue;
        found.add(t.name);
        tools.push(t);
        chars += JSON.stringify(t).length;
      }
      cursor = page.nextCursor;
      if (cursor === undefined) return { tools, partial: false };
      // One more than the cap is enough to know the cap applies.
      if (tools.length > MAX_TOOLS_PER_SERVER || (include && found.size === include.size)) {
        return { tools, partial: false, cut: true };
      }
      if (chars > MAX_LIST_CHARS || pages >= MAX_LIST_PAGES) return { tools, partial: true };
    }
  }

  private setTools({ tools: listed, partial, cut }: Listing): void {
    const include = this.spec.include ? new Set(this.spec.include) : undefined;
    const prefix = this.spec.prefix ?? '';
    const provided: ProvidedTool[] = [];
    const names = new Set<string>();
    let offerable = 0;
    let schemasChars = 0;
    const overBudget: string[] = [];
    for (const t of listed) {
      if (include && !include.has(t.name)) continue;
      if (++offerable > MAX_TOOLS_PER_SERVER) continue;
      // OpenAI function names allow [a-zA-Z0-9_-]{1,64}; MCP names may hold more. The server gets the original.
      const name = `${prefix}${t.name}`.replace(/[^a-zA-Z0-9_-]/g, '_').slice(0, TOOL_NAME_MAX);
      if (names.has(name)) {
        this.logger.warn(
          { tool: logName(t.name), name },
          'Skipped an MCP tool whose name clashes after cleaning',
        );
        continue;
      }
      const parameters = parametersOf(t);
      const schemaChars = JSON.stringify(parameters).length;
      if (schemaChars > MAX_MCP_SCHEMA_CHARS) {
        this.logger.warn(
          { tool: logName(t.name), chars: schemaChars, cap: MAX_MCP_SCHEMA_CHARS },
          'Skipped an MCP tool whose input schema is larger than the cap',
        );
        continue;
      }
      if (schemasChars + schemaChars > MAX_MCP_SCHEMAS_CHARS) {
        overBudget.push(logName(t.name));
        continue;
      }
      schemasChars += schemaChars;
      names.add(name);
      const original = t.name;
      provided.push({
        name,
        // Held to the length a declared tool's description may have.
        description: (t.description ?? t.title ?? '').slice(0, LIMIT.text),
        parameters,
        executor: { run: (args, ctx) => this.call(original, args, ctx) },
        config: this.tool,
      });
    }
    if (overBudget.length) {
      this.logger.warn(
        { tools: overBudget, cap: MAX_MCP_SCHEMAS_CHARS },
        'Skipped MCP tools whose input schemas would take the tools of this server past their budget',
      );
    }
    if (include) {
      const missing = [...include].filter((n) => !listed.some((t) => t.name === n));
      if (missing.length) this.logger.warn({ missing }, 'MCP server does not list some included tools');
    }
    const fingerprint = JSON.stringify(provided.map((p) => [p.name, p.description, p.parameters]));
    this.provided = provided;
    if (fingerprint === this.fingerprint) return;
    this.fingerprint = fingerprint;
    this.capWarning =
      offerable > MAX_TOOLS_PER_SERVER
        ? `MCP server ${this.displayUrl} lists ${cut ? 'more than ' : ''}${cut ? MAX_TOOLS_PER_SERVER : offerable} tools; only the first ${MAX_TOOLS_PER_SERVER} are offered (the cap per server); choose others with mcp.include`
        : partial
          ? `MCP server ${this.displayUrl} lists more tools than one listing reads (${MAX_LIST_PAGES} pages or ${MAX_LIST_CHARS / 1024 / 1024} MiB); only the ${offerable} read are offered`
          : undefined;
    if (this.capWarning) this.logger.warn({ listed: offerable, cap: MAX_TOOLS_PER_SERVER }, this.capWarning);
    for (const listener of this.listeners) {
      try {
        listener();
      } catch (err) {
        this.logger.error({ err: this.errorText(err) }, 'A tool list listener failed');
      }
    }
  }
}

/**
 * Ends a Streamable HTTP session on the server (DELETE with its Mcp-Session-Id), within
 * END_SESSION_TIMEOUT_MS; a failure goes to `failed`. A session still being set up has no id until the
 * server answers initialize, so that answer is waited for first: closing the client would abort it, and the
 * server would keep a session whose id nobody learned.
 */
async function endSession(session: Session, failed: (err: unknown) => void): Promise<void> {
  const { transport } = session;
  if (!(transport instanceof StreamableHTTPClientTransport)) return;
  const known = transport.sessionId === undefined ? session.setup : Promise.resolve();
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    known.then(() => transport.terminateSession()).catch(failed),
    new Promise((resolve) => {
      timer = setTimeout(resolve, END_SESSION_TIMEOUT_MS);
    }),
  ]);
  clearTimeout(timer);
}

/** A listed tool's name as the log shows it: a server may name a tool with megabytes. */
function logName(name: string): string {
  return name.length > LIMIT.name ? `${name.slice(0, LIMIT.name)}…` : name;
}

/** The input schema as OpenAI wants tool parameters: an object schema without `$schema`. */
function parametersOf(tool: Tool): Record<string, unknown> {
  const { $schema: _draft, ...schema } = tool.inputSchema as Record<string, unknown>;
  return { ...schema, type: 'object' };
}

/** The server said it does not know the session (the spec's answer to an ended one): nothing to end. */
function isGone(err: unknown): boolean {
  return err instanceof StreamableHTTPError && err.code === 404;
}

/**
 * The messages the SDK gives its own ConnectionClosed (-32000) and RequestTimeout (-32001) errors. A server
 * may answer with the same codes (-32000 is the usual one for a tool's own failure, "City not found"):
 * that is its answer, to pass on, not a lost connection to tear down.
 */
const SDK_RAISED: Partial<Record<number, readonly string[]>> = {
  [ErrorCode.ConnectionClosed]: ['Connection closed', 'Request was cancelled'],
  [ErrorCode.RequestTimeout]: ['Request timed out', 'Maximum total timeout exceeded'],
};

function raisedBySdk(err: McpError): boolean {
  return (SDK_RAISED[err.code] ?? []).some((message) => err.message === `MCP error ${err.code}: ${message}`);
}

function classify(err: unknown): Failure {
  if (err instanceof McpError) {
    if (!raisedBySdk(err)) return 'protocol';
    return err.code === ErrorCode.ConnectionClosed ? 'lost' : 'slow';
  }
  if (err instanceof StreamableHTTPError) return err.code === 404 || err.code === 400 ? 'unsent' : 'lost';
  const message = err instanceof Error ? err.message : '';
  // The HTTP+SSE transport reports a refused POST as a plain Error naming the status.
  if (/\(HTTP 40[04]\)/.test(message) || message === 'Not connected') return 'unsent';
  const cause = err instanceof Error ? (err.cause as { code?: string } | undefined) : undefined;
  if (cause?.code === 'ECONNREFUSED') return 'unsent';
  return 'lost';
}

function isHttpClientError(err: unknown): boolean {
  const code = err instanceof StreamableHTTPError || err instanceof SseError ? err.code : undefined;
  return code !== undefined && code >= 400 && code < 500;
}

function transportName(kind: TransportKind): string {
  return kind === 'sse' ? 'HTTP+SSE' : 'Streamable HTTP';
}

function decodeLoosely(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

/** A short, single-line description of an error (fetch hides the reason in `cause`). */
function errorText(err: unknown): string {
  if (!(err instanceof Error)) return String(err).slice(0, 300);
  const cause = err.cause as { code?: string; message?: string } | undefined;
  const detail = cause ? `: ${cause.code ?? cause.message ?? ''}` : '';
  return `${err.message}${detail}`.replace(/\s+/g, ' ').slice(0, 300);
}
