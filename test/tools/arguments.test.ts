import { describe, expect, it } from 'vitest';
import { createArgumentCompiler, MAX_ARGUMENT_BYTES, parseArguments } from '../../src/tools/arguments.js';

describe('parseArguments', () => {
  it('refuses text over 64 KiB, counted in UTF-8, before parsing it', () => {
    const fits = JSON.stringify({ q: 'x'.repeat(MAX_ARGUMENT_BYTES - 8) });
    expect(Buffer.byteLength(fits)).toBe(MAX_ARGUMENT_BYTES);
    expect(parseArguments(fits).ok).toBe(true);
    // 22,000 characters, 66,000 bytes; not JSON either, which is never looked at.
    expect(parseArguments(`{${'€'.repeat(22_000)}`)).toEqual({
      ok: false,
      problem: 'they are 66001 bytes long, over the limit of 64 KiB',
    });
  });
});

describe('createArgumentCompiler', () => {
  const compile = (parameters: Record<string, unknown>) => {
    const unusable: string[] = [];
    const check = createArgumentCompiler()(parameters, (problem) => unusable.push(problem));
    return { check, unusable };
  };

  it('stops at the first error, however many items fail', () => {
    const { check } = compile({
      type: 'object',
      properties: { xs: { type: 'array', items: { type: 'string', minLength: 2 } } },
    });
    expect(check({ xs: Array(20_000).fill('') })).toBe('xs[0] must NOT have fewer than 2 characters');
  });

  it('checks nothing with a schema it would check in quadratic time (uniqueItems on untyped items)', () => {
    const ids = (items?: Record<string, unknown>) =>
      compile({ type: 'object', properties: { ids: { type: 'array', uniqueItems: true, items } } });
    const untyped = ids();
    expect(untyped.unusable).toEqual([
      expect.stringMatching(/^properties\.ids uses uniqueItems on items without a primitive type/),
    ]);
    expect(untyped.check({ ids: [[1], [1]] })).toBeUndefined();
    // A property named uniqueItems is not the keyword.
    expect(compile({ type: 'object', properties: { uniqueItems: { type: 'boolean' } } }).unusable).toEqual(
      [],
    );
    // Primitive items are checked with a hash lookup, in linear time.
    const typed = ids({ type: 'integer' });
    expect(typed.unusable).toEqual([]);
    expect(typed.check({ ids: [1, 2, 1] })).toMatch(/^ids must NOT have duplicate items/);
  });
});
