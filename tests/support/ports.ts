/** Asks the kernel for a currently unused loopback TCP port. */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    return (listener.addr as Deno.NetAddr).port;
  } finally {
    // Closing frees the port for the caller; another process could grab it in between, which is
    // why the server starters retry on "address in use".
    listener.close();
  }
}
