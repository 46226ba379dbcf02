/**
 * Start-up (loading modules, compiling the ToolSet's validators, opening MCP sessions) keeps most of what it
 * allocates, and V8 grows the young generation for it: under the image's cap of 16 MB semi-spaces an idle
 * proxy would hold 16 to 32 MB of it, the operator 32, which V8 gives back only under memory pressure. One
 * memory-reducing collection once start-up is done returns it (and compacts what start-up left in old
 * space); load grows the young generation again. Needs node's --expose-gc, which the image's ENTRYPOINT
 * passes; without it this does nothing.
 */
export function releaseStartupMemory(): void {
  globalThis.gc?.({ type: 'major', execution: 'sync', flavor: 'last-resort' });
}
