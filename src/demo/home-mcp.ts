/** The demo's smart-home MCP server (Streamable HTTP, stateless), shaped like Home Assistant's /api/mcp. */
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

export async function startHomeServer(): Promise<{
  url: string;
  lights: Map<string, boolean>;
  close(): void;
}> {
  const { McpServer } = await import('@modelcontextprotocol/sdk/server/mcp.js');
  const { StreamableHTTPServerTransport } = await import(
    '@modelcontextprotocol/sdk/server/streamableHttp.js'
  );
  const { z } = await import('zod');
  const lights = new Map([['kitchen', false]]);
  const http = createServer(async (req, res) => {
    const server = new McpServer({ name: 'demo-home', version: '1.0.0' });
    server.registerTool(
      'TurnOn',
      { description: 'Turns on a light by room name.', inputSchema: { room: z.string() } },
      async ({ room }) => {
        lights.set(room, true);
        return { content: [{ type: 'text', text: `The ${room} light is on.` }] };
      },
    );
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
    res.on('close', () => void transport.close());
    await server.connect(transport);
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    await transport.handleRequest(req, res, text ? JSON.parse(text) : undefined);
  });
  http.listen(0, '127.0.0.1');
  await once(http, 'listening');
  return {
    url: `http://127.0.0.1:${(http.address() as AddressInfo).port}/mcp`,
    lights,
    close: () => http.close(),
  };
}
