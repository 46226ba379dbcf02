/**
 * Structured JSON logs (pino, which fastify already uses). Level from EARPIECE_LOG_LEVEL (default info).
 * Authorization headers and anything under a `secret` key are redacted, so a secret never reaches a log
 * line even when a whole request or config object is logged; credentials quoted in a message or an error
 * text (a server echoing the request it refused) are scrubbed from every line.
 */
import { type DestinationStream, type Logger, pino } from 'pino';
import { scrubLogArguments } from './scrub.js';

export type { Logger };

export function createLogger(
  component: string,
  level = process.env.EARPIECE_LOG_LEVEL ?? 'info',
  /** Where lines go (stdout by default). */
  destination?: DestinationStream,
): Logger {
  const options: pino.LoggerOptions = {
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
    hooks: {
      logMethod(args, method) {
        return method.apply(this, scrubLogArguments(args) as Parameters<typeof method>);
      },
    },
  };
  return destination ? pino(options, destination) : pino(options);
}
