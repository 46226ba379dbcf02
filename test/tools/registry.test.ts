import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterEach, describe, expect, it } from 'vitest';
import { createBuiltinExecutor } from '../../src/tools/builtin.js';
import {
  createToolRegistry,
  keywordPattern,
  type ToolRegistry,
  ToolTable,
} from '../../src/tools/registry.js';
import type { ProvidedTool, ToolProvider } from '../../src/tools/types.js';
import { capturingLogger, silentLogger, startServer, type TestServer, toolset } from './helpers.js';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function registry(
  tools: Record<string, unknown>[],
  spec: Record<string, unknown> = {},
): Promise<ToolRegistry> {
  const r = await createToolRegistry(toolset(tools, spec), { logger: silentLogger, env: {} });
  cleanups.push(() => r.close());
  return r;
}

async function server(): Promise<TestServer> {
  const s = await startServer((req, res) => {
    if (req.url === '/slow') return;
    if (req.url === '/fail') {
      res.writeHead(500);
      res.end();
      return;
    }
    res.writeHead(200, {
      'content-type': req.url === '/euro' ? 'text/plain; charset=utf-8' : 'application/json',
    });
    res.end(req.url === '/euro' ? '€'.repeat(100) : JSON.stringify({ path: req.url, body: req.body }));
  });
  cleanups.push(() => s.close());
  return s;
}

let ids = 0;
const call = (r: ToolRegistry, name: string, args: string, signal = new AbortController().signal) =>
  r.call({ id: `c${++ids}`, name, arguments: args }, signal);

const weather = {
  name: 'get_weather',
  description: 'Current weather.',
  parameters: {
    type: 'object',
    properties: {
      latitude: { type: 'number', minimum: -90, maximum: 90 },
      longitude: { type: 'number' },
      units: { enum: ['metric', 'imperial'] },
    },
    required: ['latitude', 'longitude'],
    additionalProperties: false,
  },
};

describe('tool registry: offering', () => {
  it('offers OpenAI function definitions, in ToolSet order', async () => {
    const r = await registry([
      { name: 'now', builtin: 'time' },
      { name: 'calc', description: 'Arithmetic.', builtin: 'calculator' },
      { name: 'ping', http: { url: 'http://127.0.0.1:9/ping' } },
    ]);
    const offered = r.offered([]);
    expect(offered.map((d) => d.function.name)).toEqual(['now', 'calc', 'ping']);
    expect(offered[1]).toEqual({
      type: 'function',
      function: {
        name: 'calc',
        description: 'Arithmetic.',
        parameters: {
          type: 'object',
          properties: { expression: expect.any(Object) },
          required: ['expression'],
        },
      },
    });
    // An http tool without parameters takes an empty object; without a description it sends none.
    expect(offered[2]).toEqual({
      type: 'function',
      function: { name: 'ping', parameters: { type: 'object', properties: {} } },
    });
    expect(r.has('calc')).toBe(true);
    expect(r.has('get_weather')).toBe(false);
    expect(r.status()).toEqual({ mcp: [], warnings: [] });
  });

  it('offers a tool with when.keywords only when a keyword starts a word of a recent user message', async () => {
    const r = await registry([
      { name: 'now', builtin: 'time' },
      { name: 'forecast', when: { keywords: ['rain', 'weather', 'über', 'c++'] }, builtin: 'time' },
    ]);
    const names = (...texts: string[]) => r.offered(texts).map((d) => d.function.name);
    expect(names('Will it be raining tomorrow?')).toEqual(['now', 'forecast']);
    expect(names('WEATHER please')).toEqual(['now', 'forecast']);
    expect(names('I took the train', 'and tomorrow?')).toEqual(['now']);
    expect(names('is it raining?', 'and tomorrow?')).toEqual(['now', 'forecast']);
    expect(names('Über den Wolken')).toEqual(['now', 'forecast']);
    expect(names('wir gehen rübergehen')).toEqual(['now']);
    expect(names('I like C++ a lot')).toEqual(['now', 'forecast']);
    expect(names()).toEqual(['now']);
  });

  it('matches keywords Unicode-aware and case-insensitively', () => {
    const pattern = keywordPattern(['été', 'ΚΑΙΡΌΣ', 'a.b']);
    expect(pattern.test("L'Été sera chaud")).toBe(true);
    expect(pattern.test('pas d’étés cette année')).toBe(true);
    expect(pattern.test('unété')).toBe(false);
    expect(pattern.test('ο καιρός σήμερα')).toBe(true);
    expect(pattern.test('a.b')).toBe(true);
    expect(pattern.test('axb')).toBe(false);
  });

  it('gives each tool its filler: undefined falls back to voice.filler, "" means none', async () => {
    const r = await registry([
      { name: 'a', builtin: 'time' },
      { name: 'b', filler: 'Let me see. ', builtin: 'time' },
      { name: 'c', filler: '', builtin: 'time' },
    ]);
    expect([r.filler('a'), r.filler('b'), r.filler('c'), r.filler('zzz')]).toEqual([
      undefined,
      'Let me see. ',
      '',
      undefined,
    ]);
  });
});

describe('tool registry: call outcomes', () => {
  it('answers an unknown name with the names of the tools', async () => {
    const r = await registry([
      { name: 'now', builtin: 'time' },
      { name: 'calc', builtin: 'calculator' },
    ]);
    const outcome = await call(r, 'get_wether', '{}');
    expect(outcome).toMatchObject({
      outcome: 'unknown_tool',
      content: 'error: there is no tool named "get_wether"; the tools are "now", "calc"',
      remember: true,
      call: { name: 'get_wether', arguments: '{}' },
    });
    expect(outcome.seconds).toBeGreaterThanOrEqual(0);
  });

  it('takes empty or blank arguments as {}', async () => {
    const r = await registry([{ name: 'now', builtin: 'time' }]);
    for (const args of ['', '   ', '\n']) expect((await call(r, 'now', args)).outcome).toBe('ok');
  });

  it('answers arguments that are not JSON, or not an object, with the problem', async () => {
    const r = await registry([{ ...weather, http: { url: 'http://127.0.0.1:9/w' } }]);
    const broken = await call(r, 'get_weather', '{"latitude": 52.5,');
    expect(broken.outcome).toBe('invalid_arguments');
    expect(broken.content).toMatch(
      /^error: the arguments for get_weather are wrong: they are not valid JSON \(.+\)$/,
    );
    for (const args of ['[1, 2]', '"Berlin"', 'null', '42']) {
      expect(await call(r, 'get_weather', args)).toMatchObject({
        outcome: 'invalid_arguments',
        content: 'error: the arguments for get_weather are wrong: they must be a JSON object',
      });
    }
  });

  it('checks arguments against the parameters schema and names the first wrong field', async () => {
    const s = await server();
    const r = await registry([{ ...weather, http: { url: `${s.origin}/w{?latitude,longitude}` } }]);
    // Only the first: collecting every error of hostile arguments (one per array item) costs far more.
    expect(
      await call(r, 'get_weather', '{"latitude": "north", "units": "kelvin", "city": "Paris"}'),
    ).toMatchObject({
      outcome: 'invalid_arguments',
      content: 'error: invalid arguments for get_weather: longitude is required',
    });
    expect(await call(r, 'get_weather', '{"latitude": 95, "longitude": 0}')).toMatchObject({
      outcome: 'invalid_arguments',
      content: 'error: invalid arguments for get_weather: latitude must be <= 90',
    });
    expect(s.requests).toHaveLength(0);
    expect(await call(r, 'get_weather', '{"longitude": 13.4, "latitude": 52.5}')).toMatchObject({
      outcome: 'ok',
    });
    expect(s.requests).toHaveLength(1);
  });

  it('labels ok, error, timeout and cancelled, and reports whether to remember', async () => {
    const s = await server();
    const r = await registry([
      { name: 'ok', http: { url: `${s.origin}/ok` } },
      { name: 'fail', http: { url: `${s.origin}/fail` } },
      { name: 'slow', timeout: '300ms', http: { url: `${s.origin}/slow` } },
      { name: 'secret', memory: false, http: { url: `${s.origin}/ok` } },
    ]);
    expect(await call(r, 'ok', '')).toMatchObject({
      outcome: 'ok',
      content: '{"path":"/ok","body":""}',
      remember: true,
    });
    expect(await call(r, 'fail', '')).toMatchObject({
      outcome: 'error',
      content: `error: fail failed: HTTP 500 from ${new URL(s.origin).host}`,
    });
    expect(await call(r, 'slow', '')).toMatchObject({
      outcome: 'timeout',
      content: 'error: slow timed out after 0.3s',
    });
    expect(await call(r, 'secret', '')).toMatchObject({ outcome: 'ok', remember: false });

    const controller = new AbortController();
    controller.abort();
    expect(await call(r, 'slow', '', controller.signal)).toMatchObject({
      outcome: 'cancelled',
      content: 'error: slow was cancelled',
    });
    // The already-aborted call never reached the server.
    expect(s.requests.filter((q) => q.url === '/slow')).toHaveLength(1);
  });

  it('cuts results to maxResultBytes without splitting a character, and marks the cut', async () => {
    const s = await server();
    const r = await registry([{ name: 'euro', http: { url: `${s.origin}/euro` } }], {
      limits: { maxResultBytes: 64 },
    });
    const outcome = await call(r, 'euro', '');
    expect(outcome.outcome).toBe('ok');
    expect(Buffer.byteLength(outcome.content)).toBeLessThanOrEqual(64);
    expect(outcome.content).toMatch(/^€+…\(truncated\)$/);
    expect(outcome.content).not.toContain('\uFFFD');
  });
});

describe('tool table: lists that change at runtime', () => {
  const config = toolset([{ name: 'x', builtin: 'time' }]).tools[0]!;
  const tool = (name: string, index: number): ProvidedTool => ({
    name,
    description: `${name} from entry ${index}`,
    parameters: { type: 'object', properties: {} },
    executor: createBuiltinExecutor('time'),
    config: { ...config, index, kind: 'mcp', spec: { mcp: { url: `http://mcp-${index}.test/mcp` } } },
  });
  const changing = (index: number, names: string[]) => {
    let listener = () => {};
    let tools = names.map((n) => tool(n, index));
    const provider: ToolProvider = {
      kind: 'mcp',
      tools: () => tools,
      onChange: (l) => {
        listener = l;
      },
    };
    return {
      provider,
      list: (next: string[]) => {
        tools = next.map((n) => tool(n, index));
        listener();
      },
    };
  };

  it('rebuilds after a change, and a clash keeps the tool that had the name', () => {
    const { logger, lines } = capturingLogger();
    const first = changing(0, ['lights_on']);
    const second = changing(1, ['weather']);
    const table = new ToolTable([first.provider, second.provider], logger);
    expect([...table.current().tools.keys()]).toEqual(['lights_on', 'weather']);

    // The first server now lists a name the second one already holds: the newcomer is dropped.
    first.list(['lights_on', 'weather', 'lights_off']);
    const after = table.current();
    expect([...after.tools.keys()]).toEqual(['lights_on', 'lights_off', 'weather']);
    expect(after.tools.get('weather')?.description).toBe('weather from entry 1');
    const errors = lines().filter((l) => l.level === 50);
    expect(errors).toHaveLength(1);
    expect(errors[0]?.msg).toBe(
      'Dropped tool "weather" of spec.tools[0] (mcp http://mcp-0.test/mcp): ' +
        'spec.tools[1] (mcp http://mcp-1.test/mcp) already has a tool of that name',
    );

    // Without a previous holder, the earlier entry wins.
    second.list([]);
    expect(table.current().tools.get('weather')?.description).toBe('weather from entry 0');
    expect(table.current()).toBe(table.current());
  });
});

describe('tool table: memory', () => {
  it('lets go of the compiled schemas of lists that were replaced', () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const config = toolset([{ name: 'x', builtin: 'time' }]).tools[0]!;
    const list = () =>
      Array.from(
        { length: 20 },
        (_, i): ProvidedTool => ({
          name: `tool_${i}`,
          description: '',
          parameters: {
            type: 'object',
            properties: { city: { type: 'string', pattern: `^[a-z]{${i + 1}}$` }, n: { type: 'integer' } },
            required: ['city'],
          },
          executor: createBuiltinExecutor('time'),
          config,
        }),
      );
    let tools = list();
    let changed = () => {};
    const provider: ToolProvider = {
      kind: 'mcp',
      tools: () => tools,
      onChange: (listener) => {
        changed = listener;
      },
    };
    const table = new ToolTable([provider], silentLogger);
    const relist = (times: number) => {
      for (let i = 0; i < times; i++) {
        tools = list();
        changed();
        expect(table.current().tools.size).toBe(20);
      }
    };
    relist(10);
    gc();
    const before = process.memoryUsage().heapUsed;
    relist(100);
    gc();
    gc();
    // Kept schemas cost about 4 KB each: these 2,000 would hold 8 MB.
    expect(process.memoryUsage().heapUsed - before).toBeLessThan(2 * 1024 * 1024);
  });
});
