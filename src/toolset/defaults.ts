/**
 * The settled defaults, applied once after validation. Everything downstream reads a ResolvedToolSet
 * (milliseconds, no optional limits), never the raw document.
 */
import { createHash } from 'node:crypto';
import { parseDuration } from './duration.js';
import type { ToolSet, ToolSpec, ValueRef } from './schema.js';

export const DEFAULTS = {
  maxIterations: 3,
  turnTimeout: '20s',
  toolTimeout: '5s',
  maxParallelCalls: 4,
  maxResultBytes: 2048,
  cacheMaxEntries: 1000,
  filler: 'One moment. ',
  errorMessage: "Sorry, I couldn't do that right now. ",
  stillWorking: 'Still working on it. ',
  stillWorkingAfter: '3s',
  memoryTurns: 2,
  memoryTtl: '15m',
  memoryMaxBytes: 4096,
  memoryMaxEntries: 1000,
} as const;

/** A voice line as written: one string, or one per language (primary language tag → text). */
export type VoiceText = string | Readonly<Record<string, string>>;

export type ToolKind = 'http' | 'mcp' | 'sql' | 'builtin';

export interface Limits {
  maxIterations: number;
  turnTimeoutMs: number;
  toolTimeoutMs: number;
  maxParallelCalls: number;
  maxResultBytes: number;
}

export interface ResolvedTool {
  /** Index in spec.tools, for messages that name the field. */
  index: number;
  kind: ToolKind;
  spec: ToolSpec;
  timeoutMs: number;
  /** Undefined: results are not cached. */
  cacheTtlMs: number | undefined;
  /** Undefined: fall back to voice.filler. "" means no filler for this tool. */
  filler: VoiceText | undefined;
  /** Undefined: the call is never deferred; the turn waits for it up to its timeout. */
  deferAfterMs: number | undefined;
  keywords: string[] | undefined;
  onInterrupt: 'cancel' | 'finish';
  memory: boolean;
  /** Undefined: no limit. `burst` defaults to `requests`. */
  rateLimit: ResolvedRateLimit | undefined;
}

export interface ResolvedRateLimit {
  requests: number;
  perMs: number;
  burst: number;
}

export interface ResolvedToolSet {
  name: string;
  namespace: string | undefined;
  /** sha256 of the spec, short: `earpiece.dev/toolset-hash` and earpiece_toolset_info. */
  hash: string;
  source: ToolSet;
  upstream: { url: string | undefined; apiKey: ValueRef | undefined; disableThinking: boolean };
  limits: Limits;
  voice: {
    filler: VoiceText;
    errorMessage: VoiceText;
    stillWorking: VoiceText;
    stillWorkingAfterMs: number;
    speakable: boolean;
  };
  instructions: string | undefined;
  cacheMaxEntries: number;
  memory: { turns: number; ttlMs: number; maxBytes: number; maxEntries: number };
  /** Undefined: every sidecar keeps its own cache and limits. */
  sharedState: { redisUrl: ValueRef } | undefined;
  tools: ResolvedTool[];
}

function ms(text: string | undefined, fallback: string): number {
  return parseDuration(text ?? fallback) ?? (parseDuration(fallback) as number);
}

/** Stable JSON: object keys sorted, so equal documents hash equally whatever their key order. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

export function specHash(toolset: ToolSet): string {
  return createHash('sha256').update(canonicalJson(toolset.spec)).digest('hex').slice(0, 16);
}

/** Applies defaults to a ToolSet that passed validateToolSet. */
export function resolveToolSet(toolset: ToolSet): ResolvedToolSet {
  const s = toolset.spec;
  const toolTimeoutMs = ms(s.limits?.toolTimeout, DEFAULTS.toolTimeout);
  return {
    name: toolset.metadata.name,
    namespace: toolset.metadata.namespace,
    hash: specHash(toolset),
    source: toolset,
    upstream: {
      url: s.upstream?.url,
      apiKey: s.upstream?.apiKey,
      disableThinking: s.upstream?.disableThinking ?? false,
    },
    limits: {
      maxIterations: s.limits?.maxIterations ?? DEFAULTS.maxIterations,
      turnTimeoutMs: ms(s.limits?.turnTimeout, DEFAULTS.turnTimeout),
      toolTimeoutMs,
      maxParallelCalls: s.limits?.maxParallelCalls ?? DEFAULTS.maxParallelCalls,
      maxResultBytes: s.limits?.maxResultBytes ?? DEFAULTS.maxResultBytes,
    },
    voice: {
      filler: s.voice?.filler ?? DEFAULTS.filler,
      errorMessage: s.voice?.errorMessage ?? DEFAULTS.errorMessage,
      stillWorking: s.voice?.stillWorking ?? DEFAULTS.stillWorking,
      stillWorkingAfterMs: ms(s.voice?.stillWorkingAfter, DEFAULTS.stillWorkingAfter),
      speakable: s.voice?.speakable ?? true,
    },
    instructions: s.instructions,
    cacheMaxEntries: s.cache?.maxEntries ?? DEFAULTS.cacheMaxEntries,
    memory: {
      turns: s.memory?.turns ?? DEFAULTS.memoryTurns,
      ttlMs: ms(s.memory?.ttl, DEFAULTS.memoryTtl),
      maxBytes: s.memory?.maxBytes ?? DEFAULTS.memoryMaxBytes,
      maxEntries: s.memory?.maxEntries ?? DEFAULTS.memoryMaxEntries,
    },
    sharedState: s.sharedState ? { redisUrl: s.sharedState.redis.url } : undefined,
    tools: s.tools.map((spec, index) => ({
      index,
      kind: spec.http ? 'http' : spec.mcp ? 'mcp' : spec.sql ? 'sql' : 'builtin',
      spec,
      timeoutMs: spec.timeout ? ms(spec.timeout, DEFAULTS.toolTimeout) : toolTimeoutMs,
      cacheTtlMs: spec.cache ? ms(spec.cache.ttl, '0s') : undefined,
      filler: spec.filler,
      deferAfterMs: spec.deferAfter ? ms(spec.deferAfter, '0s') : undefined,
      keywords: spec.when?.keywords,
      onInterrupt: spec.onInterrupt ?? 'cancel',
      memory: spec.memory ?? true,
      rateLimit: spec.rateLimit
        ? {
            requests: spec.rateLimit.requests,
            perMs: ms(spec.rateLimit.per, '1m'),
            burst: spec.rateLimit.burst ?? spec.rateLimit.requests,
          }
        : undefined,
    })),
  };
}
