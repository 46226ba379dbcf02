import { describe, expect, it } from 'vitest';
import { classifyRefusal, UpstreamState } from '../../src/proxy/upstream.js';

describe('classifyRefusal', () => {
  it.each([
    // vLLM (both error shapes), llama.cpp, OpenAI, Ollama
    [
      400,
      '{"object":"error","message":"This model\'s maximum context length is 1536 tokens. However, you requested 1700 tokens (1600 in the messages, 100 in the completion).","type":"BadRequestError","param":null,"code":400}',
      'context_length',
    ],
    [
      400,
      '{"error":{"message":"The decoder prompt (length 9000) is longer than the maximum model length of 8192.","type":"BadRequestError","param":null,"code":400}}',
      'context_length',
    ],
    [
      400,
      '{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error"}}',
      'context_length',
    ],
    [
      400,
      '{"error":{"message":"This model\'s maximum context length is 128000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}',
      'context_length',
    ],
    [
      400,
      '{"error":{"message":"\\"auto\\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set","type":"BadRequestError","param":null,"code":400}}',
      'tools_unsupported',
    ],
    [
      400,
      '{"error":{"message":"registry.ollama.ai/library/gemma:2b does not support tools","type":"api_error","param":null,"code":null}}',
      'tools_unsupported',
    ],
    [
      400,
      '{"error":{"message":"chat_template_kwargs: Extra inputs are not permitted","type":"BadRequestError"}}',
      'kwargs_rejected',
    ],
    // OpenRouter, when no provider of the model takes tools, or the tool_choice sent
    [
      404,
      '{"error":{"message":"No endpoints found that support tool use. To learn more about provider routing, visit: https://openrouter.ai/docs/guides/routing/provider-selection","code":404}}',
      'tools_unsupported',
    ],
    [
      404,
      '{"error":{"message":"No endpoints found that support the provided \'tool_choice\' value. To learn more about provider routing, visit: https://openrouter.ai/docs/provider-routing","code":404}}',
      'tools_unsupported',
    ],
    [
      404,
      '{"error":{"message":"No endpoints found for nousresearch/hermes-3-llama-3.1-405b:free.","code":404}}',
      'other',
    ],
    // OpenAI (current and older wording), Mistral, and a model behind a gateway that takes no tools
    [
      400,
      '{"error":{"message":"Unsupported parameter: \'tools\' is not supported with this model.","type":"invalid_request_error","param":"tools","code":"unsupported_parameter"}}',
      'tools_unsupported',
    ],
    [
      400,
      '{"error":{"message":"Unrecognized request argument supplied: tools","type":"invalid_request_error"}}',
      'tools_unsupported',
    ],
    [
      400,
      '{"object":"error","message":"Function calling is not enabled for this model","type":"invalid_request_error"}',
      'tools_unsupported',
    ],
    [400, '{"error":{"message":"This model does not support tool use."}}', 'tools_unsupported'],
    [
      400,
      '{"error":{"message":"Unsupported parameter: \'temperature\' is not supported with this model.","type":"invalid_request_error","param":"temperature","code":"unsupported_parameter"}}',
      'other',
    ],
    // Mistral and Azure AI serverless take no stream_options
    [
      422,
      '{"object":"error","message":{"detail":[{"type":"extra_forbidden","loc":["body","stream_options"],"msg":"Extra inputs are not permitted","input":{"include_usage":true}}]},"type":"invalid_request_message_error"}',
      'stream_options_rejected',
    ],
    [
      400,
      '{"error":{"code":"extra_parameters_not_allowed","message":"Extra parameters [\'stream_options\'] are not allowed when extra-parameters is not set or set to be \'error\'."}}',
      'stream_options_rejected',
    ],
    [
      400,
      '{"error":{"message":"Unrecognized request argument supplied: chat_template_kwargs","type":"invalid_request_error"}}',
      'kwargs_rejected',
    ],
    [
      400,
      '{"error":{"message":"Failed to deserialize the JSON body: unknown field `chat_template_kwargs`, expected one of `model`, `messages`"}}',
      'kwargs_rejected',
    ],
    [
      400,
      `{"error":{"message":"Additional properties are not allowed ('stream_options' was unexpected)"}}`,
      'stream_options_rejected',
    ],
    // Mistral's refusal passed on by a gateway as a message string, its quotes escaped
    [
      422,
      JSON.stringify({
        error: {
          message:
            '{"detail":[{"type":"extra_forbidden","loc":["body","stream_options"],"msg":"Extra inputs are not permitted"}]}',
        },
      }),
      'stream_options_rejected',
    ],
    // A validation error that echoes the request names the fields it held, without refusing them
    [
      400,
      `{"object":"error","message":"[{'type': 'value_error', 'loc': ('body',), 'msg': 'Value error, top_logprobs requires logprobs', 'input': {'model': 'm', 'stream': True, 'stream_options': {'include_usage': True}, 'chat_template_kwargs': {'enable_thinking': False}, 'top_logprobs': 5}}]","type":"BadRequestError","param":null,"code":400}`,
      'other',
    ],
    [
      422,
      '{"detail":[{"type":"extra_forbidden","loc":["body","seed_x"],"msg":"Extra inputs are not permitted","input":1}],"body":{"stream_options":{"include_usage":true}}}',
      'other',
    ],
    [400, '{"error":{"message":"model not found"}}', 'other'],
    [500, 'context length exceeded', 'other'],
  ])('HTTP %i %s → %s', (status, body, expected) => {
    expect(classifyRefusal(status, body)).toBe(expected);
  });
});

describe('UpstreamState', () => {
  it('sends no tools for 60 s after a refusal, then tries again', () => {
    let now = 1_000;
    const state = new UpstreamState(() => now);
    expect(state.toolsAccepted).toBe(true);
    expect(state.toolsRefusedAt).toBeUndefined();
    state.markToolsUnsupported();
    now = 60_999;
    expect(state.toolsAccepted).toBe(false);
    now = 61_000;
    expect(state.toolsAccepted).toBe(true);
    // Tried again, the refusal is still on record.
    expect(state.toolsRefusedAt).toBe(1_000);
  });
});
