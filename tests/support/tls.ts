/**
 * Certificates for the TLS servers of the tests, made once per test process with the `openssl`
 * command line tool: a test CA, and a server certificate it signed for 127.0.0.1 and localhost
 * (clients trust the CA; rustls, Deno's TLS, refuses a self-signed certificate used directly).
 */

export interface TestCertificate {
  /** PEM server certificate (for the servers). */
  cert: string;
  /** PEM private key of the server certificate. */
  key: string;
  /** PEM CA certificate: what clients trust (curl --cacert, Python cafile, Deno caCerts). */
  ca: string;
}

let made: TestCertificate | undefined;

function openssl(args: string[]): void {
  const out = new Deno.Command("openssl", { args, stdout: "null", stderr: "piped" }).outputSync();
  if (!out.success) {
    throw new Error(`openssl ${args[0]} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
}

/** The certificates, created on first use in a temp dir that lives as long as the process. */
export function testCertificate(): TestCertificate {
  if (made) return made;
  const dir = Deno.makeTempDirSync({ prefix: "redprobe-tls-" });
  const ca = `${dir}/ca.pem`, caKey = `${dir}/ca-key.pem`;
  const cert = `${dir}/cert.pem`, key = `${dir}/key.pem`, csr = `${dir}/cert.csr`;
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  openssl([
    "req",
    "-x509",
    ...ec,
    "-days",
    "2",
    "-subj",
    "/CN=redprobe test CA",
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign",
    "-keyout",
    caKey,
    "-out",
    ca,
  ]);
  openssl(["req", "-new", ...ec, "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", csr]);
  const ext = `${dir}/ext.cnf`;
  Deno.writeTextFileSync(
    ext,
    "basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n" +
      "extendedKeyUsage=serverAuth\n",
  );
  openssl([
    "x509",
    "-req",
    "-in",
    csr,
    "-CA",
    ca,
    "-CAkey",
    caKey,
    "-CAcreateserial",
    "-days",
    "2",
    "-extfile",
    ext,
    "-out",
    cert,
  ]);
  made = { cert, key, ca };
  return made;
}
