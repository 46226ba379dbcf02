import type { SpanHandle, Telemetry } from './types.js';

export const noopSpan: SpanHandle = {
  setAttributes() {},
  addEvent() {},
  child: () => noopSpan,
  end() {},
};

/** Telemetry that records nothing: for tests and for tools run outside the proxy. */
export const noopTelemetry: Telemetry = {
  startTurn: () => noopSpan,
  toolCall() {},
  turn() {},
  upstreamCall() {},
  stream() {},
  memory() {},
  toolsetLoaded() {},
  toolsetReloadFailed() {},
  sharedState() {},
  deferredCall() {},
  shutdown: async () => {},
};
