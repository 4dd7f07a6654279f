import assert from "node:assert/strict";
import { seededRandom } from "../tests/support/clients.ts";
import {
  isIdSegment,
  OVERFLOW_ROUTE,
  RouteCache,
  RouteMapper,
  routeOf,
  RoutePattern,
} from "./route.ts";

Deno.test("routeOf() drops the query string", () => {
  assert.equal(routeOf("/search?q=1&page=2"), "/search");
  assert.equal(routeOf("/a#frag"), "/a");
});

Deno.test("routeOf() replaces numbers, UUIDs and long hex with {id}", () => {
  assert.equal(routeOf("/users/42"), "/users/{id}");
  assert.equal(routeOf("/users/42/orders/7"), "/users/{id}/orders/{id}");
  assert.equal(routeOf("/o/123e4567-e89b-12d3-a456-426614174000"), "/o/{id}");
  assert.equal(routeOf("/blob/9f86d081884c7d659a2feaa0c55ad015"), "/blob/{id}");
});

Deno.test("routeOf() keeps words, short hex and mixed segments", () => {
  assert.equal(routeOf("/api/v1/items"), "/api/v1/items");
  assert.equal(routeOf("/static/app.js"), "/static/app.js");
  assert.equal(routeOf("/cafe/beef"), "/cafe/beef");
  assert.equal(routeOf("/"), "/");
  assert.equal(routeOf("/a/"), "/a/");
});

Deno.test("routeOf() handles absolute-form and asterisk targets", () => {
  assert.equal(routeOf("http://example.com/users/5?x"), "/users/{id}");
  assert.equal(routeOf("http://example.com"), "/");
  assert.equal(routeOf("*"), "*");
  assert.equal(routeOf(""), "/");
});

Deno.test("routeOf() replaces the partial last segment of a truncated path", () => {
  assert.equal(routeOf("/files/some-very-long-na", true), "/files/*");
  assert.equal(routeOf("/files/1234", true), "/files/*");
  // A query cut means the path itself was complete.
  assert.equal(routeOf("/files/a?x=aaaa", true), "/files/a");
});

Deno.test("isIdSegment() recognises identifiers only", () => {
  for (const id of ["0", "123456", "123E4567-E89B-12D3-A456-426614174000", "abcdef012345"]) {
    assert.ok(isIdSegment(id), id);
  }
  for (const word of ["", "users", "v1", "abc123", "deadbeefcafebabe"]) {
    assert.ok(!isIdSegment(word), word);
  }
});

Deno.test("RouteCache gives the same answers as routeOf() and stays bounded", () => {
  const cache = new RouteCache(2);
  for (const p of ["/a/1", "/b/2", "/c/3", "/a/1"]) assert.equal(cache.route(p), routeOf(p));
  assert.equal(cache.route("/x/longsegment", true), "/x/*");
  assert.equal(cache.route("/x/longsegment"), "/x/longsegment");
});

Deno.test("isIdSegment() takes random-looking tokens, not words with a version in them", () => {
  for (const id of ["a1b2c3d4e5", "AbC9xYz8Qw", "u_8f3K2pQz-9"]) assert.ok(isIdSegment(id), id);
  for (const word of ["oauth2callback", "utf8", "v2", "page10", "checkout", "abcdefghijk"]) {
    assert.ok(!isIdSegment(word), word);
  }
});

Deno.test("RoutePattern: {name} is one segment, a trailing /* the rest of the path", () => {
  const users = new RoutePattern("/users/{id}");
  assert.ok(users.matches("/users/alice"));
  assert.ok(!users.matches("/users/alice/orders"));
  assert.ok(!users.matches("/users/"));
  const files = new RoutePattern("/files/*");
  for (const p of ["/files", "/files/a", "/files/a/b/c"]) assert.ok(files.matches(p), p);
  assert.ok(!files.matches("/filesystem"));
  assert.ok(!new RoutePattern("/a.b").matches("/aXb"), "literal characters are literal");
  assert.throws(() => new RoutePattern("users"), /starts with/);
  assert.throws(() => new RoutePattern("/a/*/b"), /only end/);
});

Deno.test("RouteMapper: ignored first, then patterns, then the heuristic; never the query", () => {
  const m = new RouteMapper({ patterns: ["/users/{id}", "/files/*"], ignored: ["/healthz"] });
  assert.deepEqual(m.route("s", "/healthz?probe=1"), { ignored: true });
  assert.deepEqual(m.route("s", "/users/alice?tab=2#top"), {
    route: "/users/{id}",
    overflow: false,
  });
  assert.deepEqual(m.route("s", "/files/a/b.txt"), { route: "/files/*", overflow: false });
  assert.deepEqual(m.route("s", "/orders/123?x"), { route: "/orders/{id}", overflow: false });
  // A truncated path is not matched against patterns: its end is unknown.
  assert.deepEqual(m.route("s", "/users/ali", true), { route: "/users/*", overflow: false });
});

Deno.test("RouteMapper caps each service's routes and reports the rest as {overflow}", () => {
  const m = new RouteMapper({ maxPerService: 2 });
  assert.deepEqual(m.route("a", "/x"), { route: "/x", overflow: false });
  assert.deepEqual(m.route("a", "/y"), { route: "/y", overflow: false });
  assert.deepEqual(m.route("a", "/z"), { route: OVERFLOW_ROUTE, overflow: true });
  assert.deepEqual(m.route("a", "/x"), { route: "/x", overflow: false }, "known routes stay");
  assert.deepEqual(m.route("b", "/z"), { route: "/z", overflow: false }, "per service");
  assert.deepEqual(m.capped("a", "/w"), { route: OVERFLOW_ROUTE, overflow: true });
  const withPatterns = new RouteMapper({ maxPerService: 1, patterns: ["/p/{x}", "/q/{x}"] });
  assert.deepEqual(withPatterns.route("a", "/z"), { route: "/z", overflow: false });
  assert.deepEqual(withPatterns.route("a", "/p/1"), { route: "/p/{x}", overflow: false });
  assert.deepEqual(withPatterns.route("a", "/q/1"), { route: "/q/{x}", overflow: false });
});

Deno.test("100,000 distinct random URLs stay within the cap of routes", () => {
  const m = new RouteMapper({ maxPerService: 100, memo: 1000 });
  const routes = new Set<string>();
  let overflow = 0;
  const random = seededRandom(42);
  const word = (n: number) =>
    Array.from({ length: n }, () => String.fromCharCode(97 + Math.floor(random() * 26))).join("");
  for (let i = 0; i < 100_000; i++) {
    const path = `/${word(5)}/${Math.floor(random() * 1e9)}/${word(3)}?q=${word(8)}#${word(2)}`;
    const r = m.route("svc", path);
    assert.ok(!("ignored" in r));
    routes.add(r.route);
    if (r.overflow) overflow++;
    assert.ok(!r.route.includes("?") && !r.route.includes("#"), r.route);
  }
  assert.equal(routes.size, 101); // 100 routes and {overflow}
  assert.ok(routes.has(OVERFLOW_ROUTE));
  assert.ok(overflow > 99_000, `${overflow}`);
});
