import { describe, expect, it } from 'vitest';
import type { ChatMessage } from '../../src/proxy/messages.js';
import { LanguagePicker, TurnVoice, voiceText } from '../../src/proxy/voice.js';

const filler = { en: 'One moment. ', fr: 'Un instant. ' };
const user = (...texts: string[]): ChatMessage[] => [
  { role: 'system', content: 'You are a helpful voice assistant.' },
  ...texts.flatMap((t, i) => [
    { role: 'user', content: t },
    ...(i < texts.length - 1 ? [{ role: 'assistant', content: 'Okay.' }] : []),
  ]),
];

describe('voice lines by language', () => {
  it('picks the language, else en, else the first entry', () => {
    expect(voiceText('One moment. ', 'fr')).toBe('One moment. ');
    expect(voiceText(filler, 'fr')).toBe('Un instant. ');
    expect(voiceText(filler, 'de')).toBe('One moment. ');
    expect(voiceText(filler, undefined)).toBe('One moment. ');
    expect(voiceText({ fr: 'Un instant. ', de: 'Moment. ' }, 'es')).toBe('Un instant. ');
  });

  it('detects English and French conversations from the last two user messages', async () => {
    const picker = new LanguagePicker(['en', 'fr']);
    await picker.ready;
    expect(picker.pick(user('What is the weather like in Paris today?'))).toBe('en');
    expect(picker.pick(user("Quel temps fait-il à Paris aujourd'hui ?"))).toBe('fr');
    // Unmute's silence marker says nothing: the words before it decide.
    expect(picker.pick(user('Est-ce qu’il va pleuvoir demain à Lyon ?', '...'))).toBe('fr');
    expect(picker.pick(user('...'))).toBeUndefined();
  });

  it('a turn detects once and speaks every line in that language; an unknown language falls back', async () => {
    const picker = new LanguagePicker(['en', 'fr']);
    await picker.ready;
    const french = new TurnVoice(picker, user('Peux-tu regarder la météo à Marseille, s’il te plaît ?'));
    expect(french.line(filler)).toBe('Un instant. ');
    expect(french.line({ en: 'Still working on it. ', fr: 'Je cherche encore. ' })).toBe(
      'Je cherche encore. ',
    );
    const japanese = new TurnVoice(picker, user('東京の天気はどうですか'));
    expect(japanese.line(filler)).toBe('One moment. ');
    expect(new TurnVoice(picker, user('...')).line({ fr: 'Un instant. ', de: 'Moment. ' })).toBe(
      'Un instant. ',
    );
  });

  it('needs no detector when every line has one language', () => {
    const picker = new LanguagePicker(['fr']);
    expect(picker.needed).toBe(false);
    expect(new TurnVoice(picker, user('Hello there, how are you?')).line({ fr: 'Un instant. ' })).toBe(
      'Un instant. ',
    );
  });
});
