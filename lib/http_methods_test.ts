import assert from "node:assert/strict";
import { httpMethodLabel, KNOWN_HTTP_METHODS } from "./http_methods.ts";

Deno.test("httpMethodLabel() keeps the standard methods and folds everything else into _OTHER", () => {
  for (const m of KNOWN_HTTP_METHODS) assert.equal(httpMethodLabel(m), m);
  for (const m of ["get", "PROPFIND", "", "GET ", "\u0000"]) {
    assert.equal(httpMethodLabel(m), "_OTHER");
  }
});
