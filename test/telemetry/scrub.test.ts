/** Secrets out of error texts: the one scrubber, and an LLM server that echoes the request's Authorization. */
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { errorReply, textReply } from '../../src/demo/scripted-upstream.js';
import { createLogger } from '../../src/telemetry/log.js';
import { scrubCredentials, secretScrubber } from '../../src/telemetry/scrub.js';
import { useScriptedProxy } from '../support/proxy.js';

const { setup } = useScriptedProxy();

describe('secretScrubber', () => {
  it('removes the given values, the token alone, and any credential after a scheme or in an auth header', () => {
    const scrub = secretScrubber(['Bearer sk-server-0123', 'pw', undefined, 'postgres://u:hunter22@db/x']);
    expect(scrub('got Bearer sk-server-0123 and sk-server-0123')).toBe('got [redacted] and [redacted]');
    expect(scrub('connect postgres://u:hunter22@db/x failed')).toBe('connect [redacted] failed');
    // Two characters would blank out words; they stay.
    expect(scrub('pw is short')).toBe('pw is short');
    expect(scrubCredentials('{"Authorization":"Bearer tok.en-1","x":1}')).toBe(
      '{"Authorization":"Bearer [redacted]","x":1}',
    );
    expect(scrubCredentials('authorization: abcdef x-api-key=k123 Basic dXNlcjpwYXNz')).toBe(
      'authorization: [redacted] x-api-key=[redacted] Basic [redacted]',
    );
    expect(scrubCredentials('The context length is 4096 tokens.')).toBe('The context length is 4096 tokens.');
  });
});

describe('an LLM server whose error echoes the Authorization header', () => {
  it('reaches neither the client’s error body nor the log with it', async () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk, _encoding, done) {
        lines.push(String(chunk));
        done();
      },
    });
    const { harness } = await setup(
      (req) =>
        req.body.stream === true && req.headers.authorization
          ? errorReply(401, `invalid key in header authorization: ${req.headers.authorization}`)
          : { sse: textReply('never') },
      { tools: [], upstream: { apiKey: { value: 'sk-server-side-secret' } } },
      { logger: createLogger('test', 'info', sink) },
    );
    const res = await fetch(`${harness.proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer sk-client-own-token' },
      body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'Hi' }] }),
      signal: AbortSignal.timeout(5_000),
    });
    const body = await res.text();
    expect(res.status).toBe(502);
    expect(JSON.parse(body)).toMatchObject({ error: { code: 'ERP_UPSTREAM_STATUS' } });
    expect(body).toContain('[redacted]');
    expect(body).not.toContain('sk-server-side-secret');
    const log = lines.join('');
    expect(log).toContain('ERP_UPSTREAM_STATUS');
    expect(log).not.toContain('sk-server-side-secret');
    expect(log).not.toContain('sk-client-own-token');
  });
});
