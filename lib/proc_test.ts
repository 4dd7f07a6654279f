import assert from "node:assert/strict";
import {
  exeName,
  listeningSockets,
  parseEnviron,
  parseProcNetTcp,
  parseProcStat,
  parseResourceAttributes,
  serviceIdentity,
  socketInode,
  TCP_LISTEN,
} from "./proc.ts";

// Real /proc/net/tcp output (trailing spaces included): two listeners on 127.0.0.1:18081 and
// 0.0.0.0:2024, an established connection, a TIME_WAIT one (inode 0).
const PROC_NET_TCP =
  `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode                                                     
   0: 0100007F:46A1 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 56869 1 000000003da6c35e 100 0 0 10 0                     
   1: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1065 1 00000000a46fccab 100 0 0 10 0                      
   2: 0100007F:ACDD 0100007F:46A1 01 00000000:00000000 00:00000000 00000000     0        0 90464 1 00000000053f2a1d 20 4 30 10 -1                    
   3: 0100007F:ACDE 0100007F:9D0C 06 00000000:00000000 03:00000262 00000000     0        0 0 3 00000000053f2a1d                                      
`;

// /proc/net/tcp6: [::]:8080 listening, [::1]:9400 listening, an established v4-mapped
// connection to 127.0.0.1:8080.
const PROC_NET_TCP6 =
  `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 23456 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:24B8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   101        0 23457 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:D3B2 01 00000000:00000000 00:00000000 00000000     0        0 34567 1 0000000000000000 20 4 29 10 -1
`;

Deno.test("parseProcNetTcp() reads IPv4 entries: address, port, state and inode", () => {
  assert.deepEqual(parseProcNetTcp(PROC_NET_TCP), [
    { localAddress: "0100007F", localPort: 18081, state: TCP_LISTEN, inode: 56869 },
    { localAddress: "00000000", localPort: 2024, state: TCP_LISTEN, inode: 1065 },
    { localAddress: "0100007F", localPort: 44253, state: 0x01, inode: 90464 },
    { localAddress: "0100007F", localPort: 44254, state: 0x06, inode: 0 },
  ]);
});

Deno.test("parseProcNetTcp() reads IPv6 entries with 32-digit addresses", () => {
  assert.deepEqual(parseProcNetTcp(PROC_NET_TCP6), [
    {
      localAddress: "00000000000000000000000000000000",
      localPort: 8080,
      state: TCP_LISTEN,
      inode: 23456,
    },
    {
      localAddress: "00000000000000000000000001000000",
      localPort: 9400,
      state: TCP_LISTEN,
      inode: 23457,
    },
    {
      localAddress: "0000000000000000FFFF00000100007F",
      localPort: 8080,
      state: 0x01,
      inode: 34567,
    },
  ]);
});

Deno.test("parseProcNetTcp() skips the header, blank and malformed lines", () => {
  const text = [
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
    "",
    "   0: 0100007F:46A1 00000000:0000 0A", // truncated
    "   1: 0100007F 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 111 1", // no port
    "   2: 0100007F:ZZZZ 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 222 1", // port
    "   3: 0100007F:0050 00000000:0000 QQ 00000000:00000000 00:00000000 00000000 0 0 333 1", // st
    "   4: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 x44 1", // inode
    "   5: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 555 1",
    "garbage",
  ].join("\n");
  assert.deepEqual(parseProcNetTcp(text), [
    { localAddress: "0100007F", localPort: 80, state: TCP_LISTEN, inode: 555 },
  ]);
  assert.deepEqual(parseProcNetTcp(""), []);
  assert.deepEqual(parseProcNetTcp(PROC_NET_TCP.split("\n")[0]), [], "header only");
});

Deno.test("listeningSockets() maps the inode of every LISTEN socket to its port", () => {
  assert.deepEqual(listeningSockets(PROC_NET_TCP), new Map([[56869, 18081], [1065, 2024]]));
  assert.deepEqual(listeningSockets(PROC_NET_TCP6), new Map([[23456, 8080], [23457, 9400]]));
});

Deno.test("listeningSockets() ignores listeners with inode 0", () => {
  const text = PROC_NET_TCP.split("\n")[0] + "\n" +
    "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 0 1\n";
  assert.equal(listeningSockets(text).size, 0);
});

// A real /proc/<pid>/stat line (the trailing newline included).
const STAT =
  "16197 (cat) R 16193 16193 14316 0 -1 4194304 101 0 0 0 0 0 0 0 20 0 1 0 362447 3133440 412 18446744073709551615 93869626314752 93869626334633 140721233958592 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 93869626350640 93869626352256 93869953282048 140721233963744 140721233963764 140721233963764 140721233965035 0\n";

Deno.test("parseProcStat() reads pid, comm, state, ppid and start time", () => {
  assert.deepEqual(parseProcStat(STAT), {
    pid: 16197,
    comm: "cat",
    state: "R",
    ppid: 16193,
    startTime: 362447,
  });
});

Deno.test("parseProcStat() handles a command name with spaces and parentheses", () => {
  for (const comm of ["tmux: server", "a) S 1 2 3 (b", "))", "(sd-pam)", "x ) 7 ("]) {
    const stat = parseProcStat(STAT.replace("(cat)", `(${comm})`));
    assert.deepEqual(
      stat,
      { pid: 16197, comm, state: "R", ppid: 16193, startTime: 362447 },
      comm,
    );
  }
});

Deno.test("parseProcStat() handles an empty command name and a zombie", () => {
  const stat = parseProcStat(STAT.replace("(cat) R", "() Z"));
  assert.equal(stat?.comm, "");
  assert.equal(stat?.state, "Z");
});

Deno.test("parseProcStat() rejects what is not a stat line", () => {
  for (
    const bad of ["", "16197", "16197 cat R 1", "16197 (cat) R", "x (cat) R 1 " + "0 ".repeat(30)]
  ) {
    assert.equal(parseProcStat(bad), undefined, JSON.stringify(bad));
  }
  assert.equal(parseProcStat(STAT.split(" ").slice(0, 15).join(" ")), undefined, "truncated");
});

Deno.test("socketInode() reads socket links only", () => {
  assert.equal(socketInode("socket:[56869]"), 56869);
  assert.equal(socketInode("socket:[0]"), 0);
  for (const other of ["pipe:[90464]", "/dev/null", "anon_inode:[eventfd]", "socket:[]", ""]) {
    assert.equal(socketInode(other), undefined, other);
  }
  assert.equal(socketInode("socket:[12] "), undefined);
});

Deno.test("parseEnviron() splits NUL-separated KEY=value entries", () => {
  const env = parseEnviron("PATH=/usr/bin:/bin\0EMPTY=\0EQ=a=b=c\0=novalue\0NOEQUALS\0LAST=1\0");
  assert.deepEqual(
    env,
    new Map([["PATH", "/usr/bin:/bin"], ["EMPTY", ""], ["EQ", "a=b=c"], ["LAST", "1"]]),
  );
  assert.equal(parseEnviron("").size, 0);
});

Deno.test("parseEnviron() keeps the last of duplicate keys", () => {
  assert.equal(parseEnviron("A=1\0A=2\0").get("A"), "2");
});

Deno.test("parseResourceAttributes() splits pairs and trims around them", () => {
  assert.deepEqual(
    parseResourceAttributes(
      " service.name = api , service.namespace=shop,deployment.environment=prod",
    ),
    new Map([
      ["service.name", "api"],
      ["service.namespace", "shop"],
      ["deployment.environment", "prod"],
    ]),
  );
  assert.equal(parseResourceAttributes("").size, 0);
});

Deno.test("parseResourceAttributes() percent-decodes values", () => {
  const attrs = parseResourceAttributes(
    "service.name=my%20api,team=a%2Cb,eq=x%3Dy,utf8=caf%C3%A9,plus=a+b",
  );
  assert.equal(attrs.get("service.name"), "my api");
  assert.equal(attrs.get("team"), "a,b", "an encoded comma does not split the list");
  assert.equal(attrs.get("eq"), "x=y");
  assert.equal(attrs.get("utf8"), "café");
  assert.equal(attrs.get("plus"), "a+b", "'+' is not a space in percent-encoding");
});

Deno.test("parseResourceAttributes() keeps a badly encoded value as it is", () => {
  assert.equal(parseResourceAttributes("service.name=100%").get("service.name"), "100%");
  assert.equal(parseResourceAttributes("a=%zz").get("a"), "%zz");
});

Deno.test("parseResourceAttributes() skips pairs with no key or no '='", () => {
  assert.deepEqual(
    parseResourceAttributes("=v,novalue,,k=v, =x"),
    new Map([["k", "v"]]),
  );
  assert.equal(parseResourceAttributes("k=a=b").get("k"), "a=b");
});

Deno.test("exeName() is the file name of the executable, without ' (deleted)'", () => {
  assert.equal(exeName("/usr/sbin/nginx"), "nginx");
  assert.equal(exeName("/usr/sbin/nginx (deleted)"), "nginx");
  assert.equal(exeName("/opt/my app/bin/my server"), "my server");
  assert.equal(exeName("/usr/bin/python3.11"), "python3.11");
  assert.equal(exeName("node"), "node");
  assert.equal(exeName("/usr/bin/x (deleted) (deleted)"), "x (deleted)", "only the suffix");
});

Deno.test("serviceIdentity() prefers OTEL_SERVICE_NAME over everything", () => {
  const env = new Map([
    ["OTEL_SERVICE_NAME", "checkout"],
    ["OTEL_RESOURCE_ATTRIBUTES", "service.name=ignored,service.namespace=shop"],
  ]);
  assert.deepEqual(serviceIdentity(env, "/usr/bin/python3", "default-ns"), {
    name: "checkout",
    namespace: "shop",
  });
});

Deno.test("serviceIdentity() uses service.name from OTEL_RESOURCE_ATTRIBUTES next", () => {
  const env = new Map([["OTEL_RESOURCE_ATTRIBUTES", "service.name=cart%20api"]]);
  assert.deepEqual(serviceIdentity(env, "/usr/bin/node"), { name: "cart api", namespace: "" });
});

Deno.test("serviceIdentity() falls back to the executable's name", () => {
  assert.deepEqual(serviceIdentity(new Map(), "/usr/sbin/nginx (deleted)", "web"), {
    name: "nginx",
    namespace: "web",
  });
});

Deno.test("serviceIdentity() ignores an empty or blank OTEL_SERVICE_NAME and service.name", () => {
  assert.equal(
    serviceIdentity(new Map([["OTEL_SERVICE_NAME", "  "]]), "/usr/bin/java").name,
    "java",
  );
  assert.equal(
    serviceIdentity(
      new Map([["OTEL_SERVICE_NAME", ""], ["OTEL_RESOURCE_ATTRIBUTES", "service.name="]]),
      "/usr/bin/java",
    ).name,
    "java",
  );
  assert.equal(
    serviceIdentity(new Map([["OTEL_SERVICE_NAME", " api "]]), "/usr/bin/java").name,
    "api",
    "trimmed",
  );
});

Deno.test("serviceIdentity() takes the namespace from service.namespace, else the default", () => {
  const withNs = new Map([["OTEL_RESOURCE_ATTRIBUTES", "service.namespace=shop"]]);
  assert.equal(serviceIdentity(withNs, "/x", "fallback").namespace, "shop");
  assert.equal(serviceIdentity(new Map(), "/x", "fallback").namespace, "fallback");
  assert.equal(serviceIdentity(new Map(), "/x").namespace, "");
});
