/**
 * The proxy's lifecycle: load the ToolSet (refusing to start on an invalid one, with every problem
 * named), build tools and upstream, listen on both ports, follow ToolSet edits, and on close stop
 * accepting, let open turns finish (up to turnTimeout), flush telemetry.
 */
import type { AddressInfo } from 'node:net';
import { IdleCollection, type IdleCollectionOptions, releaseStartupMemory } from '../runtime/heap.js';
import { createTelemetry, type ProxyTelemetry } from '../telemetry/index.js';
import { createLogger, type Logger } from '../telemetry/log.js';
import { scrubCredentials } from '../telemetry/scrub.js';
import { createToolRegistry } from '../tools/registry.js';
import type { ResolvedToolSet } from '../toolset/defaults.js';
import type { ToolSetErrorCode } from '../toolset/errors.js';
import { loadToolSetFile, ToolSetWatcher } from '../toolset/load.js';
import { formatIssues, upstreamUrlProblem } from '../toolset/validate.js';
import { resolveValue } from '../toolset/values.js';
import type { ActiveToolSet } from './active.js';
import { DeferredCalls } from './deferral.js';
import { createMemory } from './memory.js';
import {
  buildMetricsServer,
  buildServer,
  type ReloadFailure,
  type ServerDeps,
  type ServerLimits,
} from './server.js';
import { Upstream, UpstreamState } from './upstream.js';
import { LanguagePicker } from './voice.js';

/** Connections waiting to be accepted. */
const LISTEN_BACKLOG = 4096;

export const DEFAULT_UPSTREAM_URL = 'http://127.0.0.1:8000';

export interface ProxyOptions {
  toolsetPath: string;
  /** Overrides spec.upstream.url (flag --upstream / EARPIECE_UPSTREAM_URL). */
  upstreamUrl?: string | undefined;
  host?: string;
  port?: number;
  metricsHost?: string;
  metricsPort?: number;
  env?: NodeJS.ProcessEnv;
  logger?: Logger;
  telemetry?: ProxyTelemetry;
  /** Follow changes of the ToolSet file (default true). */
  watch?: boolean;
  /** The chat port's request timeout and body memory (defaults in server.ts). */
  limits?: ServerLimits;
  /** A tool call's time for the shared state (default 50 ms); tests on a loaded machine give it more. */
  sharedStateBudgetMs?: number;
  /** When the memory a load grew is given back (src/runtime/heap.ts; needs node's --expose-gc); afterMs 0: never. */
  idleCollection?: Pick<IdleCollectionOptions, 'afterMs' | 'growthBytes'>;
}

export interface RunningProxy {
  /** Base URL of the chat port, without /v1 (what KYUTAI_LLM_URL gets). */
  url: string;
  metricsUrl: string;
  current(): ActiveToolSet;
  /** Re-reads the ToolSet file now (what the file watcher does on a change). */
  reload(): Promise<void>;
  close(): Promise<void>;
}

export class ToolSetLoadError extends Error {
  readonly code: ToolSetErrorCode = 'ERP_TOOLSET_INVALID';
}

export class UpstreamConfigError extends Error {
  readonly code: ToolSetErrorCode = 'ERP_UPSTREAM_CONFIG';
}

export async function startProxy(options: ProxyOptions): Promise<RunningProxy> {
  // Before anything is started, so an embedder hears what is wrong rather than a failed turn later; the
  // problem never quotes the URL, which may carry user:pass@.
  const problem = options.upstreamUrl === undefined ? undefined : upstreamUrlProblem(options.upstreamUrl);
  if (problem) throw new UpstreamConfigError(`upstreamUrl ${problem}`);
  const env = options.env ?? process.env;
  const logger = options.logger ?? createLogger('proxy');
  const loaded = await loadToolSetFile(options.toolsetPath, env);
  if (!loaded.ok) {
    throw new ToolSetLoadError(
      `${options.toolsetPath} is not a usable ToolSet:\n${formatIssues(loaded.issues)}`,
    );
  }
  const telemetry = options.telemetry ?? (await createTelemetry({ logger }));

  /**
   * --upstream (EARPIECE_UPSTREAM_URL) overrides spec.upstream.url. An edit that drops spec.upstream.url
   * with neither set keeps the server in use: in a pod injected for a ToolSet that named its upstream,
   * the app's KYUTAI_LLM_URL points at this proxy and the sidecar was never handed the app's own, so the
   * built-in default would be a server nobody runs (the operator's RestartRequired names such pods).
   */
  const upstreamFor = (toolset: ResolvedToolSet, previous?: ActiveToolSet): Upstream => {
    let url = options.upstreamUrl ?? toolset.upstream.url;
    if (
      options.upstreamUrl !== undefined &&
      toolset.upstream.url !== undefined &&
      options.upstreamUrl !== toolset.upstream.url &&
      previous?.toolset.upstream.url !== toolset.upstream.url
    ) {
      // Origins only: either URL may carry credentials (user:password@, a key in the query).
      logger.warn(
        {
          toolset: toolset.name,
          upstream: originOf(options.upstreamUrl),
          ignored: originOf(toolset.upstream.url),
        },
        'The ToolSet names spec.upstream.url, but --upstream (EARPIECE_UPSTREAM_URL) overrides it: kept the upstream it names. In a pod injected while the ToolSet named no upstream, restart the pod so the webhook injects it for the URL the ToolSet names (its RestartRequired condition lists such pods).',
      );
    }
    if (url === undefined && previous) {
      url = previous.upstream.options.url;
      if (previous.toolset.upstream.url !== undefined) {
        logger.warn(
          { toolset: toolset.name, upstream: previous.upstream.origin },
          "The changed ToolSet names no spec.upstream.url and no --upstream or EARPIECE_UPSTREAM_URL is set: kept the upstream in use. Set spec.upstream.url, or restart the proxy (in a pod, restart the pod so the webhook hands it the app's KYUTAI_LLM_URL).",
        );
      }
    }
    url ??= DEFAULT_UPSTREAM_URL;
    const apiKey = toolset.upstream.apiKey
      ? resolveValue(toolset.upstream.apiKey, 'spec.upstream.apiKey', env)
      : undefined;
    return new Upstream({ url, apiKey, timeoutMs: toolset.limits.turnTimeoutMs });
  };

  // One for the process, not per set: a deferred call outlives its turn, and may outlive the set it began on.
  const deferred = new DeferredCalls(
    () => active.memory,
    (outcome) => telemetry.deferredCall({ toolset: active.toolset.name, outcome }),
    logger,
  );

  const build = async (toolset: ResolvedToolSet, previous?: ActiveToolSet): Promise<ActiveToolSet> => {
    const tools = await createToolRegistry(toolset, {
      env,
      logger,
      ...(options.sharedStateBudgetMs === undefined
        ? {}
        : { sharedStateBudgetMs: options.sharedStateBudgetMs }),
      onSharedState: (e) =>
        telemetry.sharedState(
          e.kind === 'connection'
            ? { toolset: toolset.name, event: e.up ? 'up' : 'down' }
            : { toolset: toolset.name, event: 'fallback', operation: e.operation },
        ),
    });
    let upstream: Upstream | undefined;
    try {
      upstream = upstreamFor(toolset, previous);
      const sameUpstream = previous && previous.upstream.origin === upstream.origin;
      // Tool names are the only tool label values the metrics accept; MCP servers add theirs as they list them.
      const announce = () =>
        telemetry.toolsetLoaded({
          toolset: toolset.name,
          hash: toolset.hash,
          tools: tools.list().map((t) => ({ name: t.name, timeoutSeconds: t.timeoutMs / 1000 })),
        });
      announce();
      tools.onChange(announce);
      const memory = createMemory(toolset, telemetry, previous?.memory);
      return {
        toolset,
        tools,
        upstream,
        // What we learned about the upstream (no tools, no kwargs) survives a reload to the same server.
        upstreamState: sameUpstream ? previous.upstreamState : new UpstreamState(),
        memory,
        language: LanguagePicker.for(toolset),
        deferred,
      };
    } catch (err) {
      // The registry already holds MCP sessions, a SQL pool, a Redis client: a set never served must not keep them.
      await Promise.all([tools.close(), upstream?.close()]);
      throw err;
    }
  };

  let active = await build(loaded.toolset);
  let ready = false;
  /** Replaced sets whose tools are still open; close() closes them too. */
  const retiring = new Set<ActiveToolSet>();
  const closeSet = async (set: ActiveToolSet) => {
    if (!retiring.delete(set) && set !== active) return;
    await Promise.all([set.tools.close(), set.upstream.close()]);
  };
  const retire = (old: ActiveToolSet) => {
    retiring.add(old);
    // Turns that started on the old set keep it until they end; the turn timeout bounds that. Calls they
    // deferred run on to their tool timeout, on the old set's tools (an MCP session would cut them).
    setTimeout(() => {
      void deferred.settled(old.tools).then(() => closeSet(old));
    }, old.toolset.limits.turnTimeoutMs).unref();
  };

  /** The last edit that could not be loaded, for /readyz; cleared by the next one that loads. */
  let lastReloadFailure: ReloadFailure | undefined;
  const reloadFailed = (message: string) => {
    lastReloadFailure = { message: scrubCredentials(message), at: new Date().toISOString() };
    telemetry.toolsetReloadFailed({ toolset: active.toolset.name });
  };

  const idleCollection = IdleCollection.forProcess({
    ...options.idleCollection,
    busy: () => deferred.busy,
    onCollected: ({ rssBeforeBytes, rssAfterBytes, ms }) =>
      logger.info(
        { rssBeforeMiB: mib(rssBeforeBytes), rssAfterMiB: mib(rssAfterBytes), ms: Math.round(ms) },
        'Gave back the memory the last load grew, with no turn open.',
      ),
  });
  const deps: ServerDeps = {
    current: () => active,
    isReady: () => ready,
    lastReloadFailure: () => lastReloadFailure,
    telemetry,
    logger,
    turnActivity: idleCollection,
  };
  const app = buildServer(deps, options.limits);
  const metricsApp = buildMetricsServer(deps);
  // Node's default backlog of 511 drops connections when Unmute reconnects many sessions at once (after a
  // restart), and a dropped SYN costs the user a 1 s retransmission; the kernel caps it at somaxconn.
  await app.listen({ host: options.host ?? '0.0.0.0', port: options.port ?? 8095, backlog: LISTEN_BACKLOG });
  await metricsApp.listen({ host: options.metricsHost ?? '0.0.0.0', port: options.metricsPort ?? 9464 });
  ready = true;

  const watcher = new ToolSetWatcher(options.toolsetPath, loaded.text, env);
  let swapping = Promise.resolve();
  watcher.on('change', (toolset) => {
    swapping = swapping.then(async () => {
      try {
        const next = await build(toolset, active);
        const old = active;
        active = next;
        retire(old);
        lastReloadFailure = undefined;
        logger.info({ toolset: toolset.name, hash: toolset.hash }, 'Loaded the changed ToolSet.');
      } catch (err) {
        reloadFailed((err as Error).message);
        logger.error(
          { err: (err as Error).message },
          'Kept the last good ToolSet: the new one could not be started.',
        );
      }
    });
  });
  watcher.on('rejected', (issues) => {
    const problems = issues.map((i) => `${i.path}: ${i.message}`);
    logger.error({ issues: problems }, 'Kept the last good ToolSet: the edited file is invalid.');
    // After any swap still starting: this edit came later, so a load finishing now must not clear it.
    swapping = swapping.then(() => reloadFailed(problems.join('; ')));
  });
  if (options.watch !== false) watcher.start();

  const address = (server: typeof app) => {
    const a = server.server.address() as AddressInfo;
    const host =
      a.family === 'IPv6'
        ? `[${a.address === '::' ? '::1' : a.address}]`
        : a.address === '0.0.0.0'
          ? '127.0.0.1'
          : a.address;
    return `http://${host}:${a.port}`;
  };

  logger.info(
    {
      url: address(app),
      metrics: address(metricsApp),
      toolset: active.toolset.name,
      upstream: active.upstream.origin,
    },
    'Proxy listening.',
  );
  // Last, since what listening and the log allocate would grow the young generation again. A request that
  // comes this early waits for the collection (35 to 50 ms here; more for a larger heap).
  releaseStartupMemory();
  idleCollection?.startupReleased();

  return {
    url: address(app),
    metricsUrl: address(metricsApp),
    current: () => active,
    reload: async () => {
      await watcher.check();
      await swapping;
    },
    close: async () => {
      ready = false;
      watcher.close();
      idleCollection?.close();
      const drain = setTimeout(() => app.server.closeAllConnections(), active.toolset.limits.turnTimeoutMs);
      // A connection whose turn just ended would otherwise hold the close until the client's keep-alive lapses.
      const sweep = setInterval(() => app.server.closeIdleConnections(), 100);
      await app.close();
      clearTimeout(drain);
      clearInterval(sweep);
      await metricsApp.close();
      await Promise.all([active, ...retiring].map(closeSet));
      await telemetry.shutdown();
    },
  };
}

function mib(bytes: number): number {
  return Math.round((bytes / 2 ** 20) * 10) / 10;
}

/** A URL's origin, for logs (never its userinfo, path or query). */
function originOf(url: string): string {
  try {
    return new URL(url).origin;
  } catch {
    return '(not a URL)';
  }
}
