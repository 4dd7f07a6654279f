/**
 * deploy/: the Kubernetes manifests are valid against the Kubernetes (and Prometheus Operator)
 * schemas, keep the agent's privileges minimal, carry a configuration the agent accepts, and
 * the Grafana dashboard queries only metrics and labels the agent really exports. No
 * privileges, no cluster, no network.
 */
import assert from "node:assert/strict";
import YAML from "yaml";
import { ConfigMap, Service, ServiceAccount } from "kubernetes-models/v1";
import { DaemonSet } from "kubernetes-models/apps/v1";
import { ClusterRole, ClusterRoleBinding } from "kubernetes-models/rbac.authorization.k8s.io/v1";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import { loadConfig } from "../core/config.ts";
import { RedExporter } from "../core/exporter/exporter.ts";
import { BUILTIN_PLUGINS } from "../plugins/registry.ts";

const KUBERNETES_DIR = new URL("../deploy/kubernetes/", import.meta.url);
const DASHBOARD = new URL("../deploy/grafana/redprobe-dashboard.json", import.meta.url);

// --- The manifests ---------------------------------------------------------------------------

type Json = Record<string, unknown>;

/** A model class of kubernetes-models: its apiVersion, kind and schema validation. */
interface ModelClass {
  apiVersion: string;
  kind: string;
  prototype: { validate(): void };
  new (data: never): { validate(): void };
}

const MODELS: ModelClass[] = [
  ServiceAccount,
  ConfigMap,
  Service,
  ClusterRole,
  ClusterRoleBinding,
  DaemonSet,
  ServiceMonitor,
] as unknown as ModelClass[];

interface Manifest {
  file: string;
  object: Json;
}

/** Every object of every YAML file in deploy/kubernetes but kustomization.yaml. */
function manifests(): Manifest[] {
  const out: Manifest[] = [];
  for (
    const entry of [...Deno.readDirSync(KUBERNETES_DIR)].sort((a, b) => a.name < b.name ? -1 : 1)
  ) {
    if (!entry.isFile || !/\.ya?ml$/.test(entry.name) || entry.name === "kustomization.yaml") {
      continue;
    }
    const text = Deno.readTextFileSync(new URL(entry.name, KUBERNETES_DIR));
    for (const doc of YAML.parseAllDocuments(text)) {
      assert.equal(doc.errors.length, 0, `${entry.name}: ${doc.errors[0]?.message}`);
      const object = doc.toJS();
      if (object === null) continue;
      out.push({ file: entry.name, object });
    }
  }
  return out;
}

function theOne(kind: string): Json {
  const found = manifests().filter((m) => m.object.kind === kind);
  assert.equal(found.length, 1, `expected one ${kind}, found ${found.length}`);
  return found[0].object;
}

/** `obj.a.b.c` for a path "a.b.c" (undefined where it stops). */
function at(obj: unknown, path: string): unknown {
  let node = obj;
  for (const key of path.split(".")) {
    node = node && typeof node === "object" ? (node as Json)[key] : undefined;
  }
  return node;
}

/**
 * Validates `data` with `model`'s schema and returns the fields the schema does not know.
 * The schemas are compiled validators that accept unknown fields silently, so a misspelt field
 * (`readOnlyRootFileSystem`) would pass them and be dropped by the API server: here every
 * object is wrapped in a Proxy that notes which keys the validator looks at. A key it never
 * reads in an object whose keys it never enumerates (a map such as `labels` is enumerated) is
 * unknown to the schema.
 */
function validateStrictly(model: ModelClass, data: Json): string[] {
  const reads = new Map<object, Set<string>>();
  const enumerated = new Set<object>();
  const paths = new Map<object, string>();
  const proxies = new Map<object, object>();
  const wrap = (value: unknown, path: string): unknown => {
    if (value === null || typeof value !== "object") return value;
    const cached = proxies.get(value);
    if (cached) return cached;
    reads.set(value, new Set());
    paths.set(value, path);
    const proxy = new Proxy(value, {
      get(target, key, receiver) {
        if (typeof key === "string") reads.get(target)!.add(key);
        return wrap(Reflect.get(target, key, receiver), `${path}/${String(key)}`);
      },
      has(target, key) {
        if (typeof key === "string") reads.get(target)!.add(key);
        return Reflect.has(target, key);
      },
      ownKeys(target) {
        enumerated.add(target);
        return Reflect.ownKeys(target);
      },
    });
    proxies.set(value, proxy);
    return proxy;
  };
  model.prototype.validate.call(wrap(structuredClone(data), ""));
  const unknown: string[] = [];
  for (const [object, keys] of reads) {
    if (Array.isArray(object) || enumerated.has(object)) continue;
    for (const key of Object.keys(object)) {
      if (!keys.has(key)) unknown.push(`${paths.get(object)}/${key}`);
    }
  }
  return unknown;
}

Deno.test("deploy/kubernetes: every object is valid against its Kubernetes schema, with no unknown field", () => {
  const all = manifests();
  assert.ok(all.length >= 7, `expected the 7 objects, found ${all.length}`);
  for (const { file, object } of all) {
    const model = MODELS.find((m) => m.kind === object.kind);
    assert.ok(model, `${file}: no schema for kind ${object.kind}`);
    assert.equal(object.apiVersion, model.apiVersion, `${file}: apiVersion of ${object.kind}`);
    // kubernetes-models' own API (throws a ValidationError naming the field)...
    new model(object as never).validate();
    // ...and no field the schema does not know.
    assert.deepEqual(validateStrictly(model, object), [], `${file}: fields unknown to the schema`);
    assert.equal(
      at(object, "metadata.namespace"),
      undefined,
      `${file}: namespace-less (kustomization.yaml sets it)`,
    );
  }
  const kinds = all.map((m) => m.object.kind).sort();
  for (const kind of MODELS.map((m) => m.kind)) assert.ok(kinds.includes(kind), `no ${kind}`);
});

Deno.test("deploy/kubernetes: the strict check catches a misspelt field", () => {
  const ds = structuredClone(theOne("DaemonSet"));
  const container = (at(ds, "spec.template.spec.containers") as Json[])[0];
  (container.securityContext as Json).readOnlyRootFileSystem = true;
  assert.deepEqual(validateStrictly(DaemonSet as unknown as ModelClass, ds), [
    "/spec/template/spec/containers/0/securityContext/readOnlyRootFileSystem",
  ]);
});

Deno.test("deploy/kubernetes: kustomization.yaml lists every file, and RBAC's namespace is its", () => {
  const kustomization = YAML.parse(
    Deno.readTextFileSync(new URL("kustomization.yaml", KUBERNETES_DIR)),
  );
  const files = [...new Set(manifests().map((m) => m.file))].sort();
  assert.deepEqual([...kustomization.resources].sort(), files);
  const binding = theOne("ClusterRoleBinding");
  const subjects = binding.subjects as Json[];
  assert.deepEqual(subjects, [{
    kind: "ServiceAccount",
    name: at(theOne("ServiceAccount"), "metadata.name"),
    namespace: kustomization.namespace,
  }]);
  assert.deepEqual(binding.roleRef, {
    apiGroup: "rbac.authorization.k8s.io",
    kind: "ClusterRole",
    name: at(theOne("ClusterRole"), "metadata.name"),
  });
});

Deno.test("deploy/kubernetes: RBAC grants nothing and no API token is mounted", () => {
  // The agent reads /proc and the kernel only: it never calls the Kubernetes API.
  assert.deepEqual(theOne("ClusterRole").rules ?? [], []);
  assert.ok(!manifests().some((m) => m.object.kind === "Role" || m.object.kind === "RoleBinding"));
  assert.equal(theOne("ServiceAccount").automountServiceAccountToken, false);
  const pod = at(theOne("DaemonSet"), "spec.template.spec") as Json;
  assert.equal(pod.automountServiceAccountToken, false);
  assert.equal(pod.serviceAccountName, at(theOne("ServiceAccount"), "metadata.name"));
});

Deno.test("deploy/kubernetes: the DaemonSet has hostPID, minimal capabilities and read-only mounts", () => {
  const ds = theOne("DaemonSet");
  const pod = at(ds, "spec.template.spec") as Json;
  assert.equal(pod.hostPID, true);
  assert.notEqual(pod.hostNetwork, true);
  assert.notEqual(pod.hostIPC, true);
  assert.deepEqual(pod.tolerations, [{ operator: "Exists" }], "runs on every node");
  const containers = pod.containers as Json[];
  assert.equal(containers.length, 1);
  assert.equal(pod.initContainers, undefined);
  const [container] = containers;
  const sc = container.securityContext as Json;
  assert.notEqual(sc.privileged, true);
  assert.equal(sc.allowPrivilegeEscalation, false);
  assert.equal(sc.readOnlyRootFilesystem, true);
  assert.deepEqual(at(sc, "capabilities.drop"), ["ALL"]);
  // BPF: maps, programs, BTF, bpf_timer. PERFMON: tracing programs (tp_btf, uprobes).
  // SYS_PTRACE: other processes' /proc/<pid>/exe, environ, maps, fd. DAC_READ_SEARCH: the
  // /proc/<pid>/fd and environ of processes of other users.
  assert.deepEqual(
    [...at(sc, "capabilities.add") as string[]].sort(),
    ["BPF", "DAC_READ_SEARCH", "PERFMON", "SYS_PTRACE"],
  );
  // Every hostPath volume is mounted read-only, and every mount is read-only.
  const volumes = new Map((pod.volumes as Json[]).map((v) => [v.name as string, v]));
  const mounts = container.volumeMounts as Json[];
  for (const mount of mounts) {
    assert.equal(mount.readOnly, true, `${mount.name} is mounted read-only`);
    assert.ok(volumes.has(mount.name as string), `volume ${mount.name}`);
  }
  const hostPaths = [...volumes.values()].filter((v) => v.hostPath);
  assert.deepEqual(hostPaths.map((v) => at(v, "hostPath.path")), ["/sys/kernel/btf"]);
  for (const volume of hostPaths) {
    assert.ok(mounts.some((m) => m.name === volume.name), `${volume.name} is mounted`);
  }
  // The metrics port, its probes and the memory limit.
  assert.deepEqual(container.ports, [{ name: "metrics", containerPort: 9400, protocol: "TCP" }]);
  for (const probe of ["livenessProbe", "readinessProbe"]) {
    assert.equal(at(container, `${probe}.httpGet.port`), "metrics", probe);
  }
  assert.equal(at(container, "readinessProbe.httpGet.path"), "/metrics");
  assert.ok(at(container, "resources.limits.memory"), "a memory limit");
});

Deno.test("deploy/kubernetes: the ConfigMap's configuration passes the agent's own validator", () => {
  const configMap = theOne("ConfigMap");
  const ds = theOne("DaemonSet");
  const pod = at(ds, "spec.template.spec") as Json;
  const [container] = pod.containers as Json[];
  // --config names the file the ConfigMap volume holds.
  const args = container.args as string[];
  const path = args[args.indexOf("--config") + 1];
  assert.ok(args.includes("--config") && path, "--config FILE");
  const mount = (container.volumeMounts as Json[]).find((m) => path.startsWith(`${m.mountPath}/`));
  assert.ok(mount, `a mount holds ${path}`);
  const volume = (pod.volumes as Json[]).find((v) => v.name === mount.name);
  assert.equal(at(volume, "configMap.name"), at(configMap, "metadata.name"));
  const key = path.slice(`${mount.mountPath}/`.length);
  const text = (configMap.data as Record<string, string>)[key];
  assert.ok(text, `the ConfigMap has ${key}`);

  const file = Deno.makeTempFileSync({ prefix: "redprobe-deploy-", suffix: ".yaml" });
  try {
    Deno.writeTextFileSync(file, text);
    const config = loadConfig({ file, env: {}, plugins: BUILTIN_PLUGINS });
    const port = (container.ports as Json[]).find((p) => p.name === "metrics")!;
    assert.equal(config.metrics.port, port.containerPort);
    assert.equal(config.metrics.naming, "beyla", "the dashboard's names");
  } finally {
    Deno.removeSync(file);
  }
});

Deno.test("deploy/kubernetes: the Service and ServiceMonitor select the agent's pods and port", () => {
  const ds = theOne("DaemonSet");
  const service = theOne("Service");
  const monitor = theOne("ServiceMonitor");
  const podLabels = at(ds, "spec.template.metadata.labels") as Record<string, string>;
  const matches = (selector: Record<string, string>, labels: Record<string, string>) =>
    Object.entries(selector).every(([k, v]) => labels[k] === v);
  assert.ok(matches(at(ds, "spec.selector.matchLabels") as Record<string, string>, podLabels));
  assert.ok(matches(at(service, "spec.selector") as Record<string, string>, podLabels));
  assert.ok(
    matches(
      at(monitor, "spec.selector.matchLabels") as Record<string, string>,
      at(service, "metadata.labels") as Record<string, string>,
    ),
  );
  const ports = at(service, "spec.ports") as Json[];
  assert.deepEqual(ports.map((p) => [p.name, p.port, p.targetPort]), [[
    "metrics",
    9400,
    "metrics",
  ]]);
  const endpoints = at(monitor, "spec.endpoints") as Json[];
  assert.ok(endpoints.length > 0);
  for (const e of endpoints) {
    assert.ok(ports.some((p) => p.name === e.port), `endpoint port ${e.port}`);
    assert.equal(e.path ?? "/metrics", "/metrics");
  }
});

// --- The dashboard ---------------------------------------------------------------------------

/** The series names the agent exports, each with its label names. */
async function exportedSeries(): Promise<Map<string, Set<string>>> {
  const exporter = new RedExporter();
  const series = new Map<string, Set<string>>();
  // Each registered metric: prom-client's counters and gauges, and the RED HistogramFamily's.
  type Registered = {
    name: string;
    labelNames?: readonly string[];
    get(): Promise<{ type: string }>;
  };
  for (const metric of exporter.registry.getMetricsAsArray() as unknown as Registered[]) {
    const labels = metric.labelNames ?? [];
    const { type } = await metric.get();
    if (type === "histogram") {
      series.set(`${metric.name}_bucket`, new Set([...labels, "le"]));
      series.set(`${metric.name}_sum`, new Set(labels));
      series.set(`${metric.name}_count`, new Set(labels));
    } else {
      series.set(metric.name, new Set(labels));
    }
  }
  return series;
}

/** Labels Prometheus adds to every series it scrapes from the agent (the ServiceMonitor's). */
function scrapeLabels(): Set<string> {
  const labels = new Set(["job", "instance"]);
  for (const e of at(theOne("ServiceMonitor"), "spec.endpoints") as Json[]) {
    for (const r of (e.relabelings ?? []) as Json[]) {
      if (typeof r.targetLabel === "string") labels.add(r.targetLabel);
    }
  }
  return labels;
}

/** One vector selector of a PromQL expression. */
interface VectorSelector {
  /** The metric names it can select (several for `{__name__=~"a|b"}`). */
  names: string[];
  /** The label names of its matchers (`__name__` left out). */
  labels: string[];
}

interface Analysis {
  selectors: VectorSelector[];
  /** Label names in by/without/on/ignoring/group_left/group_right clauses. */
  grouping: string[];
}

const FUNCTIONS = new Set([
  "sum",
  "min",
  "max",
  "avg",
  "count",
  "topk",
  "bottomk",
  "quantile",
  "rate",
  "irate",
  "increase",
  "delta",
  "idelta",
  "deriv",
  "histogram_quantile",
  "abs",
  "clamp_min",
  "clamp_max",
  "round",
  "sum_over_time",
  "avg_over_time",
  "max_over_time",
  "min_over_time",
  "vector",
  "scalar",
  "time",
]);
const GROUPING = new Set(["by", "without", "on", "ignoring", "group_left", "group_right"]);
const KEYWORDS = new Set(["bool", "and", "or", "unless", "offset"]);

type Token = { t: "id" | "str" | "num" | "op"; v: string };

function tokenize(expr: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < expr.length) {
    const c = expr[i];
    const rest = expr.slice(i);
    let m: RegExpExecArray | null;
    if (/\s/.test(c)) {
      i++;
    } else if (c === '"' || c === "'") {
      let j = i + 1;
      while (j < expr.length && expr[j] !== c) j += expr[j] === "\\" ? 2 : 1;
      assert.ok(j < expr.length, `unterminated string in ${expr}`);
      tokens.push({ t: "str", v: expr.slice(i + 1, j) });
      i = j + 1;
    } else if (c === "[") {
      // A range or subquery: durations and Grafana's $__rate_interval, no names.
      const j = expr.indexOf("]", i);
      assert.ok(j > i, `unterminated range in ${expr}`);
      i = j + 1;
    } else if ((m = /^[A-Za-z_:][A-Za-z0-9_:]*/.exec(rest))) {
      tokens.push({ t: "id", v: m[0] });
      i += m[0].length;
    } else if ((m = /^[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?/.exec(rest))) {
      tokens.push({ t: "num", v: m[0] });
      i += m[0].length;
    } else if ((m = /^(=~|!~|!=|==|>=|<=|[-+*/%^=<>(){},])/.exec(rest))) {
      tokens.push({ t: "op", v: m[0] });
      i += m[0].length;
    } else {
      assert.fail(`unexpected ${JSON.stringify(c)} in ${expr}`);
    }
  }
  return tokens;
}

/** The selectors and grouping labels of a PromQL expression (enough for dashboards). */
function analyze(expr: string): Analysis {
  const tokens = tokenize(expr);
  const selectors: VectorSelector[] = [];
  const grouping: string[] = [];
  let i = 0;
  const matchers = (selector: VectorSelector) => {
    i++; // {
    while (tokens[i]?.v !== "}") {
      const [label, op, value] = [tokens[i], tokens[i + 1], tokens[i + 2]];
      assert.ok(label?.t === "id" && op?.t === "op" && value?.t === "str", `matcher in ${expr}`);
      if (label.v === "__name__") {
        const names = op.v === "=~" ? value.v.split("|") : [value.v];
        assert.ok(op.v === "=" || op.v === "=~", `__name__ ${op.v} in ${expr}`);
        for (const name of names) {
          assert.match(name, /^[A-Za-z_:][A-Za-z0-9_:]*$/, `a plain metric name in ${expr}`);
        }
        selector.names.push(...names);
      } else {
        selector.labels.push(label.v);
      }
      i += 3;
      if (tokens[i]?.v === ",") i++;
    }
    i++; // }
  };
  while (i < tokens.length) {
    const token = tokens[i];
    const next = tokens[i + 1];
    if (token.t === "id" && GROUPING.has(token.v) && next?.v === "(") {
      i += 2;
      while (tokens[i]?.v !== ")") {
        if (tokens[i].t === "id") grouping.push(tokens[i].v);
        i++;
      }
      i++;
    } else if (token.t === "id" && (next?.v === "(" || FUNCTIONS.has(token.v))) {
      // A function, or an aggregation whose by/without clause comes first.
      assert.ok(FUNCTIONS.has(token.v), `unknown function ${token.v} in ${expr}`);
      i++;
    } else if (token.t === "id" && KEYWORDS.has(token.v)) {
      i++;
    } else if (token.t === "id") {
      const selector = { names: [token.v], labels: [] };
      selectors.push(selector);
      i++;
      if (tokens[i]?.v === "{") matchers(selector);
    } else if (token.v === "{") {
      const selector: VectorSelector = { names: [], labels: [] };
      selectors.push(selector);
      matchers(selector);
      assert.ok(selector.names.length > 0, `a selector without a metric name in ${expr}`);
    } else {
      i++;
    }
  }
  return { selectors, grouping };
}

interface DashboardQuery {
  where: string;
  expr: string;
  /** label_values(selector, label): the label asked for. */
  label?: string;
}

/** Every PromQL expression of the dashboard: panel targets (rows included) and variables. */
function dashboardQueries(): DashboardQuery[] {
  const dashboard = JSON.parse(Deno.readTextFileSync(DASHBOARD));
  const out: DashboardQuery[] = [];
  const visit = (panels: Json[]) => {
    for (const panel of panels) {
      for (const target of (panel.targets ?? []) as Json[]) {
        if (typeof target.expr === "string") {
          out.push({ where: `panel "${panel.title}" ${target.refId}`, expr: target.expr });
        }
      }
      visit((panel.panels ?? []) as Json[]);
    }
  };
  visit(dashboard.panels);
  for (const variable of dashboard.templating.list as Json[]) {
    if (variable.type !== "query") continue;
    const query = typeof variable.query === "string"
      ? variable.query
      : (variable.query as Json).query as string;
    const m = /^label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\)$/s.exec(query.trim());
    assert.ok(m, `variable ${variable.name}: expected label_values(selector, label)`);
    out.push({ where: `variable ${variable.name}`, expr: m[1], label: m[2] });
  }
  return out;
}

Deno.test("deploy/grafana: the dashboard is Grafana JSON with template variables", () => {
  const dashboard = JSON.parse(Deno.readTextFileSync(DASHBOARD));
  assert.ok(dashboard.schemaVersion >= 36, "schemaVersion");
  assert.ok(dashboard.uid && dashboard.title);
  const names = (dashboard.templating.list as Json[]).map((v) => v.name);
  for (const name of ["datasource", "service_namespace", "service_name"]) {
    assert.ok(names.includes(name), `variable ${name}`);
  }
  const ids = new Set<number>();
  const visit = (panels: Json[]) => {
    for (const p of panels) {
      assert.ok(!ids.has(p.id as number), `panel id ${p.id} used twice`);
      ids.add(p.id as number);
      visit((p.panels ?? []) as Json[]);
    }
  };
  visit(dashboard.panels);
});

Deno.test("deploy/grafana: every query uses metrics and labels the agent exports", async () => {
  const exported = await exportedSeries();
  const scraped = scrapeLabels();
  const queries = dashboardQueries();
  assert.ok(queries.length > 20, `${queries.length} queries`);
  const used = new Set<string>();
  for (const { where, expr, label } of queries) {
    const { selectors, grouping } = analyze(expr);
    assert.ok(selectors.length > 0, `${where}: no metric in ${expr}`);
    const metrics = selectors.flatMap((s) => s.names);
    for (const selector of selectors) {
      for (const name of selector.names) {
        assert.ok(exported.has(name), `${where}: ${name} is not a series the agent exports`);
        used.add(name);
        for (const l of selector.labels) {
          assert.ok(
            exported.get(name)!.has(l) || scraped.has(l),
            `${where}: ${name} has no label ${l}`,
          );
        }
      }
    }
    // A grouping label (and label_values' label) must be on every metric of the query.
    for (const l of [...grouping, ...(label ? [label] : [])]) {
      for (const name of metrics) {
        assert.ok(
          exported.get(name)!.has(l) || scraped.has(l),
          `${where}: grouping by ${l}, which ${name} does not have`,
        );
      }
    }
  }
  // RED for each of the four kinds (rate and errors from _count, duration from _bucket), and
  // the agent's health.
  for (
    const family of [
      "http_server_duration_seconds",
      "http_client_duration_seconds",
      "rpc_server_duration_seconds",
      "rpc_client_duration_seconds",
    ]
  ) {
    assert.ok(used.has(`${family}_count`), `${family}_count is charted`);
    assert.ok(used.has(`${family}_bucket`), `${family}_bucket is charted`);
  }
  for (
    const name of [
      "redprobe_events_lost_kernel_total",
      "redprobe_events_dropped_total",
      "redprobe_attach_failures_total",
      "redprobe_instrumented_processes",
    ]
  ) {
    assert.ok(used.has(name), `${name} is charted`);
  }
});

Deno.test("deploy/grafana: the query check rejects a name or a label the agent does not export", async () => {
  const exported = await exportedSeries();
  const bad = analyze(
    'sum by (service_name) (rate(http_server_requests_total{service_name=~"$x"}[5m]))',
  );
  assert.deepEqual(bad.selectors, [{
    names: ["http_server_requests_total"],
    labels: ["service_name"],
  }]);
  assert.ok(!exported.has("http_server_requests_total"));
  const quantile = analyze(
    'histogram_quantile(0.99, sum by (le, pod_name) (rate(rpc_server_duration_seconds_bucket{rpc_service="a"}[$__rate_interval])))',
  );
  assert.deepEqual(quantile.grouping, ["le", "pod_name"]);
  const labels = exported.get("rpc_server_duration_seconds_bucket")!;
  assert.ok(labels.has("le") && !labels.has("pod_name") && !labels.has("rpc_service"));
});
