/** The demo's stand-in model: decides from the last message what a tool-calling model would do. */
import { type RecordedRequest, type ScriptedReply, textReply, toolCallReply } from './scripted-upstream.js';
import { CITIES } from './weather.js';

export function demoModel(request: RecordedRequest): ScriptedReply {
  const messages = request.body.messages ?? [];
  const last = messages.at(-1);
  const dialect = 'vllm-hermes';
  // A late result has arrived (the proxy's note after the history): say it.
  if (last?.role === 'system' && /has just arrived/.test(String(last.content))) {
    const route = messages.find((m) => m.role === 'tool' && String(m.content).includes('minutes'));
    const { minutes, via } = route ? JSON.parse(String(route.content)) : { minutes: '?', via: '?' };
    return {
      sse: textReply(`By the way, your route is ready: ${minutes} minutes by ${via}.`, dialect, {
        delayMs: 30,
      }),
    };
  }
  if (last?.role === 'tool') {
    let parsed: unknown;
    try {
      parsed = JSON.parse(String(last.content));
    } catch {
      parsed = String(last.content);
    }
    const result = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as Record<string, unknown>;
    if (String(last.content).startsWith('pending')) {
      return {
        sse: textReply("It's taking a while; I'll tell you as soon as your route is ready.", dialect, {
          delayMs: 30,
        }),
      };
    }
    if ('summary' in result) {
      return { sse: textReply(`The week looks ${result.summary}.`, dialect, { delayMs: 30 }) };
    }
    if ('temperature_2m' in result) {
      return {
        sse: textReply(`It's ${result.temperature_2m} degrees and mostly sunny.`, dialect, { delayMs: 30 }),
      };
    }
    if (typeof parsed === 'string' && parsed.includes('light')) {
      return { sse: textReply(`Done. ${parsed}`, dialect, { delayMs: 30 }) };
    }
    if ('weekday' in result) {
      const time = String(result.datetime).slice(11, 16);
      return { sse: textReply(`It's ${time} on ${result.weekday} in Tokyo.`, dialect, { delayMs: 30 }) };
    }
    return { sse: textReply(`That makes ${String(last.content)}.`, dialect, { delayMs: 30 }) };
  }
  const text = String(last?.content ?? '').toLowerCase();
  const city = Object.keys(CITIES).find((c) => text.includes(c));
  if (text.includes('weather') && city) {
    const { latitude, longitude } = CITIES[city] as (typeof CITIES)[string];
    return { sse: toolCallReply([{ name: 'get_weather', arguments: { latitude, longitude } }], dialect) };
  }
  if (text.includes('windy')) {
    // The earlier weather result is in the history again (tool memory), so the model can answer from it.
    const remembered = messages.find(
      (m) => m.role === 'tool' && String(m.content).includes('wind_speed_10m'),
    );
    const wind = remembered ? JSON.parse(String(remembered.content)).wind_speed_10m : undefined;
    const answer =
      wind === undefined
        ? "I'd have to check again."
        : `The wind is at ${wind} kilometres per hour, so just a breeze.`;
    return { sse: textReply(answer, dialect, { delayMs: 30 }) };
  }
  if (text.includes('week')) return { sse: toolCallReply([{ name: 'get_outlook', arguments: {} }], dialect) };
  if (text.includes('route')) return { sse: toolCallReply([{ name: 'plan_route', arguments: {} }], dialect) };
  if (text === '...') return { sse: textReply('Still there?', dialect, { delayMs: 30 }) };
  if (text.includes('light')) {
    return { sse: toolCallReply([{ name: 'home_TurnOn', arguments: { room: 'kitchen' } }], dialect) };
  }
  if (text.includes('times'))
    return { sse: toolCallReply([{ name: 'calculate', arguments: { expression: '12.5 * 4' } }], dialect) };
  if (text.includes('time'))
    return { sse: toolCallReply([{ name: 'current_time', arguments: { timezone: 'Asia/Tokyo' } }], dialect) };
  return { sse: textReply('Hi! Ask me about the weather or the time.', dialect, { delayMs: 30 }) };
}
