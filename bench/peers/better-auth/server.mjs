// better-auth as a peer in the users-service benchmark (bench/bench.py; BENCHMARKS.md,
// "Peers"): e-mail and password sign-up and sign-in, database-backed sessions, on one
// SQLite file (WAL, synchronous=FULL), served by node:http through better-auth's own
// Node handler, on 127.0.0.1 only.
//
//   node server.mjs PORT DATABASE_FILE
//
// The tables are created at start by better-auth's migration runner. GET /health answers
// 200 once the server listens.
import http from "node:http";
import Database from "better-sqlite3";
import { betterAuth } from "better-auth";
import { toNodeHandler } from "better-auth/node";
import { getMigrations } from "better-auth/db/migration";

const [port, file] = process.argv.slice(2);
if (!port || !file) {
  console.error("usage: node server.mjs PORT DATABASE_FILE");
  process.exit(2);
}

const database = new Database(file);
database.pragma("journal_mode = WAL");
database.pragma("synchronous = FULL");

const baseURL = `http://127.0.0.1:${port}`;
const options = {
  baseURL,
  secret: process.env.BETTER_AUTH_SECRET,
  database,
  // Sign-up only creates the user (no session), like users-service's Create.
  emailAndPassword: { enabled: true, autoSignIn: false },
  // Every session check reads the database (no signed cookie cache).
  session: { cookieCache: { enabled: false } },
  // All the load comes from 127.0.0.1: no throttling, as for users-service.
  rateLimit: { enabled: false },
  telemetry: { enabled: false },
  trustedOrigins: [baseURL],
};

const { runMigrations } = await getMigrations(options);
await runMigrations();

const auth = betterAuth(options);
const handler = toNodeHandler(auth);

const server = http.createServer((req, res) => {
  if (req.url === "/health") {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("ok");
    return;
  }
  handler(req, res);
});
server.keepAliveTimeout = 60_000;
server.listen(Number(port), "127.0.0.1");

const stop = () => server.close(() => { database.close(); process.exit(0); });
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
