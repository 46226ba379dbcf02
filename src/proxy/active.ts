/**
 * Everything a turn needs that a ToolSet reload replaces at once. Turns take the current set when they
 * start and keep it to the end, so a reload never changes tools mid-turn.
 */

import type { ToolRegistry } from '../tools/registry.js';
import type { ResolvedToolSet } from '../toolset/defaults.js';
import type { DeferredCalls } from './deferral.js';
import type { LateResults } from './memory.js';
import type { TurnMemory } from './request-policy.js';
import type { Upstream, UpstreamState } from './upstream.js';
import type { LanguagePicker } from './voice.js';

export interface ActiveToolSet {
  toolset: ResolvedToolSet;
  tools: ToolRegistry;
  upstream: Upstream;
  upstreamState: UpstreamState;
  /** Read by each turn, and written by deferred calls' late results. */
  memory: (TurnMemory & LateResults) | undefined;
  /** Picks the language of the proxy's own lines (filler, still-working, error message). */
  language: LanguagePicker;
  /** Calls of tools with deferAfter that outlast it: the same object in every set, across reloads. */
  deferred: DeferredCalls;
}
