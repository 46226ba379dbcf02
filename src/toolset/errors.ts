/** The codes of errors in loading a ToolSet or the settings the proxy starts with, or generating the CRD. docs/errors.md lists exactly these (test/errors.test.ts). */
export const TOOLSET_ERRORS = {
  ERP_VALUE:
    'A `value`/`valueFrom` cannot be resolved: the environment variable is not set, or a `secretKeyRef` is used outside Kubernetes (use `valueFrom.env`).',
  ERP_CRD_SCHEMA:
    'The CRD generator met a schema construct a structural CRD cannot express (a development error, caught by `npm run gen:crd`).',
  ERP_TOOLSET_INVALID:
    '`earpiece proxy` was started with a ToolSet that does not validate or whose values cannot be resolved here; every problem is printed, and the process exits 1.',
  ERP_SHARED_STATE_CONFIG:
    "The shared state's Redis URL is not a `redis://` or `rediss://` URL with a host; the proxy does not start with it.",
  ERP_UPSTREAM_CONFIG:
    'The LLM server URL given to the proxy (`--upstream`, `EARPIECE_UPSTREAM_URL`, or `upstreamUrl` from code) is not a base URL it can connect to; the proxy does not start with it.',
} as const;

export type ToolSetErrorCode = keyof typeof TOOLSET_ERRORS;
