/**
 * `kubectl explain` over the ToolSet CRD, with the real kubectl binary. kubectl reads discovery and the
 * OpenAPI v3 document of the group version from an API server; none can run here, so a loopback server
 * publishes what the API server publishes for an established CRD: the group in legacy discovery, and
 * the version's openAPIV3Schema under components.schemas, tagged with its group, version and kind.
 */
import { execFile } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { toolSetCrd, toolSetOpenApiSchema } from '../../src/toolset/crd.js';
import { API_GROUP, API_VERSION, KIND } from '../../src/toolset/index.js';
import { k8sTools } from '../support/k8s-tools.js';

type Schema = Record<string, unknown>;
const run = promisify(execFile);
const groupVersion = `${API_GROUP}/${API_VERSION}`;
const SCHEMA_NAME = `dev.earpiece.${API_VERSION}.${KIND}`;

function publishedDocuments(): Record<string, unknown> {
  const crd = toolSetCrd() as { spec: { names: { plural: string; singular: string; shortNames: string[] } } };
  const schema = toolSetOpenApiSchema();
  const gvk = { group: API_GROUP, version: API_VERSION, kind: KIND };
  // kubectl finds the kind through the list operation's x-kubernetes-group-version-kind.
  const list = `/apis/${groupVersion}/namespaces/{namespace}/${crd.spec.names.plural}`;
  const openapi = {
    openapi: '3.0.0',
    info: { title: 'Kubernetes CRD Swagger', version: 'v0.1.0' },
    paths: { [list]: { get: { 'x-kubernetes-group-version-kind': gvk, responses: {} } } },
    components: {
      schemas: {
        [SCHEMA_NAME]: {
          ...schema,
          'x-kubernetes-group-version-kind': [gvk],
        },
      },
    },
  };
  return {
    '/api': { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [] },
    '/api/v1': { kind: 'APIResourceList', groupVersion: 'v1', resources: [] },
    '/apis': {
      kind: 'APIGroupList',
      apiVersion: 'v1',
      groups: [
        {
          name: API_GROUP,
          versions: [{ groupVersion, version: API_VERSION }],
          preferredVersion: { groupVersion, version: API_VERSION },
        },
      ],
    },
    [`/apis/${groupVersion}`]: {
      kind: 'APIResourceList',
      apiVersion: 'v1',
      groupVersion,
      resources: [
        {
          name: crd.spec.names.plural,
          singularName: crd.spec.names.singular,
          namespaced: true,
          kind: KIND,
          verbs: ['get', 'list', 'watch', 'create', 'update', 'patch', 'delete'],
          shortNames: crd.spec.names.shortNames,
        },
      ],
    },
    '/openapi/v3': {
      paths: { [`apis/${groupVersion}`]: { serverRelativeURL: `/openapi/v3/apis/${groupVersion}?hash=1` } },
    },
    [`/openapi/v3/apis/${groupVersion}`]: openapi,
  };
}

let server: Server;
let url: string;

beforeAll(async () => {
  const documents = publishedDocuments();
  server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0] as string;
    const body = documents[path];
    // Legacy discovery answers as application/json, which kubectl accepts in place of aggregated discovery.
    res.writeHead(body ? 200 : 404, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body ?? { kind: 'Status', code: 404 }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await new Promise((resolve) => server.close(resolve));
});

async function explain(...args: string[]): Promise<string> {
  const { stdout } = await run(k8sTools().kubectl, ['--server', url, 'explain', ...args], {
    env: { ...process.env, KUBECONFIG: '/dev/null', HOME: '/nonexistent' },
    timeout: 30_000,
  });
  return stdout;
}

/** Every property under `schema`, with its dotted path (lists by their field, as kubectl explain does). */
function* properties(schema: Schema, path: string): Generator<[string, Schema]> {
  const node = (schema.items as Schema | undefined) ?? schema;
  for (const [name, child] of Object.entries((node.properties ?? {}) as Record<string, Schema>)) {
    yield [`${path}.${name}`, child];
    yield* properties(child, `${path}.${name}`);
  }
}

const flat = (text: string) => text.replace(/\s+/g, ' ');

describe('kubectl explain toolset', () => {
  it('teaches spec.tools.http.url with its description and an example', async () => {
    const out = await explain('toolset.spec.tools.http.url');
    expect(out).toMatch(/KIND:\s+ToolSet/);
    expect(out).toMatch(/GROUP:\s+earpiece\.dev\n/);
    expect(out).toMatch(/VERSION:\s+v1alpha1\n/);
    expect(out).toMatch(/FIELD:\s+url <string>/);
    expect(flat(out)).toContain('RFC 6570 URL template filled with the tool arguments.');
    expect(flat(out)).toContain('Example: https://api.open-meteo.com/v1/forecast{?latitude,longitude}');
  });

  it('prints the description of every field of spec', async () => {
    const spec = (toolSetOpenApiSchema().properties as Record<string, Schema>).spec as Schema;
    // Explaining an object lists its fields with their descriptions, so one call per object covers all.
    const all: [string, Schema][] = [['toolset.spec', spec], ...properties(spec, 'toolset.spec')];
    const objects = all.filter(([, s]) => ((s.items as Schema | undefined) ?? s).properties !== undefined);
    let fields = 0;
    for (const [path, schema] of objects) {
      const out = flat(await explain(path));
      const node = (schema.items as Schema | undefined) ?? schema;
      for (const [name, child] of Object.entries(node.properties as Record<string, Schema>)) {
        // kubectl wraps descriptions; their first words are enough to tell them apart.
        const start = flat(String(child.description)).split(' ').slice(0, 6).join(' ');
        expect(out, `${path}.${name}`).toContain(start);
        fields++;
      }
    }
    expect(fields).toBeGreaterThan(70);
  }, 120_000);

  it('lists every field of spec with --recursive', async () => {
    const out = await explain('toolset.spec', '--recursive');
    const spec = (toolSetOpenApiSchema().properties as Record<string, Schema>).spec as Schema;
    for (const [path] of properties(spec, 'spec')) {
      const name = path.split('.').at(-1) as string;
      expect(out, path).toMatch(new RegExp(`^\\s+${name}\\s+<`, 'm'));
    }
  });
});
