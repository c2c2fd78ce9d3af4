// A real OpenID provider (oidc-provider) for toolplane's MCP authorization tests:
// client_credentials grants, JWT access tokens bound to a resource indicator
// (RFC 8707), a fresh RSA signing key per run.
//
//   PORT=... RESOURCES=http://127.0.0.1:1234/mcp,... CLIENTS='[{"client_id":..., "client_secret":..., "ttl": 300}]' node server.mjs
//
// Prints "ready <issuer>" on stdout once it listens.
import { generateKeyPairSync } from 'node:crypto';
import Provider, { errors } from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const resources = (process.env.RESOURCES ?? '').split(',').filter(Boolean);
const clients = JSON.parse(process.env.CLIENTS ?? '[]');
const ttl = Object.fromEntries(clients.map((c) => [c.client_id, c.ttl ?? 300]));

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signing = { ...privateKey.export({ format: 'jwk' }), kid: 'idp-key-1', use: 'sig', alg: 'RS256' };

const provider = new Provider(issuer, {
  clients: clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: c.auth_method ?? 'client_secret_basic',
  })),
  jwks: { keys: [signing] },
  scopes: ['tools'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => resources[0],
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, indicator, client) => {
        if (!resources.includes(indicator)) throw new errors.InvalidTarget();
        return {
          scope: 'tools',
          audience: indicator,
          accessTokenFormat: 'jwt',
          accessTokenTTL: ttl[client.clientId] ?? 300,
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
