/**
 * Every error the proxy raises, in one place: a code, an HTTP status and an OpenAI-style `type`.
 * Callers check `code`, never the message. docs/errors.md lists each code (a test keeps them in step).
 */
export const ERRORS = {
  ERP_BAD_REQUEST: {
    status: 400,
    type: 'invalid_request_error',
    summary: 'The request is not a chat completion request (a field is missing or of the wrong type).',
  },
  ERP_NOT_FOUND: {
    status: 404,
    type: 'invalid_request_error',
    summary: 'No such route.',
  },
  ERP_PATH_REFUSED: {
    status: 400,
    type: 'invalid_request_error',
    summary:
      'A pass-through path that leaves /v1/ once normalised, or that names the chat route another way.',
  },
  ERP_REQUEST_TIMEOUT: {
    status: 408,
    type: 'invalid_request_error',
    summary: 'The request body did not arrive within the request timeout.',
  },
  ERP_BODY_TOO_LARGE: {
    status: 413,
    type: 'invalid_request_error',
    summary: 'The request body is larger than the proxy accepts.',
  },
  ERP_UNSUPPORTED_MEDIA_TYPE: {
    status: 415,
    type: 'invalid_request_error',
    summary: 'The request body is not JSON.',
  },
  ERP_OVERLOADED: {
    status: 503,
    type: 'api_error',
    summary: 'The request bodies being received already hold the memory set aside for them.',
  },
  ERP_INTERNAL: {
    status: 500,
    type: 'api_error',
    summary: 'A fault in the proxy itself.',
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
  ERP_UPSTREAM_REJECTED: {
    status: 400,
    type: 'invalid_request_error',
    summary: "The LLM server refused the request's own input (HTTP 400 or 422).",
  },
  ERP_UPSTREAM_REQUEST_TOO_LARGE: {
    status: 413,
    type: 'invalid_request_error',
    summary: 'The LLM server refused the request as too large (HTTP 413).',
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
      'The LLM server sent a message or completion larger than the proxy takes (1 MiB of text, 4 MiB of JSON, 256 characters of tool call name or id).',
  },
  ERP_CONTEXT_LENGTH: {
    status: 400,
    type: 'invalid_request_error',
    summary: 'The conversation does not fit the model context, even after trimming.',
  },
  ERP_TURN_TIMEOUT: {
    status: 504,
    type: 'api_error',
    summary: 'The turn, or a pass-through request, took longer than limits.turnTimeout.',
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
