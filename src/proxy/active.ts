/**
 * Everything a turn needs that a ToolSet reload replaces at once. Turns take the current set when they
 * start and keep it to the end, so a reload never changes tools mid-turn.
 */

import type { ToolRegistry } from '../tools/registry.js';
import type { ResolvedToolSet } from '../toolset/defaults.js';
import type { TurnMemory } from './request-policy.js';
import type { Upstream, UpstreamState } from './upstream.js';

export interface ActiveToolSet {
  toolset: ResolvedToolSet;
  tools: ToolRegistry;
  upstream: Upstream;
  upstreamState: UpstreamState;
  memory: TurnMemory | undefined;
}
