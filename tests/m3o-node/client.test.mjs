// The M3O User API surface of users-service (`POST /v1/user/<Method>`), driven through
// M3O's own npm SDKs (`m3o` and `@m3o/m3o-node`) exactly as an application uses them.
// The only change from an app written for the hosted platform is the base address, so
// whatever these tests accept is what such an app sees.
//
//   USERS_BASE_URL=http://127.0.0.1:8080 USERS_API_KEY=... node --test tests/m3o-node/
//
// USERS_BASE_URL is a running server; USERS_API_KEY is its admin key (the server must be
// started with one, since the tests check that the key is needed). The List test counts
// and pages through every account, so the server should be this run's alone, with fewer
// than 1000 accounts and default settings (sign-up open, login limits at 5 or more). .ci/m3o-node.sh starts
// a server on a fresh database and runs this file against it.
//
// The tests run in order and share the accounts they create; every account gets a fresh
// random username and address, so a run never depends on what the database held before.

import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { UserService } from 'm3o/user/index.js';

const rawBaseUrl = process.env.USERS_BASE_URL;
const apiKey = process.env.USERS_API_KEY;
// Without a server these tests would talk to nothing (or, worse, to the SDK's default
// address, the hosted platform), so refuse to run rather than pass or skip quietly.
if (!rawBaseUrl) {
  throw new Error('USERS_BASE_URL is not set: it must name a running users-service, like http://127.0.0.1:8080');
}
if (!apiKey) {
  throw new Error('USERS_API_KEY is not set: it must be the admin key the server was started with');
}
const baseUrl = rawBaseUrl.replace(/\/+$/, '');

// An app constructs the service with its token and nothing else; pointing it at this
// server is a change of the base address alone (the client appends `v1/user/<Method>`).
function service(token) {
  const svc = new UserService(token);
  svc.client.options.address = baseUrl + '/';
  return svc;
}

// The application's backend, holding the admin key.
const admin = service(apiKey);
// An end user's app (a browser or mobile client) has no key at all: an empty token
// makes the client send no Authorization header.
const anonymous = service('');
// A caller with a key that is not the server's.
const wrongKey = service('not-the-admin-key-' + hex(8));

function hex(bytes) {
  return randomBytes(bytes).toString('hex');
}

const run = hex(5);
let serial = 0;
function freshIdentity() {
  serial += 1;
  const tag = `${run}${serial}`;
  return {
    username: `m3o_${tag}`,
    // Mixed case on purpose: addresses are stored lowercased.
    email: `M3O.${tag}@Example.COM`,
    password: `kite-${hex(6)}-Orbit`,
  };
}

const INT64 = /^(0|[1-9][0-9]*)$/;
const ACCOUNT_KEYS = ['created', 'email', 'id', 'profile', 'updated', 'username', 'verification_date', 'verified'];
const SESSION_KEYS = ['created', 'expires', 'id', 'userId'];

function assertInt64String(value, what) {
  assert.equal(typeof value, 'string', `${what} must be a decimal string, got ${JSON.stringify(value)}`);
  assert.match(value, INT64, `${what} must be a decimal string, got ${JSON.stringify(value)}`);
}

// Timestamps are Unix seconds; the server runs on the same clock as this test.
function assertRecentSeconds(value, what) {
  assertInt64String(value, what);
  const now = BigInt(Math.floor(Date.now() / 1000));
  const t = BigInt(value);
  assert.ok(t > now - 3600n && t < now + 3600n, `${what} ${value} is not a Unix time in seconds near now (${now})`);
}

function assertAccountShape(account, { recent = true } = {}) {
  assert.equal(typeof account, 'object', `expected an account object, got ${JSON.stringify(account)}`);
  assert.ok(account !== null, 'expected an account object, got null');
  assert.deepEqual(Object.keys(account).sort(), ACCOUNT_KEYS, `account fields: ${JSON.stringify(account)}`);
  assert.equal(typeof account.id, 'string');
  assert.ok(account.id.length > 0, 'account id is empty');
  // Accounts this run created must carry times from this run; others (in a list from a
  // database that was not fresh) only need the format.
  const time = recent ? assertRecentSeconds : assertInt64String;
  time(account.created, 'account.created');
  time(account.updated, 'account.updated');
  assert.ok(BigInt(account.updated) >= BigInt(account.created), `updated ${account.updated} is before created ${account.created}`);
  assert.equal(typeof account.verified, 'boolean');
  assertInt64String(account.verification_date, 'account.verification_date');
  assert.equal(typeof account.profile, 'object');
  assert.ok(account.profile !== null && !Array.isArray(account.profile), 'profile must be a map');
}

function assertSessionShape(session, userId) {
  assert.equal(typeof session, 'object', `expected a session object, got ${JSON.stringify(session)}`);
  assert.ok(session !== null, 'expected a session object, got null');
  assert.deepEqual(Object.keys(session).sort(), SESSION_KEYS, `session fields: ${JSON.stringify(session)}`);
  // The session id is the bearer token: 256 random bits, URL-safe base64.
  assert.match(session.id, /^[A-Za-z0-9_-]{43}$/, `session id ${JSON.stringify(session.id)}`);
  assert.equal(session.userId, userId);
  assertRecentSeconds(session.created, 'session.created');
  assertInt64String(session.expires, 'session.expires');
  assert.ok(BigInt(session.expires) > BigInt(session.created), `session expires ${session.expires} is not after created ${session.created}`);
}

// The SDK rejects with the parsed error body when the server answers an error status,
// and with the transport's Error when there is no answer at all. Only the former counts.
async function expectError(promise, method, code) {
  let result;
  try {
    result = await promise;
  } catch (err) {
    if (err instanceof Error) {
      assert.fail(`user.${method}: expected an error answer with code ${code}, but the request failed: ${err.message}`);
    }
    assert.equal(typeof err, 'object', `user.${method}: error body ${JSON.stringify(err)}`);
    assert.deepEqual(Object.keys(err).sort(), ['code', 'detail', 'id', 'status'], `user.${method}: error body ${JSON.stringify(err)}`);
    assert.equal(err.id, `user.${method}`, `error body ${JSON.stringify(err)}`);
    assert.equal(err.code, code, `error body ${JSON.stringify(err)}`);
    assert.equal(typeof err.detail, 'string');
    assert.ok(err.detail.length > 0, `error body ${JSON.stringify(err)} has an empty detail`);
    assert.equal(err.status, STATUS_TEXT[code], `error body ${JSON.stringify(err)}`);
    return err;
  }
  assert.fail(`user.${method}: expected an error with code ${code}, got the answer ${JSON.stringify(result)}`);
}

const STATUS_TEXT = {
  400: 'Bad Request',
  401: 'Unauthorized',
  404: 'Not Found',
};

// Shared between the tests, in the order they run.
let main; // { identity, account }

before(async () => {
  // Make sure the address really is a users-service before any SDK call, so that a
  // wrong address fails here with a clear message.
  let res;
  try {
    res = await fetch(`${baseUrl}/health`);
  } catch (err) {
    throw new Error(`USERS_BASE_URL=${rawBaseUrl}: no server answers /health (${err.cause?.message ?? err.message})`);
  }
  assert.equal(res.status, 200, `GET ${baseUrl}/health answered ${res.status}`);
});

function requireMain() {
  assert.ok(main, 'the account from the Create test is missing (Create failed)');
  return main;
}

test('Create answers the new account', async () => {
  const identity = freshIdentity();
  const res = await admin.create({ ...identity, profile: { plan: 'free' } });
  assert.deepEqual(Object.keys(res), ['account'], `response ${JSON.stringify(res)}`);
  const account = res.account;
  assertAccountShape(account);
  assert.equal(account.username, identity.username);
  assert.equal(account.email, identity.email.toLowerCase());
  assert.notEqual(account.email, identity.email, 'the test address must have had upper case in it');
  assert.equal(account.verified, false);
  assert.equal(account.verification_date, '0');
  assert.deepEqual(account.profile, { plan: 'free' });
  main = { identity, account };
});

test('Create with a chosen id and no profile, without the admin key', async () => {
  // Sign-up is public by default: an app's own users create their accounts. Without
  // the key, a chosen id must be a UUID (as the ids the service makes are)...
  const identity = freshIdentity();
  await expectError(anonymous.create({ id: `m3o-id-${run}`, ...identity }), 'Create', 400);
  const id = randomUUID();
  const { account } = await anonymous.create({ id, ...identity });
  assertAccountShape(account);
  assert.equal(account.id, id);
  assert.equal(account.username, identity.username);
  assert.equal(account.email, identity.email.toLowerCase());
  assert.equal(account.verified, false);
  assert.equal(account.verification_date, '0');
  assert.deepEqual(account.profile, {});
  // The key holder sees the same account.
  const read = await admin.read({ id });
  assert.deepEqual(read, { account });
  // ...while the key holder may choose any id the rules allow.
  const other = freshIdentity();
  const chosen = `m3o-id-${run}`;
  const created = await admin.create({ id: chosen, ...other });
  assert.equal(created.account.id, chosen);
});

test('Read by id, by username and by email', async () => {
  const { identity, account } = requireMain();
  assert.deepEqual(await admin.read({ id: account.id }), { account });
  assert.deepEqual(await admin.read({ username: identity.username }), { account });
  assert.deepEqual(await admin.read({ email: account.email }), { account });
  await expectError(admin.read({ id: `no-such-user-${run}` }), 'Read', 404);
});

test('Update replaces the profile and changes the email', async () => {
  const { identity, account } = requireMain();
  const newEmail = `Changed.${run}@Example.ORG`;
  const res = await admin.update({ id: account.id, email: newEmail, profile: { plan: 'pro', seats: '3' } });
  assert.deepEqual(res, {});
  const { account: after } = await admin.read({ id: account.id });
  assertAccountShape(after);
  assert.equal(after.id, account.id);
  assert.equal(after.username, identity.username);
  assert.equal(after.email, newEmail.toLowerCase());
  // The whole map is replaced: the old `plan` value is gone and `seats` is new.
  assert.deepEqual(after.profile, { plan: 'pro', seats: '3' });
  assert.equal(after.created, account.created);
  assert.ok(BigInt(after.updated) >= BigInt(account.updated));
  // The new address finds the account and the old one no longer does.
  assert.deepEqual(await admin.read({ email: newEmail.toLowerCase() }), { account: after });
  await expectError(admin.read({ email: account.email }), 'Read', 404);
  main = { identity: { ...identity, email: newEmail }, account: after };
});

test('List includes the account and pages with offset and limit', async () => {
  const { account } = requireMain();
  const { users: all } = await admin.list({ limit: 1000 });
  assert.ok(Array.isArray(all), `users must be an array, got ${JSON.stringify(all)}`);
  const found = all.find((u) => u.id === account.id);
  assert.ok(found, `the account ${account.id} is not in the list`);
  assert.deepEqual(found, account);
  for (const u of all) assertAccountShape(u, { recent: false });

  // Three more accounts, so that there are pages to turn.
  const ids = [];
  for (let i = 0; i < 3; i += 1) {
    const { account: created } = await admin.create(freshIdentity());
    ids.push(created.id);
  }
  const { users: full } = await admin.list({ limit: 1000 });
  const fullIds = full.map((u) => u.id);
  assert.equal(full.length, all.length + 3, `list length ${full.length} after adding 3 to ${all.length}`);
  for (const id of ids) assert.ok(fullIds.includes(id), `new account ${id} is not in the list`);
  assert.equal(new Set(fullIds).size, fullIds.length, 'the list has duplicates');

  // Ordered by (created, id).
  const sorted = [...full].sort((a, b) => {
    const ca = BigInt(a.created);
    const cb = BigInt(b.created);
    if (ca !== cb) return ca < cb ? -1 : 1;
    return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
  });
  assert.deepEqual(fullIds, sorted.map((u) => u.id), 'the list is not ordered by (created, id)');

  // Turning pages of two gives the same sequence, one window at a time.
  const paged = [];
  for (let offset = 0; offset < full.length + 2; offset += 2) {
    const { users: page } = await admin.list({ offset, limit: 2 });
    assert.deepEqual(page.map((u) => u.id), fullIds.slice(offset, offset + 2), `page at offset ${offset}`);
    paged.push(...page.map((u) => u.id));
  }
  assert.deepEqual(paged, fullIds);

  // A single-entry window lands exactly on each new account.
  for (const id of ids) {
    const offset = fullIds.indexOf(id);
    const { users: one } = await admin.list({ offset, limit: 1 });
    assert.equal(one.length, 1);
    assert.equal(one[0].id, id);
  }

  // Without a limit a page holds at most 25.
  const { users: dflt } = await admin.list({});
  assert.deepEqual(dflt.map((u) => u.id), fullIds.slice(0, 25));

  // Past the end is an empty page, and more than 1000 at once is refused.
  const { users: past } = await admin.list({ offset: full.length, limit: 10 });
  assert.deepEqual(past, []);
  await expectError(admin.list({ limit: 1001 }), 'List', 400);
});

test('Login by username and by email opens sessions', async () => {
  const { identity, account } = requireMain();
  const byName = await anonymous.login({ username: identity.username, password: identity.password });
  assert.deepEqual(Object.keys(byName), ['session'], `response ${JSON.stringify(byName)}`);
  assertSessionShape(byName.session, account.id);
  const byEmail = await anonymous.login({ email: account.email, password: identity.password });
  assertSessionShape(byEmail.session, account.id);
  assert.notEqual(byEmail.session.id, byName.session.id, 'two logins must open two sessions');
  await expectError(anonymous.login({ username: identity.username, password: 'not-the-password-' + run }), 'Login', 401);
  main.session = byName.session;
});

test('ReadSession answers the session opened by Login', async () => {
  const { account, session } = requireMain();
  assert.ok(session, 'no session from the Login test');
  const res = await anonymous.readSession({ session_id: session.id });
  assert.deepEqual(Object.keys(res), ['session'], `response ${JSON.stringify(res)}`);
  assertSessionShape(res.session, account.id);
  assert.equal(res.session.id, session.id);
  assert.equal(res.session.userId, account.id);
  assert.equal(res.session.created, session.created);
  await expectError(anonymous.readSession({ session_id: `no-such-session-${run}` }), 'ReadSession', 401);
});

test('Logout ends one session', async () => {
  const { identity, account } = requireMain();
  const { session } = await anonymous.login({ username: identity.username, password: identity.password });
  assertSessionShape(session, account.id);
  assert.deepEqual(await anonymous.logout({ session_id: session.id }), {});
  await expectError(anonymous.readSession({ session_id: session.id }), 'ReadSession', 401);
});

test('LogoutAll ends every session of the user', async () => {
  const { identity, account, session: first } = requireMain();
  assert.ok(first, 'no session from the Login test');
  const { session: second } = await anonymous.login({ username: identity.username, password: identity.password });
  assertSessionShape(second, account.id);
  // Both are live before.
  assert.equal((await anonymous.readSession({ session_id: first.id })).session.userId, account.id);
  assert.equal((await anonymous.readSession({ session_id: second.id })).session.userId, account.id);

  assert.deepEqual(await admin.logoutAll({ user_id: account.id }), {});
  await expectError(anonymous.readSession({ session_id: first.id }), 'ReadSession', 401);
  await expectError(anonymous.readSession({ session_id: second.id }), 'ReadSession', 401);
  await expectError(admin.logoutAll({ user_id: `no-such-user-${run}` }), 'LogoutAll', 404);
  delete main.session;
});

test('UpdatePassword changes the password and ends the sessions', async () => {
  const { identity, account } = requireMain();
  const { session } = await anonymous.login({ username: identity.username, password: identity.password });
  assertSessionShape(session, account.id);
  const newPassword = `anchor-${hex(6)}-Violet`;
  const res = await anonymous.updatePassword({
    userId: account.id,
    old_password: identity.password,
    new_password: newPassword,
    confirm_password: newPassword,
  });
  assert.deepEqual(res, {});
  await expectError(anonymous.readSession({ session_id: session.id }), 'ReadSession', 401);

  const { session: fresh } = await anonymous.login({ username: identity.username, password: newPassword });
  assertSessionShape(fresh, account.id);
  await expectError(anonymous.login({ username: identity.username, password: identity.password }), 'Login', 401);
  main.identity = { ...identity, password: newPassword };
});

test('Without the admin key, List is refused and Login still works', async () => {
  const { identity, account } = requireMain();
  await expectError(wrongKey.list({ limit: 10 }), 'List', 401);
  await expectError(anonymous.list({ limit: 10 }), 'List', 401);
  await expectError(anonymous.read({ id: account.id }), 'Read', 401);
  const { session } = await anonymous.login({ email: account.email, password: identity.password });
  assertSessionShape(session, account.id);
});

test('Delete removes the account', async () => {
  const { identity, account } = requireMain();
  assert.deepEqual(await admin.delete({ id: account.id }), {});
  await expectError(admin.read({ id: account.id }), 'Read', 404);
  await expectError(admin.read({ username: identity.username }), 'Read', 404);
  await expectError(admin.delete({ id: account.id }), 'Delete', 404);
  await expectError(anonymous.login({ username: identity.username, password: identity.password }), 'Login', 401);
});
