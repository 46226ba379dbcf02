/** The codes of tool failures: error results the model reads and answers from, never a broken turn. docs/errors.md lists exactly these (test/errors.test.ts). */
export const TOOL_ERRORS = {
  ERP_TOOL_FAILED: 'A tool failed in a way that has no more specific code.',
  ERP_TOOL_ARGUMENT: 'A builtin got an argument of the wrong type.',
  ERP_TOOL_TIMEZONE: '`time` got a time zone that is not an IANA name.',
  ERP_TOOL_CALCULATOR:
    '`calculator` got an expression it cannot evaluate (syntax, division by zero, too long).',
  ERP_TOOL_CONFIG:
    "An `http` tool's URL template has no literal origin (validation normally catches this first).",
  ERP_TOOL_URL: "The arguments do not expand to a valid URL inside the template's origin and path.",
  ERP_TOOL_HTTP: 'The HTTP request failed (connection refused, reset, DNS).',
  ERP_TOOL_HTTP_STATUS: 'The HTTP service answered with a non-2xx status.',
  ERP_TOOL_HTTP_JSON:
    'The response is not JSON (or `select` was given for a non-JSON response), or its JSON nests more than 256 levels deep or holds more than 200,000 objects and arrays (refused before it is parsed).',
  ERP_TOOL_HTTP_SELECT: 'The `select` JSON Pointer found nothing in the response.',
  ERP_TOOL_RESPONSE_TOO_LARGE: 'The response was larger than the cap, enforced while reading.',
  ERP_TOOL_RESULT: "The tool's result could not be serialized.",
  ERP_MCP_UNAVAILABLE: 'The MCP server is down or reconnecting.',
  ERP_MCP_TIMEOUT: 'The MCP server did not answer in time.',
  ERP_MCP_CALL_FAILED: 'The MCP server refused the call at the protocol level.',
  ERP_MCP_TOOL_ERROR: 'The MCP tool ran and reported an error (`isError`).',
  ERP_SQL_INVALID: 'The SQL does not parse, or there is none.',
  ERP_SQL_REFUSED: 'The SQL is not a single read-only statement; it never reached the database.',
  ERP_SQL_TIMEOUT: "The query ran past the tool's timeout and was cancelled.",
  ERP_SQL_FAILED: 'The database rejected the query (the message, with any connection string scrubbed).',
  ERP_SQL_UNAVAILABLE: 'The database could not be reached.',
  ERP_TOOL_RATE_LIMITED:
    "The tool's `rateLimit` is used up (across the fleet with shared state); the model reads that the tool is busy.",
  ERP_SHARED_STATE_UNAVAILABLE:
    "Redis did not answer within the call's 50 ms budget or is disconnected; the sidecar decides alone (never seen by the model).",
} as const;

export type ToolErrorCode = keyof typeof TOOL_ERRORS;
