/**
 * Turns a request path into a low-cardinality `http_route`. The query string and fragment never
 * reach a label. {@linkcode RouteMapper} applies, in order: the user's ignored patterns (the
 * request is not reported), the user's route patterns (`/users/{id}`, `/files/*`), then the
 * heuristic of {@linkcode routeOf}: segments that look like identifiers (numbers, UUIDs, long hex,
 * random-looking tokens) become `{id}`, so `/users/42/orders/7f3a...` and `/users/43/orders/9b1c...`
 * share `/users/{id}/orders/{id}`. Last, a hard cap on the distinct routes the heuristic gives
 * each service (the patterns' routes are the user's choice and not capped): beyond it, new
 * routes are reported as {@linkcode OVERFLOW_ROUTE} and counted. Which routes make it under the
 * cap is first come, first served.
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

// Random-looking tokens (session ids, base64url keys, "a1b2c3d4e5"): 10+ characters of
// [A-Za-z0-9_-] with at least two digits and two letters. Words with a version in them
// ("oauth2callback", "utf8") have fewer digits and stay.
const TOKEN = /^[A-Za-z0-9_-]{10,}$/;

/** Whether a path segment is an identifier rather than part of the route. */
export function isIdSegment(segment: string): boolean {
  return DECIMAL.test(segment) || UUID.test(segment) || LONG_HEX.test(segment) ||
    isRandomLooking(segment);
}

function isRandomLooking(segment: string): boolean {
  if (!TOKEN.test(segment)) return false;
  let digits = 0, letters = 0;
  for (let i = 0; i < segment.length; i++) {
    const c = segment.charCodeAt(i);
    if (c >= 48 && c <= 57) digits++;
    else if ((c | 0x20) >= 97 && (c | 0x20) <= 122) letters++;
  }
  return digits >= 2 && letters >= 2;
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

/** The route reported for a service's new routes beyond its cap. */
export const OVERFLOW_ROUTE = "{overflow}";

/**
 * A user route pattern: `/users/{id}` (`{name}` matches one segment), `/files/*` (a trailing `*`
 * matches the rest of the path, nothing included). Matched against the path without its query.
 */
export class RoutePattern {
  readonly pattern: string;
  readonly #re: RegExp;

  constructor(pattern: string) {
    if (!pattern.startsWith("/")) throw new RangeError(`a route pattern starts with "/"`);
    if (pattern.includes("*") && !pattern.endsWith("/*") && pattern !== "*") {
      throw new RangeError(`"*" may only end a pattern, as its last segment ("/files/*")`);
    }
    this.pattern = pattern;
    const body = pattern.split("/").map((segment, i, all) => {
      if (segment === "*" && i === all.length - 1) return "(?:/.*)?";
      const one = /^\{[^{}/]+\}$/.test(segment)
        ? "[^/]+"
        : segment.replace(/[.+?^${}()|[\]\\]/g, "\\$&");
      return i === 0 ? one : `/${one}`;
    });
    // "/files/*" ends "/files" + "(?:/.*)?": it matches "/files" and anything under it.
    this.#re = new RegExp(`^${body.join("").replace("/(?:/.*)?", "(?:/.*)?")}$`);
  }

  matches(path: string): boolean {
    return this.#re.test(path);
  }
}

export interface RouteMapperOptions {
  /** Route patterns, first match wins. */
  patterns?: readonly string[];
  /** Patterns of paths not reported at all (health checks, metrics scrapes). */
  ignored?: readonly string[];
  /** Distinct routes per service; beyond it, {@linkcode OVERFLOW_ROUTE}. */
  maxPerService?: number;
  /** Memo size (paths to routes). */
  memo?: number;
}

/** What {@linkcode RouteMapper.route} decided. */
export type RouteResult = { route: string; overflow: boolean } | { ignored: true };

/**
 * Paths to routes for the exporter: ignored patterns, route patterns, the heuristic, and the
 * per-service cap (see the module documentation). Memoised per path; the memo is bounded.
 */
export class RouteMapper {
  readonly #patterns: RoutePattern[];
  readonly #ignored: RoutePattern[];
  readonly #maxPerService: number;
  /** Path -> route (null: ignored), and whether a user pattern gave it. */
  readonly #memo: Map<string, { route: string; pattern: boolean } | null> = new Map();
  readonly #memoMax: number;
  /** The routes each service has been given so far. */
  readonly #routesOf = new Map<string, Set<string>>();

  constructor(options: RouteMapperOptions = {}) {
    this.#patterns = (options.patterns ?? []).map((p) => new RoutePattern(p));
    this.#ignored = (options.ignored ?? []).map((p) => new RoutePattern(p));
    this.#maxPerService = options.maxPerService ?? Infinity;
    this.#memoMax = options.memo ?? 10_000;
  }

  /** The route of `path` for `service`, or that the request is ignored. */
  route(service: string, path: string, truncated = false): RouteResult {
    const key = truncated ? path + "\u0000" : path;
    let found = this.#memo.get(key);
    if (found === undefined) {
      found = this.#resolve(path, truncated);
      if (this.#memo.size >= this.#memoMax) this.#memo.clear();
      this.#memo.set(key, found);
    }
    if (found === null) return { ignored: true };
    // The user's patterns are a cardinality the user chose: only the heuristic's routes count.
    return found.pattern
      ? { route: found.route, overflow: false }
      : this.capped(service, found.route);
  }

  /** `route` as the cap lets `service` have it. */
  capped(service: string, route: string): { route: string; overflow: boolean } {
    let routes = this.#routesOf.get(service);
    if (!routes) this.#routesOf.set(service, routes = new Set());
    if (routes.has(route)) return { route, overflow: false };
    if (routes.size >= this.#maxPerService) return { route: OVERFLOW_ROUTE, overflow: true };
    routes.add(route);
    return { route, overflow: false };
  }

  #resolve(path: string, truncated: boolean): { route: string; pattern: boolean } | null {
    const bare = pathOnly(path);
    if (this.#ignored.some((p) => p.matches(bare))) return null;
    const pattern = truncated ? undefined : this.#patterns.find((p) => p.matches(bare));
    return pattern
      ? { route: pattern.pattern, pattern: true }
      : { route: routeOf(path, truncated), pattern: false };
  }
}

/** The path of a request-target, without query, fragment, or scheme and host. */
function pathOnly(target: string): string {
  let p = target;
  const query = p.search(/[?#]/);
  if (query >= 0) p = p.slice(0, query);
  const scheme = /^[a-z][a-z0-9+.-]*:\/\/[^/]*/i.exec(p);
  if (scheme) p = p.slice(scheme[0].length) || "/";
  return p.startsWith("/") ? p : "/" + p;
}
