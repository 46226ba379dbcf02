/**
 * The model's text as a TTS should hear it. Unmute's TTS reads everything literally, so markdown and
 * emojis become noise ("asterisk asterisk", "thumbs up sign") and a URL is spelled out to the last
 * slash. This filter sits between the model and the sink and removes emphasis markers (`*`, `_`, `~~`,
 * backticks), heading marks, list bullets, code fence lines and emojis, and turns a bare URL into its
 * host name. It is streaming: a marker split across deltas (`*` then `*bold**`) is recognised, and
 * only the characters of one unfinished marker are ever held back (a `#` run at a line start that may
 * still be a heading, a `_` or `~` waiting for its neighbour, the start of `https://`, a URL's host until
 * it ends or passes a DNS name's length, a few dots after a URL), so each character is read a bounded
 * number of times however long a run the model sends.
 */

type Mode = 'text' | 'host' | 'path' | 'fence';

const SCHEMES = ['https://', 'http://'];

/** Letters, digits and `_`: what a word is made of, for `_` inside snake_case and for word starts. */
function isWordChar(c: string): boolean {
  return /[\p{L}\p{N}_]/u.test(c);
}

function isAlphanumeric(c: string | undefined): boolean {
  return c !== undefined && /[\p{L}\p{N}]/u.test(c);
}

function isHostChar(c: string): boolean {
  return /[\p{L}\p{N}.-]/u.test(c);
}

/** Punctuation that ends a sentence after a URL rather than belonging to it. */
const TRAILING = new Set(['.', ',', ';', ':', '!', '?']);
/** More than this after a URL is no sentence's end ("……" from a looping model): it is decided as text. */
const MAX_TRAILING_HELD = 16;
/** The longest DNS name: a longer "host" is not one, and the rest goes as a path does. */
const MAX_HOST_CHARS = 253;
const URL_END = new Set([')', ']', '>', '"', "'", '»']);

/**
 * Pictographs and the invisible code points that dress them (skin tones, flags' regional indicators,
 * variation selectors, keycaps, tag characters). A ZWJ is dropped only after an emoji: scripts such as
 * Devanagari use it between letters.
 */
const PICTOGRAPHIC = /\p{Extended_Pictographic}/u;
function isEmojiPart(cp: number): boolean {
  return (
    (cp >= 0x1f3fb && cp <= 0x1f3ff) ||
    (cp >= 0x1f1e6 && cp <= 0x1f1ff) ||
    cp === 0xfe0f ||
    cp === 0xfe0e ||
    cp === 0x20e3 ||
    (cp >= 0xe0020 && cp <= 0xe007f)
  );
}

export class SpeakableFilter {
  /** Source characters not yet decided (at most one unfinished marker). */
  #hold = '';
  #mode: Mode = 'text';
  #host = '';
  #lineStart = true;
  /** The last source character looked at, emitted or not. */
  #prev = '\n';
  #prevEmoji = false;

  /** Source characters held back now (for tests and the benchmark: never more than one marker). */
  get held(): number {
    return this.#hold.length + this.#host.length;
  }

  /** Speakable text for one delta; may be shorter than the delta, or empty while a marker is undecided. */
  push(text: string): string {
    return this.#run(this.#hold + text, false);
  }

  /** What is still held back, decided now that the model has finished. */
  finish(): string {
    const out = this.#run(this.#hold, true);
    const host = this.#mode === 'host' ? this.#hostName() : '';
    this.#mode = 'text';
    return out + host;
  }

  #hostName(): string {
    const host = this.#host.replace(/^www\./i, '');
    this.#host = '';
    return host;
  }

  #run(s: string, final: boolean): string {
    this.#hold = '';
    let out = '';
    let i = 0;
    const n = s.length;
    while (i < n) {
      const c = s[i] as string;
      if (this.#mode === 'fence') {
        // The fence line (```lang) goes, newline included; the code lines stay.
        if (c === '\n') {
          this.#mode = 'text';
          this.#lineStart = true;
        }
        this.#prev = c;
        i++;
        continue;
      }
      if (this.#mode === 'host') {
        if (isHostChar(c)) {
          if (this.#host.length >= MAX_HOST_CHARS) {
            out += this.#hostName();
            this.#mode = 'path';
            continue;
          }
          this.#host += c;
          i++;
          continue;
        }
        // A port's colon may be the last character of this delta.
        if (c === ':' && i + 1 === n && !final) {
          this.#hold = c;
          break;
        }
        // A dot after the host ends a sentence when nothing but a space follows: "see example.com."
        const trailing = this.#host.match(/\.+$/)?.[0] ?? '';
        this.#host = this.#host.slice(0, this.#host.length - trailing.length);
        out += this.#hostName() + trailing;
        this.#mode =
          c === '/' || c === '?' || c === '#' || (c === ':' && /\d/.test(s[i + 1] ?? '')) ? 'path' : 'text';
        if (this.#mode === 'text') continue;
        i++;
        continue;
      }
      if (this.#mode === 'path') {
        if (/\s/.test(c) || URL_END.has(c)) {
          this.#mode = 'text';
          continue;
        }
        if (TRAILING.has(c)) {
          let j = i;
          while (j < n && TRAILING.has(s[j] as string)) j++;
          if (j === n && !final && j - i <= MAX_TRAILING_HELD) {
            this.#hold = s.slice(i);
            break;
          }
          if (j === n || /\s/.test(s[j] as string) || URL_END.has(s[j] as string)) {
            this.#mode = 'text';
            continue;
          }
          i = j;
          continue;
        }
        i++;
        continue;
      }

      // Text. A lone high surrogate waits for its pair.
      const code = c.charCodeAt(0);
      if (code >= 0xd800 && code <= 0xdbff && i + 1 === n && !final) {
        this.#hold = c;
        break;
      }
      const cp = s.codePointAt(i) as number;
      const width = cp > 0xffff ? 2 : 1;
      const ch = s.slice(i, i + width);
      if ((cp > 0x7f && (PICTOGRAPHIC.test(ch) || isEmojiPart(cp))) || (cp === 0x200d && this.#prevEmoji)) {
        this.#prevEmoji = true;
        this.#prev = ch;
        i += width;
        continue;
      }
      this.#prevEmoji = false;
      const next = s[i + 1];
      const undecided = next === undefined && !final;

      if (this.#lineStart && (c === '-' || c === '+' || c === '•' || c === '*')) {
        // A bullet is the mark and its space; "-5 degrees" keeps its sign.
        if (undecided) {
          this.#hold = s.slice(i);
          break;
        }
        if (next === ' ' || next === '\t') {
          this.#skip(s, i, 2);
          i += 2;
          continue;
        }
      }
      if (this.#lineStart && (c === '#' || c === '`')) {
        let j = i;
        while (j < n && s[j] === c) j++;
        const run = j - i;
        // Held only while it may still turn out a heading (up to six #) or a fence (three backticks).
        if (j === n && !final && run < (c === '#' ? 7 : 3)) {
          this.#hold = s.slice(i);
          break;
        }
        if (c === '`') {
          if (run >= 3) this.#mode = 'fence';
          this.#skip(s, i, run);
          i = j;
          continue;
        }
        if (run <= 6 && (j === n || s[j] === ' ')) {
          this.#skip(s, i, run + (j < n ? 1 : 0));
          i = j + 1;
          continue;
        }
      }
      if (c === '*' || c === '`') {
        this.#skip(s, i, 1);
        i++;
        continue;
      }
      if (c === '~' || c === '_') {
        if (undecided) {
          this.#hold = s.slice(i);
          break;
        }
        if (c === '~' && next === '~') {
          this.#skip(s, i, 2);
          i += 2;
          continue;
        }
        // snake_case keeps its underscore; _emphasis_ loses it.
        if (c === '_' && !(isAlphanumeric(this.#prev) && isAlphanumeric(next))) {
          this.#skip(s, i, 1);
          i++;
          continue;
        }
      }
      if (c === 'h' && !isWordChar(this.#prev)) {
        const rest = s.slice(i, i + 8);
        const scheme = SCHEMES.find((p) => rest.startsWith(p));
        if (scheme) {
          this.#mode = 'host';
          this.#host = '';
          this.#prev = '/';
          this.#lineStart = false;
          i += scheme.length;
          continue;
        }
        if (!final && i + rest.length === n && SCHEMES.some((p) => p.startsWith(rest))) {
          this.#hold = rest;
          break;
        }
      }
      out += c;
      if (c === '\n') this.#lineStart = true;
      else if (c !== ' ' && c !== '\t' && c !== '\r') this.#lineStart = false;
      this.#prev = c;
      i++;
    }
    return out;
  }

  /** Drops `count` source characters starting at `at`. */
  #skip(s: string, at: number, count: number): void {
    this.#prev = s[at + count - 1] ?? this.#prev;
    this.#lineStart = false;
  }
}

/** The whole text through a fresh filter: for strings that are not streamed. */
export function speakable(text: string): string {
  const filter = new SpeakableFilter();
  return filter.push(text) + filter.finish();
}
