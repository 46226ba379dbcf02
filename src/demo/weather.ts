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

export async function startWeatherService(): Promise<{ url: string; close(): void }> {
  const weather = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
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
