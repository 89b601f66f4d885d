// The single-page app of tests/test_browser_spa.py: oidc-client-ts used as an app uses it (code flow with
// PKCE, refresh with the refresh token), plus calls to the API. The test drives it through window.spa and
// gets back only what it asserts on: whether a token is a JWT, never a token itself.
"use strict";

const CONFIG_KEY = "spa-config";
const query = new URLSearchParams(location.search);
if (query.has("authority")) {
  // The first load names the identity provider and the API; the redirect back from login does not.
  const named = { authority: query.get("authority"), api: query.get("api"), dpop: query.get("dpop") === "1" };
  sessionStorage.setItem(CONFIG_KEY, JSON.stringify(named));
}
const config = JSON.parse(sessionStorage.getItem(CONFIG_KEY));

const manager = new oidc.UserManager({
  authority: config.authority,
  client_id: "demo-spa",
  redirect_uri: location.origin + location.pathname,
  response_type: "code",
  scope: "openid",
  // The demo identity provider's userinfo takes bearer tokens only: a DPoP-bound one would need a proof.
  loadUserInfo: !config.dpop,
  automaticSilentRenew: false, // the test refreshes when it chooses to
  userStore: new oidc.WebStorageStateStore({ store: window.sessionStorage }),
  // With DPoP the library makes a key pair, keeps it in IndexedDB and sends a proof on each token request.
  dpop: config.dpop ? { store: new oidc.IndexedDbDPoPStore() } : undefined,
});

const isJwt = (token) => typeof token === "string" && token.split(".").length === 3;
const isHandle = (token) => typeof token === "string" && /^[A-Za-z0-9_-]+$/.test(token);
const base64url = (text) => atob(text.replace(/-/g, "+").replace(/_/g, "/"));
const jwtPart = (token, index) => JSON.parse(base64url(token.split(".")[index]));

function summary(user) {
  return {
    accessIsJwt: isJwt(user.access_token),
    accessIsHandle: isHandle(user.access_token),
    refreshIsJwt: isJwt(user.refresh_token),
    refreshIsHandle: isHandle(user.refresh_token),
    idTokenIsJwt: isJwt(user.id_token),
    tokenType: user.token_type,
    profile: user.profile,
    // Of a JWT the page holds (no proxy in between), only the key binding: RFC 9449's cnf claim.
    accessCnf: isJwt(user.access_token) ? (jwtPart(user.access_token, 1).cnf ?? null) : null,
  };
}

// What the page can read of an answer, or the network error a browser gives when it may read nothing.
async function readable(request) {
  try {
    const answer = await request;
    const text = await answer.text();
    let body = null;
    try {
      body = JSON.parse(text);
    } catch {
      // not JSON: the status and headers still tell
    }
    return {
      status: answer.status,
      wwwAuthenticate: answer.headers.get("WWW-Authenticate"),
      error: body && body.error,
      jwtClaims: body && body.jwt_claims, // the echo API's reading of the JWT that reached it
    };
  } catch (error) {
    return { networkError: String(error) };
  }
}

window.spa = {
  login: () => manager.signinRedirect({ login_hint: "alice" }),

  summary: async () => summary(await manager.getUser()),

  // The public key the library's DPoP proofs carry (from a fresh proof's header).
  proofKey: async () => {
    const proof = await manager.dpopProof(config.authority, await manager.getUser(), "GET");
    return jwtPart(proof, 0).jwk;
  },

  // GET the API with the signed-in user's handle, or with the credential given.
  callApi: async (path, credential) => {
    const token = credential ?? (await manager.getUser()).access_token;
    return readable(fetch(config.api + path, { headers: { Authorization: `Bearer ${token}` } }));
  },

  refresh: async () => {
    const before = await manager.getUser();
    const after = await manager.signinSilent(); // with a refresh token, a refresh_token grant
    return {
      ...summary(after),
      accessChanged: after.access_token !== before.access_token,
      refreshChanged: after.refresh_token !== before.refresh_token,
    };
  },

  // A refresh with a refresh handle the proxy never issued: how the library sees the refusal.
  refreshWith: async (refreshToken) => {
    const user = await manager.getUser();
    user.refresh_token = refreshToken;
    await manager.storeUser(user);
    try {
      await manager.signinSilent();
      return { refreshed: true };
    } catch (error) {
      return { error: error.error ?? null, message: String(error) };
    }
  },
};

if (query.has("code") || query.has("error")) {
  manager.signinRedirectCallback().then(
    () => {
      history.replaceState(null, "", location.pathname); // the code is spent: off the address bar
      document.body.dataset.state = "signed-in";
    },
    (error) => {
      document.body.dataset.state = `error: ${error}`;
    },
  );
} else {
  document.body.dataset.state = "ready";
}
