import { writeToolSetFile } from '../src/toolset/load.js';
import type { Expected } from './load.js';
import { ANSWER_TEXT, BRIEF_CHUNKS, BRIEF_TEXT, CONTENT_CHUNKS, SYSTEM_PROMPT } from './protocol.js';

/** Unmute's request: model, messages, stream, temperature (the proxy adds tools and instructions). */
export function unmuteRequest(lastUser: string): string {
  return JSON.stringify({
    model: 'bench-model',
    messages: [
      { role: 'system', content: SYSTEM_PROMPT },
      { role: 'user', content: 'Hello!' },
      { role: 'assistant', content: 'Hi there, how can I help you today?' },
      { role: 'user', content: lastUser },
    ],
    stream: true,
    temperature: 0.7,
  });
}

export const STREAM_BODY = unmuteRequest('Tell me about the weather in Lisbon.');
export const STREAM_EXPECTED: Expected = { text: ANSWER_TEXT, chunks: CONTENT_CHUNKS };
export const BRIEF_BODY = unmuteRequest('Tell me about Lisbon, a brief-answer please.');
export const BRIEF_EXPECTED: Expected = { text: BRIEF_TEXT, chunks: BRIEF_CHUNKS };

export async function writeToolSet(dir: string, toolUrl: string): Promise<string> {
  return writeToolSetFile(dir, 'bench', {
    instructions: 'You can look things up with tools. Answer in one or two short spoken sentences.',
    tools: [
      {
        name: 'get_weather',
        description: 'Current temperature and wind at a place.',
        parameters: { type: 'object', properties: { place: { type: 'string' } }, required: ['place'] },
        filler: 'One moment. ',
        http: { url: `${toolUrl}/weather{?place}` },
      },
      {
        name: 'slow_lookup',
        description: 'A lookup that takes a long time (the barge-in measurement).',
        parameters: { type: 'object', properties: { id: { type: 'string' } }, required: ['id'] },
        timeout: '30s',
        http: { url: `${toolUrl}/slow{?id}` },
      },
      { name: 'current_time', description: 'The current date and time.', builtin: 'time' },
      { name: 'calculate', description: 'Evaluates an arithmetic expression.', builtin: 'calculator' },
    ],
  });
}
