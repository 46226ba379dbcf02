/** Every other /v1/* request (GET /v1/models above all) goes to the upstream unchanged. */
import type { FastifyInstance } from 'fastify';
import { errorBody, ProxyError } from '../errors.js';
import type { ServerDeps } from '../server.js';

export async function passthroughRoutes(app: FastifyInstance, deps: ServerDeps): Promise<void> {
  // Bodies stay bytes here: this plugin's scope replaces the JSON parser.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));
  app.all('/v1/*', async (request, reply) => {
    const { upstream } = deps.current();
    const abort = new AbortController();
    reply.raw.on('close', () => abort.abort());
    try {
      const res = await upstream.passthrough(
        request.method,
        request.url,
        request.headers,
        request.body as Buffer | undefined,
        abort.signal,
      );
      return reply.code(res.statusCode).headers(res.headers).send(res.body);
    } catch (err) {
      const e = new ProxyError(
        'ERP_UPSTREAM_UNREACHABLE',
        `upstream ${upstream.origin} unreachable: ${(err as Error).message}`,
      );
      return reply.code(e.status).header('x-should-retry', 'false').send(errorBody(e));
    }
  });
}
