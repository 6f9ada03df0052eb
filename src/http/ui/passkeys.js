/* The hosted pages' passkey buttons, over Micro.js. Without WebAuthn (or without
 * JavaScript) the buttons stay hidden and the pages work as before. */
(function () {
  "use strict";
  if (!window.PublicKeyCredential || !window.Micro || !navigator.credentials) return;
  var shown = document.querySelectorAll("[data-passkey]");
  // A tenant's pages name it (the service holds several), for the calls and the pages.
  var namespace = document.body.getAttribute("data-namespace") || "";
  function page(path) {
    return namespace ? path + (path.indexOf("?") >= 0 ? "&" : "?") + "namespace=" + encodeURIComponent(namespace) : path;
  }
  for (var i = 0; i < shown.length; i++) shown[i].hidden = false;

  function report(error) {
    var alert = document.getElementById("passkey-error");
    alert.textContent = error && error.detail ? error.detail : String(error);
    alert.hidden = false;
  }

  var signIn = document.getElementById("passkey-sign-in");
  if (signIn) {
    signIn.addEventListener("click", function () {
      var challenge = signIn.getAttribute("data-challenge");
      var login = document.getElementById("login");
      // Without a name, the browser offers the passkeys it holds for this service.
      var who = challenge ? {challenge_id: challenge} : (login ? login.value.trim() : "");
      Micro.passkeys.signIn(who, function (session) {
        window.location.href = session.redirect || page("/ui/account");
      }, report, signIn.getAttribute("data-return-to") || "", namespace);
    });
  }

  var add = document.getElementById("passkey-add");
  if (add) {
    add.addEventListener("click", function () {
      var name = document.getElementById("passkey_name");
      Micro.passkeys.register(name ? name.value : "", function () {
        window.location.href = page("/ui/account?notice=passkey-added");
      }, report, namespace);
    });
  }
})();
