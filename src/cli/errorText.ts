/** One-line descriptions of errors that are not MoeRunErrors (file system errors, onnxruntime's). */

const REASONS: Record<string, string> = {
  ENOENT: "no such file or directory",
  EACCES: "permission denied",
  EPERM: "operation not permitted",
  EISDIR: "it is a directory",
  ENOTDIR: "a part of the path is not a directory",
  ENOSPC: "no space left on the device",
  EDQUOT: "disk quota exceeded",
  EROFS: "read-only file system",
  EIO: "input/output error",
  EMFILE: "too many open files",
  ENAMETOOLONG: "name too long",
  EEXIST: "it already exists",
  ELOOP: "too many symbolic links",
};

const VERBS: Record<string, string> = {
  open: "open",
  read: "read",
  write: "write",
  mkdir: "create the directory",
  rename: "rename",
  unlink: "remove",
  rmdir: "remove",
  scandir: "list",
  stat: "read",
  lstat: "read",
  copyfile: "copy",
};

/** A Node.js system error (fs, child_process) as "cannot open x.json: no such file or directory". */
export function describeSystemError(err: NodeJS.ErrnoException): string {
  const reason = (err.code && REASONS[err.code]) ?? err.message.replace(/^\w+: /, "").replace(/, \w+ '.*'$/, "");
  const verb = (err.syscall && VERBS[err.syscall]) ?? err.syscall ?? "access";
  return err.path ? `cannot ${verb} ${err.path}: ${reason}` : `${verb} failed: ${reason}`;
}

export function isSystemError(err: unknown): err is NodeJS.ErrnoException {
  return err instanceof Error && typeof (err as NodeJS.ErrnoException).code === "string" && typeof (err as NodeJS.ErrnoException).syscall === "string";
}

/** The first line of an unexpected error, capped, for a one-line message. */
export function describeUnexpected(err: unknown): string {
  if (isSystemError(err)) return describeSystemError(err);
  const message = err instanceof Error ? err.message : String(err);
  const first = message.split("\n").map((s) => s.trim()).find((s) => s !== "") ?? (err instanceof Error ? err.name : "unknown error");
  const capped = first.length > 400 ? `${first.slice(0, 400)}...` : first;
  return `${capped} (unexpected; MOE_RUN_DEBUG=1 prints where it happened)`;
}
