/**
 * Typed, actionable errors. Every error moe-run raises on bad input is a MoeRunError with a stable
 * `code`, so the CLI can print the message alone and exit non-zero, and library users can switch
 * on the code.
 */
export type MoeRunErrorCode =
  | "CHECKPOINT_MISSING"
  | "CHECKPOINT_CORRUPT"
  | "SHAPE_MISMATCH"
  | "UNKNOWN_ARCHITECTURE"
  | "UNSUPPORTED_CONFIG"
  | "TOKENIZER_MISSING"
  | "MODEL_DIR_INVALID"
  | "MODEL_DIR_INCOMPLETE"
  | "MODEL_DIR_EXISTS"
  | "STORE_CORRUPT"
  | "CONTEXT_OVERFLOW"
  | "INVALID_OPTION"
  | "DISPOSED"
  | "DISK_FULL"
  | "CACHE_CAPACITY"
  | "CACHE_IN_USE"
  | "TRACE_INVALID"
  | "PROMPTS_INVALID"
  /** import: another import into the same model directory holds its lock. */
  | "IMPORT_IN_PROGRESS"
  /** import: refuses to create or replace this path (not a moe-run model, the source, the current directory). */
  | "UNSAFE_TARGET"
  /** import: the output cannot be written (permissions, read-only file system). */
  | "NOT_WRITABLE"
  /** import: another file system error while writing. */
  | "IO_ERROR"
  | "CHAT_TEMPLATE_FAILED"
  | "NON_FINITE_OUTPUT"
  | "OUTPUT_FAILED"
  | "INPUT_INVALID"
  | "PROCESS_FAILED"
  /** pull: the hub wants a token (private or gated repository), or the token has no access. */
  | "HUB_AUTH"
  /** pull: no such repository, revision or file on the hub. */
  | "HUB_NOT_FOUND"
  /** pull: the hub cannot be reached, or answered with a server error or something unexpected. */
  | "HUB_UNAVAILABLE"
  /** pull: a downloaded file's size or hash differs from the hub's listing; nothing was kept. */
  | "DOWNLOAD_CORRUPT"
  /** pull: another process is downloading the same file into the cache. */
  | "DOWNLOAD_IN_PROGRESS";

export class MoeRunError extends Error {
  readonly code: MoeRunErrorCode;
  constructor(code: MoeRunErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "MoeRunError";
    this.code = code;
  }
}

/** A Hugging Face checkpoint file or tensor that should be there is not. */
export class CheckpointMissingError extends MoeRunError {
  constructor(message: string) {
    super("CHECKPOINT_MISSING", message);
    this.name = "CheckpointMissingError";
  }
}

/** A checkpoint file exists but cannot be read as what it claims to be (bad header, truncated). */
export class CheckpointCorruptError extends MoeRunError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("CHECKPOINT_CORRUPT", message, options);
    this.name = "CheckpointCorruptError";
  }
}

/** A tensor's shape disagrees with what config.json implies. */
export class ShapeMismatchError extends MoeRunError {
  constructor(tensor: string, expected: readonly number[], actual: readonly number[], file: string) {
    super(
      "SHAPE_MISMATCH",
      `tensor "${tensor}" in ${file} has shape [${actual.join(", ")}] but config.json implies ` +
        `[${expected.join(", ")}]; the checkpoint and config.json do not belong together`
    );
    this.name = "ShapeMismatchError";
  }
}

export class UnknownArchitectureError extends MoeRunError {
  constructor(modelType: string, supported: readonly string[]) {
    super(
      "UNKNOWN_ARCHITECTURE",
      `model_type "${modelType}" is not supported; supported model types: ${supported.join(", ")}`
    );
    this.name = "UnknownArchitectureError";
  }
}

export class UnsupportedConfigError extends MoeRunError {
  constructor(message: string) {
    super("UNSUPPORTED_CONFIG", message);
    this.name = "UnsupportedConfigError";
  }
}

export class TokenizerMissingError extends MoeRunError {
  constructor(message: string) {
    super("TOKENIZER_MISSING", message);
    this.name = "TokenizerMissingError";
  }
}

export class ContextOverflowError extends MoeRunError {
  readonly tokens: number;
  readonly contextSize: number;
  constructor(tokens: number, contextSize: number) {
    super(
      "CONTEXT_OVERFLOW",
      `the prompt has ${tokens} tokens but the context holds ${contextSize}; shorten the prompt ` +
        `(and leave room for the tokens to generate)`
    );
    this.name = "ContextOverflowError";
    this.tokens = tokens;
    this.contextSize = contextSize;
  }
}

export class InvalidOptionError extends MoeRunError {
  constructor(message: string) {
    super("INVALID_OPTION", message);
    this.name = "InvalidOptionError";
  }
}

/** Asserts an internal invariant; a failure is a bug in moe-run, not bad input. */
export function invariant(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(`moe-run invariant violated: ${message}`);
}

/** What is wrong with a GGUF file, for callers and tests that switch on it. */
export type GgufProblem =
  | "magic"
  | "version"
  | "truncated"
  | "value-type"
  | "duplicate"
  | "alignment"
  | "tensor-type"
  | "tensor-shape"
  | "tensor-range"
  | "missing-key"
  | "bad-value"
  | "split";

/** A GGUF file that cannot be read as one; the one-line message names the file and the problem. */
export class GgufFormatError extends CheckpointCorruptError {
  readonly problem: GgufProblem;
  constructor(problem: GgufProblem, message: string) {
    super(message);
    this.name = "GgufFormatError";
    this.problem = problem;
  }
}

/** The file does not start with "GGUF". */
export class GgufMagicError extends GgufFormatError {
  constructor(message: string) {
    super("magic", message);
    this.name = "GgufMagicError";
  }
}

/** A GGUF version other than 2 or 3 (or a big-endian file). */
export class GgufVersionError extends GgufFormatError {
  constructor(message: string) {
    super("version", message);
    this.name = "GgufVersionError";
  }
}

/** The header ends before its counts say it should. */
export class GgufTruncatedError extends GgufFormatError {
  constructor(message: string) {
    super("truncated", message);
    this.name = "GgufTruncatedError";
  }
}

/** A metadata value of a type GGUF does not define (or an array of arrays). */
export class GgufValueTypeError extends GgufFormatError {
  constructor(message: string) {
    super("value-type", message);
    this.name = "GgufValueTypeError";
  }
}

/** A tensor type id that no ggml version defines. */
export class GgufTensorTypeError extends GgufFormatError {
  constructor(message: string) {
    super("tensor-type", message);
    this.name = "GgufTensorTypeError";
  }
}

/** Tensor dimensions that are invalid, or not whole blocks of the tensor's type. */
export class GgufTensorShapeError extends GgufFormatError {
  constructor(message: string) {
    super("tensor-shape", message);
    this.name = "GgufTensorShapeError";
  }
}

/** A tensor's data lies (partly) past the end of its file, or overlaps another tensor's. */
export class GgufTensorRangeError extends GgufFormatError {
  constructor(message: string) {
    super("tensor-range", message);
    this.name = "GgufTensorRangeError";
  }
}

/** A tensor offset (or general.alignment itself) that breaks the file's alignment. */
export class GgufAlignmentError extends GgufFormatError {
  constructor(message: string) {
    super("alignment", message);
    this.name = "GgufAlignmentError";
  }
}

/** A metadata key the importer needs is absent (or has the wrong type). */
export class GgufMissingKeyError extends GgufFormatError {
  constructor(message: string) {
    super("missing-key", message);
    this.name = "GgufMissingKeyError";
  }
}

/** The shards of a split GGUF (-0000k-of-0000N.gguf) do not belong together, or one is missing. */
export class GgufSplitError extends GgufFormatError {
  constructor(message: string) {
    super("split", message);
    this.name = "GgufSplitError";
  }
}
