/**
 * The memory all request bodies together may hold. fastify's bodyLimit bounds one body; without a bound on
 * their sum, many clients each sending a large body slowly hold as much memory as they like. A body's
 * bytes count from their arrival (its declared length at once, a chunked body as it comes) until its
 * response is over, since the parsed request lives as long as its turn. Past the budget the request is
 * refused with 503 at once and its connection closed (the client may still be sending), without reading
 * the rest. Shared by the proxy and the operator's webhook server.
 */
import type { ServerResponse } from 'node:http';
import { Transform, type TransformCallback } from 'node:stream';
import type { FastifyReply, FastifyRequest, preParsingHookHandler } from 'fastify';

/** The refusal: each server answers it in its own error shape; statusCode is what fastify's body reader keeps. */
export class BodyBudgetExceeded extends Error {
  readonly statusCode = 503;
}

export class BodyBudget {
  #used = 0;

  constructor(
    readonly maxBytes: number,
    /** fastify's per-body limit: a larger declared body is refused by fastify itself, with 413. */
    private readonly bodyLimit: number,
  ) {}

  /** Bytes held by bodies now. */
  get used(): number {
    return this.#used;
  }

  /**
   * Holds a body's declared bytes until its response closes: false, holding nothing, when they would pass
   * the budget (the chat route's fast lane, and the hook below, for a body of known length).
   */
  holdDeclared(res: ServerResponse, bytes: number): boolean {
    if (!this.#take(bytes)) return false;
    res.once('close', () => {
      this.#used -= bytes;
    });
    return true;
  }

  /** What a refused request hears (with its connection closed: the client may still be sending). */
  exceeded(): BodyBudgetExceeded {
    return new BodyBudgetExceeded(
      `request bodies in flight already hold ${this.maxBytes} bytes, the most this server accepts; try again`,
    );
  }

  readonly hook: preParsingHookHandler = (request: FastifyRequest, reply: FastifyReply, payload, done) => {
    const declared = Number(request.headers['content-length']);
    const chunked = request.headers['transfer-encoding'] !== undefined;
    if (!chunked && !(declared > 0)) return done(null, payload);
    if (!chunked) {
      if (declared > this.bodyLimit) return done(null, payload);
      return this.holdDeclared(reply.raw, declared) ? done(null, payload) : done(this.#refusal(reply));
    }
    let held = 0;
    reply.raw.once('close', () => {
      this.#used -= held;
      held = 0;
    });
    const budget = this;
    const counted = new Transform({
      transform(chunk: Buffer, _encoding, callback: TransformCallback) {
        if (!budget.#take(chunk.length)) {
          callback(budget.#refusal(reply));
          return;
        }
        held += chunk.length;
        callback(null, chunk);
      },
    });
    payload.on('error', (err) => counted.destroy(err));
    done(null, payload.pipe(counted));
  };

  /** Counts `bytes` as held, or nothing when they would pass the budget. */
  #take(bytes: number): boolean {
    if (this.#used + bytes > this.maxBytes) return false;
    this.#used += bytes;
    return true;
  }

  #refusal(reply: FastifyReply): BodyBudgetExceeded {
    // fastify closes the connection after a body error, but not after a preParsing one.
    reply.header('connection', 'close');
    return this.exceeded();
  }
}
