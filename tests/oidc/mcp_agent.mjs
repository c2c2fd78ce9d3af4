// An MCP agent on the official TypeScript SDK that signs in the MCP way: 401 →
// protected-resource metadata → client-credentials token from the identity provider →
// list and call tools. `node mcp_agent.mjs sdk` uses @modelcontextprotocol/sdk (1.x,
// initialize handshake); `node mcp_agent.mjs client` uses @modelcontextprotocol/client
// (2.x, negotiates the stateless 2026-07-28 revision).
//
//   TOOLPLANE_MCP_URL=... OAUTH_ISSUER=... OAUTH_CLIENT_ID=... OAUTH_CLIENT_SECRET=... node mcp_agent.mjs sdk
//
// Prints one JSON object (the test reads it).
const which = process.argv[2] ?? 'sdk';
const mod =
  which === 'client'
    ? await import('@modelcontextprotocol/client')
    : {
        ...(await import('@modelcontextprotocol/sdk/client/index.js')),
        ...(await import('@modelcontextprotocol/sdk/client/streamableHttp.js')),
        ...(await import('@modelcontextprotocol/sdk/client/auth-extensions.js')),
      };
const { Client, StreamableHTTPClientTransport, ClientCredentialsProvider } = mod;

const url = new URL(process.env.TOOLPLANE_MCP_URL);
const tool = process.env.TOOL ?? 'word_count';
const args = JSON.parse(process.env.TOOL_ARGS ?? '{"text": "one two three four"}');
const exchanges = [];
const recordingFetch = async (input, init) => {
  const response = await fetch(input, init);
  const target = new URL(input instanceof Request ? input.url : String(input));
  exchanges.push(`${init?.method ?? 'GET'} ${response.status} ${target.pathname}`);
  return response;
};

const authProvider = new ClientCredentialsProvider({
  clientId: process.env.OAUTH_CLIENT_ID,
  clientSecret: process.env.OAUTH_CLIENT_SECRET,
  scope: 'tools',
  expectedIssuer: process.env.OAUTH_ISSUER,
});
const transport = new StreamableHTTPClientTransport(url, { authProvider, fetch: recordingFetch });
// The 2.x client negotiates only when asked ('auto': `server/discover`, falling back
// to the handshake on servers that predate 2026-07-28).
const options = which === 'client' ? { versionNegotiation: { mode: 'auto' } } : {};
const client = new Client({ name: `toolplane-test-${which}`, version: '1.0.0' }, options);
await client.connect(transport);
const version = transport.protocolVersion ?? client.getNegotiatedProtocolVersion?.() ?? null;
const tools = (await client.listTools()).tools.map((t) => t.name);
const r = await client.callTool({ name: tool, arguments: args });
console.log(
  JSON.stringify({
    sdk: which,
    protocol_version: version,
    exchanges,
    tools,
    result: {
      structured: r.structuredContent ?? r.structured_content ?? null,
      is_error: Boolean(r.isError),
      text: r.content?.[0]?.text ?? '',
    },
  }),
);
await client.close();
