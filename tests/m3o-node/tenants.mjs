// M3O's npm SDK against a users-service with tenants (`--tenancy namespace`): each app
// holds its tenant's own admin key, and the key alone selects the tenant (the SDK sends
// no namespace). Two apps, two tenants, one username: two accounts that never meet.
//
//   USERS_BASE_URL=http://127.0.0.1:8080 USERS_ACME_KEY=... USERS_GLOBEX_KEY=... \
//     node --test tests/m3o-node/tenants.mjs
//
// The server must hold the tenants acme and globex, with these keys in its
// --tenant-keys-file; .ci/m3o-node.sh starts one on a fresh database and runs this file.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { UserService } from 'm3o/user/index.js';

const baseUrl = (process.env.USERS_BASE_URL || '').replace(/\/+$/, '');
const acmeKey = process.env.USERS_ACME_KEY;
const globexKey = process.env.USERS_GLOBEX_KEY;
if (!baseUrl || !acmeKey || !globexKey) {
  throw new Error('USERS_BASE_URL, USERS_ACME_KEY and USERS_GLOBEX_KEY must name a running users-service with tenants and two tenant keys');
}

function service(token) {
  const svc = new UserService(token);
  svc.client.options.address = baseUrl + '/';
  return svc;
}

// The SDK rejects with the parsed error body on an error status.
async function errorCode(promise) {
  try {
    const answer = await promise;
    assert.fail(`expected an error, got ${JSON.stringify(answer)}`);
  } catch (err) {
    if (err instanceof Error) throw err;
    return err.code;
  }
}

test('a tenant key reaches its own tenant only', async () => {
  const acme = service(acmeKey);
  const globex = service(globexKey);
  const username = `m3o_${randomBytes(5).toString('hex')}`;
  const email = `${username}@example.com`;
  const { account: a } = await acme.create({ username, email, password: 'acme password 1' });
  const { account: g } = await globex.create({ username, email, password: 'globex password 2' });
  assert.notEqual(a.id, g.id, 'the same username in two tenants is two accounts');

  // Each tenant checks its own password, and knows its own sessions only.
  assert.equal(await errorCode(globex.login({ username, password: 'acme password 1' })), 401);
  const { session } = await acme.login({ username, password: 'acme password 1' });
  assert.equal((await acme.readSession({ session_id: session.id })).session.userId, a.id);
  assert.equal(await errorCode(globex.readSession({ session_id: session.id })), 401);

  // An account of one tenant does not exist in the other.
  assert.equal((await acme.read({ id: a.id })).account.username, username);
  assert.equal(await errorCode(globex.read({ id: a.id })), 404);
  const { users } = await globex.list({ limit: 1000 });
  assert.ok(users.some((u) => u.id === g.id) && !users.some((u) => u.id === a.id));
});
