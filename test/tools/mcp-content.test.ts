/** An MCP tool result as the model reads it (src/tools/mcp-content.ts), on its own. */
import { describe, expect, it } from 'vitest';
import { toolResultContent } from '../../src/tools/mcp-content.js';

describe('toolResultContent', () => {
  it('gives the structured content alone when the text repeats it', () => {
    const structured = { city: 'Lisbon', degrees: 21 };
    const text = JSON.stringify(structured);
    expect(toolResultContent({ content: [{ type: 'text', text }], structuredContent: structured })).toBe(
      structured,
    );
    expect(
      toolResultContent({ content: [{ type: 'text', text: 'Sunny.' }], structuredContent: structured }),
    ).toBe(`Sunny.\n${text}`);
  });

  it('does not parse a text block whose JSON passes the answer bounds: it keeps both', () => {
    // The answer's own bound sees this text as one string; parsed, it would be 250,001 objects.
    const wide = { list: Array.from({ length: 250_000 }, () => ({})) };
    const text = JSON.stringify(wide);
    expect(toolResultContent({ content: [{ type: 'text', text }], structuredContent: wide })).toBe(
      `${text}\n${text}`,
    );
  });
});
