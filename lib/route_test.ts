import assert from "node:assert/strict";
import { isIdSegment, RouteCache, routeOf } from "./route.ts";

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
