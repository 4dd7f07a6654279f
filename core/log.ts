/**
 * The agent's logger: leveled lines on stderr, as text (`<time> <LEVEL> <message>`) or as JSON
 * (`{"time":"...","level":"info","message":"..."}`, one object a line, for log collectors).
 *
 * @module
 */
export const LOG_LEVELS = ["error", "warn", "info", "debug"] as const;
export type LogLevel = typeof LOG_LEVELS[number];
export const LOG_FORMATS = ["text", "json"] as const;
export type LogFormat = typeof LOG_FORMATS[number];

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
  format: LogFormat = "text",
): Logger {
  const threshold = LOG_LEVELS.indexOf(level);
  const at = (l: LogLevel) => (message: string) => {
    if (LOG_LEVELS.indexOf(l) > threshold) return;
    const time = new Date().toISOString();
    write(
      format === "json"
        ? JSON.stringify({ time, level: l, message })
        : `${time} ${l.toUpperCase().padEnd(5)} ${message}`,
    );
  };
  return { error: at("error"), warn: at("warn"), info: at("info"), debug: at("debug"), level };
}

/** A logger that drops everything (tests). */
export const silentLogger: Logger = createLogger("error", () => {});
