/**
 * Debian's Prometheus server (a stripped Go 1.19 program) scraping one target every second, on
 * 127.0.0.1 with a throw-away data folder: a real net/http server and client for the tests.
 *
 * @module
 */
import { ManagedProcess } from "./managed_process.ts";
import { freePort } from "./ports.ts";

export interface PrometheusHandle extends AsyncDisposable {
  pid: number;
  /** http://127.0.0.1:PORT (its API and UI). */
  api: string;
  stderr(): string;
  stop(): Promise<void>;
}

export async function startPrometheus(
  scrape: { target: string; metricsPath: string; job?: string },
): Promise<PrometheusHandle> {
  const dir = await Deno.makeTempDir({ prefix: "redprobe-prometheus-" });
  const port = freePort();
  await Deno.writeTextFile(
    `${dir}/prometheus.yml`,
    [
      "global: { scrape_interval: 1s, scrape_timeout: 900ms }",
      "scrape_configs:",
      `  - job_name: ${scrape.job ?? "fixture"}`,
      `    metrics_path: ${scrape.metricsPath}`,
      `    static_configs: [{ targets: ["${scrape.target}"] }]`,
    ].join("\n"),
  );
  const process = new ManagedProcess("/usr/bin/prometheus", [
    `--config.file=${dir}/prometheus.yml`,
    `--storage.tsdb.path=${dir}/data`,
    `--web.listen-address=127.0.0.1:${port}`,
  ]);
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await process.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  return {
    pid: process.pid,
    api: `http://127.0.0.1:${port}`,
    stderr: () => process.stderr,
    stop,
    [Symbol.asyncDispose]: stop,
  };
}
