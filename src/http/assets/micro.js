/* Micro.js for users-service: the browser half of the Micro "users" API.
 *
 *   <script src="https://users.example.com/micro.js"></script>
 *   Micro.requireLogin(function (session) {
 *     Micro.post("/users/Users/Read", "micro", {id: session.user.id}, function (data) { ... });
 *   });
 *
 * Requests carry the session cookie set by the service's sign-in pages (HttpOnly: this
 * script never sees the session id), so the page's origin must be in --cors-origins.
 * Micro.passkeys.register(name) and Micro.passkeys.signIn(login) add a passkey and sign
 * in with one (WebAuthn; they work where the page's origin may use the service's
 * passkeys: its own pages, and pages under the same domain).
 * Errors are Micro error objects, {id, code, detail, status}. Nothing this script throws
 * reaches the page; what a page's callback throws is rethrown as the page's own error. */
(function (window) {
  "use strict";

  // The service's address: this script's own URL less "/micro.js", taken at load time
  // (document.currentScript is only set while the script first runs).
  var base = "";
  try {
    var script = document.currentScript, scripts = document.getElementsByTagName("script");
    for (var i = scripts.length - 1; !script && i >= 0; i--) {
      if (/\/micro\.js([?#].*)?$/.test(scripts[i].src)) script = scripts[i];
    }
    base = script.src.replace(/[?#].*$/, "").replace(/\/micro\.js$/, "");
  } catch (e) {
    base = ""; // no script element: paths are then relative to the page
  }

  var lastSession = null;

  // Calls a page callback; what it throws surfaces as the page's uncaught error.
  function call(callback, value) {
    if (typeof callback !== "function") return;
    try {
      callback(value);
    } catch (e) {
      setTimeout(function () { throw e; }, 0);
    }
  }

  function microError(code, detail, status) {
    return {id: "micro.js", code: code, detail: String(detail), status: status || ""};
  }

  function networkError(e) {
    return microError(0, "the request failed: " + (e && e.message || e), "Network Error");
  }

  // Reports an error to the page's error callback, or to the console without one.
  function fail(error, callback, what) {
    if (typeof callback === "function") {
      call(callback, error);
    } else if (window.console && console.error) {
      console.error("Micro " + what + ": " + error.code + " " + error.status + ": " + error.detail);
    }
  }

  // fetch that never throws synchronously (a browser without fetch rejects instead).
  function request(url, init) {
    try { return window.fetch(url, init); } catch (e) { return Promise.reject(e); }
  }

  // Micro.post(path, namespace, body, success[, error]) -> Promise of data or null.
  function post(path, namespace, body, success, error) {
    var payload;
    try {
      payload = JSON.stringify(body === undefined ? {} : body);
    } catch (e) {
      fail(microError(0, "the request body cannot be sent as JSON: " + e.message), error, path);
      return Promise.resolve(null);
    }
    var headers = {"Content-Type": "application/json"};
    if (namespace) headers["Micro-Namespace"] = String(namespace);
    return request(base + path, {
      method: "POST", credentials: "include", headers: headers, body: payload
    }).then(function (response) {
      return response.text().then(function (text) {
        var data = null;
        try { data = text === "" && response.ok ? {} : JSON.parse(text); } catch (e) { data = null; }
        if (response.ok && data !== null) {
          call(success, data);
          return data;
        }
        var err = data && typeof data === "object" && "code" in data && "detail" in data ?
          data : microError(response.status, text || response.statusText, response.statusText);
        fail(err, error, path);
        return null;
      });
    }).catch(function (e) {
      fail(networkError(e), error, path);
      return null;
    });
  }

  // The headers of a call to the browser's own routes, with the tenant when named.
  function pageHeaders(namespace) {
    var headers = {"Accept": "application/json"};
    if (namespace) headers["Micro-Namespace"] = String(namespace);
    return headers;
  }

  // Reads this browser's session: resolves to {session} (null when signed out, a 401)
  // or to {error} when the service could not say.
  function fetchSession(namespace) {
    return request(base + "/ui/session", {
      method: "GET", credentials: "include", headers: pageHeaders(namespace)
    }).then(function (response) {
      if (response.status === 401) return {session: null};
      return response.json().then(function (data) {
        if (!response.ok || !data || !data.user) throw new Error("HTTP " + response.status);
        return {session: data};
      });
    }).catch(function (e) {
      return {error: networkError(e)};
    }).then(function (result) {
      lastSession = result.session || null;
      return result;
    });
  }

  // Micro.session(callback[, namespace]): callback({user, expires}) when signed in, else
  // callback(null). `namespace`, here and below, names the tenant on a service with
  // several (as Micro.post's second argument does).
  function session(callback, namespace) {
    return fetchSession(namespace).then(function (result) {
      if (result.error) fail(result.error, null, "session");
      call(callback, lastSession);
      return lastSession;
    });
  }

  // Micro.requireLogin(callback[, namespace]): the callback runs with a live session;
  // without one the browser goes to the sign-in page (the tenant's), which sends it back
  // here afterwards. When the service cannot be reached the error is logged and nothing
  // else happens (no loop).
  function requireLogin(callback, namespace) {
    return fetchSession(namespace).then(function (result) {
      if (result.error) {
        fail(result.error, null, "requireLogin");
      } else if (result.session) {
        call(callback, result.session);
      } else {
        window.location.href = base + "/ui/signin?return_to=" + encodeURIComponent(window.location.href) +
          (namespace ? "&namespace=" + encodeURIComponent(namespace) : "");
      }
      return lastSession;
    });
  }

  function user() {
    return lastSession ? lastSession.user || null : null;
  }

  // Micro.logout(callback[, namespace]): ends this browser's session, then callback().
  function logout(callback, namespace) {
    return request(base + "/ui/signout", {
      method: "POST", credentials: "include", headers: pageHeaders(namespace)
    }).then(function (response) {
      if (!response.ok) fail(microError(response.status, "sign-out failed", response.statusText), null, "logout");
    }).catch(function (e) {
      fail(networkError(e), null, "logout");
    }).then(function () {
      lastSession = null;
      call(callback);
    });
  }

  // ---- Passkeys (WebAuthn). The service's JSON carries binary values as base64url.

  function toBuffer(text) {
    var b64 = String(text).replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) b64 += "=";
    var raw = window.atob(b64), bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes.buffer;
  }

  function toText(buffer) {
    var bytes = new Uint8Array(buffer), raw = "";
    for (var i = 0; i < bytes.length; i++) raw += String.fromCharCode(bytes[i]);
    return window.btoa(raw).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function withBuffers(publicKey) {
    publicKey.challenge = toBuffer(publicKey.challenge);
    if (publicKey.user) publicKey.user.id = toBuffer(publicKey.user.id);
    [publicKey.excludeCredentials, publicKey.allowCredentials].forEach(function (list) {
      (list || []).forEach(function (c) { c.id = toBuffer(c.id); });
    });
    return {publicKey: publicKey};
  }

  // The browser's credential as the service reads it.
  function credentialJson(credential) {
    var r = credential.response, out = {
      id: credential.id, rawId: toText(credential.rawId), type: credential.type,
      extensions: credential.getClientExtensionResults ? credential.getClientExtensionResults() : {},
      response: {clientDataJSON: toText(r.clientDataJSON)}
    };
    if (r.attestationObject) out.response.attestationObject = toText(r.attestationObject);
    if (r.authenticatorData) {
      out.response.authenticatorData = toText(r.authenticatorData);
      out.response.signature = toText(r.signature);
      out.response.userHandle = r.userHandle ? toText(r.userHandle) : null;
    }
    return out;
  }

  // A sign-in's NotAllowedError is the browser's one answer, by design, for a prompt
  // cancelled, timed out, or with no passkey on this device for the account.
  function webauthnError(e, signingIn) {
    if (signingIn && e && e.name === "NotAllowedError") {
      return microError(0, "no passkey was used: the prompt was closed, or this device has no passkey for this account", "Passkey Error");
    }
    return microError(0, "the browser did not make the passkey: " + (e && (e.name + ": " + e.message) || e), "Passkey Error");
  }

  // A POST to the service that resolves to its JSON answer, or rejects with the error;
  // `namespace`, when given, names the tenant (Micro-Namespace).
  function postJson(path, body, namespace) {
    var headers = pageHeaders(namespace);
    headers["Content-Type"] = "application/json";
    return request(base + path, {
      method: "POST", credentials: "include",
      headers: headers,
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.json().catch(function () { return null; }).then(function (data) {
        if (response.ok && data) return data;
        throw data && data.detail ? data : microError(response.status, response.statusText, response.statusText);
      });
    }, function (e) { throw networkError(e); });
  }

  // Micro.passkeys.register(name, success[, error[, namespace]]): adds a passkey to the
  // signed-in user's account (the session cookie signs it); success({passkey}).
  // `namespace` names the tenant on a service with several.
  function registerPasskey(name, success, error, namespace) {
    var challenge;
    return postJson("/users/Users/StartPasskeyRegistration", {}, namespace).then(function (start) {
      challenge = start.challenge_id;
      return navigator.credentials.create(withBuffers(start.options.publicKey)).catch(function (e) {
        throw webauthnError(e);
      });
    }).then(function (credential) {
      return postJson("/users/Users/FinishPasskeyRegistration", {
        challenge_id: challenge, credential: credentialJson(credential), name: name || ""
      }, namespace);
    }).then(function (data) {
      call(success, data);
      return data;
    }).catch(function (e) {
      fail(e && e.detail ? e : networkError(e), error, "passkeys.register");
      return null;
    });
  }

  // Micro.passkeys.signIn(login, success[, error[, returnTo[, namespace]]]): signs this
  // browser in with a passkey: any account's the browser offers when `login` is empty,
  // that of the account named `login` (a username or e-mail), or, given {challenge_id},
  // as the second step of a sign-in that asked for one; success({user, expires,
  // redirect}), `redirect` being `returnTo` when the service allows it, else its
  // account page. `namespace` names the tenant on a service with several.
  function signInWithPasskey(login, success, error, returnTo, namespace) {
    var body = typeof login === "object" && login ? {challenge_id: login.challenge_id} :
      !login ? {} :
      (String(login).indexOf("@") >= 0 ? {email: String(login)} : {username: String(login)});
    var challenge;
    return postJson("/users/Users/StartPasskeyLogin", body, namespace).then(function (start) {
      challenge = start.challenge_id;
      return navigator.credentials.get(withBuffers(start.options.publicKey)).catch(function (e) {
        throw webauthnError(e, true);
      });
    }).then(function (credential) {
      return postJson("/ui/signin/passkey", {
        challenge_id: challenge, credential: credentialJson(credential), return_to: returnTo || ""
      }, namespace);
    }).then(function (data) {
      lastSession = data;
      call(success, data);
      return data;
    }).catch(function (e) {
      fail(e && e.detail ? e : networkError(e), error, "passkeys.signIn");
      return null;
    });
  }

  window.Micro = {
    base: base, post: post, session: session, requireLogin: requireLogin, user: user, logout: logout,
    passkeys: {register: registerPasskey, signIn: signInWithPasskey}
  };
})(window);
