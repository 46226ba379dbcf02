import { describe, expect, it } from 'vitest';
import { buildStatus } from '../../src/operator/status.js';
import { MAX_CONDITION_MESSAGE } from '../../src/toolset/index.js';

const NOW = new Date('2025-01-01T00:00:00Z');

function messageOf(message: string): string {
  const status = buildStatus(
    undefined,
    {
      observedGeneration: 1,
      tools: 1,
      conditions: [{ type: 'RestartRequired', status: 'True', reason: 'SecretEnvMissing', message }],
    },
    NOW,
  );
  return status.conditions![0]!.message;
}

describe('buildStatus', () => {
  it("cuts a condition message to the CRD's limit, saying how much is left out", () => {
    // A hundred Secrets with names and keys near their 253-character limit.
    const secrets = Array.from({ length: 100 }, (_, i) => `${`s${i}-`.padEnd(253, 'x')}/${'k'.repeat(150)}`);
    const long = `pods backend-1 started before secret ${secrets.join(', ')} was added and lack its env var`;
    expect(long.length).toBeGreaterThan(MAX_CONDITION_MESSAGE);
    const cut = messageOf(long);
    expect(cut.length).toBeLessThanOrEqual(MAX_CONDITION_MESSAGE);
    const [, kept, more] = /^([\s\S]*) … and (\d+) more characters$/.exec(cut) ?? [];
    expect(long.startsWith(kept!)).toBe(true);
    expect(kept!.length + Number(more)).toBe(long.length);
  });

  it('keeps a message that fits as it is', () => {
    const fits = 'y'.repeat(MAX_CONDITION_MESSAGE);
    expect(messageOf(fits)).toBe(fits);
  });
});
