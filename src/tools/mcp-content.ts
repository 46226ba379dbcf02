/**
 * An MCP tool result as the model sees it. Voice models read text, so text and structured content
 * pass through and every other kind of content becomes a short note in its place.
 */
import { isDeepStrictEqual } from 'node:util';
import type { CallToolResult, ContentBlock } from '@modelcontextprotocol/sdk/types.js';
import { jsonShapeProblem } from '../http/json-shape.js';
import { TOOL_ANSWER_JSON_BOUNDS } from './http-limits.js';
import { ToolError } from './types.js';

function describe(block: ContentBlock): string {
  switch (block.type) {
    case 'text':
      return block.text;
    case 'image':
      return '[image omitted]';
    case 'audio':
      return '[audio omitted]';
    case 'resource_link':
      return `[link: ${block.name} ${block.uri}]`;
    case 'resource':
      return 'text' in block.resource && typeof block.resource.text === 'string'
        ? block.resource.text
        : '[attachment omitted]';
    default:
      return '[content omitted]';
  }
}

/** The text's JSON value, or undefined. The answer's own bound saw this text as one string, not as JSON. */
function parseJson(text: string): unknown {
  if (jsonShapeProblem(text, TOOL_ANSWER_JSON_BOUNDS)) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/**
 * Text blocks joined by newlines, with notes for media. `structuredContent` is returned as a JSON value
 * when the text only repeats it (the spec asks servers to send both); otherwise both are kept.
 * `isError` results throw a ToolError with the server's text, which the model then sees.
 */
export function toolResultContent(result: CallToolResult): unknown {
  const text = (result.content ?? []).map(describe).join('\n');
  if (result.isError) {
    throw new ToolError(text.trim() || 'the tool reported an error', 'ERP_MCP_TOOL_ERROR');
  }
  const structured = result.structuredContent;
  if (structured !== undefined) {
    if (text.trim() === '' || isDeepStrictEqual(parseJson(text), structured)) return structured;
    return `${text}\n${JSON.stringify(structured)}`;
  }
  return text === '' ? '(no output)' : text;
}
