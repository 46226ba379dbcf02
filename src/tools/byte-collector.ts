/**
 * A response body collected into one buffer that doubles as it fills. Keeping the chunks themselves would
 * keep alive what each is a view of (a socket's whole read buffer, and an object per chunk): a server
 * sending one-byte chunks would make a body under its cap hold a hundred times its size.
 */
export class ByteCollector {
  #buffer = Buffer.alloc(0);
  #length = 0;
  readonly #maxBytes: number;

  /** `maxBytes`: the most the body may hold, and so the most the buffer grows to. */
  constructor(maxBytes = Number.POSITIVE_INFINITY) {
    this.#maxBytes = maxBytes;
  }

  get length(): number {
    return this.#length;
  }

  /** Copies `chunk` in; the caller checks its size cap first, so passing maxBytes is a bug. */
  add(chunk: Uint8Array): void {
    const needed = this.#length + chunk.byteLength;
    if (needed > this.#maxBytes) throw new RangeError('ByteCollector: more than maxBytes');
    if (needed > this.#buffer.length) {
      const grown = Buffer.allocUnsafe(
        Math.min(this.#maxBytes, Math.max(needed, 2 * this.#buffer.length, 1024)),
      );
      this.#buffer.copy(grown, 0, 0, this.#length);
      this.#buffer = grown;
    }
    this.#buffer.set(chunk, this.#length);
    this.#length = needed;
  }

  /** The bytes so far: a view, valid until the next add. */
  bytes(): Buffer {
    return this.#buffer.subarray(0, this.#length);
  }
}
