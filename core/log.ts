/**
 * The agent's logger: leveled lines on stderr, `<time> <LEVEL> <message>`.
 *
 * @module
 */
export const LOG_LEVELS = ["error", "warn", "info", "debug"] as const;
export type LogLevel = typeof LOG_LEVELS[number];

export interface Logger {
  error(message: string): void;
  warn(message: string): void;
  info(message: string): void;
  debug(message: string): void;
  readonly level: LogLevel;
}

/** A logger that writes lines at `level` and above to `write` (stderr by default). */
export function createLogger(
  level: LogLevel = "info",
  write: (line: string) => void = (line) => console.error(line),
): Logger {
  const threshold = LOG_LEVELS.indexOf(level);
  const at = (l: LogLevel) => (message: string) => {
    if (LOG_LEVELS.indexOf(l) <= threshold) {
      write(`${new Date().toISOString()} ${l.toUpperCase().padEnd(5)} ${message}`);
    }
  };
  return { error: at("error"), warn: at("warn"), info: at("info"), debug: at("debug"), level };
}

/** A logger that drops everything (tests). */
export const silentLogger: Logger = createLogger("error", () => {});
