/** startProxy called from code: what it refuses before starting anything. */
import { describe, expect, it } from 'vitest';
import { startProxy } from '../../src/proxy/start.js';

describe('startProxy', () => {
  it.each([
    ['http://user:s3cret@127.0.0.1:8000/v1', /^upstreamUrl ends in \/v1; /],
    ['http://user:s3cret@127.0.0.1:99999', /^upstreamUrl has port 99999; /],
    ['http://user:s3cret@127.0.0.1:0', /^upstreamUrl has port 0; /],
    ['ftp://user:s3cret@127.0.0.1', /^upstreamUrl is not an http:\/\/ or https:\/\/ URL$/],
    ['s3cret host', /^upstreamUrl is not a valid URL: /],
  ])(
    'refuses the upstream URL %s at once, naming the problem but not the URL',
    async (upstreamUrl, message) => {
      // No ToolSet file: the URL is refused before one is read.
      const failure = await startProxy({ toolsetPath: '/nonexistent/toolset.yaml', upstreamUrl }).catch(
        (err: unknown) => err,
      );
      expect(failure).toMatchObject({ code: 'ERP_UPSTREAM_CONFIG', message: expect.stringMatching(message) });
      expect((failure as Error).message).not.toContain('s3cret');
    },
  );
});
