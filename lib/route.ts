/**
 * Turns a request path into a low-cardinality `http_route`: the query string is dropped and
 * segments that look like identifiers become `{id}`, so `/users/42/orders/7f3a...` and
 * `/users/43/orders/9b1c...` share `/users/{id}/orders/{id}`. A fuller route story (framework
 * routes, user patterns) comes later; this is the safe default.
 *
 * @module
 */

/** What replaces an ID-like segment. */
export const ID_PLACEHOLDER = "{id}";
/** What stands for the lost tail of a path the probe truncated. */
export const TRUNCATED_SUFFIX = "*";

const DECIMAL = /^[0-9]+$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
// Long hex strings (hashes, object ids): at least 12 hex digits, at least one of them a digit,
// so ordinary words such as "deadbeefcafe" in a path of words are rare false positives.
const LONG_HEX = /^(?=.*[0-9])[0-9a-f]{12,}$/i;

/** Whether a path segment is an identifier rather than part of the route. */
export function isIdSegment(segment: string): boolean {
  return DECIMAL.test(segment) || UUID.test(segment) || LONG_HEX.test(segment);
}

/**
 * The route of `path` (a request-target as sent: origin-form `/a/b?x`, absolute-form
 * `http://host/a`, or `*`). `truncated` says the probe kept only the start of a longer path: its
 * last, partial segment is replaced by `*`.
 */
export function routeOf(path: string, truncated = false): string {
  let p = path;
  const query = p.search(/[?#]/);
  if (query >= 0) {
    p = p.slice(0, query);
    truncated = false; // the cut happened after the path ended
  }
  if (p === "*") return "*";
  const scheme = /^[a-z][a-z0-9+.-]*:\/\/[^/]*/i.exec(p);
  if (scheme) p = p.slice(scheme[0].length) || "/";
  if (!p.startsWith("/")) p = "/" + p;
  const segments = p.split("/");
  if (truncated) segments[segments.length - 1] = TRUNCATED_SUFFIX;
  for (let i = 1; i < segments.length; i++) {
    if (isIdSegment(segments[i])) segments[i] = ID_PLACEHOLDER;
  }
  return segments.join("/");
}

/**
 * {@linkcode routeOf} with a bounded memo: the hot path sees the same few paths again and again.
 * When full, the memo is simply cleared (cheaper than LRU bookkeeping per event).
 */
export class RouteCache {
  readonly #max: number;
  readonly #routes = new Map<string, string>();

  constructor(max = 10_000) {
    this.#max = max;
  }

  route(path: string, truncated = false): string {
    const key = truncated ? path + "\u0000" : path;
    let route = this.#routes.get(key);
    if (route === undefined) {
      route = routeOf(path, truncated);
      if (this.#routes.size >= this.#max) this.#routes.clear();
      this.#routes.set(key, route);
    }
    return route;
  }
}
