import { describe, expect, it } from 'vitest';
import { calculate, currentTime } from '../../src/tools/builtin.js';
import { createToolRegistry } from '../../src/tools/registry.js';
import { ToolError } from '../../src/tools/types.js';
import { silentLogger, toolset } from './helpers.js';

// Sunday 9 March 2025, 13:05:07 UTC: a few hours after New York moved to daylight saving time.
const INSTANT = Date.UTC(2025, 2, 9, 13, 5, 7);

describe('builtin time', () => {
  it.each([
    ['Europe/Paris', '2025-03-09T14:05:07+01:00', 'Sunday'],
    ['America/New_York', '2025-03-09T09:05:07-04:00', 'Sunday'],
    ['Asia/Kolkata', '2025-03-09T18:35:07+05:30', 'Sunday'],
    ['Asia/Kathmandu', '2025-03-09T18:50:07+05:45', 'Sunday'],
    ['Pacific/Kiritimati', '2025-03-10T03:05:07+14:00', 'Monday'],
    ['UTC', '2025-03-09T13:05:07+00:00', 'Sunday'],
  ])('gives the date-time, offset and weekday in %s', (zone, datetime, weekday) => {
    expect(currentTime(INSTANT, zone)).toEqual({ datetime, weekday, timezone: zone });
  });

  it('names an unknown zone', () => {
    expect(() => currentTime(INSTANT, 'Mars/Olympus_Mons')).toThrow(ToolError);
    expect(() => currentTime(INSTANT, 'Mars/Olympus_Mons')).toThrow(/unknown time zone "Mars\/Olympus_Mons"/);
  });

  it('runs as a tool: no arguments means the server zone, a bad zone is an error result', async () => {
    const registry = await createToolRegistry(toolset([{ name: 'now', builtin: 'time' }]), {
      logger: silentLogger,
      now: () => INSTANT,
    });
    try {
      const signal = new AbortController().signal;
      const plain = await registry.call({ id: '1', name: 'now', arguments: '' }, signal);
      expect(plain.outcome).toBe('ok');
      expect(JSON.parse(plain.content)).toMatchObject({
        timezone: Intl.DateTimeFormat().resolvedOptions().timeZone,
      });

      const paris = await registry.call(
        { id: '2', name: 'now', arguments: '{"timezone":"Europe/Paris"}' },
        signal,
      );
      expect(JSON.parse(paris.content)).toEqual({
        datetime: '2025-03-09T14:05:07+01:00',
        weekday: 'Sunday',
        timezone: 'Europe/Paris',
      });

      const bad = await registry.call(
        { id: '3', name: 'now', arguments: '{"timezone":"Nowhere/Land"}' },
        signal,
      );
      expect(bad.outcome).toBe('error');
      expect(bad.content).toBe(
        'error: now failed: unknown time zone "Nowhere/Land"; use an IANA name such as Europe/Paris',
      );

      expect(registry.offered([])[0]).toMatchObject({
        type: 'function',
        function: { name: 'now', description: expect.stringContaining('IANA time zone') },
      });
    } finally {
      await registry.close();
    }
  });
});

describe('builtin calculator', () => {
  it.each([
    ['2 + 3 * 4', 14],
    ['(2 + 3) * 4', 20],
    ['10 - 4 - 3', 3],
    ['100 / 10 / 5', 2],
    ['2 ^ 3 ^ 2', 512],
    ['2 ** 10', 1024],
    ['-2 ^ 2', -4],
    ['(-2) ^ 2', 4],
    ['2 ^ -1', 0.5],
    ['--3', 3],
    ['-(4 - 10) * +2', 12],
    ['7 % 3', 1],
    ['-7 % 3', -1],
    ['0.1 + 0.2', 0.3],
    ['.5 * 4', 2],
    ['1e3 / 4', 250],
    ['2.5e-1 * 4', 1],
    ['3 × 4 ÷ 2', 6],
    ['sqrt(16) + abs(-3)', 7],
    ['round(2.5) + floor(2.7) + ceil(2.1)', 8],
    ['max(1, 5, 3) - min(4, 2)', 3],
    ['SQRT(2) ^ 2', 2],
    ['2 * pi', 6.28318530718],
    ['e', Number(Math.E.toPrecision(12))],
    ['  12.5*4 /3  ', 16.6666666667],
  ])('%s = %s', (expression, result) => {
    expect(calculate(expression)).toBe(result);
  });

  it.each([
    ['1 / 0', 'division by zero'],
    ['5 % (2 - 2)', 'division by zero'],
    ['2 +', 'expected a number but found the end of the expression'],
    ['(1 + 2', 'expected ")" but found the end of the expression'],
    ['1 2', 'unexpected "2" at position 3'],
    ['2 * * 3', 'expected a number but found "*"'],
    ['', 'the expression is empty'],
    ['process.exit()', 'unexpected "." at position 8'],
    ['process', 'unknown name "process"'],
    ['constructor', 'unknown name "constructor"'],
    ['__proto__', 'unexpected "_" at position 1'],
    ['1; 2', 'unexpected ";" at position 2'],
    ['2 😀 3', 'unexpected "😀" at position 3'],
    ['sqrt 4', 'expected "(" after sqrt'],
    ['sqrt(1, 2)', 'sqrt takes 1 argument(s)'],
    ['sqrt(-1)', 'the result is not a finite real number'],
    ['9 ^ 999', 'the result is not a finite real number'],
    [`${'('.repeat(200)}1${')'.repeat(200)}`, 'the expression is nested too deeply'],
    ['1+'.repeat(300), 'the expression is longer than 500 characters'],
  ])('refuses %j: %s', (expression, message) => {
    let error: unknown;
    try {
      calculate(expression);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ToolError);
    expect((error as ToolError).message).toContain(message);
  });

  it('runs as a tool and answers garbage with an error result, never by evaluating it', async () => {
    const registry = await createToolRegistry(toolset([{ name: 'calc', builtin: 'calculator' }]), {
      logger: silentLogger,
    });
    try {
      const signal = new AbortController().signal;
      const ok = await registry.call(
        { id: '1', name: 'calc', arguments: '{"expression":"(12.5 * 4) / 2"}' },
        signal,
      );
      expect([ok.outcome, ok.content]).toEqual(['ok', '25']);

      const injection = await registry.call(
        { id: '2', name: 'calc', arguments: JSON.stringify({ expression: 'process.exit(1)' }) },
        signal,
      );
      expect(injection.outcome).toBe('error');
      expect(injection.content).toBe('error: calc failed: unexpected "." at position 8');

      const missing = await registry.call({ id: '3', name: 'calc', arguments: '' }, signal);
      expect([missing.outcome, missing.content]).toEqual([
        'invalid_arguments',
        'error: invalid arguments for calc: expression is required',
      ]);
    } finally {
      await registry.close();
    }
  });
});
