// A real OAuth 2.0 authorization server for the upstream authentication tests:
// oidc-provider (pinned in package.json) with the client credentials grant, token
// introspection (the test's tool checks every token it is shown) and revocation.
//
// Usage: node server.mjs PORT TOKEN_TTL_SECONDS
// Prints "ready" when it listens. GET /test/token-requests counts token requests.
import Provider from 'oidc-provider';

const port = Number(process.argv[2]);
const ttl = Number(process.argv[3] || 300);
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'toolplane-sidecar',
      client_secret: 'cs-0e1d2c3b4a5968778695a4b3c2d1e0f',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      scope: 'inventory:read inventory:write',
    },
  ],
  scopes: ['inventory:read', 'inventory:write'],
  features: {
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    devInteractions: { enabled: false },
  },
  ttl: { ClientCredentials: ttl },
});

let tokenRequests = 0;
provider.use(async (ctx, next) => {
  if (ctx.path === '/test/token-requests') {
    ctx.body = { count: tokenRequests };
    return;
  }
  if (ctx.path === '/token' && ctx.method === 'POST') tokenRequests += 1;
  await next();
});

provider.listen(port, '127.0.0.1', () => console.log('ready'));
