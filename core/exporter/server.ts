/**
 * The Prometheus endpoint: `GET /metrics` (text exposition), `GET /healthz`, and a short index
 * at `/`. Before each scrape the agent drains the ring buffers, so a scrape sees every request
 * completed before it.
 *
 * @module
 */
import type { RedExporter } from "./exporter.ts";

export interface MetricsServerOptions {
  hostname: string;
  port: number;
  /** Runs before each scrape (drains the plugins' ring buffers). */
  beforeScrape?: () => void;
  onListen?: (addr: Deno.NetAddr) => void;
}

export function serveMetrics(
  exporter: RedExporter,
  options: MetricsServerOptions,
): Deno.HttpServer<Deno.NetAddr> {
  return Deno.serve({
    hostname: options.hostname,
    port: options.port,
    onListen: options.onListen ?? (() => {}),
  }, async (req) => {
    const { pathname } = new URL(req.url);
    if (req.method !== "GET" && req.method !== "HEAD") {
      return new Response("method not allowed\n", { status: 405, headers: { allow: "GET, HEAD" } });
    }
    if (pathname === "/metrics") {
      options.beforeScrape?.();
      return new Response(await exporter.metrics(), {
        headers: { "content-type": exporter.registry.contentType },
      });
    }
    if (pathname === "/healthz") return new Response("ok\n");
    if (pathname === "/") {
      return new Response(
        "redprobe: RED metrics for the services on this host\n\n/metrics  Prometheus metrics\n/healthz  liveness\n",
      );
    }
    return new Response("not found\n", { status: 404 });
  });
}
