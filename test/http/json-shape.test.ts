import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { jsonShape, jsonShapeProblem } from '../../src/http/json-shape.js';

/** The same, by walking what JSON.parse makes. */
function walked(value: unknown, depth = 0): { depth: number; structures: number } {
  if (value === null || typeof value !== 'object') return { depth, structures: 0 };
  let deepest = depth + 1;
  let structures = 1;
  for (const child of Object.values(value)) {
    const inner = walked(child, depth + 1);
    deepest = Math.max(deepest, inner.depth);
    structures += inner.structures;
  }
  return { depth: deepest, structures };
}

describe('jsonShape', () => {
  it('reads brackets outside strings only, escaped quotes included', () => {
    expect(jsonShape('{"a":"[{\\"}","b":[[],{}]}')).toEqual({ depth: 3, structures: 4 });
    expect(jsonShape('"[[["')).toEqual({ depth: 0, structures: 0 });
    expect(jsonShape('"\\\\"')).toEqual({ depth: 0, structures: 0 });
  });

  it('agrees with walking the parsed value, for any JSON', () => {
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 8 }), (value) => {
        expect(jsonShape(JSON.stringify(value))).toEqual(walked(value));
      }),
      { numRuns: 500 },
    );
  });

  it('finds where a string ends after any run of backslashes and quotes in it', () => {
    const tricky = fc.string({ unit: fc.constantFrom('\\', '"', '[', '{', '}', 'a'), maxLength: 12 });
    fc.assert(
      fc.property(
        fc.array(fc.oneof(tricky, fc.array(tricky, { maxLength: 3 })), { maxLength: 4 }),
        (value) => {
          expect(jsonShape(JSON.stringify(value))).toEqual(walked(value));
        },
      ),
      { numRuns: 2000 },
    );
  });

  it('stops reading once past a bound, and says which was passed', () => {
    const bounds = { depth: 3, structures: 5 };
    expect(jsonShapeProblem('[[[[1]]]]', bounds)).toBe('the body nests JSON more than 3 levels deep');
    expect(jsonShapeProblem('[{},{},{},{},{}]', bounds)).toBe(
      'the body holds more than 5 JSON objects and arrays',
    );
    expect(jsonShapeProblem('[{},{},{},{}]', bounds)).toBeUndefined();
    // Past the bound the rest is not read: a long tail of brackets costs nothing more.
    expect(jsonShape(`${'['.repeat(10)}${'{}'.repeat(1000)}`, bounds)).toEqual({ depth: 4, structures: 4 });
  });
});
