// A typing probe: a misspelled Login field. tsc --strict must refuse this file (see
// .ci/clients.sh), which shows that the generated types hold request bodies to the
// fields the service knows.
import createClient from "openapi-fetch";
import type { paths } from "./generated/schema.js";

const client = createClient<paths>({ baseUrl: "http://127.0.0.1:8080" });
await client.POST("/users/Users/Login", { body: { username: "asim", pasword: "kite-tangerine-7" } });
