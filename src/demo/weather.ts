/** The demo's weather service, shaped like Open-Meteo's /v1/forecast, for the cities the demo model knows. */
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

export const CITIES: Record<
  string,
  { latitude: number; longitude: number; temperature: number; wind: number }
> = {
  lisbon: { latitude: 38.72, longitude: -9.14, temperature: 24, wind: 12 },
  oslo: { latitude: 59.91, longitude: 10.75, temperature: 7, wind: 31 },
};

/** Paths of the demo's slow services, how long each takes, and what it answers. */
export const SLOW: Record<string, { ms: number; body: unknown }> = {
  '/v1/outlook': { ms: 3800, body: { days: 7, summary: 'dry and mild, rain on Sunday' } },
  '/v1/route': { ms: 6000, body: { minutes: 47, via: 'the river path' } },
};

export async function startWeatherService(): Promise<{ url: string; close(): void }> {
  const weather = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    // Two slow services: a week's outlook (a few seconds) and a route planner (longer than a turn should wait).
    const slow = SLOW[url.pathname];
    if (slow) {
      const timer = setTimeout(() => {
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(slow.body));
      }, slow.ms);
      res.on('close', () => clearTimeout(timer));
      return;
    }
    const lat = Number(url.searchParams.get('latitude'));
    const found = Object.values(CITIES).find((c) => Math.abs(c.latitude - lat) < 0.01);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(
      JSON.stringify({
        latitude: lat,
        current: {
          time: new Date().toISOString(),
          temperature_2m: found?.temperature ?? 15,
          wind_speed_10m: found?.wind ?? 5,
        },
      }),
    );
  });
  weather.listen(0, '127.0.0.1');
  await once(weather, 'listening');
  return {
    url: `http://127.0.0.1:${(weather.address() as AddressInfo).port}`,
    close: () => weather.close(),
  };
}
