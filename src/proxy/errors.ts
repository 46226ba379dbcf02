/**
 * Every error the proxy raises, in one place: a code, an HTTP status and an OpenAI-style `type`.
 * Callers check `code`, never the message. docs/errors.md lists each code (a test keeps them in step).
 */
export const ERRORS = {
  ERP_BAD_REQUEST: {
    status: 400,
    type: 'invalid_request_error',
    summary: 'The request body is not a chat completion request.',
  },
  ERP_UPSTREAM_UNREACHABLE: {
    status: 502,
    type: 'api_error',
    summary: 'The LLM server could not be reached.',
  },
  ERP_UPSTREAM_STATUS: {
    status: 502,
    type: 'api_error',
    summary: 'The LLM server answered with an HTTP error.',
  },
  ERP_UPSTREAM_STREAM: {
    status: 502,
    type: 'api_error',
    summary: 'The LLM server sent an error or a broken stream mid-answer.',
  },
  ERP_UPSTREAM_TOO_LARGE: {
    status: 502,
    type: 'api_error',
    summary:
      'The LLM server sent a message or completion larger than the proxy takes (1 MiB of text, 4 MiB of JSON).',
  },
  ERP_CONTEXT_LENGTH: {
    status: 400,
    type: 'invalid_request_error',
    summary: 'The conversation does not fit the model context, even after trimming.',
  },
  ERP_TURN_TIMEOUT: {
    status: 504,
    type: 'api_error',
    summary: 'The turn took longer than limits.turnTimeout.',
  },
} as const;

export type ErrorCode = keyof typeof ERRORS;

export class ProxyError extends Error {
  readonly status: number;
  readonly type: string;
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.status = ERRORS[code].status;
    this.type = ERRORS[code].type;
  }
}

/** The OpenAI error body. */
export function errorBody(err: ProxyError): {
  error: { message: string; type: string; code: string; param: null };
} {
  return { error: { message: err.message, type: err.type, code: err.code, param: null } };
}
