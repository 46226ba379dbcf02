import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { parseToolSet } from '../../src/toolset/validate.js';
import { renderValidatorModule, VALIDATOR_FILE } from '../../src/toolset/validator-gen.js';

describe('the generated ToolSet validator', () => {
  it(`is up to date in ${VALIDATOR_FILE}`, async () => {
    const onDisk = await readFile(VALIDATOR_FILE, 'utf8').catch(() => '');
    expect(onDisk === renderValidatorModule(), `${VALIDATOR_FILE} is stale: run npm run gen:crd`).toBe(true);
  });

  it('checks the formats the schema declares', () => {
    const doc = (when: string, timeout: string) => `apiVersion: earpiece.dev/v1alpha1
kind: ToolSet
metadata: { name: a }
spec: { tools: [{ name: t, builtin: time, timeout: ${timeout} }] }
status: { conditions: [{ type: Ready, status: "True", reason: Valid, message: "", lastTransitionTime: "${when}" }] }
`;
    expect(parseToolSet(doc('2026-11-25T16:00:00Z', '3s')).issues).toEqual([]);
    expect(parseToolSet(doc('yesterday', '3s')).issues).toEqual([
      { path: 'status.conditions[0].lastTransitionTime', message: '"yesterday" is not a date-time' },
    ]);
    expect(parseToolSet(doc('2026-11-25T16:00:00Z', '3 s')).issues).toEqual([
      { path: 'spec.tools[0].timeout', message: '"3 s" is not a duration (use 500ms, 5s, 10m)' },
    ]);
  });
});
