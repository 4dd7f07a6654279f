/**
 * The route set every test server (nginx, python, node) serves identically, so one client script
 * can drive any of them. Keep in sync with python_server.py, node_server.mjs and nginx_config.ts.
 */

export const HELLO_BODY = "hello\n";
export const USER_BODY = "user\n";
export const SUBMIT_BODY = "ok\n";

/** 64 KiB with a repeating pattern, so a framing bug shows up as a content mismatch. */
export const BIG_BODY = "0123456789abcdef".repeat(4096);
