// The OpenID provider the identity tests (tests/oidc.rs) run on loopback: npm's
// `oidc-provider` with a client that may use the client credentials grant (JWT access tokens
// for a resource indicator) and the authorization code flow, plus test-only endpoints to
// rotate the signing key and count key set requests.
//
// Prints one JSON line {"issuer": ..., "port": ...} once it listens on 127.0.0.1 (port 0, or
// PORT). REDIRECT_URI: the client's redirect URI (the gateway's callback); the default is
// only a placeholder. JWKS_MAX_AGE: a `Cache-Control: max-age` for the key set, in seconds.

import { generateKeyPairSync, randomUUID } from "node:crypto";
import http from "node:http";
import Provider from "oidc-provider";

const CLIENT_ID = "wsgate-test";
const CLIENT_SECRET = "wsgate-test-secret-0123456789abcdef";
// Resources (audiences) tokens may be asked for: `urn:wsgate:...`. `urn:wsgate:short` gets a
// 1 s lifetime, for expiry tests.
const RESOURCE_PREFIX = "urn:wsgate:";

const counts = { jwks: 0, discovery: 0, token: 0 };

function signingKey() {
  const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  return { ...privateKey.export({ format: "jwk" }), kid: `k-${randomUUID()}`, alg: "RS256", use: "sig" };
}

function makeProvider(issuer, key) {
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: CLIENT_ID,
        client_secret: CLIENT_SECRET,
        grant_types: ["client_credentials", "authorization_code"],
        response_types: ["code"],
        redirect_uris: [process.env.REDIRECT_URI || "http://127.0.0.1/callback"],
      },
    ],
    jwks: { keys: [key] },
    scopes: ["openid", "email", "profile", "ws"],
    // Claims in the ID token itself, as Keycloak and Entra ID do by default.
    conformIdTokenClaims: false,
    claims: { email: ["email", "email_verified"], profile: ["name"] },
    findAccount: (ctx, id) => ({
      accountId: id,
      claims: () => ({ sub: id, email: `${id}@example.test`, email_verified: true, name: id }),
    }),
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => `${RESOURCE_PREFIX}gateway`,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource) => {
          if (!resource.startsWith(RESOURCE_PREFIX)) {
            throw new Error("unknown resource");
          }
          return {
            scope: "ws",
            audience: resource,
            accessTokenTTL: resource === `${RESOURCE_PREFIX}short` ? 1 : 600,
            accessTokenFormat: "jwt",
            jwt: { sign: { alg: "RS256" } },
          };
        },
      },
    },
  });
  // Tests on loopback over plain HTTP.
  provider.proxy = true;
  return provider;
}

let key = signingKey();
let provider;
let handler;

const server = http.createServer((req, res) => {
  const path = req.url.split("?")[0];
  if (path === "/jwks") {
    counts.jwks += 1;
    if (process.env.JWKS_MAX_AGE) res.setHeader("cache-control", `max-age=${process.env.JWKS_MAX_AGE}`);
  }
  if (path === "/.well-known/openid-configuration") counts.discovery += 1;
  if (path === "/token") counts.token += 1;
  if (path === "/test/stats") {
    res.setHeader("content-type", "application/json");
    res.end(JSON.stringify({ ...counts, kid: key.kid }));
    return;
  }
  if (path === "/test/rotate" && req.method === "POST") {
    key = signingKey();
    provider = makeProvider(provider.issuer, key);
    handler = provider.callback();
    res.setHeader("content-type", "application/json");
    res.end(JSON.stringify({ kid: key.kid }));
    return;
  }
  if (path === "/test/public-jwk") {
    const { kty, n, e, kid } = key;
    res.setHeader("content-type", "application/json");
    res.end(JSON.stringify({ kty, n, e, kid }));
    return;
  }
  handler(req, res);
});

server.listen(Number(process.env.PORT || 0), "127.0.0.1", () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  provider = makeProvider(issuer, key);
  handler = provider.callback();
  process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
});

// The test reads only the first line: later output (oidc-provider's own) must not crash us.
process.stdout.on("error", () => {});

// The test kills this process; also end when its stdin closes (the test process died).
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
