// A full flow through the TypeScript client generated from openapi.yaml
// (openapi-typescript for the types, openapi-fetch for the calls), on both route
// families, against a running server with an admin key:
//   node out/flow.js BASE_URL ADMIN_KEY
// .ci/clients.sh generates the types, compiles this with tsc --strict and runs it.
// Every answer is typed from the document, errors included; nothing is edited by hand.
import createClient from "openapi-fetch";
import type { components, paths } from "./generated/schema.js";

type ApiError = components["schemas"]["Error"];

const [baseUrl, key] = process.argv.slice(2);
if (!baseUrl || !key) {
  throw new Error("usage: node out/flow.js BASE_URL ADMIN_KEY");
}
const publicClient = createClient<paths>({ baseUrl });
const admin = createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${key}` } });

function check(condition: boolean, what: string): void {
  if (!condition) {
    throw new Error(`failed: ${what}`);
  }
}

/** The answer's data, which must be there (a 2xx). */
function ok<T>(answer: { data?: T; error?: unknown; response: Response }, what: string): T {
  if (answer.data === undefined) {
    throw new Error(`${what}: expected success, got ${answer.response.status} ${JSON.stringify(answer.error)}`);
  }
  return answer.data;
}

/** The answer's typed error, which must have this code. */
function failed(answer: { data?: unknown; error?: ApiError; response: Response }, code: number, what: string): ApiError {
  const error = answer.error;
  if (error === undefined || error.code !== code || answer.response.status !== code) {
    throw new Error(`${what}: expected a ${code} error, got ${answer.response.status} ${JSON.stringify(answer.data)}`);
  }
  return error;
}

const tag = Math.random().toString(16).slice(2, 10);
const password = "kite-tangerine-7";
const newPassword = "orbit-lantern-9";

async function micro(): Promise<void> {
  const username = `ts_${tag}`;
  const email = `${username}@example.com`;
  const { user } = ok(await publicClient.POST("/users/Users/Create", { body: { username, email, password } }), "Create");
  check(user.username === username && !user.verified, "Create answers the account");
  const conflict = failed(
    await publicClient.POST("/users/Users/Create", { body: { username, email: `other.${email}`, password } }),
    409,
    "Create a taken username",
  );
  check(conflict.id === "users.Create", "409 names the method");
  const wrong = failed(
    await publicClient.POST("/users/Users/Login", { body: { username, password: "not-the-password" } }),
    401,
    "Login with a wrong password",
  );
  check(wrong.detail === "username, email or password is incorrect", "401's detail");
  const { session } = ok(await publicClient.POST("/users/Users/Login", { body: { email, password } }), "Login");
  check(session.user_id === user.id, "the session is the user's");
  const read = ok(
    await publicClient.POST("/users/Users/ReadSession", { body: { session_id: session.id } }),
    "ReadSession",
  );
  check(read.session.username === username, "ReadSession answers the user");
  const byId = ok(await admin.POST("/users/Users/Read", { body: { id: user.id } }), "Read");
  check(byId.user.email === email, "Read answers the account");
  failed(await admin.POST("/users/Users/Read", { body: { id: `no-such-${tag}` } }), 404, "Read an unknown id");
  const updated = ok(
    await admin.POST("/users/Users/Update", { body: { id: user.id, email: `new.${email}` } }),
    "Update",
  );
  check(updated.user.email === `new.${email}`, "Update changes the address");
  const found = ok(await admin.POST("/users/Users/Search", { body: { username } }), "Search");
  check(found.users.length === 1 && found.users[0]?.id === user.id, "Search finds the account");
  ok(
    await publicClient.POST("/users/Users/UpdatePassword", {
      body: { user_id: user.id, old_password: password, new_password: newPassword, confirm_password: newPassword },
    }),
    "UpdatePassword",
  );
  failed(
    await publicClient.POST("/users/Users/ReadSession", { body: { session_id: session.id } }),
    401,
    "the password change ended the session",
  );
  const again = ok(
    await publicClient.POST("/users/Users/Login", { body: { username, password: newPassword } }),
    "Login with the new password",
  );
  ok(await publicClient.POST("/users/Users/Logout", { body: { session_id: again.session.id } }), "Logout");
  ok(await admin.POST("/users/Users/Delete", { body: { id: user.id } }), "Delete");
  failed(await admin.POST("/users/Users/Read", { body: { id: user.id } }), 404, "Read a deleted account");
}

async function m3o(): Promise<void> {
  const username = `ts_m3o_${tag}`;
  const email = `${username}@example.com`;
  const { account } = ok(await publicClient.POST("/v1/user/Create", { body: { username, email, password } }), "Create");
  failed(await publicClient.POST("/v1/user/Create", { body: { username, email, password } }), 409, "Create twice");
  failed(
    await publicClient.POST("/v1/user/Login", { body: { username, password: "not-the-password" } }),
    401,
    "Login with a wrong password",
  );
  const { session } = ok(await publicClient.POST("/v1/user/Login", { body: { username, password } }), "Login");
  check(session.userId === account.id, "the session is the account's");
  ok(await publicClient.POST("/v1/user/ReadSession", { body: { session_id: session.id } }), "ReadSession");
  const read = ok(await admin.POST("/v1/user/Read", { body: { id: account.id } }), "Read");
  check(read.account.username === username, "Read answers the account");
  failed(await admin.POST("/v1/user/Read", { body: { id: `no-such-${tag}` } }), 404, "Read an unknown id");
  ok(await admin.POST("/v1/user/Update", { body: { id: account.id, username: `${username}_2` } }), "Update");
  const listed = ok(await admin.POST("/v1/user/List", { body: { limit: 1000 } }), "List");
  check(listed.users.some((a) => a.id === account.id && a.username === `${username}_2`), "List shows the change");
  ok(
    await publicClient.POST("/v1/user/UpdatePassword", {
      body: { user_id: account.id, old_password: password, new_password: newPassword, confirm_password: newPassword },
    }),
    "UpdatePassword",
  );
  const again = ok(
    await publicClient.POST("/v1/user/Login", { body: { email, password: newPassword } }),
    "Login with the new password",
  );
  ok(await publicClient.POST("/v1/user/Logout", { body: { session_id: again.session.id } }), "Logout");
  ok(await admin.POST("/v1/user/Delete", { body: { id: account.id } }), "Delete");
  failed(await admin.POST("/v1/user/Read", { body: { id: account.id } }), 404, "Read a deleted account");
}

failed(await publicClient.POST("/users/Users/Read", { body: { id: "x" } }), 401, "an admin method without the key");
await micro();
await m3o();
console.log("typescript client: both route families passed");
