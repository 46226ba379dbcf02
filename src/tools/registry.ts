/**
 * ToolSet → providers → the table of tools the tool loop sees. One provider per `spec.tools` entry:
 * http and builtin here, mcp and sql from their own modules, imported only when a ToolSet has such an
 * entry (the MCP SDK and pg stay out of memory otherwise). MCP lists change at runtime, so the table is
 * rebuilt, lazily, after a provider reports a change.
 */
import { createHash } from 'node:crypto';
import type { Dispatcher } from 'undici';
import { createLogger, type Logger } from '../telemetry/log.js';
import { canonicalJson, type ResolvedTool, type ResolvedToolSet } from '../toolset/defaults.js';
import { type ArgumentCheck, createArgumentCompiler } from './arguments.js';
import { BUILTINS, createBuiltinExecutor } from './builtin.js';
import { type CallableTool, callTool } from './call.js';
import { createHttpDispatcher, createHttpExecutor } from './http.js';
import { definitionHash, type SharedStateEvent, type SharedStateStatus, ToolState } from './tool-state.js';
import type {
  ProvidedTool,
  ProviderOptions,
  ProviderState,
  ToolCall,
  ToolDefinition,
  ToolExecutor,
  ToolOutcome,
  ToolProvider,
  ToolRunner,
} from './types.js';

export interface ToolRegistry extends ToolRunner {
  /** Every tool now offered (before keyword filtering), with its timeout: bounded metric labels. */
  list(): Array<{ name: string; kind: ResolvedTool['kind']; timeoutMs: number }>;
  /** Called when a provider's tools change (an MCP server listed new ones, or reconnected). */
  onChange(listener: () => void): void;
  /**
   * Per-provider state for /readyz (mcp servers: url, state connected|connecting|down, lastError, tools),
   * and the shared state's connection when the ToolSet has one.
   */
  status(): {
    mcp: Array<{ url: string; state: ProviderState; lastError?: string; tools: number }>;
    sharedState?: SharedStateStatus;
    /** What an operator should know: a superuser SQL role, an MCP list cut to the cap. */
    warnings: string[];
  };
  close(): Promise<void>;
}

export interface ToolRegistryOptions {
  env?: NodeJS.ProcessEnv;
  logger?: Logger;
  /** Clock in epoch milliseconds for cache ttls, rate limits and the time builtin. */
  now?: () => number;
  /** Shared state (Redis) connection changes, and operations decided in-process because it could not answer. */
  onSharedState?: (event: SharedStateEvent) => void;
  /** A tool call's time for the shared state (default 50 ms); tests on a loaded machine give it more. */
  sharedStateBudgetMs?: number;
}

const NO_PARAMETERS = { type: 'object', properties: {} };

function singleTool(config: ResolvedTool, tool: Omit<ProvidedTool, 'config' | 'name'>): ToolProvider {
  const provided: ProvidedTool = { ...tool, name: config.spec.name as string, config };
  return { kind: config.kind, tools: () => [provided] };
}

/** `rain` matches "raining", not "train": a keyword must start a word. Case-insensitive, Unicode-aware. */
export function keywordPattern(keywords: readonly string[]): RegExp {
  const alternatives = keywords.map((k) => k.trim().replace(/[.*+?^${}()|[\]\\/]/g, '\\$&'));
  return new RegExp(`(?<![\\p{L}\\p{M}\\p{N}_])(?:${alternatives.join('|')})`, 'iu');
}

/**
 * ajv keeps everything it compiled for as long as the instance lives (about 20 bytes of heap per character
 * of schema, and some 5 KB for even the smallest), so once this much has gone into one compiler the next
 * compile starts a fresh one, and the checks cached from the old are let go.
 */
const COMPILER_BUDGET_CHARS = 1024 * 1024;
const COMPILE_OVERHEAD_CHARS = 256;

/**
 * Argument checks by the content of their schema (a hash of its canonical JSON), kept across table
 * rebuilds: an MCP server's every listing brings new schema objects, and a relisting (a changed
 * description, a reconnect) must not compile again what is already compiled. A tool's check compiles on
 * its first call, before the arguments are checked, not when the table is built: a relisting never
 * compiles every schema at once, and a tool never called is never compiled.
 */
class ArgumentChecks {
  readonly #logger: Logger;
  /** What the current compiler made, by schema hash; bounded by COMPILER_BUDGET_CHARS. */
  readonly #compiled = new Map<string, ArgumentCheck>();
  #compile = createArgumentCompiler();
  #spent = 0;

  constructor(logger: Logger) {
    this.#logger = logger;
  }

  /** The check of one tool of a table, compiled (or found compiled) when first called. */
  for(tool: ProvidedTool): ArgumentCheck {
    let check: ArgumentCheck | undefined;
    return (args) => {
      check ??= this.#find(tool);
      return check(args);
    };
  }

  #find(tool: ProvidedTool): ArgumentCheck {
    const text = canonicalJson(tool.parameters);
    const key = createHash('sha256').update(text).digest('base64');
    const found = this.#compiled.get(key);
    if (found) return found;
    if (this.#spent > COMPILER_BUDGET_CHARS) {
      this.#compile = createArgumentCompiler();
      this.#compiled.clear();
      this.#spent = 0;
    }
    const check = this.#compile(tool.parameters, (problem) =>
      this.#logger.warn(
        { tool: tool.name, problem },
        `The parameters schema of "${tool.name}" cannot be compiled; its arguments are not checked`,
      ),
    );
    this.#spent += text.length + COMPILE_OVERHEAD_CHARS;
    this.#compiled.set(key, check);
    return check;
  }
}

interface Offer {
  definition: ToolDefinition;
  keywords: RegExp | undefined;
}

export interface Table {
  tools: Map<string, CallableTool>;
  offers: Offer[];
  /** Every offer's definition, one array per table: the request body's tools JSON is cached against it. */
  definitions: ToolDefinition[];
  /** Which provider holds each name, so a clash at runtime never takes a name from its holder. */
  owners: Map<string, ToolProvider>;
}

function describeProvider(tool: ProvidedTool): string {
  const { index, kind, spec } = tool.config;
  // Origin and path only: a query string may carry a token.
  const where = spec.mcp ? URL.parse(spec.mcp.url) : null;
  return `spec.tools[${index}] (${kind}${where ? ` ${where.origin}${where.pathname}` : ''})`;
}

/**
 * The current tools of every provider, flattened. On a name clash the provider that already held the
 * name keeps it (else the earlier entry); the other tool is dropped and the clash logged.
 */
function buildTable(
  providers: readonly ToolProvider[],
  previous: Map<string, ToolProvider>,
  checks: ArgumentChecks,
  logger: Logger,
): Table {
  const candidates = providers.flatMap((provider) => provider.tools().map((tool) => ({ provider, tool })));
  const ranked = [...candidates].sort(
    (a, b) =>
      Number(previous.get(a.tool.name) !== a.provider) - Number(previous.get(b.tool.name) !== b.provider),
  );
  const winners = new Map<string, (typeof candidates)[number]>();
  for (const candidate of ranked) {
    const holder = winners.get(candidate.tool.name);
    if (!holder) {
      winners.set(candidate.tool.name, candidate);
      continue;
    }
    logger.error(
      { tool: candidate.tool.name },
      `Dropped tool "${candidate.tool.name}" of ${describeProvider(candidate.tool)}: ` +
        `${describeProvider(holder.tool)} already has a tool of that name`,
    );
  }

  const table: Table = { tools: new Map(), offers: [], definitions: [], owners: new Map() };
  for (const candidate of candidates) {
    const { tool, provider } = candidate;
    if (winners.get(tool.name) !== candidate) continue;
    table.tools.set(tool.name, { ...tool, check: checks.for(tool) });
    table.owners.set(tool.name, provider);
    table.offers.push({
      definition: {
        type: 'function',
        function: {
          name: tool.name,
          ...(tool.description ? { description: tool.description } : {}),
          parameters: tool.parameters,
        },
      },
      keywords: tool.config.keywords?.length ? keywordPattern(tool.config.keywords) : undefined,
    });
  }
  table.definitions = table.offers.map((o) => o.definition);
  return table;
}

/** The flattened tools, rebuilt on first use after any provider reports a change to its list. */
export class ToolTable {
  readonly #providers: readonly ToolProvider[];
  readonly #logger: Logger;
  readonly #checks: ArgumentChecks;
  #owners = new Map<string, ToolProvider>();
  #table: Table | undefined;

  constructor(providers: readonly ToolProvider[], logger: Logger) {
    this.#providers = providers;
    this.#logger = logger;
    this.#checks = new ArgumentChecks(logger);
    for (const provider of providers) {
      provider.onChange?.(() => {
        // Kept across rebuilds so that a name stays with the provider that held it.
        if (this.#table) this.#owners = this.#table.owners;
        this.#table = undefined;
      });
    }
  }

  current(): Table {
    this.#table ??= buildTable(this.#providers, this.#owners, this.#checks, this.#logger);
    return this.#table;
  }
}

export async function createToolRegistry(
  toolset: ResolvedToolSet,
  options: ToolRegistryOptions = {},
): Promise<ToolRegistry> {
  const env = options.env ?? process.env;
  const logger = options.logger ?? createLogger('tools');
  const now = options.now ?? Date.now;
  const providerOptions: ProviderOptions = { env, logger };
  let dispatcher: Dispatcher | undefined;
  let state: ToolState | undefined;
  const providers: ToolProvider[] = [];
  const close = async () => {
    await Promise.allSettled([...providers.map((p) => p.close?.()), state?.close()]);
    await dispatcher?.close();
  };

  try {
    for (const config of toolset.tools) {
      const spec = config.spec;
      if (config.kind === 'builtin' && spec.builtin) {
        const builtin = BUILTINS[spec.builtin];
        const executor: ToolExecutor = createBuiltinExecutor(spec.builtin, { now });
        providers.push(
          singleTool(config, {
            description: spec.description ?? builtin.description,
            parameters: builtin.parameters,
            executor,
          }),
        );
      } else if (config.kind === 'http' && spec.http) {
        dispatcher ??= createHttpDispatcher();
        const executor = createHttpExecutor(spec.http, {
          dispatcher,
          env,
          path: `spec.tools[${config.index}].http`,
        });
        providers.push(
          singleTool(config, {
            description: spec.description ?? '',
            parameters: (spec.parameters as Record<string, unknown> | undefined) ?? NO_PARAMETERS,
            executor,
          }),
        );
      } else if (config.kind === 'mcp') {
        const { createMcpProvider } = await import('./mcp.js');
        providers.push(createMcpProvider(config, providerOptions));
      } else if (config.kind === 'sql') {
        const { createSqlProvider } = await import('./sql.js');
        providers.push(createSqlProvider(config, providerOptions));
      }
    }
    state = await ToolState.create(toolset, {
      env,
      logger,
      now,
      ...(options.onSharedState ? { onSharedState: options.onSharedState } : {}),
      ...(options.sharedStateBudgetMs === undefined ? {} : { redisBudgetMs: options.sharedStateBudgetMs }),
    });
  } catch (err) {
    await close();
    throw err;
  }

  const shared = state;
  const table = new ToolTable(providers, logger);
  const current = () => table.current();

  return {
    offered(recentUserText: readonly string[]): ToolDefinition[] {
      const { offers, definitions } = current();
      const offer = (o: Offer) => !o.keywords || recentUserText.some((text) => o.keywords?.test(text));
      // All offered (the usual case): the table's own array, whose JSON the request policy has cached.
      if (offers.every(offer)) return definitions;
      return offers.filter(offer).map((o) => o.definition);
    },
    has: (name: string) => current().tools.has(name),
    filler: (name: string) => current().tools.get(name)?.config.filler,
    deferral(name: string) {
      const tool = current().tools.get(name);
      const afterMs = tool?.config.deferAfterMs;
      return tool && afterMs !== undefined ? { afterMs, definition: definitionHash(tool) } : undefined;
    },
    kind: (name: string) => current().tools.get(name)?.config.kind,
    list: () =>
      [...current().tools.values()].map((t) => ({
        name: t.name,
        kind: t.config.kind,
        timeoutMs: t.config.timeoutMs,
      })),
    onChange(listener: () => void) {
      for (const provider of providers) provider.onChange?.(listener);
    },
    call(call: ToolCall, signal: AbortSignal): Promise<ToolOutcome> {
      const tools = current().tools;
      return callTool(tools.get(call.name), call, signal, {
        state: shared,
        maxResultBytes: toolset.limits.maxResultBytes,
        names: () => [...tools.keys()],
        logger,
      });
    },
    status() {
      const mcp = [];
      for (const provider of providers) {
        const state = provider.kind === 'mcp' ? provider.status?.() : undefined;
        if (state) mcp.push(state);
      }
      const sharedState = shared.status();
      const warnings = providers.flatMap((provider) => provider.warnings?.() ?? []);
      return sharedState ? { mcp, warnings, sharedState } : { mcp, warnings };
    },
    close,
  };
}
