/**
 * The shape of a JSON text, read without parsing it: how deep its objects and arrays nest and how many
 * there are. A body's bytes bound neither what JSON.parse makes of it (a million `{}` become a million
 * objects) nor how deep the code that walks it must recurse (JSON.stringify overflows its stack at some
 * thousands of levels), so a body is held to both before it is parsed. Shared by the proxy's chat server,
 * the operator's webhook and the accumulator, which weighs what it keeps by the objects in it.
 */
import type { FastifyInstance } from 'fastify';

export interface JsonShape {
  depth: number;
  structures: number;
}

/**
 * The deepest nesting and the count of objects and arrays (`{` and `[` outside strings). With `stopAt`,
 * it stops reading once past either bound, so an oversized text costs no more than the bound to refuse.
 */
export function jsonShape(text: string, stopAt?: JsonShape): JsonShape {
  let depth = 0;
  let deepest = 0;
  let structures = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) {
      // Most of a body is string contents: jump over them with indexOf instead of reading each character.
      const close = closingQuote(text, i);
      if (close === -1) break;
      i = close;
    } else if (c === 0x7b || c === 0x5b) {
      structures++;
      if (++depth > deepest) deepest = depth;
      if (stopAt && (deepest > stopAt.depth || structures > stopAt.structures)) break;
    } else if (c === 0x7d || c === 0x5d) {
      depth--;
    }
  }
  return { depth: deepest, structures };
}

/** The index of the quote that closes the string opened at `open`: one after an even run of backslashes. */
function closingQuote(text: string, open: number): number {
  let quote = text.indexOf('"', open + 1);
  while (quote !== -1) {
    let before = quote - 1;
    while (text.charCodeAt(before) === 0x5c) before--;
    if ((quote - before) % 2 === 1) return quote;
    quote = text.indexOf('"', quote + 1);
  }
  return -1;
}

/** Why a JSON body is refused before it is parsed, or undefined when it is within the bounds. */
export function jsonShapeProblem(text: string, bounds: JsonShape): string | undefined {
  const shape = jsonShape(text, bounds);
  if (shape.depth > bounds.depth) return `the body nests JSON more than ${bounds.depth} levels deep`;
  if (shape.structures > bounds.structures)
    return `the body holds more than ${bounds.structures} JSON objects and arrays`;
  return undefined;
}

/** Marks a refused body's error (its `bodyShape`), for the servers' own logging. */
export const BODY_SHAPE_REFUSED = 'ERP_BODY_SHAPE';

/** Parses a JSON body's text, or fails with an error carrying its HTTP status (400). */
export type JsonBodyParser = (text: string, done: (err: Error | null, value?: unknown) => void) => void;

/**
 * A parser that first holds the text to `bounds`, then parses it as fastify does (secure-json-parse,
 * refusing `__proto__` and `constructor.prototype`). A refusal is a 400 with `refuse(message)` as its error,
 * marked with `bodyShape: BODY_SHAPE_REFUSED`.
 */
export function boundedJsonParser(
  app: FastifyInstance,
  bounds: JsonShape,
  refuse: (message: string) => Error,
): JsonBodyParser {
  const secureParse = app.getDefaultJsonParser('error', 'error');
  // fastify's own parser takes the request too, but does not read it.
  const parseSecurely = (text: string, done: (err: Error | null, value?: unknown) => void) =>
    secureParse(undefined as never, text, done);
  return (text, done) => {
    const problem = jsonShapeProblem(text, bounds);
    if (problem) {
      done(Object.assign(refuse(problem), { statusCode: 400, bodyShape: BODY_SHAPE_REFUSED }), undefined);
      return;
    }
    if (mayHoldPrototypeKey(text)) {
      parseSecurely(text, done);
      return;
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      // fastify's parser words the error (and takes a leading BOM, which JSON.parse does not).
      parseSecurely(text, done);
      return;
    }
    done(null, value);
  };
}

/** Replaces the server's JSON body parser with `parse` (boundedJsonParser). */
export function boundJsonBodies(app: FastifyInstance, parse: JsonBodyParser): void {
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_request, body, done) =>
    parse(body as string, done),
  );
}

/**
 * Whether a `__proto__` or `constructor` key could be in the text. secure-json-parse looks for one with two
 * regular expressions over the whole text after parsing it; each key's characters may be written plainly
 * or as `\u` escapes, so a text with neither word nor any `\u` has none, and JSON.parse alone is as safe.
 */
function mayHoldPrototypeKey(text: string): boolean {
  return text.includes('\\u') || text.includes('__proto__') || text.includes('constructor');
}
