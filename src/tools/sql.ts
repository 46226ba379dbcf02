/**
 * `sql:` entries: PostgreSQL through `pg`, read-only.
 *
 * With `query`, the model's arguments are bound to $1..$n in the order of `args`; the text is the
 * ToolSet's and never built from arguments. Without it, the model writes one SELECT (argument `sql`),
 * checked by sql-guard.ts before it is sent. Either way the statement runs in a `BEGIN READ ONLY`
 * transaction that is always rolled back, with `statement_timeout` set to what is left of the tool
 * timeout, over the extended query protocol (one statement only) through a cursor that fetches at most
 * maxRows + 1 rows, so the text is never rewritten to add a LIMIT.
 *
 * Connection strings are secrets: they are never logged, and error messages are scrubbed of them.
 */
import type { Socket } from 'node:net';
import pg from 'pg';
import Cursor from 'pg-cursor';
import type { Logger } from '../telemetry/log.js';
import { secretScrubber } from '../telemetry/scrub.js';
import type { SqlToolSpec } from '../toolset/schema.js';
import { resolveValue } from '../toolset/values.js';
import { untilAborted } from './abort.js';
import { checkReadOnlySelect, loadSqlParser } from './sql-guard.js';
import {
  type ProvidedTool,
  type ProviderFactory,
  type ToolContext,
  ToolError,
  type ToolProvider,
} from './types.js';

export const DEFAULT_MAX_ROWS = 100;
const POOL_MAX = 4;
/** Backstop for opening a connection; the call's own deadline usually ends the wait first. */
const CONNECT_TIMEOUT_MS = 10_000;
/**
 * After a call is aborted, how long its connection may take to cancel and roll back before it is cut: one
 * that does not answer (a partition, a hung server) would otherwise hold its pool slot, and close(), for good.
 */
const ABANDON_AFTER_MS = 5_000;
/** The longest a cancel request, or a connection's goodbye, is waited for. */
const CANCEL_TIMEOUT_MS = 5_000;

/** pg's socket under a client (pg has no public way to cut a connection that does not answer). */
function socketOf(client: pg.ClientBase): Socket | undefined {
  return (client as unknown as { connection?: { stream?: Socket } }).connection?.stream;
}

/** Waits for `promise`, but no longer than `ms`. */
function within(promise: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise.then(
      () => undefined,
      () => undefined,
    ),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** The backend running a call's statement, and the cancel request sent to it, if any. */
interface Running {
  pid?: number;
  cancelling?: Promise<void>;
}

interface SharedPool {
  pool: pg.Pool;
  users: number;
}

/** One small pool per connection string, shared by the entries that name the same database. */
const pools = new Map<string, SharedPool>();

function acquirePool(connectionString: string, scrub: (text: string) => string, logger: Logger): pg.Pool {
  let shared = pools.get(connectionString);
  if (!shared) {
    const pool = new pg.Pool({
      connectionString,
      max: POOL_MAX,
      idleTimeoutMillis: 30_000,
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      allowExitOnIdle: true,
      application_name: 'earpiece',
    });
    // An idle connection that breaks (a database restart) must not crash the process.
    pool.on('error', (err) => logger.warn({ err: scrub(err.message) }, 'An idle database connection failed'));
    shared = { pool, users: 0 };
    pools.set(connectionString, shared);
  }
  shared.users++;
  return shared.pool;
}

async function releasePool(connectionString: string): Promise<void> {
  const shared = pools.get(connectionString);
  if (!shared || --shared.users > 0) return;
  pools.delete(connectionString);
  // Idle connections say goodbye to the server; one that cannot hear it is left behind, not waited on.
  await within(shared.pool.end(), CANCEL_TIMEOUT_MS);
}

/** Replaces the connection string and its password wherever they appear. */
function scrubber(connectionString: string): (text: string) => string {
  const secrets = [connectionString];
  try {
    const password = decodeURIComponent(new URL(connectionString).password);
    if (password) secrets.push(password);
  } catch {
    const match = /(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)/.exec(connectionString);
    if (match?.[1]) secrets.push(match[1].replace(/^'|'$/g, ''));
  }
  return secretScrubber(secrets);
}

/** Reading stops past this many bytes of rows: the model sees a few KB anyway. */
const MAX_READ_BYTES = 1024 * 1024;
/**
 * What the connection may bring in while one statement's rows are read. A single row can be a
 * gigabyte, and pg holds a whole row before handing it over, so only the socket can stop it early.
 */
const MAX_WIRE_BYTES = 2 * MAX_READ_BYTES;
const BATCH_ROWS = 16;

interface ReadRows {
  rows: Record<string, unknown>[];
  bytesCut: boolean;
  /** The connection was cut mid-row to stop a result too large to read: it cannot be used again. */
  broken: boolean;
}

/**
 * At most maxRows + 1 rows (the extra one tells that the cap cut), stopping early past MAX_READ_BYTES.
 * The first batch is one row; later batches hold as many rows as the bytes left allow at the size rows
 * had so far, so a batch cannot overshoot the limit by more than one row.
 */
async function readRows(
  client: pg.PoolClient,
  cursor: Cursor<unknown[]>,
  maxRows: number,
): Promise<ReadRows> {
  const rows: Record<string, unknown>[] = [];
  let names: string[] = [];
  let bytes = 0;
  const socket = socketOf(client) as Socket;
  let wire = 0;
  let cut = false;
  const count = (chunk: Buffer) => {
    wire += chunk.length;
    if (wire > MAX_WIRE_BYTES && !cut) {
      cut = true;
      socket.destroy();
    }
  };
  socket.on('data', count);
  try {
    while (rows.length <= maxRows) {
      const room =
        rows.length === 0 ? 1 : Math.floor((MAX_READ_BYTES - bytes) / Math.max(1, bytes / rows.length));
      const size = Math.max(1, Math.min(room, BATCH_ROWS, maxRows + 1 - rows.length));
      const batch = await readBatch(cursor, size);
      if (batch.fields) names = columnNames(batch.fields);
      for (const values of batch.rows) {
        rows.push(Object.fromEntries(names.map((name, i) => [name, values[i]])));
        bytes += approximateBytes(values);
      }
      if (batch.rows.length === 0 || rows.length > maxRows) break;
      if (bytes > MAX_READ_BYTES) return { rows, bytesCut: true, broken: false };
    }
  } catch (err) {
    if (cut) return { rows, bytesCut: true, broken: true };
    throw err;
  } finally {
    socket.off('data', count);
  }
  return { rows, bytesCut: false, broken: false };
}

function readBatch(
  cursor: Cursor<unknown[]>,
  size: number,
): Promise<{ rows: unknown[][]; fields?: pg.FieldDef[] }> {
  return new Promise((resolve, reject) => {
    cursor.read(size, (err, rows, result) => (err ? reject(err) : resolve({ rows, fields: result?.fields })));
  });
}

/** Column names, made unique: `SELECT a.id, b.id` keeps both, as `id` and `id_2`. */
function columnNames(fields: pg.FieldDef[]): string[] {
  const taken = new Set<string>();
  return fields.map(({ name }) => {
    let unique = name;
    for (let n = 2; taken.has(unique); n++) unique = `${name}_${n}`;
    taken.add(unique);
    return unique;
  });
}

function approximateBytes(values: unknown[]): number {
  let n = 0;
  for (const value of values) {
    n += typeof value === 'string' ? value.length : Buffer.isBuffer(value) ? value.length * 2 : 16;
  }
  return n;
}

/** Compact JSON; bytea as Postgres hex text rather than Node's Buffer JSON. */
function rowsJson(rows: unknown[], maxRows: number, bytesCut = false): string {
  const cut = rows.length > maxRows;
  const kept = cut ? rows.slice(0, maxRows) : rows;
  const note = cut
    ? `cut to ${maxRows} rows`
    : bytesCut
      ? `cut after ${kept.length} rows (1 MiB read)`
      : undefined;
  const body = { rows: kept, rowCount: kept.length, ...(note ? { note } : {}) };
  return JSON.stringify(body, function (this: Record<string, unknown>, key, value) {
    const raw = this[key];
    if (Buffer.isBuffer(raw)) return `\\x${raw.toString('hex')}`;
    return typeof value === 'bigint' ? value.toString() : value;
  });
}

export const createSqlProvider: ProviderFactory = (tool, { env, logger }) => {
  const spec = tool.spec.sql as SqlToolSpec;
  const name = tool.spec.name as string;
  const connectionString = resolveValue(spec.connection, `spec.tools[${tool.index}].sql.connection`, env);
  const scrub = scrubber(connectionString);
  const log = logger.child({ tool: name });
  const maxRows = spec.maxRows ?? DEFAULT_MAX_ROWS;
  const freeForm = spec.query === undefined;
  // Warm the parser now, so the first call does not wait for it.
  if (freeForm)
    loadSqlParser().catch((err) => log.error({ err: String(err) }, 'Loading the SQL parser failed'));

  let pool: pg.Pool | undefined;
  let closed = false;
  /** Whether the role was checked, and what an operator should know about it (/readyz). */
  let roleChecked = false;
  let warnings: string[] = [];

  /**
   * The read-only transaction is the guard, but a superuser can leave it (`SET SESSION
   * CHARACTERISTICS`, `COPY ... TO PROGRAM` in a function): say so at start and in /readyz.
   */
  const checkRole = async (client: pg.ClientBase): Promise<void> => {
    const { rows } = await client.query<{ superuser: boolean; role: string }>(
      "SELECT current_setting('is_superuser') = 'on' AS superuser, current_user AS role",
    );
    roleChecked = true;
    if (!rows[0]?.superuser) return;
    const warning = `sql tool "${name}" connects as the superuser role "${rows[0].role}"; give it a role that can only read what the tool needs`;
    warnings = [warning];
    log.warn({ role: rows[0].role }, warning);
  };
  // At start; a database that is down now is checked on the first call.
  const checkingAtStart = (async () => {
    pool ??= acquirePool(connectionString, scrub, log);
    try {
      const client = await pool.connect();
      await checkRole(client).finally(() => client.release());
    } catch (err) {
      log.debug({ err: scrub((err as Error).message) }, 'Could not check the database role at start');
    }
  })();
  /** Calls still cleaning up after their caller gave up (aborted); close() waits for them. */
  const settling = new Set<Promise<unknown>>();

  /** Asks the server to stop the statement running on `pid`, over a connection of its own. */
  const cancelBackend = async (pid: number): Promise<void> => {
    const client = new pg.Client({
      connectionString,
      connectionTimeoutMillis: CANCEL_TIMEOUT_MS,
      query_timeout: CANCEL_TIMEOUT_MS,
    });
    client.on('error', () => undefined);
    try {
      await client.connect();
      await client.query('SELECT pg_cancel_backend($1)', [pid]);
    } catch (err) {
      log.warn({ err: scrub((err as Error).message) }, 'Cancelling a statement failed');
    } finally {
      await within(client.end(), CANCEL_TIMEOUT_MS);
      socketOf(client)?.destroy();
    }
  };

  const failure = (err: unknown, timeoutMs: number): ToolError => {
    if (err instanceof ToolError) return err;
    const code = (err as { code?: unknown }).code;
    const message = scrub((err as Error).message ?? String(err));
    if (code === '57014') {
      return new ToolError(
        `the query took longer than ${Math.max(1, Math.round(timeoutMs / 1000))}s and was stopped`,
        'ERP_SQL_TIMEOUT',
      );
    }
    // read_only_sql_transaction, and active_sql_transaction (read-write mode asked for after a query).
    if (code === '25006' || code === '25001') return new ToolError(`refused: ${message}`, 'ERP_SQL_REFUSED');
    if (err instanceof pg.DatabaseError) {
      const hint = err.hint ? ` (${scrub(err.hint)})` : '';
      return new ToolError(`${message}${hint}`, 'ERP_SQL_FAILED');
    }
    log.warn({ err: message }, 'The database call failed');
    return new ToolError('the database is unavailable', 'ERP_SQL_UNAVAILABLE');
  };

  const execute = async (
    client: pg.PoolClient,
    text: string,
    values: unknown[],
    ctx: ToolContext,
    running: Running,
  ): Promise<string> => {
    const timeoutMs = Math.max(1, ctx.deadline - Date.now());
    // A connection that breaks while checked out (cut for size, a database restart) reports through the
    // query that fails; its 'error' event would otherwise have no listener and end the process.
    const ignore = () => undefined;
    client.on('error', ignore);
    try {
      // Inside the call's work: an abort meanwhile is handled (and the connection cut) like any other.
      if (!roleChecked) await checkRole(client).catch(() => undefined);
      await client.query('BEGIN READ ONLY');
      const setup = await client.query<{ pid: number }>(
        "SELECT set_config('statement_timeout', $1, true), pg_backend_pid() AS pid",
        [String(timeoutMs)],
      );
      if (ctx.signal.aborted) throw ctx.signal.reason;
      running.pid = setup.rows[0]?.pid;
      // Rows as arrays, named here: as objects, pg lets a repeated column name overwrite the first.
      const cursor = client.query(new Cursor<unknown[]>(text, values, { rowMode: 'array' }));
      const { rows, bytesCut, broken } = await readRows(client, cursor, maxRows);
      running.pid = undefined;
      if (!broken) await cursor.close();
      return rowsJson(rows, maxRows, bytesCut);
    } catch (err) {
      if (ctx.signal.aborted) throw ctx.signal.reason;
      throw failure(err, timeoutMs);
    } finally {
      running.pid = undefined;
      // A cancel still on its way would hit whatever this connection runs next, for another caller.
      await running.cancelling;
      // Always rolled back: nothing this tool runs is ever committed. Session-level advisory locks outlive
      // the transaction, so they are let go too, before the connection serves anyone else. A client that
      // cannot do both is dropped.
      await client.query('ROLLBACK; SELECT pg_advisory_unlock_all()').then(
        () => {
          client.off('error', ignore);
          client.release();
        },
        (err: Error) => client.release(err),
      );
    }
  };

  const run = async (args: Record<string, unknown>, ctx: ToolContext): Promise<string> => {
    if (closed) throw new ToolError('the tool is shutting down', 'ERP_SQL_UNAVAILABLE');
    let text: string;
    let values: unknown[];
    if (spec.query !== undefined) {
      text = spec.query;
      values = (spec.args ?? []).map((arg) => args[arg] ?? null);
    } else {
      if (typeof args.sql !== 'string')
        throw new ToolError('argument "sql" must be a string', 'ERP_SQL_INVALID');
      await checkReadOnlySelect(args.sql);
      text = args.sql;
      values = [];
    }
    if (ctx.signal.aborted) throw ctx.signal.reason;
    pool ??= acquirePool(connectionString, scrub, log);

    const connecting = pool.connect();
    let client: pg.PoolClient;
    try {
      client = await untilAborted(connecting, ctx.signal);
    } catch (err) {
      if (ctx.signal.aborted) {
        connecting.then(
          (c) => c.release(),
          () => undefined,
        );
        throw ctx.signal.reason;
      }
      // Wrong password, unknown database, unreachable host: the details are for the log, not the model.
      log.warn({ err: scrub((err as Error).message ?? String(err)) }, 'Connecting to the database failed');
      throw new ToolError('the database is unavailable', 'ERP_SQL_UNAVAILABLE');
    }

    const running: Running = {};
    const work = execute(client, text, values, ctx, running);
    const onAbort = () => {
      if (running.pid !== undefined) running.cancelling = cancelBackend(running.pid);
      // Cut, a connection that has not cancelled and rolled back by now fails its query, and the pool drops it.
      const abandon = setTimeout(() => socketOf(client)?.destroy(), ABANDON_AFTER_MS);
      abandon.unref();
      const settled = work
        .catch(() => undefined)
        .finally(() => {
          clearTimeout(abandon);
          settling.delete(settled);
        });
      settling.add(settled);
    };
    ctx.signal.addEventListener('abort', onAbort, { once: true });
    try {
      // The caller is answered at once on abort; the statement is cancelled and rolled back behind it.
      return await untilAborted(work, ctx.signal);
    } finally {
      ctx.signal.removeEventListener('abort', onAbort);
    }
  };

  const provided: ProvidedTool = {
    name,
    description: freeForm
      ? [
          tool.spec.description ?? 'Queries a PostgreSQL database.',
          `Takes one read-only SELECT statement in "sql" (WITH, VALUES and TABLE work too);`,
          `returns at most ${maxRows} rows as JSON.`,
        ].join(' ')
      : (tool.spec.description ?? ''),
    parameters: freeForm
      ? freeFormParameters(tool.spec.parameters as DeclaredParameters | undefined)
      : ((tool.spec.parameters as Record<string, unknown> | undefined) ?? { type: 'object', properties: {} }),
    executor: { run },
    config: tool,
  };

  const provider: ToolProvider = {
    kind: 'sql',
    tools: () => [provided],
    warnings: () => warnings,
    async close() {
      if (closed) return;
      closed = true;
      await Promise.all([...settling, checkingAtStart]);
      if (pool) await releasePool(connectionString);
    },
  };
  return provider;
};

interface DeclaredParameters {
  description?: string;
  properties?: { sql?: { description?: string } };
}

/**
 * The one argument of sql without query. Declared parameters (validated to declare only `sql`, a
 * string) lend their descriptions: what the tables hold is worth telling the model.
 */
function freeFormParameters(declared: DeclaredParameters | undefined): Record<string, unknown> {
  const sql =
    declared?.properties?.sql?.description ?? 'One PostgreSQL SELECT statement. Nothing that writes.';
  return {
    type: 'object',
    ...(declared?.description === undefined ? {} : { description: declared.description }),
    properties: { sql: { type: 'string', description: sql } },
    required: ['sql'],
    additionalProperties: false,
  };
}
