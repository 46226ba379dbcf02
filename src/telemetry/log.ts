/**
 * Structured JSON logs (pino, which fastify already uses). Level from EARPIECE_LOG_LEVEL (default info).
 * Authorization headers and anything under a `secret` key are redacted, so a secret never reaches a log
 * line even when a whole request or config object is logged.
 */
import { type Logger, pino } from 'pino';

export type { Logger };

export function createLogger(component: string, level = process.env.EARPIECE_LOG_LEVEL ?? 'info'): Logger {
  return pino({
    level,
    base: { component },
    redact: {
      paths: [
        '*.authorization',
        '*.headers.authorization',
        '*.apiKey',
        '*.secret',
        '*.password',
        '*.connection',
      ],
      censor: '[redacted]',
    },
  });
}
