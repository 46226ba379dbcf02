/**
 * The proxy's own lines (filler, still-working, error message) in the user's language. A voice line is
 * a string or a map by language; the language is detected once per turn from the last two user
 * messages, and only when some line of the ToolSet has more than one language. tinyld, the detector,
 * is imported on first need so a ToolSet of plain strings never loads its n-gram tables.
 */
import type { ResolvedToolSet, VoiceText } from '../toolset/defaults.js';
import { type ChatMessage, recentUserText } from './messages.js';

/** The line for a language: that language's own, else `en`, else the map's first entry. */
export function voiceText(text: VoiceText, language: string | undefined): string {
  if (typeof text === 'string') return text;
  return (language !== undefined ? text[language] : undefined) ?? text.en ?? Object.values(text)[0] ?? '';
}

/** Every language some voice line of the ToolSet is written in. */
export function voiceLanguages(toolset: ResolvedToolSet): string[] {
  const lines: (VoiceText | undefined)[] = [
    toolset.voice.filler,
    toolset.voice.errorMessage,
    toolset.voice.stillWorking,
    ...toolset.tools.map((t) => t.filler),
  ];
  const languages = new Set<string>();
  for (const line of lines)
    if (line && typeof line === 'object') for (const k of Object.keys(line)) languages.add(k);
  return [...languages];
}

/** Whether some filler of the ToolSet (voice.filler, or a tool's own) says anything in the turn's language. */
export function anyFiller(toolset: ResolvedToolSet, voice: TurnVoice): boolean {
  return (
    voice.line(toolset.voice.filler) !== '' ||
    toolset.tools.some((tool) => tool.filler !== undefined && voice.line(tool.filler) !== '')
  );
}

type Detect = (text: string, options: { only: string[] }) => string;
let detector: Promise<Detect> | undefined;
let loaded: Detect | undefined;

function loadDetector(): Promise<Detect> {
  detector ??= import('tinyld').then((m) => {
    loaded = m.detect as Detect;
    return loaded;
  });
  return detector;
}

/** Unmute's silence marker and its opening line say nothing about the user's language. */
const NOT_SPEECH = new Set(['...', 'Hello!']);

/** Picks the language of a turn among the ones the ToolSet's voice lines are written in. */
export class LanguagePicker {
  readonly #languages: string[];
  /** Resolves once the detector is loaded (at once when none is needed). */
  readonly ready: Promise<void>;

  constructor(languages: readonly string[]) {
    this.#languages = [...languages];
    // Loaded in the background from the start, so a turn never waits for the import.
    this.ready = this.needed ? loadDetector().then(() => {}) : Promise.resolve();
    this.ready.catch(() => {});
  }

  static for(toolset: ResolvedToolSet): LanguagePicker {
    return new LanguagePicker(voiceLanguages(toolset));
  }

  /** Detection matters only when some line has a choice of languages. */
  get needed(): boolean {
    return this.#languages.length > 1;
  }

  /**
   * The language of the last two user messages, among those on offer; undefined when unknown (then
   * `en`, else the first entry, is spoken) or while the detector is still loading.
   */
  pick(messages: readonly ChatMessage[]): string | undefined {
    if (!this.needed) return this.#languages[0];
    if (!loaded) return undefined;
    const text = recentUserText(messages as ChatMessage[])
      .filter((t) => !NOT_SPEECH.has(t.trim()))
      .join('\n');
    if (text.trim() === '') return undefined;
    // Restricted to the languages on offer: short utterances ("oui") are told apart far better.
    return loaded(text, { only: this.#languages }) || undefined;
  }
}

/** A turn's voice lines: the language is detected on the first line the turn speaks, then kept. */
export class TurnVoice {
  readonly #picker: LanguagePicker | undefined;
  readonly #messages: readonly ChatMessage[];
  #language: { value: string | undefined } | undefined;

  constructor(picker: LanguagePicker | undefined, messages: readonly ChatMessage[]) {
    this.#picker = picker;
    this.#messages = messages;
  }

  get language(): string | undefined {
    this.#language ??= { value: this.#picker?.pick(this.#messages) };
    return this.#language.value;
  }

  line(text: VoiceText): string {
    return typeof text === 'string' ? text : voiceText(text, this.language);
  }
}
