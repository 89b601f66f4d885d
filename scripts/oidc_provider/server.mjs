// panva's oidc-provider as a second, real authorization server for splittoken's end-to-end tests.
//
//   node scripts/oidc_provider/server.mjs --port 0
//   -> "oidc-provider listening on http://127.0.0.1:PORT" once it answers
//
// Everything a client does here is oidc-provider's own code: the authorization code flow (with its
// development-only login and consent pages, which tests fill in as a person would), the refresh_token grant
// with rotation, client_credentials, revocation, introspection and DPoP. The only settings are the ones a
// deployment would make: one resource server whose access tokens are RS256 JWTs, two confidential clients,
// a fresh signing key per start.
//
// Endpoints (oidc-provider's defaults): /auth, /token, /token/revocation, /token/introspection, /jwks, /me,
// /.well-known/openid-configuration; and /_stats, counters for tests (below).

import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '0' },
    'access-ttl': { type: 'string', default: '300' },
    'refresh-ttl': { type: 'string', default: '3600' },
  },
});

// The audience of every access token: the echo API behind the proxy stands for it.
const RESOURCE = 'urn:splittoken:api';
const RESOURCE_SCOPES = 'api:read api:write';
const REDIRECT_URI = 'http://127.0.0.1/callback';

function seconds(name) {
  const value = Number(args[name]);
  if (!Number.isInteger(value) || value <= 0) {
    throw new Error(`--${name} must be a positive number of seconds, not ${JSON.stringify(args[name])}`);
  }
  return value;
}

const accessTtl = seconds('access-ttl');
const refreshTtl = seconds('refresh-ttl');

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };

// One client per way of sending the secret: oidc-provider holds each client to the one it registered.
const client = (id, method) => ({
  client_id: id,
  client_secret: `${id}-secret`,
  token_endpoint_auth_method: method,
  grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
  response_types: ['code'],
  redirect_uris: [REDIRECT_URI],
  scope: 'openid offline_access email',
});

const configuration = {
  clients: [client('splittoken-basic', 'client_secret_basic'), client('splittoken-post', 'client_secret_post')],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  scopes: ['openid', 'offline_access', 'email'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return { sub, email: `${sub}@example.com`, email_verified: true };
      },
    };
  },
  rotateRefreshToken: true,
  ttl: {
    AccessToken: accessTtl,
    ClientCredentials: accessTtl,
    RefreshToken: refreshTtl,
    Grant: refreshTtl,
    Session: refreshTtl,
  },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    // Binds only when the token request carries a DPoP proof: plain bearer clients are unaffected.
    dPoP: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // Every grant is for the one API, so that every access token is a JWT (opaque ones would not leak).
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo(ctx, resource) {
        if (resource !== RESOURCE) {
          throw new errors.InvalidTarget();
        }
        return {
          scope: RESOURCE_SCOPES,
          audience: RESOURCE,
          accessTokenTTL: accessTtl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
};

// GET /_stats, asked by tests straight, never through the proxy: how many requests reached each endpoint the
// proxy rewrites, and how often oidc-provider's token events fired, so that a test can tell what the proxy
// sent on from what it answered itself, and which real tokens the provider consumed or destroyed.
const COUNTED_PATHS = new Set(['/token', '/token/revocation', '/token/introspection']);
const COUNTED_EVENTS = [
  'grant.success', 'grant.error', 'grant.revoked', 'refresh_token.consumed', 'refresh_token.destroyed',
  'revocation.error', 'introspection.error', 'server_error',
];
const zeros = (keys) => Object.fromEntries(keys.map((key) => [key, 0]));
const stats = { requests: zeros([...COUNTED_PATHS, 'other']), events: zeros(COUNTED_EVENTS) };

const server = createServer();
server.listen(Number(args.port), args.host, () => {
  const { address, port } = server.address();
  const host = address.includes(':') ? `[${address}]` : address;
  const issuer = `http://${host}:${port}`;
  const provider = new Provider(issuer, configuration);
  for (const name of COUNTED_EVENTS) {
    provider.on(name, () => { stats.events[name] += 1; });
  }
  const callback = provider.callback();
  server.on('request', (req, res) => {
    const pathname = URL.parse(req.url, issuer)?.pathname;
    if (pathname === '/_stats' && req.method === 'GET') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(stats));
      return;
    }
    stats.requests[COUNTED_PATHS.has(pathname) ? pathname : 'other'] += 1;
    callback(req, res);
  });
  console.log(`oidc-provider listening on ${issuer}`);
});
