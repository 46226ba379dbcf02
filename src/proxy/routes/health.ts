/**
 * /healthz: the process serves. /readyz: a valid ToolSet is loaded and the server listens. The body
 * reports MCP servers, whether the upstream takes tools (and when it last refused them) and the shared state (Redis), but none changes
 * the status: a down MCP server, a restarting vLLM or a Redis outage (the sidecar falls back to its own
 * cache and limits) must not take the pod out of its Service. `warnings` (when there are any)
 * names settings an operator should change, such as a SQL tool connected as a superuser.
 * `lastReloadFailure` names the last edit of the ToolSet that could not be loaded: the last good set still
 * serves, so that leaves the status alone too, but without it only the log would tell.
 */
import type { FastifyInstance } from 'fastify';
import type { ServerDeps } from '../server.js';

export async function healthRoutes(app: FastifyInstance, deps: ServerDeps): Promise<void> {
  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_request, reply) => {
    const ready = deps.isReady();
    const active = deps.current();
    const { mcp, warnings, sharedState } = active.tools.status();
    const lastReloadFailure = deps.lastReloadFailure?.();
    const refusedAt = active.upstreamState.toolsRefusedAt;
    return reply.code(ready ? 200 : 503).send({
      status: ready ? 'ready' : 'not ready',
      toolset: { name: active.toolset.name, hash: active.toolset.hash },
      upstream: {
        url: active.upstream.origin,
        toolsAccepted: active.upstreamState.toolsAccepted,
        // toolsAccepted reads true again a minute after a refusal, when tools are tried again.
        ...(refusedAt === undefined ? {} : { toolsRefusedAt: new Date(refusedAt).toISOString() }),
      },
      mcp,
      ...(sharedState ? { sharedState } : {}),
      ...(warnings.length ? { warnings } : {}),
      ...(lastReloadFailure ? { lastReloadFailure } : {}),
    });
  });
}
