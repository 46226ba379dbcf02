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
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++;
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) {
      inString = true;
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

/**
 * Replaces the server's JSON body parser with one that first holds the text to `bounds`, then parses it
 * as fastify does (secure-json-parse, refusing `__proto__` and `constructor.prototype`). A refusal is a
 * 400 with `refuse(message)` as its error, marked with `bodyShape: BODY_SHAPE_REFUSED`.
 */
export function boundJsonBodies(
  app: FastifyInstance,
  bounds: JsonShape,
  refuse: (message: string) => Error,
): void {
  const parse = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    const problem = jsonShapeProblem(body as string, bounds);
    if (problem) {
      done(Object.assign(refuse(problem), { statusCode: 400, bodyShape: BODY_SHAPE_REFUSED }), undefined);
      return;
    }
    parse(request, body as string, done);
  });
}
