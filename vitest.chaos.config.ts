import { defineConfig } from 'vitest/config';

// Hostile upstreams, MCP servers and clients against real proxy processes; each file a few tens of seconds.
export default defineConfig({
  test: {
    include: ['test/chaos/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // One attack at a time: the memory and socket checks read one process.
    fileParallelism: false,
  },
});
